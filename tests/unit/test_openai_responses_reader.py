"""A native Responses API answer read back into the chat form (`providers/openai_responses.py`): the converter over
JSON answers, the event reader over streams (the demo provider's own, and hand-written sequences for what the demo
never sends: cut, failed, malformed streams). A stream read chunk by chunk must say what the converter says of the
response it ends with.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.demo import openai_server
from ext_proc.demo.answers import PARALLEL_TOOLS_HEADER, Call
from ext_proc.providers.openai_responses import ResponsesEventReader, chat_completion_from_response

MODEL = "gpt-4o-mini"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"input": "hello there"},
    "function tool": {"input": "weather?", "tools": [{"type": "function", "name": "get_weather",
                                                      "parameters": WEATHER}]},
    "namespaced tools": {"input": "look up", "tools": [{"type": "namespace", "name": "crm", "description": "CRM",
                                                        "tools": [{"type": "function", "name": "find"},
                                                                  {"type": "custom", "name": "lookup"}]}]},
    "reasoning": {"input": "think", "reasoning": {"effort": "low", "summary": "detailed"}},
    "truncated": {"input": " ".join(f"w{index}" for index in range(40)), "max_output_tokens": 16},
}


def _demo(body: dict[str, Any], stream: bool) -> Any:
    reply = openai_server.answer(Call("openai-d", "POST", "/v1/responses", {PARALLEL_TOOLS_HEADER: "2"},
                                      {"model": MODEL, **body, "stream": stream}, None))
    assert reply.status == 200, reply.body
    if not stream:
        return orjson.loads(reply.body)
    events = []
    for frame in reply.events or ():
        name, data = frame.decode().removesuffix("\n\n").split("\n")
        events.append((name.removeprefix("event: "), data.removeprefix("data: ").encode()))
    return events


def _read(events: list[tuple[str | None, bytes]], include_usage: bool = True,
          reader: ResponsesEventReader | None = None) -> tuple[ResponsesEventReader, list[dict[str, Any]]]:
    reader = reader or ResponsesEventReader("client-model", 1_700_000_000, include_usage)
    chunks = [chunk for name, data in events for chunk in reader.feed(name, data)]
    chunks += reader.finish()
    return reader, chunks


def _event(kind: str, **fields: Any) -> tuple[str, bytes]:
    return kind, orjson.dumps({"type": kind, **fields, "sequence_number": 0})


def _assembled(chunks: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """The message a chat client builds from the chunks (each checked to be an SDK chunk), and the finish reason."""
    message: dict[str, Any] = {"role": None, "content": None, "refusal": None}
    finish = None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        for choice in chunk["choices"]:
            delta = choice["delta"]
            finish = choice["finish_reason"] or finish
            message["role"] = delta.get("role") or message["role"]
            for key in ("content", "refusal", "reasoning_content"):
                if delta.get(key):
                    message[key] = (message.get(key) or "") + delta[key]
            for fragment in delta.get("tool_calls") or ():
                call = calls.setdefault(fragment["index"], {"id": None, "type": "function",
                                                            "function": {"name": "", "arguments": ""}})
                call["id"] = fragment.get("id") or call["id"]
                call["function"]["name"] += fragment["function"].get("name") or ""
                call["function"]["arguments"] += fragment["function"].get("arguments") or ""
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return message, finish


def _error(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    (chunk,) = chunks
    error: dict[str, Any] = chunk["error"]
    return error


# --- the converter ---------------------------------------------------------------------------------------------------

def test_text_answer_becomes_a_chat_completion_with_its_usage() -> None:
    response = _demo(REQUESTS["text"], stream=False)
    completion = chat_completion_from_response(response)
    ChatCompletion.model_validate(completion)
    choice = completion["choices"][0]
    assert choice["message"]["content"] == response["output"][0]["content"][0]["text"]
    assert choice["finish_reason"] == "stop"
    assert (completion["id"], completion["model"], completion["created"]) == (
        response["id"], MODEL, response["created_at"])
    usage = response["usage"]
    assert completion["usage"] == {
        "prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"], "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0}}


def test_function_calls_become_tool_calls_named_as_the_chat_form_names_them() -> None:
    response = _demo(REQUESTS["namespaced tools"], stream=False)
    completion = chat_completion_from_response(response)
    ChatCompletion.model_validate(completion)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    find, lookup = choice["message"]["tool_calls"]
    assert (find["id"], find["function"]["name"]) == (response["output"][0]["call_id"], "crm__find")
    assert orjson.loads(find["function"]["arguments"]) == {}
    assert lookup["function"] == {"name": "crm__lookup", "arguments": '{"input":"demo"}'}


def test_reasoning_summary_becomes_reasoning_content_and_tokens() -> None:
    response = _demo(REQUESTS["reasoning"], stream=False)
    completion = chat_completion_from_response(response)
    assert completion["choices"][0]["message"]["reasoning_content"] == response["output"][0]["summary"][0]["text"]
    assert completion["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_incomplete_answer_finishes_for_its_reason() -> None:
    response = _demo(REQUESTS["truncated"], stream=False)
    assert chat_completion_from_response(response)["choices"][0]["finish_reason"] == "length"
    filtered = {**response, "incomplete_details": {"reason": "content_filter"}}
    assert chat_completion_from_response(filtered)["choices"][0]["finish_reason"] == "content_filter"


def test_converter_joins_messages_refusals_and_reasoning_parts() -> None:
    completion = chat_completion_from_response({
        "id": "resp_1", "created_at": 5.5, "model": "m", "status": "completed", "output": [
            {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "one"},
                                                          {"type": "summary_text", "text": ""}],
             "content": [{"type": "reasoning_text", "text": "two"}], "encrypted_content": "opaque"},
            {"type": "message", "content": [{"type": "output_text", "text": "Hel", "annotations": []},
                                            {"type": "refusal", "refusal": "no"}]},
            {"type": "web_search_call", "id": "ws", "status": "completed"},
            {"type": "message", "content": [{"type": "output_text", "text": "lo"}]},
        ],
        "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2},
                  "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 17}})
    message = completion["choices"][0]["message"]
    assert (message["content"], message["refusal"], message["reasoning_content"]) == ("Hello", "no", "one\n\ntwo")
    assert completion["created"] == 5
    assert completion["usage"]["prompt_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 2}
    assert completion["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_converter_leaves_usage_out_when_there_is_none() -> None:
    completion = chat_completion_from_response({"id": "r", "status": "completed", "output": []})
    assert "usage" not in completion
    assert completion["choices"][0]["message"]["content"] is None


# --- the reader over the demo's streams ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_stream_says_what_the_converter_says_of_its_final_response(case: str) -> None:
    reader, chunks = _read(_demo(REQUESTS[case], stream=True))
    assert reader.finished
    assert reader.final_response is not None
    expected = chat_completion_from_response(reader.final_response)
    message, finish = _assembled(chunks)
    assert message == expected["choices"][0]["message"]
    assert finish == expected["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == reader.usage == expected["usage"]
    assert all(chunk["id"] == reader.final_response["id"] for chunk in chunks)
    assert chunks[0]["model"] == MODEL


def test_without_include_usage_there_is_no_usage_chunk_but_usage_is_known() -> None:
    reader, chunks = _read(_demo(REQUESTS["text"], stream=True), include_usage=False)
    assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks)
    assert reader.usage is not None
    assert reader.usage["completion_tokens"] > 0


def test_nothing_more_after_the_terminal_event() -> None:
    events = _demo(REQUESTS["text"], stream=True)
    reader, _ = _read(events)
    assert reader.feed(*events[4]) == []
    assert reader.finish() == []


# --- hand-written sequences --------------------------------------------------------------------------------------

RESPONSE = {"id": "resp_h", "object": "response", "created_at": 1, "model": "gpt-x", "status": "in_progress",
            "output": []}
USAGE = {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5}
OPENING = [_event("response.created", response=RESPONSE), _event("response.in_progress", response=RESPONSE)]


def test_a_stream_cut_before_its_terminal_event_is_an_error() -> None:
    reader, chunks = _read([*OPENING, _event("response.output_text.delta", item_id="m", output_index=0,
                                             content_index=0, delta="Hi", logprobs=[])])
    assert [chunk["choices"][0]["delta"] for chunk in chunks[:2]] == [{"role": "assistant", "content": ""},
                                                                       {"content": "Hi"}]
    error = chunks[2]["error"]
    assert error["type"] == "upstream_error"
    assert "ended before response.completed" in error["message"]
    assert reader.final_response is None
    assert not reader.finished


def test_failed_response_is_an_error_chunk_with_the_backend_message() -> None:
    failed = {**RESPONSE, "status": "failed", "usage": USAGE,
              "error": {"code": "server_error", "message": "The model had a problem."}}
    reader = ResponsesEventReader("m", 1, True)
    for event in OPENING:
        reader.feed(*event)
    error = _error(reader.feed(*_event("response.failed", response=failed)))
    assert (error["message"], error["code"], error["type"]) == ("The model had a problem.", "server_error",
                                                                "server_error")
    assert reader.final_response == failed
    assert reader.usage is not None
    assert reader.usage["total_tokens"] == 5
    assert reader.feed(*_event("response.completed", response=failed)) == []
    assert reader.finish() == []


def test_failed_response_without_a_message_is_the_gateway_error() -> None:
    reader = ResponsesEventReader("m", 1, False)
    error = _error(reader.feed(*_event("response.failed", response={**RESPONSE, "status": "failed", "error": None})))
    assert error["type"] == "upstream_error"


@pytest.mark.parametrize("event", [
    _event("error", code="rate_limit_exceeded", message="Slow down.", param=None),
    _event("error", error={"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Slow down."}),
])
def test_error_event_is_an_error_chunk_with_its_message(event: tuple[str, bytes]) -> None:
    reader = ResponsesEventReader("m", 1, True)
    error = _error(reader.feed(*event))
    assert (error["message"], error["code"], error["type"]) == ("Slow down.", "rate_limit_exceeded",
                                                                "rate_limit_error")
    assert reader.finish() == []


@pytest.mark.parametrize("event", [
    ("response.output_text.delta", b"not json"),
    ("response.output_text.delta", b"[1, 2]"),
    _event("response.output_text.delta", item_id="m", output_index=0, content_index=0, delta=5),
    _event("response.function_call_arguments.delta", item_id="fc_unknown", output_index=0, delta="{"),
    _event("response.completed"),
    _event("response.output_item.added", output_index=0, item={"type": "function_call", "name": "f"}),
    _event("error", message=None),
])
def test_malformed_event_is_the_gateway_error(event: tuple[str, bytes]) -> None:
    reader = ResponsesEventReader("m", 1, True)
    error = _error(reader.feed(*event))
    assert error["type"] == "upstream_error"
    assert reader.feed(*_event("response.completed", response=RESPONSE)) == []


def test_unknown_and_bookkeeping_events_make_no_chunks() -> None:
    reader = ResponsesEventReader("m", 1, True)
    for kind in ("response.web_search_call.searching", "response.content_part.added", "response.output_text.done",
                 "response.output_text.annotation.added", "keepalive"):
        assert reader.feed(*_event(kind, item_id="x", output_index=0)) == []


def test_function_call_without_deltas_sends_its_arguments_once() -> None:
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": ""}
    done = {**item, "arguments": '{"city":"Oslo"}', "status": "completed"}
    _, chunks = _read([
        *OPENING, _event("response.output_item.added", output_index=0, item=item),
        _event("response.function_call_arguments.done", item_id="fc_1", output_index=0, arguments=done["arguments"]),
        _event("response.output_item.done", output_index=0, item=done),
        _event("response.completed", response={**RESPONSE, "status": "completed", "output": [done], "usage": USAGE}),
    ])
    message, finish = _assembled(chunks)
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert finish == "tool_calls"


def test_custom_tool_input_streams_as_escaped_json_fragments() -> None:
    text = 'say "hi"\n\\ done'
    item = {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_9", "name": "shell", "input": "",
            "namespace": "ops"}
    done = {**item, "input": text}
    pieces = ['say "', 'hi"\n', "\\ done"]
    _, chunks = _read([
        *OPENING, _event("response.output_item.added", output_index=0, item=item),
        *[_event("response.custom_tool_call_input.delta", item_id="ctc_1", output_index=0, delta=piece)
          for piece in pieces],
        _event("response.custom_tool_call_input.done", item_id="ctc_1", output_index=0, input=text),
        _event("response.output_item.done", output_index=0, item=done),
        _event("response.completed", response={**RESPONSE, "status": "completed", "output": [done]}),
    ])
    message, _ = _assembled(chunks)
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "ops__shell"
    assert orjson.loads(call["function"]["arguments"]) == {"input": text}
    expected = chat_completion_from_response({"output": [done]})["choices"][0]["message"]["tool_calls"][0]
    assert call == expected


def test_reasoning_parts_are_separated_like_the_converter_separates_them() -> None:
    summary = [{"type": "summary_text", "text": "First."}, {"type": "summary_text", "text": "Second."}]
    item = {"type": "reasoning", "id": "rs_1", "summary": summary}
    deltas = [_event("response.reasoning_summary_text.delta", item_id="rs_1", output_index=0, summary_index=index,
                     delta=part["text"]) for index, part in enumerate(summary)]
    final = {**RESPONSE, "status": "completed", "output": [item]}
    _, chunks = _read([*OPENING, *deltas, _event("response.reasoning_text.delta", item_id="rs_1", output_index=0,
                                                 content_index=0, delta="Raw."),
                       _event("response.completed", response=final)])
    message, finish = _assembled(chunks)
    assert message["reasoning_content"] == "First.\n\nSecond.\n\nRaw."
    assert finish == "stop"


def test_refusal_deltas_become_refusal() -> None:
    _, chunks = _read([*OPENING, _event("response.refusal.delta", item_id="m", output_index=0, content_index=0,
                                        delta="I can't."),
                       _event("response.completed", response={**RESPONSE, "status": "completed"})])
    message, _ = _assembled(chunks)
    assert message["refusal"] == "I can't."


def test_incomplete_for_content_filter_finishes_so() -> None:
    final = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "content_filter"}}
    reader, chunks = _read([*OPENING, _event("response.incomplete", response=final)])
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert reader.final_response == final
    assert reader.usage is None
