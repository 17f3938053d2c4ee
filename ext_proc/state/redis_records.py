"""The Redis side shared by what the gateway keeps as records (stored Responses, MCP sessions), as opposed to the
limiter's counters: one client per store, with timeouts sized for records (ten of the limiter's per-call timeout,
at least a second), and every call bounded and failing as `StoreUnavailable`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ..config.models import RedisSettings
from ..limits.store import StoreUnavailable

T = TypeVar("T")


def record_deadline(settings: RedisSettings) -> float:
    """Records are bigger than counters: a read or write gets ten of the limiter's per-call timeouts."""
    return max(settings.timeout * 10, 1.0)


def record_client(settings: RedisSettings, password: str | None) -> Redis | RedisCluster:
    options: dict = {"password": password, "socket_timeout": record_deadline(settings), "socket_connect_timeout": 1.0}
    if settings.ca_file is not None:
        options["ssl_ca_certs"] = str(settings.ca_file)
    return (RedisCluster.from_url(settings.url, **options) if settings.cluster
            else Redis.from_url(settings.url, **options))


async def bounded(call: Awaitable[T], deadline: float) -> T:
    """`call`, or `StoreUnavailable` when Redis fails or is slower than `deadline` seconds."""
    try:
        return await asyncio.wait_for(call, deadline)
    except (TimeoutError, RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis: {type(exc).__name__}") from None
