"""The demo Bedrock provider speaks the real wire formats: boto3's `bedrock-runtime` client parses every answer
(JSON, AWS event-stream, AWS errors), and the gateway's own pieces (translators, SigV4 credential, event-stream
decoder) round-trip through it.

The provider runs on its own event loop in a background thread so the synchronous clients can call it.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import threading
import typing
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path

import anthropic.types as anthropic_types
import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
import httpx
import pydantic
import pytest
from botocore.config import Config
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.auth import aws
from ext_proc.auth.backend_credentials import credential_for
from ext_proc.config.models import Backend
from ext_proc.demo.answers import tool_input
from ext_proc.demo.server import DemoProvider, start_demo_provider
from ext_proc.providers import bedrock_anthropic, bedrock_converse
from ext_proc.streaming.eventstream import EventStreamDecoder
from tests.e2e.certs import make_ca_and_server_cert

T = typing.TypeVar("T")
ACCESS_KEY = "AKIADEMOEXAMPLE"
REGION = "us-east-1"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
NOVA = "us.amazon.nova-pro-v1:0"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                  "required": ["city"]}
USER_HI = [{"role": "user", "content": [{"text": "hi there"}]}]
_LOADER = botocore.loaders.create_loader()


class _ProviderThread:
    def __init__(self, **kwargs: object) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.provider: DemoProvider = self.run(start_demo_provider(**kwargs))

    def run(self, coroutine: Coroutine[object, object, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def close(self) -> None:
        self.run(self.provider.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "demo-secret")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def start() -> Iterator[Callable[..., DemoProvider]]:
    started: list[_ProviderThread] = []

    def run(name: str = "bedrock-a", **kwargs: object) -> DemoProvider:
        started.append(_ProviderThread(kind="bedrock", name=name, **kwargs))
        return started[-1].provider

    yield run
    for running in started:
        running.close()


@pytest.fixture(scope="module")
def shared_demo() -> Iterator[DemoProvider]:
    running = _ProviderThread(kind="bedrock", name="bedrock-a", api_key=ACCESS_KEY)
    yield running.provider
    running.close()


@pytest.fixture
def demo(shared_demo: DemoProvider) -> DemoProvider:
    """One provider for the module (its request log cleared for each test)."""
    httpx.delete(f"{shared_demo.url}/_demo/requests")
    return shared_demo


def _client(provider: DemoProvider, headers: dict[str, str] | None = None, url: str | None = None,
            verify: str | None = None) -> typing.Any:
    # A new session each time (boto3's default session keeps the first credentials it found), sharing one loader
    # of the service model files.
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10)
    client = boto3.session.Session(botocore_session=core).client(
        "bedrock-runtime", region_name=REGION, endpoint_url=url or provider.url, config=config, verify=verify)
    if headers:
        def add(request: typing.Any, **kwargs: object) -> None:
            for name, value in headers.items():
                request.headers[name] = value
        client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


@pytest.fixture
def client(demo: DemoProvider) -> typing.Any:
    return _client(demo)


def _stream_text(events: typing.Iterable[dict]) -> str:
    return "".join(event["contentBlockDelta"]["delta"].get("text", "") for event in events
                   if "contentBlockDelta" in event)


# --- Converse through boto3 ---------------------------------------------------------------------------------------


def test_converse_echoes_the_last_user_message(client: typing.Any) -> None:
    answer = client.converse(modelId=NOVA, messages=USER_HI, system=[{"text": "be brief"}])
    assert answer["output"]["message"] == {
        "role": "assistant", "content": [{"text": f"Hello from bedrock-a ({NOVA})! You said: hi there"}]}
    assert answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    assert usage["outputTokens"] == 8
    assert usage["totalTokens"] == usage["inputTokens"] + 8
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-demo-provider"] == "bedrock-a"


def test_converse_max_tokens_and_stop_sequences_cut_the_answer(client: typing.Any) -> None:
    cut = client.converse(modelId=NOVA, messages=USER_HI, inferenceConfig={"maxTokens": 3})
    assert cut["output"]["message"]["content"] == [{"text": "Hello from bedrock-a "}]
    assert cut["stopReason"] == "max_tokens"
    stopped = client.converse(modelId=NOVA, messages=USER_HI, inferenceConfig={"stopSequences": ["!"]})
    assert stopped["output"]["message"]["content"] == [{"text": f"Hello from bedrock-a ({NOVA})"}]
    assert stopped["stopReason"] == "stop_sequence"


def test_converse_calls_the_forced_tool_and_reads_its_result(client: typing.Any) -> None:
    tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER_SCHEMA}}},
                       {"cachePoint": {"type": "default"}}],
             "toolChoice": {"tool": {"name": "get_weather"}}}
    answer = client.converse(modelId=CLAUDE, messages=USER_HI, toolConfig=tools)
    assert answer["stopReason"] == "tool_use"
    (block,) = answer["output"]["message"]["content"]
    use = block["toolUse"]
    assert use["name"] == "get_weather" and use["input"] == tool_input(WEATHER_SCHEMA)
    follow_up = [*USER_HI, answer["output"]["message"],
                 {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"],
                                                              "content": [{"text": "sunny"}]}}]}]
    final = client.converse(modelId=CLAUDE, messages=follow_up, toolConfig=tools)
    assert final["output"]["message"]["content"] == [
        {"text": f"Hello from bedrock-a ({CLAUDE})! The tool returned: sunny"}]
    assert final["usage"]["cacheReadInputTokens"] > 0


def test_converse_structured_output_follows_the_schema(client: typing.Any) -> None:
    output = {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "name": "weather", "schema": json.dumps(WEATHER_SCHEMA)}}}}
    answer = client.converse(modelId=CLAUDE, messages=USER_HI, outputConfig=output)
    assert json.loads(answer["output"]["message"]["content"][0]["text"]) == tool_input(WEATHER_SCHEMA)


def test_converse_reasoning_comes_first(client: typing.Any) -> None:
    answer = client.converse(modelId=CLAUDE, messages=USER_HI, inferenceConfig={"maxTokens": 3000},
                             additionalModelRequestFields={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    reasoning, text = answer["output"]["message"]["content"]
    assert reasoning["reasoningContent"]["reasoningText"]["text"].startswith("The user said: hi there")
    assert text["text"].startswith("Hello from bedrock-a")


def test_converse_stream_says_the_same_in_events(client: typing.Any) -> None:
    events = list(client.converse_stream(modelId=NOVA, messages=USER_HI)["stream"])
    assert events[0] == {"messageStart": {"role": "assistant"}}
    assert _stream_text(events) == f"Hello from bedrock-a ({NOVA})! You said: hi there"
    assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 8


def test_converse_stream_tool_input_arrives_in_fragments(client: typing.Any) -> None:
    tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER_SCHEMA}}}],
             "toolChoice": {"any": {}}}
    events = list(client.converse_stream(modelId=CLAUDE, messages=USER_HI, toolConfig=tools)["stream"])
    starts = [event["contentBlockStart"]["start"]["toolUse"] for event in events if "contentBlockStart" in event]
    assert [start["name"] for start in starts] == ["get_weather"]
    pieces = [event["contentBlockDelta"]["delta"]["toolUse"]["input"] for event in events
              if "toolUse" in event.get("contentBlockDelta", {}).get("delta", {})]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == tool_input(WEATHER_SCHEMA)
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}


def test_parallel_tool_header_asks_for_several_calls(demo: DemoProvider) -> None:
    tools = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": WEATHER_SCHEMA}}}]}
    answer = _client(demo, {"x-demo-parallel-tools": "3"}).converse(modelId=CLAUDE, messages=USER_HI,
                                                                    toolConfig=tools)
    assert [block["toolUse"]["name"] for block in answer["output"]["message"]["content"]] == ["get_weather"] * 3


def test_stream_exception_header_fails_the_stream(demo: DemoProvider) -> None:
    client = _client(demo, {"x-demo-stream-exception": "throttlingException"})
    with pytest.raises(botocore.exceptions.EventStreamError) as failed:
        list(client.converse_stream(modelId=NOVA, messages=USER_HI)["stream"])
    assert failed.value.response["Error"]["Code"] == "throttlingException"


def test_invalid_converse_requests_are_validation_errors(client: typing.Any) -> None:
    cases = [
        [{"role": "assistant", "content": [{"text": "hi"}]}],
        [{"role": "user", "content": [{"text": "a"}]}, {"role": "user", "content": [{"text": "b"}]}],
        [{"role": "user", "content": [{"text": " "}]}],
        [{"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "x"}]}}]}],
    ]
    for messages in cases:
        with pytest.raises(client.exceptions.ValidationException):
            client.converse(modelId=NOVA, messages=messages)


# --- InvokeModel through boto3 -------------------------------------------------------------------------------------


def _claude_body(**extra: object) -> bytes:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hi there"}], **extra}).encode()


def test_invoke_claude_answers_an_anthropic_message(client: typing.Any) -> None:
    response = client.invoke_model(modelId=CLAUDE, body=_claude_body())
    message = anthropic_types.Message.model_validate_json(response["body"].read())
    assert message.content[0].text == f"Hello from bedrock-a ({CLAUDE})! You said: hi there"  # type: ignore[union-attr]
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == str(message.usage.output_tokens)


def test_invoke_claude_stream_carries_anthropic_events_in_chunks(client: typing.Any) -> None:
    response = client.invoke_model_with_response_stream(modelId=CLAUDE, body=_claude_body())
    events = [json.loads(event["chunk"]["bytes"]) for event in response["body"]]
    for event in events:
        pydantic.TypeAdapter(anthropic_types.RawMessageStreamEvent).validate_python(event)
    assert [event["type"] for event in events][:2] == ["message_start", "content_block_start"]
    text = "".join(event["delta"].get("text", "") for event in events if event["type"] == "content_block_delta")
    assert text == f"Hello from bedrock-a ({CLAUDE})! You said: hi there"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 8


@pytest.mark.parametrize("key", ["model", "stream"])
def test_invoke_claude_refuses_keys_bedrock_refuses(client: typing.Any, key: str) -> None:
    with pytest.raises(client.exceptions.ValidationException, match=f"extraneous key \\[{key}\\]"):
        client.invoke_model(modelId=CLAUDE, body=_claude_body(**{key: CLAUDE if key == "model" else True}))


@pytest.mark.parametrize(("model", "body", "dimensions"), [
    ("amazon.titan-embed-text-v2:0", {"inputText": "hello", "dimensions": 256, "normalize": True}, 256),
    ("amazon.titan-embed-text-v2:0", {"inputText": "hello"}, 1024),
    ("amazon.titan-embed-text-v1", {"inputText": "hello"}, 1536),
])
def test_invoke_titan_embeds_one_text(client: typing.Any, model: str, body: dict, dimensions: int) -> None:
    answer = json.loads(client.invoke_model(modelId=model, body=json.dumps(body))["body"].read())
    assert len(answer["embedding"]) == dimensions
    assert math.isclose(sum(value * value for value in answer["embedding"]), 1.0, rel_tol=1e-5)
    assert answer["inputTextTokenCount"] == 2


def test_invoke_cohere_embeds_a_batch(client: typing.Any) -> None:
    body = {"texts": ["one", "two"], "input_type": "search_document"}
    answer = json.loads(client.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps(body))["body"].read())
    assert answer["response_type"] == "embeddings_floats" and answer["texts"] == ["one", "two"]
    assert [len(vector) for vector in answer["embeddings"]] == [1024, 1024]
    typed = json.loads(client.invoke_model(modelId="cohere.embed-english-v3",
                                           body=json.dumps({**body, "embedding_types": ["float"]}))["body"].read())
    assert typed["embeddings"]["float"] == answer["embeddings"]


def test_invoke_titan_refuses_a_batch_field(client: typing.Any) -> None:
    with pytest.raises(client.exceptions.ValidationException, match="extraneous key"):
        client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"texts": ["a", "b"]}))


# --- authentication and errors -------------------------------------------------------------------------------------


def test_wrong_access_key_is_refused(demo: DemoProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        _client(demo).converse(modelId=NOVA, messages=USER_HI)
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_bedrock_api_key_is_accepted_as_a_bearer_token(start: Callable[..., DemoProvider],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # botocore sends a bearer token over HTTPS only (1.44 refuses plain HTTP), as the real service requires
    ca, cert, key = make_ca_and_server_cert(tmp_path, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    provider = start(api_key="ABSK-demo-key", ssl_context=context)
    url = f"https://localhost:{provider.port}"
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSK-demo-key")
    answer = _client(provider, url=url, verify=str(ca)).converse(modelId=NOVA, messages=USER_HI)
    assert answer["stopReason"] == "end_turn"
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSK-other")
    with pytest.raises(botocore.exceptions.ClientError, match="UnrecognizedClientException"):
        _client(provider, url=url, verify=str(ca)).converse(modelId=NOVA, messages=USER_HI)


GOOD_AUTHORIZATION = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20250101/us-east-1/bedrock/aws4_request, "
                      f"SignedHeaders=host;x-amz-date, Signature={'a' * 64}")


@pytest.mark.parametrize(("headers", "exception"), [
    ({}, "MissingAuthenticationTokenException"),
    ({"authorization": "AWS4-HMAC-SHA256 Credential=x", "x-amz-date": "20250101T000000Z"},
     "IncompleteSignatureException"),
    ({"authorization": GOOD_AUTHORIZATION}, "IncompleteSignatureException"),
    ({"authorization": GOOD_AUTHORIZATION.replace("/bedrock/", "/s3/"), "x-amz-date": "20250101T000000Z"},
     "InvalidSignatureException"),
    ({"authorization": GOOD_AUTHORIZATION, "x-amz-date": "20250102T000000Z"}, "InvalidSignatureException"),
    ({"authorization": GOOD_AUTHORIZATION.replace("host;x-amz-date", "x-amz-date"),
      "x-amz-date": "20250101T000000Z"}, "InvalidSignatureException"),
], ids=["missing", "malformed", "no_date", "wrong_service", "date_mismatch", "host_unsigned"])
def test_malformed_sigv4_is_refused_aws_style(demo: DemoProvider, headers: dict[str, str], exception: str) -> None:
    response = httpx.post(f"{demo.url}/model/{NOVA}/converse", headers=headers, json={"messages": USER_HI})
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith(exception + ":")
    assert isinstance(response.json()["message"], str)


def test_well_formed_sigv4_is_accepted_without_recomputing_it(demo: DemoProvider) -> None:
    response = httpx.post(f"{demo.url}/model/{NOVA}/converse", json={"messages": USER_HI},
                          headers={"authorization": GOOD_AUTHORIZATION, "x-amz-date": "20250101T000000Z"})
    assert response.status_code == 200


@pytest.mark.parametrize(("status", "code"), [(429, "ThrottlingException"), (500, "InternalServerException"),
                                              (503, "ServiceUnavailableException"), (400, "ValidationException")])
def test_injected_faults_are_aws_errors(demo: DemoProvider, status: int, code: str) -> None:
    client = _client(demo, {"x-demo-fault": f"bedrock-a:{status}"})
    with pytest.raises(botocore.exceptions.ClientError) as failed:
        client.converse(modelId=NOVA, messages=USER_HI)
    assert failed.value.response["Error"]["Code"] == code
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_unknown_operation_is_a_404(demo: DemoProvider) -> None:
    response = httpx.post(f"{demo.url}/model/{NOVA}/chat", headers={"authorization": "Bearer x"}, json={})
    assert response.status_code == 404
    assert response.headers["x-amzn-errortype"].startswith("UnknownOperationException")


# --- the gateway's pieces against the demo -------------------------------------------------------------------------


def _backend(schema: str, provider: DemoProvider) -> Backend:
    return Backend.model_validate({"id": "bedrock-demo", "schema": schema, "base_url": provider.url,
                                   "aws": {"region": REGION}})


def _post(provider: DemoProvider, module: typing.Any, path: str, body: dict) -> httpx.Response:
    """What the attempt stage does: the final path and body, signed by the backend's credential."""
    encoded = json.dumps(body).encode()
    credential = credential_for(_backend(module.SCHEMA, provider), None)
    assert isinstance(credential, aws.SigV4Credential)
    headers = dict(credential.headers("POST", provider.url + path, encoded))
    return httpx.post(provider.url + path, content=encoded, headers={**headers, "content-type": "application/json"})


def _chunks(module: typing.Any, response: httpx.Response, include_usage: bool) -> tuple[typing.Any, list[dict]]:
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    decoder = EventStreamDecoder()
    stream = module.ChatStream("public-model", 1700000000, include_usage)
    chunks: list[dict] = []
    for event in decoder.feed(response.content) + decoder.finish():
        chunks.extend(stream.feed(event.event, event.data))
    return stream, chunks + stream.finish()


OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]


@pytest.mark.parametrize(("module", "model"), [(bedrock_converse, NOVA), (bedrock_converse, CLAUDE),
                                               (bedrock_anthropic, CLAUDE)], ids=["converse-nova", "converse-claude",
                                                                                  "invoke-claude"])
def test_translated_and_signed_requests_round_trip(demo: DemoProvider, module: typing.Any, model: str) -> None:
    body = {"model": "public-model", "messages": [{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hi there"}], "max_tokens": 50}
    upstream = module.chat_request(body, model, default_max_tokens=1024)
    response = _post(demo, module, module.chat_path(model, False), upstream)
    assert response.status_code == 200, response.text
    completion = module.chat_response(response.json(), "public-model", 1700000000)
    ChatCompletion.model_validate(completion)
    assert completion["choices"][0]["message"]["content"] == f"Hello from bedrock-a ({model})! You said: hi there"
    assert completion["usage"]["completion_tokens"] == 8

    streamed = module.chat_request({**body, "stream": True}, model, default_max_tokens=1024)
    stream, chunks = _chunks(module, _post(demo, module, module.chat_path(model, True), streamed), True)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == completion["choices"][0]["message"]["content"]
    assert stream.finished and stream.usage["completion_tokens"] == 8


@pytest.mark.parametrize("module", [bedrock_converse, bedrock_anthropic], ids=lambda module: module.SCHEMA)
def test_translated_tool_calls_stream_back_as_openai_tool_calls(demo: DemoProvider, module: typing.Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "weather?"}], "tools": OPENAI_TOOLS,
            "tool_choice": "required", "stream": True}
    upstream = module.chat_request(body, CLAUDE, default_max_tokens=1024)
    _, chunks = _chunks(module, _post(demo, module, module.chat_path(CLAUDE, True), upstream), False)
    arguments = "".join(call["function"].get("arguments") or "" for chunk in chunks
                        for call in chunk["choices"][0]["delta"].get("tool_calls", ()))
    assert json.loads(arguments) == tool_input(WEATHER_SCHEMA)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_translated_json_modes_answer_json(demo: DemoProvider) -> None:
    schema_body = {"model": "m", "messages": [{"role": "user", "content": "weather?"}], "response_format": {
        "type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA}}}
    upstream = bedrock_converse.chat_request(schema_body, CLAUDE, default_max_tokens=1024)
    answer = _post(demo, bedrock_converse, bedrock_converse.chat_path(CLAUDE, False), upstream).json()
    content = bedrock_converse.chat_response(answer, "m", 0)["choices"][0]["message"]["content"]
    assert json.loads(content) == tool_input(WEATHER_SCHEMA)

    object_body = {**schema_body, "response_format": {"type": "json_object"}, "stream": True}
    upstream = bedrock_converse.chat_request(object_body, NOVA, default_max_tokens=1024)
    _, chunks = _chunks(bedrock_converse, _post(demo, bedrock_converse, bedrock_converse.chat_path(NOVA, True),
                                                upstream), False)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert json.loads(text) == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_translated_tool_round_trip_with_images_is_accepted(demo: DemoProvider) -> None:
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    body = {"model": "m", "tools": OPENAI_TOOLS, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "weather here?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4C, rain"}]}
    for module in (bedrock_converse, bedrock_anthropic):
        upstream = module.chat_request(body, CLAUDE, default_max_tokens=1024)
        response = _post(demo, module, module.chat_path(CLAUDE, False), upstream)
        assert response.status_code == 200, response.text
        content = module.chat_response(response.json(), "m", 0)["choices"][0]["message"]["content"]
        assert content == f"Hello from bedrock-a ({CLAUDE})! The tool returned: 4C, rain"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_converse_claude_thinking_round_trips_through_a_tool_loop(demo: DemoProvider, stream: bool) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "weather?"}], "tools": OPENAI_TOOLS,
            "reasoning_effort": "low"}
    upstream = bedrock_converse.chat_request({**body, "stream": stream}, CLAUDE, default_max_tokens=1024)
    response = _post(demo, bedrock_converse, bedrock_converse.chat_path(CLAUDE, stream), upstream)
    if stream:
        _, chunks = _chunks(bedrock_converse, response, False)
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
        blocks = [block for delta in deltas for block in delta.get("thinking_blocks", ())]
        call = next(call for delta in deltas for call in delta.get("tool_calls", ()))
        message = {"role": "assistant", "content": None, "thinking_blocks": blocks, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": "".join(
                c["function"]["arguments"] for d in deltas for c in d.get("tool_calls", ()))}}]}
    else:
        message = bedrock_converse.chat_response(response.json(), "m", 0)["choices"][0]["message"]
    assert message["thinking_blocks"] == [{"type": "thinking", "thinking": "The user said: weather?",
                                           "signature": "demo-signature"}]
    result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}
    follow_up = {**body, "messages": [*body["messages"], message, result]}
    upstream = bedrock_converse.chat_request(follow_up, CLAUDE, default_max_tokens=1024)
    response = _post(demo, bedrock_converse, bedrock_converse.chat_path(CLAUDE, False), upstream)
    assert response.status_code == 200, response.text
    assert bedrock_converse.chat_response(response.json(), "m", 0)["choices"][0]["message"]["content"].endswith(
        "The tool returned: sunny")

    forgotten = {**follow_up, "messages": [{**m, "thinking_blocks": None} for m in follow_up["messages"]]}
    upstream = bedrock_converse.chat_request(forgotten, CLAUDE, default_max_tokens=1024)
    response = _post(demo, bedrock_converse, bedrock_converse.chat_path(CLAUDE, False), upstream)
    assert response.status_code == 400 and "Expected `thinking` or `redacted_thinking`" in response.json()["message"]


@pytest.mark.parametrize(("model", "body", "count"), [
    ("amazon.titan-embed-text-v2:0", {"model": "e", "input": "hello", "dimensions": 512}, 1),
    ("cohere.embed-english-v3", {"model": "e", "input": ["one", "two", "three"]}, 3),
])
def test_translated_embeddings_round_trip(demo: DemoProvider, model: str, body: dict, count: int) -> None:
    upstream = bedrock_converse.embeddings_request(body, model)
    response = _post(demo, bedrock_converse, bedrock_converse.embeddings_path(model), upstream)
    assert response.status_code == 200, response.text
    translated = bedrock_converse.embeddings_response(response.json(), model)
    parsed = CreateEmbeddingResponse.model_validate(translated)
    assert len(parsed.data) == count
    assert len(parsed.data[0].embedding) == body.get("dimensions", 1024)


def test_demo_errors_translate_with_their_exception_names(demo: DemoProvider) -> None:
    upstream = bedrock_converse.chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, NOVA,
                                             default_max_tokens=1024)
    path = bedrock_converse.chat_path(NOVA, False)
    encoded = json.dumps(upstream).encode()
    headers = dict(aws.make_credential(_backend("bedrock-converse", demo), None).headers(
        "POST", demo.url + path, encoded))
    response = httpx.post(demo.url + path, content=encoded, headers={**headers, "x-demo-fault": "bedrock-a:429"})
    status, error = bedrock_converse.error_response(response.status_code, response.content, response.headers)
    assert (status, error["error"]["code"], error["error"]["type"]) == (429, "ThrottlingException", "rate_limit_error")


def test_demo_stream_exception_translates_to_an_error_chunk(demo: DemoProvider) -> None:
    upstream = bedrock_converse.chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                              "stream": True}, NOVA, default_max_tokens=1024)
    path = bedrock_converse.chat_path(NOVA, True)
    encoded = json.dumps(upstream).encode()
    headers = dict(aws.make_credential(_backend("bedrock-converse", demo), None).headers(
        "POST", demo.url + path, encoded))
    response = httpx.post(demo.url + path, content=encoded,
                          headers={**headers, "x-demo-stream-exception": "serviceUnavailableException"})
    stream, chunks = _chunks(bedrock_converse, response, False)
    assert chunks[-1]["error"]["code"] == "ServiceUnavailableException"
    assert not stream.finished


def test_recorded_requests_show_the_signed_headers(demo: DemoProvider) -> None:
    _post(demo, bedrock_converse, bedrock_converse.chat_path(NOVA, False),
          bedrock_converse.chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, NOVA,
                                        default_max_tokens=1024))
    (recorded,) = httpx.get(f"{demo.url}/_demo/requests").json()
    assert recorded["path"] == "/model/us.amazon.nova-pro-v1%3A0/converse"
    assert recorded["headers"]["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert recorded["body"] == {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                                "inferenceConfig": {"maxTokens": 1024}}  # the limit always goes up
