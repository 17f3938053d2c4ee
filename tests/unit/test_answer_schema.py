"""The answer check of `response_format`: which requests ask for JSON, what makes an answer fit, the violation's
message, the streamed check, and that a client's schema never makes the gateway fetch anything."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import orjson
import pytest

from ext_proc.providers.stream import ChatStream
from ext_proc.stages import answer_schema
from ext_proc.stages.answer_schema import MAX_QUOTED, AnswerSchema
from ext_proc.stages.endpoints import Endpoint
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest

from .stage_support import body, drive, headers, set_headers
from .test_attempt_stage import HELLO, _charged, _limited_stage

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def _format(schema: object) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema,
                                                                       "strict": True}}}


def _answer(*contents: object, **message: object) -> dict:
    return {"choices": [{"index": i, "message": {"role": "assistant", "content": c, **message},
                         "finish_reason": "stop"} for i, c in enumerate(contents)]}


def _person() -> AnswerSchema:
    checked = answer_schema.of_request(_format(PERSON))
    assert checked is not None
    return checked


@pytest.mark.parametrize(("body", "asks"), [
    ({}, False),
    ({"response_format": {"type": "text"}}, False),
    ({"response_format": "json"}, False),
    ({"response_format": {"type": "json_object"}}, True),
    (_format(PERSON), True),
])
def test_only_requests_for_json_are_checked(body: dict, asks: bool) -> None:
    assert (answer_schema.of_request(body) is not None) is asks


def test_an_answer_that_fits_passes() -> None:
    assert _person().check(_answer('{"name": "Ada", "age": 36}'), "oa") is None


def test_the_violation_names_backend_path_and_reason() -> None:
    error = _person().check(_answer('{"name": "Ada", "age": "abc"}'), "oa")
    assert error is not None and error.status == 502 and error.code == "invalid_structured_output"
    assert error.message == ("The answer from backend 'oa' does not match the response_format schema: "
                             "at $.age: 'abc' is not of type 'integer'")


def test_a_nested_path_is_written_as_json_path() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": PERSON}}}
    checked = answer_schema.of_request(_format(schema))
    assert checked is not None
    error = checked.check(_answer('{"items": [{"name": "a", "age": 1}, {"name": "b", "age": true}]}'), "oa")
    assert error is not None and "at $.items[1].age: True is not of type 'integer'" in error.message


def test_an_answer_that_is_not_json_is_a_violation_quoting_a_bounded_part() -> None:
    error = _person().check(_answer("Sure! Here is the JSON: " + "x" * 5000), "oa")
    assert error is not None and "the answer is not JSON" in error.message
    assert len(error.message) < 150 + MAX_QUOTED and "x" * MAX_QUOTED not in error.message


def test_a_reason_that_quotes_a_giant_answer_is_bounded() -> None:
    error = _person().check(_answer(orjson.dumps([{"name": "n" * 10_000}]).decode()), "oa")
    assert error is not None and "at $: " in error.message and len(error.message) < 150 + MAX_QUOTED


def test_an_answer_cut_at_its_limit_says_so() -> None:
    answer = {"choices": [{"message": {"content": '{"name": "A'}, "finish_reason": "length"}]}
    error = _person().check(answer, "oa")
    assert error is not None and "cut at its output limit" in error.message


@pytest.mark.parametrize("content", ['{"a": 1}', "{}"])
def test_json_object_accepts_any_object(content: str) -> None:
    checked = answer_schema.of_request({"response_format": {"type": "json_object"}})
    assert checked is not None and checked.check(_answer(content), "oa") is None


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "not json", "", None])
def test_json_object_refuses_anything_else(content: object) -> None:
    checked = answer_schema.of_request({"response_format": {"type": "json_object"}})
    assert checked is not None and checked.check(_answer(content), "oa") is not None


def test_a_refusal_or_tool_calls_instead_of_content_are_not_violations() -> None:
    checked = _person()
    assert checked.check(_answer(None, refusal="I can't help with that."), "oa") is None
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert checked.check(_answer(None, tool_calls=calls), "oa") is None
    assert checked.check(_answer(None), "oa") is not None  # neither: no content is a violation


def test_every_choice_is_checked_and_the_failing_one_named() -> None:
    error = _person().check(_answer('{"name": "a", "age": 1}', '{"name": "b"}'), "oa")
    assert error is not None and "choice 1: at $: 'age' is a required property" in error.message


def test_an_answer_without_choices_is_a_violation() -> None:
    assert _person().check({"choices": []}, "oa") is not None


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = orjson.dumps({"type": "integer"})
        self.send_response(200)
        self.send_header("content-type", "application/schema+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def schema_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("content", ['{"age": "abc"}', '{"age": 3}'])
def test_a_remote_ref_is_never_fetched(schema_server: str, content: str) -> None:
    _Recorder.hits.clear()
    schema = {"type": "object", "properties": {"age": {"$ref": f"{schema_server}/age.json"}}}
    checked = answer_schema.of_request(_format(schema))
    assert checked is not None
    # not resolvable without a fetch: the schema can't be enforced, and nothing was asked of the server
    assert checked.check(_answer(content), "oa") is None
    assert _Recorder.hits == []


def test_a_local_ref_is_followed() -> None:
    schema = {"$defs": {"age": {"type": "integer"}}, "type": "object",
              "properties": {"age": {"$ref": "#/$defs/age"}}}
    checked = answer_schema.of_request(_format(schema))
    assert checked is not None
    assert checked.check(_answer('{"age": 3}'), "oa") is None
    error = checked.check(_answer('{"age": "x"}'), "oa")
    assert error is not None and "at $.age" in error.message


@pytest.mark.parametrize("schema", [
    {"type": "object", "required": "age"},  # not a list: jsonschema would read it letter by letter
    {"type": "whatever"},
    {"type": "string", "pattern": "("},
])
def test_a_schema_that_is_itself_invalid_is_not_enforced(schema: dict) -> None:
    checked = answer_schema.of_request(_format(schema))
    assert checked is not None and checked.check(_answer('{"name": "x"}'), "oa") is None


def test_an_answer_nested_too_deeply_is_a_violation() -> None:
    schema = {"$ref": "#/$defs/node", "$defs": {"node": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
    checked = answer_schema.of_request(_format(schema))
    assert checked is not None
    error = checked.check(_answer("[" * 1000 + "]" * 1000), "oa")
    assert error is not None and "nested too deeply" in error.message


def _checked(schema: dict) -> AnswerSchema:
    checked = answer_schema.of_request(_format(schema))
    assert checked is not None
    return checked


def test_a_pattern_is_enforced() -> None:
    checked = _checked({"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}})
    assert checked.check(_answer('{"code": "ABC"}'), "oa") is None
    error = checked.check(_answer('{"code": "abcd"}'), "oa")
    assert error is not None and "at $.code: 'abcd' does not match '^[A-Z]{3}$'" in error.message


def test_a_pattern_that_backtracks_without_end_is_stopped_and_not_enforced() -> None:
    checked = _checked({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|a)*$"}}})
    # with `re` this search would run for ages and hold the process; here the budget stops it
    assert checked.check(_answer(orjson.dumps({"s": "a" * 60 + "b"}).decode()), "oa") is None


def test_pattern_properties_and_additional_properties_are_enforced() -> None:
    checked = _checked({"type": "object", "patternProperties": {"^x_": {"type": "integer"}},
                        "additionalProperties": False})
    assert checked.check(_answer('{"x_a": 1}'), "oa") is None
    error = checked.check(_answer('{"x_a": "one"}'), "oa")
    assert error is not None and "at $.x_a: 'one' is not of type 'integer'" in error.message
    error = checked.check(_answer('{"other": 1}'), "oa")
    assert error is not None and "'other' match no property and no pattern" in error.message


def test_pattern_properties_beside_unevaluated_properties_are_not_enforced() -> None:
    checked = _checked({"type": "object", "patternProperties": {"^x_": {"type": "integer"}},
                        "unevaluatedProperties": False})
    assert checked.check(_answer('{"other": 1}'), "oa") is None


@pytest.mark.parametrize(("items", "unique"), [
    ("[1, 2, 3]", True), ("[1, 1.0]", False), ("[true, 1]", True),
    ('[{"a": 1, "b": 2}, {"b": 2, "a": 1}]', False), ('[{"a": [1]}, {"a": [1.0, 2]}]', True),
])
def test_unique_items_follow_json_equality(items: str, unique: bool) -> None:
    checked = _checked({"type": "array", "uniqueItems": True})
    assert (checked.check(_answer(items), "oa") is None) is unique


def test_many_unhashable_items_are_checked_for_uniqueness_in_one_pass() -> None:
    checked = _checked({"type": "array", "uniqueItems": True})
    many = orjson.dumps([{"n": i} for i in range(3000)] + [{"n": 0}]).decode()
    error = checked.check(_answer(many), "oa")
    assert error is not None and "has non-unique elements" in error.message


@pytest.mark.parametrize(("endpoint", "body", "asks"), [
    (Endpoint.MESSAGES, {"output_config": {"format": {"type": "json_schema", "schema": PERSON}}}, True),
    (Endpoint.MESSAGES, {"output_format": {"type": "json_schema", "schema": PERSON}}, True),
    (Endpoint.MESSAGES, {"output_config": {"effort": "low"}}, False),
    (Endpoint.RESPONSES, {"text": {"format": {"type": "json_schema", "name": "p", "schema": PERSON}}}, True),
    (Endpoint.RESPONSES, {"text": {"format": {"type": "json_object"}}}, True),
    (Endpoint.RESPONSES, {"text": {"format": {"type": "text"}}}, False),
    (Endpoint.CHAT, _format(PERSON), True),
])
def test_bodies_passed_through_are_read_in_their_own_format(endpoint: Endpoint, body: dict, asks: bool) -> None:
    assert (answer_schema.of_client_body(body, endpoint) is not None) is asks


def test_an_anthropic_message_is_checked_on_its_text() -> None:
    checked = _person()
    message = {"content": [{"type": "text", "text": '{"name": "a", "age": "x"}'}], "stop_reason": "end_turn"}
    error = checked.check_untranslated(message, False, "an")
    assert error is not None and "at $.age" in error.message
    tool_use = {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "stop_reason": "tool_use"}
    assert checked.check_untranslated(tool_use, False, "an") is None
    refusal = {"content": [{"type": "text", "text": "No."}], "stop_reason": "refusal"}
    assert checked.check_untranslated(refusal, False, "an") is None


def test_a_native_response_is_checked_on_its_output_text() -> None:
    response = {"output": [{"type": "message", "content": [{"type": "output_text", "text": '{"name": 1, "age": 2}'}]}]}
    error = _person().check_untranslated(response, True, "oa")
    assert error is not None and "at $.name: 1 is not of type 'string'" in error.message


class _Scripted(ChatStream):
    """A backend's translation that makes the given chunks, one event each, then nothing."""

    def __init__(self, chunks: list[dict]) -> None:
        super().__init__("m", 0, True)
        self._chunks = chunks

    def feed(self, event: str | None, data: bytes) -> list[dict]:
        return [self._chunks.pop(0)] if self._chunks else []

    def _last_chunks(self) -> list[dict]:
        return []


def _chunk(content: str | None = None, finish: str | None = None, index: int = 0, **delta: object) -> dict:
    fields = {"content": content, **delta} if content is not None else dict(delta)
    return {"id": "c", "choices": [{"index": index, "delta": fields, "finish_reason": finish}], "usage": None}


def _run(checked: AnswerSchema, chunks: list[dict]) -> list[dict]:
    stream = checked.watch(_Scripted(list(chunks)), "oa")
    out: list[dict] = []
    for _ in chunks:
        out += stream.feed(None, b"")
    return out + stream.finish()


def test_a_stream_that_fits_passes_unchanged() -> None:
    chunks = [_chunk('{"name": "a", '), _chunk('"age": 1}'), _chunk(finish="stop"),
              {"id": "c", "choices": [], "usage": {"prompt_tokens": 1}}]
    assert _run(_person(), chunks) == chunks


def test_a_stream_that_does_not_fit_ends_with_an_error_in_place_of_its_finish() -> None:
    chunks = [_chunk('{"name": "a", '), _chunk('"age": "x"}', finish="stop"),
              {"id": "c", "choices": [], "usage": {"prompt_tokens": 1}}]
    out = _run(_person(), chunks)
    assert out[0] == chunks[0]
    assert out[1]["choices"][0] == {"index": 0, "delta": {"content": '"age": "x"}'}, "finish_reason": None}
    assert out[2]["error"]["code"] == "invalid_structured_output" and "at $.age" in out[2]["error"]["message"]
    assert len(out) == 3  # nothing after the error, the usage chunk included


def test_a_streamed_refusal_or_tool_call_is_not_checked() -> None:
    refusal = [_chunk(refusal="No."), _chunk(finish="stop")]
    assert _run(_person(), refusal) == refusal
    calls = [_chunk(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{}"}}]),
             _chunk(finish="tool_calls")]
    assert _run(_person(), calls) == calls


def test_each_streamed_choice_is_checked_on_its_own_finish() -> None:
    chunks = [_chunk('{"name": "a", "age": 1}', index=0), _chunk('{"name": 2}', index=1),
              _chunk(finish="stop", index=0), _chunk(finish="stop", index=1)]
    out = _run(_person(), chunks)
    assert out[:3] == chunks[:3]
    assert "choice 1: at $" in out[-1]["error"]["message"]


def test_a_stream_the_provider_cut_keeps_its_own_error() -> None:
    chunks = [_chunk('{"name": '), {"error": {"message": "cut", "type": "upstream_error", "code": "bad_gateway"}}]
    assert _run(_person(), chunks) == chunks


@pytest.mark.parametrize(("content", "status"), [('{"name": "a", "age": 1}', None), ('{"name": "a"}', "502")])
def test_the_attempt_stage_answers_an_invalid_answer_with_a_502_charged_its_usage(
        monkeypatch: pytest.MonkeyPatch, content: str, status: str | None) -> None:
    stage, limiter = _limited_stage(monkeypatch)
    drive(stage, ProcessingRequest(request_body=body({**HELLO, **_format(PERSON)})))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 40, "completion_tokens": 300, "total_tokens": 340}}
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(answer), end_of_stream=True)))
    asyncio.run(stage.close())
    assert reply is not None
    sent = reply.response_body.response
    assert set_headers(sent).get(":status") == status
    if status is not None:
        error = orjson.loads(sent.body_mutation.body)["error"]
        assert error["code"] == "invalid_structured_output" and "at $: 'age' is a required property" in error["message"]
    assert _charged(limiter) == 340  # the provider did the work, valid or not
