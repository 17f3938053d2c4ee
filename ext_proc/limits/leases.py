"""Leases: a small share of a large limit taken from the shared store ahead of time, so that most requests under it
are admitted in this process without a round trip to Redis, and never beyond what the store handed out.

Why: with Redis limits, every request waited for a reservation's round trip (and woke the process once more for its
reply) before it could go upstream: at 300 requests/s on 2 cores that was ~0.8 ms of the added p50 and a third of
ext_proc's CPU per request (`load/README.md`, issue 22).

Why admission stays exact:
- A lease is reserved in the store like a request's amounts (the same atomic script), so what the leases of every
  process and replica hold, plus what the store admitted request by request, never exceeds the limit. A request
  admitted here spends its lease; nothing is admitted that no lease or store call covered.
- A lease is granted only while the counter, that lease included, stays within half of the limit (the grant asks
  the store with half the limit as its limit), only when it covers `MIN_REQUESTS` requests the size of the one that
  asked for it, and it lives `LIFETIME` seconds: then what it did not spend goes back to the store.
- What this costs: the store counts a lease's unspent part as used until it goes back. So a request decided by the
  store can be refused early only while a lease granted below half the limit is still live, which takes traffic
  filling the second half of a limit within `LIFETIME` (0.5 s); and a process that dies holding a lease leaves its
  unspent part counted until the window ends, as a crash leaves a reservation unsettled. `limits.redis.leases:
  false` turns leases off where even that is too much.

Settling: a request admitted under a lease that is still live settles into it (its unused reservation back in the
lease, an overrun taken from it; what the lease returns makes the store right); otherwise the store is adjusted, as
for any request: both add up to the same counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass

from .store import Counter, LimitStore, StoreUnavailable

log = logging.getLogger(__name__)

SHARE = 64
"""A lease is this fraction of its limit: with a few processes and replicas, far from the limit's half."""
MIN_REQUESTS = 8
"""A limit too small to lease this many requests of the asking size is decided by the store, call by call."""
LIFETIME = 0.5
"""Seconds a lease serves before its unspent part goes back."""
_REMEMBERED = 4096
"""Counters whose last store admission is remembered (to tell a busy counter from one used now and then)."""


@dataclass(slots=True)
class Lease:
    key: str
    granted: int
    remaining: int
    """May go below 0 when a settlement overran its reservation; what goes back is then a charge."""
    seen: int
    """The counter in the store right after the grant, this lease included."""
    ends: float
    """`time.monotonic()` past which it admits nothing more."""
    closed: bool = False
    admitted: int = 0

    def settle(self, delta: int) -> bool:
        """Settle a request's `delta` (used minus reserved) into this lease; False when it has gone back (the store
        is then adjusted instead)."""
        if self.closed:
            return False
        self.remaining -= delta
        return True

    def used_estimate(self) -> int:
        """The counter as far as this process knows: the store's count at the grant, less this lease's unspent part
        (for the `x-ratelimit-*` headers of requests admitted here)."""
        return self.seen - self.remaining


@dataclass
class LeaseStats:
    granted: int = 0
    admitted: int = 0
    returned: int = 0
    return_failures: int = 0
    """Leases whose unspent part could not go back (the store was unavailable): counted until their window ends."""


class Leases:
    def __init__(self, store: LimitStore, *, lifetime: float = LIFETIME) -> None:
        self._store = store
        self._lifetime = lifetime
        self._live: dict[str, Lease] = {}
        self._granting: set[str] = set()
        self._busy_since: dict[str, float] = {}
        """Counter key -> when the store last admitted a request on it, or a lease of it last ended used."""
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = LeaseStats()

    def take(self, counters: Sequence[Counter], amounts: Sequence[int]) -> tuple[Lease, ...] | None:
        """Admit here when every counter has a live lease with room for its amount: the leases, each charged;
        otherwise None, and nothing charged."""
        now = time.monotonic()
        leases = []
        for counter, amount in zip(counters, amounts, strict=True):
            lease = self._live.get(counter.key)
            if lease is None or lease.closed or now >= lease.ends:
                return None
            if lease.remaining < amount:
                self._expire(lease)  # spent: back now, so the store's next admission can start another
                return None
            leases.append(lease)
        if len({lease.key for lease in leases}) != len(leases):
            return None  # a counter listed twice: the store decides (its amounts add up there)
        for lease, amount in zip(leases, amounts, strict=True):
            lease.remaining -= amount
            lease.admitted += 1
        self.stats.admitted += 1
        return tuple(leases)

    def offer(self, counters: Sequence[Counter], amounts: Sequence[int], used: Sequence[int]) -> None:
        """After the store admitted a request: ask, in the background, for a lease on every busy counter far enough
        from its limit that has none live (`used`: the counters after that admission). Busy: the store admitted
        another request on it, or a lease of it ended used, within a lease's lifetime. A counter used now and then
        is not leased: a lease would cost it two store calls (taking it, giving it back) for one request."""
        if self._closed:
            return
        now = time.monotonic()
        busy_since = self._busy_since
        if len(busy_since) > _REMEMBERED:
            busy_since.clear()
        for counter, amount, value in zip(counters, amounts, used, strict=True):
            size = counter.limit // SHARE
            if size < MIN_REQUESTS * max(amount, 1) or value + size > counter.limit // 2:
                continue
            key = counter.key
            last, busy_since[key] = busy_since.get(key), now
            if last is None or now - last > self._lifetime:
                continue
            lease = self._live.get(key)
            if (lease is not None and not lease.closed and now < lease.ends) or key in self._granting:
                continue
            self._granting.add(key)
            self._spawn(self._grant(counter, size))

    async def close(self) -> None:
        """Give every lease's unspent part back, those still being granted included (the process is stopping)."""
        self._closed = True
        await self.idle()
        for lease in list(self._live.values()):
            self._expire(lease)
        await self.idle()

    async def idle(self) -> None:
        """Wait for the grants and give-backs under way."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _grant(self, counter: Counter, size: int) -> None:
        half = Counter(counter.key, counter.limit // 2, counter.ttl, counter.label)
        try:
            admission = await self._store.reserve([half], [size])
        except StoreUnavailable:
            return  # requests go on through the store, which has its own outage policy
        finally:
            self._granting.discard(counter.key)
        if not admission.admitted:
            return
        lease = Lease(counter.key, size, size, admission.used[0], time.monotonic() + self._lifetime)
        self.stats.granted += 1
        if self._closed:  # granted while stopping: straight back
            self._expire(lease)
            return
        self._live[counter.key] = lease
        asyncio.get_running_loop().call_later(self._lifetime, self._expire, lease)

    def _expire(self, lease: Lease) -> None:
        if lease.closed:
            return
        lease.closed = True
        if self._live.get(lease.key) is lease:
            del self._live[lease.key]
        if lease.admitted and not self._closed:
            self._busy_since[lease.key] = time.monotonic()  # still busy: the next store admission asks again
        if lease.remaining:
            self._spawn(self._give_back(lease))

    async def _give_back(self, lease: Lease) -> None:
        try:
            await self._store.adjust([lease.key], [-lease.remaining])
        except StoreUnavailable as exc:
            self.stats.return_failures += 1
            log.warning("a lease's unspent %d could not go back to the store (%s): counted until its window ends",
                        lease.remaining, exc)
        else:
            self.stats.returned += 1

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
