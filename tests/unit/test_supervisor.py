"""The supervisor keeps a serving stack up: real child processes (small `python -c` scripts) that crash, are killed,
or report ready; time is passed to `tend` explicitly where a test is about backoff, so nothing waits it out."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ext_proc.cli import _wait_for_signal
from ext_proc.launch.processes import (
    Child,
    CrashLoop,
    LaunchError,
    RestartPolicy,
    Supervisor,
    free_port,
    reported_port_argv,
)
from tests.eventually import eventually

POLICY = RestartPolicy(first_delay=0.5, max_delay=2.0, stable_after=30.0, max_restarts=4, window=60.0,
                       ready_timeout=20.0)
CRASH = "import os, sys; print('dying with', os.environ.get('SUPERVISED_MARK'), file=sys.stderr); sys.exit(3)"
IDLE = "import signal; signal.pause()"
LISTEN = """
import json, signal, socket, sys
port = int(sys.argv[sys.argv.index('--port') + 1])
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(('127.0.0.1', port))
sock.listen()
print(json.dumps({'port': sock.getsockname()[1]}), flush=True)
signal.pause()
"""
GATED = """
import json, os, signal, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
print(json.dumps({'gate': 'open'}), flush=True)
signal.pause()
"""


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    supervisor = Supervisor(log_dir=tmp_path, policy=POLICY)
    try:
        yield supervisor
    finally:
        supervisor.stop_all()


def _python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def _exited(child: Child) -> None:
    eventually(lambda: not child.alive(), what=f"{child.name} exits")


def _kill(child: Child) -> int:
    pid = child.process.pid
    os.kill(pid, signal.SIGKILL)
    _exited(child)
    return pid


def _tend_until(supervisor: Supervisor, condition: Callable[[], object], what: str) -> None:
    def tended() -> object:
        supervisor.tend()
        return condition()

    eventually(tended, timeout=30, what=what)


def _crash_and_restart(supervisor: Supervisor, child: Child, now: float) -> float:
    """Let `child` crash, tend at `now` (the restart is scheduled), then at its due time (it restarts): that time."""
    _exited(child)
    assert supervisor.tend(now=now) == []
    assert child.due is not None
    assert supervisor.tend(now=child.due - 0.01) == []
    restarted_at = child.due
    assert supervisor.tend(now=restarted_at) == [child.name]
    return restarted_at


def test_a_crashed_child_comes_back_after_a_doubling_backoff(supervisor: Supervisor,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    crasher = supervisor.start("crasher", _python(CRASH))
    first_pid = crasher.process.pid
    now, delays = crasher.started, []
    with caplog.at_level(logging.WARNING, "ext_proc.launch.processes"):
        for _ in range(POLICY.max_restarts):
            _exited(crasher)
            supervisor.tend(now=now)
            assert crasher.due is not None
            delays.append(crasher.due - now)
            now = _crash_and_restart(supervisor, crasher, now)
    assert delays == [0.5, 1.0, 2.0, 2.0]
    assert crasher.process.pid != first_pid
    warnings = [record for record in caplog.records if "exited" in record.getMessage()]
    assert len(warnings) == POLICY.max_restarts and {w.levelno for w in warnings} == {logging.WARNING}
    assert f"crasher (pid {first_pid}) exited with code 3" in warnings[0].getMessage()
    # the tail of its log, from the run that died only
    assert [w.getMessage().count("dying with") for w in warnings] == [1] * POLICY.max_restarts


def test_a_crash_loop_gives_up_and_leaves_the_siblings_alone(supervisor: Supervisor) -> None:
    healthy = supervisor.start("healthy", _python(IDLE))
    crasher = supervisor.start("crasher", _python(CRASH))
    now = crasher.started
    for _ in range(POLICY.max_restarts):
        now = _crash_and_restart(supervisor, crasher, now)
    _exited(crasher)
    with pytest.raises(CrashLoop, match=r"crasher exited with code 3 after 4 restarts within 60s: giving up"):
        supervisor.tend(now=now)
    assert healthy.alive()


def test_an_expendable_child_in_a_crash_loop_is_given_up_alone(supervisor: Supervisor,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    healthy = supervisor.start("healthy", _python(IDLE))
    crasher = supervisor.start("bridge", _python(CRASH))
    crasher.expendable = True
    now = crasher.started
    for _ in range(POLICY.max_restarts):
        now = _crash_and_restart(supervisor, crasher, now)
    _exited(crasher)
    with caplog.at_level(logging.ERROR, "ext_proc.launch.processes"):
        assert supervisor.tend(now=now) == []
    assert crasher.given_up and healthy.alive()
    assert any("giving up on it; the stack serves on without it" in r.getMessage() for r in caplog.records)
    assert supervisor.tend(now=now + 120) == [] and not crasher.alive()


def test_restarts_spread_over_more_than_the_window_are_not_a_crash_loop(supervisor: Supervisor) -> None:
    crasher = supervisor.start("crasher", _python(CRASH))
    now = crasher.started
    for _ in range(POLICY.max_restarts * 2):
        now = _crash_and_restart(supervisor, crasher, now + POLICY.window / 2)
    assert len(crasher.restarts) <= 2


def test_a_child_that_stayed_up_starts_again_from_the_first_delay(supervisor: Supervisor) -> None:
    crasher = supervisor.start("crasher", _python(CRASH))
    now = crasher.started
    for _ in range(3):
        now = _crash_and_restart(supervisor, crasher, now)
    _exited(crasher)
    supervisor.tend(now=now + POLICY.stable_after)
    assert crasher.due == now + POLICY.stable_after + POLICY.first_delay


def test_a_restarted_child_gets_the_argv_and_environment_of_its_first_start(
        supervisor: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISED_MARK", "first")
    crasher = supervisor.start("crasher", _python(CRASH), env={"EXTRA": "1"})
    monkeypatch.setenv("SUPERVISED_MARK", "changed since")
    _crash_and_restart(supervisor, crasher, crasher.started)
    _exited(crasher)
    assert crasher.process.args == _python(CRASH)
    assert (tmp_path / "crasher.log").read_text().splitlines() == ["dying with first"] * 2


def test_a_child_started_on_port_zero_comes_back_on_the_port_it_reported(supervisor: Supervisor) -> None:
    child, ready = supervisor.start_reporting("listener", _python(LISTEN, "--port", "0"),
                                              restart_argv=reported_port_argv)
    port = ready["port"]
    assert port != 0 and child.restart_argv == tuple(_python(LISTEN, "--port", str(port)))
    first_pid = _kill(child)
    _tend_until(supervisor, lambda: child.process.pid != first_pid and child.serving(), "the listener is back")
    assert child.process.args == _python(LISTEN, "--port", str(port))
    assert child.ready == {"port": port}
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_a_restarted_child_not_yet_ready_does_not_hold_up_the_others(supervisor: Supervisor,
                                                                     tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    gated, _ = supervisor.start_reporting("gated", _python(GATED, str(gate)))
    sibling = supervisor.start("sibling", _python(IDLE))
    gate.unlink()
    gated_pid = _kill(gated)
    _tend_until(supervisor, lambda: gated.process.pid != gated_pid, "gated restarted")
    assert not gated.serving()
    sibling_pid = _kill(sibling)
    _tend_until(supervisor, lambda: sibling.process.pid != sibling_pid and sibling.alive(), "sibling restarted")
    assert gated.alive() and not gated.serving()  # still waiting for its ready line, in the same loop
    gate.touch()
    _tend_until(supervisor, gated.serving, "gated ready again")


def test_a_restarted_child_that_never_reports_ready_is_killed_and_counted(supervisor: Supervisor, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    gated, _ = supervisor.start_reporting("gated", _python(GATED, str(gate)))
    gate.unlink()
    first_pid = _kill(gated)
    _tend_until(supervisor, lambda: gated.process.pid != first_pid, "gated restarted")
    silent_until = gated.started + POLICY.ready_timeout + 1
    with caplog.at_level(logging.WARNING, "ext_proc.launch.processes"):
        supervisor.tend(now=silent_until)
        _exited(gated)
        supervisor.tend(now=silent_until)
    assert "gated did not report ready within 20s after its restart; killing it" in caplog.text
    assert gated.process.returncode == -signal.SIGKILL
    assert gated.due == silent_until + 2 * POLICY.first_delay  # its second exit in a row


def test_signals_reach_serving_children_only(supervisor: Supervisor, tmp_path: Path) -> None:
    """A child still starting has no SIGHUP handler yet: the default action would kill it."""
    gate = tmp_path / "gate"
    gate.touch()
    gated, _ = supervisor.start_reporting("gated", _python(GATED, str(gate)))
    gate.unlink()
    first_pid = _kill(gated)
    _tend_until(supervisor, lambda: gated.process.pid != first_pid, "gated restarted")
    supervisor.signal_all(signal.SIGHUP)
    assert gated.process.poll() is None


def test_a_planned_stop_stops_every_child_and_restarts_none(supervisor: Supervisor) -> None:
    idle = supervisor.start("idle", _python(IDLE))
    listener, _ = supervisor.start_reporting("listener", _python(LISTEN, "--port", "0"))
    crasher = supervisor.start("crasher", _python(CRASH))
    _exited(crasher)
    supervisor.tend()  # its restart is due in half a second
    processes = [idle.process, listener.process, crasher.process]
    supervisor.stop_all()
    assert [p.returncode for p in processes] == [-signal.SIGTERM, -signal.SIGTERM, 3]
    assert supervisor.children == [] and supervisor.tend() == []


def test_start_up_still_fails_on_a_child_that_exits(supervisor: Supervisor) -> None:
    crasher = supervisor.start("crasher", _python(CRASH))
    _exited(crasher)
    with pytest.raises(LaunchError, match="crasher exited with code 3\ndying with"):
        supervisor.check()


def test_without_a_log_dir_a_childs_stderr_passes_through_and_its_tail_is_kept(
        capfd: pytest.CaptureFixture[str]) -> None:
    supervisor = Supervisor(policy=POLICY)
    passed_through = ""

    def both_runs_passed_through() -> bool:
        nonlocal passed_through
        passed_through += capfd.readouterr().err
        return passed_through.count("dying with None") >= 2

    try:
        crasher = supervisor.start("crasher", _python(CRASH))
        _exited(crasher)
        # A thread pumps the child's stderr, and `log_tail` waits for it only a second: on a busy machine the line
        # can come later.
        eventually(lambda: crasher.log_tail() == "dying with None", what="the first run's last line")
        _crash_and_restart(supervisor, crasher, crasher.started)
        _exited(crasher)
        eventually(lambda: crasher.log_tail() == "dying with None", what="the second run's last line, alone")
        eventually(both_runs_passed_through, what="both runs' lines on our stderr")
        assert passed_through.count("dying with None") == 2
    finally:
        supervisor.stop_all()


LATE_WRITER = """
import os, subprocess, sys
if os.path.exists(sys.argv[1]):  # the second run: quiet
    import signal; signal.pause()
open(sys.argv[1], 'w').close()
# a grandchild keeps the first run's stderr open past its exit, and writes to it after the restart
subprocess.Popen([sys.executable, '-c', "import sys, time; time.sleep(1.5); print('late line', file=sys.stderr)"])
print('first run dying', file=sys.stderr)
sys.exit(3)
"""


def test_a_runs_late_lines_stay_out_of_the_next_runs_tail(tmp_path: Path) -> None:
    """The first run's pump outlives the second's start (its pipe is still open) and must not mix its lines into
    the tail of the run that replaced it."""
    supervisor = Supervisor(policy=POLICY)
    try:
        writer = supervisor.start("late-writer", _python(LATE_WRITER, str(tmp_path / "ran")))
        _exited(writer)
        first_tail = writer._tail
        _crash_and_restart(supervisor, writer, writer.started)
        eventually(lambda: "late line" in first_tail, what="the grandchild's late line in the first run's tail")
        assert writer.alive() and "late line" not in writer.log_tail()
    finally:
        supervisor.stop_all()


def test_the_serving_loop_restarts_a_child_and_still_stops_on_request() -> None:
    supervisor = Supervisor(policy=RestartPolicy(first_delay=0.01))
    signals = SimpleNamespace(stop=False, hangups=0)
    try:
        idle = supervisor.start("idle", _python(IDLE))
        first_pid = idle.process.pid
        os.kill(first_pid, signal.SIGKILL)

        def tick() -> None:
            signals.stop = idle.process.pid != first_pid and idle.alive()

        assert _wait_for_signal(supervisor, signals, on_tick=tick) == 0  # type: ignore[arg-type]
    finally:
        supervisor.stop_all()


def test_the_serving_loop_gives_up_on_a_crash_loop_with_exit_code_1(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(policy=RestartPolicy(first_delay=0.01, max_delay=0.02, max_restarts=2))
    signals = SimpleNamespace(stop=False, hangups=0)
    try:
        healthy = supervisor.start("healthy", _python(IDLE))
        supervisor.start("crasher", _python(CRASH))
        with caplog.at_level(logging.ERROR, "babelgate"):
            assert _wait_for_signal(supervisor, signals) == 1  # type: ignore[arg-type]
        assert "crasher exited with code 3 after 2 restarts" in caplog.text
        assert healthy.alive()  # the caller drains, then stops everything
    finally:
        supervisor.stop_all()


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(port < first_ephemeral for port in ports)
