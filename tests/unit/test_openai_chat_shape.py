"""The route stage's check of an OpenAI chat request's JSON types: a wrong type is a 400 naming the field (these are
the shapes the fuzzer once got 502s with), and every well-formed request passes untouched."""

from __future__ import annotations

import copy

import pytest

from ext_proc.client_formats.openai_chat import check_chat_shape
from ext_proc.errors import BadRequest

VALID = {
    "model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.2, "top_p": 1,
    "max_tokens": 64, "n": 1, "seed": 7, "stop": ["END"], "user": "u-1", "metadata": {"a": "b"},
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "strict": True,
                                                "parameters": {"type": "object"}}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
    "reasoning_effort": "low", "service_tier": "auto",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ],
}


def test_a_well_formed_request_passes_unchanged() -> None:
    body = copy.deepcopy(VALID)
    check_chat_shape(body)
    assert body == VALID
    for choice in ("none", "auto", "required"):
        check_chat_shape({**VALID, "tool_choice": choice, "stop": "END"})


@pytest.mark.parametrize(("change", "param"), [
    ({"stream_options": "x"}, "stream_options"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"stop": 1.5}, "stop"),
    ({"stop": True}, "stop"),
    ({"stop": ["a", 2]}, "stop[1]"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": False}, "temperature"),
    ({"service_tier": {}}, "service_tier"),
    ({"reasoning_effort": -1.0}, "reasoning_effort"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "function", "function": 1}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
    ({"tool_choice": "redacted_thinking"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": "x"}}, "tool_choice.function"),
    ({"tool_choice": {"type": "function", "function": {"name": ["f"]}}}, "tool_choice.function.name"),
    ({"response_format": {"type": []}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0]"),
])
def test_a_wrong_type_is_a_400_naming_the_field(change: dict, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_chat_shape({**copy.deepcopy(VALID), **change})
    assert refused.value.param == param and refused.value.status == 400


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "assistant", "tool_calls": True}, "messages[0].tool_calls"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "function": "call_1"}]}, "messages[0].tool_calls[0].function"),
    ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"role": "user", "content": 5}, "messages[0].content"),
    ({"role": "user", "content": [{"type": []}]}, "messages[0].content[0]"),
    ({"role": "user", "content": [{"type": "text", "text": {}}]}, "messages[0].content[0].text"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": 1}}]},
     "messages[0].content[0].image_url.url"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": []}}]},
     "messages[0].content[0].input_audio.format"),
    ({"role": "tool", "tool_call_id": ["x"], "content": "y"}, "messages[0].tool_call_id"),
])
def test_a_wrong_type_inside_a_message_names_its_path(message: dict, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_chat_shape({"model": "m", "messages": [message]})
    assert refused.value.param == param
