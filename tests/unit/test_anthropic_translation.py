"""OpenAI <-> Anthropic: what only the Anthropic translation does.

The golden pairs in tests/fixtures/anthropic/ (requests validated against the `anthropic` SDK's types, answers,
streams, field rules, stop reasons, errors) are checked by tests/unit/test_goldens.py; here are Anthropic's own
mappings: temperature range, extended thinking and its budget, hoisted system prompts, alternating turns, and the tool
calls that must survive a round trip.
"""

from __future__ import annotations

import itertools
import json

import pytest

from ext_proc.providers import anthropic
from tests.unit.goldens import ANTHROPIC, BASE_BODY, CREATED, DEFAULT_MAX_TOKENS, assert_valid_anthropic_request
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
