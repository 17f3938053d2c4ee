"""The Responses store (`state/responses.py`): one set of behaviours checked against the in-memory store and a real
redis-server, then what only one of them can do (expiry on a clock, the byte bound, a Redis that went away)."""

from __future__ import annotations

import asyncio
import logging
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from ext_proc.config.models import RedisSettings, ResponsesSettings
from ext_proc.json_types import JsonObject
from ext_proc.limits.store import StoreUnavailable
from ext_proc.state import expiring_lru
from ext_proc.state import responses as state
from ext_proc.state.responses import (
    MemoryResponseStore,
    RedisResponseStore,
    ResponseStore,
    build_response_store,
)

from ..redis_server import RedisServer

TTL = 3600.0
GIVES_UP_WITHIN = 10.0
"""Seconds within which a call against a stopped Redis must have given up (its deadline is 1 s)."""


def record(owner: str, text: str = "hi", response_id: str = "resp_1") -> JsonObject:
    return {"owner": owner, "response": {"id": response_id, "object": "response", "output": []},
            "input": [{"role": "user", "content": text}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The memory store's `time.monotonic`, moved by hand."""
    fake = Clock()
    monkeypatch.setattr(expiring_lru, "time", types.SimpleNamespace(monotonic=fake))
    return fake


@dataclass
class Bench:
    store: ResponseStore
    raw: Redis | None
    prefix: str


def run_with(kind: str, url: str | None, scenario: Callable[[Bench], Awaitable[None]]) -> None:
    async def go() -> None:
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        raw = Redis.from_url(url) if url is not None else None
        store: ResponseStore = (MemoryResponseStore(TTL, 100) if kind == "memory"
                                else RedisResponseStore(Redis.from_url(url or ""), prefix, TTL, 0.1))
        try:
            await scenario(Bench(store, raw, prefix + "response:"))
        finally:
            await store.close()
            if raw is not None:
                await raw.aclose()

    asyncio.run(go())


@pytest.fixture(params=("memory", "redis"))
def kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, str | None]]:
    yield request.param, (request.getfixturevalue("redis_server").url if request.param == "redis" else None)


# --- one set of behaviours for both stores --------------------------------------------------------------------------


def test_a_record_reads_back_for_its_owner_only(kind: tuple[str, str | None]) -> None:
    async def scenario(bench: Bench) -> None:
        await bench.store.put("resp_1", record("alice"))
        assert await bench.store.get("resp_1", "alice") == record("alice")
        assert await bench.store.get("resp_1", "bob") is None
        assert await bench.store.get("resp_2", "alice") is None

    run_with(*kind, scenario)


def test_delete_forgets_for_the_owner_and_refuses_anyone_else(kind: tuple[str, str | None]) -> None:
    async def scenario(bench: Bench) -> None:
        await bench.store.put("resp_1", record("alice"))
        assert await bench.store.delete("resp_1", "bob") is False
        assert await bench.store.get("resp_1", "alice") is not None  # bob's delete took nothing
        assert await bench.store.delete("resp_1", "alice") is True
        assert await bench.store.get("resp_1", "alice") is None
        assert await bench.store.delete("resp_1", "alice") is False

    run_with(*kind, scenario)


def test_a_second_put_replaces_the_first(kind: tuple[str, str | None]) -> None:
    async def scenario(bench: Bench) -> None:
        await bench.store.put("resp_1", record("alice", "first"))
        await bench.store.put("resp_1", record("alice", "second"))
        got = await bench.store.get("resp_1", "alice")
        assert got is not None and got["input"] == [{"role": "user", "content": "second"}]

    run_with(*kind, scenario)


HOSTILE_IDS = ["*", "resp_*", "?", "[a-z]*", "..", "../x", "a/b", "a%2fb", "resp_1\n", "resp_1\x00", "\x00",
               "", " resp_1", "resp_1 ", "r" * 129, "résp", "resp_1\r\nDEL x", "{tag}"]


@pytest.mark.parametrize("response_id", HOSTILE_IDS)
def test_ids_outside_the_id_shape_are_unknown_without_a_lookup(kind: tuple[str, str | None], response_id: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(bench: Bench) -> None:
        await bench.store.put("resp_1", record("alice"))
        reads: list[str] = []
        removes: list[str] = []

        async def no_read(response_id: str) -> bytes | None:
            reads.append(response_id)
            return None

        async def no_remove(response_id: str) -> None:
            removes.append(response_id)

        monkeypatch.setattr(bench.store, "_read", no_read)
        monkeypatch.setattr(bench.store, "_remove", no_remove)
        assert await bench.store.get(response_id, "alice") is None
        assert await bench.store.delete(response_id, "alice") is False
        assert (reads, removes) == ([], [])

    run_with(*kind, scenario)


def test_the_id_shape_takes_openai_ids_and_the_longest_allowed() -> None:
    for good in ("resp_0123456789abcdef", "r" * 128, "A-b_9"):
        assert state.RESPONSE_ID.fullmatch(good)


# --- memory only ----------------------------------------------------------------------------------------------------


def test_memory_records_expire_after_their_ttl(clock: Clock) -> None:
    async def scenario() -> None:
        store = MemoryResponseStore(60.0, 10)
        await store.put("resp_1", record("alice"))
        clock.now += 59.0
        assert await store.get("resp_1", "alice") is not None
        clock.now += 2.0
        assert await store.get("resp_1", "alice") is None
        assert store._records.bytes == 0 and not store._records  # the expired record's bytes are given back

    asyncio.run(scenario())


def test_memory_replacing_a_record_restarts_its_ttl(clock: Clock) -> None:
    async def scenario() -> None:
        store = MemoryResponseStore(60.0, 10)
        await store.put("resp_1", record("alice"))
        clock.now += 50.0
        await store.put("resp_1", record("alice", "again"))
        clock.now += 50.0
        assert await store.get("resp_1", "alice") is not None

    asyncio.run(scenario())


def test_memory_forgets_the_least_recently_used_past_its_count(clock: Clock) -> None:
    async def scenario() -> None:
        store = MemoryResponseStore(TTL, 3)
        for name in ("a", "b", "c"):
            await store.put(f"resp_{name}", record("alice"))
        assert await store.get("resp_a", "alice") is not None  # a read makes `a` the most recently used
        await store.put("resp_d", record("alice"))
        assert await store.get("resp_b", "alice") is None
        for name in ("a", "c", "d"):
            assert await store.get(f"resp_{name}", "alice") is not None

    asyncio.run(scenario())


def test_memory_holds_no_more_bytes_than_its_bound(clock: Clock) -> None:
    async def scenario() -> None:
        size = len(orjson.dumps(record("alice", "x" * 100)))
        store = MemoryResponseStore(TTL, 1000, max_bytes=3 * size)
        for index in range(5):
            await store.put(f"resp_{index}", record("alice", "x" * 100))
        assert store._records.bytes == 3 * size
        assert [await store.get(f"resp_{i}", "alice") is not None for i in range(5)] == [False, False, True, True,
                                                                                        True]
        await store.put("resp_big", record("alice", "x" * 10 * size))  # bigger than the whole bound: not kept
        assert store._records.bytes <= 3 * size
        assert await store.get("resp_big", "alice") is None

    asyncio.run(scenario())


def test_memory_replacing_a_record_keeps_the_byte_count_right(clock: Clock) -> None:
    async def scenario() -> None:
        store = MemoryResponseStore(TTL, 10)
        await store.put("resp_1", record("alice", "x" * 1000))
        await store.put("resp_1", record("alice", "y"))
        await store.put("resp_2", record("alice", "zz"))
        expected = len(orjson.dumps(record("alice", "y"))) + len(orjson.dumps(record("alice", "zz")))
        assert store._records.bytes == expected
        await store.delete("resp_1", "alice")
        await store.delete("resp_2", "alice")
        assert store._records.bytes == 0

    asyncio.run(scenario())


# --- Redis only -----------------------------------------------------------------------------------------------------


def test_redis_keeps_a_record_under_its_prefix_with_the_ttl(redis_server: RedisServer) -> None:
    async def scenario(bench: Bench) -> None:
        assert bench.raw is not None
        await bench.store.put("resp_1", record("alice"))
        ttl = await bench.raw.pttl(bench.prefix + "resp_1")
        assert TTL * 1000 - 60_000 < ttl <= TTL * 1000
        assert orjson.loads(await bench.raw.get(bench.prefix + "resp_1")) == record("alice")

    run_with("redis", redis_server.url, scenario)


def test_redis_hostile_ids_touch_no_key_outside_the_prefix(redis_server: RedisServer) -> None:
    async def scenario(bench: Bench) -> None:
        assert bench.raw is not None
        outsider = bench.prefix.replace("response:", "counter")
        await bench.raw.set(outsider, b"1")
        await bench.store.put("resp_1", record("alice"))
        for response_id in HOSTILE_IDS:
            assert await bench.store.get(response_id, "alice") is None
            assert await bench.store.delete(response_id, "alice") is False
        assert await bench.raw.get(outsider) == b"1"
        assert await bench.store.get("resp_1", "alice") is not None
        namespace = bench.prefix.removesuffix("response:")
        keys = sorted(key.decode() for key in await bench.raw.keys(namespace + "*"))
        assert keys == sorted([outsider, bench.prefix + "resp_1"])

    run_with("redis", redis_server.url, scenario)


def test_a_stopped_redis_is_unavailable_quickly_and_keep_only_counts_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(server: RedisServer) -> None:
        store = RedisResponseStore(Redis.from_url(server.url, socket_connect_timeout=1.0), "t:", TTL, 0.1)
        try:
            await store.put("resp_1", record("alice"))
            await asyncio.to_thread(server.stop)
            for call in (lambda: store.get("resp_1", "alice"), lambda: store.delete("resp_1", "alice"),
                         lambda: store.put("resp_2", record("alice"))):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                assert time.monotonic() - started < GIVES_UP_WITHIN
            with caplog.at_level(logging.WARNING, logger=state.__name__):
                await store.keep("resp_3", record("alice"))
            assert store.failed_writes == 1
            assert "resp_3 was not stored" in caplog.text
        finally:
            await store.close()

    with RedisServer(tmp_path / "stopped") as server:
        asyncio.run(scenario(server))


# --- building the store from config ---------------------------------------------------------------------------------


def test_storing_off_builds_no_store() -> None:
    assert build_response_store(ResponsesSettings(store=False), RedisSettings(url="redis://127.0.0.1:1"), None) is None
    assert build_response_store(ResponsesSettings(store=False), None, None) is None


def test_without_redis_the_store_is_in_memory_with_the_configured_bounds() -> None:
    store = build_response_store(ResponsesSettings(ttl=120, max_in_memory=7), None, None)
    assert isinstance(store, MemoryResponseStore)
    assert (store.ttl, store._records.max_entries) == (120, 7)


def test_with_redis_the_store_is_redis_under_the_key_prefix(redis_server: RedisServer) -> None:
    store = build_response_store(ResponsesSettings(ttl=60), RedisSettings(url=redis_server.url, key_prefix="bgx:"),
                                 None)
    assert isinstance(store, RedisResponseStore)

    async def scenario() -> None:
        assert store is not None
        raw = Redis.from_url(redis_server.url)
        try:
            await store.put("resp_built", record("alice"))
            assert await store.get("resp_built", "alice") == record("alice")
            assert 0 < await raw.pttl("bgx:response:resp_built") <= 60_000
            await raw.delete("bgx:response:resp_built")
        finally:
            await store.close()
            await raw.aclose()

    asyncio.run(scenario())


def test_a_damaged_record_reads_as_unknown() -> None:
    """Bytes that are not a record (written by something else, or damaged) are a 404, never a 500."""
    store = MemoryResponseStore(ttl=60, max_entries=10)
    store._records.put("resp_damaged", b"\x00not json", ttl=1e9)
    assert asyncio.run(store.get("resp_damaged", "k")) is None
