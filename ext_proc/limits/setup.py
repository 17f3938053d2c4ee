"""Build the limiter a configuration asks for: Redis when configured, else the in-process store."""

from __future__ import annotations

import logging

from ..auth.credentials import read_secret
from ..config.models import Config, RedisSettings
from .leases import Leases
from .limiter import Limiter, compile_tables
from .memory_store import MemoryStore
from .redis_store import RedisStore
from .store import LimitStore

log = logging.getLogger(__name__)


def build_limiter(config: Config, *, announce: bool = False, previous: tuple[Config, Limiter] | None = None
                  ) -> Limiter | None:
    """None when no limit is configured anywhere: requests then skip the limiter entirely.

    `previous` (a reload): its store is kept when the store settings did not change, so counts carry over (the
    in-memory store's included) and no new Redis pool is opened per reload."""
    tables = compile_tables(config)
    if tables.empty:
        return None
    settings = config.limits.redis
    if previous is not None and previous[0].limits.redis == settings:
        return Limiter(previous[1].store, tables, prefix=settings.key_prefix if settings else "bg:",
                       sealer=previous[1].sealer, leases=_leases(previous[1].store, settings))
    if settings is None:
        if announce:
            log.warning("limits use the embedded in-memory store: exact within this process only%s; configure "
                        "`limits.redis` to share them across processes and replicas",
                        f" (and {config.ext_proc.processes} processes are configured)"
                        if config.ext_proc.processes > 1 else "")
        return Limiter(MemoryStore(), tables)
    password = read_secret(settings.password, "limits.redis.password") if settings.password else None
    store = RedisStore.from_url(settings.url, password=password,
                                ssl_ca_file=str(settings.ca_file) if settings.ca_file else None,
                                timeout=settings.timeout, cluster=settings.cluster)
    if announce:
        log.info("limits use Redis at %s (key prefix %r)", _without_credentials(settings.url), settings.key_prefix)
    return Limiter(store, tables, prefix=settings.key_prefix, leases=_leases(store, settings))


def _leases(store: LimitStore, settings: RedisSettings | None) -> Leases | None:
    """Leases where the store is shared (Redis) and they are wanted: the in-process store is as fast as a lease."""
    return Leases(store) if settings is not None and settings.leases else None


def _without_credentials(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
