"""Guardrails that hold, through the real Envoy (issue 19): a find the model streams over several chunks is redacted
before any of it reaches the client (OpenAI chat, a native Responses stream, an untranslated Anthropic stream),
streamed tool arguments are seen by block rules, evasions by separators and invisible characters are caught, and
reasoning is checked.

The demo providers stream text word by word (a card's four groups arrive as four chunks) and tool arguments in four
fragments (the first enum value of each parameter, so a test puts an email or a phrase there). The routes guard
answers only (but one, for requests), so what the model says is what the test wrote.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import orjson
import pytest

from .gateways import Gateway, GatewayBuilder

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"
PII = {"name": "pii", "pii": ["email", "card"], "mode": "redact", "apply_to": ["response"]}
ORION_IN = {"name": "no-orion-in", "deny_words": ["project orion"]}
ORION_OUT = {"name": "no-orion", "deny_words": ["project orion"], "apply_to": ["response"]}
TOOL_NAME = "lookupsecret"
HIDDEN = {"name": "hidden-tool", "deny_words": [TOOL_NAME], "mode": "redact", "apply_to": ["response"]}


def _tool(value: str) -> dict:
    return {"type": "function", "function": {"name": "send", "parameters": {
        "type": "object", "properties": {"to": {"type": "string", "enum": [value]}}, "required": ["to"]}}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("guardrail-evasions"),
                        backend_defaults={"outlier_detection": None}) as build:
        build.backend("oa", build.demo("ev-openai"))
        build.backend("an", build.demo("ev-anthropic", "anthropic"))
        build.route("answers", ("oa", "gpt-4o-mini"), guardrails=[PII, ORION_OUT])
        build.route("guarded", ("oa", "gpt-4o-mini"), guardrails=[ORION_IN])
        build.route("claude-answers", ("an", "claude-sonnet-4-5"), guardrails=[PII, ORION_OUT, HIDDEN])
        build.key("k")
        yield build.start()


def _chat_stream(client: openai.OpenAI, **request: object) -> list:
    return list(client.chat.completions.create(stream=True, **request))  # type: ignore[call-overload]


def test_a_card_streamed_over_four_chunks_is_redacted_in_chat_responses_and_anthropic_streams(
        gateway: Gateway) -> None:
    said = f"card {CARD} thanks"
    client = gateway.client()
    chunks = _chat_stream(client, model="answers", messages=[{"role": "user", "content": said}])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "[REDACTED:CARD]" in text and "1111" not in text and text.endswith("thanks")
    events = list(client.responses.create(model="answers", input=said, stream=True))  # native passthrough
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "[REDACTED:CARD]" in streamed and "1111" not in streamed
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == streamed
    claude = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)
    with claude.messages.stream(model="claude-answers", max_tokens=300,
                                messages=[{"role": "user", "content": said}]) as stream:  # untranslated
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "[REDACTED:CARD]" in text and "1111" not in text and final.content[0].text == text


def test_an_email_split_across_streamed_tool_arguments_is_redacted(gateway: Gateway) -> None:
    chunks = _chat_stream(gateway.client(), model="answers", tools=[_tool(EMAIL)],
                          messages=[{"role": "user", "content": "send it"}])
    fragments = [call.function.arguments for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()
                 if call.function and call.function.arguments]
    assert orjson.loads("".join(fragments)) == {"to": "[REDACTED:EMAIL]"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_streamed_tool_arguments_with_a_blocked_phrase_end_the_stream_before_it_goes_out(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(model="answers", tools=[_tool("status of project orion")],
                                                      messages=[{"role": "user", "content": "send it"}], stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="no-orion"):
        for chunk in stream:
            seen += [call.function.arguments or "" for c in chunk.choices for call in c.delta.tool_calls or ()
                     if call.function]
    assert "orion" not in "".join(seen)


@pytest.mark.parametrize("said", ["status of project\u200b orion?", "status of project  orion?",
                                  "status of PROJECT\u00a0ORION?"], ids=["zero-width", "double-space", "nbsp"])
def test_an_evasion_of_a_deny_phrase_is_blocked(gateway: Gateway, said: str) -> None:
    gateway.clear_provider_requests("ev-openai")
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().chat.completions.create(model="guarded", messages=[{"role": "user", "content": said}])
    assert refused.value.body["code"] == "guardrail_blocked"  # type: ignore[index]
    assert "'no-orion-in'" in refused.value.body["message"]  # type: ignore[index]
    assert gateway.provider_requests("ev-openai") == []


def test_reasoning_is_redacted_whole_and_streamed(gateway: Gateway) -> None:
    client = gateway.client()
    tools = [{"type": "function", "function": {"name": TOOL_NAME, "parameters": {"type": "object"}}}]
    request = {"model": "claude-answers", "reasoning_effort": "low", "tools": tools,
               "messages": [{"role": "user", "content": "look it up"}]}
    answer = client.chat.completions.create(**request)  # type: ignore[call-overload]
    reasoning = answer.choices[0].message.model_extra["reasoning_content"]
    assert "[REDACTED:DENY]" in reasoning and TOOL_NAME not in reasoning
    assert answer.choices[0].message.tool_calls[0].function.name == TOOL_NAME  # names are not text
    chunks = _chat_stream(client, **request)
    streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks
                       if c.choices)
    assert "[REDACTED:DENY]" in streamed and TOOL_NAME not in streamed
    claude = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)
    with claude.messages.stream(model="claude-answers", max_tokens=3000,
                                thinking={"type": "enabled", "budget_tokens": 1024},
                                tools=[{"name": TOOL_NAME, "input_schema": {"type": "object"}}],
                                messages=[{"role": "user", "content": "look it up"}]) as stream:
        final = stream.get_final_message()
    thinking = next(block for block in final.content if block.type == "thinking")
    assert "[REDACTED:DENY]" in thinking.thinking and TOOL_NAME not in thinking.thinking
