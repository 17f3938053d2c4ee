"""Leases (`limits/leases.py`): requests admitted in-process under a share taken ahead from the shared store, never
beyond the limit; checked over the in-process store (deterministic) and over a real Redis with several limiters
standing for several processes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

import pytest

from ext_proc.config.loading import parse_config
from ext_proc.errors import RateLimited
from ext_proc.limits import leases as leases_module
from ext_proc.limits.estimate import Usage
from ext_proc.limits.leases import Leases
from ext_proc.limits.limiter import Demand, Limiter, Reservation, compile_tables
from ext_proc.limits.memory_store import MemoryStore
from ext_proc.limits.redis_store import RedisStore
from ext_proc.limits.setup import build_limiter
from ext_proc.limits.store import Admission, Counter, LimitStore

from ..eventually import eventually_async
from ..redis_server import RedisServer

REQUESTS = 6_400
"""A request limit with room for leases: 1/64 of it is 100 requests."""
CONFIG = f"""
backends: [{{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}}]
routes: [{{model: m, backends: [{{backend: oa, model: x}}]}}]
limits:
  per_key: [{{window: hour, requests: {REQUESTS}, total_tokens: 64000000}}]
"""
LIFETIME = 0.3
NOW = 1_800_000_030.0
"""Inside one hour's window however long a test takes (the windows are UTC-aligned)."""


class CountingStore:
    """A store that counts the reservations it was asked for."""

    def __init__(self, inner: LimitStore) -> None:
        self.inner = inner
        self.settles_in_order = inner.settles_in_order
        self.calls_need_a_task = inner.calls_need_a_task
        self.reserves = 0

    async def reserve(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        self.reserves += 1
        return await self.inner.reserve(counters, amounts)

    async def adjust(self, keys: Sequence[str], deltas: Sequence[int]) -> None:
        await self.inner.adjust(keys, deltas)

    async def read(self, keys: Sequence[str]) -> list[int]:
        return await self.inner.read(keys)

    async def scan(self, prefix: str) -> dict[str, int]:
        return await self.inner.scan(prefix)

    async def close(self) -> None:
        await self.inner.close()


def _limiter(store: LimitStore, config: str = CONFIG, lifetime: float = LIFETIME) -> Limiter:
    return Limiter(store, compile_tables(parse_config(config)), leases=Leases(store, lifetime=lifetime))


async def _reserve(limiter: Limiter, tokens: int = 10) -> Reservation:
    reservation = await limiter.reserve(limiter.scopes("k", None, None, "m", "oa"), Demand(tokens, 0, 0), "oa",
                                        now=NOW)
    assert reservation is not None
    return reservation


async def _counts(store: LimitStore) -> dict[str, int]:
    """Metric -> the key's counter."""
    return {key.split("}:")[1].split(":")[0]: value for key, value in (await store.scan("bg:")).items()}


async def _granted(limiter: Limiter, count: int) -> None:
    assert limiter.leases is not None
    leases = limiter.leases
    await eventually_async(lambda: leases.stats.granted >= count, what=f"{count} leases granted")


def test_requests_under_a_lease_skip_the_store() -> None:
    async def scenario() -> None:
        store = CountingStore(MemoryStore())
        limiter = _limiter(store, lifetime=60)
        first = [await _reserve(limiter) for _ in range(2)]
        # decided by the store; the second shows the counters busy, and leases are asked for after it
        assert all(r.leases is None for r in first) and store.reserves == 2
        await _granted(limiter, 2)  # one per counter: requests, tokens
        asked = store.reserves
        later = [await _reserve(limiter) for _ in range(50)]
        assert store.reserves == asked and all(r.leases is not None for r in later)
        # the store counts the leases whole: everything admitted here is inside them
        assert await _counts(store) == {"requests": 2 + REQUESTS // 64, "total_tokens": 20 + 64_000_000 // 64}
        headers = dict(later[-1].headers)
        assert int(headers["x-ratelimit-remaining-requests"]) == REQUESTS - 52
        await limiter.close()
        assert await _counts(store) == {"requests": 52, "total_tokens": 520}


def test_a_counter_used_now_and_then_is_not_leased() -> None:
    """A lease would cost it two store calls (taking it, giving it back) for the one request it serves."""
    async def scenario() -> None:
        store = CountingStore(MemoryStore())
        limiter = _limiter(store)
        leases = limiter.leases
        assert leases is not None
        await _reserve(limiter)
        await asyncio.sleep(2 * LIFETIME)  # at least this long between the two: never shorter
        await _reserve(limiter)
        await leases.idle()
        assert leases.stats.granted == 0 and store.reserves == 2
        await _reserve(limiter)  # right after the last: busy now
        await _granted(limiter, 2)

    asyncio.run(scenario())

    asyncio.run(scenario())


def test_unspent_parts_go_back_when_a_lease_ends() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        limiter = _limiter(store)
        await _reserve(limiter)
        await _reserve(limiter)
        await _granted(limiter, 2)
        for _ in range(8):
            await _reserve(limiter)
        leases = limiter.leases
        assert leases is not None
        await eventually_async(lambda: leases.stats.returned >= 2, what="both leases back")
        assert await _counts(store) == {"requests": 10, "total_tokens": 100}

    asyncio.run(scenario())


def test_settlements_add_up_the_same_inside_a_live_lease_and_after_it_went_back() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        limiter = _limiter(store)
        await _reserve(limiter, tokens=100)
        await _reserve(limiter, tokens=100)
        await _granted(limiter, 2)
        early, late, failed = [await _reserve(limiter, tokens=100) for _ in range(3)]
        assert early.leases is not None and late.leases is not None and failed.leases is not None
        await limiter.settle(early, Usage(40, 5), "oa", "x")  # into the live lease
        await limiter.release(failed)  # back into the live lease
        leases = limiter.leases
        assert leases is not None
        await eventually_async(lambda: leases.stats.returned >= 2, what="both leases back")
        await limiter.settle(late, Usage(30, 90), "oa", "x")  # the lease is back: the store is adjusted
        assert await _counts(store) == {"requests": 4, "total_tokens": 200 + 45 + 120}

    asyncio.run(scenario())


def test_a_sealed_reservation_under_a_lease_settles_right_from_another_process() -> None:
    """A reservation admitted under a lease leaves its process sealed (a chain's attempt stage, the stream meter):
    the other process adjusts the store by what was used past the reservation, its own process gives back what the
    lease did not admit, and the store ends at the usage, whichever comes first."""
    async def scenario() -> None:
        store = MemoryStore()
        here = _limiter(store)
        there = Limiter(store, here.tables, sealer=here.sealer)
        await _reserve(here, tokens=100)
        await _reserve(here, tokens=100)
        await _granted(here, 2)
        before, after = [await _reserve(here, tokens=100) for _ in range(2)]
        assert before.leases is not None and after.leases is not None
        opened = there.unseal(here.seal(before))
        assert opened is not None and opened.leases is None  # leases never leave their process
        await there.settle(opened, Usage(40, 5), "oa", "x")  # while the lease is live
        leases = here.leases
        assert leases is not None
        await eventually_async(lambda: leases.stats.returned >= 2, what="both leases back")
        late = there.unseal(here.seal(after))
        assert late is not None
        await there.settle(late, Usage(30, 90), "oa", "x")  # after it went back
        assert await _counts(store) == {"requests": 4, "total_tokens": 200 + 45 + 120}

    asyncio.run(scenario())


@pytest.mark.parametrize(("why", "config", "first", "second"), [
    ("a limit too small for 8 requests of this size per share", CONFIG.replace("64000000", "6400"), 20, 20),
    ("the counter is past half its limit", CONFIG, 33_000_000, 10),
])
def test_no_tokens_lease_where_it_would_not_pay_or_could_refuse_early(why: str, config: str, first: int,
                                                                      second: int) -> None:
    async def scenario() -> None:
        limiter = _limiter(MemoryStore(), config)
        await _reserve(limiter, tokens=first)
        await _reserve(limiter, tokens=second)  # the second makes both counters busy
        assert limiter.leases is not None
        await limiter.leases.idle()
        assert limiter.leases.stats.granted == 1, why  # the requests counter's alone

    asyncio.run(scenario())


def test_a_grant_stops_at_half_the_limit_whatever_the_request_saw() -> None:
    """A grant asked for on an old reading: the store, not the reading, holds the half."""
    async def scenario() -> None:
        store = MemoryStore()
        leases = Leases(store, lifetime=60)
        counter = Counter("bg:{key:k}:requests:hour:0", 6400, 3600, "k")  # a share: 100; half: 3200
        await store.reserve([counter], [3000])
        for _ in range(2):  # busy, and as if the count were still 0
            leases.offer([counter], [1], [0])
        await leases.idle()
        assert (await store.read([counter.key])) == [3100] and leases.stats.granted == 1
        leases.offer([counter], [1], [0])  # a live lease: not asked again
        await leases.idle()
        assert (await store.read([counter.key])) == [3100]
        await store.reserve([counter], [150])
        await leases.close()
        assert (await store.read([counter.key])) == [3150]
        fresh = Leases(store, lifetime=60)
        for _ in range(2):
            fresh.offer([counter], [1], [0])
        await fresh.idle()
        assert (await store.read([counter.key])) == [3150], "3150 + 100 would pass half: refused by the store"
        assert fresh.stats.granted == 0

    asyncio.run(scenario())


def _race(make_stores: Callable[[], list[LimitStore]], requests: int, seed: int) -> tuple[int, dict[str, int]]:
    """Several limiters (processes) over one store, `requests` reservations of 1-3 tokens in random order and
    bursts, against a limit of REQUESTS requests; then every lease ends and the store decides the rest, one by one.
    Returns how many were admitted and the final counters."""
    async def scenario() -> tuple[int, dict[str, int]]:
        stores = make_stores()
        try:
            return await race(stores)
        finally:
            for store in set(stores):
                await store.close()

    async def race(stores: list[LimitStore]) -> tuple[int, dict[str, int]]:
        limiters = [_limiter(store) for store in stores]
        rng = random.Random(seed)
        admitted = 0

        async def one(limiter: Limiter) -> None:
            nonlocal admitted
            try:
                await _reserve(limiter, tokens=rng.randint(1, 3))
            except RateLimited:
                return
            admitted += 1

        sent = 0
        while sent < requests:
            burst = min(rng.randint(1, 400), requests - sent)
            await asyncio.gather(*(one(rng.choice(limiters)) for _ in range(burst)))
            sent += burst
        assert admitted <= REQUESTS
        under_leases = sum(limiter.leases.stats.admitted for limiter in limiters if limiter.leases is not None)
        # leases serve the first half of the limit (past it, no lease is granted): a good part of it here
        assert under_leases >= REQUESTS // 8, f"only {under_leases} of {admitted} admitted under leases"
        for limiter in limiters:
            await limiter.close()
        counts = await _counts(stores[0])
        assert counts["requests"] == admitted  # every unspent share went back: the store holds exactly the admitted
        while True:  # the store decides alone now: it admits exactly up to the limit
            try:
                await _reserve(limiters[0])
            except RateLimited:
                break
            admitted += 1
        return admitted, await _counts(stores[0])

    return asyncio.run(scenario())


def test_limiters_sharing_a_store_never_admit_beyond_the_limit() -> None:
    store = MemoryStore()
    admitted, counts = _race(lambda: [store, store, store], REQUESTS + 600, seed=7)
    assert admitted == REQUESTS and counts["requests"] == REQUESTS


def test_processes_sharing_a_redis_never_admit_beyond_the_limit(redis_server: RedisServer) -> None:
    """Three limiters, each with its own connection (three processes), over one real Redis."""
    admitted, counts = _race(lambda: [RedisStore.from_url(redis_server.url, timeout=1.0) for _ in range(3)],
                             REQUESTS + 600, seed=11)
    assert admitted == REQUESTS and counts["requests"] == REQUESTS


def test_leases_are_for_redis_and_can_be_turned_off(redis_server: RedisServer) -> None:
    def built(redis: str) -> Limiter:
        limiter = build_limiter(parse_config(CONFIG.replace("limits:\n", f"limits:\n{redis}", 1)))
        assert limiter is not None
        return limiter

    assert built("").leases is None  # the in-process store is as fast as a lease
    assert isinstance(built(f"  redis: {{url: '{redis_server.url}'}}\n").leases, Leases)
    assert built(f"  redis: {{url: '{redis_server.url}', leases: false}}\n").leases is None
    assert leases_module.SHARE == 64 and leases_module.MIN_REQUESTS == 8  # as `limits.redis.leases` documents


def test_a_spent_lease_goes_back_at_once_and_another_follows() -> None:
    async def scenario() -> None:
        store = CountingStore(MemoryStore())
        limiter = _limiter(store, CONFIG.replace(f"requests: {REQUESTS}", "requests: 640"), lifetime=60)
        leases = limiter.leases
        assert leases is not None
        await _reserve(limiter)
        await _reserve(limiter)
        await _granted(limiter, 2)  # requests: a share of 10
        for _ in range(10):
            assert (await _reserve(limiter)).leases is not None
        # spent: the spent lease goes back, the store decides, and its admission asks for a new lease
        assert (await _reserve(limiter)).leases is None
        await _reserve(limiter)  # under the new lease or, if it is not there yet, the store's
        await _granted(limiter, 3)
        assert (await _reserve(limiter)).leases is not None
        await limiter.close()
        assert (await _counts(store))["requests"] == 15

    asyncio.run(scenario())
