"""A new user's first minutes with `babelgate` (issue 16), through the command itself: `--version`, a second `up` on
the same ports (one line, exit 2, nothing started), no `babelgate-*` work directory left behind however `up` ends,
and no botocore "Found credentials" lines at start.

Each command runs with TMPDIR pointing at a directory of the test's own, so the work directories it makes can be
counted, and with a marker in its environment, which every process it starts inherits: a process still carrying it
after the command ended was left running.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ext_proc.auth.virtual_keys import hash_key
from ext_proc.launch.processes import free_port

from .test_supervision_e2e import babelgate

MARKER = "BABELGATE_ROUGH_EDGES_TEST"


@dataclass
class Sandbox:
    """A TMPDIR of its own (short: the ext_proc Unix sockets go under it) and the marker every child inherits."""

    tmp: Path
    env: dict[str, str]

    def work_directories(self) -> list[Path]:
        return sorted(self.tmp.glob("babelgate-*"))

    def marked_processes(self) -> list[int]:
        token = f"{MARKER}={self.env[MARKER]}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and token in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Stdout and stderr together, as a user's terminal shows them."""
        return subprocess.run([sys.executable, "-m", "ext_proc", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=90,
                              env={**os.environ, **self.env, **(extra_env or {})})

    def assert_nothing_left(self) -> None:
        assert self.work_directories() == [], "a babelgate-* work directory was left behind"
        assert self.marked_processes() == [], "a process the command started is still running"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    tmp = Path(tempfile.mkdtemp(prefix="bg-e2e-"))
    box = Sandbox(tmp, {"TMPDIR": str(tmp), MARKER: secrets.token_hex(8)})
    try:
        yield box
    finally:
        for pid in box.marked_processes():
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port this test process listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def _config(path: Path, listen_port: int, **extra: object) -> Path:
    path.write_text(yaml.safe_dump({
        "listener": {"port": listen_port, "admin_port": free_port()},
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}],
        "virtual_keys": [{"id": "k", "hash": hash_key("bg-rough-edges-key")}], **extra}))
    return path


def test_version_flag_prints_the_version_and_exits_0(sandbox: Sandbox) -> None:
    from ext_proc import version

    result = sandbox.run("--version")
    assert (result.returncode, result.stdout) == (0, f"babelgate {version()}\n")


@pytest.mark.parametrize("source", ["demo", "config"])
def test_up_on_a_taken_port_says_which_in_one_line_exits_2_and_starts_nothing(
        source: str, sandbox: Sandbox, held_port: int, tmp_path: Path) -> None:
    args = (["--demo", "--port", str(held_port), "--admin-port", str(free_port())] if source == "demo"
            else ["-c", str(_config(tmp_path / "babelgate.yaml", held_port))])
    result = sandbox.run("up", *args)
    assert result.returncode == 2, result.stdout
    assert re.fullmatch(rf"babelgate: port {held_port} \(the listener\) is already in use by pid {os.getpid()} "
                        r"\([^\n]+\)\n", result.stdout), result.stdout
    sandbox.assert_nothing_left()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_second_up_names_the_running_one_and_up_removes_its_work_directory_on_stop(
        stop_signal: int, sandbox: Sandbox, tmp_path: Path) -> None:
    path = _config(tmp_path / "babelgate.yaml", free_port())
    listener = yaml.safe_load(path.read_text())["listener"]
    with babelgate("up", "-c", str(path), env=sandbox.env) as first:
        first.wait_for("Babelgate is up")
        [workdir] = sandbox.work_directories()
        assert (workdir / "envoy.yaml").is_file()

        second = sandbox.run("up", "-c", str(path))
        assert second.returncode == 2, second.stdout
        assert second.stdout.count("\n") == 1 and "Traceback" not in second.stdout, second.stdout
        assert second.stdout.startswith(f"babelgate: ports {listener['port']} (the listener), "
                                        f"{listener['admin_port']} (Envoy admin) are already in use by pid ")
        assert f"(envoy -c {workdir}/envoy.yaml" in second.stdout
        assert f"started by pid {first.process.pid} (python" in second.stdout
        assert sandbox.work_directories() == [workdir]

        os.killpg(first.process.pid, stop_signal)  # Ctrl-C signals the terminal's foreground process group
        assert first.process.wait(60) == 0, first.output
    sandbox.assert_nothing_left()


def test_up_removes_its_work_directory_when_envoy_fails_to_start(sandbox: Sandbox, tmp_path: Path) -> None:
    """The ext_proc servers already serve on Unix sockets in the work directory when Envoy dies at start."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "envoy").write_text("#!/bin/sh\necho 'this envoy refuses to start' >&2\nexit 1\n")
    (bin_dir / "envoy").chmod(0o755)
    result = sandbox.run("up", "-c", str(_config(tmp_path / "babelgate.yaml", free_port())),
                         extra_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 2, result.stdout
    assert "babelgate: envoy exited with code 1" in result.stdout and "this envoy refuses" in result.stdout
    assert "ext_proc server listening" in result.stdout
    sandbox.assert_nothing_left()


def test_up_removes_its_work_directory_when_a_secret_is_missing(sandbox: Sandbox, tmp_path: Path) -> None:
    path = _config(tmp_path / "babelgate.yaml", free_port())
    data = yaml.safe_load(path.read_text())
    data["backends"][0]["api_key"] = {"env": "BG_ROUGH_EDGES_UNSET"}
    path.write_text(yaml.safe_dump(data))
    result = sandbox.run("up", "-c", str(path))
    assert result.returncode == 2 and "BG_ROUGH_EDGES_UNSET is not set" in result.stdout, result.stdout
    sandbox.assert_nothing_left()


def test_serve_with_bedrock_backends_logs_no_credential_discovery_lines(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "bedrock.yaml"
    path.write_text(yaml.safe_dump({
        "backends": [{"id": schema, "schema": schema, "base_url": "http://127.0.0.1:9", "aws": {"region": "us-east-1"}}
                     for schema in ("bedrock-converse", "bedrock-anthropic")],
        "routes": [{"model": "m", "backends": [{"backend": "bedrock-converse", "model": "amazon.nova-pro-v1:0"}]}]}))
    env = {**sandbox.env, "AWS_ACCESS_KEY_ID": "AKIAROUGHEDGES", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    with babelgate("serve", "-c", str(path), "--socket", str(sandbox.tmp / "s" / "bg.sock"), env=env) as serve:
        serve.wait_for("ext_proc server listening")
        assert serve.stop() == 0, serve.output
    assert "INFO" in serve.output and "Found credentials" not in serve.output, serve.output
