"""The shared counter store: Redis (standalone, Sentinel or Cluster) through redis-py's asyncio clients; on a
standalone Redis named by URL (`from_url`), the reservation and settlement scripts, the calls every request makes, go
over the lean pipelined client of `resp.py` instead (a sixth of redis-py's CPU per call).

Standalone and Sentinel: one `reserve` is ONE round trip (two more, once, after Redis lost its script cache), a Lua
script that reads every counter, checks every limit and only then increments them all, so no interleaving of
processes or replicas can over-admit.

Redis Cluster: one script may only touch keys of one hash slot. The limiter puts every key of a scope in one slot
with a hash tag, so a reservation is one script per slot, run in the order the counters come in (scope by scope,
the same order for every request, so two requests do not each take what the other needs). When a later slot
refuses, the slots already taken are given back. Between taking and giving back (a couple of round trips) those
amounts are counted although the request will be refused, so another request that needed that headroom can be
refused too: a false refusal, never an over-admission. When a later slot fails or the caller is cancelled, what was
taken is given back in the background; if the give-back itself fails, the amounts stay counted until their window
expires (over-counting again, counted in `failed_give_backs`).

Reservations, and settlements (`adjust`), that arrive in the same turn of the event loop share one script call (the
script decides the reservations one after another, each all or nothing, as separate calls would): under load one
round trip serves many requests, and the gateway spends its CPU on requests rather than on redis-py.

Failures of any kind (refused connection, timeout, loading, cluster down, script error, redis-py internals) surface
as `StoreUnavailable` within `deadline` seconds; the connection pool reconnects on its own when Redis is back.
A connection error is retried once at once (a pooled connection may predate a Redis restart); a timeout is not,
since the script may have run. The cluster client retries once on timeouts too (redis-py does not let it tell them
apart), so there a slow reply can count a reservation twice: over-counting, never over-admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .resp import RespClient, Script
from .store import Admission, Counter, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_IN_FLIGHT = 16
"""Calls to Redis one store runs at once; more wait their turn (within the deadline). Measured on 2 cores: a cold
burst of 200 reservations with 64 in flight had ~10% of the first calls time out while 64 connections handshook at
once under a 50 ms timeout; with 16, none did, at the same throughput (Python, not Redis, is the limit). The bound
also keeps redis-py's asyncio pools, which fail rather than wait at their cap, from ever reaching it."""
_SPARE_CONNECTIONS = 8
"""Beyond MAX_IN_FLIGHT: `scan` walks the keyspace outside the in-flight bound."""
_SCAN_BATCH = 1000

_RESERVE = """
-- Several reservations in one call, decided one after another exactly as separate calls would be.
-- KEYS: every reservation's counters, one reservation after another.
-- ARGV: the number of reservations; then per reservation its number of counters, then limit, amount, ttl per counter.
-- Reply, per reservation in order: refusing position (1-based) or 0, then each of its counters' values.
-- Every limit of a reservation is checked before anything is written, so a refusal leaves all counters as they were.
-- Lua numbers are doubles: counts are exact below 2^53, far above any token or micro-USD total.
local reply = {}
local first_key, arg = 0, 2
for _ = 1, tonumber(ARGV[1]) do
  local count = tonumber(ARGV[arg])
  arg = arg + 1
  local planned, existed, refused = {}, {}, 0  -- planned: a key listed twice must see its own earlier amount
  for i = 1, count do
    local key = KEYS[first_key + i]
    local value = planned[key]
    if value == nil then
      local stored = redis.call('GET', key)
      existed[key] = stored ~= false
      value = tonumber(stored or '0')
    end
    value = value + tonumber(ARGV[arg + 3 * i - 2])
    if value > tonumber(ARGV[arg + 3 * i - 3]) then
      refused = i
      break
    end
    planned[key] = value
  end
  reply[#reply + 1] = refused
  for i = 1, count do
    local key = KEYS[first_key + i]
    if refused > 0 then
      reply[#reply + 1] = tonumber(redis.call('GET', key) or '0')
    else
      -- The amount goes in as the caller's decimal string: INCRBY never sees a float.
      redis.call('INCRBY', key, ARGV[arg + 3 * i - 2])
      if not existed[key] then
        -- Only the call that creates a window sets its expiry, so later traffic never pushes the end back.
        redis.call('EXPIRE', key, ARGV[arg + 3 * i - 1])
        existed[key] = true
      end
      reply[#reply + 1] = planned[key]
    end
  end
  first_key, arg = first_key + count, arg + 3 * count
end
return reply
"""

_ADJUST = """
-- KEYS: counters. ARGV: delta per counter. Reply: each counter's value afterwards (0 when gone).
-- A window that has expired stays gone (recreating it would outlive its TTL), and nothing drops below 0
-- (a release can arrive after the window already restarted from 0).
local reply = {}
for i, key in ipairs(KEYS) do
  local stored = redis.call('GET', key)
  if not stored then
    reply[i] = 0
  elseif tonumber(stored) + tonumber(ARGV[i]) < 0 then
    redis.call('SET', key, '0', 'KEEPTTL')
    reply[i] = 0
  else
    reply[i] = redis.call('INCRBY', key, ARGV[i])
  end
end
return reply
"""


class RedisStore:
    def __init__(self, client: Redis | RedisCluster, *, deadline: float = 0.25,
                 max_in_flight: int = MAX_IN_FLIGHT, lean: RespClient | None = None) -> None:
        """Wrap a ready `redis.asyncio` client (standalone, `Sentinel.master_for(...)`, or `RedisCluster`).
        `deadline` bounds every call to Redis, waiting for a turn included, whatever the client's own timeouts and
        retries; the client's pool should allow `max_in_flight` connections (per node). `lean`: the same standalone
        Redis through `resp.RespClient`, which then runs the reservation and settlement scripts (the hot calls)."""
        self._client = client
        self._lean = lean
        self.settles_in_order = lean is not None
        """The lean client's one pipelined connection keeps calls in order; redis-py's pools do not."""
        self._cluster = isinstance(client, RedisCluster)
        self.calls_need_a_task = self._cluster
        """Standalone and Sentinel calls are batched and run in tasks of their own; a cluster reservation runs
        slot by slot under `_guard`'s `asyncio.timeout` on the caller's stack."""
        self._deadline = deadline
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._reserve_script: Callable[..., Awaitable[Any]]
        self._adjust_script: Callable[..., Awaitable[Any]]
        if lean is not None:
            self._reserve_script = Script(_RESERVE).bound(lean)
            self._adjust_script = Script(_ADJUST).bound(lean)
        else:
            self._reserve_script = client.register_script(_RESERVE)
            self._adjust_script = client.register_script(_ADJUST)
        self._background: set[asyncio.Task[None]] = set()
        self._adjust_batch: _AdjustBatch | None = None
        self._reserve_batch: list[tuple[Sequence[Counter], Sequence[int], asyncio.Future[Admission]]] | None = None
        self.failed_give_backs = 0
        """Cluster reservations whose give-back failed: their amounts stay counted until their windows end."""

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, ssl_ca_file: str | None = None,
                 timeout: float = 0.05, cluster: bool = False) -> RedisStore:
        """`redis://` or `rediss://` URL; a password in the URL wins over `password`. `timeout` (seconds) bounds
        each connect and each reply; a whole call, reconnect included, ends within `4 * timeout + 0.05`."""
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                                   "max_connections": MAX_IN_FLIGHT + _SPARE_CONNECTIONS}
        if password is not None:
            options["password"] = password
        if ssl_ca_file is not None:
            if not url.startswith("rediss://"):
                raise ValueError(f"a CA file is only used with a rediss:// URL, not {url.partition('://')[0]}://")
            options["ssl_ca_certs"] = ssl_ca_file
        client: Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(url, retry=Retry(NoBackoff(), 1), **options)
            return cls(client, deadline=4 * timeout + 0.05)
        client = Redis.from_url(url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **options)
        lean = RespClient(url, password=password, ssl_ca_file=ssl_ca_file, timeout=timeout)
        return cls(client, deadline=4 * timeout + 0.05, lean=lean)

    async def reserve(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        if len(counters) != len(amounts):
            raise ValueError("one amount per counter")
        if not counters:
            return Admission(True, None, ())
        if self._cluster:
            return await self._reserve_slot_by_slot(counters, amounts)
        return await self._reserve_together(counters, amounts)

    async def adjust(self, keys: Sequence[str], deltas: Sequence[int]) -> None:
        if len(keys) != len(deltas):
            raise ValueError("one delta per key")
        if not keys:
            return
        if not self._cluster:
            await self._adjust_together(keys, deltas)
            return
        results = await asyncio.gather(
            *(self._adjust_once([keys[i] for i in group], [deltas[i] for i in group])
              for group in _slot_groups(keys)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def read(self, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        return [0 if value is None else int(value) for value in await self._fetch(list(keys))]

    async def scan(self, prefix: str) -> dict[str, int]:
        try:
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
            found = {key async for key in self._client.scan_iter(match=_glob_escape(prefix) + "*", count=_SCAN_BATCH)}
        except Exception as exc:
            raise StoreUnavailable(_describe(exc, self._deadline)) from exc
        keys = sorted(key.decode() if isinstance(key, bytes) else key for key in found)
        result: dict[str, int] = {}
        for start in range(0, len(keys), _SCAN_BATCH):
            batch = keys[start:start + _SCAN_BATCH]
            for key, value in zip(batch, await self._fetch(batch), strict=True):
                if value is not None:  # expired since the scan saw it
                    result[key] = int(value)
        return result

    async def close(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)  # pending give-backs, each within a deadline
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
        if self._lean is not None:
            await self._lean.close()

    async def _fetch(self, keys: list[str]) -> list[bytes | str | None]:
        if isinstance(self._client, RedisCluster):
            return await self._guard(self._client.mget_nonatomic, keys)  # one MGET per slot
        return await self._guard(self._client.mget, keys)

    async def _adjust_together(self, keys: Sequence[str], deltas: Sequence[int]) -> None:
        batch = self._adjust_batch
        if batch is None:
            batch = self._adjust_batch = _AdjustBatch(asyncio.get_running_loop().create_future())
            asyncio.get_running_loop().call_soon(self._send_adjust_batch)
        batch.keys += keys
        batch.deltas += deltas
        await asyncio.shield(batch.done)  # a caller that gives up does not take the others' settlement with it

    def _send_adjust_batch(self) -> None:
        batch, self._adjust_batch = self._adjust_batch, None
        assert batch is not None

        async def send() -> None:
            try:
                await self._adjust_once(batch.keys, batch.deltas)
            except StoreUnavailable as exc:
                batch.done.set_exception(exc)
                batch.done.exception()  # retrieved: callers that gave up must not leave a "never retrieved" log
            else:
                batch.done.set_result(None)

        self._spawn(send())

    async def _reserve_together(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        loop = asyncio.get_running_loop()
        if self._reserve_batch is None:
            self._reserve_batch = []
            loop.call_soon(self._send_reserve_batch)
        decided: asyncio.Future[Admission] = loop.create_future()
        self._reserve_batch.append((counters, amounts, decided))
        return await asyncio.shield(decided)

    def _send_reserve_batch(self) -> None:
        batch, self._reserve_batch = self._reserve_batch or [], None

        async def send() -> None:
            try:
                admissions = await self._reserve_many([(counters, amounts) for counters, amounts, _ in batch])
            except StoreUnavailable as exc:
                for _, _, decided in batch:
                    decided.set_exception(exc)
                    decided.exception()  # retrieved: callers that gave up must not leave a "never retrieved" log
                return
            for (_, _, decided), admission in zip(batch, admissions, strict=True):
                decided.set_result(admission)

        self._spawn(send())

    async def _reserve_once(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        return (await self._reserve_many([(counters, amounts)]))[0]

    async def _reserve_many(self, reservations: list[tuple[Sequence[Counter], Sequence[int]]]) -> list[Admission]:
        keys: list[str] = []
        args: list[int] = [len(reservations)]
        for counters, amounts in reservations:
            args.append(len(counters))
            for counter, amount in zip(counters, amounts, strict=True):
                args += (counter.limit, amount, counter.ttl)
                keys.append(counter.key)
        reply = await self._guard(self._reserve_script, keys, args)
        admissions, position = [], 0
        for counters, _ in reservations:
            refused, values = int(reply[position]), reply[position + 1:position + 1 + len(counters)]
            position += 1 + len(counters)
            admissions.append(Admission(refused == 0, refused - 1 if refused else None, tuple(int(v) for v in values)))
        return admissions

    async def _adjust_once(self, keys: Sequence[str], deltas: Sequence[int]) -> list[int]:
        reply = await self._guard(self._adjust_script, list(keys), list(deltas))
        final = dict(zip(keys, (int(v) for v in reply), strict=True))  # a key listed twice: its last value
        return [final[key] for key in keys]

    async def _reserve_slot_by_slot(self, counters: Sequence[Counter], amounts: Sequence[int]) -> Admission:
        groups = _slot_groups([c.key for c in counters])
        if len(groups) == 1:
            return await self._reserve_once(counters, amounts)
        used = [0] * len(counters)
        taken: list[list[int]] = []
        for position, group in enumerate(groups):
            try:
                admission = await self._reserve_once([counters[i] for i in group], [amounts[i] for i in group])
            except BaseException:  # StoreUnavailable, or the caller gave up (cancelled)
                # Give back what was confirmed taken without making the caller wait. The failed slot may or may not
                # have counted the request (a reply can be lost after the script ran); left alone, it over-counts.
                if taken:
                    self._spawn(self._give_back(counters, amounts, taken, [0] * len(counters)))
                raise
            for index, value in zip(group, admission.used, strict=True):
                used[index] = value
            if admission.admitted:
                taken.append(group)
                continue
            later = [index for rest in groups[position + 1:] for index in rest]
            give_back = self._spawn(self._give_back(counters, amounts, taken, used))
            await asyncio.gather(asyncio.shield(give_back), self._read_into(counters, later, used))
            assert admission.refused_index is not None
            return Admission(False, group[admission.refused_index], tuple(used))
        return Admission(True, None, tuple(used))

    async def _give_back(self, counters: Sequence[Counter], amounts: Sequence[int], groups: list[list[int]],
                         used: list[int]) -> None:
        """Undo the slots a reservation already took; `used` gets their values afterwards."""

        async def one(group: list[int]) -> None:
            try:
                values = await self._adjust_once([counters[i].key for i in group], [-amounts[i] for i in group])
            except StoreUnavailable as exc:
                self.failed_give_backs += 1
                if self.failed_give_backs & (self.failed_give_backs - 1) == 0:  # 1st, 2nd, 4th...: no log flood
                    log.warning("could not give back a refused reservation on %s (%s); it stays counted until its "
                                "window ends (%d such so far)", counters[group[0]].key, exc, self.failed_give_backs)
                return
            for index, value in zip(group, values, strict=True):
                used[index] = value

        await asyncio.gather(*(one(group) for group in groups))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A give-back runs to its end even if the caller is cancelled meanwhile; `close` waits for it."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _read_into(self, counters: Sequence[Counter], indexes: list[int], used: list[int]) -> None:
        """Values of the slots a refusal never reached, for the refusal's report. Best effort: 0 if unreadable."""
        if not indexes:
            return
        with contextlib.suppress(StoreUnavailable):
            for index, value in zip(indexes, await self.read([counters[i].key for i in indexes]), strict=True):
                used[index] = value

    async def _guard(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run one call to Redis within the deadline; whatever goes wrong becomes `StoreUnavailable`.

        Catching every exception is deliberate: the limiter's fail-open/fail-closed policy must get its chance, and
        redis-py can raise non-Redis errors when connections are torn down under a call (its 8.1 cluster client
        raises AttributeError from in-flight commands when a topology refresh closes their connections)."""
        try:
            async with asyncio.timeout(self._deadline), self._in_flight:
                if isinstance(self._client, RedisCluster):
                    # redis-py 8.1 picks a command's node BEFORE it loads the slot map, so commands issued while the
                    # client is (re)initializing go to an arbitrary node, draw MOVED, and after 5 of those the
                    # client drops every connection, in-flight ones included. Load the map first (a no-op once
                    # loaded).
                    await self._client.initialize()
                return await call(*args)  # created only once it may run: an expired wait leaves no coroutine
        except Exception as exc:
            raise StoreUnavailable(_describe(exc, self._deadline)) from exc


class _AdjustBatch:
    __slots__ = ("deltas", "done", "keys")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.keys: list[str] = []
        self.deltas: list[int] = []
        self.done = done


def _slot_groups(keys: Sequence[str]) -> list[list[int]]:
    """Indexes of `keys` grouped by cluster hash slot, groups in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(index)
    return list(groups.values())


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _describe(exc: BaseException, deadline: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer from Redis within {deadline:g}s"
    return f"{type(exc).__name__}: {exc}"
