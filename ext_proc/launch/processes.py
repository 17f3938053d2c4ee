"""Start, watch and stop the child processes of a Babelgate stack (Envoy, ext_proc servers, demo providers).

Two phases, two rules. While a stack starts, a child that exits is a launch failure (`Supervisor.check`): nothing
has served yet and the log says why. Once it serves, `Supervisor.tend` keeps it serving: a child that exits (crash,
OOM kill, an operator's `kill`) is started again after a backoff, and only a crash loop stops the stack; its
siblings and Envoy are never taken down for one child's death. An expendable child (a stdio MCP server's bridge: a
third-party tool server may well crash) in a crash loop is given up alone; the gateway reports that server down.

Decisions worth knowing before changing this file:
- A restart uses the argv and the whole environment of the first start, captured then: `babelgate up` adds to
  `os.environ` while it starts, and a restarted server must see what its siblings saw.
- A child that was given `--port 0` comes back on the port it reported the first time (`restart_argv`, e.g.
  `reported_port_argv`): Envoy's clusters name that port. ext_proc servers keep their fixed port or socket path (a
  stale socket file left by a killed server is replaced when it binds).
- A restarted child that reports ready (one JSON line on stdout) is read without blocking: the loop keeps tending
  the other children meanwhile, and one that stays silent past `ready_timeout` is killed and counts as a crash.
- Same argv is not same config: a restarted ext_proc server reads its config file as it is now. A file broken since
  start (the running stack rejected the reload and kept the last good config) makes every restart fail, which ends
  as a crash loop: the stack stops, loudly, rather than serve on with one process fewer.
- Without a log directory (`babelgate up`, `serve` with several processes) a child's stderr passes through a pipe
  to ours, so its last lines can be quoted when it dies; with one, it goes to `<log_dir>/<name>.log`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

TAIL_LINES = 30
"""Lines of a dead child's output quoted in the warning about it."""
TAIL_BYTES = 64 * 1024


class LaunchError(RuntimeError):
    pass


class CrashLoop(LaunchError):
    """One child kept dying after restarts: the stack stops (drained) instead of restarting it forever."""


@dataclass(frozen=True)
class RestartPolicy:
    """How a serving stack brings back a child that exited.

    The delays double from `first_delay` up to `max_delay`; a child that stayed up `stable_after` seconds starts again
    from `first_delay`. A child that exits after `max_restarts` restarts within `window` seconds is in a crash loop."""

    first_delay: float = 0.5
    max_delay: float = 10.0
    stable_after: float = 30.0
    max_restarts: int = 5
    window: float = 60.0
    ready_timeout: float = 20.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.first_delay * 2 ** failures)


RestartArgv = Callable[[Sequence[str], dict], Sequence[str]]
"""(first argv, the ready line it printed) -> the argv of every restart."""


def reported_port_argv(argv: Sequence[str], ready: dict) -> list[str]:
    """For a child started with `--port 0`: restart it on the port it reported, which its clients were given."""
    pinned = list(argv)
    pinned[pinned.index("--port") + 1] = str(ready["port"])
    return pinned


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log_path: Path | None = None
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict, repr=False)
    """The whole environment of the first start: every restart gets it again."""
    reports_ready: bool = False
    ready: dict | None = None
    """The line it printed when first ready."""
    restart_argv: tuple[str, ...] | None = None
    started: float = field(default_factory=time.monotonic)
    restarts: list[float] = field(default_factory=list)
    """When it was restarted (monotonic), pruned to the policy's window."""
    failures: int = 0
    """Exits since it last stayed up `stable_after` seconds: the exponent of the next backoff."""
    due: float | None = None
    """Set while it is down, waiting out its backoff: when to start it again."""
    awaiting_ready_since: float | None = None
    expendable: bool = False
    """The stack serves on without it (a stdio MCP server's bridge): a crash loop gives up on it alone."""
    given_up: bool = False
    """An expendable child in a crash loop: no longer restarted."""
    _log_start: int = 0
    """Where the current run's output begins in its log file (restarts append to it)."""
    _stdout_buffer: bytes = b""
    _tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=TAIL_LINES), repr=False)
    _pump: threading.Thread | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def serving(self) -> bool:
        """Alive and past its ready line (so it has its signal handlers)."""
        return self.alive() and self.awaiting_ready_since is None

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of the current run's output."""
        if self.log_path is None:
            if self._pump is not None and not self.alive():
                self._pump.join(timeout=1)  # its last lines, a traceback typically, are still in the pipe
            return "\n".join(list(self._tail)[-lines:])
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(max(self._log_start, log_file.seek(0, os.SEEK_END) - TAIL_BYTES))
                text = log_file.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def read_ready_line(self) -> dict | None:
        """The JSON line the child prints once ready, if it has printed it yet; never blocks."""
        assert self.process.stdout is not None
        self._stdout_buffer += self.process.stdout.read() or b""
        if b"\n" not in self._stdout_buffer:
            return None
        line, self._stdout_buffer = self._stdout_buffer.split(b"\n", 1)
        return json.loads(line)


@dataclass
class Supervisor:
    """Owns every process it starts, restarts the ones that exit while the stack serves (`tend`), and stops them
    all, newest first."""

    log_dir: Path | None = None
    children: list[Child] = field(default_factory=list)
    policy: RestartPolicy = RestartPolicy()

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              stdout: int | None = None) -> Child:
        """Start a child in its own session; its output goes to `log_dir/<name>.log` when a log dir is set, else its
        stderr passes through ours (its last lines kept for `log_tail`)."""
        log_path = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        full_env = {**os.environ, **(env or {})}
        log_start = _size(log_path)
        child = Child(name, self._spawn(argv, full_env, log_path, stdout), log_path, argv=tuple(argv), env=full_env,
                      reports_ready=stdout == subprocess.PIPE, _log_start=log_start)
        self._pump_stderr(child)
        self.children.append(child)
        return child

    def start_reporting(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                        timeout: float = 20.0, restart_argv: RestartArgv | None = None,
                        expendable: bool = False) -> tuple[Child, dict]:
        """Start a child that prints one JSON line when it is ready (its port, typically) and return that line.
        `restart_argv` makes the argv of its restarts from the first argv and that line (`reported_port_argv`)."""
        child = self.start(name, argv, env, stdout=subprocess.PIPE)
        child.expendable = expendable
        assert child.process.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(child.process.stdout.fileno(), False)
        while time.monotonic() < deadline:
            ready = child.read_ready_line()
            if ready is not None:
                child.ready = ready
                if restart_argv is not None:
                    child.restart_argv = tuple(restart_argv(child.argv, ready))
                return child, ready
            if not child.alive():
                raise LaunchError(f"{name} exited with code {child.process.returncode} before it was ready\n"
                                  f"{child.log_tail()}")
            time.sleep(0.02)
        raise LaunchError(f"{name} did not report ready within {timeout:.0f}s")

    def check(self) -> None:
        """While the stack starts: any child that exited is a launch failure."""
        for child in self.children:
            if not child.alive():
                raise LaunchError(f"{child.name} exited with code {child.process.returncode}\n{child.log_tail()}")

    def tend(self, now: float | None = None) -> list[str]:
        """While the stack serves, a few times a second: restart the children that exited once their backoff is
        over, and follow the restarted ones until they report ready. Returns the names started again by this call;
        raises CrashLoop when a child exits after `policy.max_restarts` restarts within `policy.window` seconds."""
        now = time.monotonic() if now is None else now
        restarted = []
        for child in self.children:
            if child.given_up:
                continue
            if child.due is not None:
                if now >= child.due:
                    self._restart(child, now)
                    restarted.append(child.name)
            elif not child.alive():
                self._schedule_restart(child, now)
            elif child.awaiting_ready_since is not None:
                self._follow_start(child, child.awaiting_ready_since, now)
        return restarted

    def signal_all(self, sig: int, skip: Sequence[str] = ()) -> None:
        """Signal every serving child (one still starting has no handlers yet, and reads its config afresh)."""
        for child in self.children:
            if child.name not in skip and child.serving():
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(sig)

    def stop_child(self, name: str, timeout: float = 10.0) -> None:
        """Stop one child for good (a reload dropped what it served): it is no longer tended."""
        for child in [c for c in self.children if c.name == name]:
            self.children.remove(child)
            _stop(child, timeout)

    def stop_all(self, timeout: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.alive():
                _signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child.process, signal.SIGKILL)
                child.process.wait(5)
            _close_pipes(child)
        self.children.clear()

    def _spawn(self, argv: Sequence[str], env: dict[str, str], log_path: Path | None,
               stdout: int | None) -> subprocess.Popen:
        log_file: IO | None = log_path.open("ab") if log_path is not None else None
        try:
            return subprocess.Popen(
                list(argv), env=env, stdout=stdout if stdout is not None else log_file,
                stderr=log_file if log_file is not None else subprocess.PIPE, start_new_session=True)
        finally:
            if log_file is not None:
                log_file.close()

    def _pump_stderr(self, child: Child) -> None:
        if child.process.stderr is None:
            return
        child._pump = threading.Thread(target=_pass_on, args=(child.process.stderr, child._tail),
                                       name=f"stderr-{child.name}", daemon=True)
        child._pump.start()

    def _schedule_restart(self, child: Child, now: float) -> None:
        code, uptime = child.process.returncode, now - child.started
        child.awaiting_ready_since = None
        child.restarts = [when for when in child.restarts if now - when < self.policy.window]
        if len(child.restarts) >= self.policy.max_restarts and child.expendable:
            child.given_up = True
            log.error("%s exited with code %s after %d restarts within %.0fs: giving up on it; the stack serves on "
                      "without it\n%s", child.name, code, len(child.restarts), self.policy.window, child.log_tail())
            return
        if len(child.restarts) >= self.policy.max_restarts:
            raise CrashLoop(f"{child.name} exited with code {code} after {len(child.restarts)} restarts within "
                            f"{self.policy.window:.0f}s: giving up on it\n{child.log_tail()}")
        if uptime >= self.policy.stable_after:
            child.failures = 0
        delay = self.policy.delay(child.failures)
        child.failures += 1
        child.due = now + delay
        log.warning("%s (pid %d) exited with code %s after %.1fs; restarting it in %.1fs\n%s", child.name,
                    child.process.pid, code, uptime, delay, child.log_tail())

    def _restart(self, child: Child, now: float) -> None:
        _close_pipes(child)
        child.due = None
        child.restarts.append(now)
        child.started = now
        child._log_start = _size(child.log_path)
        # A new run's lines go to a deque of its own: the old run's pump may still be draining a pipe that a
        # grandchild keeps open (its join above gave up after a second), and must not mix its lines into this run's.
        child._tail = collections.deque(maxlen=TAIL_LINES)
        child.process = self._spawn(child.restart_argv or child.argv, child.env, child.log_path,
                                    subprocess.PIPE if child.reports_ready else None)
        self._pump_stderr(child)
        if child.reports_ready:
            assert child.process.stdout is not None
            os.set_blocking(child.process.stdout.fileno(), False)
            child._stdout_buffer = b""
            child.awaiting_ready_since = now
        log.info("%s restarted (pid %d)", child.name, child.process.pid)

    def _follow_start(self, child: Child, since: float, now: float) -> None:
        try:
            ready = child.read_ready_line()
        except ValueError as exc:
            self._kill_unready(child, f"printed something other than its ready line ({exc})")
            return
        if ready is None:
            if now - since > self.policy.ready_timeout:
                self._kill_unready(child, f"did not report ready within {self.policy.ready_timeout:.0f}s")
            return
        child.awaiting_ready_since = None
        if child.ready is not None and ready.get("port") != child.ready.get("port"):
            log.warning("%s came back reporting %s, not %s as the first time", child.name, ready, child.ready)
        log.info("%s is ready again (pid %d)", child.name, child.process.pid)

    def _kill_unready(self, child: Child, why: str) -> None:
        """The next `tend` sees it dead, and counts it like any other exit."""
        log.warning("%s %s after its restart; killing it", child.name, why)
        _signal(child.process, signal.SIGKILL)


def _pass_on(stream: IO[bytes], tail: collections.deque[str]) -> None:
    """A child's stderr, line by line, to ours, its last lines kept. Read to the end even if ours breaks: a child
    blocked on a full pipe would stop serving."""
    passing = True
    with stream, contextlib.suppress(ValueError):
        for line in stream:
            tail.append(line.decode(errors="replace").rstrip("\n"))
            if passing:
                try:
                    _write_all(2, line)
                except OSError:
                    passing = False


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _close_pipes(child: Child) -> None:
    """After the child exited: its stderr pump ends at end of file (and closes that pipe), its stdout pipe closes."""
    if child._pump is not None:
        child._pump.join(timeout=1)
    if child.process.stdout is not None:
        with contextlib.suppress(OSError):
            child.process.stdout.close()


def _stop(child: Child, timeout: float) -> None:
    if child.alive():
        _signal(child.process, signal.SIGTERM)
    try:
        child.process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal(child.process, signal.SIGKILL)
        child.process.wait(5)
    _close_pipes(child)


def _signal(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a process that binds it a little later. Taken below the kernel's ephemeral range when
    there is room: a port the kernel hands out for `bind(0)` (every server started with `--port 0`, every outgoing
    connection) then can't be the same one in the meantime. Never the same port twice in a row from this process.
    `BABELGATE_FREE_PORTS=<low>-<high>` narrows the range (the test suite gives each of its workers its own)."""
    low, high = _free_port_range()
    for _ in range(200 if high > low else 0):
        port = random.randint(low, high)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.append(port)
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    _handed_out.append(port)
    return port


def _free_port_range() -> tuple[int, int]:
    chosen = os.environ.get(FREE_PORTS_ENV, "")
    low, dash, high = chosen.partition("-")
    if dash and low.isdigit() and high.isdigit() and 0 < int(low) < int(high) < 65536:
        return int(low), int(high)
    return _FREE_PORT_RANGE if _FREE_PORT_RANGE is not None else (0, 0)


def _below_ephemeral() -> tuple[int, int] | None:
    """(lowest, highest) port under the kernel's ephemeral range (`ip_local_port_range`), when it leaves room."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (FREE_PORT_FLOOR, first - 1) if first - 1 - FREE_PORT_FLOOR >= 1000 else None


FREE_PORT_FLOOR = 11000
"""Above the ports services are commonly configured on (10000, 9901, 8080 ...)."""
FREE_PORTS_ENV = "BABELGATE_FREE_PORTS"
_FREE_PORT_RANGE = _below_ephemeral()
_handed_out: collections.deque[int] = collections.deque(maxlen=4096)


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (N ext_proc processes listen on port, port+1, ...)."""
    for _ in range(100):
        first = free_port(host)
        if all(_bindable(host, first + offset) for offset in range(1, count)):
            return first
    raise LaunchError(f"no run of {count} free ports found on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float, supervisor: Supervisor | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if supervisor is not None:
                supervisor.check()
            time.sleep(0.05)
    raise LaunchError(f"nothing listened on {host}:{port} within {timeout:.0f}s")


def wait_for_envoy(admin_port: int, timeout: float, supervisor: Supervisor | None = None) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{admin_port}/ready"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if supervisor is not None:
            supervisor.check()
        time.sleep(0.05)
    raise LaunchError(f"Envoy was not ready within {timeout:.0f}s")
