"""OpenAI <-> Anthropic: what only the Anthropic translation does.

The golden pairs in tests/fixtures/anthropic/ (requests validated against the `anthropic` SDK's types, answers,
streams, field rules, stop reasons, errors) are checked by tests/unit/test_goldens.py; here are Anthropic's own
mappings: temperature range, extended thinking and its budget, hoisted system prompts, alternating turns, the tool
calls that must survive a round trip, what each Claude model takes (thinking style, effort levels, sampling fields,
native structured output), the forced answer tool, signed thinking blocks both ways, documents and Anthropic tools.
"""

from __future__ import annotations

import itertools
import json

import pytest

from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic, bedrock_anthropic, vertex_anthropic
from ext_proc.providers.common import OPTION_NAMESPACES
from ext_proc.providers.translator import Translator
from tests.unit.goldens import (
    ANTHROPIC,
    BASE_BODY,
    BEDROCK_ANTHROPIC,
    CREATED,
    DEFAULT_MAX_TOKENS,
    VERTEX_ANTHROPIC,
    Golden,
    assert_valid_anthropic_request,
)
from tests.unit.provider_checks import streamed_text, streamed_tool_calls

MODEL = ANTHROPIC.model
_load, _translate = ANTHROPIC.fixtures.load, ANTHROPIC.translate


def test_tool_choice_is_left_out_without_tools() -> None:
    assert "tool_choice" not in _translate({**BASE_BODY, "tool_choice": "none", "parallel_tool_calls": False})


@pytest.mark.parametrize(("temperature", "expected"), [(0, 0.0), (0.7, 0.7), (1, 1.0), (1.5, 1.0), (2, 1.0)])
def test_temperature_is_clamped_to_anthropic_range(temperature: float, expected: float) -> None:
    assert _translate({**BASE_BODY, "temperature": temperature})["temperature"] == expected


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high"])
def test_temperature_is_dropped_when_thinking_is_on(effort: str) -> None:
    translated = _translate({**BASE_BODY, "temperature": 0.2, "reasoning_effort": effort})
    assert "temperature" not in translated
    assert translated["thinking"]["type"] == "enabled"


@pytest.mark.parametrize(("effort", "budget"), [("minimal", 1024), ("low", 1024), ("medium", 8192), ("high", 24576)])
@pytest.mark.parametrize("max_tokens", [None, 1, 1024, 30000])
def test_max_tokens_stays_above_the_thinking_budget(effort: str, budget: int, max_tokens: int | None) -> None:
    translated = _translate({**BASE_BODY, "reasoning_effort": effort, "max_completion_tokens": max_tokens})
    assert translated["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert translated["max_tokens"] > budget
    requested = max_tokens or DEFAULT_MAX_TOKENS
    assert translated["max_tokens"] == (requested if requested > budget else requested + budget)


def test_max_completion_tokens_wins_over_max_tokens_and_default_applies() -> None:
    assert _translate({**BASE_BODY, "max_tokens": 10, "max_completion_tokens": 20})["max_tokens"] == 20
    assert _translate({**BASE_BODY, "max_tokens": 10})["max_tokens"] == 10
    assert _translate(BASE_BODY)["max_tokens"] == DEFAULT_MAX_TOKENS


def test_system_messages_are_hoisted_in_order() -> None:
    translated = _translate({**BASE_BODY, "messages": [
        {"role": "user", "content": "a"}, {"role": "system", "content": "one"},
        {"role": "assistant", "content": "b"}, {"role": "developer", "content": "two"},
        {"role": "user", "content": "c"}]})
    assert translated["system"] == "one\n\ntwo"
    assert [turn["role"] for turn in translated["messages"]] == ["user", "assistant", "user"]


def test_consecutive_tool_results_share_one_user_turn_in_order() -> None:
    translated = _translate(_load("request_tool_results_round_trip.openai.json"))
    results = [block["tool_use_id"] for block in translated["messages"][2]["content"]
               if block["type"] == "tool_result"]
    assert results == ["call_paris", "call_oslo"]
    roles = [turn["role"] for turn in translated["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "turns must alternate"


def test_wire_constants() -> None:
    assert anthropic.SCHEMA == "anthropic"
    assert anthropic.chat_path(MODEL, True) == anthropic.chat_path(MODEL, False) == "/v1/messages"
    assert anthropic.API_VERSION == "2023-06-01"


def test_tool_call_ids_and_arguments_survive_a_round_trip() -> None:
    """Anthropic tool_use -> OpenAI tool_calls -> the client's next request -> the same tool_use blocks."""
    answer = _load("response_text_and_tool_calls.anthropic.json")
    message = anthropic.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]
    follow_up = {**BASE_BODY, "messages": [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
        *({"role": "tool", "tool_call_id": call["id"], "content": "ok"} for call in message["tool_calls"])]}
    translated = _translate(follow_up)
    assert_valid_anthropic_request(translated)
    assert translated["messages"][1]["content"] == answer["content"]
    assert [block["tool_use_id"] for block in translated["messages"][2]["content"]] == [
        block["id"] for block in answer["content"] if block["type"] == "tool_use"]


def test_tool_call_arguments_stream_in_fragments() -> None:
    _, chunks = ANTHROPIC.run_stream("tool_calls", include_usage=True)
    calls = streamed_tool_calls(chunks)
    assert sorted(calls) == [0, 1, 2]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"city": "Paris", "unit": "c"}),
        ("toolu_01Ks9WBz3mQpHc8ZyLdVn2Ra", "get_weather", {"city": "Oslo"}),
        ("toolu_01Hn4PqRt7Vw2Xy9Za3Bc5De", "get_time", {}),
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_text_matches_the_non_streamed_answer_shape() -> None:
    _, chunks = ANTHROPIC.run_stream("text", include_usage=False)
    assert streamed_text(chunks) == "Hello, world!"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {chunk["id"] for chunk in chunks} == {"msg_01StreamText"}


# --- what each Claude model accepts --------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "thinking", "efforts"), [
    ("claude-3-5-haiku-20241022", anthropic.NO_THINKING, ()),
    ("claude-3-7-sonnet-20250219", anthropic.BUDGET, ()),
    ("claude-sonnet-4-20250514", anthropic.BUDGET, ()),
    ("claude-sonnet-4-5@20250929", anthropic.BUDGET, ()),
    ("us.anthropic.claude-haiku-4-5-20251001-v1:0", anthropic.BUDGET, ()),
    ("claude-opus-4-6", anthropic.ADAPTIVE, ("low", "medium", "high", "max")),
    ("claude-sonnet-4-6@default", anthropic.ADAPTIVE, ("low", "medium", "high", "max")),
    ("claude-mythos-preview", anthropic.ADAPTIVE, ("low", "medium", "high", "max")),
    ("anthropic.claude-opus-4-7-v1:0", anthropic.ADAPTIVE, ("low", "medium", "high", "xhigh", "max")),
    ("claude-opus-5-5", anthropic.ADAPTIVE, ("low", "medium", "high", "xhigh", "max")),
    ("arn:aws:bedrock:us-east-1:123:application-inference-profile/abc", anthropic.BUDGET, ()),
])
def test_capabilities_are_read_from_every_claude_naming_scheme(model: str, thinking: str,
                                                               efforts: tuple[str, ...]) -> None:
    found = anthropic.capabilities(model)
    assert (found.thinking, found.efforts) == (thinking, efforts)


def _for(model: str, **fields: object) -> dict:
    request = anthropic.chat_request({**BASE_BODY, **fields}, model, default_max_tokens=DEFAULT_MAX_TOKENS)
    assert_valid_anthropic_request(request)
    return request


@pytest.mark.parametrize(("model", "effort", "thinking", "output_effort"), [
    ("claude-sonnet-4-5", "xhigh", {"type": "enabled", "budget_tokens": 24576}, None),
    ("claude-sonnet-4-5", "max", {"type": "enabled", "budget_tokens": 24576}, None),
    ("claude-opus-4-6", "minimal", {"type": "adaptive"}, "low"),
    ("claude-opus-4-6", "medium", {"type": "adaptive"}, "medium"),
    ("claude-opus-4-6", "xhigh", {"type": "adaptive"}, "high"),  # 4.6 has no xhigh: the level below it
    ("claude-opus-4-6", "max", {"type": "adaptive"}, "max"),
    ("claude-opus-4-7", "xhigh", {"type": "adaptive"}, "xhigh"),
    ("claude-opus-4-7", "max", {"type": "adaptive"}, "max"),
    ("claude-opus-4-7", "none", {"type": "disabled"}, None),
    ("claude-3-5-haiku-20241022", "none", {"type": "disabled"}, None),
])
def test_reasoning_effort_maps_to_what_the_model_takes(model: str, effort: str, thinking: dict,
                                                       output_effort: str | None) -> None:
    request = _for(model, reasoning_effort=effort)
    assert request["thinking"] == thinking
    assert (request.get("output_config") or {}).get("effort") == output_effort


def test_adaptive_thinking_leaves_max_tokens_alone() -> None:
    assert _for("claude-opus-4-7", reasoning_effort="high", max_completion_tokens=100)["max_tokens"] == 100


def test_reasoning_effort_on_a_model_without_thinking_is_dropped_and_named() -> None:
    """It only steers: the model answers all the same, so the backend stays eligible and the client is told."""
    dropped: list[str] = []
    request = anthropic.chat_request({**BASE_BODY, "reasoning_effort": "low"}, "claude-3-5-haiku-20241022",
                                     default_max_tokens=DEFAULT_MAX_TOKENS, dropped=dropped)
    assert_valid_anthropic_request(request)
    assert "thinking" not in request and "output_config" not in request
    assert dropped == ["reasoning_effort"]


@pytest.mark.parametrize(("model", "sent"), [
    ("claude-sonnet-4-20250514", {"temperature": 0.5, "top_p": 0.9}),  # before Opus 4.1 the pair is accepted
    ("claude-opus-4-1-20250805", {"temperature": 0.5}),  # "cannot both be specified for this model"
    ("claude-sonnet-4-5-20250929", {"temperature": 0.5}),
    ("claude-opus-4-6", {"temperature": 0.5}),
    ("claude-opus-4-7", {}),  # "`temperature` is deprecated for this model"
])
def test_temperature_and_top_p_go_only_where_the_model_takes_them(model: str, sent: dict) -> None:
    request = _for(model, temperature=0.5, top_p=0.9)
    assert {key: request[key] for key in ("temperature", "top_p") if key in request} == sent


def test_top_p_alone_still_goes_to_models_that_refuse_the_pair() -> None:
    assert _for("claude-sonnet-4-5", top_p=0.9)["top_p"] == 0.9


# --- structured output ----------------------------------------------------------------------------------------------

_SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
_JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "thing", "schema": _SCHEMA, "strict": True}}


@pytest.mark.parametrize("model", ["claude-opus-4-1-20250805", "claude-haiku-4-5", "claude-opus-4-7"])
def test_json_schema_is_native_structured_output_where_the_model_has_it(model: str) -> None:
    request = _for(model, response_format=_JSON_SCHEMA, reasoning_effort="low")
    assert request["output_config"]["format"] == {"type": "json_schema", "schema": _SCHEMA}
    assert "tools" not in request


@pytest.mark.parametrize("model", ["claude-sonnet-4-20250514", "claude-3-5-haiku-20241022"])
def test_json_schema_is_a_forced_answer_tool_on_older_models(model: str) -> None:
    request = _for(model, response_format=_JSON_SCHEMA)
    assert request["tools"] == [{"name": anthropic.ANSWER_TOOL, "description": "Give the answer as this tool's input.",
                                 "input_schema": _SCHEMA}]
    assert request["tool_choice"] == {"type": "tool", "name": anthropic.ANSWER_TOOL}
    assert "output_config" not in request


def test_answer_tool_fallback_is_refused_beside_the_clients_tools() -> None:
    with pytest.raises(BadRequest) as caught:
        _for("claude-sonnet-4-20250514", response_format={"type": "json_object"},
             tools=[{"type": "function", "function": {"name": "f"}}])
    assert caught.value.param == "response_format"


def test_answer_tool_call_is_the_answer_not_a_tool_call() -> None:
    answer = _load("response_answer_tool.anthropic.json")
    completion = anthropic.chat_response(answer, MODEL, CREATED)
    message = completion["choices"][0]["message"]
    assert json.loads(message["content"]) == answer["content"][0]["input"]
    assert "tool_calls" not in message
    assert completion["choices"][0]["finish_reason"] == "stop"
    streamed = streamed_text(ANTHROPIC.run_stream("answer_tool", False)[1])
    assert json.loads(streamed) == answer["content"][0]["input"]


# --- thinking round trip --------------------------------------------------------------------------------------------


def test_signed_thinking_blocks_come_back_first_in_their_turn() -> None:
    """An answer's thinking_blocks, sent back on the assistant message, reach Anthropic unchanged and first."""
    answer = _load("response_thinking.anthropic.json")
    message = anthropic.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]
    request = _for(MODEL, reasoning_effort="low", messages=[
        {"role": "user", "content": "Are there infinitely many primes?"}, message, {"role": "user", "content": "Why?"}])
    thinking = [block for block in answer["content"] if block["type"] in ("thinking", "redacted_thinking")]
    assert request["messages"][1]["content"][:len(thinking)] == thinking


def test_streamed_thinking_blocks_carry_the_whole_signature() -> None:
    chunks = ANTHROPIC.run_stream("thinking_before_tool_call", False)[1]
    blocks = [block for chunk in chunks for block in chunk["choices"][0]["delta"].get("thinking_blocks", ())]
    assert blocks == [{"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
                      {"type": "thinking", "thinking": "Paris weather: call the tool.",
                       "signature": "EqQBCgIYAhIMsigPart2=="}]


@pytest.mark.parametrize("translator", [bedrock_anthropic.BedrockAnthropicTranslator(),
                                        vertex_anthropic.VertexAnthropicTranslator()])
def test_claude_on_bedrock_and_vertex_get_the_thinking_blocks_too(translator: Translator) -> None:
    body = _load("request_thinking_blocks_replayed.openai.json")
    expected = _load("request_thinking_blocks_replayed.anthropic.json")["messages"]
    assert translator.chat_request(body, MODEL, default_max_tokens=DEFAULT_MAX_TOKENS)["messages"] == expected


# --- documents and Anthropic tools ----------------------------------------------------------------------------------


def test_bare_base64_named_as_a_pdf_is_a_pdf_document() -> None:
    request = _for(MODEL, messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "JVBERi0xLjQK"}}]}])
    assert request["messages"][0]["content"] == [{"type": "document", "title": "a.pdf", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}]


def test_anthropic_tool_without_a_name_is_refused_naming_it() -> None:
    with pytest.raises(BadRequest) as caught:
        _for(MODEL, tools=[{"type": "function", "function": {"name": "f"}},
                           {"type": "anthropic", "anthropic": {"type": "bash_20250124"}}])
    assert caught.value.param == "tools[1].anthropic"


# --- provider_options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("golden", [ANTHROPIC, VERTEX_ANTHROPIC, BEDROCK_ANTHROPIC], ids=str)
def test_provider_options_of_its_own_schema_only_are_merged(golden: Golden) -> None:
    others = {name: {"frobnicate": 1} for name in OPTION_NAMESPACES if name != golden.name}
    plain = golden.translate(BASE_BODY)
    assert golden.translate({**BASE_BODY, "provider_options": others}) == plain
    own = {"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}],
           "output_config": {"effort": "low"}}
    merged = golden.translate({**BASE_BODY, "provider_options": {**others, golden.name: own}})
    assert merged == {**plain, **own}


@pytest.mark.parametrize("golden", [ANTHROPIC, VERTEX_ANTHROPIC, BEDROCK_ANTHROPIC], ids=str)
def test_provider_options_may_not_set_the_output_limit(golden: Golden) -> None:
    with pytest.raises(BadRequest) as caught:
        golden.translate({**BASE_BODY, "provider_options": {golden.name: {"max_tokens": 100_000}}})
    assert caught.value.param == "provider_options"


def test_unsigned_thinking_from_another_model_is_left_out() -> None:
    request = _for(MODEL, messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "thinking_blocks": [
            {"type": "thinking", "thinking": "an OpenAI-format backend's reasoning", "signature": ""}]},
        {"role": "user", "content": "bye"}])
    assert request["messages"][1]["content"] == "hello"


_URL_DOCUMENT = {"type": "document", "title": "Annual report",
                 "source": {"type": "url", "url": "https://example.com/report.pdf"}}


def test_url_document_from_the_anthropic_client_format_is_passed_on() -> None:
    request = _for(MODEL, messages=[{"role": "user", "content": [{"type": "anthropic", "anthropic": _URL_DOCUMENT},
                                                                 {"type": "text", "text": "Conclusion?"}]}])
    assert request["messages"][0]["content"][0] == _URL_DOCUMENT


def test_bedrock_refuses_a_url_document_it_would_not_fetch() -> None:
    body = {**BASE_BODY, "messages": [{"role": "user", "content": [{"type": "anthropic", "anthropic": _URL_DOCUMENT}]}]}
    with pytest.raises(BadRequest) as caught:
        bedrock_anthropic.chat_request(body, BEDROCK_ANTHROPIC.model, default_max_tokens=DEFAULT_MAX_TOKENS)
    assert caught.value.param == "messages[0].content[0]"


def test_anthropic_part_other_than_a_document_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        _for(MODEL, messages=[{"role": "user", "content": [{"type": "anthropic", "anthropic": {"type": "text"}}]}])
    assert caught.value.param == "messages[0].content[0].anthropic"
