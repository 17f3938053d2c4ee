"""The exact response cache's parts: keys, client directives, stores, the replay of a cached chat completion as a
stream the official SDK parses, the route stage's lookup and the attempt stage's writer."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from ext_proc.auth.virtual_keys import KeyInfo
from ext_proc.cache.keys import IGNORED, cache_key, deterministic, directive
from ext_proc.cache.replay import chat_stream
from ext_proc.cache.store import CachedAnswer, MemoryAnswerCache, RedisAnswerCache, build_answer_cache
from ext_proc.config.models import RedisSettings, RouteCache
from ext_proc.limits.store import StoreUnavailable
from ext_proc.stages.endpoints import Endpoint
from ext_proc.stages.response_cache import AnswerWriter, Lookup, look_up, scope_of
from ext_proc.state import expiring_lru

from ..redis_server import RedisServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 50}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": "fp",
          "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
              "role": "assistant", "content": "Calling it.", "tool_calls": [
                  {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}]}}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
_prefixes = itertools.count()


def test_fields_that_only_steer_delivery_share_a_key_and_every_other_field_splits_it() -> None:
    base = cache_key("m", "team-a", "chat", BODY)
    steered = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "user": "u", "metadata": {"a": "b"}}
    assert cache_key("m", "team-a", "chat", steered) == base
    assert {"stream", "user", "metadata"} <= IGNORED
    for changed in ({**BODY, "max_tokens": 51}, {**BODY, "tools": []}, {**BODY, "unknown_field": 1},
                    {**BODY, "messages": [{"role": "user", "content": "hi!"}]}):
        assert cache_key("m", "team-a", "chat", changed) != base
    assert len({base, cache_key("m", "team-b", "chat", BODY), cache_key("m", "", "chat", BODY),
                cache_key("other", "team-a", "chat", BODY), cache_key("m", "team-a", "messages", BODY)}) == 5
    assert cache_key("m", "t", "chat", {"b": 1, "a": 2}) == cache_key("m", "t", "chat", {"a": 2, "b": 1})


@pytest.mark.parametrize(("body", "expected"), [
    ({"temperature": 0}, True), ({"temperature": 0.0}, True), ({"top_k": 1}, True), ({}, False),
    ({"temperature": 0.7}, False), ({"temperature": 0, "n": 2}, False), ({"temperature": False}, False),
])
def test_only_requests_whose_sampling_cant_vary_are_deterministic(body: dict, expected: bool) -> None:
    assert deterministic(body) is expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, "use"), ({"cache-control": "no-cache"}, "refresh"), ({"cache-control": "max-age=0, no-store"}, "bypass"),
    ({"x-babelgate-cache": "Bypass"}, "bypass"), ({"x-babelgate-cache": "refresh"}, "refresh"),
    ({"x-babelgate-cache": "whatever", "cache-control": "no-cache"}, "refresh"),
])
def test_clients_bypass_or_refresh_the_cache(headers: dict, expected: str) -> None:
    assert directive(headers) == expected


def test_memory_entries_expire_and_damaged_ones_read_as_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(expiring_lru, "time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))
    cache = MemoryAnswerCache(max_entries=10, max_bytes=1 << 20)
    answer = CachedAnswer(ANSWER, stored_at=1000.0, input_tokens=3, output_tokens=4, cost_usd=0.01)

    async def scenario() -> None:
        await cache.put("k", answer, ttl=10)
        assert await cache.get("k") == answer and answer.age(now=1042.5) == 42
        now[0] = 111.0
        assert await cache.get("k") is None
        cache._entries.put("bad", b"\x00not json", 10)
        assert await cache.get("bad") is None

    asyncio.run(scenario())
    assert CachedAnswer.decode(b'{"body": {}}') is None


def test_redis_entries_are_shared_and_expire(redis_server: RedisServer) -> None:
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgcache{next(_prefixes)}:")
    answer = CachedAnswer(ANSWER, stored_at=5.0)

    async def scenario() -> None:
        first, second = build_answer_cache(settings, None), build_answer_cache(settings, None)
        assert isinstance(first, RedisAnswerCache)
        await first.put("k", answer, ttl=60)
        assert await second.get("k") == answer and await second.get("other") is None
        await first.put("short", answer, ttl=0.001)
        for _ in range(200):  # expired within a second at most: poll, never sleep a fixed time
            if await second.get("short") is None:
                break
            await asyncio.sleep(0.01)
        assert await second.get("short") is None
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_on_one_redis_lookups_and_writes_take_the_lean_client_and_a_hung_redis_is_a_miss_not_a_wait(
        tmp_path: Path) -> None:
    """Standalone Redis: GET and SET go over `limits/resp.py`'s pipelined connections (a sixth of redis-py's CPU per
    call); a Redis that stops answering makes a lookup `StoreUnavailable` (the stage serves it as a miss) within the
    per-call timeout, and once it answers again the next lookup is served on a new connection."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    # A second: the lookup right after the thaw (a connect, then a reply from a Redis just woken) must be served, and
    # a busy machine can stall past a fraction of one.
    settings = RedisSettings(url=server.url, key_prefix="bglean:", timeout=1.0)
    answer = CachedAnswer(ANSWER, stored_at=5.0)

    async def scenario() -> None:
        cache = build_answer_cache(settings, None)
        assert isinstance(cache, RedisAnswerCache)
        calls: list[tuple[object, ...]] = []
        for client in cache._lean or ():
            execute = client.execute

            async def counted(*command: object, execute: object = execute) -> object:
                calls.append(command[:1])
                return await execute(*command)  # type: ignore[operator]

            client.execute = counted  # type: ignore[method-assign]
        await cache.put("k", answer, ttl=60)
        assert await cache.get("k") == answer
        assert calls == [("SET",), ("GET",)]
        server.freeze()
        try:
            with pytest.raises(StoreUnavailable):
                await cache.get("k")
        finally:
            server.thaw()
        assert await cache.get("k") == answer
        await cache.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_redis_cluster_cache_keeps_redis_py() -> None:
    cache = build_answer_cache(RedisSettings(url="redis://127.0.0.1:1", cluster=True), None)
    assert isinstance(cache, RedisAnswerCache) and cache._lean is None


def test_a_cached_chat_completion_replays_as_a_stream_the_sdk_parses() -> None:
    raw = chat_stream(ANSWER, include_usage=True)
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate(orjson.loads(event)) for event in events[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert text == "Calling it." and chunks[0].choices[0].delta.role == "assistant"
    assert [(call.id, call.function.name, call.function.arguments) for call in calls] == [  # type: ignore[union-attr]
        ("call_1", "get", '{"a": 1}')]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    assert {c.id for c in chunks} == {"chatcmpl-1"} and all(c.system_fingerprint == "fp" for c in chunks)
    assert b'"usage"' not in chat_stream(ANSWER, include_usage=False)


# -- the route stage's lookup --------------------------------------------------------------------------------------

def _key(key_id: str, team: str | None = None) -> KeyInfo:
    return KeyInfo(id=key_id, team=team, models=None, expires_at=None)


class _BrokenCache(MemoryAnswerCache):
    async def get(self, key: str) -> CachedAnswer | None:
        raise StoreUnavailable("redis is down")


def _look(cache: MemoryAnswerCache, body: dict, headers: dict | None = None, key: KeyInfo | None = None,
          settings: RouteCache | None = None, endpoint: Endpoint = Endpoint.CHAT) -> Lookup | None:
    return asyncio.run(look_up(cache, settings or RouteCache(), "m", endpoint, key or _key("k1", "team-a"),
                               headers or {}, body))


def test_a_lookup_is_a_miss_then_a_hit_once_stored() -> None:
    cache = MemoryAnswerCache()
    miss = _look(cache, BODY)
    assert miss is not None and miss.state == "miss" and miss.metadata()["cache"] == "miss"
    ttl, max_bytes, entry = miss.metadata()["cache_entry"].split(" ", 2)
    assert (float(ttl), int(max_bytes), entry) == (300.0, 1 << 20, miss.key)
    asyncio.run(cache.put(miss.key, CachedAnswer(ANSWER, 0.0), 60))
    hit = _look(cache, BODY)
    assert hit is not None and hit.state == "hit" and hit.answer is not None and hit.answer.body == ANSWER


@pytest.mark.parametrize(("body", "headers", "state"), [
    ({**BODY, "temperature": 0.5}, {}, "bypass"),
    ({**BODY, "n": 3}, {}, "bypass"),
    (BODY, {"cache-control": "no-store"}, "bypass"),
    (BODY, {"x-babelgate-cache": "refresh"}, "miss"),
], ids=["may vary", "several choices", "client bypass", "client refresh"])
def test_what_the_lookup_decides(body: dict, headers: dict, state: str) -> None:
    cache = MemoryAnswerCache()
    stored = _look(cache, BODY)
    assert stored is not None
    asyncio.run(cache.put(stored.key, CachedAnswer(ANSWER, 0.0), 60))
    found = _look(cache, body, headers)
    assert found is not None and found.state == state
    assert found.metadata().get("cache_entry") is None if state == "bypass" else found.metadata()["cache_entry"]


def test_scopes_name_who_shares_hits() -> None:
    team, key, shared = RouteCache(scope="team"), RouteCache(scope="key"), RouteCache(scope="global")
    assert scope_of(team, _key("k1", "t")) == scope_of(team, _key("k2", "t")) == "team:t"
    assert scope_of(team, _key("k1")) != scope_of(team, _key("k2"))  # keys without a team: their own
    assert scope_of(key, _key("k1", "t")) != scope_of(key, _key("k2", "t"))
    assert scope_of(shared, _key("k1", "t")) == scope_of(shared, _key("k2", "u")) == ""
    assert scope_of(team, _key("x", "x")) != scope_of(key, _key("x", "x"))  # a key named like a team never collides


def test_an_unreadable_cache_is_a_miss_and_uncached_endpoints_are_not_looked_up() -> None:
    looked = _look(_BrokenCache(), BODY)
    assert looked is not None and looked.state == "miss"
    assert _look(MemoryAnswerCache(), {"model": "m", "input": "x"}, endpoint=Endpoint.EMBEDDINGS) is None
    assert asyncio.run(look_up(MemoryAnswerCache(), None, "m", Endpoint.CHAT, _key("k"), {}, BODY)) is None


def test_a_writer_stores_only_finished_answers_within_its_bound() -> None:
    cache = MemoryAnswerCache()
    writer = AnswerWriter.from_metadata({"cache": "miss", "cache_entry": "60.0 2048 chat:abc"})
    assert writer is not None and writer.writes
    asyncio.run(writer.store(cache, {**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": "length"}]},
                             1, 1, 0.0))
    assert asyncio.run(cache.get("chat:abc")) is None
    asyncio.run(writer.store(cache, {**ANSWER, "padding": "x" * 4096}, 1, 1, 0.0))  # past 2048 bytes
    assert asyncio.run(cache.get("chat:abc")) is None
    asyncio.run(writer.store(cache, ANSWER, 3, 4, 0.25))
    stored = asyncio.run(cache.get("chat:abc"))
    assert stored is not None and (stored.body, stored.cost_usd) == (ANSWER, 0.25)
    bypass = AnswerWriter.from_metadata({"cache": "bypass"})
    assert bypass is not None and not bypass.writes and AnswerWriter.from_metadata({}) is None
