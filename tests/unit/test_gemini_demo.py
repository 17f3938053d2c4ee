"""The Google demo providers speak the real wire formats: google-genai (AI Studio and Vertex modes) and the
anthropic SDK's Vertex client parse every answer, and the gateway's own translators round-trip through them.

Each provider runs on its own event loop in a background thread so the synchronous SDK clients can call it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import google.oauth2.credentials
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google import genai
from google.genai import errors, types
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.auth import gcp
from ext_proc.auth.backend_credentials import credential_for
from ext_proc.config.models import Backend
from ext_proc.demo.gemini_server import DEMO_TOKEN, THOUGHT
from ext_proc.demo.server import DemoProvider
from ext_proc.providers import gemini, vertex_anthropic
from ext_proc.streaming.sse import SSEDecoder
from tests.unit.test_demo_providers import _ProviderThread

KEY = "AIza-demo-test-key"
TOKEN = "ya29.demo-test-token"
PROJECT = "demo-project"
NO_RETRIES = types.HttpRetryOptions(attempts=1)
WEATHER = types.FunctionDeclaration(name="get_weather", parameters=types.Schema(
    type=types.Type.OBJECT, required=["city"], properties={
        "city": types.Schema(type=types.Type.STRING),
        "unit": types.Schema(type=types.Type.STRING, enum=["celsius", "fahrenheit"]),
        "days": types.Schema(type=types.Type.INTEGER),
        "tags": types.Schema(type=types.Type.ARRAY, items=types.Schema(type=types.Type.STRING))}))
WEATHER_ARGS = {"city": "demo", "unit": "celsius", "days": 1, "tags": ["demo"]}
TIME = types.FunctionDeclaration(name="get_time")


@pytest.fixture
def google_demo() -> Iterator[Callable[..., DemoProvider]]:
    started: list[_ProviderThread] = []

    def start(kind: str, name: str, **kwargs: object) -> DemoProvider:
        started.append(_ProviderThread(asyncio.new_event_loop, kind=kind, name=name, **kwargs))
        return started[-1].provider

    yield start
    for running in started:
        running.close()


@pytest.fixture
def studio(google_demo: Callable[..., DemoProvider]) -> DemoProvider:
    return google_demo("gemini", "gemini-a", api_key=KEY)


@pytest.fixture
def vertex(google_demo: Callable[..., DemoProvider]) -> DemoProvider:
    return google_demo("vertex", "vertex-b", api_key=TOKEN)


@pytest.fixture
def studio_client(studio: DemoProvider) -> Iterator[genai.Client]:
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=studio.url, retry_options=NO_RETRIES))
    yield client
    client.close()


@pytest.fixture
def vertex_client(vertex: DemoProvider) -> Iterator[genai.Client]:
    client = genai.Client(vertexai=True, project=PROJECT, location="us-central1",
                          credentials=google.oauth2.credentials.Credentials(token=TOKEN),
                          http_options=types.HttpOptions(base_url=vertex.url, retry_options=NO_RETRIES))
    yield client
    client.close()


@pytest.fixture
def claude_client(vertex: DemoProvider) -> Iterator[anthropic.AnthropicVertex]:
    with anthropic.AnthropicVertex(region="us-east5", project_id=PROJECT, access_token=TOKEN,
                                   base_url=f"{vertex.url}/v1", max_retries=0, timeout=10) as client:
        yield client


def _greeting(name: str, model: str, said: str) -> str:
    return f"Hello from {name} ({model})! You said: {said}"


# --- AI Studio with google-genai -------------------------------------------------------------------------------------


def test_generate_content_echoes_the_last_user_text(studio_client: genai.Client) -> None:
    response = studio_client.models.generate_content(
        model="gemini-2.5-flash", contents="hi there", config=types.GenerateContentConfig(system_instruction="brief"))
    assert response.text == _greeting("gemini-a", "gemini-2.5-flash", "hi there")
    candidate = (response.candidates or [])[0]
    assert candidate.finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_token_count == 8
    assert usage.total_token_count == (usage.prompt_token_count or 0) + 8
    assert response.model_version == "gemini-2.5-flash" and response.response_id
    assert response.sdk_http_response is not None
    assert (response.sdk_http_response.headers or {})["x-demo-provider"] == "gemini-a"


def test_stream_says_the_same_in_pieces_and_ends_with_the_usage(studio_client: genai.Client) -> None:
    chunks = list(studio_client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi there"))
    assert len(chunks) == 8
    assert "".join(chunk.text or "" for chunk in chunks) == _greeting("gemini-a", "gemini-2.5-flash", "hi there")
    assert [(chunk.candidates or [])[0].finish_reason for chunk in chunks][-2:] == [None, types.FinishReason.STOP]
    assert chunks[0].usage_metadata is not None and chunks[0].usage_metadata.candidates_token_count is None
    assert chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata.candidates_token_count == 8
    assert len({chunk.response_id for chunk in chunks}) == 1


def test_candidates_and_thoughts(studio_client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        candidate_count=2, thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024))
    response = studio_client.models.generate_content(model="gemini-2.5-pro", contents="hi", config=config)
    candidates = response.candidates or []
    assert [candidate.index for candidate in candidates] == [0, 1]
    for candidate in candidates:
        parts = (candidate.content and candidate.content.parts) or []
        assert [(part.thought, part.text) for part in parts] == [
            (True, THOUGHT), (None, _greeting("gemini-a", "gemini-2.5-pro", "hi"))]
    usage = response.usage_metadata
    assert usage is not None and usage.thoughts_token_count == 2 * 5 and usage.candidates_token_count == 2 * 7


def test_max_output_tokens_and_stop_sequences_set_the_finish_reason(studio_client: genai.Client) -> None:
    cut = studio_client.models.generate_content(model="m", contents="hi", config={"max_output_tokens": 3})
    assert cut.text == "Hello from gemini-a "
    assert (cut.candidates or [])[0].finish_reason == types.FinishReason.MAX_TOKENS
    stopped = studio_client.models.generate_content(model="m", contents="hi", config={"stop_sequences": ["!"]})
    assert stopped.text == "Hello from gemini-a (m)"
    assert (stopped.candidates or [])[0].finish_reason == types.FinishReason.STOP


def test_function_call_args_follow_the_declared_schema(studio_client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[TIME, WEATHER])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_weather"])))
    response = studio_client.models.generate_content(model="gemini-2.5-flash", contents="weather?", config=config)
    assert [(call.name, call.args) for call in response.function_calls or []] == [("get_weather", WEATHER_ARGS)]
    parallel = studio_client.models.generate_content(
        model="gemini-2.5-flash", contents="weather?",
        config=config.model_copy(update={"http_options": types.HttpOptions(headers={"x-demo-parallel-tools": "2"})}))
    assert [call.name for call in parallel.function_calls or []] == ["get_weather", "get_weather"]


def test_function_call_in_a_stream_arrives_whole_with_a_signature_on_gemini_3(studio_client: genai.Client) -> None:
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    chunks = list(studio_client.models.generate_content_stream(model="gemini-3-flash-preview", contents="weather?",
                                                               config=config))
    (chunk,) = chunks
    (part,) = ((chunk.candidates or [])[0].content.parts or [])  # type: ignore[union-attr]
    assert part.function_call is not None and part.function_call.args == WEATHER_ARGS
    assert part.thought_signature == b"demo-signature:gemini-3-flash-preview"


def test_function_response_is_mentioned_in_the_answer(studio_client: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="weather?")]),
        types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(name="get_weather",
                                                                                     args={"city": "Paris"}))]),
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            name="get_weather", response={"output": "sunny"}))]),
    ]
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    response = studio_client.models.generate_content(model="m", contents=contents, config=config)
    assert response.text == "Hello from gemini-a (m)! The tool returned: sunny"


def test_gemini_3_refuses_a_replayed_call_without_its_signature(studio: DemoProvider) -> None:
    call = {"functionCall": {"name": "get_time", "args": {}}}
    body = {"contents": [{"role": "user", "parts": [{"text": "time?"}]}, {"role": "model", "parts": [call]},
                         {"role": "user", "parts": [{"functionResponse": {"name": "get_time", "response": {}}}]}]}
    url = f"{studio.url}/v1beta/models/gemini-3-pro-preview:generateContent"
    refused = httpx.post(url, headers={"x-goog-api-key": KEY}, json=body)
    assert refused.status_code == 400
    assert "missing a thought_signature" in refused.json()["error"]["message"]
    call["thoughtSignature"] = "skip_thought_signature_validator"
    assert httpx.post(url, headers={"x-goog-api-key": KEY}, json=body).status_code == 200


def test_embed_content_is_deterministic(studio_client: genai.Client) -> None:
    first = studio_client.models.embed_content(model="text-embedding-004", contents=["a", "b"],
                                               config={"output_dimensionality": 4})
    again = studio_client.models.embed_content(model="text-embedding-004", contents=["b"])
    vectors = [embedding.values for embedding in first.embeddings or []]
    assert [len(vector or ()) for vector in vectors] == [4, 4]
    assert len((again.embeddings or [])[0].values or ()) == 8
    assert (again.embeddings or [])[0].values[:4] != vectors[1]  # type: ignore[index]
    assert sum(value * value for value in vectors[0] or ()) == pytest.approx(1.0, abs=1e-6)


def test_wrong_or_missing_api_key_is_refused_like_ai_studio(studio: DemoProvider) -> None:
    client = genai.Client(api_key="AIza-wrong", http_options=types.HttpOptions(base_url=studio.url,
                                                                                 retry_options=NO_RETRIES))
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="m", contents="hi")
    assert (refused.value.code, refused.value.status) == (400, "INVALID_ARGUMENT")
    assert refused.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    client.close()
    missing = httpx.post(f"{studio.url}/v1beta/models/m:generateContent", json={"contents": []})
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(("body", "message"), [
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"maxTokens": 5}},
     'Unknown name "maxTokens"'),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
    ({"contents": [{"role": "user", "parts": []}]}, "must not be empty"),
    ({"contents": [{"role": "user", "parts": [{"text": "x", "inlineData": {"mimeType": "a/b", "data": "AA=="}}]}]},
     "oneof field 'data'"),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": [{"name": "f"}]}],
      "toolConfig": {"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}}}, "mode is ANY"),
    ({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
      "generationConfig": {"responseSchema": {"type": "OBJECT"}}}, "response_mime_type"),
])
def test_invalid_request_is_a_google_400(studio: DemoProvider, body: dict, message: str) -> None:
    response = httpx.post(f"{studio.url}/v1beta/models/m:generateContent", headers={"x-goog-api-key": KEY}, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert message in error["message"]


def test_status_fault_answers_in_googles_error_format(studio_client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as limited:
        studio_client.models.generate_content(
            model="m", contents="hi", config={"http_options": {"headers": {"x-demo-fault": "gemini-a:429"}}})
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert limited.value.details["error"]["details"][0]["retryDelay"] == "1s"
    with pytest.raises(errors.ServerError) as unavailable:
        studio_client.models.generate_content(
            model="m", contents="hi", config={"http_options": {"headers": {"x-demo-fault": "*:503"}}})
    assert (unavailable.value.code, unavailable.value.status) == (503, "UNAVAILABLE")


# --- Vertex with google-genai ----------------------------------------------------------------------------------------


def test_vertex_generate_stream_and_embed(vertex_client: genai.Client, vertex: DemoProvider) -> None:
    response = vertex_client.models.generate_content(model="gemini-2.5-flash", contents="hi vertex")
    assert response.text == _greeting("vertex-b", "gemini-2.5-flash", "hi vertex")
    assert response.create_time is not None
    streamed = "".join(chunk.text or "" for chunk in
                       vertex_client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi vertex"))
    assert streamed == response.text
    embedded = vertex_client.models.embed_content(model="text-embedding-005", contents=["a", "bb"],
                                                  config={"output_dimensionality": 4})
    assert [len(embedding.values or ()) for embedding in embedded.embeddings or []] == [4, 4]
    assert [embedding.statistics.token_count for embedding in embedded.embeddings or []] == [1, 1]  # type: ignore[union-attr]
    paths = [request["path"] for request in vertex.requests]
    assert paths[0] == f"/v1beta1/projects/{PROJECT}/locations/us-central1/publishers/google/models/" \
                       "gemini-2.5-flash:generateContent"
    assert paths[-1].endswith("/models/text-embedding-005:predict")


def test_vertex_wants_the_bearer_token(vertex: DemoProvider) -> None:
    client = genai.Client(vertexai=True, project=PROJECT, location="us-central1",
                          credentials=google.oauth2.credentials.Credentials(token="ya29.wrong"),
                          http_options=types.HttpOptions(base_url=vertex.url, retry_options=NO_RETRIES))
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (refused.value.code, refused.value.status) == (401, "UNAUTHENTICATED")
    client.close()


# --- Claude on Vertex with the anthropic SDK -------------------------------------------------------------------------


def test_claude_on_vertex_answers_the_anthropic_vertex_client(claude_client: anthropic.AnthropicVertex,
                                                              vertex: DemoProvider) -> None:
    message = claude_client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=64,
                                            messages=[{"role": "user", "content": "hi claude"}])
    assert message.content[0].text == _greeting("vertex-b", "claude-sonnet-4-5@20250929", "hi claude")  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    with claude_client.messages.stream(model="claude-sonnet-4-5@20250929", max_tokens=3,
                                       messages=[{"role": "user", "content": "hi claude"}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "Hello from vertex-b "
    assert final.stop_reason == "max_tokens"
    assert [request["path"].rsplit(":", 1)[-1] for request in vertex.requests] == ["rawPredict", "streamRawPredict"]
    assert "model" not in vertex.requests[0]["body"]  # type: ignore[operator]
    assert vertex.requests[0]["body"]["anthropic_version"]  # type: ignore[index]


def test_claude_tool_use_on_vertex(claude_client: anthropic.AnthropicVertex) -> None:
    message = claude_client.messages.create(
        model="claude-sonnet-4-5@20250929", max_tokens=64, messages=[{"role": "user", "content": "weather?"}],
        tools=[{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    assert message.stop_reason == "tool_use"
    assert message.content[0].input == {"city": "demo"}  # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "message"), [
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "anthropic_version"),
    ({"anthropic_version": "vertex-2023-10-16", "model": "c", "max_tokens": 5,
      "messages": [{"role": "user", "content": "x"}]}, "model: Extra inputs"),
])
def test_raw_predict_checks_what_vertex_changes(vertex: DemoProvider, body: dict, message: str) -> None:
    response = httpx.post(f"{vertex.url}/v1/projects/{PROJECT}/locations/us-east5/publishers/anthropic/models/"
                          "claude-sonnet-4-5:rawPredict", headers={"authorization": f"Bearer {TOKEN}"}, json=body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert message in response.json()["error"]["message"]


# --- the gateway's translators against the demo ---------------------------------------------------------------------


def _service_account(directory: Path, token_uri: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = directory / "sa.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
                                "private_key": pem, "client_email": "demo@demo-project.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    return path


@pytest.fixture
def vertex_backends(vertex: DemoProvider, tmp_path: Path) -> dict[str, Backend]:
    account = _service_account(tmp_path, f"{vertex.url}/token")
    settings = {"project": PROJECT, "location": "us-central1", "service_account_file": str(account)}
    return {schema: Backend.model_validate({"id": schema, "schema": schema, "base_url": vertex.url, "gcp": settings})
            for schema in ("vertex-gemini", "vertex-anthropic")}


def test_demo_token_endpoint_serves_the_gateways_gcp_credential(google_demo: Callable[..., DemoProvider],
                                                                tmp_path: Path) -> None:
    keyless = google_demo("vertex", "vertex-c")
    backend = Backend.model_validate({"id": "v", "schema": "vertex-gemini", "base_url": keyless.url, "gcp": {
        "project": PROJECT, "location": "us-central1",
        "service_account_file": str(_service_account(tmp_path, f"{keyless.url}/token"))}})
    credential = gcp.make_credential(backend, None)
    try:
        assert credential.headers("POST", keyless.url, b"") == [("authorization", f"Bearer {DEMO_TOKEN}")]
    finally:
        credential.close()  # type: ignore[attr-defined]


def _call(backend: Backend, path: str, body: dict) -> httpx.Response:
    credential = credential_for(backend, KEY if backend.schema_ == "gemini" else None)
    try:
        encoded = json.dumps(body).encode()
        headers = dict(credential.headers("POST", backend.base_url + path, encoded))
        return httpx.post(backend.base_url + path, content=encoded,
                          headers={**headers, "content-type": "application/json"})
    finally:
        getattr(credential, "close", lambda: None)()


@pytest.mark.parametrize("schema", ["gemini", "vertex-gemini", "vertex-anthropic"])
def test_translated_requests_are_answered_and_translated_back(
        schema: str, studio: DemoProvider, vertex_backends: dict[str, Backend]) -> None:
    backend = vertex_backends.get(schema) or Backend.model_validate(
        {"id": "studio", "schema": "gemini", "base_url": studio.url})
    provider = gemini if schema != "vertex-anthropic" else vertex_anthropic
    name = "gemini-a" if schema == "gemini" else "vertex-b"
    body = {"model": "public", "messages": [{"role": "system", "content": "brief"},
                                            {"role": "user", "content": "hello gateway"}], "max_tokens": 50}
    request = provider.chat_request(body, "model-x", default_max_tokens=100)
    answer = _call(backend, provider.chat_path("model-x", False, backend), request)
    assert answer.status_code == 200, answer.text
    completion = provider.chat_response(answer.json(), "model-x", 1700000000)
    ChatCompletion.model_validate(completion)
    assert completion["choices"][0]["message"]["content"] == _greeting(name, "model-x", "hello gateway")

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    request = provider.chat_request({**body, "stream": True, "tools": tools, "tool_choice": "required"}, "model-x",
                                    default_max_tokens=100)
    answer = _call(backend, provider.chat_path("model-x", True, backend), request)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "text/event-stream"
    decoder = SSEDecoder()
    stream = provider.ChatStream("model-x", 1700000000, True)
    chunks = [chunk for event in decoder.feed(answer.content) + decoder.finish()
              for chunk in stream.feed(event.event, event.data)] + stream.finish()
    assert stream.finished
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    calls = [call for chunk in chunks for choice in chunk["choices"] for call in choice["delta"].get("tool_calls", ())]
    arguments = "".join(call["function"].get("arguments") or "" for call in calls)
    assert calls[0]["function"]["name"] == "get_weather" and json.loads(arguments) == {"city": "demo"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert stream.usage is not None and stream.usage["completion_tokens"] > 0


def test_logprobs_are_answered_and_translated_back_streamed_or_not(studio: DemoProvider) -> None:
    backend = Backend.model_validate({"id": "studio", "schema": "gemini", "base_url": studio.url})
    body = {"model": "public", "messages": [{"role": "user", "content": "hello gateway"}], "logprobs": True,
            "top_logprobs": 2}
    request = gemini.chat_request(body, "model-x", default_max_tokens=100)
    answer = _call(backend, gemini.chat_path("model-x", False, backend), request)
    assert answer.status_code == 200, answer.text
    types.GenerateContentResponse.model_validate(answer.json())
    completion = gemini.chat_response(answer.json(), "model-x", 1700000000)
    ChatCompletion.model_validate(completion)
    content = completion["choices"][0]["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == completion["choices"][0]["message"]["content"]
    assert all(len(entry["top_logprobs"]) == 2 and entry["top_logprobs"][0]["token"] == entry["token"]
               for entry in content)

    request = gemini.chat_request({**body, "stream": True}, "model-x", default_max_tokens=100)
    answer = _call(backend, gemini.chat_path("model-x", True, backend), request)
    decoder = SSEDecoder()
    stream = gemini.ChatStream("model-x", 1700000000, False)
    chunks = [chunk for event in decoder.feed(answer.content) + decoder.finish()
              for chunk in stream.feed(event.event, event.data)] + stream.finish()
    streamed = [entry for chunk in chunks for choice in chunk["choices"]
                for entry in (choice["logprobs"] or {}).get("content") or ()]
    assert [entry["token"] for entry in streamed] == [entry["token"] for entry in content]


def test_translated_follow_up_with_a_signed_call_is_accepted_by_gemini_3(studio: DemoProvider) -> None:
    backend = Backend.model_validate({"id": "studio", "schema": "gemini", "base_url": studio.url})
    tools = [{"type": "function", "function": {"name": "get_time"}}]
    first = {"model": "public", "messages": [{"role": "user", "content": "time?"}], "tools": tools}
    model = "gemini-3-flash-preview"
    answer = _call(backend, gemini.chat_path(model, False, backend),
                   gemini.chat_request(first, model, default_max_tokens=100))
    message = gemini.chat_response(answer.json(), model, 0)["choices"][0]["message"]
    assert "_ts_" in message["tool_calls"][0]["id"]
    follow_up = {**first, "messages": [*first["messages"], message,
                                       {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                                        "content": "12:00"}]}
    answer = _call(backend, gemini.chat_path(model, False, backend),
                   gemini.chat_request(follow_up, model, default_max_tokens=100))
    assert answer.status_code == 200, answer.text
    assert gemini.chat_response(answer.json(), model, 0)["choices"][0]["message"]["content"] == (
        "Hello from gemini-a (gemini-3-flash-preview)! The tool returned: 12:00")


@pytest.mark.parametrize("schema", ["gemini", "vertex-gemini"])
def test_translated_embeddings_are_answered(schema: str, studio: DemoProvider,
                                            vertex_backends: dict[str, Backend]) -> None:
    backend = vertex_backends.get(schema) or Backend.model_validate(
        {"id": "studio", "schema": "gemini", "base_url": studio.url})
    request = gemini.embeddings_request({"model": "e", "input": ["one", "two"], "dimensions": 3}, "embed-x", backend)
    answer = _call(backend, gemini.embeddings_path("embed-x", backend), request)
    assert answer.status_code == 200, answer.text
    translated = gemini.embeddings_response(answer.json(), "embed-x")
    assert [len(item["embedding"]) for item in translated["data"]] == [3, 3]
    assert (translated["usage"]["prompt_tokens"] > 0) == (schema == "vertex-gemini")
