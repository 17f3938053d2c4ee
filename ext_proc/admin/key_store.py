"""Where the admin API keeps virtual keys: one Redis hash when `limits.redis` is configured (every process and
replica sees the same keys), else the config's `keys_file`. Only each key's SHA-256 is stored.

Servers fold the stored keys into their configuration (`with_stored_keys`) and reload when they change: the keys
file is watched like any config file; the Redis hash carries a version field that every process polls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
import redis
import yaml
from pydantic import ValidationError
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ..config.loading import ConfigError, load_keys_file
from ..config.models import Config, RedisSettings, VirtualKey
from ..state.stored_keys import VERSION_FIELD, client_options, keys_hash_name

log = logging.getLogger(__name__)
T = TypeVar("T")


class KeyStoreError(Exception):
    """The store can't be read or written right now."""


class KeyStore(Protocol):
    async def list(self) -> list[VirtualKey]: ...
    async def create(self, key: VirtualKey) -> bool:
        """False when a key with this id exists."""
    async def revoke(self, key_id: str) -> bool:
        """False when there is no such key."""
    async def replace(self, key: VirtualKey) -> bool:
        """Replace the stored key with the same id (a rotation); False when there is none."""
    async def close(self) -> None: ...


def record(key: VirtualKey) -> dict:
    """The key as stored: fields it leaves unset (None, `asserts_users: false`) are not written."""
    return key.model_dump(mode="json", exclude_none=True, exclude=None if key.asserts_users else {"asserts_users"})


# -- keys file ----------------------------------------------------------------------------------------------------

KeysChange = Callable[[list[VirtualKey]], list[VirtualKey] | None]
"""The keys after a change to the stored ones, or None when it changes nothing."""


def read_keys_file(path: Path) -> list[VirtualKey]:
    """The file's keys ([] before the first is written); a file that can't be read or parsed is a KeyStoreError."""
    try:
        return load_keys_file(path) if path.exists() else []
    except OSError as exc:
        raise KeyStoreError(f"can't read {path}: {exc.strerror}") from None
    except (ConfigError, yaml.YAMLError) as exc:
        raise KeyStoreError(f"the keys file is not valid: {str(exc).splitlines()[0]}") from None


def write_keys_file(path: Path, keys: list[VirtualKey]) -> None:
    """Whole file, renamed into place: a server reading it mid-write sees the old list or the new one."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(yaml.safe_dump([record(k) for k in keys], sort_keys=False))
    temporary.replace(path)


class FileKeyStore:
    """Read, change and rewrite the whole file, one change at a time (the admin API runs in one process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def list(self) -> list[VirtualKey]:
        return await asyncio.to_thread(read_keys_file, self.path)

    async def create(self, key: VirtualKey) -> bool:
        return await self._change(lambda keys: None if any(k.id == key.id for k in keys) else [*keys, key])

    async def revoke(self, key_id: str) -> bool:
        return await self._change(
            lambda keys: None if all(k.id != key_id for k in keys) else [k for k in keys if k.id != key_id])

    async def replace(self, key: VirtualKey) -> bool:
        return await self._change(
            lambda keys: None if all(k.id != key.id for k in keys) else [key if k.id == key.id else k for k in keys])

    async def close(self) -> None:
        pass

    async def _change(self, change: KeysChange) -> bool:
        def apply() -> bool:
            try:
                changed = change(read_keys_file(self.path))
                if changed is None:
                    return False
                write_keys_file(self.path, changed)
            except OSError as exc:  # the write
                raise KeyStoreError(f"can't update {self.path}: {exc.strerror}") from None
            return True

        async with self._lock:
            return await asyncio.to_thread(apply)


# -- Redis ----------------------------------------------------------------------------------------------------------

# One hash holds every key and the version, so a change and its version bump are one script on one cluster slot.
_CREATE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
return 1
"""
_REPLACE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
return 1
"""
_REVOKE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return 1
"""


class RedisKeyStore:
    def __init__(self, settings: RedisSettings) -> None:
        options = client_options(settings)
        self._client: Redis | RedisCluster = (RedisCluster.from_url(settings.url, **options) if settings.cluster
                                              else Redis.from_url(settings.url, **options))
        self._name = keys_hash_name(settings)

    async def list(self) -> list[VirtualKey]:
        return _parse_hash(await self._call(self._client.hgetall(self._name)))

    async def create(self, key: VirtualKey) -> bool:
        return bool(await self._call(self._client.eval(
            _CREATE, 1, self._name, key.id, orjson.dumps(record(key)), VERSION_FIELD)))

    async def revoke(self, key_id: str) -> bool:
        return bool(await self._call(self._client.eval(_REVOKE, 1, self._name, key_id, VERSION_FIELD)))

    async def replace(self, key: VirtualKey) -> bool:
        return bool(await self._call(self._client.eval(
            _REPLACE, 1, self._name, key.id, orjson.dumps(record(key)), VERSION_FIELD)))

    async def version(self) -> bytes | str | None:
        """The hash's change counter; None when Redis can't be reached (a later answer then counts as a change)."""
        try:
            return await self._client.hget(self._name, VERSION_FIELD) or b"0"
        except (RedisError, OSError):
            return None

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"the key store (Redis) is unavailable: {type(exc).__name__}") from None


def _parse_hash(values: Mapping[bytes | str, bytes | str]) -> list[VirtualKey]:
    """The keys in the hash. Its fields and values are bytes (the clients do not decode answers); redis-py types
    them as bytes | str."""
    keys = []
    for field, value in values.items():
        if field == VERSION_FIELD.encode():
            continue
        try:
            keys.append(VirtualKey.model_validate(orjson.loads(value)))
        except (orjson.JSONDecodeError, ValidationError):
            name = field if isinstance(field, str) else field.decode(errors="replace")
            log.error("stored virtual key %r is unreadable; it is ignored", name)
    return sorted(keys, key=lambda k: k.id)


def key_store_for(config: Config) -> KeyStore | None:
    if config.limits.redis is not None:
        return RedisKeyStore(config.limits.redis)
    if config.keys_file is not None:
        return FileKeyStore(config.keys_file)
    return None


# -- folding stored keys into a configuration ---------------------------------------------------------------------

def with_stored_keys(config: Config) -> Config:
    """The configuration plus the keys stored in Redis (the keys file is already part of it, see `load_config`).
    Synchronous: it runs where configurations are loaded (at start, and in a reload's worker thread)."""
    settings = config.limits.redis
    if settings is None:
        return config
    options = client_options(settings)
    client = (redis.RedisCluster.from_url(settings.url, **options) if settings.cluster
              else redis.Redis.from_url(settings.url, **options))
    try:
        stored = _parse_hash(client.hgetall(keys_hash_name(settings)))
    except (RedisError, OSError) as exc:
        raise KeyStoreError(f"can't read the stored virtual keys from Redis: {type(exc).__name__}") from None
    finally:
        client.close()
    if not stored:
        return config
    inline = {k.id for k in config.virtual_keys}
    extra = [k for k in stored if k.id not in inline]  # an id in the config file wins over a stored one
    return config.model_copy(update={"virtual_keys": [*config.virtual_keys, *extra]})


def stored_keys_version(config: Config) -> Callable[[], Awaitable[object]] | None:
    """What a server polls to notice that the keys stored in Redis changed (None: nothing to poll)."""
    if config.limits.redis is None:
        return None
    return RedisKeyStore(config.limits.redis).version
