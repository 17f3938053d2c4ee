"""OpenAI <-> Cohere v2 translation, checked against golden fixture pairs in tests/fixtures/cohere/.

Every Cohere request the translator produces is validated against the installed `cohere` SDK's own types: the
parameters of `client.v2.chat` / `chat_stream` / `embed` and the models they take (`ChatMessageV2`, `ToolV2`,
`ResponseFormatV2`, `Thinking`, ...), strictly (the SDK's models allow extra keys and `Union[Literal, Any]` enums,
which would let a misspelt key or value through). Every OpenAI answer or chunk is validated with the `openai` SDK.
"""

from __future__ import annotations

import base64
import collections.abc
import functools
import json
import struct
import types
import typing
from pathlib import Path

import pydantic
import pytest
from cohere.types import EmbedByTypeResponse
from cohere.v2.raw_client import RawV2Client
from cohere.v2.types import V2ChatResponse, V2ChatStreamResponse
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, completion_create_params

from ext_proc.errors import BadRequest
from ext_proc.providers import cohere
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
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cohere"
MODEL = "command-a-03-2025"
EMBED_MODEL = "embed-v4.0"
CREATED = 1700000000
BASE_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
TWO_TOOLS = [{"type": "function", "function": {"name": "get_weather"}},
             {"type": "function", "function": {"name": "get_time"}}]

OPENAI_EXTENSIONS = {"reasoning_content"}
"""Keys we add to OpenAI messages and deltas that the SDK models don't declare (read by many OpenAI clients)."""

_NOT_SENT = {"request_options", "return"}
CHAT_PARAMS = {name: hint for name, hint in typing.get_type_hints(RawV2Client.chat, include_extras=True).items()
               if name not in _NOT_SENT}
EMBED_PARAMS = {name: hint for name, hint in typing.get_type_hints(RawV2Client.embed, include_extras=True).items()
                if name not in _NOT_SENT}


_fixtures = FixtureFolder(FIXTURES)
_load, _cases, _events = _fixtures.load, _fixtures.cases, _fixtures.events


def _run_stream(name: str, include_usage: bool) -> tuple[cohere.ChatStream, list[dict]]:
    stream = cohere.ChatStream(MODEL, CREATED, include_usage)
    return stream, feed_stream(stream, _events(name))


def _translate(body: dict) -> dict:
    return cohere.chat_request(body, MODEL, default_max_tokens=4096)


# --- validators ----------------------------------------------------------------------------------------------------


def _problems(value: object, hint: object, path: str) -> list[str]:
    """Where `value` departs from a cohere SDK type, unknown keys and unknown enum values included."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _problems(value, typing.get_args(hint)[0], path)
    if origin in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not typing.Any]  # enums stay closed
        tries = [_problems(value, member, path) for member in members]
        return min(tries, key=lambda problems: (any(p.startswith(f"{path}: ") for p in problems), len(problems)))
    if origin is typing.Literal:
        return [] if value in typing.get_args(hint) else [f"{path}: {value!r} is not one of {typing.get_args(hint)}"]
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        fields = {(info.alias or name): info for name, info in hint.model_fields.items()}
        problems = [f"{path}.{key}: unknown key" for key in value if key not in fields]
        problems += [f"{path}.{key}: missing" for key, info in fields.items()
                     if info.is_required() and key not in value]
        for key, item in value.items():
            if key in fields:
                problems += _problems(item, fields[key].annotation, f"{path}.{key}")
        return problems
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        item_hint = typing.get_args(hint)[0]
        return [problem for i, item in enumerate(value) for problem in _problems(item, item_hint, f"{path}[{i}]")]
    if origin is dict or hint is dict:
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if hint is typing.Any:
        return []
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if hint is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else [f"{path}: expected number"]
    if hint in (str, int, bool):
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        return [] if ok else [f"{path}: expected {hint.__name__}"]
    return [f"{path}: {hint!r} never matches a request value"]


def _assert_valid_cohere_request(request: dict, params: dict[str, object] = CHAT_PARAMS) -> None:
    request = dict(request)
    stream = request.pop("stream", None)
    assert stream in (None, True), "chat_stream sends stream: true; chat leaves it out (the SDK sends false)"
    problems = [f"request.{key}: unknown parameter" for key in request if key not in params]
    for key, value in request.items():
        if key in params:
            problems += _problems(value, params[key], f"request.{key}")
            try:
                pydantic.TypeAdapter(params[key]).validate_python(value)
            except pydantic.ValidationError as exc:
                problems.append(f"request.{key}: {exc.errors()[0]['msg']}")
    assert problems == []
    assert {"model", "messages"} <= set(request) if params is CHAT_PARAMS else {"model", "input_type"} <= set(request)


_assert_no_undeclared_keys = functools.partial(assert_no_undeclared_keys, extensions=OPENAI_EXTENSIONS)
_assert_valid_chunks = functools.partial(assert_valid_chunks, extensions=OPENAI_EXTENSIONS)


# --- requests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_request_translates_to_golden_cohere_request(case: str) -> None:
    translated = _translate(_load(f"request_{case}.openai.json"))
    assert translated == _load(f"request_{case}.cohere.json")
    _assert_valid_cohere_request(translated)


@pytest.mark.parametrize("case", _cases("request_", ".cohere.json"))
def test_golden_cohere_requests_fit_the_sdk_types(case: str) -> None:
    _assert_valid_cohere_request(_load(f"request_{case}.cohere.json"))


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_golden_openai_requests_fit_the_sdk_types(case: str) -> None:
    body = _load(f"request_{case}.openai.json")
    params = (completion_create_params.CompletionCreateParamsStreaming if body.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(body)


@pytest.mark.parametrize("misplaced", [
    {"messages": [{"role": "user", "content": "hi", "tool_plan": "x"}]},
    {"tool_choice": "ANY"},
    {"thinking": {"type": "enabled", "budget_tokens": 10}},
    {"response_format": {"type": "json_schema"}},
    {"top_p": 0.5},
])
def test_schema_validator_catches_what_cohere_does_not_take(misplaced: dict) -> None:
    with pytest.raises(AssertionError):
        _assert_valid_cohere_request({**_translate(BASE_BODY), **misplaced})


def test_every_openai_request_field_has_a_rule() -> None:
    assert_every_openai_field_has_a_rule(cohere.FIELDS)


REFUSED_SAMPLES = _load("refused_fields.json")
DROPPED_SAMPLES = _load("dropped_fields.json")


def test_every_refused_and_dropped_field_has_a_sample() -> None:
    assert set(REFUSED_SAMPLES) == fields_with_rule(cohere.FIELDS, cohere.REFUSED)
    assert set(DROPPED_SAMPLES) == fields_with_rule(cohere.FIELDS, cohere.DROPPED)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_refused_field_is_named_in_the_bad_request(field: str) -> None:
    assert_refused_field_is_named(_translate, {**BASE_BODY, "tools": TWO_TOOLS, field: REFUSED_SAMPLES[field]}, field)


@pytest.mark.parametrize("field", sorted(DROPPED_SAMPLES))
def test_dropped_field_leaves_the_cohere_request_unchanged(field: str) -> None:
    assert _translate({**BASE_BODY, field: DROPPED_SAMPLES[field]}) == _translate(BASE_BODY)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_null_refused_field_counts_as_absent(field: str) -> None:
    assert _translate({**BASE_BODY, field: None}) == _translate(BASE_BODY)


@pytest.mark.parametrize("case", _load("bad_requests.json"), ids=lambda case: case["name"])
def test_untranslatable_request_is_refused_with_its_param(case: dict) -> None:
    assert_refused_with_param(_translate, {**BASE_BODY, **case["body"]}, case["param"], case["message"])


@pytest.mark.parametrize("case", _load("tool_choice_cases.json"), ids=lambda case: case["name"])
def test_tool_choice_variants(case: dict) -> None:
    body = {**BASE_BODY, "tools": TWO_TOOLS}
    for field in ("tool_choice", "parallel_tool_calls"):
        if field in case:
            body[field] = case[field]
    translated = _translate(body)
    assert translated.get("tool_choice") == case["expected_tool_choice"]
    assert [tool["function"]["name"] for tool in translated["tools"]] == case.get("expected_tools",
                                                                                  ["get_weather", "get_time"])
    _assert_valid_cohere_request(translated)


def test_tool_choice_is_left_out_without_tools() -> None:
    assert "tool_choice" not in _translate({**BASE_BODY, "tool_choice": "required"})


@pytest.mark.parametrize(("top_p", "p"), [(0, 0.01), (0.005, 0.01), (0.5, 0.5), (0.99, 0.99), (1, 0.99)])
def test_top_p_is_clamped_to_cohere_range(top_p: float, p: float) -> None:
    assert _translate({**BASE_BODY, "top_p": top_p})["p"] == p


@pytest.mark.parametrize(("penalty", "expected"), [(0, 0), (0.4, 0.4), (1, 1), (1.7, 1.0), (2, 1.0)])
def test_penalties_above_cohere_range_are_clamped(penalty: float, expected: float) -> None:
    translated = _translate({**BASE_BODY, "presence_penalty": penalty, "frequency_penalty": penalty})
    assert translated["presence_penalty"] == translated["frequency_penalty"] == expected


@pytest.mark.parametrize(("effort", "thinking"), [
    ("none", {"type": "disabled"}), ("minimal", {"type": "enabled", "token_budget": 1024}),
    ("low", {"type": "enabled", "token_budget": 2048}), ("medium", {"type": "enabled", "token_budget": 8192}),
    ("high", {"type": "enabled"})])
def test_reasoning_effort_becomes_thinking(effort: str, thinking: dict) -> None:
    translated = _translate({**BASE_BODY, "reasoning_effort": effort})
    assert translated["thinking"] == thinking
    _assert_valid_cohere_request(translated)


def test_max_completion_tokens_wins_and_no_default_is_sent() -> None:
    assert _translate({**BASE_BODY, "max_tokens": 10, "max_completion_tokens": 20})["max_tokens"] == 20
    assert _translate({**BASE_BODY, "max_tokens": 10})["max_tokens"] == 10
    assert "max_tokens" not in _translate(BASE_BODY)


def test_system_messages_are_joined_into_one_leading_message() -> None:
    translated = _translate({**BASE_BODY, "messages": [
        {"role": "user", "content": "a"}, {"role": "system", "content": "one"},
        {"role": "assistant", "content": "b"}, {"role": "developer", "content": "two"},
        {"role": "user", "content": "c"}]})
    assert translated["messages"][0] == {"role": "system", "content": "one\n\ntwo"}
    assert [message["role"] for message in translated["messages"]] == ["system", "user", "assistant", "user"]


def test_request_translation_does_not_modify_the_client_body() -> None:
    body = _load("request_tool_results_round_trip.openai.json")
    _translate(body)
    assert body == _load("request_tool_results_round_trip.openai.json")


def test_wire_constants() -> None:
    assert cohere.SCHEMA == "cohere"
    assert cohere.chat_path(MODEL, True) == cohere.chat_path(MODEL, False) == "/v2/chat"
    assert cohere.embeddings_path(EMBED_MODEL) == "/v2/embed"
    assert cohere.CohereTranslator.serves_embeddings


# --- responses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("response_", ".cohere.json"))
def test_response_translates_to_golden_chat_completion(case: str) -> None:
    answer = _load(f"response_{case}.cohere.json")
    V2ChatResponse.model_validate(answer)  # the fixture is a real Cohere answer
    assert _problems(answer, V2ChatResponse, "answer") == []
    translated = cohere.chat_response(answer, MODEL, CREATED)
    assert translated == _load(f"response_{case}.openai.json")
    _assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion")
    assert cohere.usage_of(answer) == translated["usage"]


@pytest.mark.parametrize(("reason", "finish_reason"), sorted(_load("finish_reasons.json").items()))
def test_finish_reason_maps(reason: str, finish_reason: str) -> None:
    answer = {**_load("response_text.cohere.json"), "finish_reason": reason}
    assert cohere.chat_response(answer, MODEL, CREATED)["choices"][0]["finish_reason"] == finish_reason


def test_every_cohere_finish_reason_is_mapped() -> None:
    from cohere.types import ChatFinishReason

    literal = next(arg for arg in typing.get_args(ChatFinishReason) if typing.get_origin(arg) is typing.Literal)
    assert set(typing.get_args(literal)) == set(_load("finish_reasons.json"))


def test_usage_prefers_billed_units_over_processed_tokens() -> None:
    usage = cohere.usage_of(_load("response_tool_calls.cohere.json"))
    assert usage == {"prompt_tokens": 37, "completion_tokens": 28, "total_tokens": 65}
    assert cohere.usage_of({"id": "x"}) is None


def test_tool_calls_and_plan_survive_a_round_trip() -> None:
    """Cohere tool_calls + tool_plan -> OpenAI message -> the client's next request -> the same Cohere turn."""
    answer = _load("response_tool_calls.cohere.json")
    message = cohere.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]
    follow_up = {**BASE_BODY, "messages": [
        {"role": "user", "content": "Weather in Madrid and Brasilia?"},
        {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
        *({"role": "tool", "tool_call_id": call["id"], "content": "sunny"} for call in message["tool_calls"])]}
    translated = _translate(follow_up)
    _assert_valid_cohere_request(translated)
    assert translated["messages"][1] == {"role": "assistant", **{k: v for k, v in answer["message"].items()
                                                                 if k != "role"}}
    assert [m["tool_call_id"] for m in translated["messages"][2:]] == [c["id"] for c in answer["message"]["tool_calls"]]


# --- streams -------------------------------------------------------------------------------------------------------


def _stream_cases() -> list[tuple[str, bool]]:
    cases = []
    for path in sorted(FIXTURES.glob("stream_*.openai*.sse")):
        case, _, rest = path.name.removeprefix("stream_").partition(".openai")
        cases.append((case, rest == ".usage.sse"))
    return cases


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases())
def test_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    for event in _events(f"stream_{case}.cohere.sse"):
        if event.data != b"[DONE]":  # the fixture events are real Cohere events
            # (not checked strictly: Cohere's message-start carries keys the SDK model does not declare)
            assert event.event == json.loads(event.data)["type"]
            pydantic.TypeAdapter(V2ChatStreamResponse).validate_json(event.data)
    _, chunks = _run_stream(f"stream_{case}.cohere.sse", include_usage)
    suffix = ".openai.usage.sse" if include_usage else ".openai.sse"
    expected = [json.loads(event.data) for event in _events(f"stream_{case}{suffix}")]
    assert chunks == expected
    _assert_valid_chunks(chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_recorded_whether_or_not_the_client_asked(include_usage: bool) -> None:
    stream, chunks = _run_stream("stream_text.cohere.sse", include_usage)
    assert stream.finished
    assert stream.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                            "prompt_tokens_details": {"cached_tokens": 0}}
    assert all(("usage" in chunk) == include_usage for chunk in chunks)


def test_tool_call_arguments_stream_in_fragments() -> None:
    _, chunks = _run_stream("stream_tool_calls.cohere.sse", include_usage=True)
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls", ()):
                call = calls.setdefault(fragment["index"], {"id": None, "name": None, "arguments": "", "pieces": 0})
                call["id"] = fragment.get("id") or call["id"]
                call["name"] = fragment["function"].get("name") or call["name"]
                call["arguments"] += fragment["function"].get("arguments") or ""
                call["pieces"] += 1
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("get_weather_p1t92w7gfgq7", "get_weather", {"location": "Madrid"}),
        ("get_weather_ay6nmvjgp9vn", "get_weather", {"location": "Brasilia"}),
        ("get_time_x9k2m4n6p8q0", "get_time", {}),
    ]
    assert calls[0]["pieces"] > 2, "arguments arrive in several fragments"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == "I will check Madrid and Brasilia."
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_message_end_with_an_error_ends_the_stream_without_finishing_it() -> None:
    stream, chunks = _run_stream("stream_error_mid_stream.cohere.sse", include_usage=True)
    assert chunks[-1]["error"]["message"] == "internal error while generating"
    assert not stream.finished
    assert stream.feed("message-end", b'{"type":"message-end","delta":{"finish_reason":"COMPLETE"}}') == []
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 3


def test_stream_cut_before_message_end_reports_an_error() -> None:
    stream, chunks = _run_stream("stream_cut_early.cohere.sse", include_usage=False)
    assert not stream.finished
    assert "ended before message-end" in chunks[-1]["error"]["message"]


def test_malformed_stream_event_is_an_error() -> None:
    stream = cohere.ChatStream(MODEL, CREATED, include_usage=False)
    chunks = stream.feed("content-delta", b"{not json")
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert stream.finish() == []


# --- embeddings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("embed_request_", ".openai.json"))
def test_embeddings_request_translates_to_golden_embed_request(case: str) -> None:
    translated = cohere.embeddings_request(_load(f"embed_request_{case}.openai.json"), EMBED_MODEL)
    assert translated == _load(f"embed_request_{case}.cohere.json")
    _assert_valid_cohere_request(translated, EMBED_PARAMS)


@pytest.mark.parametrize("case", _cases("embed_response_", ".cohere.json"))
def test_embeddings_response_translates_to_golden_list(case: str) -> None:
    answer = _load(f"embed_response_{case}.cohere.json")
    EmbedByTypeResponse.model_validate(answer)
    translated = cohere.embeddings_response(answer, EMBED_MODEL)
    assert translated == _load(f"embed_response_{case}.openai.json")
    decoded = [{**item, "embedding": _floats(item["embedding"])} for item in translated["data"]]
    CreateEmbeddingResponse.model_validate({**translated, "data": decoded})


def _floats(embedding: list[float] | str) -> list[float]:
    """OpenAI's base64 embeddings are little-endian float32 bytes (the openai SDK decodes them so)."""
    if isinstance(embedding, list):
        return embedding
    raw = base64.b64decode(embedding)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_base64_embeddings_decode_to_the_floats_cohere_encoded() -> None:
    answer = _load("embed_response_base64.cohere.json")
    vectors = [_floats(item["embedding"]) for item in cohere.embeddings_response(answer, EMBED_MODEL)["data"]]
    assert vectors == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [1, 2, 3]}, "input"), ({"input": ""}, "input"), ({"input": "x", "encoding_format": "int8"},
                                                                 "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"), ({"input": "x", "input_type": "image"}, "input_type"),
    ({"input": "x", "truncate": "END"}, "truncate")])
def test_untranslatable_embeddings_request_is_refused(body: dict, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        cohere.embeddings_request({"model": "m", **body}, EMBED_MODEL)
    assert refused.value.param == param


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_error_response_maps_status_and_body(case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = cohere.error_response(case["status"], body)
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


def test_error_messages_do_not_echo_unrecognised_bodies() -> None:
    _, error = cohere.error_response(502, b"upstream proxy says: Bearer co-SECRET was rejected")
    assert "SECRET" not in error["error"]["message"]
