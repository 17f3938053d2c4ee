"""The exact response cache through the real Envoy, driven by the official openai and anthropic SDKs: a repeated
deterministic request is answered by the gateway without the provider (whole, and streamed as the client's own
stream format), per team/key/global scope, until its TTL; clients bypass or refresh it; errors, cut streams and
abandoned streams are never cached; a hit uses no tokens but counts against a `requests` limit; hits are in the
request log and metrics; with Redis two gateway processes share hits."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pyarrow.dataset as ds
import pytest

from ext_proc.launch.processes import free_port

from ..eventually import eventually
from ..redis_server import RedisServer
from .gateways import Gateway, GatewayBuilder
from .support import fault

TEAM_ROUTE = {"scope": "team", "ttl": "300s"}
ADMIN_PRICE = [{"backend": "oa", "model": "gpt-cached", "input": 1.0, "output": 2.0}]


@dataclass
class Cached:
    gateway: Gateway
    workdir: Path
    metrics_port: int


def _build(build: GatewayBuilder) -> None:
    build.backend("oa", build.demo("cache-openai"), outlier_detection=None)
    build.backend("ob", build.demo("cache-second"), outlier_detection=None)
    build.backend("an", build.demo("cache-anthropic", "anthropic"), outlier_detection=None)
    build.route("cached", ("oa", "gpt-cached"), cache=TEAM_ROUTE)
    build.route("chained", ("oa", "gpt-cached"), ("ob", "gpt-second"), cache=TEAM_ROUTE)
    build.route("per-key", ("oa", "gpt-cached"), cache={"scope": "key"})
    build.route("shared", ("oa", "gpt-cached"), cache={"scope": "global"})
    build.route("brief", ("oa", "gpt-cached"), cache={"ttl": "1s"})
    build.route("any", ("oa", "gpt-cached"), cache={"deterministic_only": False})
    build.route("tiny", ("oa", "gpt-cached"), cache={"max_entry_bytes": 1024})
    build.route("claude", ("an", "claude-cached"), cache=TEAM_ROUTE)
    build.route("claude-chain", ("an", "claude-cached"), ("oa", "gpt-cached"), cache=TEAM_ROUTE)
    build.route("uncached", ("oa", "gpt-cached"))
    build.key("a1", team="team-a")
    build.key("a2", team="team-a")
    build.key("b1", team="team-b")
    build.key("counted", limits=[{"window": "hour", "requests": 3}])
    build.key("tokens", limits=[{"window": "hour", "total_tokens": 100_000}])
    build.key("narrow", models=["uncached"])
    build.set(prices=ADMIN_PRICE)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    workdir = tmp_path_factory.mktemp("cache")
    with GatewayBuilder(workdir) as build:
        _build(build)
        metrics_port = free_port()
        build.set(telemetry={"request_log": {"destination": str(workdir / "requests"), "flush_seconds": "200ms"},
                             "metrics": {"prometheus_port": metrics_port}})
        yield Cached(build.start(), workdir, metrics_port)


def _ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _seen(gateway: Gateway, handle: str, text: str) -> int:
    """How many requests the provider got with `text` in them."""
    return sum(1 for request in gateway.provider_requests(handle) if text in str(request))


def _chat(gateway: Gateway, key: str, model: str, text: str, **options: object) -> tuple[object, httpx.Headers]:
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model=model, messages=_ask(text), temperature=0, **options)
    return raw.parse(), raw.headers


def test_a_repeated_request_is_answered_from_the_cache(cached: Cached) -> None:
    gateway = cached.gateway
    first, headers = _chat(gateway, "a1", "cached", "repeat me")
    assert headers["x-babelgate-cache"] == "miss" and _seen(gateway, "cache-openai", "repeat me") == 1
    second, headers = _chat(gateway, "a1", "cached", "repeat me")
    assert headers["x-babelgate-cache"] == "hit" and int(headers["age"]) >= 0
    assert _seen(gateway, "cache-openai", "repeat me") == 1  # the provider saw one request
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.total_tokens == first.usage.total_tokens
    assert second.id != first.id  # ids stay unique


def test_a_chain_routes_answer_is_cached_whichever_backend_served_it(cached: Cached) -> None:
    gateway = cached.gateway
    _, headers = _chat(gateway, "a1", "chained", "chain me", extra_headers=fault("cache-openai:503"))
    assert headers["x-babelgate-cache"] == "miss" and headers["x-babelgate-backend"] == "ob"
    answer, headers = _chat(gateway, "a1", "chained", "chain me")
    assert headers["x-babelgate-cache"] == "hit" and "cache-second" in answer.choices[0].message.content
    assert _seen(gateway, "cache-second", "chain me") == 1


def test_a_streamed_answer_is_replayed_as_a_stream(cached: Cached) -> None:
    gateway = cached.gateway
    client = gateway.client("a1")
    live = list(client.chat.completions.create(model="cached", messages=_ask("stream me"), temperature=0,
                                               stream=True, stream_options={"include_usage": True}))
    with client.chat.completions.with_streaming_response.create(
            model="cached", messages=_ask("stream me"), temperature=0, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-babelgate-cache"] == "hit"
        replayed = list(response.parse())
    assert _seen(gateway, "cache-openai", "stream me") == 1

    def text(chunks: list) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text(replayed) == text(live) and text(live)
    assert replayed[-1].usage is not None and replayed[-1].usage.total_tokens == live[-1].usage.total_tokens
    assert [c.choices[0].finish_reason for c in replayed if c.choices][-1] == "stop"
    whole, headers = _chat(gateway, "a1", "cached", "stream me")  # the assembled stream serves a whole answer too
    assert headers["x-babelgate-cache"] == "hit" and whole.choices[0].message.content == text(live)


def test_tool_calls_survive_the_round_trip(cached: Cached) -> None:
    gateway = cached.gateway
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    live = list(gateway.client("a1").chat.completions.create(
        model="cached", messages=_ask("weather in Paris, use the tool"), temperature=0, tools=tools, stream=True))
    replayed, headers = _chat(gateway, "a1", "cached", "weather in Paris, use the tool", tools=tools)
    assert headers["x-babelgate-cache"] == "hit"
    call = replayed.choices[0].message.tool_calls[0]
    arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in live
                        if c.choices and c.choices[0].delta.tool_calls)
    assert call.function.name == "lookup" and call.function.arguments == arguments
    assert replayed.choices[0].finish_reason == "tool_calls"


def test_team_scope_shares_within_the_team_only(cached: Cached) -> None:
    gateway = cached.gateway
    _chat(gateway, "a1", "cached", "team scoped")
    assert _chat(gateway, "a2", "cached", "team scoped")[1]["x-babelgate-cache"] == "hit"
    assert _chat(gateway, "b1", "cached", "team scoped")[1]["x-babelgate-cache"] == "miss"
    assert _seen(gateway, "cache-openai", "team scoped") == 2


def test_a_cached_answer_is_never_served_past_a_keys_allow_list(cached: Cached) -> None:
    gateway = cached.gateway
    _chat(gateway, "a1", "shared", "for everyone allowed")  # a global entry now exists
    for spoofed in ({}, {"x-babelgate-cache": "hit"}):
        with pytest.raises(openai.PermissionDeniedError):
            _chat(gateway, "narrow", "shared", "for everyone allowed", extra_headers=spoofed)


def test_key_and_global_scopes(cached: Cached) -> None:
    gateway = cached.gateway
    _chat(gateway, "a1", "per-key", "key scoped")
    assert _chat(gateway, "a2", "per-key", "key scoped")[1]["x-babelgate-cache"] == "miss"
    assert _chat(gateway, "a2", "per-key", "key scoped")[1]["x-babelgate-cache"] == "hit"
    _chat(gateway, "a1", "shared", "global scoped")
    assert _chat(gateway, "b1", "shared", "global scoped")[1]["x-babelgate-cache"] == "hit"


def test_an_entry_expires_with_its_ttl(cached: Cached) -> None:
    gateway = cached.gateway
    _chat(gateway, "a1", "brief", "short lived")
    eventually(lambda: _chat(gateway, "a1", "brief", "short lived")[1]["x-babelgate-cache"] == "miss",
               timeout=30, what="the entry to expire")
    assert _seen(gateway, "cache-openai", "short lived") >= 2


def test_clients_bypass_or_refresh_the_cache(cached: Cached) -> None:
    gateway = cached.gateway
    _chat(gateway, "a1", "cached", "steered")
    no_store = _chat(gateway, "a1", "cached", "steered", extra_headers={"cache-control": "no-store"})[1]
    own = _chat(gateway, "a1", "cached", "steered", extra_headers={"x-babelgate-cache": "bypass"})[1]
    assert no_store["x-babelgate-cache"] == own["x-babelgate-cache"] == "bypass"
    assert _seen(gateway, "cache-openai", "steered") == 3
    refreshed = _chat(gateway, "a1", "cached", "steered", extra_headers={"cache-control": "no-cache"})[1]
    assert refreshed["x-babelgate-cache"] == "miss" and _seen(gateway, "cache-openai", "steered") == 4
    _, headers = _chat(gateway, "a1", "cached", "steered")
    assert headers["x-babelgate-cache"] == "hit" and int(headers["age"]) <= 60


def test_requests_that_may_vary_are_not_cached(cached: Cached) -> None:
    gateway = cached.gateway
    client = gateway.client("a1")
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="cached", messages=_ask("creative"),
                                                               temperature=0.9)
        assert raw.headers["x-babelgate-cache"] == "bypass"
    raw = client.chat.completions.with_raw_response.create(model="cached", messages=_ask("creative"), n=2,
                                                           temperature=0)
    assert raw.headers["x-babelgate-cache"] == "bypass"
    assert _seen(gateway, "cache-openai", "creative") == 3
    _chat(gateway, "a1", "any", "anything goes")  # deterministic_only: false
    raw = client.chat.completions.with_raw_response.create(model="any", messages=_ask("anything goes"),
                                                           temperature=0.9)
    assert raw.headers["x-babelgate-cache"] == "miss"  # temperature is part of the key
    raw = client.chat.completions.with_raw_response.create(model="any", messages=_ask("anything goes"),
                                                           temperature=0.9)
    assert raw.headers["x-babelgate-cache"] == "hit"
    assert "x-babelgate-cache" not in _chat(gateway, "a1", "uncached", "no cache here")[1]


def test_errors_are_never_cached(cached: Cached) -> None:
    gateway = cached.gateway
    with pytest.raises(openai.InternalServerError):
        _chat(gateway, "a1", "cached", "failing once", extra_headers=fault("cache-openai:500"))
    assert _chat(gateway, "a1", "cached", "failing once")[1]["x-babelgate-cache"] == "miss"
    assert _chat(gateway, "a1", "cached", "failing once")[1]["x-babelgate-cache"] == "hit"


def test_cut_and_abandoned_streams_are_never_cached(cached: Cached) -> None:
    gateway = cached.gateway
    client = gateway.client("a1")
    with pytest.raises(openai.APIError):  # the provider drops the connection after two events
        list(client.chat.completions.create(model="cached", messages=_ask("cut short"), temperature=0, stream=True,
                                            extra_headers=fault("cache-openai:midstream=2")))
    assert _chat(gateway, "a1", "cached", "cut short")[1]["x-babelgate-cache"] == "miss"
    stream = client.chat.completions.create(model="cached", messages=_ask("walked away"), temperature=0,
                                            stream=True, extra_headers=fault("cache-openai:slow=300"))
    next(iter(stream))
    stream.close()  # the client leaves after the first chunk
    eventually(lambda: _seen(gateway, "cache-openai", "walked away") == 1, what="the provider got the request")
    assert _chat(gateway, "a1", "cached", "walked away")[1]["x-babelgate-cache"] == "miss"


def test_answers_past_the_entry_size_are_not_cached(cached: Cached) -> None:
    gateway = cached.gateway
    long_prompt = "big answer " + "words " * 50
    verbose = fault("cache-openai:verbose")
    _chat(gateway, "a1", "tiny", long_prompt, max_tokens=400, extra_headers=verbose)
    assert _chat(gateway, "a1", "tiny", long_prompt, max_tokens=400)[1]["x-babelgate-cache"] == "miss"


def test_a_hit_counts_against_a_requests_limit_but_uses_no_tokens(cached: Cached) -> None:
    gateway = cached.gateway
    _, miss = _chat(gateway, "counted", "cached", "counted requests")
    _, hit = _chat(gateway, "counted", "cached", "counted requests")
    assert hit["x-babelgate-cache"] == "hit"
    assert int(hit["x-ratelimit-remaining-requests"]) == int(miss["x-ratelimit-remaining-requests"]) - 1
    _chat(gateway, "counted", "cached", "counted requests")
    with pytest.raises(openai.RateLimitError):
        _chat(gateway, "counted", "cached", "counted requests")
    answer, miss = _chat(gateway, "tokens", "cached", "counted tokens")
    for _ in range(5):
        _, hit = _chat(gateway, "tokens", "cached", "counted tokens")
        assert hit["x-babelgate-cache"] == "hit" and "x-ratelimit-remaining-tokens" not in hit
    _, bypass = _chat(gateway, "tokens", "cached", "counted tokens", extra_headers={"x-babelgate-cache": "bypass"})
    # the same reservation as the miss's, less what the miss really used: the five hits used nothing
    assert int(bypass["x-ratelimit-remaining-tokens"]) == (int(miss["x-ratelimit-remaining-tokens"])
                                                           - answer.usage.total_tokens)


def test_anthropic_clients_get_their_own_format_back(cached: Cached) -> None:
    gateway = cached.gateway
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.keys["a1"], max_retries=0)
    for model in ("claude", "claude-chain"):  # passed through, and translated (the chain's OpenAI backend)
        text = f"anthropic {model}"
        # this SDK has no sampling parameters any more (Claude models dropped them): the body still may
        options = {"model": model, "max_tokens": 64, "messages": _ask(text), "extra_body": {"temperature": 0}}
        if model == "claude-chain":
            options["extra_headers"] = fault("cache-anthropic:503")
        first = client.messages.with_raw_response.create(**options)
        assert first.headers["x-babelgate-cache"] == "miss"
        options.pop("extra_headers", None)
        second = client.messages.with_raw_response.create(**options)
        assert second.headers["x-babelgate-cache"] == "hit"
        assert second.parse().content[0].text == first.parse().content[0].text
        assert second.parse().id != first.parse().id
        with client.messages.stream(**options) as stream:
            streamed = stream.get_final_message()
        assert streamed.content[0].text == first.parse().content[0].text
        assert streamed.usage.output_tokens == first.parse().usage.output_tokens
        assert streamed.stop_reason == first.parse().stop_reason
    live_text = "anthropic streamed first"
    with client.messages.stream(model="claude", max_tokens=64, messages=_ask(live_text),
                                extra_body={"temperature": 0}) as stream:
        live = stream.get_final_message()
    whole = client.messages.with_raw_response.create(model="claude", max_tokens=64, messages=_ask(live_text),
                                                     extra_body={"temperature": 0})
    assert whole.headers["x-babelgate-cache"] == "hit"
    assert [b.text for b in whole.parse().content] == [b.text for b in live.content]
    assert _seen(gateway, "cache-anthropic", live_text) == 1


def test_responses_clients_get_a_new_response_that_echoes_their_request(cached: Cached) -> None:
    gateway = cached.gateway
    client = gateway.client("a1")
    first = client.responses.with_raw_response.create(model="cached", input="responses text", temperature=0,
                                                      metadata={"who": "first"})
    assert first.headers["x-babelgate-cache"] == "miss"
    second = client.responses.with_raw_response.create(model="cached", input="responses text", temperature=0,
                                                       metadata={"who": "second"})
    assert second.headers["x-babelgate-cache"] == "hit"
    one, two = first.parse(), second.parse()
    assert two.output_text == one.output_text and two.id != one.id
    assert two.metadata == {"who": "second"}  # this caller's own fields, never the first caller's
    events = list(client.responses.create(model="cached", input="responses text", temperature=0, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output_text == one.output_text
    assert _seen(gateway, "cache-openai", "responses text") == 1
    follow = client.responses.create(model="cached", input="and then?", previous_response_id=two.id)
    assert follow.output_text  # the hit was stored like any Response
    conversation = str(gateway.last_request("cache-openai"))
    assert "and then?" in conversation and one.output_text in conversation


def test_hits_are_logged_and_counted_with_the_saved_cost(cached: Cached) -> None:
    gateway = cached.gateway
    _chat(gateway, "a1", "cached", "logged")
    _chat(gateway, "a1", "cached", "logged")

    def scraped() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{cached.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()
    eventually(lambda: 'result="hit"' in scraped(), what="the hit in the metrics")
    assert "babelgate_cache_saved_cost_USD_total{" in scraped()

    def rows() -> list[dict]:
        if not (cached.workdir / "requests").exists():
            return []
        table = ds.dataset(cached.workdir / "requests", format="parquet", partitioning="hive").to_table()
        return [row for row in table.to_pylist() if row["route"] == "cached"]
    logged = eventually(lambda: (found := rows()) and any(row["cache"] == "hit" for row in found) and found,
                        timeout=30, what="a hit row")
    hit = next(row for row in logged if row["cache"] == "hit")
    assert hit["status"] == 200 and hit["backend"] is None and hit["input_tokens"] == 0
    assert hit["cache_saved_usd"] > 0
    assert any(row["cache"] == "miss" for row in logged)


# -- Redis: every process and replica shares hits ------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    workdir = tmp_path_factory.mktemp("cache-redis")
    server = RedisServer(workdir / "redis")
    server.start()
    for name in ("one", "two"):
        (workdir / name).mkdir()
    try:
        with GatewayBuilder(workdir / "one") as first, GatewayBuilder(workdir / "two") as second:
            gateways = []
            for build in (first, second):
                provider = build.demo("redis-openai", name="shared-openai")
                build.backend("oa", provider, outlier_detection=None)
                build.route("cached", ("oa", "gpt-cached"), cache={"scope": "global"})
                build.key("k", "bg-cache-redis-shared-key-0123456789")
                build.redis(server)
                gateways.append(build.start())
            yield gateways[0], gateways[1]
    finally:
        server.stop()


def test_gateways_on_one_redis_share_hits(redis_pair: tuple[Gateway, Gateway]) -> None:
    one, two = redis_pair
    first, headers = _chat(one, "k", "cached", "shared through redis")
    assert headers["x-babelgate-cache"] == "miss"
    second, headers = _chat(two, "k", "cached", "shared through redis")
    assert headers["x-babelgate-cache"] == "hit"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert _seen(two, "redis-openai", "shared through redis") == 0


def test_answers_that_break_the_requested_schema_are_never_cached(cached: Cached) -> None:
    gateway = cached.gateway
    schema = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}}
    for stream in (False, True):
        text = f"name a city, streamed={stream}"
        with pytest.raises(openai.APIError):
            answer = _chat(gateway, "a1", "cached", text, response_format=schema, stream=stream,
                           extra_headers=fault("cache-openai:off-schema"))[0]
            list(answer) if stream else None  # type: ignore[call-overload]
        assert _chat(gateway, "a1", "cached", text, response_format=schema)[1]["x-babelgate-cache"] == "miss"
        assert _chat(gateway, "a1", "cached", text, response_format=schema)[1]["x-babelgate-cache"] == "hit"
