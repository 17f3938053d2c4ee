"""Guardrails that hold (issue 19): evasions by separators, invisible and compatibility characters are found; every
text a model reads or writes is checked (tool definitions, Anthropic tool inputs, reasoning); a stream holds back a
short window so a find split over chunks is redacted or blocked before any of it goes out; audit lines name the key."""

from __future__ import annotations

import logging

import orjson
import pytest

from ext_proc import providers
from ext_proc.client_formats.anthropic_messages import MessagesStream
from ext_proc.config.models import GuardrailSettings
from ext_proc.guardrails import engine
from ext_proc.guardrails.engine import Guardrail, GuardrailBlocked, apply
from ext_proc.guardrails.normalize import normalize
from ext_proc.stages.stream_guard import BATCH, WINDOW, StreamGuard
from ext_proc.stages.stream_relay import PassthroughRelay, ResponsesPassthroughRelay, StreamRelay
from ext_proc.streaming.sse import SSEDecoder
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest

from .stage_support import drive
from .test_anthropic_passthrough import _guarded_stage

NBSP, THIN, NARROW, ZWSP = "\u00a0", "\u2009", "\u202f", "\u200b"
EMAIL = "jane.doe@example.com"
PII = Guardrail.of(GuardrailSettings(name="pii", pii=["email", "card", "iban"], mode="redact",
                                     apply_to=["request", "response"]))
ORION = Guardrail.of(GuardrailSettings(name="no-orion", deny_words=["project orion"], mode="block",
                                       apply_to=["request", "response"]))
BOTH = (PII, ORION)


def _request(text: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


# -- normalisation: evasions are found, the rest of the text is the client's -----------------------------------------

@pytest.mark.parametrize(("found", "kind"), [
    ("4111.1111.1111.1111", "CARD"),
    (f"4111{NBSP}1111{NBSP}1111{NBSP}1111", "CARD"),
    (f"4111{THIN}1111{NARROW}1111{THIN}1111", "CARD"),
    ("４１１１ １１１１ １１１１ １１１１", "CARD"),  # noqa: RUF001 - fullwidth digits, on purpose
    (f"DE89{NBSP}3704{NBSP}0044{NBSP}0532{NBSP}0130{NBSP}00", "IBAN"),
    ("DE89.3704.0044.0532.0130.00", "IBAN"),
    ("jane\uff20example.com", "EMAIL"),
    (f"jane{ZWSP}.doe@exam{ZWSP}ple.com", "EMAIL"),
])
def test_evasions_by_separators_and_compatibility_characters_are_redacted(found: str, kind: str) -> None:
    body = _request(f"send it to {found} now")
    assert apply(BOTH, body, phase="request", route="r")
    assert body["messages"][0]["content"] == f"send it to [REDACTED:{kind}] now"


@pytest.mark.parametrize("text", [
    f"status of project{ZWSP} orion?", f"status of pro{ZWSP}ject or\u00adion?", "status of project  orion?",
    "status of PROJECT\n\torion?", "status of ｐｒｏｊｅｃｔ ｏｒｉｏｎ?",  # noqa: RUF001 - fullwidth, on purpose
    f"status of project{ZWSP}orion?", f"status of project{NBSP}orion?",
])
def test_a_deny_phrase_is_found_across_invisible_characters_spaces_and_case(text: str) -> None:
    with pytest.raises(GuardrailBlocked, match="no-orion"):
        apply(BOTH, _request(text), phase="request", route="r")


def test_redaction_replaces_the_original_span_and_leaves_every_other_character_as_it_was() -> None:
    prefix = f"Ünïcödé  stays{NBSP}as{ZWSP} is,\ttabs\n\nand ﬁ ligatures — "
    suffix = f" … {THIN}done{ZWSP}."
    text = f"{prefix}mail jane\uff20exa{ZWSP}mple.com, card 4111{NBSP}1111.1111-1111{suffix}"
    body = _request(text)
    apply(BOTH, body, phase="request", route="r")
    assert body["messages"][0]["content"] == f"{prefix}mail [REDACTED:EMAIL], card [REDACTED:CARD]{suffix}"


def test_overlapping_finds_of_two_guardrails_are_redacted_as_one() -> None:
    words = Guardrail.of(GuardrailSettings(name="w", deny_words=["write to jane"], mode="redact"))
    body = _request(f"please write to {EMAIL} today")
    apply((PII, words), body, phase="request", route="r")
    assert body["messages"][0]["content"] == "please [REDACTED:DENY] today"  # the first find names it


def test_the_normalised_copy_maps_back_to_the_original() -> None:
    text = f"a{ZWSP}b  c{NBSP}\uff20"
    copy = normalize(text)
    assert copy.text == "ab  c @"
    assert copy.original(0, 2) == (0, 3) and copy.original(2, 4) == (3, 5) and copy.original(5, 7) == (6, 8)
    assert normalize("ascii\n\ntext  as is").original(7, 11) == (7, 11)
    assert normalize("plain ascii text").original(6, 11) == (6, 11)


def test_ordinary_numbers_with_dots_are_still_not_cards() -> None:
    for text in ("version 1.2.3.4 of the api", "pi is 3.14159265358979", "call 2026.12.07 at 10.30"):
        body = _request(text)
        assert not apply((PII,), body, phase="request", route="r") and body["messages"][0]["content"] == text


# -- every text a model reads or writes --------------------------------------------------------------------------

def test_tool_descriptions_and_parameter_schemas_are_checked() -> None:
    tool = {"type": "function", "function": {"name": "send", "description": f"mail {EMAIL}", "parameters": {
        "type": "object", "properties": {"to": {"type": "string", "description": f"default {EMAIL}",
                                                "enum": [EMAIL, "other"]}}}}}
    body = {**_request("hi"), "tools": [tool]}
    apply((PII,), body, phase="request", route="r")
    assert EMAIL not in orjson.dumps(body).decode()
    assert body["tools"][0]["function"]["parameters"]["properties"]["to"]["enum"] == ["[REDACTED:EMAIL]", "other"]
    assert body["tools"][0]["function"]["name"] == "send"
    anthropic_tool = {"name": "send", "description": "for project orion", "input_schema": {"type": "object"}}
    with pytest.raises(GuardrailBlocked):
        apply(BOTH, {"model": "m", "messages": [], "tools": [anthropic_tool]}, phase="request", route="r")


def test_anthropic_tool_use_input_object_values_and_tool_results_are_checked() -> None:
    body = {"model": "m", "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "send", "input": {
            "to": EMAIL, "cc": [EMAIL], "meta": {"card": "4111.1111.1111.1111"}, "count": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": [{"type": "text", "text": f"sent to {EMAIL}"}]}]}]}
    apply((PII,), body, phase="request", route="r")
    used = body["messages"][0]["content"][0]
    assert used["input"] == {"to": "[REDACTED:EMAIL]", "cc": ["[REDACTED:EMAIL]"],
                             "meta": {"card": "[REDACTED:CARD]"}, "count": 2}
    assert used["id"] == "t1" and used["name"] == "send" and used["type"] == "tool_use"
    assert body["messages"][1]["content"][0]["content"][0]["text"] == "sent to [REDACTED:EMAIL]"
    blocked = {"model": "m", "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "q", "input": {"query": f"project{ZWSP} orion"}}]}]}
    with pytest.raises(GuardrailBlocked):
        apply(BOTH, blocked, phase="request", route="r")


def test_responses_tool_call_arguments_and_outputs_are_checked() -> None:
    body = {"model": "m", "input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": orjson.dumps({"to": EMAIL}).decode()},
        {"type": "function_call_output", "call_id": "c", "output": f"ok {EMAIL}"}]}
    apply((PII,), body, phase="request", route="r")
    assert body["input"][0]["arguments"] == '{"to":"[REDACTED:EMAIL]"}' and body["input"][1]["output"] == (
        "ok [REDACTED:EMAIL]")


def test_reasoning_in_an_answer_is_redacted_and_blocks() -> None:
    answer = {"choices": [{"index": 0, "message": {
        "role": "assistant", "content": "done", "reasoning_content": f"the user is {EMAIL}",
        "thinking_blocks": [{"type": "thinking", "thinking": f"the user is {EMAIL}", "signature": "sig"}]}}]}
    assert apply((PII,), answer, phase="response", route="r")
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] == "the user is [REDACTED:EMAIL]"
    assert message["thinking_blocks"][0] == {"type": "thinking", "thinking": "the user is [REDACTED:EMAIL]",
                                             "signature": "sig"}
    thinking = {"content": [{"type": "thinking", "thinking": "about project orion", "signature": "s"},
                            {"type": "text", "text": "nothing"}]}
    with pytest.raises(GuardrailBlocked):
        apply(BOTH, thinking, phase="response", route="r")


def test_signed_thinking_sent_back_is_checked_but_never_changed() -> None:
    block = {"type": "thinking", "thinking": f"the user is {EMAIL}", "signature": "sig"}
    body = {"model": "m", "messages": [{"role": "assistant", "content": [dict(block)]}]}
    with pytest.raises(GuardrailBlocked):
        apply((Guardrail.of(GuardrailSettings(name="b", pii=["email"])),), body, phase="request", route="r")
    assert not apply((PII,), body, phase="request", route="r")
    assert body["messages"][0]["content"][0] == block


def test_audit_lines_name_the_key_on_answers_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="babelgate.audit"):
        apply((PII,), {"choices": [{"message": {"content": EMAIL}}]}, phase="response", route="r", key_id="k-7")
        guard = StreamGuard((PII,), "r", "k-9")
        guard.feed((0, "content"), EMAIL)
        guard.flush((0, "content"))
    assert "key 'k-7'" in caplog.text and "key 'k-9'" in caplog.text and EMAIL not in caplog.text


def test_the_attempt_stage_audits_answers_with_the_requests_key(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    stage = _guarded_stage(monkeypatch, {"model": "claude", "max_tokens": 5, "stream": False,
                                         "messages": [{"role": "user", "content": "hi"}]})
    message = {"id": "m", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": f"write to {EMAIL}"}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
    with caplog.at_level(logging.INFO, logger="babelgate.audit"):
        drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(message), end_of_stream=True)))
    assert "in a response of route 'claude', key 'all'" in caplog.text


def test_routes_without_answer_guardrails_normalise_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str) -> None:
        raise AssertionError("normalised on a path without guardrails")

    monkeypatch.setattr(engine, "normalize", refuse)
    answer = {"choices": [{"message": {"content": EMAIL}}]}
    request_only = Guardrail.of(GuardrailSettings(name="p", pii=["email"], mode="redact"))
    assert not apply((request_only,), answer, phase="response", route="r")
    assert not apply((), _request(EMAIL), phase="request", route="r")


# -- streams: held back by a window ------------------------------------------------------------------------------

def _chunk(delta: dict, finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _chat_relay(guardrails: tuple[Guardrail, ...], client_stream: MessagesStream | None = None) -> StreamRelay:
    stream = providers.for_schema("openai").chat_stream("m", 1, False)
    return StreamRelay("text/event-stream", stream, client_stream, StreamGuard(guardrails, "r", "k"), None)


def _chat_out(out: bytes) -> list[dict]:
    return [orjson.loads(e.data) for e in SSEDecoder().feed(out) if e.data != b"[DONE]"]


def _streamed(chunks: list[dict], field: str) -> str:
    return "".join((c["choices"][0]["delta"].get(field) or "") for c in chunks if c.get("choices"))


@pytest.mark.parametrize("field", ["content", "reasoning_content"])
@pytest.mark.parametrize("size", [1, 3, 7, 40])
def test_pii_split_across_chunks_is_redacted_in_content_and_reasoning(field: str, size: int) -> None:
    text = f"Hello! Mail {EMAIL} or use card 4111{NBSP}1111 1111.1111, and that is all I can say about it today."
    relay = _chat_relay((PII,))
    pieces = _pieces(text, size)
    out = b"".join(relay.relay(_chunk({field: piece}), False) for piece in pieces[:-1])
    out += relay.relay(_chunk({field: pieces[-1]}, "stop") + b"data: [DONE]\n\n", True)  # text and finish at once
    chunks = _chat_out(out)
    assert _streamed(chunks, field) == ("Hello! Mail [REDACTED:EMAIL] or use card [REDACTED:CARD], and that is all "
                                        "I can say about it today.")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_the_window_delays_text_by_at_most_its_length_and_never_the_end() -> None:
    guard = StreamGuard((PII,), "r")
    text = "word " * 60
    sent = received = 0
    for piece in _pieces(text, 5):
        received += len(piece)
        sent += len(guard.feed((0, "content"), piece))
        assert received - sent <= WINDOW + BATCH
    assert sent >= len(text) - WINDOW - BATCH
    assert len(guard.flush((0, "content"))) == len(text) - sent


def test_overlapping_finds_of_two_guardrails_reaching_into_the_window_are_held_whole() -> None:
    words = Guardrail.of(GuardrailSettings(name="w", deny_words=["write to jane"], mode="redact",
                                           apply_to=["response"]))
    guard = StreamGuard((PII, words), "r")
    text = "x" * 60 + f" please write to {EMAIL} " + "y" * 70
    sent = "".join(guard.feed((0, "content"), piece) for piece in _pieces(text, 9)) + guard.flush((0, "content"))
    assert sent == "x" * 60 + " please [REDACTED:DENY] " + "y" * 70  # one marker for both: nothing of either left


def test_streamed_tool_call_arguments_are_seen_by_block_rules_and_redacted() -> None:
    arguments = orjson.dumps({"query": "status of project orion", "cc": EMAIL}).decode()
    relay = _chat_relay(BOTH)
    first = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "search", "arguments": ""}}]}
    out = relay.relay(_chunk(first), False)
    for piece in _pieces(arguments, 4):
        out += relay.relay(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), False)
    out += relay.relay(_chunk({}, "tool_calls"), False)
    chunks = _chat_out(out)
    assert "error" in chunks[-1] and "no-orion" in chunks[-1]["error"]["message"]
    streamed = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                       for c in chunks if c.get("choices"))
    assert "orion" not in streamed
    redacting = _chat_relay((PII,))
    out = redacting.relay(_chunk(first), False)
    for piece in _pieces(arguments, 4):
        out += redacting.relay(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), False)
    out += redacting.relay(_chunk({}, "tool_calls"), True)
    chunks = _chat_out(out)
    streamed = "".join(call["function"].get("arguments") or "" for c in chunks if c.get("choices")
                       for call in c["choices"][0]["delta"].get("tool_calls") or ())
    assert orjson.loads(streamed) == {"query": "status of project orion", "cc": "[REDACTED:EMAIL]"}


def test_a_new_channel_takes_out_what_the_last_one_held_first() -> None:
    relay = _chat_relay((PII,))
    out = relay.relay(_chunk({"reasoning_content": "think about it"}), False)
    out += relay.relay(_chunk({"content": "the answer"}), False)
    out += relay.relay(_chunk({"reasoning_content": "x" * 100, "content": "y" * 100}), False)
    out += relay.relay(_chunk({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                               "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls"), True)
    chunks = _chat_out(out)
    assert chunks[1]["choices"][0]["delta"]["reasoning_content"] == "think about it"
    both = chunks[2]["choices"][0]["delta"]  # reasoning again: all it holds goes out, in order; text is held
    assert both["reasoning_content"] == "x" * 100 and both["content"] == "the answer" + "y" * 36
    last = chunks[3]["choices"][0]["delta"]
    assert last["content"] == "y" * 64 and last["tool_calls"][0]["function"]["arguments"] == "{}"


def test_a_stream_cut_before_its_finish_still_gets_what_was_held() -> None:
    relay = _chat_relay((PII,))
    out = relay.relay(_chunk({"content": f"to {EMAIL}"}), True)
    assert "to [REDACTED:EMAIL]" in _streamed(_chat_out(out), "content")


def test_an_anthropic_client_gets_a_split_email_redacted() -> None:
    relay = _chat_relay((PII,), MessagesStream("m"))
    out = b"".join(relay.relay(_chunk({"content": piece}), False) for piece in _pieces(f"mail {EMAIL} now", 3))
    out += relay.relay(_chunk({}, "stop"), True)
    events = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "mail [REDACTED:EMAIL] now" and events[-1]["type"] == "message_stop"


def test_reasoning_held_back_goes_out_before_its_signed_block_closes() -> None:
    relay = _chat_relay((PII,), MessagesStream("m"))
    out = relay.relay(_chunk({"reasoning_content": f"user is {EMAIL}"}), False)
    block = {"type": "thinking", "thinking": f"user is {EMAIL}", "signature": "sig"}
    out += relay.relay(_chunk({"thinking_blocks": [block]}), False)
    out += relay.relay(_chunk({"content": "done"}, "stop"), True)
    events = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    blocks = [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"]
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert blocks == ["thinking", "text"]  # one thinking block, its text then its signature
    assert [d["type"] for d in deltas] == ["thinking_delta", "signature_delta", "text_delta"]
    assert deltas[0]["thinking"] == "user is [REDACTED:EMAIL]"


def _sse(name: str, payload: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def test_an_anthropic_passthrough_stream_holds_text_thinking_and_tool_input() -> None:
    stream = providers.for_schema("anthropic").chat_stream("c", 1, False)
    relay = PassthroughRelay("text/event-stream", stream, StreamGuard(BOTH, "r", "k"), None)
    events = [("message_start", {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "content": [], "model": "c",
        "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "thinking_delta", "thinking": piece}})
               for piece in _pieces(f"user is {EMAIL}", 4)]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "signature_delta", "signature": "sig"}}),
               ("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                   "type": "tool_use", "id": "t", "name": "send", "input": {}}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 1,
                                        "delta": {"type": "input_json_delta", "partial_json": piece}})
               for piece in _pieces(orjson.dumps({"to": EMAIL}).decode(), 3)]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 1}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                  "usage": {"output_tokens": 9}}),
               ("message_stop", {"type": "message_stop"})]
    out = b"".join(relay.relay(_sse(n, e), False) for n, e in events) + relay.relay(b"", True)
    got = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    thinking = "".join(e["delta"].get("thinking", "") for e in got if e["type"] == "content_block_delta")
    tool_input = "".join(e["delta"].get("partial_json", "") for e in got if e["type"] == "content_block_delta")
    assert thinking == "user is [REDACTED:EMAIL]" and orjson.loads(tool_input) == {"to": "[REDACTED:EMAIL]"}
    kinds = [(e["type"], e.get("delta", {}).get("type")) for e in got]
    assert kinds.index(("content_block_delta", "signature_delta")) > kinds.index(
        ("content_block_delta", "thinking_delta"))
    assert got[-1]["type"] == "message_stop" and EMAIL not in out.decode()


def test_a_native_responses_stream_holds_deltas_and_stays_numbered_as_sent() -> None:
    stream = providers.for_schema("openai").chat_stream("m", 1, False)
    relay = ResponsesPassthroughRelay("text/event-stream", stream, StreamGuard((PII,), "r", "k"), None, {})
    text = f"mail {EMAIL} now"
    base = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events = [("response.created", {"type": "response.created", "response": {"id": "r", "output": []}})]
    events += [("response.output_text.delta", {"type": "response.output_text.delta", **base, "delta": piece})
               for piece in _pieces(text, 3)]
    events += [("response.output_text.done", {"type": "response.output_text.done", **base, "text": text}),
               ("response.completed", {"type": "response.completed", "response": {"id": "r", "output": [
                   {"type": "message", "content": [{"type": "output_text", "text": text}]}]}})]
    numbered = [(n, {**e, "sequence_number": i}) for i, (n, e) in enumerate(events)]
    out = b"".join(relay.relay(_sse(n, e), False) for n, e in numbered) + relay.relay(b"", True)
    got = [orjson.loads(e.data) for e in SSEDecoder().feed(out)]
    streamed = "".join(e["delta"] for e in got if e["type"] == "response.output_text.delta")
    assert streamed == "mail [REDACTED:EMAIL] now"
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    done = next(e for e in got if e["type"] == "response.output_text.done")
    assert done["text"] == streamed and EMAIL not in out.decode()
