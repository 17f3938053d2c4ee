"""OpenAI <-> Cohere v2: what only the Cohere translation does.

The golden pairs in tests/fixtures/cohere/ (requests validated strictly against the `cohere` SDK's own types,
answers, streams, field rules, finish reasons, errors) are checked by tests/unit/test_goldens.py; here are Cohere's
own mappings: sampling ranges, thinking budgets, the joined system message, usage from billed units, tool plans that
survive a round trip, and embeddings (`POST /v2/embed`, validated against the SDK's `embed` parameters).
"""

from __future__ import annotations

import base64
import json
import struct

import pytest
from cohere.types import EmbedByTypeResponse
from openai.types import CreateEmbeddingResponse

from ext_proc.errors import BadRequest
from ext_proc.providers import cohere
from tests.unit.goldens import (
    BASE_BODY,
    COHERE,
    COHERE_EMBED_PARAMS,
    CREATED,
    DEFAULT_MAX_TOKENS,
    assert_valid_cohere_request,
)
from tests.unit.provider_checks import streamed_text, streamed_tool_calls

MODEL = COHERE.model
EMBED_MODEL = "embed-v4.0"
_load, _cases, _translate = COHERE.fixtures.load, COHERE.fixtures.cases, COHERE.translate


# --- requests ------------------------------------------------------------------------------------------------------


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
    assert_valid_cohere_request(translated)


def test_max_completion_tokens_wins_and_the_reserved_default_is_sent_without_one() -> None:
    """Cohere's own default is the model's limit: without the client's, the limit the gateway reserved for goes."""
    assert _translate({**BASE_BODY, "max_tokens": 10, "max_completion_tokens": 20})["max_tokens"] == 20
    assert _translate({**BASE_BODY, "max_tokens": 10})["max_tokens"] == 10
    assert _translate(BASE_BODY)["max_tokens"] == DEFAULT_MAX_TOKENS


def test_system_messages_are_joined_into_one_leading_message() -> None:
    translated = _translate({**BASE_BODY, "messages": [
        {"role": "user", "content": "a"}, {"role": "system", "content": "one"},
        {"role": "assistant", "content": "b"}, {"role": "developer", "content": "two"},
        {"role": "user", "content": "c"}]})
    assert translated["messages"][0] == {"role": "system", "content": "one\n\ntwo"}
    assert [message["role"] for message in translated["messages"]] == ["system", "user", "assistant", "user"]


def test_wire_constants() -> None:
    assert cohere.SCHEMA == "cohere"
    assert cohere.chat_path(MODEL, True) == cohere.chat_path(MODEL, False) == "/v2/chat"
    assert cohere.embeddings_path(EMBED_MODEL) == "/v2/embed"
    assert cohere.CohereTranslator.serves_embeddings


# --- responses and streams -----------------------------------------------------------------------------------------


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
    assert_valid_cohere_request(translated)
    assert translated["messages"][1] == {"role": "assistant", **{k: v for k, v in answer["message"].items()
                                                                 if k != "role"}}
    assert [m["tool_call_id"] for m in translated["messages"][2:]] == [c["id"] for c in answer["message"]["tool_calls"]]


def test_tool_call_arguments_stream_in_fragments() -> None:
    _, chunks = COHERE.run_stream("tool_calls", include_usage=True)
    calls = streamed_tool_calls(chunks)
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("get_weather_p1t92w7gfgq7", "get_weather", {"location": "Madrid"}),
        ("get_weather_ay6nmvjgp9vn", "get_weather", {"location": "Brasilia"}),
        ("get_time_x9k2m4n6p8q0", "get_time", {}),
    ]
    assert calls[0]["pieces"] > 2, "arguments arrive in several fragments"
    assert streamed_text(chunks) == "I will check Madrid and Brasilia."
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


# --- embeddings ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("embed_request_", ".openai.json"))
def test_embeddings_request_translates_to_golden_embed_request(case: str) -> None:
    translated = cohere.embeddings_request(_load(f"embed_request_{case}.openai.json"), EMBED_MODEL)
    assert translated == _load(f"embed_request_{case}.cohere.json")
    assert_valid_cohere_request(translated, COHERE_EMBED_PARAMS)


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
