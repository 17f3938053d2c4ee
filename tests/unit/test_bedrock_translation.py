"""OpenAI <-> Bedrock (Converse, Claude through InvokeModel, embeddings): what only Bedrock does.

The golden pairs in tests/fixtures/bedrock/ are checked by tests/unit/test_goldens.py for both translators that read
them: Converse requests validated with botocore's own `ParamValidator` against the `bedrock-runtime` service model
(plus the patterns and ranges it leaves to the service), answers and event-stream frames validated against its output
shapes, InvokeModel Claude bodies against the anthropic SDK's request types, field rules, stop reasons, and errors
(the exception name from the `x-amzn-errortype` header included). Here are Bedrock's own mappings: reasoning per model
family, the Converse inference config, model ids in paths as boto3 writes them, stream exceptions, embeddings, and the
InvokeModel body and stream checked against every Anthropic golden.
"""

from __future__ import annotations

import json
import typing

import boto3
import pytest
from openai.types import CreateEmbeddingResponse, embedding_create_params

from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic, bedrock_anthropic, bedrock_converse, bedrock_embeddings
from tests.unit.goldens import (
    ANTHROPIC,
    BASE_BODY,
    BEDROCK_ANTHROPIC,
    BEDROCK_CONVERSE,
    CREATED,
    DEFAULT_MAX_TOKENS,
    assert_valid_converse_request,
    assert_valid_invoke_body,
    eventstream_events,
    invoke_chunk_frame,
)
from tests.unit.provider_checks import assert_error_envelope, feed_stream, streamed_text, streamed_tool_calls

MODEL = BEDROCK_CONVERSE.model
CLAUDE = BEDROCK_ANTHROPIC.model
_load = BEDROCK_CONVERSE.fixtures.load


def _translate(body: dict, model: str = MODEL) -> dict:
    return bedrock_converse.chat_request(body, model, default_max_tokens=DEFAULT_MAX_TOKENS)


# --- Converse requests ----------------------------------------------------------------------------------------------


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
    assert_valid_converse_request(translated, model=case["model"])


@pytest.mark.parametrize(("temperature", "expected"), [(0, 0.0), (0.7, 0.7), (1, 1.0), (1.5, 1.0), (2, 1.0)])
def test_temperature_is_clamped_to_the_converse_range(temperature: float, expected: float) -> None:
    assert _translate({**BASE_BODY, "temperature": temperature})["inferenceConfig"] == {
        "temperature": expected, "maxTokens": DEFAULT_MAX_TOKENS}


def test_max_tokens_is_the_clients_or_the_reserved_default() -> None:
    """Bedrock's own default is the model's limit: without the client's, the limit the gateway reserved for goes
    (Nova 2 at high effort takes none: `reasoning_cases.json`)."""
    assert _translate(BASE_BODY)["inferenceConfig"] == {"maxTokens": DEFAULT_MAX_TOKENS}
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


@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "Hi, I'm the support bot."}, {"role": "user", "content": "Hello"}],
    [{"role": "user", "content": [{"type": "text", "text": ""}]}, {"role": "assistant", "content": "Hi!"},
     {"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi!"}],
], ids=["history_opens_with_the_assistant", "empty_user_message_left_out", "assistant_prefill_only"])
def test_a_conversation_always_starts_with_a_user_turn(messages: list) -> None:
    translated = _translate({**BASE_BODY, "messages": messages})
    first, second = translated["messages"][:2]
    assert first == {"role": "user", "content": [{"text": bedrock_converse.LEADING_USER_TEXT}]}
    assert second["role"] == "assistant" and second["content"][0]["text"].startswith("Hi")
    assert_valid_converse_request(translated)


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


# --- Converse responses and streams --------------------------------------------------------------------------------


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
    assert_valid_converse_request(translated)
    assert translated["messages"][1]["content"] == answer["output"]["message"]["content"]


def test_tool_call_arguments_stream_in_fragments() -> None:
    _, chunks = BEDROCK_CONVERSE.run_stream("tool_calls", include_usage=True)
    calls = streamed_tool_calls(chunks)
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == [
        ("tooluse_Paris0000000000000001", "get_weather", {"city": "Paris", "unit": "c"}),
        ("tooluse_Oslo00000000000000002", "get_weather", {"city": "Oslo"}),
        ("tooluse_Time00000000000000003", "get_time", {}),
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_object_answer_streams_as_text() -> None:
    _, chunks = BEDROCK_CONVERSE.run_stream("json_object", include_usage=False)
    assert json.loads(streamed_text(chunks)) == {"city": "Lisbon"}
    assert not any("tool_calls" in chunk["choices"][0]["delta"] for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_without_metadata_still_finishes() -> None:
    stream, _ = BEDROCK_CONVERSE.run_stream("no_metadata", include_usage=True)
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


@pytest.mark.parametrize("case", _load("stream_exceptions.json"), ids=lambda case: case["exception"])
def test_stream_exception_maps_to_an_openai_error(case: dict) -> None:
    stream = bedrock_converse.ChatStream(MODEL, CREATED, include_usage=False)
    assert stream.feed(f"exception:{case['exception']}", json.dumps(case["payload"]).encode()) == [case["expected"]]


# --- errors --------------------------------------------------------------------------------------------------------


def test_error_exception_name_from_the_header_wins_over_the_status() -> None:
    header = {"x-amzn-errortype": "ModelNotReadyException:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    assert bedrock_converse.error_response(429, b'{"message":"warming up"}')[0] == 429
    assert bedrock_converse.error_response(429, b'{"message":"warming up"}', header)[0] == 503


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


def _has_image_url(body: dict) -> bool:
    return any(isinstance(part, dict) and part.get("type") == "image_url"
               and str((part.get("image_url") or {}).get("url", "")).startswith("http")
               for message in body["messages"] if isinstance(message.get("content"), list)
               for part in message["content"])


@pytest.mark.parametrize("case", ANTHROPIC.request_cases())
def test_invoke_body_is_the_anthropic_request_without_model_and_stream(case: str) -> None:
    client, provider = ANTHROPIC.request_pair(case)
    body = ANTHROPIC.fixtures.load(client)
    if _has_image_url(body):
        with pytest.raises(BadRequest, match="Bedrock does not fetch image URLs"):
            _bedrock_anthropic(body)
        return
    expected = {"anthropic_version": "bedrock-2023-05-31",
                **{key: value for key, value in ANTHROPIC.fixtures.load(provider).items()
                   if key not in ("model", "stream")}}
    translated = _bedrock_anthropic(body)
    assert translated == expected
    assert_valid_invoke_body(translated)


def test_invoke_field_rules_are_the_anthropic_ones() -> None:
    assert bedrock_anthropic.FIELDS == anthropic.FIELDS
    with pytest.raises(BadRequest) as refused:
        _bedrock_anthropic({**BASE_BODY, "n": 3})
    assert refused.value.param == "n"


def test_invoke_answer_is_an_anthropic_message() -> None:
    answer = ANTHROPIC.fixtures.load("response_text_and_tool_calls.anthropic.json")
    translated = bedrock_anthropic.chat_response(answer, CLAUDE, CREATED)
    assert translated == anthropic.chat_response(answer, CLAUDE, CREATED)
    assert bedrock_anthropic.usage_of(answer) == translated["usage"]


@pytest.mark.parametrize(("case", "include_usage"), ANTHROPIC.stream_cases())
def test_invoke_stream_wraps_the_anthropic_stream(case: str, include_usage: bool) -> None:
    """Every Anthropic stream fixture, as Bedrock `chunk` events, gives the Anthropic translator's chunks."""
    frames = b"".join(invoke_chunk_frame(event.data) for event in ANTHROPIC.provider_events(case))
    events = eventstream_events(frames)
    for event in events:
        BEDROCK_ANTHROPIC.valid_event(event)
    stream = bedrock_anthropic.ChatStream(CLAUDE, CREATED, include_usage)
    assert feed_stream(stream, events) == ANTHROPIC.expected_chunks(case, include_usage)


def test_invoke_stream_with_undecodable_chunk_is_an_error() -> None:
    stream = bedrock_anthropic.ChatStream(CLAUDE, CREATED, include_usage=False)
    chunks = stream.feed("chunk", b'{"bytes":"not base64!"}')
    assert len(chunks) == 1
    assert_error_envelope(chunks[0])
    assert not stream.finished
