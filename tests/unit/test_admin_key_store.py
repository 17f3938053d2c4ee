"""Where the admin API keeps virtual keys: the keys file (rewritten whole, hashes only, renamed into place) and one
Redis hash with a version counter; and how servers fold the Redis-stored keys into their configuration."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import pytest
import redis

from ext_proc.admin.key_store import (
    FileKeyStore,
    KeyStoreError,
    RedisKeyStore,
    stored_keys_version,
    with_stored_keys,
)
from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config, load_keys_file, parse_config
from ext_proc.config.models import LimitRule, RedisSettings, VirtualKey
from ext_proc.state.stored_keys import VERSION_FIELD, keys_hash_name

from ..redis_server import RedisServer, free_ports

_prefixes = count()

BASE = """
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - model: m
    backends: [{backend: oa, model: x}]
"""


def key(key_id: str, secret: str | None = None, **fields: object) -> VirtualKey:
    return VirtualKey(id=key_id, hash=hash_key(secret or generate_key()), **fields)


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


# -- keys file ----------------------------------------------------------------------------------------------------

def test_file_store_round_trip_keeps_only_hashes_and_writes_a_valid_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    store = FileKeyStore(path)
    secrets = {name: generate_key() for name in ("alice", "bob")}
    created_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    alice = key("alice", secrets["alice"], team="blue", models=["m"], created_at=created_at,
                limits=[LimitRule(window="day", usd=2.5, requests=10)],
                expires_at=datetime(2031, 1, 1, tzinfo=UTC))
    bob = key("bob", secrets["bob"])

    async def scenario() -> None:
        assert await store.list() == []  # no file yet: no keys
        assert await store.create(alice) is True
        assert await store.create(bob) is True
        assert await store.create(key("alice")) is False  # same id, another secret: refused, nothing written
        assert [k.id for k in await store.list()] == ["alice", "bob"]
        assert await store.list() == [alice, bob]

    run(scenario())
    text = path.read_text()
    for name, secret in secrets.items():
        assert secret not in text
        assert hash_key(secret) in text, name
    assert load_keys_file(path) == [alice, bob]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.yaml"]  # the temporary was renamed away

    rotated_secret = generate_key()

    async def changes() -> None:
        assert await store.replace(alice.model_copy(update={"hash": hash_key(rotated_secret)})) is True
        assert await store.replace(key("carol")) is False
        assert await store.revoke("bob") is True
        assert await store.revoke("bob") is False
        assert await store.revoke("nobody") is False

    run(changes())
    stored = load_keys_file(path)
    assert [k.id for k in stored] == ["alice"]
    assert stored[0].hash == hash_key(rotated_secret)
    assert (stored[0].team, stored[0].models, stored[0].limits) == ("blue", ["m"], alice.limits)
    assert secrets["alice"] not in path.read_text() and rotated_secret not in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.yaml"]


def test_a_config_naming_the_written_keys_file_loads_its_keys(tmp_path: Path) -> None:
    keys_path = tmp_path / "keys.yaml"
    run(FileKeyStore(keys_path).create(key("stored", team="t")))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(BASE + "keys_file: keys.yaml\nvirtual_keys: [{id: inline, hash: " + hash_key("x") + "}]\n")
    config = load_config(config_path)
    assert [(k.id, k.team) for k in config.virtual_keys] == [("inline", None), ("stored", "t")]


def test_concurrent_changes_to_the_file_are_not_lost(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.yaml")

    async def scenario() -> list[bool]:
        return await asyncio.gather(*(store.create(key(f"k{i}")) for i in range(20)))

    assert run(scenario()) == [True] * 20
    assert sorted(k.id for k in load_keys_file(tmp_path / "keys.yaml")) == sorted(f"k{i}" for i in range(20))


def test_a_failed_write_raises_key_store_error_and_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    store = FileKeyStore(path)
    run(store.create(key("first")))
    before = path.read_text()
    (tmp_path / "keys.yaml.tmp").mkdir()  # the temporary can't be written
    with pytest.raises(KeyStoreError, match=r"keys\.yaml"):
        run(store.create(key("second")))
    assert path.read_text() == before
    with pytest.raises(KeyStoreError):
        run(FileKeyStore(tmp_path / "missing-dir" / "keys.yaml").create(key("x")))


def test_a_keys_file_that_cannot_be_read_is_a_key_store_error_for_reads_too(tmp_path: Path) -> None:
    """Like a failed write (and like Redis being down), so the admin API answers UNAVAILABLE, not INTERNAL."""
    unreadable = tmp_path / "keys.yaml"
    unreadable.mkdir()  # exists, but reading it fails (EISDIR)
    store = FileKeyStore(unreadable)
    with pytest.raises(KeyStoreError):
        run(store.create(key("x")))
    with pytest.raises(KeyStoreError):
        run(store.list())


# -- Redis --------------------------------------------------------------------------------------------------------

@pytest.fixture
def settings(redis_server: RedisServer) -> RedisSettings:
    """A prefix of its own per test: tests share the server, never each other's keys."""
    return RedisSettings(url=redis_server.url, key_prefix=f"bgtest{next(_prefixes)}:")


def closed_port_settings() -> RedisSettings:
    return RedisSettings(url=f"redis://127.0.0.1:{free_ports(1)[0]}", key_prefix="bgdown:")


def version_number(raw: object) -> int:
    assert isinstance(raw, bytes)
    return int(raw)


def test_redis_store_create_list_revoke_replace_and_version(settings: RedisSettings) -> None:
    async def scenario() -> None:
        store = RedisKeyStore(settings)
        try:
            assert await store.list() == []
            assert version_number(await store.version()) == 0
            zed, alice = key("zed", team="z"), key("alice", limits=[LimitRule(window="hour", usd=1.5)])
            seen = [version_number(await store.version())]
            assert await store.create(zed) is True
            seen.append(version_number(await store.version()))
            assert await store.create(alice) is True
            seen.append(version_number(await store.version()))
            assert await store.create(key("zed")) is False  # a duplicate id changes nothing
            assert version_number(await store.version()) == seen[-1]
            assert await store.list() == [alice, zed]  # sorted by id; the version field is not a key
            rotated = zed.model_copy(update={"hash": hash_key(generate_key())})
            assert await store.replace(rotated) is True
            seen.append(version_number(await store.version()))
            assert await store.replace(key("nobody")) is False
            assert await store.revoke("alice") is True
            seen.append(version_number(await store.version()))
            assert await store.revoke("alice") is False
            assert await store.revoke("nobody") is False
            assert version_number(await store.version()) == seen[-1]
            assert await store.list() == [rotated]
            assert seen == sorted(set(seen)) and len(seen) == 5, seen  # every change bumped it, strictly
        finally:
            await store.close()

    run(scenario())
    raw = redis.Redis.from_url(settings.url).hgetall(keys_hash_name(settings))
    assert set(raw) == {b"zed", VERSION_FIELD.encode()}
    assert b'"hash":"sha256:' in raw[b"zed"]


def test_an_unreadable_stored_record_is_skipped_with_an_error(settings: RedisSettings,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    client = redis.Redis.from_url(settings.url)
    client.hset(keys_hash_name(settings), mapping={"broken": b"{not json", "wrong-shape": b'{"id": "x"}'})

    async def scenario() -> list[VirtualKey]:
        store = RedisKeyStore(settings)
        try:
            assert await store.create(key("good")) is True
            return await store.list()
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="ext_proc.admin.key_store"):
        listed = run(scenario())
    assert [k.id for k in listed] == ["good"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("'broken'" in m and "unreadable" in m for m in errors), errors
    assert any("'wrong-shape'" in m for m in errors), errors


def test_an_unreachable_redis_is_a_key_store_error_and_an_unknown_version() -> None:
    async def scenario() -> None:
        store = RedisKeyStore(closed_port_settings())
        try:
            assert await store.version() is None
            with pytest.raises(KeyStoreError, match="unavailable"):
                await store.list()
            with pytest.raises(KeyStoreError):
                await store.create(key("x"))
            with pytest.raises(KeyStoreError):
                await store.revoke("x")
        finally:
            await store.close()

    run(scenario())


# -- folding stored keys into a configuration ---------------------------------------------------------------------

def redis_config(settings: RedisSettings, extra: str = "") -> str:
    return BASE + f"limits: {{redis: {{url: '{settings.url}', key_prefix: '{settings.key_prefix}'}}}}\n" + extra


def test_with_stored_keys_adds_stored_keys_and_a_config_file_id_wins(settings: RedisSettings) -> None:
    inline_hash = hash_key("inline-secret")
    config = parse_config(redis_config(settings, f"virtual_keys: [{{id: shared, hash: '{inline_hash}', team: a}}]\n"))
    assert with_stored_keys(config) is config  # nothing stored yet

    async def store_keys() -> None:
        store = RedisKeyStore(settings)
        try:
            assert await store.create(key("shared", team="from-redis"))
            assert await store.create(key("extra", team="b", models=["m"]))
        finally:
            await store.close()

    run(store_keys())
    merged = with_stored_keys(config)
    assert [(k.id, k.team) for k in merged.virtual_keys] == [("shared", "a"), ("extra", "b")]
    assert merged.virtual_keys[0].hash == inline_hash
    assert [k.id for k in config.virtual_keys] == ["shared"]  # the original is not changed


def test_with_stored_keys_without_redis_returns_the_same_config() -> None:
    config = parse_config(BASE)
    assert with_stored_keys(config) is config


def test_with_stored_keys_raises_when_redis_is_down() -> None:
    config = parse_config(redis_config(closed_port_settings()))
    with pytest.raises(KeyStoreError, match="Redis"):
        with_stored_keys(config)


def test_stored_keys_version_is_none_without_redis_else_a_coroutine_function(settings: RedisSettings) -> None:
    assert stored_keys_version(parse_config(BASE)) is None
    assert stored_keys_version(parse_config(BASE + "keys_file: /tmp/keys.yaml\n")) is None
    poll = stored_keys_version(parse_config(redis_config(settings)))
    assert poll is not None and inspect.iscoroutinefunction(poll)

    async def scenario() -> tuple[object, object]:
        first = await poll()
        store = RedisKeyStore(settings)
        try:
            await store.create(key("new"))
        finally:
            await store.close()
        return first, await poll()

    first, second = run(scenario())
    assert first == b"0" and second == b"1"
    down = stored_keys_version(parse_config(redis_config(closed_port_settings())))
    assert down is not None and run(down()) is None


def test_expiry_and_creation_times_survive_a_round_trip_through_redis(settings: RedisSettings) -> None:
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    original = key("timed", expires_at=expires, created_at=expires - timedelta(days=4))

    async def scenario() -> list[VirtualKey]:
        store = RedisKeyStore(settings)
        try:
            await store.create(original)
            return await store.list()
        finally:
            await store.close()

    assert run(scenario()) == [original]
    stored = json.loads(redis.Redis.from_url(settings.url).hget(keys_hash_name(settings), "timed"))
    assert set(stored) == {"id", "hash", "models", "expires_at", "created_at"}  # no None fields written
