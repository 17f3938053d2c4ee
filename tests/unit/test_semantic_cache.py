"""The semantic cache's parts: what must match exactly (the namespace) and what is compared by similarity (the
text), the vector index's threshold, TTL and bounds, two processes sharing entries through a real Redis, the route
stage's lookup through an embeddings endpoint, and every failure being a plain miss."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from ext_proc.auth.virtual_keys import KeyInfo
from ext_proc.cache.embeddings import Embedder
from ext_proc.cache.semantic import SemanticIndex
from ext_proc.cache.semantic_keys import HEAD_CHARS, MAX_TEXT_CHARS, semantic_request
from ext_proc.cache.store import CachedAnswer, MemoryAnswerCache
from ext_proc.cache.vector_index import HNSW_FROM, VectorIndex
from ext_proc.cache.vector_journal import VectorJournal, build_journal
from ext_proc.config.models import Config, RedisSettings, RouteCache, SemanticCache
from ext_proc.demo.openai_server import _words_vector
from ext_proc.stages.endpoints import Endpoint
from ext_proc.stages.response_cache import Lookup, look_up

from ..redis_server import RedisServer

BODY = {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}
SETTINGS = RouteCache(semantic=SemanticCache(embeddings_model="embed", threshold=0.8))
ANSWER = CachedAnswer({"id": "chatcmpl-1", "object": "chat.completion", "choices": []}, 0.0)
_prefixes = itertools.count()


def _ask(text: str, **fields: object) -> dict:
    return {**BODY, "messages": [{"role": "user", "content": text}], **fields}


def _namespace(body: dict, scope: str = "team:a", route: str = "r", client_format: str = "chat") -> str:
    request = semantic_request(route, scope, client_format, body, "embed")
    assert request is not None
    return request.namespace


# -- what is compared -------------------------------------------------------------------------------------------


def test_only_the_prompt_text_varies_within_a_namespace() -> None:
    base = _namespace(BODY)
    assert _namespace(_ask("Tell me the capital of France")) == base
    assert _namespace({**BODY, "stream": True, "user": "u", "metadata": {"a": "b"}}) == base
    for changed in ({**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]}, {**BODY, "max_tokens": 9},
                    {**BODY, "response_format": {"type": "json_object"}}):
        assert _namespace(changed) != base
    assert len({base, _namespace(BODY, scope="team:b"), _namespace(BODY, scope=""), _namespace(BODY, route="s"),
                _namespace(BODY, client_format="messages")}) == 5


def test_tool_results_images_and_tool_calls_must_match_exactly() -> None:
    def with_result(result: str) -> dict:
        return {**BODY, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                    "function": {"name": "w", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": result}]}
    assert _namespace(with_result("20C")) != _namespace(with_result("25C"))

    def with_image(url: str) -> dict:
        return _ask("", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is in this picture?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert _namespace(with_image("https://a/1.png")) != _namespace(with_image("https://a/2.png"))
    request = semantic_request("r", "", "chat", with_image("https://a/1.png"), "embed")
    assert request is not None and request.text == "user: what is in this picture?"


def test_every_client_format_reads_its_system_prompt_and_turns_in_order() -> None:
    messages = semantic_request("r", "", "messages", {"system": [{"type": "text", "text": "Be brief."}],
                                                      "messages": [{"role": "user", "content": "Hi there"}]}, "e")
    responses = semantic_request("r", "", "responses", {"instructions": "Be brief.", "input": "Hi there"}, "e")
    assert messages is not None and responses is not None
    assert messages.text == "system: Be brief.\nuser: Hi there" == responses.text
    assert semantic_request("r", "", "chat", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "e") is None  # nothing to compare


def test_a_long_text_keeps_its_head_and_tail_and_its_middle_must_match_exactly() -> None:
    def long(middle: str) -> dict:
        return _ask("start " * 400 + middle * 10_000 + " end" * 2000)
    one, two = semantic_request("r", "", "chat", long("x"), "e"), semantic_request("r", "", "chat", long("y"), "e")
    assert one is not None and two is not None
    assert len(one.text) <= MAX_TEXT_CHARS + 3 and one.text.startswith("user: start")
    assert one.text[:HEAD_CHARS] == two.text[:HEAD_CHARS] and one.namespace != two.namespace


# -- the index ----------------------------------------------------------------------------------------------------


def _vector(text: str) -> np.ndarray:
    return np.asarray(_words_vector(text, 256), dtype=np.float32)


def test_a_neighbour_counts_only_above_the_threshold() -> None:
    index = VectorIndex()
    index.add("r", "ns", "k1", _vector("what is the capital of france"), time.time(), ttl=60, max_entries=10)
    close = index.search("r", "ns", _vector("tell me what is the capital of france"), ttl=60, threshold=0.8)
    assert [key for key, _ in close] == ["k1"] and 0.8 <= close[0][1] < 1
    assert index.search("r", "ns", _vector("tell me what is the capital of france"), ttl=60, threshold=0.99) == []
    assert index.search("r", "ns", _vector("write a haiku about leaves"), ttl=60, threshold=0.5) == []
    assert index.search("r", "other", _vector("what is the capital of france"), ttl=60, threshold=0.5) == []


def test_an_entry_older_than_the_ttl_is_ignored_and_purged() -> None:
    index = VectorIndex()
    index.add("r", "ns", "old", _vector("capital of france"), time.time() - 61, ttl=60, max_entries=10)
    assert index.search("r", "ns", _vector("capital of france"), ttl=60, threshold=0.5) == []
    assert len(index) == 0


@pytest.mark.parametrize("entries", [10, HNSW_FROM + 50])  # searched exactly, then through HNSW
def test_a_route_keeps_at_most_max_entries_the_oldest_going_first(entries: int) -> None:
    index = VectorIndex()
    now = time.time()
    for i in range(entries + 5):
        index.add("r", f"ns{i % 2}", f"k{i}", _vector(f"prompt number {i} about topic {i * 7}"), now, ttl=60,
                  max_entries=entries)
    assert len(index) == entries
    first, last = entries + 4, 0
    assert index.search("r", f"ns{first % 2}", _vector(f"prompt number {first} about topic {first * 7}"),
                        ttl=60, threshold=0.99)[0][0] == f"k{first}"
    assert index.search("r", "ns0", _vector(f"prompt number {last} about topic {last * 7}"), ttl=60,
                        threshold=0.99) == []


def test_a_key_is_indexed_once_while_fresh() -> None:
    index = VectorIndex()
    for _ in range(3):
        index.add("r", "ns", "k", _vector("same prompt"), time.time(), ttl=60, max_entries=10)
    assert len(index) == 1


# -- the look-up, through an embeddings endpoint --------------------------------------------------------------------


def _embedder(handler: Callable[[httpx.Request], httpx.Response]) -> Embedder:
    return Embedder("http://gateway", transport=httpx.MockTransport(handler))


def _words_endpoint(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        text = orjson.loads(request.content)["input"]
        return httpx.Response(200, content=orjson.dumps({"data": [{"embedding": _words_vector(text, 256)}]}))
    return handler


def _semantic(embedder: Embedder, journal: VectorJournal | None = None) -> SemanticIndex:
    return SemanticIndex(VectorIndex(), journal, {None: embedder}, 2.0)


async def _look(semantic: SemanticIndex | None, cache: MemoryAnswerCache, text: str, team: str = "a",
                settings: RouteCache = SETTINGS, **fields: object) -> Lookup | None:
    key = KeyInfo(id="k-" + team, team=team, models=None, expires_at=None)
    return await look_up(cache, settings, "r", Endpoint.CHAT, key, {"authorization": "Bearer sk-caller"},
                         _ask(text, **fields), semantic)


def test_a_similar_prompt_finds_the_answer_stored_under_the_first_prompts_exact_key() -> None:
    async def scenario() -> None:
        seen: list[httpx.Request] = []
        semantic, cache = _semantic(_embedder(_words_endpoint(seen))), MemoryAnswerCache()
        first = await _look(semantic, cache, "What is the capital of France?")
        assert first is not None and first.state == "miss"
        await cache.put(first.key, ANSWER, 60)  # what the serving attempt does
        hit = await _look(semantic, cache, "Tell me: what is the capital of France?")
        assert hit is not None and hit.state == "hit" and hit.key == first.key and hit.answer == ANSWER
        assert hit.similarity is not None and 0.8 <= hit.similarity < 1
        assert seen[0].headers["authorization"] == "Bearer sk-caller"  # the caller's own credential
        assert orjson.loads(seen[0].content)["model"] == "embed" and seen[0].url.path == "/v1/embeddings"
        for miss in (await _look(semantic, cache, "Write a haiku about autumn"),
                     await _look(semantic, cache, "Tell me: what is the capital of France?", team="b"),
                     await _look(semantic, cache, "Tell me: what is the capital of France?",
                                 tools=[{"type": "function", "function": {"name": "f"}}])):
            assert miss is not None and miss.state == "miss" and miss.similarity is None
    asyncio.run(scenario())


def test_a_prompt_whose_answer_never_arrived_is_a_miss() -> None:
    async def scenario() -> None:
        semantic, cache = _semantic(_embedder(_words_endpoint([]))), MemoryAnswerCache()
        await _look(semantic, cache, "What is the capital of France?")
        again = await _look(semantic, cache, "Tell me: what is the capital of France?")
        assert again is not None and again.state == "miss"
    asyncio.run(scenario())


@pytest.mark.parametrize("failure", [
    lambda request: httpx.Response(503, content=b'{"error": {"message": "down"}}'),
    lambda request: httpx.Response(200, content=b'{"data": []}'),
    lambda request: httpx.Response(200, content=b'{"data": [{"embedding": [0, 0, 0]}]}'),
    lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused")),
])
def test_no_embedding_is_a_plain_miss(failure: Callable[[httpx.Request], httpx.Response]) -> None:
    async def scenario() -> None:
        semantic = _semantic(_embedder(failure))
        lookup = await _look(semantic, MemoryAnswerCache(), "What is the capital of France?")
        assert lookup is not None and lookup.state == "miss" and semantic.failures == 1
    asyncio.run(scenario())


def test_an_embeddings_route_slower_than_the_budget_is_a_miss() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    class Slow(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await slow(request)

    async def scenario() -> None:
        semantic = SemanticIndex(VectorIndex(), None, {None: Embedder("http://gateway", transport=Slow())}, 0.05)
        lookup = await _look(semantic, MemoryAnswerCache(), "What is the capital of France?")
        assert lookup is not None and lookup.state == "miss" and semantic.failures == 1
    asyncio.run(scenario())


def test_the_exact_cache_works_without_the_semantic_one() -> None:
    async def scenario() -> None:
        cache = MemoryAnswerCache()
        first = await _look(None, cache, "What is the capital of France?")
        assert first is not None and first.state == "miss"
        await cache.put(first.key, ANSWER, 60)
        again = await _look(None, cache, "What is the capital of France?")
        assert again is not None and again.state == "hit" and again.similarity is None
    asyncio.run(scenario())


# -- two processes on one Redis -----------------------------------------------------------------------------------


def test_two_processes_share_entries_through_redis(redis_server: RedisServer) -> None:
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgsem{next(_prefixes)}:")

    async def scenario() -> None:
        one = _semantic(_embedder(_words_endpoint([])), journal=build_journal(settings, None))
        two = _semantic(_embedder(_words_endpoint([])), journal=build_journal(settings, None))
        cache = MemoryAnswerCache()  # stands for the shared Redis answer cache
        try:
            first = await _look(one, cache, "What is the capital of France?")
            assert first is not None and first.state == "miss"
            await cache.put(first.key, ANSWER, 60)
            hit = await _look(two, cache, "Tell me: what is the capital of France?")
            assert hit is not None and hit.state == "hit" and hit.key == first.key
            again = await _look(one, cache, "Tell me: what is the capital of France?")
            assert again is not None and again.state == "hit"
            assert len(one.index) == len(two.index) == 1  # a hit adds nothing; reading its own entry back neither
        finally:
            await one.close()
            await two.close()
    asyncio.run(scenario())


def test_redis_down_searches_this_process_s_own_entries() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:1", key_prefix="bgsemdown:")

    async def scenario() -> None:
        semantic = _semantic(_embedder(_words_endpoint([])), journal=build_journal(settings, None))
        cache = MemoryAnswerCache()
        try:
            first = await _look(semantic, cache, "What is the capital of France?")
            assert first is not None and first.state == "miss" and semantic.failures >= 1
            await cache.put(first.key, ANSWER, 60)
            hit = await _look(semantic, cache, "Tell me: what is the capital of France?")
            assert hit is not None and hit.state == "hit"
        finally:
            await semantic.close()
    asyncio.run(scenario())


# -- configuration ---------------------------------------------------------------------------------------------------


def _config(embeddings_model: str) -> dict:
    return {"backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9"}],
            "routes": [{"model": "chat", "backends": [{"backend": "oa", "model": "gpt"}],
                        "cache": {"semantic": {"embeddings_model": embeddings_model}}},
                       {"model": "embed", "aliases": ["embedder"], "backends": [{"backend": "oa", "model": "e"}]}]}


def test_the_embeddings_model_must_be_a_route() -> None:
    for name in ("embed", "embedder"):
        semantic = Config.model_validate(_config(name)).routes[0].cache
        assert semantic is not None and semantic.semantic is not None and semantic.semantic.threshold == 0.95
    with pytest.raises(ValueError, match="unknown embeddings model 'nope'"):
        Config.model_validate(_config("nope"))
    with pytest.raises(ValueError):
        SemanticCache(embeddings_model="embed", threshold=0)


def test_an_expired_entry_is_replaced_when_its_prompt_is_asked_again() -> None:
    index = VectorIndex()
    index.add("r", "ns", "k", _vector("same prompt"), time.time() - 30, ttl=60, max_entries=10)
    index.add("r", "ns", "k", _vector("same prompt"), time.time(), ttl=20, max_entries=10)
    assert index.search("r", "ns", _vector("same prompt"), ttl=20, threshold=0.9) == [("k", pytest.approx(1.0))]
    assert len(index) == 1


def test_loading_the_hnsw_library_leaves_pyarrow_datasets_readable(tmp_path: Path) -> None:
    """usearch's `numkong` loaded before pyarrow makes pyarrow's dataset reads crash the process (segfault): the
    index loads pyarrow first. Run apart, as a process of its own would."""
    script = f"""
from ext_proc.cache.vector_index import _hnsw
_hnsw(4)
from datetime import UTC, datetime
import pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
stamps = pa.array([datetime.now(UTC)] * 2, pa.timestamp("us", tz="UTC"))  # as the request log's rows
table = pa.table({{"timestamp": stamps, "day": ["a", "b"], "cost": [1.5, 2.5]}})
pq.write_to_dataset(table, {str(tmp_path)!r}, partition_cols=["day"])
rows = ds.dataset({str(tmp_path)!r}, format="parquet", partitioning="hive").to_table().to_pylist()
assert len(rows) == 2
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
