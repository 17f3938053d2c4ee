"""OpenAI <-> Gemini: what only the Gemini translation does.

The golden pairs in tests/fixtures/gemini/ (requests parsed with google-genai's types and written again by the SDK's
own request converters for AI Studio and Vertex, answers and stream events parsed as `GenerateContentResponse`, field
rules, finish reasons, errors) are checked by tests/unit/test_goldens.py; here are Gemini's own mappings: thinking
budgets, alternating turns, thought signatures (and the sentinel Gemini 3 wants on replayed calls), tool-call ids
that streamed and unstreamed answers share, AI Studio and Vertex paths, error statuses inside a stream, and
embeddings.
"""

from __future__ import annotations

import json
import typing

import orjson
import pydantic
import pytest
from google.genai import types
from openai.types import CreateEmbeddingResponse, embedding_create_params

from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import gemini
from ext_proc.streaming.sse import SSEEvent
from tests.unit.goldens import BASE_BODY, CREATED, GEMINI, assert_valid_gemini_request
from tests.unit.provider_checks import assert_error_envelope, feed_stream

MODEL = GEMINI.model
SIGNATURE = "Epr+/xKa/v8Smv7/Epr+/xKa/v8Smv7/Z2VtaW5pLXRob3VnaHQtc2lnbmF0dXJlLys="

AI_STUDIO = Backend.model_validate({"id": "studio", "schema": "gemini"})
VERTEX = Backend.model_validate({"id": "vertex", "schema": "vertex-gemini",
                                 "gcp": {"project": "my-project", "location": "europe-west4"}})

_load = GEMINI.fixtures.load


DEFAULT_LIMIT = 4096
"""`requests.default_max_tokens`: what the gateway reserves, and sends, when the client sets no output limit."""


def _translate(body: dict, model: str = MODEL) -> dict:
    return gemini.chat_request(body, model, default_max_tokens=DEFAULT_LIMIT)


# --- requests ------------------------------------------------------------------------------------------------------


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
    assert translated["generationConfig"] == {"thinkingConfig": expected, "maxOutputTokens": DEFAULT_LIMIT}
    assert_valid_gemini_request(translated)


def test_max_completion_tokens_wins_and_the_reserved_default_is_sent_without_one() -> None:
    """Gemini's own default is the model's limit: without the client's, the limit the gateway reserved for goes."""
    assert _translate({**BASE_BODY, "max_tokens": 10, "max_completion_tokens": 20})["generationConfig"] == {
        "maxOutputTokens": 20}
    assert _translate(BASE_BODY)["generationConfig"] == {"maxOutputTokens": DEFAULT_LIMIT}


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
    assert_valid_gemini_request(translated)
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
    assert_valid_gemini_request(translated)
    assert translated["contents"][1]["parts"] == answer["candidates"][0]["content"]["parts"]
    assert [part["functionResponse"]["name"] for part in translated["contents"][2]["parts"]] == ["get_weather"] * 2


def test_streamed_and_unstreamed_answers_get_the_same_tool_call_ids() -> None:
    answer = _load("response_parallel_tool_calls.gemini.json")
    unstreamed = gemini.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]["tool_calls"]
    chunks = feed_stream(gemini.ChatStream(MODEL, CREATED, False), [SSEEvent(None, orjson.dumps(answer))])
    streamed = [call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", ())]
    assert [call["id"] for call in streamed] == [call["id"] for call in unstreamed]
    assert len({call["id"] for call in unstreamed}) == 2


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


# --- responses and streams -----------------------------------------------------------------------------------------


def test_usage_counts_thoughts_as_completion_and_cached_as_prompt() -> None:
    assert gemini.usage_of(_load("response_thinking_cached.gemini.json")) == {
        "prompt_tokens": 2100, "completion_tokens": 57, "total_tokens": 2157,
        "prompt_tokens_details": {"cached_tokens": 2048}, "completion_tokens_details": {"reasoning_tokens": 50}}


def test_function_calls_arrive_as_whole_tool_call_deltas() -> None:
    _, chunks = GEMINI.run_stream("tool_calls", include_usage=False)
    calls = [call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", ())]
    assert [(call["index"], call["function"]["name"], json.loads(call["function"]["arguments"])) for call in calls] == [
        (0, "get_weather", {"city": "Paris", "unit": "c"}), (1, "get_weather", {"city": "Oslo"}), (2, "get_time", {})]
    assert all(call["id"].startswith(f"call_{call['index']}_") for call in calls)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("case", _load("stream_errors.json"), ids=lambda case: case["status"])
def test_stream_error_status_gives_the_error_type(case: dict) -> None:
    stream = gemini.ChatStream(MODEL, CREATED, include_usage=False)
    (error,) = stream.feed(None, orjson.dumps({"error": {"code": 0, "message": "m", "status": case["status"]}}))
    assert error["error"]["type"] == case["expected_type"]
    assert_error_envelope(error)


def test_empty_stream_is_an_error() -> None:
    stream = gemini.ChatStream(MODEL, CREATED, include_usage=True)
    (error,) = stream.finish()
    assert_error_envelope(error)
    assert not stream.finished


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


@pytest.mark.parametrize("case", ["ai_studio", "ai_studio_usage", "vertex"])
def test_embeddings_response(case: str) -> None:
    answer = _load(f"embeddings_response_{case}.gemini.json")
    if case.startswith("ai_studio"):
        types.EmbedContentResponse.model_validate(answer)  # what google-genai reads from batchEmbedContents
    translated = gemini.embeddings_response(answer, "text-embedding-004")
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
