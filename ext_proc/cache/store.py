"""Where cached answers live: Redis when `limits.redis` is configured (every process and replica shares hits; `SET`
with the route's TTL), else this process's memory (bounded by count and bytes, least recently used first).

An entry is one JSON document: the answer's body as the client got it (its own format), its usage, and what the miss
cost, so a hit can report the cost it saved, with the time it was stored (for the `age` a hit reports). A store
failing is `StoreUnavailable` for the caller to shrug off: a cache that can't be read is a miss, one that can't be
written is a missed chance, never a failed request.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis, RedisCluster

from ..config.models import RedisSettings
from ..json_types import JsonObject
from ..limits.resp import RespClient, RespConnectionError, RespError, RespTimeout
from ..limits.store import StoreUnavailable
from ..state.expiring_lru import ExpiringLru
from ..state.redis_records import bounded, record_client

MEMORY_ENTRIES = 10_000
MEMORY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    body: JsonObject
    """The answer as the client's format shapes it (a chat completion, an Anthropic message, a Response)."""
    stored_at: float
    """Wall-clock seconds."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def encode(self) -> bytes:
        return orjson.dumps({"body": self.body, "at": self.stored_at, "in": self.input_tokens,
                             "out": self.output_tokens, "usd": self.cost_usd})

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer | None:
        """None for anything this gateway did not write (or that was damaged): a miss."""
        try:
            data = orjson.loads(raw)
            return cls(data["body"], float(data["at"]), int(data["in"]), int(data["out"]), float(data["usd"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def age(self, now: float | None = None) -> int:
        return max(0, int((time.time() if now is None else now) - self.stored_at))


class AnswerCache(ABC):
    @abstractmethod
    async def get(self, key: str) -> CachedAnswer | None: ...

    @abstractmethod
    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None: ...

    async def close(self) -> None:
        return None


class MemoryAnswerCache(AnswerCache):
    def __init__(self, max_entries: int = MEMORY_ENTRIES, max_bytes: int = MEMORY_BYTES) -> None:
        self._entries = ExpiringLru(max_entries, max_bytes)

    async def get(self, key: str) -> CachedAnswer | None:
        raw = self._entries.get(key)
        return CachedAnswer.decode(raw) if raw is not None else None

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        self._entries.put(key, answer.encode(), ttl)


class RedisAnswerCache(AnswerCache):
    def __init__(self, client: Redis | RedisCluster, prefix: str, timeout: float,
                 lean: tuple[RespClient, RespClient] | None = None) -> None:
        """`lean`: on a standalone Redis, the lean pipelined client (`limits/resp.py`) for lookups and for writes,
        each its own connection bounded by its own deadline (a slow write must not close the connection lookups
        are pipelined on); redis-py's client then serves nothing but `close`."""
        self._client = client
        self._lean = lean
        self._prefix = prefix + "cache:"
        self._read_deadline = timeout
        """A lookup is on the request's path, and a slow one is worth less than a miss: the limiter's per-call
        timeout bounds it."""
        self._deadline = max(timeout * 10, 1.0)  # a write is off the client's path; entries are documents

    async def get(self, key: str) -> CachedAnswer | None:
        if self._lean is not None:
            raw = await _lean_call(self._lean[0], "GET", self._prefix + key)
        else:
            raw = await bounded(self._client.get(self._prefix + key), self._read_deadline)
        if raw is None:
            return None
        return CachedAnswer.decode(raw if isinstance(raw, bytes) else str(raw).encode())

    async def put(self, key: str, answer: CachedAnswer, ttl: float) -> None:
        milliseconds = max(1, int(ttl * 1000))
        if self._lean is not None:
            await _lean_call(self._lean[1], "SET", self._prefix + key, answer.encode(), "PX", milliseconds)
            return
        await bounded(self._client.set(self._prefix + key, answer.encode(), px=milliseconds), self._deadline)

    async def close(self) -> None:
        if self._lean is not None:
            for client in self._lean:
                await client.close()
        await self._client.aclose()


async def _lean_call(client: RespClient, *command: object) -> object:
    """One command over the lean client (its connect and its reply each bounded by its timeout), or
    `StoreUnavailable`."""
    try:
        return await client.execute(*command)
    except (RespError, RespConnectionError, RespTimeout, OSError) as exc:
        raise StoreUnavailable(f"Redis: {type(exc).__name__}") from None


def build_answer_cache(redis: RedisSettings | None, password: str | None) -> AnswerCache:
    if redis is None:
        return MemoryAnswerCache()
    lean = None
    if not redis.cluster:
        ca_file = str(redis.ca_file) if redis.ca_file is not None else None
        lean = (RespClient(redis.url, password=password, ssl_ca_file=ca_file, timeout=redis.timeout),
                RespClient(redis.url, password=password, ssl_ca_file=ca_file, timeout=max(redis.timeout * 10, 1.0)))
    return RedisAnswerCache(record_client(redis, password), redis.key_prefix, redis.timeout, lean)
