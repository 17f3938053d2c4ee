"""The limiter over the in-process store: one reservation for every scope, settlement, release, outages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ext_proc.config.loading import parse_config
from ext_proc.errors import RateLimited, Unavailable
from ext_proc.limits.estimate import Usage
from ext_proc.limits.limiter import Demand, Limiter, Reservation, compile_tables
from ext_proc.limits.memory_store import MemoryStore
from ext_proc.limits.store import Admission, Counter, StoreUnavailable

CONFIG = """
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1", limits: [{window: hour, total_tokens: 10000}]}
  - {id: ob, schema: openai, base_url: "http://127.0.0.1:9/v1", limits: [{window: hour, total_tokens: 10000}]}
routes:
  - model: m
    backends: [{backend: oa, model: x}, {backend: ob, model: x}]
    limits: [{window: minute, requests: 100}]
teams: [{id: t, limits: [{window: day, usd: 1.0, on_store_error: fail_closed}]}]
prices: [{backend: oa, model: x, input: 1000, output: 2000}]
limits:
  per_key: [{window: hour, total_tokens: 500, requests: 10}]
  per_user: [{window: hour, requests: 2}]
"""
NOW = 1_800_000_030.0


def limiter(store: object | None = None) -> Limiter:
    return Limiter(store if store is not None else MemoryStore(),  # type: ignore[arg-type]
                   compile_tables(parse_config(CONFIG)))


def reserve(lim: Limiter, tokens_in: int = 100, tokens_out: int = 50, team: str | None = None,
            user: str | None = None, key: str = "k") -> Reservation:
    scopes = lim.scopes(key, team, user, "m", "oa")
    return asyncio.run(lim.reserve(scopes, Demand(tokens_in, tokens_out, 0), "oa", now=NOW))  # type: ignore[return-value]


def values(lim: Limiter) -> dict[str, int]:
    return {key.split("}:", 1)[0].split("{", 1)[1] + ":" + key.split("}:", 1)[1].rsplit(":", 1)[0]: value
            for key, value in asyncio.run(lim.store.scan("bg:")).items()}


def test_one_reservation_counts_in_every_applicable_scope() -> None:
    lim = limiter()
    reservation = reserve(lim, team="t", user="u")
    assert values(lim) == {
        "key:k:total_tokens:hour": 150, "key:k:requests:hour": 1, "team:t:usd:day": 0,
        "user:u:requests:hour": 1, "route:m:requests:minute": 1, "backend:oa:total_tokens:hour": 150}
    assert dict(reservation.headers)["x-ratelimit-remaining-tokens"] == "350"
    assert dict(reservation.headers)["x-ratelimit-remaining-requests"] == "1"  # the user's 2/hour is the tightest


def test_refusal_touches_nothing_and_names_the_limit() -> None:
    lim = limiter()
    reserve(lim, 300, 100)
    before = values(lim)
    with pytest.raises(RateLimited) as raised:
        reserve(lim, 100, 50)
    assert values(lim) == before
    error = raised.value
    assert "key 'k': total_tokens per hour" in error.message and "limit 500, used 400" in error.message
    headers = dict(error.headers)
    assert headers["retry-after"] == "3570" and headers["x-ratelimit-remaining-tokens"] == "100"


def test_request_bigger_than_the_whole_limit_says_so() -> None:
    with pytest.raises(RateLimited, match="needs more than the whole limit"):
        reserve(limiter(), 1000, 0)


def test_settlement_replaces_the_reservation_with_real_usage_and_cost() -> None:
    lim = limiter()
    reservation = reserve(lim, team="t")
    asyncio.run(lim.settle(Reservation.decode(reservation.encode()), Usage(80, 20), "oa", "x", now=NOW))
    found = values(lim)
    assert found["key:k:total_tokens:hour"] == 100 and found["key:k:requests:hour"] == 1
    assert found["team:t:usd:day"] == 80 * 1000 + 20 * 2000  # micro-USD from the price table


def test_failover_moves_the_backend_charge_to_the_backend_that_answered() -> None:
    lim = limiter()
    reservation = reserve(lim)
    asyncio.run(lim.settle(reservation, Usage(70, 30), "ob", "x", now=NOW))
    found = values(lim)
    assert found["backend:oa:total_tokens:hour"] == 0
    assert found["backend:ob:total_tokens:hour"] == 100
    assert found["key:k:total_tokens:hour"] == 100


def test_release_gives_everything_back() -> None:
    lim = limiter()
    reservation = reserve(lim, user="u")
    asyncio.run(lim.release(reservation))
    assert set(values(lim).values()) == {0}


class BrokenStore:
    calls_need_a_task = False
    settles_in_order = True

    async def reserve(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        raise StoreUnavailable("down")

    async def adjust(self, keys: Sequence[str], deltas: Sequence[int]) -> None:
        raise StoreUnavailable("down")


def test_store_outage_fails_open_unless_a_limit_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    lim = limiter(BrokenStore())
    admitted = reserve(lim)
    assert not admitted.recorded
    asyncio.run(lim.settle(admitted, Usage(1, 1), "oa", "x"))  # nothing to settle, nothing raised
    with pytest.raises(Unavailable) as raised:
        reserve(lim, team="t")  # the team's budget fails closed
    assert raised.value.status == 503 and raised.value.code == "rate_limiter_unavailable"
    assert lim.stats.fail_open_admissions == 1 and lim.stats.fail_closed_refusals == 1
    assert sum("unavailable" in r.message for r in caplog.records) == 1  # logged once per outage


def test_key_without_limits_and_no_defaults_skips_the_store() -> None:
    config = parse_config('backends: [{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}]\n'
                          "routes: [{model: m, backends: [{backend: oa, model: x}]}]\n")
    assert compile_tables(config).empty


class FlakyStore(MemoryStore):
    """Misses `misses` reservations (as a reply that came too late would), then answers."""

    def __init__(self, misses: int) -> None:
        super().__init__()
        self.misses = misses
        self.calls = 0

    async def reserve(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        self.calls += 1
        if self.misses:
            self.misses -= 1
            raise StoreUnavailable("timeout")
        return await super().reserve(counters, amounts)


def test_a_lone_store_miss_is_retried_so_fail_closed_limits_do_not_refuse() -> None:
    store = FlakyStore(misses=1)
    lim = limiter(store)
    assert reserve(lim, team="t").recorded  # the team's limit fails closed
    assert (store.calls, lim.stats.store_retries, lim.stats.fail_closed_refusals) == (2, 1, 0)


def test_a_store_that_stays_down_refuses_fail_closed_and_is_not_retried_while_down() -> None:
    store = FlakyStore(misses=10)
    lim = limiter(store)
    with pytest.raises(Unavailable):
        reserve(lim, team="t")
    assert store.calls == 2  # tried again once: it was healthy until then
    with pytest.raises(Unavailable):
        reserve(lim, team="t")
    assert store.calls == 3  # known down now: one call per request
    assert lim.stats.fail_closed_refusals == 2
