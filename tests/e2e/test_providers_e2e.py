"""Every provider schema through the real Envoy, driven with the official openai SDK: text, streams, tools (streamed
argument fragments too), images, json_schema, embeddings and usage — against demo providers speaking each wire format.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import anthropic
import httpx
import pydantic
import pytest

from .gateways import Gateway, GatewayBuilder

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "city_facts", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"], "additionalProperties": False}}}


ALL_FEATURES = frozenset({"text", "stream", "tools", "stream_tools", "images", "json_schema", "usage"})


@dataclass(frozen=True)
class Provider:
    """One schema under test: its route (and backend id), the demo provider behind it, and what it supports."""

    route: str
    demo: str
    schema: str
    model: str
    embedding_model: str | None = None
    features: frozenset[str] = ALL_FEATURES
    fields: dict = field(default_factory=dict, hash=False)
    """Backend fields besides the schema, the demo's URL and its credentials."""


PROVIDERS = [
    Provider("p-azure", "azure", "azure-openai", "gpt-4o-prod", "text-embedding-3-small",
             fields={"azure": {"api_version": "2024-10-21"}}),
    Provider("p-cohere", "cohere", "cohere", "command-a-vision-07-2025", "embed-v4.0"),
    Provider("p-bedrock", "bedrock", "bedrock-converse", "amazon.nova-pro-v1:0", "cohere.embed-english-v3"),
    Provider("p-bedrock-claude", "bedrock", "bedrock-anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    Provider("p-gemini", "gemini", "gemini", "gemini-2.5-flash", "gemini-embedding-001"),
    Provider("p-vertex", "vertex", "vertex-gemini", "gemini-2.5-pro", "text-embedding-005"),
    Provider("p-vertex-claude", "vertex", "vertex-anthropic", "claude-sonnet-4-5@20250929"),
    Provider("p-groq", "openai", "openai", "llama-3.3-70b-versatile", fields={"preset": "groq"}),
]
DEMOS = ("azure", "cohere", "openai", "bedrock", "gemini", "vertex")
"""One demo provider of each kind, named `zoo-<kind>`."""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("zoo")) as build:
        demos = {kind: build.demo(kind, kind, name=f"zoo-{kind}") for kind in DEMOS}
        for p in PROVIDERS:
            build.backend(p.route, demos[p.demo], p.schema, **p.fields)
            build.route(p.route, (p.route, p.model))
        for p in PROVIDERS:
            if p.embedding_model:
                build.route(f"{p.route}-embed", (p.route, p.embedding_model))
        build.key("zoo")
        yield build.start()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test runs for every provider that claims its feature (the closing note's table lists the rest)."""
    if "provider" in metafunc.fixturenames:
        feature = metafunc.function.__name__.removeprefix("test_")
        claimed = [p for p in PROVIDERS if (p.embedding_model if feature == "embeddings" else feature in p.features)]
        metafunc.parametrize("provider", [p.route for p in claimed])


def _provider(name: str) -> Provider:
    return next(p for p in PROVIDERS if p.route == name)


def test_text(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    raw = zoo.client().chat.completions.with_raw_response.create(
        model=p.route, max_tokens=100, messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "hello zoo"}])
    answer = raw.parse()
    assert f"zoo-{p.demo}" in answer.choices[0].message.content and "hello zoo" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert raw.headers["x-babelgate-backend"] == p.route


def test_stream(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    chunks = list(zoo.client().chat.completions.create(
        model=p.route, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream zoo"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream zoo" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tools(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    client = zoo.client()
    messages: list = [{"role": "user", "content": "Weather in Lima?"}]
    first = client.chat.completions.create(model=p.route, messages=messages, tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "19 degrees"}]
    second = client.chat.completions.create(model=p.route, messages=messages, tools=[WEATHER])
    assert "19 degrees" in second.choices[0].message.content


def test_stream_tools(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    fragments, names = [], []
    for chunk in zoo.client().chat.completions.create(
            model=p.route, stream=True, tools=[WEATHER], tool_choice="required",
            messages=[{"role": "user", "content": "Weather in Quito?"}]):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            if delta.function and delta.function.arguments:
                fragments.append(delta.function.arguments)
    assert names == ["get_weather"]
    assert json.loads("".join(fragments))["city"]


def test_images(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    zoo.client().chat.completions.create(model=p.route, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}])
    assert PIXEL in json.dumps(zoo.last_request(p.demo)["body"])


def test_json_schema(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    zoo.client().chat.completions.create(model=p.route, messages=[{"role": "user", "content": "facts"}],
                                         response_format=SCHEMA)
    # The schema reached the provider's structured-output field (Gemini spells types INTEGER; Bedrock nests JSON text).
    sent = json.dumps(zoo.last_request(p.demo)["body"]).lower()
    assert "population" in sent and "integer" in sent


def test_embeddings(zoo: Gateway, provider: str) -> None:
    p = _provider(provider)
    result = zoo.client().embeddings.create(model=f"{p.route}-embed", input=["alpha", "beta"])
    assert len(result.data) == 2 and result.data[1].index == 1 and len(result.data[0].embedding) > 0
    # the provider's count, or the gateway's estimate when its answer counts nothing (AI Studio's documented one)
    assert result.usage.prompt_tokens > 0 and result.usage.total_tokens == result.usage.prompt_tokens


@pytest.mark.parametrize("route", ["p-bedrock-claude", "p-vertex-claude"])
def test_claude_structured_output_parses_with_the_openai_helper(zoo: Gateway, route: str) -> None:
    """Claude's native structured output (`output_config.format`) answers what the openai SDK's `parse` reads."""
    class CityFacts(pydantic.BaseModel):
        city: str
        population: int

    parsed = zoo.client().chat.completions.parse(model=route, messages=[{"role": "user", "content": "facts"}],
                                                 response_format=CityFacts).choices[0].message.parsed
    assert isinstance(parsed, CityFacts)
    assert zoo.last_request(_provider(route).demo)["body"]["output_config"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize("route", ["p-bedrock", "p-gemini", "p-vertex-claude", "p-cohere", "p-azure"])
def test_anthropic_sdk_reaches_every_schema(zoo: Gateway, route: str) -> None:
    claude = anthropic.Anthropic(base_url=zoo.url + "/anthropic", api_key=zoo.key, max_retries=0, timeout=30)
    with claude.messages.stream(model=route, max_tokens=200,
                                messages=[{"role": "user", "content": "from anthropic"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "from anthropic" in text and final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("route", ["p-gemini-embed", "p-bedrock-embed", "p-cohere-embed"])
def test_embeddings_asked_as_base64_come_back_as_base64(zoo: Gateway, route: str) -> None:
    floats = zoo.client().embeddings.create(model=route, input=["alpha"], encoding_format="float").data[0].embedding
    raw = httpx.post(zoo.url + "/v1/embeddings", timeout=30, headers={"authorization": f"Bearer {zoo.key}"},
                     json={"model": route, "input": ["alpha"], "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(floats, rel=1e-6)
