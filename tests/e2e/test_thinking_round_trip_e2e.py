"""Thinking with tools across turns, through the gateway to Claude on each Anthropic-family schema (the demo providers
enforce the real rule: with thinking on, the tool-use turn sent back must start with its signed thinking block).

Anthropic-format clients (the anthropic SDK, via `/anthropic`) send the blocks back as the API gave them; OpenAI-format
clients (the openai SDK) get them in the message's `thinking_blocks` and send that back. Every request that reaches a
demo provider is validated against the anthropic SDK's request types.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.unit.goldens import (
    assert_valid_anthropic_request,
    assert_valid_invoke_body,
    assert_valid_vertex_anthropic_request,
)

from .gateways import Gateway, GatewayBuilder

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OPENAI_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
ROUTES = {  # route -> (demo handle, schema, backend model, validator of what the demo received)
    "t-anthropic": ("anthropic", "anthropic", "claude-sonnet-4-5-20250929", assert_valid_anthropic_request),
    "t-bedrock-claude": ("bedrock", "bedrock-anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0",
                         assert_valid_invoke_body),
    "t-vertex-claude": ("vertex", "vertex-anthropic", "claude-sonnet-4-5@20250929",
                        assert_valid_vertex_anthropic_request),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("thinking")) as build:
        demos = {kind: build.demo(kind, kind, name=f"think-{kind}") for kind in ("anthropic", "bedrock", "vertex")}
        for route, (demo, schema, model, _) in ROUTES.items():
            build.backend(route, demos[demo], schema)
            build.route(route, (route, model))
        build.key("thinking")
        yield build.start()


def _assert_sent_valid(gateway: Gateway, route: str) -> dict:
    demo, _, _, valid = ROUTES[route]
    body: dict = gateway.last_request(demo)["body"]
    valid(body)
    return body


@pytest.mark.parametrize("route", list(ROUTES))
def test_anthropic_sdk_thinking_tool_loop(gateway: Gateway, route: str) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)
    ask = {"role": "user", "content": "Weather in Rome?"}
    with claude.messages.stream(model=route, max_tokens=8192, thinking={"type": "enabled", "budget_tokens": 2048},
                                tools=[WEATHER], messages=[ask]) as stream:
        first = stream.get_final_message()
    _assert_sent_valid(gateway, route)
    assert [block.type for block in first.content] == ["thinking", "tool_use"]
    assert first.content[0].signature  # type: ignore[union-attr]
    call_id = first.content[1].id  # type: ignore[union-attr]
    replayed = [block.model_dump(exclude_none=True) for block in first.content]
    result = {"type": "tool_result", "tool_use_id": call_id, "content": "30 degrees"}
    second = claude.messages.create(
        model=route, max_tokens=8192, thinking={"type": "enabled", "budget_tokens": 2048}, tools=[WEATHER],
        messages=[ask, {"role": "assistant", "content": replayed}, {"role": "user", "content": [result]}])
    sent = _assert_sent_valid(gateway, route)
    assert sent["messages"][1]["content"][0] == first.content[0].model_dump(exclude_none=True)
    assert "30 degrees" in second.content[-1].text  # type: ignore[union-attr]


@pytest.mark.parametrize("route", list(ROUTES))
def test_openai_sdk_sends_thinking_blocks_back(gateway: Gateway, route: str) -> None:
    client: openai.OpenAI = gateway.client()
    ask = {"role": "user", "content": "Weather in Rome?"}
    first = client.chat.completions.create(model=route, reasoning_effort="low", tools=[OPENAI_WEATHER],
                                           messages=[ask]).choices[0].message
    blocks = (first.model_extra or {}).get("thinking_blocks")
    assert first.tool_calls and blocks and blocks[0]["signature"]
    assert first.model_extra and first.model_extra["reasoning_content"] == blocks[0]["thinking"]
    assistant = {"role": "assistant", "content": None, "thinking_blocks": blocks,
                 "tool_calls": [call.model_dump() for call in first.tool_calls]}
    result = {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "30 degrees"}
    second = client.chat.completions.create(model=route, reasoning_effort="low", tools=[OPENAI_WEATHER],
                                            messages=[ask, assistant, result])  # type: ignore[list-item]
    _assert_sent_valid(gateway, route)
    assert "30 degrees" in (second.choices[0].message.content or "")
    without = {key: value for key, value in assistant.items() if key != "thinking_blocks"}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=route, reasoning_effort="low", tools=[OPENAI_WEATHER],
                                       messages=[ask, without, result])  # type: ignore[list-item]
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in str(refused.value)


def test_openai_sdk_streams_the_signed_block(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="t-anthropic", reasoning_effort="low", stream=True, messages=[{"role": "user", "content": "hi"}])
    blocks = [block for chunk in stream for choice in chunk.choices
              for block in (choice.delta.model_extra or {}).get("thinking_blocks") or ()]
    assert len(blocks) == 1 and blocks[0]["type"] == "thinking" and blocks[0]["signature"]
