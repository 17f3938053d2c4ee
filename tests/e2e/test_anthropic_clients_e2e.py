"""Anthropic-format clients (the official anthropic SDK) through `/anthropic/v1/messages` to any backend."""

from __future__ import annotations

import anthropic
import pytest

from .gateways import Gateway
from .support import fault

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)


@pytest.mark.parametrize(("model", "provider"), [("gpt-4o-mini", "openai-a"), ("claude-sonnet-4-5", "anthropic-a")])
def test_messages_create_reaches_any_backend(claude: anthropic.Anthropic, model: str, provider: str) -> None:
    message = claude.messages.create(model=model, max_tokens=200, system="Be brief.",
                                     messages=[{"role": "user", "content": "hello there"}])
    assert message.type == "message" and message.role == "assistant"
    assert provider in message.content[0].text and "hello there" in message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_messages_stream_accumulates_in_the_sdk(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": "stream to me"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "stream to me" in text
    assert final.content[0].text == text and final.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_tool_use_round_trip(claude: anthropic.Anthropic, model: str) -> None:
    first = claude.messages.create(model=model, max_tokens=300, tools=[WEATHER], tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "Weather in Rome?"}])
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and call.input["city"]
    second = claude.messages.create(model=model, max_tokens=300, tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "30 degrees"}]}])
    assert "30 degrees" in second.content[0].text


def test_streamed_tool_input_arrives_in_fragments(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="gpt-4o-mini", max_tokens=300, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "Weather in Oslo?"}]) as stream:
        fragments = [event.delta.partial_json for event in stream
                     if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert len(fragments) > 1
    assert final.content[-1].type == "tool_use" and final.content[-1].input["city"]


def test_errors_come_back_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as refused:  # no backend of this route takes top_k
        claude.messages.create(model="openai-pair", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_body={"top_k": 5})
    assert refused.value.body["type"] == "error"
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_headers=fault("anthropic-a:429,openai-a:429"))
    assert limited.value.body["error"]["type"] == "rate_limit_error"


def test_a_field_only_claude_takes_goes_to_the_chains_claude_backend(claude: anthropic.Anthropic) -> None:
    """`top_k` can't be expressed to the OpenAI primary; the Claude fallback takes the body as it is."""
    raw = claude.messages.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 5})
    assert raw.headers["x-babelgate-backend"] == "an" and raw.parse().type == "message"


def test_anthropic_client_fails_over_too(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}],
        extra_headers=fault("anthropic-a:503"))
    assert raw.headers["x-babelgate-backend"] == "oa"
    assert "openai-a" in raw.parse().content[0].text
