"""OpenAI-format clients through the real Envoy + Babelgate to OpenAI and Anthropic backends."""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
import pydantic
import pytest

from .gateways import Gateway

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                       "required": ["city"]},
    },
}
ANTHROPIC_REQUEST = pydantic.TypeAdapter(anthropic.types.MessageCreateParams)


def last_request(gateway: Gateway, provider: str) -> dict:
    return gateway.provider_requests(provider)[-1]


def test_openai_backend_answers_through_envoy(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}])
    completion = raw.parse()
    assert "openai-a" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-babelgate-backend"] == "oa"
    assert raw.headers["x-babelgate-attempts"] == "1"
    sent = last_request(gateway, "openai-a")
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert sent["headers"]["authorization"] == f"Bearer {gateway.demos['openai-a'].api_key}"


def test_anthropic_backend_gets_a_valid_messages_request(gateway: Gateway, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="claude-sonnet-4-5", max_completion_tokens=300, temperature=0.2, top_p=0.9, stop=["\n\n"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                  {"role": "assistant", "content": "hi!"}, {"role": "user", "content": "how are you?"}])
    assert completion.model == "claude-sonnet-4-5"
    assert "anthropic-a" in completion.choices[0].message.content
    assert "how are you?" in completion.choices[0].message.content
    sent = last_request(gateway, "anthropic-a")
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == gateway.demos["anthropic-a"].api_key
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    ANTHROPIC_REQUEST.validate_python(sent["body"])
    assert sent["body"]["system"] == "Be brief."
    assert sent["body"]["max_tokens"] == 300
    assert sent["body"]["stop_sequences"] == ["\n\n"]
    assert [m["role"] for m in sent["body"]["messages"]] == ["user", "assistant", "user"]


def test_client_credentials_and_internal_headers_never_reach_a_provider(
        gateway: Gateway, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-babelgate-int-route": "spoof", "x-babelgate-tags": "team-a", "x-api-key": "client-secret"})
    headers = last_request(gateway, "anthropic-a")["headers"]
    assert gateway.key not in json.dumps(headers)
    assert "client-secret" not in json.dumps(headers)
    assert not [h for h in headers if h.startswith(("x-babelgate", "x-envoy"))]
    assert headers["host"].startswith("127.0.0.1:")


def test_streaming_from_anthropic_with_usage(gateway: Gateway, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="claude-sonnet-4-5", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream please"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "anthropic-a" in text and "stream please" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert last_request(gateway, "anthropic-a")["body"]["stream"] is True


def test_streaming_without_include_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    for model in ("claude-sonnet-4-5", "gpt-4o-mini"):
        chunks = list(client.chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": "hi"}]))
        assert all(c.usage is None for c in chunks), model
        assert all(c.choices for c in chunks), model


def test_openai_stream_still_reports_usage_upstream(gateway: Gateway, client: openai.OpenAI) -> None:
    list(client.chat.completions.create(model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "x"}]))
    assert last_request(gateway, "openai-a")["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_tool_calls_round_trip(client: openai.OpenAI, model: str) -> None:
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"]
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "21 degrees and sunny"}]
    second = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert "21 degrees" in second.choices[0].message.content


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5"])
def test_streamed_tool_call_arguments_arrive_in_fragments(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model, stream=True, tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Oslo?"}], extra_headers={"x-demo-parallel-tools": "1"})
    fragments: list[str] = []
    names = []
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            if delta.function and delta.function.arguments:
                fragments.append(delta.function.arguments)
    assert names == ["get_weather"]
    assert len(fragments) > 1
    assert json.loads("".join(fragments))["city"]


def test_image_data_url_reaches_anthropic_as_base64_block(gateway: Gateway, client: openai.OpenAI) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    client.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]}])
    block = last_request(gateway, "anthropic-a")["body"]["messages"][0]["content"][1]
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}}


def test_async_client_concurrent_requests(gateway: Gateway) -> None:
    async def main() -> list[str]:
        async with gateway.async_client() as client:
            answers = await asyncio.gather(*(
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"n{i}"}])
                for i in range(10) for model in ("gpt-4o-mini", "claude-sonnet-4-5")))
        return [a.choices[0].message.content for a in answers]

    contents = asyncio.run(main())
    assert len(contents) == 20
    for i in range(10):
        assert sum(f"n{i}" in c for c in contents) == 2


def test_async_streaming(gateway: Gateway) -> None:
    async def main() -> str:
        async with gateway.async_client() as client:
            stream = await client.chat.completions.create(
                model="claude-sonnet-4-5", stream=True, messages=[{"role": "user", "content": "async"}])
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert "async" in asyncio.run(main())


def test_models_endpoint_lists_what_the_key_may_use(gateway: Gateway) -> None:
    all_models = [m.id for m in gateway.client().models.list()]
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "openai-pair"} <= set(all_models)
    assert [m.id for m in gateway.client("test-limited").models.list()] == ["gpt-4o-mini"]
    assert gateway.client().models.retrieve("claude-sonnet-4-5").id == "claude-sonnet-4-5"


def test_embeddings_pass_through_to_openai(gateway: Gateway, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed-small", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert last_request(gateway, "openai-a")["body"]["model"] == "text-embedding-3-small"


def test_https_backend_with_test_ca_and_sni(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="secure-model", messages=[{"role": "user", "content": "over tls"}])
    assert "openai-tls" in raw.parse().choices[0].message.content
    assert last_request(gateway, "tls")["sni"] == "api.demo.test"
    assert last_request(gateway, "tls")["headers"]["host"].startswith("api.demo.test:")


def test_direct_route_is_served_in_one_stream_and_sends_nothing_internal(gateway: Gateway,
                                                                          client: openai.OpenAI) -> None:
    """A single-backend route skips the attempt stage; the route stage must clean the request itself."""
    raw = client.embeddings.with_raw_response.create(
        model="embed-small", input="x", extra_headers={"x-babelgate-tags": "t", "x-api-key": "client-secret"})
    assert raw.headers["x-babelgate-backend"] == "oa" and raw.headers["x-babelgate-attempts"] == "1"
    headers = last_request(gateway, "openai-a")["headers"]
    assert headers["authorization"] == f"Bearer {gateway.demos['openai-a'].api_key}"
    assert not [h for h in headers if h.startswith("x-babelgate")]
    assert "client-secret" not in json.dumps(headers) and gateway.key not in json.dumps(headers)


def test_direct_anthropic_route_overwrites_a_client_x_api_key(gateway: Gateway, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="anthropic-solo", messages=[{"role": "user", "content": "solo"}],
                                            extra_headers={"x-api-key": "client-secret"})
    assert "anthropic-a" in answer.choices[0].message.content
    headers = last_request(gateway, "anthropic-a")["headers"]
    assert headers["x-api-key"] == gateway.demos["anthropic-a"].api_key
    assert not [h for h in headers if h.startswith("x-babelgate")]
