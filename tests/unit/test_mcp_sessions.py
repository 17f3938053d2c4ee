"""Gateway MCP sessions: minted at `initialize`, usable only by the key that made them, continued by any process
through Redis (a real redis-server) or kept in memory, forgotten after their idle TTL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import pytest
import redis

from ext_proc.config.models import RedisSettings
from ext_proc.limits.store import StoreUnavailable
from ext_proc.mcp.sessions import (
    SESSION_ID,
    MemorySessionStore,
    RedisSessionStore,
    SealedSessionStore,
    SessionStore,
    build_session_store,
)
from tests.eventually import eventually

from ..redis_server import RedisServer, free_ports

T = TypeVar("T")
_prefixes = itertools.count()


def run(call: Awaitable[T]) -> T:
    return asyncio.run(call)  # type: ignore[arg-type]


def _redis_store(url: str, ttl: float = 60.0) -> SessionStore:
    settings = RedisSettings(url=url, key_prefix=f"bgmcp{next(_prefixes)}:")
    return build_session_store(ttl, settings, None)


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def _store(kind: str, redis_server: RedisServer | None, ttl: float = 60.0) -> SessionStore:
    if kind == "memory":
        return MemorySessionStore(ttl)
    assert redis_server is not None
    return _redis_store(redis_server.url, ttl)


@pytest.fixture
def store(store_kind: str, request: pytest.FixtureRequest) -> SessionStore:
    redis = request.getfixturevalue("redis_server") if store_kind == "redis" else None
    return _store(store_kind, redis)


def test_a_session_holds_what_initialize_negotiated_and_its_upstream_sessions(store: SessionStore) -> None:
    async def scenario() -> None:
        session = await store.create("key-a", "2025-11-25", {"roots": {}}, {"name": "claude-code"})
        assert SESSION_ID.fullmatch(session.id) and session.id.isascii()
        await store.set_upstream(session, "github", "up-1")
        await store.set_upstream(session, "files", "up-2")
        again = await store.get(session.id, "key-a")
        assert again is not None
        assert (again.owner, again.version, again.capabilities, again.client_info) == (
            "key-a", "2025-11-25", {"roots": {}}, {"name": "claude-code"})
        assert again.upstream == {"github": "up-1", "files": "up-2"}
        await store.close()
    run(scenario())


def test_a_session_is_usable_only_by_the_key_that_made_it(store: SessionStore) -> None:
    async def scenario() -> None:
        session = await store.create("key-a", "2025-06-18", {})
        assert await store.get(session.id, "key-b") is None
        assert await store.delete(session.id, "key-b") is None
        assert await store.get(session.id, "key-a") is not None
        deleted = await store.delete(session.id, "key-a")
        assert deleted is not None and deleted.id == session.id
        assert await store.get(session.id, "key-a") is None
        await store.close()
    run(scenario())


def test_ids_are_unguessable_and_odd_ids_are_unknown_without_a_lookup(store: SessionStore) -> None:
    async def scenario() -> None:
        ids = {(await store.create("k", "2025-11-25", {})).id for _ in range(50)}
        assert len(ids) == 50
        for odd in ["", "x", "../../etc", "a" * 44, "a" * 42 + "\n", "*"]:
            assert await store.get(odd, "k") is None
        await store.close()
    run(scenario())


def test_memory_sessions_expire_when_idle_and_stay_bounded() -> None:
    now = [0.0]
    store = MemorySessionStore(ttl=10, max_entries=3, clock=lambda: now[0])

    async def scenario() -> None:
        kept = await store.create("k", "2025-11-25", {})
        now[0] = 9
        assert await store.get(kept.id, "k") is not None  # renewed: lives until 19
        now[0] = 18
        assert await store.get(kept.id, "k") is not None
        now[0] = 40
        assert await store.get(kept.id, "k") is None
        sessions = [await store.create("k", "2025-11-25", {}) for _ in range(4)]
        assert await store.get(sessions[0].id, "k") is None
        assert all([await store.get(s.id, "k") is not None for s in sessions[1:]])
    run(scenario())


def test_redis_sessions_are_shared_by_processes_and_expire(redis_server: RedisServer) -> None:
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgmcp{next(_prefixes)}:")

    async def scenario() -> None:
        first = build_session_store(60, settings, None)
        second = build_session_store(60, settings, None)
        session = await first.create("key-a", "2025-11-25", {})
        seen = await second.get(session.id, "key-a")
        assert seen is not None
        # Two processes open upstream sessions for different servers at once: neither overwrites the other.
        await asyncio.gather(first.set_upstream(session, "github", "g"), second.set_upstream(seen, "files", "f"))
        final = await first.get(session.id, "key-a")
        assert final is not None and final.upstream == {"github": "g", "files": "f"}
        for store in (first, second):
            await store.close()
    run(scenario())


def test_redis_sessions_expire_when_idle_and_each_use_renews_them(redis_server: RedisServer) -> None:
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgmcp{next(_prefixes)}:")
    raw = redis.Redis.from_url(redis_server.url)
    store = build_session_store(60, settings, None)

    async def scenario() -> None:
        session = await store.create("key-a", "2025-11-25", {})
        key = f"{settings.key_prefix}mcp:session:{session.id}"
        assert 0 < raw.pttl(key) <= 60_000
        raw.pexpire(key, 500)
        assert await store.get(session.id, "key-a") is not None
        assert raw.pttl(key) > 50_000  # renewed by the read
        raw.pexpire(key, 1)
        eventually(lambda: raw.exists(key) == 0, timeout=10, what="Redis expires the session")
        assert await store.get(session.id, "key-a") is None
        await store.set_upstream(session, "github", "late")  # an expired session is not revived by a write
        assert await store.get(session.id, "key-a") is None and 0 < raw.pttl(key) <= 60_000
        await store.close()
    try:
        run(scenario())
    finally:
        raw.close()


def test_redis_down_is_store_unavailable() -> None:
    store = _redis_store(f"redis://127.0.0.1:{free_ports(1)[0]}")
    assert isinstance(store, RedisSessionStore)

    async def scenario() -> None:
        with pytest.raises(StoreUnavailable):
            await store.create("k", "2025-11-25", {})
        with pytest.raises(StoreUnavailable):
            await store.get("a" * 43, "k")
        await store.close()
    run(scenario())


def test_sealed_sessions_are_read_by_every_process_that_shares_the_key() -> None:
    now = [1000.0]
    first, second = (SealedSessionStore(ttl=60, key=b"k" * 32, clock=lambda: now[0]) for _ in range(2))
    foreign = SealedSessionStore(ttl=60, key=b"x" * 32, clock=lambda: now[0])

    async def scenario() -> None:
        session = await first.create("key-a", "2025-03-26", {"roots": {}})
        assert session.id.isascii() and len(session.id) < 200
        elsewhere = await second.get(session.id, "key-a")
        assert elsewhere is not None and (elsewhere.owner, elsewhere.version) == ("key-a", "2025-03-26")
        assert await second.get(session.id, "key-b") is None and await foreign.get(session.id, "key-a") is None
        forged = session.id[:-2] + ("AA" if not session.id.endswith("AA") else "BB")
        assert await second.get(forged, "key-a") is None
        await first.set_upstream(session, "tools", "2025-11-25 up-1")  # each process keeps its own
        assert (await first.get(session.id, "key-a")).upstream == {"tools": "2025-11-25 up-1"}  # type: ignore[union-attr]
        assert (await second.get(session.id, "key-a")).upstream == {}  # type: ignore[union-attr]
        assert await first.delete(session.id, "key-a") is not None
        assert await first.get(session.id, "key-a") is None
        now[0] += 61  # elsewhere it ends with its TTL, counted from its creation
        assert await second.get(session.id, "key-a") is None
        for odd in ["", "s1.", "s1.x.y", "s1." + "a" * 2000, "*", "s1.é.é"]:
            assert await second.get(odd, "k") is None
    run(scenario())
