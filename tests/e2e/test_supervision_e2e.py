"""One process of a running gateway dies (`kill -9`) under steady traffic: `babelgate up` (and `serve` with several
processes) starts it again and keeps serving, and a SIGTERM afterwards still drains and exits 0.

Until Envoy health-checks the ext_proc servers, the requests it hands the dead server fail until that server is
back; the tests bound those failures (FAILURE_BOUND) and print what they measured. While Envoy itself is down nothing
listens: those requests are refused by the machine, not failed by the gateway, and are bounded by the time to
recovery instead (RECOVERY_TIMEOUT)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc.launch.processes import free_port
from tests.eventually import eventually

from .gateways import GatewayBuilder

HELLO = [{"role": "user", "content": "hi"}]
FAILURE_BOUND = 50
"""Requests the gateway may answer with an error (or not at all) per kill, at 10 requests a second: a restart takes
about a second or two."""
RECOVERY_TIMEOUT = 90.0
"""Seconds from a kill until traffic has succeeded RECOVERY_STREAK times in a row."""
UNREACHABLE_BACKOFF = 0.5
"""The traffic's pause after a refused connection: an Envoy restarting for seconds on a busy machine is tried twice a
second, not ten times."""
RECOVERY_STREAK = 30
"""Consecutive successes that count as recovered (both ext_proc processes take turns serving them)."""


@dataclass
class Outcome:
    at: float
    ok: bool
    backend: str = ""
    unreachable: bool = False
    """Nothing accepted the connection (or it was cut, Envoy killed mid-request): no answer from the gateway."""


@dataclass
class Traffic:
    """Requests at a steady 10 a second from one thread, each outcome recorded."""

    client: openai.OpenAI
    model: str
    outcomes: list[Outcome] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopped.is_set():
            began = time.monotonic()
            pause = 0.1
            try:
                reply = self.client.chat.completions.with_raw_response.create(model=self.model, messages=HELLO)
                self.outcomes.append(Outcome(began, True, reply.headers.get("x-babelgate-backend", "")))
            except openai.APITimeoutError:  # a connection error too, but the gateway took the request and hung
                self.outcomes.append(Outcome(began, False))
            except openai.APIConnectionError:
                self.outcomes.append(Outcome(began, False, unreachable=True))
                pause = UNREACHABLE_BACKOFF
            except openai.OpenAIError:
                self.outcomes.append(Outcome(began, False))
            self.stopped.wait(max(0.0, pause - (time.monotonic() - began)))  # pacing, not waiting for a condition

    def since(self, moment: float) -> list[Outcome]:
        return [outcome for outcome in list(self.outcomes) if outcome.at >= moment]

    def recovered_since(self, moment: float) -> Outcome | None:
        """The first of the last RECOVERY_STREAK outcomes after `moment`, when they all succeeded."""
        recent = self.since(moment)[-RECOVERY_STREAK:]
        return recent[0] if len(recent) == RECOVERY_STREAK and all(o.ok for o in recent) else None

    def report(self, what: str, killed_at: float, recovered: Outcome) -> tuple[int, int]:
        """(requests the gateway failed, requests nothing listened for) since the kill, printed with the time to
        recovery."""
        after = self.since(killed_at)
        unreachable = sum(o.unreachable for o in after)
        failed = sum(not o.ok for o in after) - unreachable
        print(f"\n{what}: sent {len(after)}, succeeded {len(after) - failed - unreachable}, failed {failed}, "
              f"unreachable {unreachable} since the kill; recovered {recovered.at - killed_at:.1f}s after it")
        return failed, unreachable


@contextlib.contextmanager
def traffic(client: openai.OpenAI, model: str) -> Iterator[Traffic]:
    load = Traffic(client, model)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stopped.set()
        thread.join(30)


@dataclass
class Command:
    """A `babelgate` command run as users run it, its output (stdout and stderr) collected as it comes."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str) -> None:
        eventually(lambda: text in self.output or self.process.poll() is not None, timeout=90, what=text)
        assert text in self.output, self.output

    def child(self, *words: str) -> int | None:
        """The pid of this command's child whose argv holds `words` in a row (a zombie holds none)."""
        for pid, argv in _children(self.process.pid).items():
            if any(argv[i:i + len(words)] == list(words) for i in range(len(argv))):
                return pid
        return None

    def argv(self, pid: int) -> list[str]:
        return _children(self.process.pid).get(pid, [])

    def stop(self) -> int:
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(60)


@contextlib.contextmanager
def babelgate(*args: str, env: dict[str, str] | None = None) -> Iterator[Command]:
    process = subprocess.Popen([sys.executable, "-m", "ext_proc", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, **(env or {})})
    command = Command(process)
    threading.Thread(target=lambda: command.lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    try:
        yield command
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _children(parent: int) -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == parent:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().decode().split("\0")[:-1]
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def _back(command: Command, old_pid: int, *words: str) -> int:
    """The pid of the process that replaced `old_pid`."""
    return eventually(lambda: (pid := command.child(*words)) != old_pid and pid, timeout=90,
                      what=f"{' '.join(words)} restarted")


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def build(tmp_path: Path) -> Iterator[GatewayBuilder]:
    """The config of a gateway with two ext_proc processes, route "m" to backend "mine" and key "k" (the tests add
    the backend and run `babelgate` on the config themselves); the builder stops what it started."""
    with GatewayBuilder(tmp_path, processes=2, config_name="babelgate.yaml") as build:
        build.route("m", ("mine", "m"))
        build.key("k", "bg-supervision-key")
        yield build


def test_up_restarts_a_killed_ext_proc_server_and_envoy_and_keeps_serving(build: GatewayBuilder) -> None:
    build.backend("mine", build.demo("mine"))
    path = build.write()
    client = openai.OpenAI(base_url=build.url + "/v1", api_key=build.keys["k"], max_retries=0, timeout=10)
    with babelgate("up", "-c", str(path), env=build.environment()) as up, traffic(client, "m") as load:
        up.wait_for("Babelgate is up")
        eventually(lambda: load.recovered_since(0), timeout=60, what="steady traffic succeeds")

        server = up.child("--process-index", "1")
        assert server is not None
        argv = up.argv(server)
        killed_at = _kill(server)
        new_server = _back(up, server, "--process-index", "1")
        assert up.argv(new_server) == argv
        recovered = eventually(lambda: load.recovered_since(killed_at), timeout=RECOVERY_TIMEOUT,
                               what="traffic recovered")
        failed, unreachable = load.report("ext_proc-1 killed", killed_at, recovered)
        assert failed + unreachable <= FAILURE_BOUND  # Envoy kept listening: every request was the gateway's
        assert f"ext_proc-1 (pid {server}) exited with code -9" in up.output
        assert up.child("--process-index", "1") == new_server and up.process.poll() is None

        envoy = up.child("--disable-hot-restart")
        assert envoy is not None
        killed_at = _kill(envoy)
        _back(up, envoy, "--disable-hot-restart")
        recovered = eventually(lambda: load.recovered_since(killed_at), timeout=RECOVERY_TIMEOUT,
                               what="traffic recovered")
        failed, _ = load.report("envoy killed", killed_at, recovered)
        assert failed <= FAILURE_BOUND  # the refused ones, while no Envoy listened, are bounded by RECOVERY_TIMEOUT
        assert f"envoy (pid {envoy}) exited with code -9" in up.output
        load.stopped.set()
        assert up.stop() == 0, up.output
    assert "stopping" in up.output


def test_up_gives_up_on_a_crash_loop_and_stops_everything_with_exit_code_1(build: GatewayBuilder) -> None:
    """A server killed after its config file was broken can't start again: five restarts later `up` stops."""
    build.backend("mine", build.demo("mine"))
    path = build.write()
    with babelgate("up", "-c", str(path), env=build.environment()) as up:
        up.wait_for("Babelgate is up")
        path.write_text("routes: [\n")  # the running servers and Envoy keep the last good config
        up.wait_for("rejected, keeping the running configuration")
        server = up.child("--process-index", "1")
        assert server is not None
        others = set(_children(up.process.pid)) - {server}
        _kill(server)
        assert up.process.wait(120) == 1, up.output
    assert "ext_proc-1 exited with code 2 after 5 restarts within 60s: giving up on it" in up.output
    assert "ERROR" in up.output and "stopping everything" in up.output
    assert not _listening(build.config["listener"]["port"]) and not _listening(build.config["listener"]["admin_port"])
    assert not [pid for pid in others if _alive(pid)], "Envoy or ext_proc-0 left running"


def test_up_demo_restarts_a_killed_provider_on_the_same_port(tmp_path: Path) -> None:
    port, admin, ext_proc, admin_api = free_port(), free_port(), free_port(), free_port()
    with babelgate("up", "--demo", "--port", str(port), "--admin-port", str(admin), "--ext-proc-port",
                   str(ext_proc), "--admin-api-port", str(admin_api)) as up:
        up.wait_for("babelgate keys create")
        key = re.search(r"api_key=\"(bg-[^\"]+)\"", up.output).group(1)
        server_argv = up.argv(up.child("--process-index", "0"))
        demo_config = yaml.safe_load(Path(_option(server_argv, "-c")).read_text())
        base_url = next(b["base_url"] for b in demo_config["backends"] if b["id"] == "demo-openai")
        provider_port = int(re.search(r":(\d+)/", base_url).group(1))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=10)
        with traffic(client, "gpt-4o-mini") as load:  # demo-openai first, demo-anthropic when it fails
            eventually(lambda: load.recovered_since(0), timeout=60, what="steady traffic succeeds")
            assert load.since(0)[-1].backend == "demo-openai"

            provider = up.child("--name", "demo-openai")
            assert provider is not None and _option(up.argv(provider), "--port") == "0"
            killed_at = _kill(provider)
            new_provider = _back(up, provider, "--name", "demo-openai")
            assert _option(up.argv(new_provider), "--port") == str(provider_port)
            eventually(lambda: httpx.get(f"http://127.0.0.1:{provider_port}/_demo/requests", timeout=5).is_success,
                       timeout=60, what="demo-openai answering again on its port")
            print(f"\ndemo-openai answering again on port {provider_port} {time.monotonic() - killed_at:.1f}s after "
                  "the kill (Envoy's outlier detection keeps it out of rotation for its ejection time, 30 s)")
            served = eventually(lambda: load.recovered_since(killed_at), timeout=RECOVERY_TIMEOUT,
                                what="steady traffic succeeds")
            failed, unreachable = load.report("demo-openai killed", killed_at, served)
            assert failed + unreachable <= FAILURE_BOUND  # Envoy kept listening: every request was the gateway's
        assert f"demo-openai (pid {provider}) exited with code -9" in up.output
        assert up.stop() == 0, up.output
    for closed in (port, admin, ext_proc, admin_api, provider_port):
        assert not _listening(closed), f"port {closed} still open after stop"


def test_serve_restarts_a_killed_process_on_its_port(build: GatewayBuilder) -> None:
    build.backend("mine", build.unreachable("mine"))
    path = build.write()
    first = build.config["ext_proc"]["port"]
    with babelgate("serve", "-c", str(path), env=build.environment()) as serve:
        eventually(lambda: _listening(first) and _listening(first + 1), timeout=60, what="both processes listen")
        server = serve.child("--process-index", "1")
        assert server is not None
        argv = serve.argv(server)
        _kill(server)
        new_server = _back(serve, server, "--process-index", "1")
        assert serve.argv(new_server) == argv
        eventually(lambda: _listening(first + 1), timeout=60, what="process 1 listens again")
        assert f"ext_proc-1 (pid {server}) exited with code -9" in serve.output
        assert serve.stop() == 0, serve.output
    assert not _listening(first) and not _listening(first + 1)
