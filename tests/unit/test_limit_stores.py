"""Counter stores: one set of semantics, checked against the in-process store, a real Redis and a real three-master
Redis Cluster; then what only Redis can do wrong (outages, hung servers, several processes)."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from ext_proc.limits.memory_store import MemoryStore
from ext_proc.limits.redis_store import RedisStore
from ext_proc.limits.store import Admission, Counter, LimitStore, StoreUnavailable

from ..eventually import eventually_async
from ..redis_server import RedisClusterServers, RedisServer

STORE_KINDS = ("memory", "redis", "cluster")
TIMEOUT = 1.0
"""Per-call timeout (seconds) of the stores in tests about what a store answers. A stall of 50 ms, the production
default, is routine on a busy CI machine: the call would fail, and a cluster client retrying it after a timeout can
count a reservation twice, which exact checks must not see. Only the tests about how fast a call gives up keep
`from_url`'s 50 ms."""
FAST = 2.0
"""Seconds within which a call against an unreachable or hung Redis must give up. The default per-call deadline is
0.25 s (4 x the 50 ms timeout + 50 ms); a Redis Cluster reservation runs one call per hash slot, so a dead master can
cost two deadlines (measured 0.52 s on a loaded 2-core machine, so a busy CI machine gets four times that); hanging
for the client's own retries would be several seconds, and a hung Redis without a deadline forever."""


def _tag_in_slots(low: int, high: int) -> str:
    index = 0
    while not low <= key_slot(f"s{index}".encode()) <= high:
        index += 1
    return f"s{index}"


TAGS = (_tag_in_slots(0, 5460), _tag_in_slots(5461, 10922), _tag_in_slots(10923, 16383))
"""One hash tag per slot range that `redis-cli --cluster create` gives each of three masters: keys under different
tags live on different nodes, so a multi-tag reservation in the cluster is a multi-node one."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bench:
    """A store under test, a fresh key namespace, and the means to let time pass for it."""

    kind: str
    store: LimitStore
    namespace: str
    clock: FakeClock | None
    raw: Redis | RedisCluster | None

    def key(self, tag: int, name: str = "c") -> str:
        return f"{self.namespace}{{{TAGS[tag]}}}:{name}"

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def pttl(self, key: str) -> int | None:
        """Remaining life in ms as Redis sees it (None for the memory store, checked by behaviour instead)."""
        return None if self.raw is None else await self.raw.pttl(key)


@dataclass
class Stores:
    kind: str
    url: str | None

    def run(self, scenario: Callable[[Bench], Awaitable[None]], *, timeout: float = TIMEOUT) -> None:
        asyncio.run(self._run(scenario, timeout))

    async def _run(self, scenario: Callable[[Bench], Awaitable[None]], timeout: float) -> None:
        clock = raw = None
        store: LimitStore
        if self.url is None:
            clock = FakeClock()
            store = MemoryStore(clock)
        else:
            cluster = self.kind == "cluster"
            store = RedisStore.from_url(self.url, timeout=timeout, cluster=cluster)
            raw = RedisCluster.from_url(self.url) if cluster else Redis.from_url(self.url)
        try:
            await scenario(Bench(self.kind, store, f"t{uuid.uuid4().hex[:8]}:", clock, raw))
        finally:
            await store.close()
            if raw is not None:
                await raw.aclose()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=STORE_KINDS)
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "redis":
        return Stores("redis", request.getfixturevalue("redis_server").url)
    if request.param == "cluster":
        return Stores("cluster", request.getfixturevalue("redis_cluster").url)
    return Stores("memory", None)


def counter(key: str, limit: int, ttl: int = 60) -> Counter:
    return Counter(key, limit, ttl, f"test {key}")


# --- one set of semantics for every store ---------------------------------------------------------------------------


def test_admits_until_the_limit_then_refuses_without_touching_anything(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        c = counter(bench.key(0), 10)
        assert await bench.store.reserve([c], [4]) == Admission(True, None, (4,))
        assert await bench.store.reserve([c], [6]) == Admission(True, None, (10,))
        assert await bench.store.reserve([c], [1]) == Admission(False, 0, (10,))
        assert await bench.store.read([c.key]) == [10]

    stores.run(scenario)


def test_an_amount_of_zero_only_reads_and_refuses_once_the_counter_is_over(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        c = counter(bench.key(0), 5)
        assert await bench.store.reserve([c], [0]) == Admission(True, None, (0,))
        assert await bench.store.scan(bench.namespace) == {c.key: 0}  # admitted: the window exists, at 0
        assert await bench.store.reserve([c], [5]) == Admission(True, None, (5,))
        assert await bench.store.reserve([c], [0]) == Admission(True, None, (5,))  # exactly at the limit
        await bench.store.adjust([c.key], [2])  # settlement found the request cost more than reserved
        assert await bench.store.reserve([c], [0]) == Admission(False, 0, (7,))

    stores.run(scenario)


def test_a_later_counter_refusing_leaves_every_counter_as_it_was(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        # Three scopes (in the cluster: three nodes) and two counters sharing a scope.
        a, b, c = counter(bench.key(0), 100), counter(bench.key(1), 10), counter(bench.key(2), 100)
        same = counter(bench.key(0, "other"), 8)
        assert await bench.store.reserve([a, b, c, same], [5, 5, 5, 5]) == Admission(True, None, (5, 5, 5, 5))
        assert await bench.store.reserve([a, b, c, same], [5, 6, 5, 1]) == Admission(False, 1, (5, 5, 5, 5))
        assert await bench.store.reserve([a, same, b], [5, 4, 1]) == Admission(False, 1, (5, 5, 5))
        assert await bench.store.read([a.key, b.key, c.key, same.key]) == [5, 5, 5, 5]
        missing = counter(bench.key(2, "new"), 1)
        assert await bench.store.reserve([a, missing], [1, 2]) == Admission(False, 1, (5, 0))
        assert missing.key not in await bench.store.scan(bench.namespace)  # a refusal creates nothing

    stores.run(scenario)


def test_the_first_refusing_counter_is_the_one_named(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        a, b, c = counter(bench.key(0), 100), counter(bench.key(1), 3), counter(bench.key(2), 3)
        assert await bench.store.reserve([a, b, c], [1, 4, 4]) == Admission(False, 1, (0, 0, 0))
        assert await bench.store.reserve([c, b, a], [4, 4, 1]) == Admission(False, 0, (0, 0, 0))

    stores.run(scenario)


def test_a_key_listed_twice_sees_its_own_earlier_amount(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        c = counter(bench.key(0), 10)
        assert await bench.store.reserve([c, c], [6, 5]) == Admission(False, 1, (0, 0))
        assert await bench.store.reserve([c, c], [6, 4]) == Admission(True, None, (10, 10))
        await bench.store.adjust([c.key, c.key], [-3, -3])
        assert await bench.store.read([c.key]) == [4]

    stores.run(scenario)


def test_a_window_lives_its_ttl_from_creation_and_traffic_does_not_extend_it(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        # Two seconds, so the increment 1 s in still finds the window on a machine that stalls for most of a second.
        c = counter(bench.key(0), 100, ttl=2)
        await bench.pttl(c.key)  # connects the raw client (in the cluster: loads its slot map) outside the timing
        started = time.monotonic()
        await bench.store.reserve([c], [3])
        _assert_whole_life(await bench.pttl(c.key), c.ttl, since=started)
        await bench.advance(1.0)
        assert await bench.store.reserve([c], [2]) == Admission(True, None, (5,))
        after_increment = await bench.pttl(c.key)
        assert after_increment is None or 0 < after_increment < 1500  # not pushed back to a full two seconds
        await bench.advance(1.5)  # 2.5 s after creation: had the increment extended it, it would live to 3 s
        assert await bench.store.read([c.key]) == [0]
        assert await bench.store.scan(bench.namespace) == {}
        started = time.monotonic()
        assert await bench.store.reserve([c], [4]) == Admission(True, None, (4,))  # a new window starts from 0
        _assert_whole_life(await bench.pttl(c.key), c.ttl, since=started)

    stores.run(scenario)


def test_adjust_settles_live_counters_and_never_goes_below_zero(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        a, b = counter(bench.key(0), 100), counter(bench.key(1), 100)
        await bench.store.reserve([a, b], [10, 10])
        await bench.store.adjust([a.key, b.key], [5, -4])
        assert await bench.store.read([a.key, b.key]) == [15, 6]
        await bench.store.adjust([a.key, b.key], [-20, -6])
        assert await bench.store.read([a.key, b.key]) == [0, 0]
        assert await bench.store.scan(bench.namespace) == {a.key: 0, b.key: 0}  # clamped, still the same window
        ttl = await bench.pttl(a.key)
        assert ttl is None or 0 < ttl <= 60_000  # clamping kept the window's expiry
        never_reserved = bench.key(2, "never")
        await bench.store.adjust([never_reserved], [7])
        assert await bench.store.read([never_reserved]) == [0]
        assert never_reserved not in await bench.store.scan(bench.namespace)
        await bench.store.adjust([], [])

    stores.run(scenario)


def test_concurrent_settlements_share_one_script_call_and_all_land(redis_server: RedisServer) -> None:
    async def scenario(bench: Bench) -> None:
        keys = [bench.key(0, f"c{i}") for i in range(50)]
        await bench.store.reserve([counter(k, 100) for k in keys], [10] * 50)
        await bench.store.adjust([keys[0]], [0])  # loads the script (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA)
        before = await _script_calls(bench.raw)
        await asyncio.gather(*(bench.store.adjust([k, keys[0]], [i, 1]) for i, k in enumerate(keys)))
        assert await _script_calls(bench.raw) - before == 1
        assert await bench.store.read(keys) == [10 + 0 + 50, *(10 + i for i in range(1, 50))]

    Stores("redis", redis_server.url).run(scenario)


def test_concurrent_reservations_share_one_script_call_each_all_or_nothing(redis_server: RedisServer) -> None:
    async def scenario(bench: Bench) -> None:
        shared, own = counter(bench.key(0, "shared"), 100), [counter(bench.key(0, f"own{i}"), 15) for i in range(30)]
        await bench.store.reserve([shared], [0])  # loads the script
        before = await _script_calls(bench.raw)
        # 30 requests, each needing 10 of the shared limit and 10 or 20 of its own: the odd ones can never fit.
        admissions = await asyncio.gather(*(bench.store.reserve([shared, own[i]], [10, 10 + 10 * (i % 2)])
                                            for i in range(30)))
        assert await _script_calls(bench.raw) - before == 1
        admitted = [i for i, admission in enumerate(admissions) if admission.admitted]
        assert admitted == list(range(0, 20, 2))  # in arrival order, until the shared limit is full
        assert {admissions[i].refused_index for i in range(30) if i not in admitted} == {0, 1}
        assert await bench.store.read([shared.key, own[0].key, own[1].key]) == [100, 10, 0]

    Stores("redis", redis_server.url).run(scenario)


async def _script_calls(raw: Redis) -> int:
    stats = await raw.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


def test_adjust_does_not_recreate_an_expired_window(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        short, long = counter(bench.key(0), 100, ttl=1), counter(bench.key(1), 100, ttl=60)
        await bench.store.reserve([short, long], [5, 5])
        await bench.advance(1.1)
        await bench.store.adjust([short.key, long.key], [3, -2])  # a settlement arriving after the window closed
        assert await bench.store.scan(bench.namespace) == {long.key: 3}
        await bench.store.adjust([short.key], [-5])
        assert await bench.store.read([short.key, long.key]) == [0, 3]

    stores.run(scenario)


def test_read_reports_zero_for_missing_keys(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        c = counter(bench.key(1), 100)
        await bench.store.reserve([c], [9])
        assert await bench.store.read([bench.key(0, "missing"), c.key, bench.key(2, "missing")]) == [0, 9, 0]
        assert await bench.store.read([]) == []
        assert await bench.store.reserve([], []) == Admission(True, None, ())

    stores.run(scenario)


def test_scan_returns_every_key_under_the_prefix_and_nothing_else(stores: Stores) -> None:
    async def scenario(bench: Bench) -> None:
        ns = bench.namespace
        wanted = {f"{ns}p[ab]*:{{{tag}}}:{name}": value
                  for value, (tag, name) in enumerate(((TAGS[0], "x"), (TAGS[1], "y"), (TAGS[2], "z")), start=1)}
        lookalike = f"{ns}pa*:{{{TAGS[0]}}}:x"  # what an unescaped glob "p[ab]*" would also match
        counters = [counter(key, 100) for key in (*wanted, lookalike)]
        await bench.store.reserve(counters, [*wanted.values(), 4])
        assert await bench.store.scan(f"{ns}p[ab]*:") == wanted
        assert await bench.store.scan(ns) == {**wanted, lookalike: 4}
        assert await bench.store.scan(f"{ns}nothing") == {}

    stores.run(scenario)


def test_concurrent_reservations_never_over_admit(stores: Stores) -> None:
    limits = (1000, 700)

    async def scenario(bench: Bench) -> None:
        keys = (bench.key(0), bench.key(1))  # two scopes: in the cluster, refusals in the second are rolled back
        outcomes = await _hammer(bench.store, keys, limits, seed=7, calls=200)
        _assert_exact(outcomes, await bench.store.read(keys), limits)

    stores.run(scenario)


# --- Redis only -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_two_processes_share_one_limit_exactly(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster").url
    namespace = f"t{uuid.uuid4().hex[:8]}:"
    keys = (f"{namespace}{{{TAGS[0]}}}:c", f"{namespace}{{{TAGS[2]}}}:c")
    limits = (1500, 1000)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_hammer_in_process, args=(start, results, url, kind == "cluster", keys,
                                                                limits, seed), daemon=True)
               for seed in (1, 2)]
    for worker in workers:
        worker.start()
    try:
        outcomes = [outcome for _ in workers for outcome in results.get(timeout=30)]
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()

    async def final() -> list[int]:
        store = RedisStore.from_url(url, timeout=1.0, cluster=kind == "cluster")
        try:
            return await store.read(keys)
        finally:
            await store.close()

    assert len(outcomes) == 200
    _assert_exact(outcomes, asyncio.run(final()), limits)


def test_an_outage_fails_fast_mid_load_and_the_same_store_recovers(tmp_path: Path) -> None:
    async def scenario(server: RedisServer) -> None:
        store = RedisStore.from_url(server.url)  # from_url's default timeout: 50 ms
        c = counter("t:{outage}:c", 10**9)
        stop = asyncio.Event()
        durations: list[float] = []
        served_after_restart = 0
        restarted = False

        async def load() -> None:
            nonlocal served_after_restart
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await store.reserve([c], [1])
                    served_after_restart += restarted
                except StoreUnavailable:
                    pass
                durations.append(time.monotonic() - started)
                await asyncio.sleep(0.005)

        try:
            # Served before the outage. Every call here has the 50 ms timeout, and the first one connects and loads
            # the script: on a busy machine, awaited rather than asked of one call.
            await eventually_async(lambda: _admits(store, c), what="the store serves before the outage")
            loaders = [asyncio.create_task(load()) for _ in range(20)]
            await asyncio.sleep(0.2)
            await asyncio.to_thread(server.stop, kill=True)  # a crash, in the middle of the load
            await asyncio.sleep(0.2)
            for call in (lambda: store.reserve([c], [1]), lambda: store.adjust([c.key], [-1]),
                         lambda: store.read([c.key]), lambda: store.scan("t:")):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert time.monotonic() - started < FAST
            await asyncio.to_thread(server.start)  # same port, empty, scripts forgotten
            restarted = True
            # The same store serves again, with no pause of its own to sit out. Not asked of one call: amid 20
            # loaders on a busy machine, any one reply can miss the 50 ms timeout.
            await eventually_async(lambda: _admits(store, c), what="the store serves again after the restart")
            await eventually_async(lambda: served_after_restart > 0, what="the loaders are served again")
            stop.set()
            await asyncio.gather(*loaders)
            assert served_after_restart > 0
            assert max(durations) < FAST, f"slowest call {max(durations):.3f}s"
        finally:
            await store.close()

    with RedisServer(tmp_path / "outage") as server:
        asyncio.run(scenario(server))


def test_a_hung_redis_times_out_instead_of_hanging(tmp_path: Path) -> None:
    async def scenario(server: RedisServer) -> None:
        store = RedisStore.from_url(server.url)
        c = counter("t:{hung}:c", 100)
        try:
            await eventually_async(lambda: _admits(store, c), what="the store serves before the freeze")
            server.freeze()
            try:
                for call in (lambda: store.reserve([c], [1]), lambda: store.adjust([c.key], [1]),
                             lambda: store.read([c.key])):
                    started = time.monotonic()
                    # The reply timeout, or on a machine stalled past both, the call's deadline ("no answer")
                    with pytest.raises(StoreUnavailable, match=r"(?i)timeout|no answer"):
                        await call()
                    assert time.monotonic() - started < FAST
            finally:
                server.thaw()
            # Served again; awaited, since a 50 ms reply right after the thaw can still be late on a busy machine.
            await eventually_async(lambda: _admits(store, c), what="the store serves again after the thaw")
        finally:
            await store.close()

    with RedisServer(tmp_path / "hung") as server:
        asyncio.run(scenario(server))


def test_cluster_refusal_in_a_later_node_gives_back_what_earlier_nodes_took(
        redis_cluster: RedisClusterServers) -> None:
    async def scenario() -> None:
        store = RedisStore.from_url(redis_cluster.url, timeout=TIMEOUT, cluster=True)
        raw = RedisCluster.from_url(redis_cluster.url)
        namespace = f"t{uuid.uuid4().hex[:8]}:"
        first, second, third = (counter(f"{namespace}{{{tag}}}:tokens", limit) for tag, limit in
                                zip(TAGS, (100, 10, 100), strict=True))
        try:
            await raw.initialize()
            nodes = {raw.get_node_from_key(c.key).name for c in (first, second, third)}
            assert len(nodes) == 3, "the three scopes must live on three different masters"
            await store.reserve([first, second, third], [50, 8, 50])
            refusal = await store.reserve([first, second, third], [40, 5, 40])
            assert refusal == Admission(False, 1, (50, 8, 50))
            assert [int(await raw.get(c.key)) for c in (first, second, third)] == [50, 8, 50]
            assert 59_000 < await raw.pttl(first.key) <= 60_000  # the give-back kept the window's expiry
        finally:
            await store.close()
            await raw.aclose()

    asyncio.run(scenario())


def test_cluster_failure_in_a_later_node_gives_back_what_earlier_nodes_took(
        redis_cluster: RedisClusterServers) -> None:
    async def scenario() -> None:
        store = RedisStore.from_url(redis_cluster.url, timeout=TIMEOUT, cluster=True)  # the give-back must land
        raw = RedisCluster.from_url(redis_cluster.url)
        namespace = f"t{uuid.uuid4().hex[:8]}:"
        first, broken = counter(f"{namespace}{{{TAGS[0]}}}:c", 100), counter(f"{namespace}{{{TAGS[1]}}}:c", 100)
        try:
            await store.reserve([first], [10])
            await raw.hset(broken.key, "not", "a counter")  # its script fails (WRONGTYPE) after the first node took
            with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
                await store.reserve([first, broken], [5, 5])
        finally:
            await store.close()  # waits for the give-back running in the background
            assert int(await raw.get(first.key)) == 10
            assert store.failed_give_backs == 0
            await raw.aclose()

    asyncio.run(scenario())


def test_a_dead_cluster_master_fails_its_calls_fast_and_the_same_store_recovers(
        redis_cluster: RedisClusterServers) -> None:
    """Restores what it breaks (the node comes back and the cluster is whole again) before it returns."""

    async def scenario() -> None:
        store = RedisStore.from_url(redis_cluster.url, cluster=True)
        namespace = f"t{uuid.uuid4().hex[:8]}:"
        counters = [counter(f"{namespace}{{{tag}}}:c", 10**9) for tag in TAGS]
        try:
            await eventually_async(lambda: _admits(store, *counters), what="the cluster store serves before the kill")
            await asyncio.to_thread(redis_cluster.nodes[1].stop, kill=True)
            durations = []
            for _ in range(2):
                for call in (lambda: store.reserve(counters, [1, 1, 1]), lambda: store.read([c.key for c in counters]),
                             lambda: store.adjust([c.key for c in counters], [-1, -1, -1])):
                    started = time.monotonic()
                    with pytest.raises(StoreUnavailable):
                        await call()
                    durations.append(time.monotonic() - started)
            assert max(durations) < FAST, f"slowest call {max(durations):.3f}s"
            await asyncio.to_thread(redis_cluster.nodes[1].start)
            await eventually_async(lambda: _admits(store, *counters),  # the client finds the returned node on its own
                              what="the cluster store recovers")
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        for node in redis_cluster.nodes:
            node.start()
        redis_cluster.wait_until_ready()


def test_a_ca_file_needs_a_tls_url() -> None:
    with pytest.raises(ValueError, match="rediss://"):
        RedisStore.from_url("redis://127.0.0.1:6379", ssl_ca_file="/tmp/ca.pem")


# --- memory only ----------------------------------------------------------------------------------------------------


def test_memory_store_sweeps_expired_windows_so_memory_stays_bounded() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = MemoryStore(clock, purge_interval=10)
        for index in range(1000):
            await store.reserve([counter(f"k{index}", 10, ttl=5)], [1])
        await store.reserve([counter("lasting", 10, ttl=60)], [1])
        assert len(store) == 1001
        clock.now += 11
        assert await store.read(["lasting"]) == [1]  # any call sweeps once the interval has passed
        assert len(store) == 1

    asyncio.run(scenario())


# --- helpers --------------------------------------------------------------------------------------------------------

Outcome = tuple[tuple[int, ...], bool, int | None, tuple[int, ...]]
"""(amounts, admitted, refused index, used): plain tuples, so they cross process boundaries."""


async def _hammer(store: LimitStore, keys: Sequence[str], limits: Sequence[int], seed: int,
                  calls: int) -> list[Outcome]:
    """`calls` concurrent reservations of random amounts against the same counters."""
    rng = random.Random(seed)
    counters = [counter(key, limit) for key, limit in zip(keys, limits, strict=True)]
    plans = [tuple(rng.randint(1, 20) for _ in keys) for _ in range(calls)]
    admissions = await asyncio.gather(*(store.reserve(counters, plan) for plan in plans))
    return [(plan, a.admitted, a.refused_index, a.used) for plan, a in zip(plans, admissions, strict=True)]


def _hammer_in_process(start: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue, url: str,
                       cluster: bool, keys: Sequence[str], limits: Sequence[int], seed: int) -> None:
    async def run() -> list[Outcome]:
        store = RedisStore.from_url(url, timeout=1.0, cluster=cluster)
        try:
            await store.read(keys)  # connected before the start line
            await asyncio.to_thread(start.wait, 20)
            return await _hammer(store, keys, limits, seed, calls=100)
        finally:
            await store.close()

    results.put(asyncio.run(run()))


def _assert_exact(outcomes: list[Outcome], finals: list[int], limits: Sequence[int]) -> None:
    """Every counter holds exactly what was admitted, within its limit, and every refusal was deserved: the counter
    it names, as read in the same atomic step, could not take the amount."""
    admitted = [plan for plan, ok, _, _ in outcomes if ok]
    assert 0 < len(admitted) < len(outcomes), "the load must both fill the limits and be refused"
    for position, limit in enumerate(limits):
        assert finals[position] == sum(plan[position] for plan in admitted) <= limit
    for plan, ok, refused, used in outcomes:
        if not ok:
            assert refused is not None and used[refused] + plan[refused] > limits[refused]



async def _admits(store: LimitStore, *counters: Counter) -> bool:
    """One reservation of 1 on each counter is admitted (StoreUnavailable propagates)."""
    return (await store.reserve(list(counters), [1] * len(counters))).admitted


def _assert_whole_life(remaining: int | None, ttl: int, since: float) -> None:
    """`remaining`, a window's PTTL in ms read just now (None: the memory store), is its whole `ttl` but for the time
    passed since before the call that created it, less 10 ms for Redis' millisecond rounding: however slow the
    calls, a window starts its life when it is created."""
    if remaining is None:
        return
    elapsed_ms = (time.monotonic() - since) * 1000
    assert ttl * 1000 - elapsed_ms - 10 <= remaining <= ttl * 1000, f"{remaining} ms left after {elapsed_ms:.0f} ms"
