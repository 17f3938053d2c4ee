"""A lean Redis client for the limiter's hot calls (standalone Redis): one pipelined connection on an asyncio
protocol, commands packed and replies parsed by hiredis, scripts run by EVALSHA and loaded on NOSCRIPT.

Why not redis-py's asyncio client for these calls: measured on this 2-core VM, an EVALSHA through it costs ~54 µs of
CPU warm (its connection pool, locks and command objects), against ~9 µs on a raw protocol (issue 22); every
request with Redis limits pays two (reserve, settle), and a cache lookup one. Redis Cluster and Sentinel keep
redis-py (topology, redirections, failover are its job), as do the cold calls (`read`, `scan`).

Decisions worth knowing before changing this file:
- One connection, pipelined: commands go out as they come, replies come back in order and resolve the oldest waiter
  (Redis answers one connection's commands in order). A waiter that gave up (its deadline passed) still takes its
  reply off the queue, so later replies stay matched.
- Each reply is awaited for at most `timeout` (as redis-py's socket timeout); a reply that doesn't come, or a caller
  that gives up mid-call, closes the connection: Redis may be hung, and everything pipelined behind it would wait
  too; the next call connects again. A connection Redis closed is replaced before the next command is sent, so a restart
  of Redis costs no failed call once the loss is seen (a command in flight when it died fails: it may have run).
- Connect: TCP (or TLS for `rediss://`), then AUTH and SELECT from the URL (or the given password), each bounded by
  `timeout`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import hiredis


class RespError(Exception):
    """An error reply from Redis (`ERR ...`, `NOSCRIPT ...`)."""


class RespConnectionError(ConnectionError):
    """The connection is gone (or never came up)."""


class RespTimeout(TimeoutError):
    """No reply within the client's timeout; the connection is closed (the next call connects again)."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiting: deque[asyncio.Future[object]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not self._waiting:  # a reply nobody asked for: the stream is out of step
                self.close()
                return
            waiter = self._waiting.popleft()
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(RespError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(RespConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def send(self, packed: bytes) -> asyncio.Future[object]:
        if self.closed or self.transport is None:
            raise RespConnectionError("Redis connection closed")
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.transport.write(packed)
        return waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class RespClient:
    def __init__(self, url: str, *, password: str | None = None, ssl_ca_file: str | None = None,
                 timeout: float = 0.05) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else password
        path = parts.path.strip("/")
        self._db = int(path) if path.isdigit() else 0
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "rediss":
            self._ssl = ssl.create_default_context(cafile=ssl_ca_file)
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, *args: object) -> object:
        """One command's reply within `timeout` (as redis-py's socket timeout bounds each reply). A timer on the
        reply rather than `asyncio.timeout`: the ext_proc server runs a stage's coroutine outside any task (its own
        stepping is cheaper), where `asyncio.timeout` refuses to run."""
        connection = await self._connected()
        waiter = connection.send(_pack(args))
        timer = asyncio.get_running_loop().call_later(self._timeout, _time_out, waiter, connection, self._timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.close()  # the caller's deadline passed: a hung Redis must not hold the calls behind it
            raise
        finally:
            timer.cancel()

    async def run_script(self, script: Script, keys: Sequence[object], args: Sequence[object]) -> object:
        """EVALSHA, loading the script when Redis lost it (a restart, SCRIPT FLUSH)."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", script.source)
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is not None and not connection.closed:
                return connection
            self._connection = await asyncio.ensure_future(self._connect())  # a task: `_connect` uses timeouts
            return self._connection

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            raise RespConnectionError(f"can't connect to Redis at {self._host}:{self._port}: "
                                      f"{type(exc).__name__}") from None
        try:
            async with asyncio.timeout(self._timeout):
                if self._password is not None:
                    credentials = (self._username, self._password) if self._username else (self._password,)
                    await connection.send(_pack(("AUTH", *credentials)))
                if self._db:
                    await connection.send(_pack(("SELECT", self._db)))
        except BaseException:
            connection.close()
            raise
        return connection


def _time_out(waiter: asyncio.Future[object], connection: _Connection, timeout: float) -> None:
    """No reply within `timeout`: the caller fails, and the connection closes (a hung Redis must not hold the calls
    pipelined behind this one; the next call connects again)."""
    if not waiter.done():
        waiter.set_exception(RespTimeout(f"Timeout: no reply from Redis within {timeout:g}s"))
        connection.close()


def _pack(args: tuple[object, ...]) -> bytes:
    """A command in RESP, packed by hiredis in C."""
    return hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub wants one element's type per tuple


class Script:
    """A Lua script known by its SHA-1, as EVALSHA names it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def bound(self, client: RespClient) -> _BoundScript:
        return _BoundScript(self, client)


class _BoundScript:
    """Called as redis-py's `Script` is: `(keys, args)`."""

    __slots__ = ("_client", "_script")

    def __init__(self, script: Script, client: RespClient) -> None:
        self._script = script
        self._client = client

    async def __call__(self, keys: Sequence[object], args: Sequence[object]) -> object:
        return await self._client.run_script(self._script, keys, args)
