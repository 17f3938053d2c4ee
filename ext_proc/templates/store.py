"""Where the admin API keeps prompt templates: one Redis hash when `limits.redis` is configured (every process and
replica sees the same templates), else a YAML file beside the config's `keys_file` (`prompts_file`), like virtual keys.

Versions are numbered by the store (1, 2, 3 ... per name) and never change; labels point at a version. Redis fields:
`t:<name>:<version>` (the version's JSON), `l:<name>:<label>` (a version number), `n:<name>` (the last number given)
and `:version` (bumped by every change). Names and labels can't contain ':', so the fields never collide.

How every process sees a change within a second: servers rebuild their runtime, templates included, when the stored
virtual keys change (`ConfigReloader` polls the keys hash's version field every 0.25 s) or a watched file changes (the
keys file and this prompts file beside it: `config/watch.py`). A template change in Redis therefore also bumps that
counter: one reload mechanism, not two. The Redis bump is a second command after the change (the two hashes may live
on different cluster slots): should it fail, the call answers UNAVAILABLE and the change is seen at the next reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
import redis
import yaml
from pydantic import ValidationError
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from ..config.models import Config, PromptTemplate, RedisSettings
from ..config.prompt_syntax import MAX_VERSIONS, prompts_file
from ..state.stored_keys import VERSION_FIELD, client_options, keys_hash_name

log = logging.getLogger(__name__)
T = TypeVar("T")


class PromptStoreError(Exception):
    """The store can't be read or written right now."""


class TooManyVersions(Exception):
    """The name has `MAX_VERSIONS` versions already."""


@dataclass
class StoredPrompts:
    templates: list[PromptTemplate] = field(default_factory=list)
    """Every stored version, each with its `version` set and no `labels` (those are in `labels`)."""
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    """Template name -> label -> version."""


class PromptStore(Protocol):
    async def load(self) -> StoredPrompts: ...
    async def create(self, template: PromptTemplate, label: str | None) -> int:
        """Store `template` as the next version of its name (and point `label` at it); that version."""
    async def set_label(self, name: str, label: str, version: int) -> bool:
        """False when the name has no such version."""
    async def close(self) -> None: ...


def record(template: PromptTemplate) -> dict:
    """A version as stored: what it holds, not where it sits (name, version and labels are the store's)."""
    return template.model_dump(mode="json", exclude_none=True, exclude={"name", "version", "labels"})


def _version_of(name: str, version: int, data: object) -> PromptTemplate | None:
    try:
        if not isinstance(data, dict):
            raise ValueError
        return PromptTemplate.model_validate({**data, "name": name, "version": version})
    except (ValidationError, ValueError):
        log.error("stored prompt template %r version %d is unreadable; it is ignored", name, version)
        return None


# -- the file beside the keys file ----------------------------------------------------------------------------------

def read_prompts_file(path: Path) -> StoredPrompts:
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else None
    except OSError as exc:
        raise PromptStoreError(f"can't read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PromptStoreError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    data = data if isinstance(data, dict) else {}
    stored = StoredPrompts()
    for entry in data.get("templates") or ():
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("version"), int):
            template = _version_of(entry["name"], entry["version"], {k: v for k, v in entry.items()
                                                                   if k not in ("name", "version")})
            if template is not None:
                stored.templates.append(template)
    for name, labels in (data.get("labels") or {}).items():
        if isinstance(labels, dict):
            stored.labels[str(name)] = {str(k): v for k, v in labels.items() if isinstance(v, int)}
    return stored


def write_prompts_file(path: Path, stored: StoredPrompts) -> None:
    """Whole file, renamed into place: a server reading it mid-write sees the old one or the new one."""
    data = {"templates": [{"name": t.name, "version": t.version, **record(t)} for t in stored.templates],
            "labels": stored.labels}
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    temporary.replace(path)


class FilePromptStore:
    """Read, change and rewrite the whole file, one change at a time (the admin API runs in one process)."""

    def __init__(self, keys_file: Path) -> None:
        self.keys_file = keys_file
        self.path = prompts_file(keys_file)
        self._lock = asyncio.Lock()

    async def load(self) -> StoredPrompts:
        return await asyncio.to_thread(read_prompts_file, self.path)

    async def create(self, template: PromptTemplate, label: str | None) -> int:
        def change(stored: StoredPrompts) -> int:
            version = 1 + max((t.version or 0 for t in stored.templates if t.name == template.name), default=0)
            if version > MAX_VERSIONS:
                raise TooManyVersions
            stored.templates.append(template.model_copy(update={"version": version, "labels": []}))
            if label:
                stored.labels.setdefault(template.name, {})[label] = version
            return version

        return await self._change(change)

    async def set_label(self, name: str, label: str, version: int) -> bool:
        def change(stored: StoredPrompts) -> bool:
            if not any(t.name == name and t.version == version for t in stored.templates):
                return False
            stored.labels.setdefault(name, {})[label] = version
            return True

        return await self._change(change)

    async def close(self) -> None:
        pass

    async def _change(self, change: Callable[[StoredPrompts], T]) -> T:
        def apply() -> T:
            stored = read_prompts_file(self.path)
            result = change(stored)
            if result is False:
                return result
            try:
                write_prompts_file(self.path, stored)
            except OSError as exc:
                raise PromptStoreError(f"can't update {self.path}: {exc.strerror}") from None
            return result

        async with self._lock:
            return await asyncio.to_thread(apply)


# -- Redis ----------------------------------------------------------------------------------------------------------

_CREATE = """
local version = redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], 1)
if version > tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], -1)
  return 0
end
redis.call('HSET', KEYS[1], 't:' .. ARGV[1] .. ':' .. version, ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'l:' .. ARGV[1] .. ':' .. ARGV[4], version) end
redis.call('HINCRBY', KEYS[1], ARGV[5], 1)
return version
"""
_SET_LABEL = """
if redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[1] .. ':' .. ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'l:' .. ARGV[1] .. ':' .. ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[4], 1)
return 1
"""


def prompts_hash_name(settings: RedisSettings) -> str:
    return settings.key_prefix + "prompts"


class RedisPromptStore:
    def __init__(self, settings: RedisSettings) -> None:
        options = client_options(settings)
        self._client: Redis | RedisCluster = (RedisCluster.from_url(settings.url, **options) if settings.cluster
                                              else Redis.from_url(settings.url, **options))
        self._name = prompts_hash_name(settings)
        self._keys = keys_hash_name(settings)

    async def load(self) -> StoredPrompts:
        return parse_hash(await self._call(self._client.hgetall(self._name)))

    async def create(self, template: PromptTemplate, label: str | None) -> int:
        version = int(await self._call(self._client.eval(
            _CREATE, 1, self._name, template.name, orjson.dumps(record(template)), str(MAX_VERSIONS), label or "",
            VERSION_FIELD)))
        if version == 0:
            raise TooManyVersions
        await self._announce()
        return version

    async def set_label(self, name: str, label: str, version: int) -> bool:
        done = bool(await self._call(self._client.eval(_SET_LABEL, 1, self._name, name, label, str(version),
                                                       VERSION_FIELD)))
        if done:
            await self._announce()
        return done

    async def close(self) -> None:
        await self._client.aclose()

    async def _announce(self) -> None:
        """Every server reloads when the stored keys' version changes (see the module's docstring)."""
        await self._call(self._client.hincrby(self._keys, VERSION_FIELD, 1))

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise PromptStoreError(f"the prompt store (Redis) is unavailable: {type(exc).__name__}") from None


def parse_hash(values: Mapping[bytes | str, bytes | str]) -> StoredPrompts:
    """The templates and labels in the hash (fields and values are bytes: the clients do not decode answers)."""
    stored = StoredPrompts()
    for raw_field, value in values.items():
        name = raw_field if isinstance(raw_field, str) else raw_field.decode(errors="replace")
        kind, _, rest = name.partition(":")
        template_name, _, tail = rest.rpartition(":")
        if kind == "t" and tail.isdigit():
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                data = None
            template = _version_of(template_name, int(tail), data)
            if template is not None:
                stored.templates.append(template)
        elif kind == "l" and template_name:
            stored.labels.setdefault(template_name, {})[tail] = int(value)
    stored.templates.sort(key=lambda t: (t.name, t.version or 0))
    return stored


# -- choosing and reading the store ---------------------------------------------------------------------------------

def prompt_store_for(config: Config) -> PromptStore | None:
    if config.limits.redis is not None:
        return RedisPromptStore(config.limits.redis)
    if config.keys_file is not None:
        return FilePromptStore(config.keys_file)
    return None


def read_stored_prompts(config: Config) -> StoredPrompts | None:
    """The stored templates, read synchronously where runtimes are built (at start, and in a reload's worker thread);
    None when the config has no store. A store that can't be read is a PromptStoreError."""
    settings = config.limits.redis
    if settings is None:
        return read_prompts_file(prompts_file(config.keys_file)) if config.keys_file is not None else None
    options = client_options(settings)
    client = (redis.RedisCluster.from_url(settings.url, **options) if settings.cluster
              else redis.Redis.from_url(settings.url, **options))
    try:
        return parse_hash(client.hgetall(prompts_hash_name(settings)))
    except (RedisError, OSError) as exc:
        raise PromptStoreError(f"can't read the stored prompt templates from Redis: {type(exc).__name__}") from None
    finally:
        client.close()
