"""OpenAI <-> Gemini translation, checked against golden fixture pairs in tests/fixtures/gemini/.

Every Gemini request the translator produces is parsed with the google-genai SDK's own types (which refuse unknown
fields) and fed through the SDK's own request converters for AI Studio and Vertex: the request must come out of them
exactly as we wrote it, so what we send is what Google's SDK would send. Every Gemini answer in the fixtures parses as
the SDK's `GenerateContentResponse`, and every OpenAI answer or chunk we build validates with the `openai` SDK.
"""

from __future__ import annotations

import base64
import functools
import json
import typing
from pathlib import Path

import orjson
import pydantic
import pytest
from google.auth.credentials import AnonymousCredentials
from google.genai import _api_client, models, types
from openai.types import CreateEmbeddingResponse, embedding_create_params
from openai.types.chat import ChatCompletion, completion_create_params

from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import gemini
from ext_proc.streaming.sse import SSEEvent
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

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gemini"
MODEL = "gemini-2.5-flash"
CREATED = 1700000000
BASE_BODY = {"model": "gemini-flash", "messages": [{"role": "user", "content": "hi"}]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "get_time"}}]
SIGNATURE = "Epr+/xKa/v8Smv7/Epr+/xKa/v8Smv7/Z2VtaW5pLXRob3VnaHQtc2lnbmF0dXJlLys="

OPENAI_EXTENSIONS = {"reasoning_content"}
"""Keys we add to OpenAI messages and deltas that the SDK models don't declare (read by many OpenAI clients)."""

AI_STUDIO = Backend.model_validate({"id": "studio", "schema": "gemini"})
VERTEX = Backend.model_validate({"id": "vertex", "schema": "vertex-gemini",
                                 "gcp": {"project": "my-project", "location": "europe-west4"}})


_fixtures = FixtureFolder(FIXTURES)
_load, _cases, _events = _fixtures.load, _fixtures.cases, _fixtures.events


def _run_stream(name: str, include_usage: bool) -> tuple[gemini.ChatStream, list[dict]]:
    return _stream_events(_events(name), include_usage)


def _stream_events(events: list[SSEEvent], include_usage: bool) -> tuple[gemini.ChatStream, list[dict]]:
    stream = gemini.ChatStream(MODEL, CREATED, include_usage)
    return stream, feed_stream(stream, events)


def _translate(body: dict, model: str = MODEL) -> dict:
    return gemini.chat_request(body, model, default_max_tokens=4096)


# --- validators ----------------------------------------------------------------------------------------------------

WIRE_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
_CLIENTS = {
    "ai-studio": (_api_client.BaseApiClient(api_key="test-key"), models._GenerateContentParameters_to_mldev),
    "vertex": (_api_client.BaseApiClient(vertexai=True, project="p", location="us-central1",
                                         credentials=AnonymousCredentials()),
               models._GenerateContentParameters_to_vertex),
}


def _sdk_request(request: dict, api: str) -> dict:
    """Parse our request with the SDK's types, then let the SDK write its own request from them."""
    client, convert = _CLIENTS[api]
    top_level = {key: request[key] for key in ("systemInstruction", "tools", "toolConfig") if key in request}
    config = types.GenerateContentConfig.model_validate_json(orjson.dumps({**request.get("generationConfig", {}),
                                                                          **top_level}))
    contents = [types.Content.model_validate_json(orjson.dumps(content)) for content in request["contents"]]
    written = convert(client, {"model": MODEL, "contents": contents, "config": config})
    written.pop("_url")
    return _plain(written)


def _plain(value: object) -> object:
    """SDK objects as wire JSON; bytes (signatures, inline data) as standard base64 like the API's own answers."""
    if isinstance(value, pydantic.BaseModel):
        return _plain(value.model_dump(by_alias=True, exclude_none=True))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item != {} or key != "generationConfig"}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "value") and type(value).__module__ == types.__name__:
        return value.value  # an SDK enum
    return value


def _assert_valid_gemini_request(request: dict) -> None:
    assert set(request) <= WIRE_FIELDS, set(request) - WIRE_FIELDS
    assert set(request.get("generationConfig", {})) <= {field.alias for field in
                                                        types.GenerationConfig.model_fields.values()}
    expected = _plain(json.loads(json.dumps(request)))
    for api in _CLIENTS:
        assert _sdk_request(request, api) == _signatures_decoded(expected), api


def _signatures_decoded(request: object) -> object:
    """Bytes fields (signatures, inline data) in standard base64, as `_plain` writes them; the API also takes the
    URL-safe alphabet (Google's signature sentinel is written in it)."""
    if isinstance(request, dict):
        decoded = {key: _signatures_decoded(item) for key, item in request.items()}
        if isinstance(request.get("thoughtSignature"), str):
            decoded["thoughtSignature"] = _standard_base64(request["thoughtSignature"])
        if isinstance(request.get("inlineData"), dict) and isinstance(request["inlineData"].get("data"), str):
            decoded["inlineData"]["data"] = _standard_base64(request["inlineData"]["data"])
        return decoded
    if isinstance(request, list):
        return [_signatures_decoded(item) for item in request]
    return request


def _standard_base64(text: str) -> str:
    padded = text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
    return base64.b64encode(base64.urlsafe_b64decode(padded)).decode()


_assert_no_undeclared_keys = functools.partial(assert_no_undeclared_keys, extensions=OPENAI_EXTENSIONS)
_assert_valid_chunks = functools.partial(assert_valid_chunks, extensions=OPENAI_EXTENSIONS)


# --- requests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_request_translates_to_golden_gemini_request(case: str) -> None:
    translated = _translate(_load(f"request_{case}.openai.json"))
    assert translated == _load(f"request_{case}.gemini.json")
    _assert_valid_gemini_request(translated)


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_golden_openai_requests_fit_the_sdk_types(case: str) -> None:
    body = _load(f"request_{case}.openai.json")
    params = (completion_create_params.CompletionCreateParamsStreaming if body.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(body)


@pytest.mark.parametrize("mistake", [
    lambda request: request["contents"][0].update(parts=[{"text": "x", "thought_signature": "AAAA"}]),
    lambda request: request["contents"][0]["parts"][0].update(functionCall={"name": "f", "arguments": {}}),
    lambda request: request.setdefault("generationConfig", {}).update(systemInstruction={"parts": [{"text": "x"}]}),
    lambda request: request.setdefault("generationConfig", {}).update(max_output_tokens=5),
    lambda request: request.update(generation_config={"temperature": 0.5}),
], ids=["snake_case_part_key", "unknown_nested_key", "misplaced_system_instruction", "snake_case_config_key",
        "snake_case_top_level_key"])
def test_sdk_validator_catches_a_wrong_key(mistake: typing.Callable[[dict], None]) -> None:
    request = _translate(BASE_BODY)
    mistake(request)
    with pytest.raises((AssertionError, pydantic.ValidationError)):
        _assert_valid_gemini_request(request)


def test_every_openai_request_field_has_a_rule() -> None:
    assert_every_openai_field_has_a_rule(gemini.FIELDS)


REFUSED_SAMPLES = _load("refused_fields.json")
DROPPED_SAMPLES = _load("dropped_fields.json")


def test_every_refused_and_dropped_field_has_a_sample() -> None:
    assert set(REFUSED_SAMPLES) == fields_with_rule(gemini.FIELDS, gemini.REFUSED)
    assert set(DROPPED_SAMPLES) == fields_with_rule(gemini.FIELDS, gemini.DROPPED)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_refused_field_is_named_in_the_bad_request(field: str) -> None:
    assert_refused_field_is_named(_translate, {**BASE_BODY, field: REFUSED_SAMPLES[field]}, field)


@pytest.mark.parametrize("field", sorted(DROPPED_SAMPLES))
def test_dropped_field_leaves_the_gemini_request_unchanged(field: str) -> None:
    assert _translate({**BASE_BODY, field: DROPPED_SAMPLES[field]}) == _translate(BASE_BODY)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_null_refused_field_counts_as_absent(field: str) -> None:
    assert _translate({**BASE_BODY, field: None}) == _translate(BASE_BODY)


@pytest.mark.parametrize("case", _load("bad_requests.json"), ids=lambda case: case["name"])
def test_untranslatable_request_is_refused_with_its_param(case: dict) -> None:
    assert_refused_with_param(_translate, {**BASE_BODY, **case["body"]}, case["param"], case["message"])


@pytest.mark.parametrize("case", _load("tool_choice_cases.json"), ids=lambda case: case["name"])
def test_tool_choice_variants(case: dict) -> None:
    body = {**BASE_BODY, "tools": TOOLS}
    for field in ("tool_choice", "parallel_tool_calls"):
        if field in case:
            body[field] = case[field]
    translated = _translate(body)
    assert translated.get("toolConfig") == case["expected_tool_config"]
    declared = [declaration["name"] for declaration in translated["tools"][0]["functionDeclarations"]]
    assert declared == case.get("expected_tools", ["get_weather", "get_time"])
    _assert_valid_gemini_request(translated)


def test_tool_choice_is_left_out_without_tools() -> None:
    translated = _translate({**BASE_BODY, "tool_choice": "none"})
    assert "toolConfig" not in translated and "tools" not in translated


@pytest.mark.parametrize(("effort", "expected"), [
    ("none", {"thinkingBudget": 0}),
    ("minimal", {"thinkingBudget": 512, "includeThoughts": True}),
    ("low", {"thinkingBudget": 1024, "includeThoughts": True}),
    ("medium", {"thinkingBudget": 8192, "includeThoughts": True}),
    ("high", {"thinkingBudget": 24576, "includeThoughts": True}),
])
def test_reasoning_effort_sets_a_thinking_budget(effort: str, expected: dict) -> None:
    translated = _translate({**BASE_BODY, "reasoning_effort": effort})
    assert translated["generationConfig"] == {"thinkingConfig": expected}
    _assert_valid_gemini_request(translated)


def test_max_completion_tokens_wins_and_no_default_is_sent() -> None:
    assert _translate({**BASE_BODY, "max_tokens": 10, "max_completion_tokens": 20})["generationConfig"] == {
        "maxOutputTokens": 20}
    assert "generationConfig" not in _translate(BASE_BODY)


def test_model_turns_and_tool_results_alternate_in_order() -> None:
    translated = _translate(_load("request_tool_results_round_trip.openai.json"))
    assert [content["role"] for content in translated["contents"]] == ["user", "model", "user"]
    results = [part["functionResponse"]["response"] for part in translated["contents"][2]["parts"]
               if "functionResponse" in part]
    assert results == [{"temp": 21, "sky": "clear"}, {"output": "-3 and snowing"}]


def test_gemini_3_replay_without_signature_gets_the_documented_sentinel() -> None:
    body = _load("request_foreign_tool_history.openai.json")
    body["messages"][1]["tool_calls"].append(
        {"id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": "{}"}})
    translated = _translate(body, "gemini-3-pro-preview")
    calls = translated["contents"][1]["parts"]
    assert calls[0]["thoughtSignature"] == "skip_thought_signature_validator"
    assert "thoughtSignature" not in calls[1], "only the first call of a step carries a signature"
    _assert_valid_gemini_request(translated)
    assert "thoughtSignature" not in json.dumps(_translate(body, "gemini-2.5-pro"))


def test_gemini_3_replay_keeps_a_real_signature() -> None:
    translated = _translate(_load("request_tool_results_round_trip.openai.json"), "models/gemini-3-flash-preview")
    calls = [part for part in translated["contents"][1]["parts"] if "functionCall" in part]
    assert [call.get("thoughtSignature") for call in calls] == [SIGNATURE, None]


def test_tool_call_ids_and_signatures_survive_a_round_trip() -> None:
    """Gemini functionCall parts -> OpenAI tool_calls -> the client's next request -> the same parts."""
    answer = _load("response_parallel_tool_calls.gemini.json")
    message = gemini.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]
    follow_up = {**BASE_BODY, "messages": [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
        *({"role": "tool", "tool_call_id": call["id"], "content": "ok"} for call in message["tool_calls"])]}
    translated = _translate(follow_up, "gemini-3-flash-preview")
    _assert_valid_gemini_request(translated)
    assert translated["contents"][1]["parts"] == answer["candidates"][0]["content"]["parts"]
    assert [part["functionResponse"]["name"] for part in translated["contents"][2]["parts"]] == ["get_weather"] * 2


def test_streamed_and_unstreamed_answers_get_the_same_tool_call_ids() -> None:
    answer = _load("response_parallel_tool_calls.gemini.json")
    unstreamed = gemini.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]["tool_calls"]
    _, chunks = _stream_events([SSEEvent(None, orjson.dumps(answer))], include_usage=False)
    streamed = [call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", ())]
    assert [call["id"] for call in streamed] == [call["id"] for call in unstreamed]
    assert len({call["id"] for call in unstreamed}) == 2


def test_request_translation_does_not_modify_the_client_body() -> None:
    body = _load("request_tools_schema_conversion.openai.json")
    _translate(body)
    assert body == _load("request_tools_schema_conversion.openai.json")


@pytest.mark.parametrize(("backend", "stream", "path"), [
    (AI_STUDIO, False, "/v1beta/models/gemini-2.5-flash:generateContent"),
    (AI_STUDIO, True, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    (VERTEX, False, "/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
                    ":generateContent"),
    (VERTEX, True, "/v1/projects/my-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
                   ":streamGenerateContent?alt=sse"),
])
def test_chat_paths(backend: Backend, stream: bool, path: str) -> None:
    assert gemini.chat_path(MODEL, stream, backend) == path
    assert gemini.chat_path(f"models/{MODEL}", stream, backend) == path


def test_embeddings_paths_and_wire_constants() -> None:
    assert gemini.embeddings_path("text-embedding-004", AI_STUDIO) == "/v1beta/models/text-embedding-004" \
                                                                      ":batchEmbedContents"
    assert gemini.embeddings_path("text-embedding-005", VERTEX) == (
        "/v1/projects/my-project/locations/europe-west4/publishers/google/models/text-embedding-005:predict")
    assert gemini.GeminiTranslator.schemas == ("gemini", "vertex-gemini")


# --- responses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("response_", ".gemini.json"))
def test_response_translates_to_golden_chat_completion(case: str) -> None:
    answer = _load(f"response_{case}.gemini.json")
    types.GenerateContentResponse.model_validate_json(orjson.dumps(answer))  # the fixture is a real Gemini answer
    translated = gemini.chat_response(answer, MODEL, CREATED)
    assert translated == _load(f"response_{case}.openai.json")
    _assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion")
    assert gemini.usage_of(answer) == translated["usage"]


@pytest.mark.parametrize(("reason", "finish_reason"), sorted(_load("finish_reasons.json").items()))
def test_finish_reason_maps_to_openai(reason: str, finish_reason: str) -> None:
    answer = {**_load("response_text.gemini.json")}
    answer["candidates"] = [{**answer["candidates"][0], "finishReason": reason}]
    assert gemini.chat_response(answer, MODEL, CREATED)["choices"][0]["finish_reason"] == finish_reason


def test_every_gemini_finish_reason_is_mapped() -> None:
    assert set(types.FinishReason.__members__) == set(_load("finish_reasons.json"))


def test_usage_counts_thoughts_as_completion_and_cached_as_prompt() -> None:
    assert gemini.usage_of(_load("response_thinking_cached.gemini.json")) == {
        "prompt_tokens": 2100, "completion_tokens": 57, "total_tokens": 2157,
        "prompt_tokens_details": {"cached_tokens": 2048}, "completion_tokens_details": {"reasoning_tokens": 50}}


# --- streams -------------------------------------------------------------------------------------------------------


def _stream_cases() -> list[tuple[str, bool]]:
    cases = []
    for path in sorted(FIXTURES.glob("stream_*.openai*.sse")):
        case, _, rest = path.name.removeprefix("stream_").partition(".openai")
        cases.append((case, rest == ".usage.sse"))
    return cases


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases())
def test_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    for event in _events(f"stream_{case}.gemini.sse"):
        if b'"error"' not in event.data:  # the fixture events are real Gemini answers
            types.GenerateContentResponse.model_validate_json(event.data)
    _, chunks = _run_stream(f"stream_{case}.gemini.sse", include_usage)
    suffix = ".openai.usage.sse" if include_usage else ".openai.sse"
    expected = [json.loads(event.data) for event in _events(f"stream_{case}{suffix}")]
    assert chunks == expected
    _assert_valid_chunks(chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_recorded_whether_or_not_the_client_asked(include_usage: bool) -> None:
    stream, chunks = _run_stream("stream_thinking.gemini.sse", include_usage)
    assert stream.finished
    assert stream.usage == {"prompt_tokens": 9, "completion_tokens": 38, "total_tokens": 47,
                            "prompt_tokens_details": {"cached_tokens": 0},
                            "completion_tokens_details": {"reasoning_tokens": 36}}
    assert all(("usage" in chunk) == include_usage for chunk in chunks)


def test_function_calls_arrive_as_whole_tool_call_deltas() -> None:
    _, chunks = _run_stream("stream_tool_calls.gemini.sse", include_usage=False)
    calls = [call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", ())]
    assert [(call["index"], call["function"]["name"], json.loads(call["function"]["arguments"])) for call in calls] == [
        (0, "get_weather", {"city": "Paris", "unit": "c"}), (1, "get_weather", {"city": "Oslo"}), (2, "get_time", {})]
    assert all(call["id"].startswith(f"call_{call['index']}_") for call in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_mid_stream_error_ends_the_stream_without_finishing_it() -> None:
    stream, chunks = _run_stream("stream_error_mid_stream.gemini.sse", include_usage=True)
    assert chunks[-1]["error"]["code"] == "UNAVAILABLE"
    assert not stream.finished
    assert stream.feed(None, orjson.dumps(_load("response_text.gemini.json"))) == []
    assert stream.finish() == []
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 10


@pytest.mark.parametrize("case", _load("stream_errors.json"), ids=lambda case: case["status"])
def test_stream_error_status_gives_the_error_type(case: dict) -> None:
    stream = gemini.ChatStream(MODEL, CREATED, include_usage=False)
    (error,) = stream.feed(None, orjson.dumps({"error": {"code": 0, "message": "m", "status": case["status"]}}))
    assert error["error"]["type"] == case["expected_type"]
    assert_error_envelope(error)


def test_stream_cut_before_the_finish_reason_reports_an_error() -> None:
    stream, chunks = _run_stream("stream_cut_early.gemini.sse", include_usage=False)
    assert not stream.finished
    assert "ended before its last candidate finished" in chunks[-1]["error"]["message"]


def test_malformed_stream_event_is_an_error() -> None:
    stream = gemini.ChatStream(MODEL, CREATED, include_usage=False)
    chunks = stream.feed(None, b"{not json")
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert stream.finish() == []


def test_empty_stream_is_an_error() -> None:
    stream = gemini.ChatStream(MODEL, CREATED, include_usage=True)
    (error,) = stream.finish()
    assert_error_envelope(error)
    assert not stream.finished


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_error_response_maps_status_and_body(case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = gemini.error_response(case["status"], body)
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


def test_error_messages_do_not_echo_unrecognised_bodies() -> None:
    _, error = gemini.error_response(502, b"proxy: x-goog-api-key AIzaSyD-SECRET was rejected")
    assert "AIza" not in error["error"]["message"]


# --- embeddings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("embeddings_cases.json"), ids=lambda case: case["name"])
def test_embeddings_request(case: dict) -> None:
    pydantic.TypeAdapter(embedding_create_params.EmbeddingCreateParams).validate_python(case["body"])
    backend = VERTEX if case["vertex"] else AI_STUDIO
    translated = gemini.embeddings_request(case["body"], "text-embedding-004", backend)
    assert translated == case["expected"]
    if not case["vertex"]:
        for request in translated["requests"]:
            types.Content.model_validate(request["content"])


@pytest.mark.parametrize("case", ["ai_studio", "vertex"])
def test_embeddings_response(case: str) -> None:
    translated = gemini.embeddings_response(_load(f"embeddings_response_{case}.gemini.json"), "text-embedding-004")
    assert translated == _load(f"embeddings_response_{case}.openai.json")
    CreateEmbeddingResponse.model_validate(translated)


def test_every_openai_embeddings_field_has_a_rule() -> None:
    assert set(typing.get_type_hints(embedding_create_params.EmbeddingCreateParams)) == set(gemini.EMBEDDING_FIELDS)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "e", "input": [[1, 2, 3]]}, "input"),
    ({"model": "e", "input": ""}, "input"),
    ({"model": "e", "input": "x", "task_type": "RETRIEVAL_QUERY"}, "task_type"),
    ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
])
def test_untranslatable_embeddings_request_is_refused(body: dict, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        gemini.embeddings_request(body, "text-embedding-004", AI_STUDIO)
    assert refused.value.param == param
