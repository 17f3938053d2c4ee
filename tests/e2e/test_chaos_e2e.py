"""No single fault takes the gateway down: `babelgate up` with two ext_proc processes, a two-backend route and Redis
limits, under steady load, while one thing at a time goes wrong. Each test states the bound it holds the failed
requests to and prints what it measured (sent / succeeded / failed, time to recovery).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from ext_proc.limits.leases import LIFETIME as LEASE_LIFETIME
from tests.redis_server import RedisServer

from ..eventually import eventually
from .gateways import GatewayBuilder
from .support import fault


@dataclass
class Chaos:
    url: str
    keys: dict[str, str]
    config_path: Path
    up: subprocess.Popen
    redis: RedisServer

    def post(self, http: httpx.Client, key: str = "load", stream: bool = False,
             headers: dict[str, str] | None = None) -> httpx.Response:
        body = {"model": "pair", "max_tokens": 16, "messages": [{"role": "user", "content": "chaos"}]}
        if stream:
            body["stream"] = True
        response = http.post("/v1/chat/completions", json=body,
                             headers={"authorization": f"Bearer {self.keys[key]}", **(headers or {})})
        response.read()
        return response

    def server_pids(self) -> dict[int, int]:
        """process index -> pid of the ext_proc servers `up` runs now."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and str(self.config_path).encode() in argv and b"--process-index" in argv:
                found[int(argv[argv.index(b"--process-index") + 1])] = int(entry.name)
        return found


@dataclass
class Load:
    """Steady traffic from `workers` threads until stopped; every answer's status is counted."""

    chaos: Chaos
    workers: int = 8
    key: str = "load"
    stream: bool = False
    statuses: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        eventually(lambda: len(self.statuses) >= 20, what="the load is flowing")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.chaos.url, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    self.statuses.append(self.chaos.post(http, self.key, self.stream).status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)

    def failed_since(self, start: int) -> int:
        return sum(1 for status in self.statuses[start:] if status != 200)

    def succeeding_again(self, start: int, run: int = 50) -> bool:
        """The last `run` answers after `start` all succeeded."""
        recent = self.statuses[start:]
        return len(recent) >= run and all(status == 200 for status in recent[-run:])


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    with GatewayBuilder(tmp_path_factory.mktemp("chaos"), processes=2,
                        backend_defaults={"timeout": "3s", "outlier_detection": None}) as build:
        store = build.redis()
        build.backend("a", build.demo("chaos-a"))
        build.backend("b", build.demo("chaos-b"))
        build.route("pair", ("a", "m"), ("b", "m"))
        build.set(routing={"cooldown_max": "1ms"})  # each fault ends with its test: nothing carries over
        build.key("load", limits=[{"window": "hour", "requests": 10**9}])
        build.key("open", limits=[{"window": "hour", "requests": 10**9, "on_store_error": "fail_open"}])
        build.key("closed", limits=[{"window": "hour", "requests": 10**9, "on_store_error": "fail_closed"}])
        build.key("exact", limits=[{"window": "hour", "total_tokens": 10**9}])
        gateway = build.up()
        assert gateway.up is not None
        yield Chaos(gateway.url, gateway.keys, gateway.config_path, gateway.up.process, store)


def _report(what: str, load: Load, start: int, recovered_after: float | None = None) -> int:
    sent = len(load.statuses) - start
    failed = load.failed_since(start)
    recovery = ("" if recovered_after is None
                else f", serving normally again {recovered_after:.1f} s after the fault")
    print(f"\n{what}: sent {sent}, succeeded {sent - failed}, failed {failed}{recovery}")
    return failed


def test_a_frozen_ext_proc_process_costs_a_bounded_number_of_requests(chaos: Chaos) -> None:
    """SIGSTOP for 4 s: Envoy's health checks take it out of the rotation within about two seconds (the requests
    already sent to it wait out `message_timeout`), SIGCONT brings it back."""
    pid = chaos.server_pids()[1]
    with Load(chaos) as load:
        start = len(load.statuses)
        os.kill(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            eventually(lambda: len(load.statuses) - start >= 100, timeout=30, what="traffic flows around it")
            time.sleep(max(0.0, 4.0 - (time.monotonic() - frozen)))  # the fault's duration, not a wait for state
        finally:
            os.kill(pid, signal.SIGCONT)
        eventually(lambda: load.succeeding_again(start), timeout=60, what="every request succeeds again")
        failed = _report("SIGSTOP 4 s of one of two ext_proc processes", load, start, time.monotonic() - frozen)
    # Only requests sent to it before the health checks take it out of the rotation fail, each after waiting out
    # message_timeout (5 s): a worker blocked on one sends nothing else meanwhile, so each worker loses at most one
    # per 5 s, about 8 in all while the checks need their two seconds. Twice that allows checks slowed past 5 s on a
    # busy machine (a second round of requests sent to it); without the health checks every request routed to it for
    # the whole freeze failed (31 of 171 here, recovery after 25 s), which this bound still tells apart.
    assert failed <= 2 * load.workers


@pytest.mark.parametrize("failure", ["500", "reset", "stall=10000"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_failover_holds_at_40_way_concurrency(chaos: Chaos, failure: str, stream: bool) -> None:
    """The first backend fails every request; all 40 at once are answered by the second (Envoy's default retry
    circuit breaker let only 3 fail over at a time)."""

    def one(_: int) -> int:
        with httpx.Client(base_url=chaos.url, timeout=60) as http:
            return chaos.post(http, stream=stream, headers=fault(f"chaos-a:{failure}")).status_code

    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(one, range(40)))
    print(f"\nfirst backend {failure} ({'stream' if stream else 'json'}), 40 at once: "
          f"{statuses.count(200)} succeeded, {40 - statuses.count(200)} failed")
    assert statuses.count(200) == 40, statuses


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_down_is_served_by_each_fail_policy_and_recovers(chaos: Chaos, policy: str) -> None:
    with Load(chaos, key=policy, workers=4) as load:
        start = len(load.statuses)
        chaos.redis.stop(kill=True)
        down = time.monotonic()
        try:
            # past the leases taken before it (`limits/leases.py`), which admit on their own for half a second
            eventually(lambda: len(load.statuses) - start >= 40 and time.monotonic() - down > 4 * LEASE_LIFETIME,
                       timeout=30, what="requests during the outage")
        finally:
            chaos.redis.start()
        during = load.statuses[start:]
        eventually(lambda: load.succeeding_again(start, run=20), timeout=60, what="recovery after Redis is back")
        _report(f"Redis killed, fail_{policy}", load, start, time.monotonic() - down)
    if policy == "open":
        assert set(during) == {200}
    else:
        assert 503 in during and set(during) <= {200, 503}


def test_nothing_is_left_unsettled_after_the_faults(chaos: Chaos) -> None:
    """A key's token counter equals what its answers reported, once the load is over (settlements run after the
    answer is sent)."""
    used = 0
    with httpx.Client(base_url=chaos.url, timeout=30) as http:
        for index in range(30):
            headers = fault("chaos-a:500") if index % 3 == 0 else {}
            response = chaos.post(http, "exact", headers=headers)
            assert response.status_code == 200
            used += response.json()["usage"]["total_tokens"]
    client = redis.Redis.from_url(chaos.redis.url)

    def counted() -> int:
        return sum(int(client.get(key) or 0) for key in client.scan_iter("bg:*exact*total_tokens*"))

    eventually(lambda: counted() == used, timeout=30, what=f"the counter settles at {used}")


def test_a_killed_ext_proc_process_is_restarted_and_the_gateway_keeps_serving(chaos: Chaos) -> None:
    before = chaos.server_pids()
    with Load(chaos) as load:
        start = len(load.statuses)
        os.kill(before[1], signal.SIGKILL)
        killed = time.monotonic()
        eventually(lambda: chaos.server_pids().get(1) not in (None, before[1]), timeout=60,
                   what="the killed process is started again")
        eventually(lambda: load.succeeding_again(start), timeout=60, what="every request succeeds again")
        failed = _report("kill -9 of one of two ext_proc processes", load, start, time.monotonic() - killed)
    assert chaos.up.poll() is None, "`up` stopped"
    assert chaos.server_pids()[0] == before[0], "the healthy sibling was restarted too"
    assert failed <= 50
