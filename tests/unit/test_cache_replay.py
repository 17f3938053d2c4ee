"""A cached answer's two directions: a streamed miss assembled whole from the bytes the client got, and a whole answer
replayed as the client format's stream, each checked against the official SDKs' types and against each other."""

from __future__ import annotations

import anthropic.types
import openai.types.chat
import openai.types.responses
import orjson
import pytest
from pydantic import TypeAdapter

from ext_proc.cache.assemble import ChatAssembler, MessagesAssembler
from ext_proc.cache.replay import chat_stream, messages_stream, responses_stream
from ext_proc.stages.response_cache import finished
from ext_proc.streaming.sse import SSEDecoder

CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": "Let me look.", "reasoning_content": "thinking it over",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup",
                                                                         "arguments": '{"city": "Paris"}'}},
                       {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}]}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}
MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig=="},
                {"type": "text", "text": "Here it is."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"city": "Paris", "days": [1, 2]}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 20, "output_tokens": 9},
}
RESPONSE = {
    "id": "resp_1", "object": "response", "created_at": 1700000000, "status": "completed", "model": "m",
    "error": None, "incomplete_details": None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
    "temperature": 0, "tool_choice": "auto", "tools": [], "top_p": 1,
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Hello there", "annotations": [], "logprobs": []}]},
        {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "lookup",
         "arguments": '{"city": "Paris"}', "status": "completed"},
    ],
    "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11,
              "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
              "output_tokens_details": {"reasoning_tokens": 2}},
}


def _events(body: bytes) -> list[tuple[str | None, dict]]:
    decoder = SSEDecoder()
    return [(e.event, orjson.loads(e.data)) for e in [*decoder.feed(body), *decoder.finish()] if e.data != b"[DONE]"]


def test_a_chat_completion_round_trips_through_its_stream() -> None:
    body = chat_stream(CHAT, include_usage=True)
    chunk_type = TypeAdapter(openai.types.chat.ChatCompletionChunk)
    for _, chunk in _events(body):
        chunk_type.validate_python(chunk)
    assert body.endswith(b"data: [DONE]\n\n")
    assembler = ChatAssembler(1 << 20)
    for position in range(0, len(body), 7):  # in pieces that cut events anywhere
        assembler.feed(body[position:position + 7])
    assert assembler.answer() == CHAT


def test_the_usage_chunk_is_only_replayed_when_asked_for() -> None:
    assert all("usage" not in chunk for _, chunk in _events(chat_stream(CHAT, include_usage=False)))
    assembler = ChatAssembler(1 << 20)
    assembler.feed(chat_stream(CHAT, include_usage=False))
    assert assembler.answer() == {**CHAT, "usage": None}


def test_a_message_round_trips_through_its_stream() -> None:
    body = messages_stream(MESSAGE)
    event_type = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    names = []
    for name, payload in _events(body):
        event_type.validate_python(payload)
        assert name == payload["type"]
        names.append(name)
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assembler = MessagesAssembler(1 << 20)
    assembler.feed(body)
    assert assembler.answer() == MESSAGE


def test_a_response_streams_as_typed_events_ending_with_it() -> None:
    events = _events(responses_stream(RESPONSE))
    event_type = TypeAdapter(openai.types.responses.ResponseStreamEvent)
    parsed = [event_type.validate_python(payload) for _, payload in events]
    assert [p.sequence_number for p in parsed] == list(range(len(parsed)))
    assert parsed[0].type == "response.created" and parsed[0].response.output == []
    assert parsed[-1].type == "response.completed" and events[-1][1]["response"] == RESPONSE
    deltas = "".join(p.delta for p in parsed if p.type == "response.output_text.delta")
    assert deltas == "Hello there"
    assert [p.arguments for p in parsed if p.type == "response.function_call_arguments.done"] == ['{"city": "Paris"}']
    assert len([p for p in parsed if p.type == "response.output_item.done"]) == 3


@pytest.mark.parametrize("stream", [
    b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}\n\n',
    chat_stream(CHAT, include_usage=True)[:-len(b"data: [DONE]\n\n")],
    b'data: {"error": {"message": "boom"}}\n\ndata: [DONE]\n\n',
    b"data: not json\n\n",
], ids=["no finish reason", "no [DONE]", "an error chunk", "not json"])
def test_a_stream_that_did_not_finish_assembles_to_nothing(stream: bytes) -> None:
    assembler = ChatAssembler(1 << 20)
    assembler.feed(stream)
    assert assembler.answer() is None


def test_an_answer_past_the_bound_is_not_held() -> None:
    body = chat_stream(CHAT, include_usage=True)
    assembler = ChatAssembler(len(body) - 1)
    assembler.feed(body)
    assert assembler.answer() is None


def test_a_message_stream_with_an_error_or_no_stop_assembles_to_nothing() -> None:
    body = messages_stream(MESSAGE)
    cut = MessagesAssembler(1 << 20)
    cut.feed(body[:body.index(b"event: message_stop")])
    failed = MessagesAssembler(1 << 20)
    failed.feed(body.replace(b"event: message_stop", b'event: error\ndata: {"type": "error"}\n\nevent: message_stop'))
    assert cut.answer() is None and failed.answer() is None


@pytest.mark.parametrize(("answer", "kept"), [
    (CHAT, True),
    ({**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": "length"}]}, False),
    ({**CHAT, "choices": []}, False),
    (MESSAGE, True),
    ({**MESSAGE, "stop_reason": "max_tokens"}, False),
    (RESPONSE, True),
    ({**RESPONSE, "status": "incomplete"}, False),
    ({**RESPONSE, "status": "failed", "error": {"code": "server_error"}}, False),
], ids=["chat", "chat cut by length", "chat without choices", "message", "message cut by max_tokens", "response",
        "incomplete response", "failed response"])
def test_only_finished_answers_are_kept(answer: dict, kept: bool) -> None:
    assert finished(answer) is kept
