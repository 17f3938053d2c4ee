"""OpenAI <-> Bedrock (Converse, Claude through InvokeModel, embeddings), checked against golden fixtures in
tests/fixtures/bedrock/ and against the official schemas.

Every Converse request the translator produces is validated with botocore's own `ParamValidator` against the
`bedrock-runtime` service model (image and document bytes, base64 in JSON, are decoded to the blobs the model
declares), plus the patterns and numeric ranges botocore leaves to the service. Fixture answers and stream events are
validated against the model's output shapes, InvokeModel Claude bodies against the anthropic SDK's request types, and
every OpenAI answer, chunk and embeddings list against the openai SDK's models.
"""

from __future__ import annotations

import base64
import json
import re
import typing
from pathlib import Path

import boto3
import botocore.session
import pydantic
import pytest
from botocore.model import Shape
from botocore.validate import ParamValidator
from openai.types import CreateEmbeddingResponse, embedding_create_params
from openai.types.chat import ChatCompletion, completion_create_params

from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic, bedrock_anthropic, bedrock_converse, bedrock_embeddings
from ext_proc.streaming.eventstream import EventStreamDecoder, encode_event, encode_message
from ext_proc.streaming.sse import SSEDecoder
from tests.unit.provider_checks import (
    assert_error_envelope,
    assert_every_openai_field_has_a_rule,
    assert_refused_field_is_named,
    assert_refused_with_param,
    fields_with_rule,
)
from tests.unit.test_anthropic_translation import (
    _assert_no_undeclared_keys,
    _assert_valid_anthropic_request,
    _assert_valid_chunks,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bedrock"
ANTHROPIC_FIXTURES = FIXTURES.parent / "anthropic"
MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
CLAUDE = "anthropic.claude-sonnet-4-5-20250929-v1:0"
CREATED = 1700000000
DEFAULT_MAX_TOKENS = 4096
FIXTURE_ID = "chatcmpl-bedrock"
BASE_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}

RUNTIME = botocore.session.get_session().get_service_model("bedrock-runtime")


def _load(name: str, folder: Path = FIXTURES) -> typing.Any:
    return json.loads((folder / name).read_text())


def _cases(prefix: str, suffix: str, folder: Path = FIXTURES) -> list[str]:
    return sorted(path.name[len(prefix):-len(suffix)] for path in folder.glob(f"{prefix}*{suffix}"))


def _translate(body: dict, model: str = MODEL) -> dict:
    return bedrock_converse.chat_request(body, model, default_max_tokens=DEFAULT_MAX_TOKENS)


def _sse_chunks(name: str, folder: Path = FIXTURES) -> list[dict]:
    decoder = SSEDecoder()
    return [json.loads(event.data) for event in decoder.feed((folder / name).read_bytes()) + decoder.finish()]


def _masked(chunks: list[dict]) -> list[dict]:
    """Generated ids -> FIXTURE_ID, after checking one stream shares one well-formed id."""
    ids = {chunk["id"] for chunk in chunks if "id" in chunk}
    assert len(ids) <= 1 and all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", value) for value in ids), ids
    return [{**chunk, "id": FIXTURE_ID} if "id" in chunk else chunk for chunk in chunks]


# --- the botocore service model as the schema ---------------------------------------------------------------------


def _decoded(value: object, shape: Shape) -> object:
    """`value` with every blob member base64-decoded (JSON carries blobs as base64; the model declares bytes)."""
    if shape.type_name == "blob" and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if shape.type_name == "structure" and isinstance(value, dict) and not shape.metadata.get("document"):
        return {key: _decoded(item, shape.members[key]) if key in shape.members else item
                for key, item in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_decoded(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {key: _decoded(item, shape.value) for key, item in value.items()}
    return value


def _constraint_problems(value: object, shape: Shape, path: str) -> list[str]:
    """What botocore's ParamValidator leaves to the service: string patterns and float ranges."""
    if shape.type_name == "string" and isinstance(value, str) and "pattern" in shape.metadata:
        try:
            matched = re.fullmatch(shape.metadata["pattern"], value)
        except re.error:
            return []
        return [] if matched else [f"{path}: {value!r} does not match {shape.metadata['pattern']}"]
    if shape.type_name in ("float", "double") and isinstance(value, int | float):
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{path}: {value} is outside {low}..{high}"]
        return []
    if shape.type_name == "structure" and isinstance(value, dict) and not shape.metadata.get("document"):
        return [problem for key, item in value.items() if key in shape.members
                for problem in _constraint_problems(item, shape.members[key], f"{path}.{key}")]
    if shape.type_name == "list" and isinstance(value, list):
        return [problem for i, item in enumerate(value)
                for problem in _constraint_problems(item, shape.member, f"{path}[{i}]")]
    return []


def _shape_problems(value: dict, shape: Shape) -> str:
    params = _decoded(value, shape)
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    return "\n".join(problems + _constraint_problems(params, shape, "request"))


def _assert_valid_converse_request(request: dict, stream: bool = False, model: str = MODEL) -> None:
    shape = RUNTIME.operation_model("ConverseStream" if stream else "Converse").input_shape
    assert _shape_problems({"modelId": model, **request}, shape) == ""


def _assert_valid_converse_answer(answer: dict) -> None:
    assert _shape_problems(answer, RUNTIME.operation_model("Converse").output_shape) == ""


def _stream_member(name: str) -> Shape:
    return RUNTIME.operation_model("ConverseStream").output_shape.members["stream"].members[name]


# --- Converse requests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("request_", ".converse.json"))
def test_request_translates_to_golden_converse_request(case: str) -> None:
    body = _load(f"request_{case}.openai.json")
    translated = _translate(body)
    assert translated == _load(f"request_{case}.converse.json")
    _assert_valid_converse_request(translated, stream=body.get("stream") is True)


@pytest.mark.parametrize("case", _cases("request_", ".converse.json"))
def test_golden_converse_requests_fit_the_service_model(case: str) -> None:
    _assert_valid_converse_request(_load(f"request_{case}.converse.json"))


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_golden_openai_requests_fit_the_sdk_types(case: str) -> None:
    body = _load(f"request_{case}.openai.json")
    params = (completion_create_params.CompletionCreateParamsStreaming if body.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(body)


@pytest.mark.parametrize("broken", [
    {"messages": [{"role": "user", "content": [{"text": "hi", "cache_control": {"type": "ephemeral"}}]}]},
    {"messages": [{"role": "user", "content": [{"text": "hi", "cachePoint": {"type": "default"}}]}]},
    {"messages": [{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": "not base64!"}}}]}]},
    {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"temperature": 1.5}},
    {"messages": [{"role": "user", "content": [{"toolUse": {"toolUseId": "a b", "name": "f", "input": {}}}]}]},
], ids=["unknown_key", "two_union_members", "bad_base64", "temperature_range", "tool_use_id_pattern"])
def test_schema_validation_catches_broken_requests(broken: dict) -> None:
    with pytest.raises((AssertionError, ValueError)):
        _assert_valid_converse_request(broken)


def test_every_openai_request_field_has_a_rule() -> None:
    assert_every_openai_field_has_a_rule(bedrock_converse.FIELDS)


REFUSED_SAMPLES = _load("refused_fields.json")
DROPPED_SAMPLES = _load("dropped_fields.json")


def test_every_refused_and_dropped_field_has_a_sample() -> None:
    rules = bedrock_converse.FIELDS
    assert set(REFUSED_SAMPLES) == fields_with_rule(rules, bedrock_converse.REFUSED)
    assert set(DROPPED_SAMPLES) == fields_with_rule(rules, bedrock_converse.DROPPED)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_refused_field_is_named_in_the_bad_request(field: str) -> None:
    assert_refused_field_is_named(_translate, {**BASE_BODY, field: REFUSED_SAMPLES[field]}, field)


@pytest.mark.parametrize("field", sorted(DROPPED_SAMPLES))
def test_dropped_field_leaves_the_converse_request_unchanged(field: str) -> None:
    assert _translate({**BASE_BODY, field: DROPPED_SAMPLES[field]}) == _translate(BASE_BODY)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_null_refused_field_counts_as_absent(field: str) -> None:
    assert _translate({**BASE_BODY, field: None}) == _translate(BASE_BODY)


@pytest.mark.parametrize("case", _load("bad_requests.json"), ids=lambda case: case["name"])
def test_untranslatable_request_is_refused_with_its_param(case: dict) -> None:
    assert_refused_with_param(_translate, {**BASE_BODY, **case["body"]}, case["param"], case["message"])


@pytest.mark.parametrize("case", _load("tool_choice_cases.json"), ids=lambda case: case["name"])
def test_tool_choice_variants(case: dict) -> None:
    body = {**BASE_BODY, "tools": [{"type": "function", "function": {"name": "get_weather"}},
                                   {"type": "function", "function": {"name": "get_time"}}]}
    for name in ("tool_choice", "parallel_tool_calls"):
        if name in case:
            body[name] = case[name]
    translated = _translate(body)
    config = translated.get("toolConfig")
    assert (config or {}).get("toolChoice") == case["expected_tool_choice"]
    names = [tool["toolSpec"]["name"] for tool in (config or {}).get("tools", ())]
    assert names == case.get("expected_tools", ["get_weather", "get_time"])
    _assert_valid_converse_request(translated)


@pytest.mark.parametrize("case", _load("reasoning_cases.json"), ids=lambda case: case["name"])
def test_reasoning_effort_per_model_family(case: dict) -> None:
    body = {**BASE_BODY, **case["body"]}
    if "refused_param" in case:
        with pytest.raises(BadRequest) as refused:
            _translate(body, case["model"])
        assert refused.value.param == case["refused_param"]
        return
    translated = _translate(body, case["model"])
    assert translated.get("additionalModelRequestFields") == case["expected_fields"]
    assert translated.get("inferenceConfig") == case["expected_inference"]
    _assert_valid_converse_request(translated, model=case["model"])


@pytest.mark.parametrize(("temperature", "expected"), [(0, 0.0), (0.7, 0.7), (1, 1.0), (1.5, 1.0), (2, 1.0)])
def test_temperature_is_clamped_to_the_converse_range(temperature: float, expected: float) -> None:
    assert _translate({**BASE_BODY, "temperature": temperature})["inferenceConfig"] == {"temperature": expected}


def test_max_tokens_is_sent_only_when_asked_or_needed_by_thinking() -> None:
    assert "inferenceConfig" not in _translate(BASE_BODY)
    assert _translate({**BASE_BODY, "max_tokens": 10})["inferenceConfig"] == {"maxTokens": 10}
    assert _translate({**BASE_BODY, "max_tokens": 10, "max_completion_tokens": 20})["inferenceConfig"] == {
        "maxTokens": 20}
    thinking = _translate({**BASE_BODY, "reasoning_effort": "low"})
    assert thinking["inferenceConfig"] == {"maxTokens": DEFAULT_MAX_TOKENS}


def test_consecutive_tool_results_share_one_user_turn_and_turns_alternate() -> None:
    translated = _translate(_load("request_tool_results_round_trip.openai.json"))
    roles = [turn["role"] for turn in translated["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    results = [block["toolResult"]["toolUseId"] for block in translated["messages"][2]["content"]
               if "toolResult" in block]
    assert results == ["call_paris", "call_oslo"]


def test_request_translation_does_not_modify_the_client_body() -> None:
    for case in _cases("request_", ".openai.json"):
        body = _load(f"request_{case}.openai.json")
        _translate(body)
        assert body == _load(f"request_{case}.openai.json")


@pytest.mark.parametrize("model", [
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "us.amazon.nova-2-lite-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
    "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-70b-instruct-v1:0",
])
def test_model_id_is_encoded_in_the_path_like_boto3(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    paths: list[str] = []

    def capture(request: typing.Any, **kwargs: object) -> None:
        paths.append(request.url.removeprefix("https://bedrock-runtime.us-east-1.amazonaws.com"))
        raise _Captured

    client.meta.events.register("before-send.bedrock-runtime.*", capture)
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    for call in (lambda: client.converse(modelId=model, messages=messages),
                 lambda: client.converse_stream(modelId=model, messages=messages),
                 lambda: client.invoke_model(modelId=model, body=b"{}"),
                 lambda: client.invoke_model_with_response_stream(modelId=model, body=b"{}")):
        with pytest.raises(_Captured):
            call()
    assert paths == [bedrock_converse.chat_path(model, False), bedrock_converse.chat_path(model, True),
                     bedrock_anthropic.chat_path(model, False), bedrock_anthropic.chat_path(model, True)]
    assert bedrock_embeddings.embeddings_path(model) == paths[2]


class _Captured(Exception):
    pass


def test_wire_constants() -> None:
    assert bedrock_converse.SCHEMA == "bedrock-converse"
    assert bedrock_anthropic.SCHEMA == "bedrock-anthropic"
    assert bedrock_converse.BedrockConverseTranslator.serves_embeddings
    assert not bedrock_anthropic.BedrockAnthropicTranslator.serves_embeddings


# --- Converse responses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("response_", ".converse.json"))
def test_response_translates_to_golden_chat_completion(case: str) -> None:
    answer = _load(f"response_{case}.converse.json")
    _assert_valid_converse_answer(answer)  # the fixture is a real Converse answer
    translated = bedrock_converse.chat_response(answer, MODEL, CREATED)
    assert _masked([translated]) == [_load(f"response_{case}.openai.json")]
    _assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion")
    assert bedrock_converse.usage_of(answer) == translated["usage"]


def test_every_converse_stop_reason_is_mapped() -> None:
    stop_reasons = RUNTIME.operation_model("Converse").output_shape.members["stopReason"].enum
    assert set(stop_reasons) == set(_load("stop_reasons.json"))


@pytest.mark.parametrize(("stop_reason", "finish_reason"), sorted(_load("stop_reasons.json").items()))
def test_stop_reason_maps_to_finish_reason(stop_reason: str, finish_reason: str) -> None:
    answer = {**_load("response_text.converse.json"), "stopReason": stop_reason}
    assert bedrock_converse.chat_response(answer, MODEL, CREATED)["choices"][0]["finish_reason"] == finish_reason


def test_tool_call_ids_and_arguments_survive_a_round_trip() -> None:
    """Converse toolUse -> OpenAI tool_calls -> the client's next request -> the same toolUse blocks."""
    answer = _load("response_tool_calls.converse.json")
    message = bedrock_converse.chat_response(answer, MODEL, CREATED)["choices"][0]["message"]
    follow_up = {**BASE_BODY, "tools": [{"type": "function", "function": {"name": "get_weather"}},
                                        {"type": "function", "function": {"name": "get_time"}}],
                 "messages": [{"role": "user", "content": "Weather and time?"},
                              {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
                              *({"role": "tool", "tool_call_id": call["id"], "content": "ok"}
                                for call in message["tool_calls"])]}
    translated = _translate(follow_up)
    _assert_valid_converse_request(translated)
    assert translated["messages"][1]["content"] == answer["output"]["message"]["content"]


# --- Converse streams -----------------------------------------------------------------------------------------------


def _converse_frames(name: str) -> bytes:
    """The `.jsonl` fixture as real event-stream bytes; each event checked against the service model first."""
    frames = b""
    for line in (FIXTURES / name).read_text().splitlines():
        entry = json.loads(line)
        payload = json.dumps(entry["payload"]).encode()
        if "exception" in entry:
            assert _shape_problems(entry["payload"], _stream_member(entry["exception"])) == ""
            frames += encode_message({":message-type": "exception", ":exception-type": entry["exception"],
                                      ":content-type": "application/json"}, payload)
        else:
            event = {key: value for key, value in entry["payload"].items() if key != "p"}  # Bedrock's padding
            assert _shape_problems(event, _stream_member(entry["event"])) == ""
            frames += encode_event(entry["event"], payload)
    return frames


def _run(stream: typing.Any, frames: bytes) -> list[dict]:
    decoder = EventStreamDecoder()
    out: list[dict] = []
    for event in decoder.feed(frames) + decoder.finish():
        out.extend(stream.feed(event.event, event.data))
    return out + stream.finish()


def _run_converse(case: str, include_usage: bool) -> tuple[bedrock_converse.ChatStream, list[dict]]:
    stream = bedrock_converse.ChatStream(MODEL, CREATED, include_usage)
    return stream, _run(stream, _converse_frames(f"stream_{case}.converse.jsonl"))


def _stream_cases(marker: str) -> list[tuple[str, bool]]:
    cases = []
    for path in sorted(FIXTURES.glob("stream_*.openai*.sse")):
        case, _, rest = path.name.removeprefix("stream_").partition(".openai")
        if (FIXTURES / f"stream_{case}.{marker}.jsonl").exists():
            cases.append((case, rest == ".usage.sse"))
    return cases


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases("converse"))
def test_converse_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    _, chunks = _run_converse(case, include_usage)
    assert _masked(chunks) == _sse_chunks(f"stream_{case}.openai{'.usage' if include_usage else ''}.sse")
    _assert_valid_chunks(chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_recorded_whether_or_not_the_client_asked(include_usage: bool) -> None:
    stream, chunks = _run_converse("text", include_usage)
    assert stream.finished
    assert stream.usage == {"prompt_tokens": 1225, "completion_tokens": 6, "total_tokens": 1231,
                            "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 0}}
    assert all(("usage" in chunk) == include_usage for chunk in chunks)


def test_tool_call_arguments_stream_in_fragments() -> None:
    _, chunks = _run_converse("tool_calls", include_usage=True)
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls", ()):
                call = calls.setdefault(fragment["index"], {"id": None, "name": None, "arguments": ""})
                call["id"] = fragment.get("id") or call["id"]
                call["name"] = fragment["function"].get("name") or call["name"]
                call["arguments"] += fragment["function"].get("arguments") or ""
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("tooluse_Paris0000000000000001", "get_weather", {"city": "Paris", "unit": "c"}),
        ("tooluse_Oslo00000000000000002", "get_weather", {"city": "Oslo"}),
        ("tooluse_Time00000000000000003", "get_time", {}),
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_object_answer_streams_as_text() -> None:
    _, chunks = _run_converse("json_object", include_usage=False)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert json.loads(text) == {"city": "Lisbon"}
    assert not any("tool_calls" in chunk["choices"][0]["delta"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_exception_mid_stream_ends_the_stream_without_finishing_it() -> None:
    stream, chunks = _run_converse("exception_mid_stream", include_usage=True)
    assert chunks[-1]["error"]["code"] == "ModelStreamErrorException"
    assert not stream.finished
    assert stream.feed("messageStop", b'{"stopReason":"end_turn"}') == []
    assert stream.finish() == []


def test_stream_cut_before_message_stop_reports_an_error() -> None:
    stream, chunks = _run_converse("cut_early", include_usage=False)
    assert not stream.finished
    assert_error_envelope(chunks[-1])
    assert "ended before messageStop" in chunks[-1]["error"]["message"]


def test_stream_without_metadata_still_finishes() -> None:
    stream, _ = _run_converse("no_metadata", include_usage=True)
    assert stream.finished
    assert stream.usage is None


def test_metadata_before_message_stop_still_ends_with_usage() -> None:
    stream = bedrock_converse.ChatStream(MODEL, CREATED, include_usage=True)
    usage = b'{"usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5},"metrics":{"latencyMs":1}}'
    assert stream.feed("metadata", usage) == []
    chunks = stream.feed("messageStop", b'{"stopReason":"end_turn"}')
    assert [chunk["choices"] for chunk in chunks][1] == []
    assert chunks[1]["usage"]["total_tokens"] == 5
    assert stream.finished


def test_malformed_stream_event_is_an_error() -> None:
    stream = bedrock_converse.ChatStream(MODEL, CREATED, include_usage=False)
    chunks = stream.feed("contentBlockDelta", b"{not json")
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert stream.finish() == []


@pytest.mark.parametrize("case", _load("stream_exceptions.json"), ids=lambda case: case["exception"])
def test_stream_exception_maps_to_an_openai_error(case: dict) -> None:
    stream = bedrock_converse.ChatStream(MODEL, CREATED, include_usage=False)
    assert stream.feed(f"exception:{case['exception']}", json.dumps(case["payload"]).encode()) == [case["expected"]]


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
@pytest.mark.parametrize("module", [bedrock_converse, bedrock_anthropic], ids=lambda module: module.SCHEMA)
def test_error_response_maps_status_and_body(case: dict, module: typing.Any) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = module.error_response(case["status"], body, case.get("headers"))
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


def test_error_exception_name_from_the_header_wins_over_the_status() -> None:
    header = {"x-amzn-errortype": "ModelNotReadyException:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    assert bedrock_converse.error_response(429, b'{"message":"warming up"}')[0] == 429
    assert bedrock_converse.error_response(429, b'{"message":"warming up"}', header)[0] == 503


def test_error_messages_do_not_echo_unrecognised_bodies() -> None:
    secret = b"proxy says: Authorization AWS4-HMAC-SHA256 Credential=AKIASECRET was rejected"
    _, error = bedrock_converse.error_response(502, secret)
    assert "AKIASECRET" not in error["error"]["message"]


# --- embeddings ---------------------------------------------------------------------------------------------------


def test_every_openai_embeddings_field_has_a_rule() -> None:
    sdk_fields = set(embedding_create_params.EmbeddingCreateParams.__annotations__)
    assert sdk_fields - set(bedrock_embeddings.FIELDS) == set()
    assert set(bedrock_embeddings.FIELDS) - sdk_fields == {"input_type"}  # the one Cohere extension


@pytest.mark.parametrize("case", _load("embeddings_requests.json"), ids=lambda case: case["name"])
def test_embeddings_request_per_model_family(case: dict) -> None:
    assert bedrock_converse.embeddings_request(case["body"], case["model"]) == case["expected"]
    assert bedrock_converse.embeddings_path(case["model"]).endswith("/invoke")


@pytest.mark.parametrize("case", _load("embeddings_refused.json"), ids=lambda case: case["name"])
def test_untranslatable_embeddings_request_is_refused(case: dict) -> None:
    with pytest.raises(BadRequest) as refused:
        bedrock_converse.embeddings_request({"model": "e", **case["body"]}, case["model"])
    assert refused.value.param == case["param"]
    assert case["message"] in refused.value.message


@pytest.mark.parametrize("case", _load("embeddings_responses.json"), ids=lambda case: case["name"])
def test_embeddings_response_per_model_family(case: dict) -> None:
    translated = bedrock_converse.embeddings_response(case["body"], case["model"])
    assert translated == case["expected"]
    CreateEmbeddingResponse.model_validate(translated)


# --- Claude through InvokeModel (bedrock-anthropic) ----------------------------------------------------------------


def _bedrock_anthropic(body: dict) -> dict:
    return bedrock_anthropic.chat_request(body, CLAUDE, default_max_tokens=DEFAULT_MAX_TOKENS)


def _assert_valid_invoke_body(request: dict) -> None:
    """The anthropic SDK's request type, with the `model` and `stream` that InvokeModel moves out of the body."""
    assert request["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in request and "stream" not in request
    _assert_valid_anthropic_request({key: value for key, value in request.items() if key != "anthropic_version"}
                                    | {"model": CLAUDE})


def _has_image_url(body: dict) -> bool:
    return any(isinstance(part, dict) and part.get("type") == "image_url"
               and str((part.get("image_url") or {}).get("url", "")).startswith("http")
               for message in body["messages"] if isinstance(message.get("content"), list)
               for part in message["content"])


@pytest.mark.parametrize("case", _cases("request_", ".openai.json", ANTHROPIC_FIXTURES))
def test_invoke_body_is_the_anthropic_request_without_model_and_stream(case: str) -> None:
    body = _load(f"request_{case}.openai.json", ANTHROPIC_FIXTURES)
    if _has_image_url(body):
        with pytest.raises(BadRequest, match="Bedrock does not fetch image URLs"):
            _bedrock_anthropic(body)
        return
    expected = _load(f"request_{case}.anthropic.json", ANTHROPIC_FIXTURES)
    expected = {"anthropic_version": "bedrock-2023-05-31",
                **{key: value for key, value in expected.items() if key not in ("model", "stream")}}
    translated = _bedrock_anthropic(body)
    assert translated == expected
    _assert_valid_invoke_body(translated)


def test_invoke_request_translates_to_golden_body() -> None:
    translated = _bedrock_anthropic(_load("request_invoke_claude.openai.json"))
    assert translated == _load("request_invoke_claude.invoke.json")
    _assert_valid_invoke_body(translated)


def test_invoke_field_rules_are_the_anthropic_ones() -> None:
    assert bedrock_anthropic.FIELDS == anthropic.FIELDS
    with pytest.raises(BadRequest) as refused:
        _bedrock_anthropic({**BASE_BODY, "n": 3})
    assert refused.value.param == "n"


def test_invoke_answer_is_an_anthropic_message() -> None:
    answer = _load("response_text_and_tool_calls.anthropic.json", ANTHROPIC_FIXTURES)
    translated = bedrock_anthropic.chat_response(answer, CLAUDE, CREATED)
    assert translated == anthropic.chat_response(answer, CLAUDE, CREATED)
    assert bedrock_anthropic.usage_of(answer) == translated["usage"]


def _chunk_frame(event_json: bytes, padding: str = "abcdefgh") -> bytes:
    payload = {"bytes": base64.b64encode(event_json).decode(), "p": padding}
    assert _shape_problems({"bytes": payload["bytes"]}, RUNTIME.operation_model(
        "InvokeModelWithResponseStream").output_shape.members["body"].members["chunk"]) == ""
    return encode_event("chunk", json.dumps(payload).encode())


@pytest.mark.parametrize("name", sorted(path.name for path in ANTHROPIC_FIXTURES.glob("stream_*.openai*.sse")))
def test_invoke_stream_wraps_the_anthropic_stream(name: str) -> None:
    """Every Anthropic stream fixture, as Bedrock `chunk` events, gives the Anthropic translator's chunks."""
    case = name.removeprefix("stream_").partition(".openai")[0]
    decoder = SSEDecoder()
    events = decoder.feed((ANTHROPIC_FIXTURES / f"stream_{case}.anthropic.sse").read_bytes()) + decoder.finish()
    frames = b"".join(_chunk_frame(event.data) for event in events)
    stream = bedrock_anthropic.ChatStream(CLAUDE, CREATED, include_usage=".usage." in name)
    chunks = _run(stream, frames)
    assert chunks == _sse_chunks(name, ANTHROPIC_FIXTURES)


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases("invoke"))
def test_invoke_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    frames = b""
    for line in (FIXTURES / f"stream_{case}.invoke.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "exception" in entry:
            frames += encode_message({":message-type": "exception", ":exception-type": entry["exception"],
                                      ":content-type": "application/json"}, json.dumps(entry["payload"]).encode())
        else:
            frames += _chunk_frame(json.dumps(entry["anthropic"]).encode(), entry["p"])
    stream = bedrock_anthropic.ChatStream(CLAUDE, CREATED, include_usage)
    chunks = _run(stream, frames)
    assert chunks == _sse_chunks(f"stream_{case}.openai{'.usage' if include_usage else ''}.sse")
    _assert_valid_chunks(chunks)
    assert stream.finished == ("error" not in chunks[-1])


def test_invoke_stream_with_undecodable_chunk_is_an_error() -> None:
    stream = bedrock_anthropic.ChatStream(CLAUDE, CREATED, include_usage=False)
    chunks = stream.feed("chunk", b'{"bytes":"not base64!"}')
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert not stream.finished
