"""The embedded counter store: exact within one process, nothing to run.

Every method runs to completion without awaiting, so on one event loop each call is atomic by construction, the
same guarantee the Redis store gets from a Lua script. Expired keys count as missing at once and are dropped in a
sweep every `purge_interval` seconds, so a long-running process holds only the windows still open (plus one
interval's worth).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .store import Admission, Counter, StoreUnavailable

MAX_ENTRIES = 500_000
"""Counters one process holds at most (keys x users x windows x metrics): the user a counter is for comes from the
client (a header or the body's `user`), so without a ceiling a client could fill memory with made-up users."""


class _Entry:
    __slots__ = ("expires", "value")

    def __init__(self, value: int, expires: float) -> None:
        self.value = value
        self.expires = expires


class MemoryStore:
    calls_need_a_task = False
    settles_in_order = True
    """`adjust` runs to its end in its first step, before the event loop takes another request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, purge_interval: float = 10.0,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._purge_interval = purge_interval
        self._next_purge = clock() + purge_interval
        self._max_entries = max_entries

    def __len__(self) -> int:
        """Entries held, including expired ones not yet swept."""
        return len(self._entries)

    async def reserve(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        now = self._now()
        planned: dict[str, int] = {}
        for index, (counter, amount) in enumerate(zip(counters, amounts, strict=True)):
            value = planned.get(counter.key)
            if value is None:
                value = self._value(counter.key, now)
            value += amount
            if value > counter.limit:
                return Admission(False, index, tuple(self._value(c.key, now) for c in counters))
            planned[counter.key] = value
        fresh = sum(1 for counter in counters if counter.key not in self._entries)
        if fresh and len(self._entries) + fresh > self._max_entries:
            self._purge(now)
            if len(self._entries) + fresh > self._max_entries:
                raise StoreUnavailable(f"the in-memory limiter holds {self._max_entries} counters, its maximum "
                                       "(many distinct users or keys in one window: configure `limits.redis`)")
        for counter in counters:
            entry = self._live(counter.key, now)
            if entry is None:
                self._entries[counter.key] = _Entry(planned[counter.key], now + counter.ttl)
            else:
                entry.value = planned[counter.key]
        return Admission(True, None, tuple(planned[c.key] for c in counters))

    async def adjust(self, keys: Sequence[str], deltas: Sequence[int]) -> None:
        now = self._now()
        for key, delta in zip(keys, deltas, strict=True):
            entry = self._live(key, now)
            if entry is not None:
                entry.value = max(0, entry.value + delta)

    async def read(self, keys: Sequence[str]) -> list[int]:
        now = self._now()
        return [self._value(key, now) for key in keys]

    async def scan(self, prefix: str) -> dict[str, int]:
        now = self._now()
        return {key: entry.value for key, entry in self._entries.items()
                if key.startswith(prefix) and now < entry.expires}

    async def close(self) -> None:
        self._entries.clear()

    def _now(self) -> float:
        now = self._clock()
        if now >= self._next_purge:
            self._purge(now)
        return now

    def _purge(self, now: float) -> None:
        self._entries = {key: entry for key, entry in self._entries.items() if now < entry.expires}
        self._next_purge = now + self._purge_interval

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and now >= entry.expires:
            del self._entries[key]
            return None
        return entry

    def _value(self, key: str, now: float) -> int:
        entry = self._live(key, now)
        return 0 if entry is None else entry.value
