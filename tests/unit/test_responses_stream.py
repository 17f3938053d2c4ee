"""Streamed answers for Responses API clients: `ResponsesStream` turns `chat.completion.chunk` dicts into the typed
Responses events, checked against golden files, the openai SDK's event types, and the SDK's own stream helper.

Fixtures (tests/fixtures/responses_client/): `stream_<case>.request.json` (the client's request) and
`stream_<case>.openai.jsonl` (one chunk dict a line) -> `stream_<case>.responses.jsonl` (one `[event, payload]` a
line: what `feed` and `finish` return).
"""

from __future__ import annotations

import functools
import json
import typing

import httpx2
import pydantic
import pytest
from openai.types.responses import (
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseStreamEvent,
)

from ext_proc.client_formats.responses_answer import client_view, from_openai
from ext_proc.client_formats.responses_common import decode_thinking
from ext_proc.client_formats.responses_stream import ResponsesStream
from ext_proc.streaming.sse import encode_event
from tests.unit.provider_checks import assert_no_undeclared_keys
from tests.unit.test_responses_answer import (
    CREATED,
    FIXTURES,
    RESPONSE_EXTENSIONS,
    RESPONSE_ID,
    assert_valid_response,
    count_ids_afresh,
    fixed_ids,
    sdk,
    sdk_params,
    sdk_view,
)

__all__ = ["fixed_ids"]  # the autouse fixture, shared with the answer tests

Event = tuple[str, dict]
CASES = FIXTURES.cases("stream_", ".openai.jsonl")
FAILED = {"error_mid_stream": "server_error", "error_before_start": "rate_limit_exceeded",
          "cut_early": "server_error", "interleaved_tool_calls": "server_error"}
INCOMPLETE = {"length"}


def _chunks(case: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES.folder / f"stream_{case}.openai.jsonl").read_text().splitlines()]


def _run(request: dict, chunks: list[dict]) -> tuple[ResponsesStream, list[Event]]:
    stream = ResponsesStream(request, response_id=RESPONSE_ID, created_at=CREATED, model=request["model"])
    events = [event for chunk in chunks for event in stream.feed(chunk)]
    return stream, events + stream.finish()


def _run_case(case: str) -> tuple[dict, ResponsesStream, list[Event]]:
    request = FIXTURES.load(f"stream_{case}.request.json")
    stream, events = _run(request, _chunks(case))
    return request, stream, events


@functools.cache
def _event_adapter() -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(ResponseStreamEvent)


def _assert_valid_events(events: list[Event]) -> None:
    for number, (name, payload) in enumerate(events):
        assert payload["type"] == name and payload["sequence_number"] == number
        event = _event_adapter().validate_python(payload)
        assert_no_undeclared_keys(event, name, RESPONSE_EXTENSIONS)
        if "response" in payload:
            assert_valid_response(payload["response"])


def _sdk_events(request: dict, events: list[Event]) -> list[typing.Any]:
    """What the openai SDK's Responses stream helper yields for our events, and its final response (None unless
    `response.completed` came)."""
    body = b"".join(encode_event(name, payload) for name, payload in events)
    reply = httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    with sdk(lambda _: reply) as client, client.responses.stream(**sdk_params(request)) as stream:
        seen = list(stream)
        try:
            final = stream.get_final_response()
        except RuntimeError:
            final = None
    return [*seen, final]


# --- golden streams ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_stream_translates_to_golden_events(case: str) -> None:
    _, _, events = _run_case(case)
    expected = [tuple(json.loads(line)) for line in
                (FIXTURES.folder / f"stream_{case}.responses.jsonl").read_text().splitlines()]
    assert events == expected
    _assert_valid_events(events)


def test_every_stream_case_has_its_request_and_golden() -> None:
    assert CASES
    assert CASES == FIXTURES.cases("stream_", ".request.json") == FIXTURES.cases("stream_", ".responses.jsonl")
    assert set(FAILED) | INCOMPLETE <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_sdk_stream_helper_accumulates_the_same_response(case: str) -> None:
    request, stream, events = _run_case(case)
    *seen, final = _sdk_events(request, events)
    assert stream.response is not None
    view = client_view(stream.response, request)
    if case in FAILED or case in INCOMPLETE:
        assert final is None
        assert isinstance(seen[-1], ResponseFailedEvent if case in FAILED else ResponseIncompleteEvent)
        assert seen[-1].response.model_dump(mode="json") == assert_valid_response(view).model_dump(mode="json")
    else:
        assert sdk_view(final) == assert_valid_response(view).model_dump(mode="json")
    assert len(seen) == len(events)


@pytest.mark.parametrize(("case", "code"), sorted(FAILED.items()))
def test_failed_stream_ends_with_response_failed(case: str, code: str) -> None:
    _, stream, events = _run_case(case)
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"] and names[-1] == "response.failed"
    assert stream.response is not None and stream.response["status"] == "failed"
    assert stream.response["error"]["code"] == code


def test_error_chunk_keeps_the_upstream_message() -> None:
    _, stream, _ = _run_case("error_mid_stream")
    assert stream.response is not None
    assert stream.response["error"] == {"code": "server_error", "message": "Overloaded"}
    assert stream.response["output"][0]["status"] == "incomplete"  # the message it was cut in


# --- the stream and the whole answer agree -------------------------------------------------------------------------


def _completion(chunks: list[dict]) -> dict:
    """The whole `chat.completion` a chunk stream adds up to."""
    message: dict = {"role": "assistant", "content": "", "refusal": "", "reasoning_content": "", "thinking_blocks": []}
    calls: dict[int, dict] = {}
    finish_reason, usage, logprobs = None, None, []
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            delta = choice["delta"]
            for key in ("content", "refusal", "reasoning_content"):
                message[key] += delta.get(key) or ""
            message["thinking_blocks"] += delta.get("thinking_blocks") or []
            logprobs += (choice.get("logprobs") or {}).get("content") or []
            for fragment in delta.get("tool_calls") or ():
                call = calls.setdefault(fragment["index"], {"id": fragment.get("id"), "type": "function",
                                                            "function": {"name": None, "arguments": ""}})
                call["function"]["name"] = fragment["function"].get("name") or call["function"]["name"]
                call["function"]["arguments"] += fragment["function"].get("arguments") or ""
            finish_reason = choice.get("finish_reason") or finish_reason
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": {"content": logprobs}}
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice], "usage": usage}


@pytest.mark.parametrize("case", [case for case in CASES if case not in FAILED])
def test_stream_stores_what_the_whole_answer_would(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    request, stream, _ = _run_case(case)
    count_ids_afresh(monkeypatch)
    whole = from_openai(_completion(_chunks(case)), request, response_id=RESPONSE_ID, created_at=CREATED,
                        model=request["model"])
    assert stream.response == whole


# --- reasoning -----------------------------------------------------------------------------------------------------


def _done_items(events: list[Event]) -> list[dict]:
    return [payload["item"] for name, payload in events if name == "response.output_item.done"]


@pytest.mark.parametrize(("case", "summary_events", "encrypted_shown"), [
    ("thinking_summary_included", True, True), ("thinking_summary_not_included", True, False),
    ("thinking_no_summary", False, False)])
def test_claude_thinking_streams_as_one_reasoning_item(case: str, summary_events: bool,
                                                       encrypted_shown: bool) -> None:
    _, stream, events = _run_case(case)
    assert stream.response is not None
    stored = stream.response["output"][0]
    assert decode_thinking(stored["encrypted_content"]) == [block for chunk in _chunks(case) for choice in
                                                            chunk.get("choices") or () for block in
                                                            choice["delta"].get("thinking_blocks") or ()]
    shown = _done_items(events)[0]
    assert ("encrypted_content" in shown) is encrypted_shown
    names = {name for name, _ in events}
    assert ("response.reasoning_summary_text.delta" in names) is summary_events
    assert [item["type"] for item in stream.response["output"]] == ["reasoning", "message", "function_call"]


def test_thinking_block_whose_text_did_not_stream_becomes_summary_text() -> None:
    request = {"model": "m", "reasoning": {"summary": "auto"}}
    block = {"type": "thinking", "thinking": "Unstreamed.", "signature": "sig"}
    _, events = _run(request, [{"choices": [{"index": 0, "delta": {"thinking_blocks": [block]}}]},
                               {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}])
    deltas = [payload["delta"] for name, payload in events if name == "response.reasoning_summary_text.delta"]
    assert deltas == ["Unstreamed."]
    _assert_valid_events(events)


# --- the end -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["text", "error_mid_stream", "cut_early"])
def test_nothing_follows_the_end(case: str) -> None:
    _, stream, _ = _run_case(case)
    assert stream.finished
    assert stream.feed(_chunks(case)[0]) == [] and stream.finish() == []


def test_response_is_none_until_the_stream_ends() -> None:
    request = FIXTURES.load("stream_text.request.json")
    stream = ResponsesStream(request, response_id=RESPONSE_ID, created_at=CREATED, model="m")
    for chunk in _chunks("text")[:-1]:
        stream.feed(chunk)
        assert stream.response is None and not stream.finished
    assert [name for name, _ in stream.feed(_chunks("text")[-1])] == ["response.completed"]
    assert stream.finished and stream.response is not None


def test_usage_chunk_completes_the_response_and_finish_adds_nothing() -> None:
    _, stream, events = _run_case("usage_cached_reasoning")
    assert events[-1][0] == "response.completed"
    assert stream.response is not None and stream.response["usage"]["input_tokens_details"]["cached_tokens"] == 1200


def test_without_a_usage_chunk_finish_completes_with_null_usage() -> None:
    _, stream, events = _run_case("no_usage")
    assert events[-1][0] == "response.completed"
    assert stream.response is not None and stream.response["usage"] is None


def test_empty_stream_fails_after_created_and_in_progress() -> None:
    _, events = _run({"model": "m"}, [])
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "response.failed"]
    _assert_valid_events(events)


def test_interleaved_tool_call_fragments_fail_rather_than_corrupt() -> None:
    _, stream, _ = _run_case("interleaved_tool_calls")
    assert stream.response is not None
    assert "interleaved" in stream.response["error"]["message"]
    assert [item["call_id"] for item in stream.response["output"]] == ["call_a", "call_b"]
