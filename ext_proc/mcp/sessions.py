"""Gateway MCP sessions, for clients of the handshake revisions (2025-11-25 and before): `initialize` mints an
`Mcp-Session-Id`, every later request names it. Clients of the stateless revision (2026-07-28) have none.

A session records the key that made it (`owner`), the negotiated protocol version, the client's capabilities and
info, and the upstream session id of each server the gateway has opened one with (lazily, on the first request
that needs that server). It is usable only by its owner: another key's id reads as unknown, so ids reveal nothing;
ids are 256 random bits (`secrets.token_urlsafe`, visible ASCII as the transport requires).

Kept in Redis when `limits.redis` is configured, so any ext_proc process or replica continues any session: one
hash per session (`<prefix>mcp:session:<id>`, field `meta` = JSON, one field `up:<server>` per upstream session, so
two processes opening upstream sessions for different servers at once never overwrite each other), expiring after
`ttl` of idleness (every `get` renews it). Otherwise, with one process, in its memory: bounded by count, least
recently used forgotten first, same idle TTL; with several processes and no Redis, ids that carry the session
themselves, sealed (`SealedSessionStore`, which says what that costs). Replicas of a deployment share sessions only
through Redis. Redis failing is `StoreUnavailable` (the route stage answers a JSON-RPC error).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis, RedisCluster

from ..config.models import RedisSettings
from ..json_types import JsonObject
from ..state.redis_records import bounded, record_client

T = TypeVar("T")

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
"""What a gateway session id looks like; anything else is unknown without a lookup."""
MAX_IN_MEMORY = 10_000
_UPSTREAM = "up:"


@dataclass
class Session:
    id: str
    owner: str
    version: str
    capabilities: JsonObject
    client_info: JsonObject | None = None
    upstream: dict[str, str] = field(default_factory=dict)
    """Server name -> the upstream's `Mcp-Session-Id` (servers that gave none are absent)."""

    def meta(self) -> bytes:
        return orjson.dumps({"owner": self.owner, "version": self.version, "capabilities": self.capabilities,
                             "client_info": self.client_info})


def _session(session_id: str, meta: bytes, upstream: dict[str, str]) -> Session | None:
    try:
        record = orjson.loads(meta)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("owner"), str):
        return None
    return Session(session_id, record["owner"], str(record.get("version")), record.get("capabilities") or {},
                   record.get("client_info"), upstream)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


class SessionStore(ABC):
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    async def create(self, owner: str, version: str, capabilities: JsonObject,
                     client_info: JsonObject | None = None) -> Session:
        session = Session(new_session_id(), owner, version, capabilities, client_info)
        await self._write(session)
        return session

    async def get(self, session_id: str, owner: str) -> Session | None:
        """The session, when it exists and `owner` made it; renews its idle TTL."""
        if not SESSION_ID.fullmatch(session_id):
            return None
        session = await self._read(session_id)
        return session if session is not None and session.owner == owner else None

    async def set_upstream(self, session: Session, server: str, upstream_id: str) -> None:
        session.upstream[server] = upstream_id
        await self._set_upstream(session.id, server, upstream_id)

    async def delete(self, session_id: str, owner: str) -> Session | None:
        """Forget the session if `owner` made it; the forgotten session (its upstream ids are the caller's to
        close), or None."""
        session = await self.get(session_id, owner)
        if session is not None:
            await self._remove(session_id)
        return session

    async def close(self) -> None:
        return None

    @abstractmethod
    async def _write(self, session: Session) -> None: ...

    @abstractmethod
    async def _read(self, session_id: str) -> Session | None: ...

    @abstractmethod
    async def _set_upstream(self, session_id: str, server: str, upstream_id: str) -> None: ...

    @abstractmethod
    async def _remove(self, session_id: str) -> None: ...


class MemorySessionStore(SessionStore):
    def __init__(self, ttl: float, max_entries: int = MAX_IN_MEMORY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl)
        self._max = max_entries
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[float, bytes, dict[str, str]]] = OrderedDict()

    async def _write(self, session: Session) -> None:
        self._sessions[session.id] = (self._clock() + self.ttl, session.meta(), dict(session.upstream))
        self._sessions.move_to_end(session.id)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)

    async def _read(self, session_id: str) -> Session | None:
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._sessions[session_id]
            return None
        self._sessions[session_id] = (self._clock() + self.ttl, entry[1], entry[2])
        self._sessions.move_to_end(session_id)
        return _session(session_id, entry[1], dict(entry[2]))

    async def _set_upstream(self, session_id: str, server: str, upstream_id: str) -> None:
        entry = self._sessions.get(session_id)
        if entry is not None:
            entry[2][server] = upstream_id

    async def _remove(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


class RedisSessionStore(SessionStore):
    def __init__(self, client: Redis | RedisCluster, prefix: str, ttl: float, timeout: float) -> None:
        super().__init__(ttl)
        self._client = client
        self._prefix = prefix + "mcp:session:"
        self._deadline = max(timeout * 10, 1.0)  # as `redis_records.record_deadline`

    async def _write(self, session: Session) -> None:
        key = self._prefix + session.id
        mapping: dict[str, bytes | str] = {"meta": session.meta(),
                                           **{_UPSTREAM + s: u for s, u in session.upstream.items()}}
        await self._call(self._pipeline(key, lambda pipe: pipe.hset(key, mapping=mapping)))

    async def _read(self, session_id: str) -> Session | None:
        key = self._prefix + session_id
        fields = await self._call(self._client.hgetall(key))
        if not fields:
            return None
        await self._call(self._client.pexpire(key, int(self.ttl * 1000)))
        decoded = {_text(name): value for name, value in fields.items()}
        meta = decoded.pop("meta", None)
        upstream = {name[len(_UPSTREAM):]: _text(value) for name, value in decoded.items()
                    if name.startswith(_UPSTREAM)}
        return None if meta is None else _session(session_id, meta if isinstance(meta, bytes) else meta.encode(),
                                                  upstream)

    async def _set_upstream(self, session_id: str, server: str, upstream_id: str) -> None:
        key = self._prefix + session_id
        await self._call(self._pipeline(key, lambda pipe: pipe.hset(key, _UPSTREAM + server, upstream_id)))

    async def _remove(self, session_id: str) -> None:
        await self._call(self._client.delete(self._prefix + session_id))

    async def _pipeline(self, key: str, write: Callable[[Any], object]) -> None:
        """`write` then renew the TTL, in one transaction (a session never lives on without its expiry)."""
        async with self._client.pipeline(transaction=True) as pipe:
            write(pipe)
            pipe.pexpire(key, int(self.ttl * 1000))
            await pipe.execute()

    async def _call(self, call: Awaitable[T]) -> T:
        return await bounded(call, self._deadline)

    async def close(self) -> None:
        await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SealedSessionStore(SessionStore):
    """Sessions for several processes without Redis: the id itself carries the owner, the version and the expiry,
    sealed with a key every process of the deployment shares, so any process reads it; what a process adds (the
    upstream sessions it opened, the ids it was asked to delete) stays in its own bounded memory. So: a session lives
    `ttl` from its creation (nothing can renew a sealed id), each process opens its own upstream sessions, and a
    `DELETE` ends the session on the process that got it (elsewhere it ends with its TTL; its owner's key is still
    needed to use it)."""

    PREFIX = "s1."

    def __init__(self, ttl: float, key: bytes, max_entries: int = MAX_IN_MEMORY,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(ttl)
        self._key = key
        self._max = max_entries
        self._clock = clock
        self._upstream: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()

    async def create(self, owner: str, version: str, capabilities: JsonObject,
                     client_info: JsonObject | None = None) -> Session:
        payload = orjson.dumps([owner, version, int(self._clock() + self.ttl), secrets.token_urlsafe(12)])
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        return Session(f"{self.PREFIX}{body}.{self._mac(body)}", owner, version, capabilities, client_info)

    async def get(self, session_id: str, owner: str) -> Session | None:
        readable = len(session_id) <= MAX_SEALED_CHARS and session_id.isascii()
        session = await self._read(session_id) if readable else None
        return session if session is not None and session.owner == owner else None

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    async def _write(self, session: Session) -> None:
        return None

    async def _read(self, session_id: str) -> Session | None:
        body, dot, mac = session_id.removeprefix(self.PREFIX).partition(".")
        if not session_id.startswith(self.PREFIX) or not dot or not hmac.compare_digest(mac, self._mac(body)):
            return None
        owner, version, expires, _ = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        if expires < self._clock() or session_id in self._ended:
            return None
        return Session(session_id, owner, version, {}, None, dict(self._upstream.get(session_id, {})))

    async def _set_upstream(self, session_id: str, server: str, upstream_id: str) -> None:
        self._upstream.setdefault(session_id, {})[server] = upstream_id
        self._upstream.move_to_end(session_id)
        while len(self._upstream) > self._max:
            self._upstream.popitem(last=False)

    async def _remove(self, session_id: str) -> None:
        self._upstream.pop(session_id, None)
        self._ended[session_id] = None
        while len(self._ended) > self._max:
            self._ended.popitem(last=False)


MAX_SEALED_CHARS = 1024


def build_session_store(ttl: float, redis: RedisSettings | None, password: str | None, *, processes: int = 1,
                        key: bytes | None = None) -> SessionStore:
    """Redis when configured (the same client options as the stored Responses); else sealed ids when several
    processes serve (`key` shared by them), else this process's memory."""
    if redis is not None:
        return RedisSessionStore(record_client(redis, password), redis.key_prefix, ttl, redis.timeout)
    if processes > 1 and key is not None:
        return SealedSessionStore(ttl, key)
    return MemorySessionStore(ttl)
