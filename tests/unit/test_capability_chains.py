"""Capability-aware chains: a backend that can't serve a request leaves its order, `fields: strict` restores the
400, the fields a translation left out are named in `x-babelgate-dropped-fields`, and a backend model's reasoning
style can be configured."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ext_proc import constants
from ext_proc.auth.virtual_keys import hash_key
from ext_proc.config.chains import KIND_SETS_UP_TO, all_chain_routes, remaining_sets, route_chain_sets
from ext_proc.config.loading import ConfigError, parse_config
from ext_proc.errors import GatewayError
from ext_proc.providers import anthropic, bedrock_converse, for_schema
from ext_proc.runtime.build import compile_runtime
from ext_proc.stages.route import RouteStage
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import CLIENT_KEY, body, drive, headers, runtime, set_headers

CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}",
        "content-type": "application/json"}
HELLO = {"messages": [{"role": "user", "content": "hi"}]}

MIXED = f"""
backends:
  - {{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1", api_key: {{env: BG_UNIT_OPENAI}}}}
  - {{id: ol, schema: openai, preset: ollama, base_url: "http://127.0.0.1:9/v1", api_key: {{env: BG_UNIT_OPENAI}}}}
  - {{id: an, schema: anthropic, base_url: "https://api.anthropic.com", api_key: {{env: BG_UNIT_ANTHROPIC}}}}
  - {{id: an2, schema: anthropic, base_url: "https://api.anthropic.com", api_key: {{env: BG_UNIT_ANTHROPIC}}}}
routes:
  - model: mixed
    backends: [{{backend: oa, model: gpt-4o}}, {{backend: an, model: claude-sonnet-4-5}}]
  - model: strict
    fields: strict
    backends: [{{backend: oa, model: gpt-4o}}, {{backend: an, model: claude-sonnet-4-5}}]
  - model: local-first
    backends: [{{backend: ol, model: llama3}}, {{backend: an, model: claude-sonnet-4-5}}]
  - model: claudes
    backends: [{{backend: an, model: claude-sonnet-4-5}}, {{backend: an2, model: claude-3-5-haiku}}]
  - model: three
    backends: [{{backend: oa, model: gpt-4o}}, {{backend: an, model: claude-sonnet-4-5}},
               {{backend: an2, model: claude-sonnet-4-5}}]
  - model: local-three
    backends: [{{backend: ol, model: llama3}}, {{backend: an, model: claude-sonnet-4-5}},
               {{backend: an2, model: claude-sonnet-4-5}}]
  - model: opus
    backends: [{{backend: an, model: claude-opus-4-7}}]
virtual_keys:
  - {{id: all, hash: "{hash_key(CLIENT_KEY)}"}}
"""


@pytest.fixture
def mixed(monkeypatch: pytest.MonkeyPatch) -> object:
    runtime(monkeypatch)  # the provider secrets
    return compile_runtime(parse_config(MIXED))


def _sent(stage: RouteStage, payload: dict) -> tuple[dict[str, str], dict]:
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    reply = drive(stage, ProcessingRequest(request_body=body(payload))).request_body.response
    return set_headers(reply), (orjson.loads(reply.body_mutation.body) if reply.body_mutation.body else {})


def _refusal(runtime_: object, payload: dict) -> GatewayError:
    stage = RouteStage(runtime_)  # type: ignore[arg-type]
    stage.on_request_headers(headers(CHAT))
    with pytest.raises(GatewayError) as raised:
        asyncio.run(stage.on_request_body(body(payload)))
    return raised.value


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


# --- eligibility ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"n": 2}, {"logprobs": True, "top_logprobs": 2}, {"web_search_options": {}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
     "n": 2},
])
def test_what_only_the_openai_primary_serves_goes_to_it_alone(mixed: object, extra: dict) -> None:
    sent_headers, sent = _sent(RouteStage(mixed), {**HELLO, "model": "mixed", **extra})  # type: ignore[arg-type]
    assert sent_headers[constants.HEADER_CHAIN] == "bg_direct_oa"
    assert {k: sent[k] for k in extra} == extra


def test_a_request_every_backend_serves_keeps_the_whole_chain(mixed: object) -> None:
    sent_headers, _ = _sent(RouteStage(mixed), {**HELLO, "model": "mixed"})  # type: ignore[arg-type]
    assert sent_headers[constants.HEADER_CHAIN] == "bg_chain_oa__an"


def test_a_request_only_the_fallback_serves_goes_straight_to_it(mixed: object) -> None:
    payload = {**HELLO, "model": "local-first", "tools": TOOLS, "tool_choice": "required"}  # Ollama ignores it
    sent_headers, sent = _sent(RouteStage(mixed), payload)  # type: ignore[arg-type]
    assert sent_headers[constants.HEADER_CHAIN] == "bg_direct_an"
    assert sent["tool_choice"] == {"type": "any"}


def test_the_remaining_backends_keep_their_failover(mixed: object) -> None:
    payload = {**HELLO, "model": "local-three", "tools": TOOLS, "tool_choice": "required"}
    sent_headers, _ = _sent(RouteStage(mixed), payload)  # type: ignore[arg-type]
    assert sent_headers[constants.HEADER_CHAIN] == "bg_chain_an__an2"  # Ollama can't force a tool call
    sent_headers, _ = _sent(RouteStage(mixed), {**HELLO, "model": "local-three"})  # type: ignore[arg-type]
    assert sent_headers[constants.HEADER_CHAIN] == "bg_chain_ol__an__an2"


def test_a_strict_route_refuses_what_any_backend_refuses(mixed: object) -> None:
    error = _refusal(mixed, {**HELLO, "model": "strict", "n": 2})
    assert (error.status, error.param) == (400, "n")
    assert error.message.startswith("Backend 'an' (anthropic) of route 'strict' can't serve `n`: ")


def test_a_request_no_backend_serves_names_each_backend_and_why(mixed: object) -> None:
    error = _refusal(mixed, {**HELLO, "model": "claudes", "n": 2, "reasoning_effort": "high"})
    assert error.status == 400
    assert error.message.startswith("No backend of route 'claudes' can serve this request: 'an' (anthropic) can't "
                                    "serve `n`: ")
    assert "; 'an2' (anthropic) can't serve `n`: " in error.message


def test_backends_of_one_kind_are_named_together(mixed: object) -> None:
    error = _refusal(mixed, {**HELLO, "model": "three", "provider_options": "x"})  # no translator takes that
    assert (error.status, error.param) == (400, "provider_options")
    assert "'oa' (openai) can't serve `provider_options`: " in error.message
    assert "; 'an', 'an2' (anthropic) can't serve `provider_options`: " in error.message


# --- chains Envoy is given ------------------------------------------------------------------------------------------

def test_every_union_of_kinds_gets_its_orders() -> None:
    kinds = {"a": 1, "b": 2, "c": 2, "d": 3}
    assert remaining_sets(("a", "b", "c", "d"), kinds) == [
        ("a",), ("b", "c"), ("d",), ("a", "b", "c"), ("a", "d"), ("b", "c", "d")]
    assert remaining_sets(("a", "b"), {"a": 1, "b": 1}) == []


def test_past_the_kind_limit_each_backend_alone_remains() -> None:
    ids = tuple("abcdef")
    assert len(ids) > KIND_SETS_UP_TO
    assert remaining_sets(ids, {b: b for b in ids}) == [(b,) for b in ids]


def test_mixed_routes_render_the_orders_of_what_can_remain(mixed: object) -> None:
    names = {c.name for c in all_chain_routes(mixed.config)}  # type: ignore[attr-defined]
    assert {"bg_chain_oa__an", "bg_chain_an__oa", "bg_direct_oa", "bg_direct_an"} <= names
    route = mixed.config.routes[4]  # type: ignore[attr-defined]
    sets = route_chain_sets(route, {"oa": 1, "an": 2, "an2": 2})
    assert set(sets) == {("oa", "an", "an2"), ("oa",), ("an", "an2")}


def test_a_set_envoy_was_not_given_goes_to_its_first_backend_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime(monkeypatch)
    ids = [f"b{i}" for i in range(6)]
    config = parse_config("backends:\n" + "".join(
        f'  - {{id: {b}, schema: openai, base_url: "http://127.0.0.1:9/v1"}}\n' for b in ids)
        + "routes:\n  - model: wide\n    backends: [" + ", ".join(f"{{backend: {b}, model: m{b}}}" for b in ids)
        + "]\n")
    route = compile_runtime(config, load_secrets=False).routes["wide"]
    assert route.chain_for(["b3", "b1"], ("b1", "b3")).name == "bg_direct_b3"
    assert route.chain_for(["b2"], ("b2",)).name == "bg_direct_b2"


# --- x-babelgate-dropped-fields -------------------------------------------------------------------------------------

def test_table_drops_name_the_dropped_fields_present_with_a_value() -> None:
    translator = for_schema("anthropic")
    payload = {**HELLO, "seed": 1, "store": None, "stream_options": {"include_usage": True}, "metadata": {"a": "b"}}
    assert translator.table_drops(payload) == ["seed", "metadata"]
    assert for_schema("openai").table_drops(payload) == []


def test_claude_names_the_sampling_fields_it_leaves_out() -> None:
    dropped: list[str] = []
    request = anthropic.chat_request({**HELLO, "temperature": 0.5, "top_p": 0.9}, "claude-opus-4-7",
                                     default_max_tokens=100, dropped=dropped)
    assert "temperature" not in request and dropped == ["temperature", "top_p"]
    dropped = []
    anthropic.chat_request({**HELLO, "temperature": 0.5, "top_p": 0.9}, "claude-opus-4-1", default_max_tokens=100,
                           dropped=dropped)
    assert dropped == ["top_p"]


def test_converse_names_an_effort_the_model_has_no_setting_for() -> None:
    dropped: list[str] = []
    bedrock_converse.chat_request({**HELLO, "reasoning_effort": "high"}, "meta.llama3-70b-instruct-v1:0",
                                  default_max_tokens=100, dropped=dropped)
    assert dropped == ["reasoning_effort"]
    dropped = []
    bedrock_converse.chat_request({**HELLO, "reasoning_effort": "none"}, "meta.llama3-70b-instruct-v1:0",
                                  default_max_tokens=100, dropped=dropped)
    assert dropped == []


def test_preset_and_configured_drops_are_named(mixed: object) -> None:
    dropped: list[str] = []
    mixed.backends["ol"].chat_request({**HELLO, "user": "u", "seed": 3}, "llama3", 100, dropped)  # type: ignore
    assert dropped == ["user"]


def test_a_direct_answer_names_the_fields_its_translation_left_out(mixed: object) -> None:
    stage = RouteStage(mixed)  # type: ignore[arg-type]
    _sent(stage, {**HELLO, "model": "opus", "seed": 7, "temperature": 0.2, "presence_penalty": 0.1})
    reply = drive(stage, ProcessingRequest(response_headers=headers({":status": "200",
                                                                     "content-type": "application/json"})))
    tagged = set_headers(reply.response_headers.response)
    assert tagged[constants.RESPONSE_HEADER_DROPPED_FIELDS] == "seed,presence_penalty,temperature"


def test_an_answer_with_nothing_dropped_has_no_header_even_if_the_provider_sent_one(mixed: object) -> None:
    stage = RouteStage(mixed)  # type: ignore[arg-type]
    _sent(stage, {**HELLO, "model": "opus"})
    reply = drive(stage, ProcessingRequest(response_headers=headers({
        ":status": "200", "content-type": "application/json", constants.RESPONSE_HEADER_DROPPED_FIELDS: "forged"})))
    mutation = reply.response_headers.response.header_mutation
    assert constants.RESPONSE_HEADER_DROPPED_FIELDS not in set_headers(reply.response_headers.response)
    assert constants.RESPONSE_HEADER_DROPPED_FIELDS in mutation.remove_headers


# --- reasoning style per backend model ------------------------------------------------------------------------------

REASONING = MIXED.replace("  - model: opus\n    backends: [{backend: an, model: claude-opus-4-7}]",
                          "  - model: opus\n    backends: [{backend: an, model: claude-next, reasoning: {style: "
                          "adaptive}}]\n  - model: plain\n    backends: [{backend: an2, model: claude-next}]")


def test_a_configured_reasoning_style_overrides_the_model_table(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime(monkeypatch)
    configured = compile_runtime(parse_config(REASONING))
    _, sent = _sent(RouteStage(configured), {**HELLO, "model": "opus", "reasoning_effort": "high"})
    assert sent["thinking"] == {"type": "adaptive"} and sent["output_config"] == {"effort": "high"}
    _, sent = _sent(RouteStage(configured), {**HELLO, "model": "plain", "reasoning_effort": "high"})
    assert sent["thinking"]["type"] == "enabled"  # an unknown id is a budget model, as before


def test_reasoning_style_none_drops_an_effort_and_names_it() -> None:
    dropped: list[str] = []
    sent = anthropic.chat_request({**HELLO, "reasoning_effort": "low"}, "claude-sonnet-4-5", default_max_tokens=10,
                                  reasoning="none", dropped=dropped)
    assert "thinking" not in sent and dropped == ["reasoning_effort"]


def test_one_backend_model_can_not_have_two_reasoning_styles() -> None:
    config = REASONING.replace("{backend: an2, model: claude-next}",
                               "{backend: an, model: claude-next, reasoning: {style: budget}}")
    with pytest.raises(ConfigError, match="has reasoning style 'adaptive' in another route"):
        parse_config(config)
