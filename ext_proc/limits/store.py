"""What the limiter asks of a counter store, and the types it hands over and gets back.

A store does atomic integer arithmetic on fixed-window counters and nothing else: the limiter computes every key,
limit and TTL. Two stores implement this protocol with identical semantics (the same tests run against both):
`MemoryStore` (one process) and `RedisStore` (shared by every process and replica).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Counter:
    key: str
    """Full storage key, e.g. "bg:{key:alice}:total_tokens:minute:29588120"; the `{...}` hash tag is the scope."""
    limit: int
    """Integer limit in the metric's unit (requests, tokens or micro-USD)."""
    ttl: int
    """Seconds (>= 1) the key lives from its creation: window end plus grace. Later increments do not extend it."""
    label: str
    """Human name used in errors, e.g. "key 'alice' total_tokens per minute"."""


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    refused_index: int | None
    """Index into the counters of the FIRST counter that refused; None when admitted."""
    used: tuple[int, ...]
    """Each counter's value after the call: after the increment when admitted, the current value when refused."""


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer within its timeout."""


class LimitStore(Protocol):
    calls_need_a_task: bool
    """A call may use `asyncio.timeout` on the caller's own stack, which needs a current task (redis-py's cluster
    client, called slot by slot). Otherwise the ext_proc server may step a stage's coroutine by hand (cheaper than a
    task per message) and make it a task only if it waits."""
    settles_in_order: bool
    """An `adjust` started before a later `reserve` of this process reaches the store first (one connection, calls
    in the order they were started), so a caller may answer before the settlement is confirmed: the client's next
    request, decided here, still sees the settled counts. (Decided by another process, it almost always does too: its
    reservation comes hundreds of microseconds later; if not, it sees the reservation, usually more than the use.)"""

    async def reserve(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        """All or nothing: when `current[i] + amounts[i] <= counters[i].limit` for every i, add every amount (a
        missing key is created at 0 with its TTL) and admit; otherwise change nothing and name the first counter
        that refused. An amount of 0 only reads its counter (yet still refuses when the counter is already over its
        limit). A key listed twice sees its own earlier amount. Raises `StoreUnavailable`."""
        ...

    async def adjust(self, keys: Sequence[str], deltas: Sequence[int]) -> None:
        """Settle or release: add each delta (may be negative) to keys that still exist, never below 0. An expired
        window is not recreated. Raises `StoreUnavailable`."""
        ...

    async def read(self, keys: Sequence[str]) -> list[int]:
        """Current values, 0 for a missing key. Raises `StoreUnavailable`."""
        ...

    async def scan(self, prefix: str) -> dict[str, int]:
        """Every live key starting with `prefix`, with its value (for `babelgate usage`). Raises `StoreUnavailable`."""
        ...

    async def close(self) -> None:
        ...
