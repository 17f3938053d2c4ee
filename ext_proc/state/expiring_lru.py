"""Bytes kept in this process's memory by key, each until its own deadline, bounded by count and by total bytes
(least recently used forgotten first). Shared by the stores that fall back to memory without Redis."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class ExpiringLru:
    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] | None = None) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock or (lambda: time.monotonic())  # looked up per call: tests move this module's clock
        self._bytes = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def put(self, key: str, raw: bytes, ttl: float) -> None:
        self.remove(key)
        self._entries[key] = (self._clock() + ttl, raw)
        self._bytes += len(raw)
        while self._entries and (len(self._entries) > self._max_entries or self._bytes > self._max_bytes):
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self.remove(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    @property
    def bytes(self) -> int:
        """The bytes held now."""
        return self._bytes

    @property
    def max_entries(self) -> int:
        return self._max_entries

    def __len__(self) -> int:
        return len(self._entries)
