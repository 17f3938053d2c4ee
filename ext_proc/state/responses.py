"""Responses kept for OpenAI Responses API clients (`store: true`, OpenAI's default): `previous_response_id`,
`GET /v1/responses/{id}`, its input items, and `DELETE`.

A record is one JSON document: the key that made it (`owner`), the full response (reasoning envelopes included,
whatever the client was shown) and the whole input it answered (the conversation `previous_response_id` expanded to,
plus the request's own items), so one read rebuilds a conversation and a chain of responses costs one lookup however
long it is. Records are read only by their owner: another key's id reads as unknown (404), so ids reveal nothing.

Kept in Redis when `limits.redis` is configured (every process and replica sees every response; `SET` with a TTL),
else in this process's memory: bounded by count and bytes, least recently used forgotten first. Redis failing is
`StoreUnavailable`: a read is then a 503, and a write is logged and counted while the answer still reaches the
client (it was already on its way).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import TypeVar

import orjson
from redis.asyncio import Redis, RedisCluster

from ..config.models import RedisSettings, ResponsesSettings
from ..json_types import JsonObject
from ..limits.store import StoreUnavailable
from .expiring_lru import ExpiringLru
from .redis_records import bounded, record_client

log = logging.getLogger(__name__)

T = TypeVar("T")

RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""What a response id may look like (OpenAI's are `resp_` + hex); anything else is unknown without a lookup. Matched
whole (`fullmatch`): `$` would let a trailing newline through."""
MEMORY_BYTES = 256 * 1024 * 1024
"""The in-memory store's ceiling on the records it holds, whatever their count."""


class ResponseStore(ABC):
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.failed_writes = 0

    @abstractmethod
    async def put(self, response_id: str, record: JsonObject) -> None:
        """Keep `record` (which names its `owner`) under `response_id`, replacing any earlier one."""

    @abstractmethod
    async def _read(self, response_id: str) -> bytes | None: ...

    @abstractmethod
    async def _remove(self, response_id: str) -> None: ...

    async def close(self) -> None:
        return None

    async def get(self, response_id: str, owner: str) -> JsonObject | None:
        """The record, when it exists and `owner` made it."""
        if not RESPONSE_ID.fullmatch(response_id):
            return None
        raw = await self._read(response_id)
        if raw is None:
            return None
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:  # not written by this gateway (or damaged): as if it did not exist
            log.warning("stored response %s is not JSON; ignored", response_id)
            return None
        return record if isinstance(record, dict) and record.get("owner") == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        """Forget the record if `owner` made it; False when there was none to forget."""
        if await self.get(response_id, owner) is None:
            return False
        await self._remove(response_id)
        return True

    async def keep(self, response_id: str, record: JsonObject) -> None:
        """`put`, for a response already on its way to the client: a failure is logged and counted, not raised."""
        try:
            await self.put(response_id, record)
        except StoreUnavailable as exc:
            self.failed_writes += 1
            log.warning("response %s was not stored: %s", response_id, exc)


class MemoryResponseStore(ResponseStore):
    def __init__(self, ttl: float, max_entries: int, max_bytes: int = MEMORY_BYTES) -> None:
        super().__init__(ttl)
        self._records = ExpiringLru(max_entries, max_bytes)

    async def put(self, response_id: str, record: JsonObject) -> None:
        self._records.put(response_id, orjson.dumps(record), self.ttl)

    async def _read(self, response_id: str) -> bytes | None:
        return self._records.get(response_id)

    async def _remove(self, response_id: str) -> None:
        self._records.remove(response_id)


class RedisResponseStore(ResponseStore):
    def __init__(self, client: Redis | RedisCluster, prefix: str, ttl: float, timeout: float) -> None:
        super().__init__(ttl)
        self._client = client
        self._prefix = prefix + "response:"
        self._deadline = max(timeout * 10, 1.0)  # as `redis_records.record_deadline`
        """Records are bigger than counters: a read or write gets ten of the limiter's per-call timeouts."""

    async def put(self, response_id: str, record: JsonObject) -> None:
        await self._call(self._client.set(self._prefix + response_id, orjson.dumps(record), px=int(self.ttl * 1000)))

    async def _read(self, response_id: str) -> bytes | None:
        raw = await self._call(self._client.get(self._prefix + response_id))
        return raw if isinstance(raw, bytes) or raw is None else str(raw).encode()

    async def _remove(self, response_id: str) -> None:
        await self._call(self._client.delete(self._prefix + response_id))

    async def _call(self, call: Awaitable[T]) -> T:
        return await bounded(call, self._deadline)

    async def close(self) -> None:
        await self._client.aclose()


def build_response_store(settings: ResponsesSettings, redis: RedisSettings | None,
                         password: str | None) -> ResponseStore | None:
    """None when storing is off."""
    if not settings.store:
        return None
    if redis is None:
        return MemoryResponseStore(settings.ttl, settings.max_in_memory)
    return RedisResponseStore(record_client(redis, password), redis.key_prefix, settings.ttl, redis.timeout)
