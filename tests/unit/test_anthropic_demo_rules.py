"""The demo Anthropic provider keeps the rules of the real Messages API that agents trip over, on every door it is
served through (Anthropic's `/v1/messages`, Bedrock's InvokeModel, Vertex's rawPredict): with thinking on, answers
start with a signed thinking block, a tool turn sent back without its thinking block is the real 400, and a replayed
signature must be one the demo issued. Structured output answers fit the schema.
"""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from anthropic.types import Message

from ext_proc.demo import anthropic_server, bedrock_server, gemini_server
from ext_proc.demo.answers import Call, Reply
from ext_proc.streaming.eventstream import EventStreamDecoder
from ext_proc.streaming.sse import SSEDecoder

MODEL = "claude-sonnet-4-5-20250929"
WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                                    "required": ["city"]}}
THINKING = {"type": "enabled", "budget_tokens": 1024}
RULE = ("messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` "
        "is enabled, a final `assistant` message must start with a thinking block")


def _anthropic(body: dict) -> Reply:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    return anthropic_server.answer(Call("demo-anthropic", "POST", "/v1/messages", headers, body, None))


def _bedrock(body: dict) -> Reply:
    path = f"/model/anthropic.{MODEL}-v1:0/invoke"
    return bedrock_server.answer(Call("demo-bedrock", "POST", path, {"authorization": "Bearer k"},
                                      {"anthropic_version": "bedrock-2023-05-31", **body}, None))


def _vertex(body: dict) -> Reply:
    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    return gemini_server.answer(Call("demo-vertex", "POST", path, {"authorization": "Bearer k"},
                                     {"anthropic_version": "vertex-2023-10-16", **body}, None))


def _message(body: dict) -> dict:
    reply = _anthropic({"model": MODEL, "max_tokens": 4096, **body})
    assert reply.status == 200, reply.body
    message: dict = orjson.loads(reply.body)
    Message.model_validate(message)
    return message


def _tool_turn(first_turn: dict, thinking: dict | None = THINKING) -> dict:
    """The follow-up request of an agent loop: the answer's content sent back, with a result for its tool call."""
    use = next(block for block in first_turn["content"] if block["type"] == "tool_use")
    body: dict = {"max_tokens": 4096, "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": first_turn["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "18C"}]}]}
    return {**body, "thinking": thinking} if thinking else body


def test_answers_with_thinking_on_start_with_a_signed_thinking_block() -> None:
    message = _message({"thinking": THINKING, "tools": [WEATHER],
                        "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    first = message["content"][0]
    assert first["type"] == "thinking"
    assert first["signature"] == anthropic_server.thinking_signature(first["thinking"])
    assert message["content"][1]["type"] == "tool_use"


def test_adaptive_thinking_counts_as_thinking_on() -> None:
    message = _message({"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"},
                        "messages": [{"role": "user", "content": "hi"}]})
    assert [block["type"] for block in message["content"]] == ["thinking", "text"]


def test_the_thinking_blocks_sent_back_complete_the_tool_loop() -> None:
    first = _message({"thinking": THINKING, "tools": [WEATHER],
                      "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    second = _message(_tool_turn(first))
    assert second["content"][-1]["type"] == "text"


@pytest.mark.parametrize("door", [_anthropic, _bedrock, _vertex], ids=["anthropic", "bedrock", "vertex"])
def test_a_tool_turn_without_its_thinking_block_is_the_real_400(door: object) -> None:
    first = _message({"thinking": THINKING, "tools": [WEATHER],
                      "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    without_thinking = {**first, "content": [block for block in first["content"] if block["type"] != "thinking"]}
    body = _tool_turn(without_thinking)
    if door is _anthropic:
        body["model"] = MODEL
    reply = door(body)  # type: ignore[operator]
    assert reply.status == 400
    error = orjson.loads(reply.body)
    assert RULE in (error.get("error") or {}).get("message", error.get("message", ""))


def test_without_thinking_the_same_turn_is_fine() -> None:
    first = _message({"tools": [WEATHER], "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert _message(_tool_turn(first, thinking=None))["content"][0]["type"] == "text"


def test_a_replayed_thinking_block_must_carry_the_demos_signature() -> None:
    first = _message({"thinking": THINKING, "tools": [WEATHER],
                      "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    first["content"][0] = {**first["content"][0], "signature": base64.b64encode(b"forged").decode()}
    reply = _anthropic({"model": MODEL, **_tool_turn(first)})
    assert reply.status == 400
    assert "Invalid `signature` in `thinking` block" in orjson.loads(reply.body)["error"]["message"]


def test_streamed_thinking_arrives_as_thinking_deltas_and_one_signature_delta() -> None:
    reply = _anthropic({"model": MODEL, "max_tokens": 4096, "thinking": THINKING, "stream": True,
                        "messages": [{"role": "user", "content": "hi"}]})
    decoder = SSEDecoder()
    events = [json.loads(event.data) for raw in reply.events or () for event in decoder.feed(raw)]
    deltas = [event["delta"] for event in events if event["type"] == "content_block_delta" and event["index"] == 0]
    thought = "".join(delta.get("thinking", "") for delta in deltas)
    assert [delta["type"] for delta in deltas][-1] == "signature_delta"
    assert [delta for delta in deltas if delta["type"] == "signature_delta"] == [
        {"type": "signature_delta", "signature": anthropic_server.thinking_signature(thought)}]


def test_bedrock_stream_carries_the_signed_thinking_block() -> None:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4096, "thinking": THINKING,
            "messages": [{"role": "user", "content": "hi"}]}
    reply = bedrock_server.answer(Call("demo-bedrock", "POST", f"/model/anthropic.{MODEL}-v1:0/invoke-with-"
                                       "response-stream", {"authorization": "Bearer k"}, body, None))
    decoder = EventStreamDecoder()
    inner = [json.loads(base64.b64decode(json.loads(event.data)["bytes"]))
             for raw in reply.events or () for event in decoder.feed(raw)]
    assert any(event["type"] == "content_block_delta" and event["delta"]["type"] == "signature_delta"
               for event in inner)


def test_structured_output_answers_json_that_fits_the_schema() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
              "required": ["name", "born"], "additionalProperties": False}
    message = _message({"output_config": {"format": {"type": "json_schema", "schema": schema}},
                        "messages": [{"role": "user", "content": "Ada Lovelace, 1815"}]})
    assert set(json.loads(message["content"][0]["text"])) == {"name", "born"}


def test_thinking_budget_must_stay_below_max_tokens() -> None:
    reply = _anthropic({"model": MODEL, "max_tokens": 1024, "thinking": THINKING,
                        "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 400
    assert "budget_tokens" in orjson.loads(reply.body)["error"]["message"]


def test_thinking_with_a_forced_tool_is_refused() -> None:
    reply = _anthropic({"model": MODEL, "max_tokens": 4096, "thinking": THINKING, "tools": [WEATHER],
                        "tool_choice": {"type": "any"}, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 400
    message = orjson.loads(reply.body)["error"]["message"]
    assert message == "Thinking may not be enabled when tool_choice forces tool use."
