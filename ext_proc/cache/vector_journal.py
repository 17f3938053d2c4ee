"""The semantic cache shared through Redis (`limits.redis`): each process keeps its own vector index, and every
entry any process adds is also appended to a Redis stream of its namespace, which the others read before they
search. Debian's Redis 7.0 has no vector search, so Redis carries the entries and each process indexes them.

Decisions worth knowing before changing this file:
- One stream per namespace (`<key_prefix>semcache:<namespace>`): a process reads only the namespaces it searches,
  and one key per namespace keeps each call on one slot of a Redis Cluster.
- Bounded everywhere: a stream is trimmed to about the route's `max_entries` (`MAXLEN ~`) and expires a TTL after
  its last entry; a read takes at most `READ_BATCH` entries (a process far behind catches up over a few requests);
  a process's first read of a namespace starts a TTL ago (older entries would be ignored anyway).
- An entry is (vector as little-endian float32 bytes, exact key, time added). Stream ids are the Redis server's
  clock, used only to start a first read; TTLs compare each entry's own time with this process's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from redis.asyncio import Redis, RedisCluster

from ..config.models import RedisSettings
from ..state.redis_records import bounded, record_client, record_deadline
from .vector_index import Vector

READ_BATCH = 512
"""Entries one read takes at most."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    vector: Vector
    key: str
    at: float


class VectorJournal:
    def __init__(self, client: Redis | RedisCluster, prefix: str, deadline: float) -> None:
        self._client = client
        self._prefix = prefix + "semcache:"
        self._deadline = deadline

    async def append(self, namespace: str, vector: Vector, key: str, at: float, *, ttl: float,
                     max_entries: int) -> None:
        name = self._prefix + namespace
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(name, {"v": np.asarray(vector, dtype="<f4").tobytes(), "k": key, "t": repr(at)},
                  maxlen=max_entries, approximate=True)
        pipe.pexpire(name, max(1, int(ttl * 1000)))
        await bounded(pipe.execute(), self._deadline)

    async def read(self, namespace: str, after: str, since: float) -> tuple[list[JournalEntry], str]:
        """Entries after the id `after` (or, with none, from the wall-clock time `since`), oldest first, and the
        id to read after next time."""
        start = "(" + after if after else f"{max(0, int(since * 1000))}-0"
        rows = await bounded(self._client.xrange(self._prefix + namespace, min=start, max="+", count=READ_BATCH),
                             self._deadline)
        if not rows:
            return [], after
        entries = [entry for _, fields in rows if (entry := _entry(fields)) is not None]
        return entries, _text(rows[-1][0])

    async def close(self) -> None:
        await self._client.aclose()


def _entry(fields: object) -> JournalEntry | None:
    """None for an entry this gateway did not write (or that was damaged)."""
    if not isinstance(fields, dict):
        return None
    raw, key, at = fields.get(b"v"), fields.get(b"k"), fields.get(b"t")
    if not isinstance(raw, bytes) or not raw or len(raw) % 4 or not isinstance(key, bytes) or not isinstance(
            at, bytes):
        return None
    try:
        return JournalEntry(np.frombuffer(raw, dtype="<f4").astype(np.float32), key.decode(), float(at))
    except (ValueError, UnicodeDecodeError):
        return None


def build_journal(redis: RedisSettings, password: str | None) -> VectorJournal:
    return VectorJournal(record_client(redis, password), redis.key_prefix, record_deadline(redis))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
