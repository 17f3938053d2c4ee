"""Cooldowns: a backend that answered 429 (or 503 with `retry-after`) goes to the end of every chain for as long as
the provider asked, or `routing.cooldown_default` when it named no wait.

Each process keeps its own table and reads it on every request (a dict lookup). With Redis configured, every
cooldown is also written to one Redis hash, and each process reads the hash back twice a second, so a 429 seen by one
process or replica cools the backend everywhere within half a second, without a Redis call per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ..config.models import RedisSettings

log = logging.getLogger(__name__)

SYNC_INTERVAL = 0.5
_PUBLISH = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
"""


class Cooldowns:
    def __init__(self, default: float, maximum: float) -> None:
        self.default = default
        self.maximum = maximum
        self._until: dict[str, float] = {}
        """Backend id -> wall-clock second its cooldown ends (wall clock: shared with other machines)."""
        self._shared: SharedCooldowns | None = None

    def share_through(self, shared: SharedCooldowns) -> None:
        self._shared = shared

    def start(self) -> None:
        """Begin reading the shared cooldowns (inside the server's event loop)."""
        if self._shared is not None:
            self._shared.start()

    @property
    def any(self) -> bool:
        """Some backend is or was cooling lately (ended cooldowns are forgotten when next asked about)."""
        return bool(self._until)

    def cooling(self, backend: str, now: float | None = None) -> bool:
        until = self._until.get(backend)
        if until is None:
            return False
        if until > (time.time() if now is None else now):
            return True
        del self._until[backend]
        return False

    def cool(self, backend: str, seconds: float) -> None:
        until = time.time() + min(seconds, self.maximum)
        if until > self._until.get(backend, 0.0):
            self._until[backend] = until
            if self._shared is not None:
                self._shared.publish(backend, until)

    def merge(self, shared: Mapping[str, float]) -> None:
        now = time.time()
        for backend, until in shared.items():
            if until > now and until > self._until.get(backend, 0.0):
                self._until[backend] = until

    def on_response(self, backend: str, status: int, headers: Mapping[str, str]) -> None:
        """Cool the backend if the answer asks for it."""
        if status == 429:
            wait = wait_from_headers(headers)
            self.cool(backend, self.default if wait is None else wait)
        elif status in (503, 529) and ("retry-after" in headers or "retry-after-ms" in headers):
            wait = wait_from_headers(headers)
            if wait is not None:
                self.cool(backend, wait)


def wait_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the provider asks us to wait: `retry-after-ms`, `retry-after` (seconds or HTTP date), else the reset
    time of whichever rate limit the provider reports as used up (OpenAI's `x-ratelimit-reset-*` durations,
    Anthropic's `anthropic-ratelimit-*-reset` timestamps)."""
    now = time.time() if now is None else now
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000)
    value = headers.get("retry-after")
    if value is not None:
        seconds = _seconds_or_date(value, now)
        if seconds is not None:
            return seconds
    resets: list[float] = []
    exhausted: list[float] = []
    for name, value in headers.items():
        if name.startswith("x-ratelimit-reset-"):
            wait = _openai_duration(value)
            metric = name.removeprefix("x-ratelimit-reset-")
            remaining = headers.get(f"x-ratelimit-remaining-{metric}")
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            wait = _rfc3339_wait(value, now)
            metric = name.removeprefix("anthropic-ratelimit-").removesuffix("-reset")
            remaining = headers.get(f"anthropic-ratelimit-{metric}-remaining")
        else:
            continue
        if wait is None:
            continue
        resets.append(wait)
        if remaining is not None and remaining.strip() == "0":
            exhausted.append(wait)
    if exhausted:
        return max(exhausted)
    if resets:
        return min(resets)
    return None


def _seconds_or_date(value: str, now: float) -> float | None:
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _openai_duration(value: str) -> float | None:
    """`1s`, `6m0s`, `20ms`, `1h2m3.5s`."""
    total, number, text, index = 0.0, "", value.strip(), 0
    if not text:
        return None
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if text.startswith("ms", index) else char
        if unit not in _UNITS or not number:
            return None
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return None
        number = ""
        index += len(unit)
    if number:  # a bare number is seconds
        try:
            total += float(number)
        except ValueError:
            return None
    return total


def _rfc3339_wait(value: str, now: float) -> float | None:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


class SharedCooldowns:
    """The Redis side: writes are fire-and-forget, reads run in the background; Redis trouble only costs sharing."""

    def __init__(self, client: Redis | RedisCluster, key: str, cooldowns: Cooldowns) -> None:
        self._client = client
        self._key = key
        self._cooldowns = cooldowns
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self._warned = False

    def publish(self, backend: str, until: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._ensure_sync(loop)
        task = loop.create_task(self._publish(backend, until))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def start(self) -> None:
        self._ensure_sync(asyncio.get_running_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._client.aclose()

    def _ensure_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._sync_forever())

    async def _publish(self, backend: str, until: float) -> None:
        ttl_ms = max(1, int((until - time.time() + 60) * 1000))
        try:
            await self._client.eval(_PUBLISH, 1, self._key, backend, repr(until), ttl_ms)
        except (TimeoutError, RedisError, OSError) as exc:
            self._warn(exc)

    async def _sync_forever(self) -> None:
        while True:
            try:
                values = await self._client.hgetall(self._key)
                # bytes (the client does not decode answers); redis-py types every answer as bytes | str
                self._cooldowns.merge({name if isinstance(name, str) else name.decode(): float(until)
                                       for name, until in values.items()})
                self._warned = False
            except (TimeoutError, RedisError, OSError, ValueError) as exc:
                self._warn(exc)
            await asyncio.sleep(SYNC_INTERVAL)

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("cooldowns are not shared through Redis for now (%s); each process keeps its own",
                        type(exc).__name__)


def shared_cooldowns(settings: RedisSettings, password: str | None, cooldowns: Cooldowns) -> SharedCooldowns:
    """One small client of its own (the limiter's is tuned for its scripts); one hash key, so one cluster slot."""
    options: dict = {"password": password, "socket_timeout": settings.timeout, "socket_connect_timeout": 1.0}
    if settings.ca_file is not None:
        options["ssl_ca_certs"] = str(settings.ca_file)
    client: Redis | RedisCluster = (RedisCluster.from_url(settings.url, **options) if settings.cluster
                                    else Redis.from_url(settings.url, **options))
    return SharedCooldowns(client, settings.key_prefix + "cooldowns", cooldowns)
