"""The fake Azure OpenAI and Cohere providers speak the real wire formats: the official SDKs (`openai.AzureOpenAI`,
`cohere.ClientV2`) parse every answer, and the gateway's own translators (`providers.azure_openai`,
`providers.cohere`) round-trip through them.

Each provider runs on its own event loop in a background thread so the synchronous SDK clients can call it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
from collections.abc import Coroutine, Iterator
from typing import TypeVar

import cohere as cohere_sdk
import httpx
import openai as openai_sdk
import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.demo import azure_server, cohere_server
from ext_proc.demo.answers import Call
from ext_proc.demo.server import DemoProvider, start_demo_provider
from ext_proc.providers import azure_openai, cohere
from ext_proc.streaming.sse import SSEDecoder

T = TypeVar("T")
KEY = "demo-key"
API_VERSION = "2024-10-21"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"]}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]


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


@pytest.fixture
def demo_azure() -> Iterator[DemoProvider]:
    running = _ProviderThread(kind="azure", name="azure-d", api_key=KEY)
    yield running.provider
    running.close()


@pytest.fixture
def demo_cohere() -> Iterator[DemoProvider]:
    running = _ProviderThread(kind="cohere", name="cohere-c", api_key=KEY)
    yield running.provider
    running.close()


@pytest.fixture
def azure_client(demo_azure: DemoProvider) -> Iterator[openai_sdk.AzureOpenAI]:
    with openai_sdk.AzureOpenAI(azure_endpoint=demo_azure.url, api_key=KEY, api_version=API_VERSION,
                                max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def cohere_client(demo_cohere: DemoProvider) -> cohere_sdk.ClientV2:
    return cohere_sdk.ClientV2(api_key=KEY, base_url=demo_cohere.url, timeout=10)


def _sse_events(data: bytes) -> list:
    decoder = SSEDecoder()
    return decoder.feed(data) + decoder.finish()


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# --- Azure: the official SDK -----------------------------------------------------------------------------------------


def test_azure_sdk_chat_gets_an_annotated_completion(azure_client: openai_sdk.AzureOpenAI) -> None:
    completion = azure_client.chat.completions.create(model="gpt4o-prod",
                                                      messages=[{"role": "user", "content": "hello"}])
    assert completion.choices[0].message.content == "Hello from azure-d (gpt4o-prod)! You said: hello"
    assert completion.model == "gpt4o-prod"
    assert completion.model_extra["prompt_filter_results"][0]["prompt_index"] == 0
    assert completion.choices[0].model_extra["content_filter_results"]["hate"]["filtered"] is False
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_azure_sdk_stream_opens_with_a_filter_only_chunk(azure_client: openai_sdk.AzureOpenAI) -> None:
    chunks = list(azure_client.chat.completions.create(
        model="gpt4o-prod", messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from azure-d (gpt4o-prod)! You said: hello")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_azure_sdk_tool_call_and_entra_bearer_token(demo_azure: DemoProvider) -> None:
    with openai_sdk.AzureOpenAI(azure_endpoint=demo_azure.url, azure_ad_token="eyJ0eXAiOiJKV1QifQ.e30.sig",
                                api_version=API_VERSION, max_retries=0, timeout=10) as client:
        completion = client.chat.completions.create(
            model="gpt4o-prod", messages=[{"role": "user", "content": "Weather?"}], tools=OPENAI_TOOLS)
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "demo", "days": 1})
    recorded = demo_azure.requests[-1]
    assert recorded["path"] == f"/openai/deployments/gpt4o-prod/chat/completions?api-version={API_VERSION}"
    assert recorded["headers"]["authorization"].startswith("Bearer ")


def test_azure_sdk_embeddings(azure_client: openai_sdk.AzureOpenAI, demo_azure: DemoProvider) -> None:
    response = azure_client.embeddings.create(model="embed-prod", input=["one", "two"])
    assert [len(item.embedding) for item in response.data] == [8, 8]
    assert demo_azure.requests[-1]["path"].startswith("/openai/deployments/embed-prod/embeddings?api-version=")


def test_azure_sdk_sees_azure_errors(demo_azure: DemoProvider, azure_client: openai_sdk.AzureOpenAI) -> None:
    with openai_sdk.AzureOpenAI(azure_endpoint=demo_azure.url, api_key="wrong", api_version=API_VERSION,
                                max_retries=0, timeout=10) as client, pytest.raises(openai_sdk.AuthenticationError):
        client.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai_sdk.BadRequestError) as filtered:
        azure_client.chat.completions.create(model="d", messages=[
            {"role": "user", "content": f"please {azure_server.CONTENT_FILTER_TRIGGER}"}])
    assert filtered.value.code == "content_filter"
    assert filtered.value.body["innererror"]["code"] == "ResponsibleAIPolicyViolation"


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/openai/deployments/d/chat/completions?foo=1", 404, "Resource not found"),
    ("/openai/deployments/d/chat/completions?api-version=latest", 400, "API version not supported"),
    ("/openai/models", 404, "Resource not found"),
])
def test_azure_refuses_a_missing_or_bad_api_version_and_unknown_paths(path: str, status: int, message: str) -> None:
    reply = azure_server.answer(Call("azure-d", "POST", path, {"api-key": KEY}, {"messages": []}, KEY))
    assert reply.status == status
    assert orjson.loads(reply.body)["error"]["message"] == message


def test_azure_fault_status_uses_azure_error_format(demo_azure: DemoProvider) -> None:
    response = httpx.post(f"{demo_azure.url}/openai/deployments/d/chat/completions?api-version={API_VERSION}",
                          headers={"api-key": KEY, "x-demo-fault": "azure-d:429"},
                          json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    status, error = azure_openai.error_response(response.status_code, response.content)
    assert (status, error["error"]["type"], error["error"]["code"]) == (429, "rate_limit_error", "429")


# --- Azure: the gateway's translator against the demo ----------------------------------------------------------------


def test_azure_translator_streams_through_the_demo(demo_azure: DemoProvider) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Weather?"}], "tools": OPENAI_TOOLS,
            "stream": True}
    upstream = azure_openai.chat_request(body, "gpt4o-prod", default_max_tokens=4096)
    path = azure_openai.chat_path("gpt4o-prod", True)
    response = httpx.post(demo_azure.url + path, headers={"api-key": KEY}, content=orjson.dumps(upstream),
                          timeout=10)
    stream = azure_openai.ChatStream("gpt4o-prod", 1, include_usage=False)
    chunks = [chunk for event in _sse_events(response.content) for chunk in stream.feed(event.event, event.data)]
    chunks += stream.finish()
    assert stream.finished and stream.usage is not None
    assert all(chunk["choices"] for chunk in chunks), "no choice-less chunk reaches a client that did not ask"
    assert "prompt_filter_results" in chunks[0]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    arguments = "".join(call["function"].get("arguments") or "" for chunk in chunks
                        for call in chunk["choices"][0]["delta"].get("tool_calls") or ())
    assert json.loads(arguments) == {"city": "demo", "days": 1}


# --- Cohere: the official SDK -----------------------------------------------------------------------------------------


def test_cohere_sdk_chat(cohere_client: cohere_sdk.ClientV2) -> None:
    response = cohere_client.chat(model="command-a-03-2025", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}], max_tokens=50)
    assert response.message.content[0].text == "Hello from cohere-c (command-a-03-2025)! You said: hi there"
    assert response.finish_reason == "COMPLETE"
    assert response.usage.billed_units.input_tokens < response.usage.tokens.input_tokens


def test_cohere_sdk_chat_stream_text_and_thinking(cohere_client: cohere_sdk.ClientV2) -> None:
    events = list(cohere_client.chat_stream(model="command-a-reasoning-08-2025",
                                            messages=[{"role": "user", "content": "hi"}],
                                            thinking={"type": "enabled", "token_budget": 100}))
    kinds = [event.type for event in events]
    assert kinds[0] == "message-start" and kinds[-1] == "message-end"
    text = "".join(event.delta.message.content.text or "" for event in events if event.type == "content-delta")
    assert text == "Hello from cohere-c (command-a-reasoning-08-2025)! You said: hi"
    assert any(event.delta.message.content.thinking for event in events if event.type == "content-delta")


def test_cohere_sdk_tool_loop(cohere_client: cohere_sdk.ClientV2) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    first = cohere_client.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "Weather?"}],
                               tools=tools, tool_choice="REQUIRED")
    assert first.finish_reason == "TOOL_CALL" and first.message.tool_plan
    call = first.message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "demo", "days": 1}
    second = cohere_client.chat(model="command-a-03-2025", tools=tools, messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_plan": first.message.tool_plan, "tool_calls": first.message.tool_calls},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
    assert second.message.content[0].text == "Hello from cohere-c (command-a-03-2025)! The tool returned: sunny"


def test_cohere_sdk_embed(cohere_client: cohere_sdk.ClientV2) -> None:
    response = cohere_client.embed(model="embed-v4.0", texts=["one", "two"], input_type="search_document",
                                   embedding_types=["float", "base64"], output_dimension=16)
    assert [len(vector) for vector in response.embeddings.float_] == [16, 16]
    assert _floats(response.embeddings.base64[0]) == response.embeddings.float_[0]
    assert response.meta.billed_units.input_tokens == 2


def test_cohere_sdk_sees_cohere_errors(demo_cohere: DemoProvider) -> None:
    client = cohere_sdk.ClientV2(api_key="wrong", base_url=demo_cohere.url, timeout=10)
    with pytest.raises(cohere_sdk.UnauthorizedError) as denied:
        client.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["message"] == "invalid api token"
    response = httpx.post(f"{demo_cohere.url}/v2/chat", headers={"authorization": f"Bearer {KEY}"},
                          json={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2})
    assert response.status_code == 400 and set(response.json()) == {"id", "message"}
    status, error = cohere.error_response(response.status_code, response.content)
    assert status == 400 and "unknown field: n" in error["error"]["message"]


@pytest.mark.parametrize("body", [
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "ANY"},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "p": 1.0},
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": ""}]},
])
def test_cohere_demo_checks_requests_like_cohere(body: dict) -> None:
    reply = cohere_server.answer(Call("cohere-c", "POST", "/v2/chat", {"authorization": f"Bearer {KEY}"}, body, KEY))
    assert reply.status == 400
    assert orjson.loads(reply.body)["message"].startswith("invalid request")


# --- Cohere: the gateway's translator against the demo ----------------------------------------------------------------


def _cohere_post(demo: DemoProvider, path: str, request: dict) -> httpx.Response:
    return httpx.post(demo.url + path, headers={"authorization": f"Bearer {KEY}"}, content=orjson.dumps(request),
                      timeout=10)


def test_cohere_translator_round_trips_a_tool_loop(demo_cohere: DemoProvider) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Weather?"}], "tools": OPENAI_TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    response = _cohere_post(demo_cohere, "/v2/chat", cohere.chat_request(body, "command-a-03-2025",
                                                                          default_max_tokens=4096))
    assert response.status_code == 200, response.text
    completion = cohere.chat_response(response.json(), "command-a-03-2025", 1)
    ChatCompletion.model_validate(completion)
    message = completion["choices"][0]["message"]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"
    follow_up = {**body, "tool_choice": "auto", "messages": [
        *body["messages"], {"role": "assistant", "content": message["content"], "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}]}
    response = _cohere_post(demo_cohere, "/v2/chat", cohere.chat_request(follow_up, "command-a-03-2025",
                                                                          default_max_tokens=4096))
    assert response.status_code == 200, response.text
    answer = cohere.chat_response(response.json(), "command-a-03-2025", 1)
    assert answer["choices"][0]["message"]["content"].endswith("The tool returned: sunny")


@pytest.mark.parametrize("include_usage", [False, True])
def test_cohere_translator_streams_through_the_demo(demo_cohere: DemoProvider, include_usage: bool) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "reasoning_effort": "low", "stop": ["said"]}
    response = _cohere_post(demo_cohere, "/v2/chat", cohere.chat_request(body, "command-a-reasoning-08-2025",
                                                                          default_max_tokens=4096))
    stream = cohere.ChatStream("command-a-reasoning-08-2025", 1, include_usage)
    chunks = [chunk for event in _sse_events(response.content) for chunk in stream.feed(event.event, event.data)]
    chunks += stream.finish()
    assert stream.finished and stream.usage is not None
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert "".join(delta.get("content") or "" for delta in deltas) == (
        "Hello from cohere-c (command-a-reasoning-08-2025)! You ")
    assert any(delta.get("reasoning_content") for delta in deltas)
    assert chunks[-1 - include_usage]["choices"][0]["finish_reason"] == "stop"


def test_cohere_translator_embeddings_through_the_demo(demo_cohere: DemoProvider) -> None:
    floats = _cohere_post(demo_cohere, "/v2/embed", cohere.embeddings_request(
        {"model": "text-embedding-3-small", "input": ["one", "two"], "dimensions": 8}, "embed-v4.0"))
    encoded = _cohere_post(demo_cohere, "/v2/embed", cohere.embeddings_request(
        {"model": "text-embedding-3-small", "input": ["one", "two"], "dimensions": 8, "encoding_format": "base64"},
        "embed-v4.0"))
    as_floats = cohere.embeddings_response(floats.json(), "embed-v4.0")
    as_base64 = cohere.embeddings_response(encoded.json(), "embed-v4.0")
    CreateEmbeddingResponse.model_validate(as_floats)
    assert [_floats(item["embedding"]) for item in as_base64["data"]] == [item["embedding"]
                                                                          for item in as_floats["data"]]
    assert as_floats["usage"]["prompt_tokens"] == 2


def test_demo_kinds_are_registered() -> None:
    from ext_proc.demo.server import KINDS

    assert {"azure", "cohere"} <= set(KINDS)
    assert azure_server.KIND == "azure" and cohere_server.KIND == "cohere"
