"""OpenAI <-> Anthropic translation, checked against golden fixture pairs in tests/fixtures/anthropic/.

Every Anthropic request the translator produces is validated against the installed `anthropic` SDK's request types
(with unknown keys refused, which pydantic alone would ignore), and every OpenAI answer or chunk against the `openai`
SDK's response models.
"""

from __future__ import annotations

import functools
import itertools
import json
import typing
from pathlib import Path

import anthropic.types as anthropic_types
import pydantic
import pytest
from anthropic.types import message_create_params
from openai.types.chat import ChatCompletion, completion_create_params

from ext_proc.providers import anthropic
from tests.unit.provider_checks import (
    FixtureFolder,
    assert_error_envelope,
    assert_every_openai_field_has_a_rule,
    assert_no_undeclared_keys,
    assert_refused_field_is_named,
    assert_refused_with_param,
    assert_valid_chunks,
    feed_stream,
    fields_with_rule,
    typed_dict_problems,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
MODEL = "claude-sonnet-4-5-20250929"
CREATED = 1700000000
DEFAULT_MAX_TOKENS = 4096
BASE_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

OPENAI_EXTENSIONS = {"reasoning_content"}
"""Keys we add to OpenAI messages and deltas that the SDK models don't declare (read by many OpenAI clients)."""


_fixtures = FixtureFolder(FIXTURES)
_load, _cases, _events = _fixtures.load, _fixtures.cases, _fixtures.events
_assert_no_undeclared_keys = functools.partial(assert_no_undeclared_keys, extensions=OPENAI_EXTENSIONS)
_assert_valid_chunks = functools.partial(assert_valid_chunks, extensions=OPENAI_EXTENSIONS)


def _run_stream(name: str, include_usage: bool) -> tuple[anthropic.ChatStream, list[dict]]:
    stream = anthropic.ChatStream(MODEL, CREATED, include_usage)
    return stream, feed_stream(stream, _events(name))


def _translate(body: dict) -> dict:
    return anthropic.chat_request(body, MODEL, default_max_tokens=DEFAULT_MAX_TOKENS)


# --- validators ----------------------------------------------------------------------------------------------------


LEGACY_SAMPLING = {"temperature": (0.0, 1.0), "top_p": (0.0, 1.0)}
"""Accepted by the API (anthropic-version 2023-06-01, models before Opus 4.7) but gone from the SDK's types."""


def _assert_valid_anthropic_request(request: dict) -> None:
    request = dict(request)
    for field, (low, high) in LEGACY_SAMPLING.items():
        value = request.pop(field, None)
        assert value is None or (isinstance(value, float | int) and low <= value <= high), (field, value)
    params = (message_create_params.MessageCreateParamsStreaming if request.get("stream")
              else message_create_params.MessageCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(request)
    assert typed_dict_problems(request, params, "request") == []
    # The SDK also allows inline system messages (newer API versions); 2023-06-01 only takes user and assistant.
    assert {message["role"] for message in request["messages"]} <= {"user", "assistant"}


# --- requests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_request_translates_to_golden_anthropic_request(case: str) -> None:
    translated = _translate(_load(f"request_{case}.openai.json"))
    assert translated == _load(f"request_{case}.anthropic.json")
    _assert_valid_anthropic_request(translated)


@pytest.mark.parametrize("case", _cases("request_", ".anthropic.json"))
def test_golden_anthropic_requests_fit_the_sdk_types(case: str) -> None:
    _assert_valid_anthropic_request(_load(f"request_{case}.anthropic.json"))


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_golden_openai_requests_fit_the_sdk_types(case: str) -> None:
    body = _load(f"request_{case}.openai.json")
    params = (completion_create_params.CompletionCreateParamsStreaming if body.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(body)


def test_schema_validator_catches_a_misplaced_key() -> None:
    request = _translate(BASE_BODY)
    request["messages"][0]["cache_control"] = {"type": "ephemeral"}  # belongs on a block, not on the message
    with pytest.raises(AssertionError):
        _assert_valid_anthropic_request(request)


def test_every_openai_request_field_has_a_rule() -> None:
    assert_every_openai_field_has_a_rule(anthropic.FIELDS)


REFUSED_SAMPLES = _load("refused_fields.json")
DROPPED_SAMPLES = _load("dropped_fields.json")


def test_every_refused_and_dropped_field_has_a_sample() -> None:
    assert set(REFUSED_SAMPLES) == fields_with_rule(anthropic.FIELDS, anthropic.REFUSED)
    assert set(DROPPED_SAMPLES) == fields_with_rule(anthropic.FIELDS, anthropic.DROPPED)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_refused_field_is_named_in_the_bad_request(field: str) -> None:
    assert_refused_field_is_named(_translate, {**BASE_BODY, field: REFUSED_SAMPLES[field]}, field)


@pytest.mark.parametrize("field", sorted(DROPPED_SAMPLES))
def test_dropped_field_leaves_the_anthropic_request_unchanged(field: str) -> None:
    assert _translate({**BASE_BODY, field: DROPPED_SAMPLES[field]}) == _translate(BASE_BODY)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_null_refused_field_counts_as_absent(field: str) -> None:
    assert _translate({**BASE_BODY, field: None}) == _translate(BASE_BODY)


@pytest.mark.parametrize("case", _load("bad_requests.json"), ids=lambda case: case["name"])
def test_untranslatable_request_is_refused_with_its_param(case: dict) -> None:
    assert_refused_with_param(_translate, {**BASE_BODY, **case["body"]}, case["param"], case["message"])


@pytest.mark.parametrize("case", _load("tool_choice_cases.json"), ids=lambda case: case["name"])
def test_tool_choice_variants(case: dict) -> None:
    body = {**BASE_BODY, "tools": [{"type": "function", "function": {"name": "get_weather"}},
                                   {"type": "function", "function": {"name": "get_time"}}]}
    for field in ("tool_choice", "parallel_tool_calls"):
        if field in case:
            body[field] = case[field]
    translated = _translate(body)
    assert translated.get("tool_choice") == case["expected_tool_choice"]
    assert [tool["name"] for tool in translated["tools"]] == case.get("expected_tools", ["get_weather", "get_time"])
    _assert_valid_anthropic_request(translated)


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


def test_request_translation_does_not_modify_the_client_body() -> None:
    body = _load("request_cache_control_passthrough.openai.json")
    _translate(body)
    assert body == _load("request_cache_control_passthrough.openai.json")


def test_wire_constants() -> None:
    assert anthropic.SCHEMA == "anthropic"
    assert anthropic.chat_path(MODEL, True) == anthropic.chat_path(MODEL, False) == "/v1/messages"
    assert anthropic.API_VERSION == "2023-06-01"


# --- responses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("response_", ".anthropic.json"))
def test_response_translates_to_golden_chat_completion(case: str) -> None:
    answer = _load(f"response_{case}.anthropic.json")
    anthropic_types.Message.model_validate(answer)  # the fixture is a real Anthropic answer
    translated = anthropic.chat_response(answer, MODEL, CREATED)
    assert translated == _load(f"response_{case}.openai.json")
    _assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion")
    assert anthropic.usage_of(answer) == translated["usage"]


@pytest.mark.parametrize(("stop_reason", "finish_reason"), sorted(_load("stop_reasons.json").items()))
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    answer = {**_load("response_text.anthropic.json"), "stop_reason": stop_reason}
    assert anthropic.chat_response(answer, MODEL, CREATED)["choices"][0]["finish_reason"] == finish_reason


def test_every_anthropic_stop_reason_is_mapped() -> None:
    stop_reasons = set(typing.get_args(anthropic_types.StopReason))
    assert stop_reasons == set(_load("stop_reasons.json"))


def test_tool_call_ids_and_arguments_survive_a_round_trip() -> None:
    """Anthropic tool_use -> OpenAI tool_calls -> the client's next request -> the same tool_use blocks."""
    answer = _load("response_text_and_tool_calls.anthropic.json")
    message = anthropic.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]
    follow_up = {**BASE_BODY, "messages": [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
        *({"role": "tool", "tool_call_id": call["id"], "content": "ok"} for call in message["tool_calls"])]}
    translated = _translate(follow_up)
    _assert_valid_anthropic_request(translated)
    assert translated["messages"][1]["content"] == answer["content"]
    assert [block["tool_use_id"] for block in translated["messages"][2]["content"]] == [
        block["id"] for block in answer["content"] if block["type"] == "tool_use"]


# --- streams -------------------------------------------------------------------------------------------------------


def _stream_cases() -> list[tuple[str, bool]]:
    cases = []
    for path in sorted(FIXTURES.glob("stream_*.openai*.sse")):
        case, _, rest = path.name.removeprefix("stream_").partition(".openai")
        cases.append((case, rest == ".usage.sse"))
    return cases


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases())
def test_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    for event in _events(f"stream_{case}.anthropic.sse"):
        if event.event not in ("ping", "error"):  # the fixture events are real Anthropic events
            pydantic.TypeAdapter(anthropic_types.RawMessageStreamEvent).validate_json(event.data)
    _, chunks = _run_stream(f"stream_{case}.anthropic.sse", include_usage)
    suffix = ".openai.usage.sse" if include_usage else ".openai.sse"
    expected = [json.loads(event.data) for event in _events(f"stream_{case}{suffix}")]
    assert chunks == expected
    _assert_valid_chunks(chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_recorded_whether_or_not_the_client_asked(include_usage: bool) -> None:
    stream, chunks = _run_stream("stream_text.anthropic.sse", include_usage)
    assert stream.finished
    assert stream.usage == {"prompt_tokens": 1225, "completion_tokens": 6, "total_tokens": 1231,
                            "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 0}}
    assert all(("usage" in chunk) == include_usage for chunk in chunks)
    _assert_valid_chunks(chunks)


def test_tool_call_arguments_stream_in_fragments() -> None:
    _, chunks = _run_stream("stream_tool_calls.anthropic.sse", include_usage=True)
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls", ()):
                call = calls.setdefault(fragment["index"], {"id": None, "name": None, "arguments": ""})
                call["id"] = fragment.get("id") or call["id"]
                call["name"] = fragment["function"].get("name") or call["name"]
                call["arguments"] += fragment["function"].get("arguments") or ""
    assert sorted(calls) == [0, 1, 2]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"city": "Paris", "unit": "c"}),
        ("toolu_01Ks9WBz3mQpHc8ZyLdVn2Ra", "get_weather", {"city": "Oslo"}),
        ("toolu_01Hn4PqRt7Vw2Xy9Za3Bc5De", "get_time", {}),
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_mid_stream_error_ends_the_stream_without_finishing_it() -> None:
    stream, chunks = _run_stream("stream_error_mid_stream.anthropic.sse", include_usage=True)
    assert chunks[-1]["error"]["code"] == "overloaded_error"
    assert not stream.finished
    assert stream.feed("message_stop", b'{"type":"message_stop"}') == []
    assert stream.finish() == []
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 10


def test_stream_cut_before_message_stop_reports_an_error() -> None:
    stream, chunks = _run_stream("stream_cut_early.anthropic.sse", include_usage=False)
    assert not stream.finished
    assert_error_envelope(chunks[-1])
    assert "ended before message_stop" in chunks[-1]["error"]["message"]


def test_malformed_stream_event_is_an_error() -> None:
    stream = anthropic.ChatStream(MODEL, CREATED, include_usage=False)
    chunks = stream.feed("content_block_delta", b"{not json")
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert stream.finish() == []


def test_streamed_text_matches_the_non_streamed_answer_shape() -> None:
    _, chunks = _run_stream("stream_text.anthropic.sse", include_usage=False)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "Hello, world!"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {chunk["id"] for chunk in chunks} == {"msg_01StreamText"}


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_error_response_maps_status_and_body(case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = anthropic.error_response(case["status"], body)
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


def test_error_messages_do_not_echo_unrecognised_bodies() -> None:
    secret = b"upstream proxy says: x-api-key sk-ant-api03-SECRET was rejected"
    _, error = anthropic.error_response(502, secret)
    assert "sk-ant" not in error["error"]["message"]
