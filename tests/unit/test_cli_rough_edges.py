"""What a new user met first (issue 16): `--version`, a taken port, work directories left in /tmp, and botocore's
"Found credentials" lines at every start. The same through the real command: `tests/e2e/test_cli_rough_edges_e2e.py`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import socket
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import ext_proc
from ext_proc.cli import main, quiet_secret_logging_libraries
from ext_proc.config.loading import parse_config
from ext_proc.launch.ports import ADMIN_API, ENVOY_ADMIN, LISTENER, Claim, PortInUse, ensure_free, stack_claims
from ext_proc.launch.processes import free_port
from ext_proc.launch.stack import workspace
from tests.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# A child that, asked to stop, writes into the work directory and only then exits: it exits 0 only if the directory
# was still there when it stopped.
STOPS_INTO_WORKDIR = """
import json, pathlib, signal, sys
def stop(*_):
    try:
        (pathlib.Path(sys.argv[1]) / "stopped").write_text("ok")
    except OSError:
        sys.exit(3)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(json.dumps({"ready": True}), flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held


@pytest.fixture
def logger_levels() -> Iterator[None]:
    names = ("", "botocore", "botocore.credentials")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


# --- --version ---------------------------------------------------------------------------------------------------

def test_version_flag_prints_the_installed_version_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code in (0, None)
    assert capsys.readouterr().out == f"babelgate {importlib.metadata.version('babelgate')}\n"


def test_version_falls_back_to_pyproject_when_the_package_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert ext_proc.version() == PYPROJECT_VERSION == ext_proc.__version__


# --- ports -------------------------------------------------------------------------------------------------------

def test_a_taken_port_is_named_with_its_role_and_the_process_holding_it(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    with pytest.raises(PortInUse) as taken:
        ensure_free([Claim("127.0.0.1", free_port(), ENVOY_ADMIN), Claim("127.0.0.1", port, LISTENER)])
    message = str(taken.value)
    assert message.startswith(f"port {port} (the listener) is already in use by pid {os.getpid()} (")
    assert "\n" not in message and ENVOY_ADMIN not in message


def test_ports_taken_by_one_process_are_named_together(listening: socket.socket) -> None:
    with socket.socket() as second:
        second.bind(("127.0.0.1", 0))
        second.listen()
        ports = listening.getsockname()[1], second.getsockname()[1]
        with pytest.raises(PortInUse) as taken:
            ensure_free([Claim("127.0.0.1", ports[0], LISTENER), Claim("0.0.0.0", ports[1], ADMIN_API)])
    assert str(taken.value).startswith(f"ports {ports[0]} (the listener), {ports[1]} (the admin API) are already "
                                       f"in use by pid {os.getpid()} (")


def test_free_ports_and_port_zero_pass() -> None:
    ensure_free([Claim("127.0.0.1", free_port(), LISTENER), Claim("127.0.0.1", 0, ADMIN_API)])


def test_a_port_whose_last_connection_is_in_time_wait_counts_as_free() -> None:
    """Envoy and gRPC listen with SO_REUSEADDR, so their closed connections in TIME_WAIT don't keep a restarted
    stack off its ports: the check must not count them either."""
    with socket.socket() as listening:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listening.accept()
            accepted.close()  # the side that closes first keeps the port in TIME_WAIT
            client.recv(1)
    eventually(lambda: _tcp_state(port) == "06", timeout=10, what="the port in TIME_WAIT")
    ensure_free([Claim("127.0.0.1", port, LISTENER)])


def _tcp_state(port: int) -> str | None:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port:
            return fields[3]
    return None


@pytest.mark.parametrize(("server", "claimed"), [
    ({"socket_dir": "/run/babelgate"}, set()),
    ({"port": 50100, "processes": 2, "peers": "mesh", "host": "0.0.0.0", "health_port": 50200},
     {50100, 50101, 50200, 50201}),
])
def test_stack_claims_every_tcp_port_its_processes_bind(server: dict, claimed: set[int]) -> None:
    config = parse_config(json.dumps({
        "listener": {"port": 10100, "admin_port": 0}, "ext_proc": server,
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}],
        "keys_file": "/nonexistent/keys.yaml",
        "admin": {"port": 50300, "credentials": [{"name": "a", "secret": {"env": "UNUSED_ADMIN_KEY"}}]},
        "telemetry": {"metrics": {"prometheus_port": 9400}}}))
    claims = stack_claims(config)
    processes = server.get("processes", 1)
    assert {claim.port for claim in claims} == {10100, 50300, *range(9400, 9400 + processes), *claimed}
    assert {claim.role for claim in claims} >= {LISTENER, ADMIN_API}  # admin_port 0: Envoy picks, nothing claimed


# --- the work directory ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("failing", [False, True])
def test_the_work_directory_goes_only_after_every_child_stopped(failing: bool) -> None:
    with pytest.raises(RuntimeError) if failing else contextlib.nullcontext(), workspace() as (supervisor, workdir):
        child, _ = supervisor.start_reporting("writer", [sys.executable, "-c", STOPS_INTO_WORKDIR, str(workdir)])
        assert workdir.name.startswith("babelgate-") and workdir.is_dir()
        if failing:
            raise RuntimeError("a failed start")
    assert child.process.returncode == 0, "the directory was gone before the child stopped"
    assert not workdir.exists()


# --- credential discovery ----------------------------------------------------------------------------------------

@pytest.mark.usefixtures("logger_levels")
@pytest.mark.parametrize(("level", "expected"), [(logging.INFO, logging.WARNING), (logging.DEBUG, logging.INFO),
                                                 (logging.ERROR, logging.ERROR)])
def test_credential_discovery_is_quiet_unless_debugging(level: int, expected: int) -> None:
    logging.getLogger().setLevel(level)
    quiet_secret_logging_libraries()
    assert logging.getLogger("botocore.credentials").getEffectiveLevel() == expected
    assert logging.getLogger("botocore").getEffectiveLevel() == max(logging.INFO, level)
