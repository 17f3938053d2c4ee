"""Every provider schema through the real Envoy, driven with the official openai SDK: text, streams, tools (streamed
argument fragments too), images, json_schema, embeddings and usage — against demo providers speaking each wire format.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Supervisor, free_port, python_module
from ext_proc.launch.stack import start_stack

from .token_server import write_service_account

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "city_facts", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"], "additionalProperties": False}}}


ALL_FEATURES = frozenset({"text", "stream", "tools", "stream_tools", "images", "json_schema", "usage"})
WITHOUT_JSON_SCHEMA = ALL_FEATURES - {"json_schema"}
"""Anthropic models (direct, on Bedrock, on Vertex) get `response_format` refused with a 400 naming it."""


@dataclass(frozen=True)
class Provider:
    """One schema under test: its route, the demo provider behind it, and what it supports."""

    route: str
    demo: str
    backend: dict
    model: str
    embedding_model: str | None = None
    features: frozenset[str] = ALL_FEATURES


def providers(ports: dict[str, int], sa_file: Path) -> list[Provider]:
    found = [
        Provider("p-azure", "azure", {"schema": "azure-openai", "base_url": f"http://127.0.0.1:{ports['azure']}",
                                      "api_key": {"env": "E2E_PROVIDER_KEY"}, "azure": {"api_version": "2024-10-21"}},
                 "gpt-4o-prod", "text-embedding-3-small"),
        Provider("p-cohere", "cohere", {"schema": "cohere", "base_url": f"http://127.0.0.1:{ports['cohere']}",
                                        "api_key": {"env": "E2E_PROVIDER_KEY"}},
                 "command-a-vision-07-2025", "embed-v4.0"),
        Provider("p-bedrock", "bedrock", {"schema": "bedrock-converse", "base_url": f"http://127.0.0.1:{ports['bedrock']}",
                                          "aws": {"region": "us-east-1"}},
                 "amazon.nova-pro-v1:0", "cohere.embed-english-v3"),
        Provider("p-bedrock-claude", "bedrock", {"schema": "bedrock-anthropic",
                                                 "base_url": f"http://127.0.0.1:{ports['bedrock']}",
                                                 "aws": {"region": "us-east-1"}},
                 "anthropic.claude-sonnet-4-5-20250929-v1:0", features=WITHOUT_JSON_SCHEMA),
        Provider("p-gemini", "gemini", {"schema": "gemini", "base_url": f"http://127.0.0.1:{ports['gemini']}",
                                        "api_key": {"env": "E2E_PROVIDER_KEY"}},
                 "gemini-2.5-flash", "gemini-embedding-001"),
        Provider("p-vertex", "vertex", {"schema": "vertex-gemini", "base_url": f"http://127.0.0.1:{ports['vertex']}",
                                        "gcp": {"project": "zoo", "location": "us-central1",
                                                "service_account_file": str(sa_file)}},
                 "gemini-2.5-pro", "text-embedding-005"),
        Provider("p-vertex-claude", "vertex", {"schema": "vertex-anthropic",
                                               "base_url": f"http://127.0.0.1:{ports['vertex']}",
                                               "gcp": {"project": "zoo", "location": "us-east5",
                                                       "service_account_file": str(sa_file)}},
                 "claude-sonnet-4-5@20250929", features=WITHOUT_JSON_SCHEMA),
        Provider("p-groq", "openai", {"schema": "openai", "preset": "groq",
                                      "base_url": f"http://127.0.0.1:{ports['openai']}/v1",
                                      "api_key": {"env": "E2E_PROVIDER_KEY"}}, "llama-3.3-70b-versatile"),
    ]
    return [p for p in found if p.demo in ports]


DEMOS = {"azure": "azure", "cohere": "cohere", "openai": "openai", "bedrock": "bedrock", "gemini": "gemini",
         "vertex": "vertex"}
DEMO_KEYS = {"bedrock": "AKIDZOO", "vertex": "ya29.zoo"}
"""The demo Bedrock checks the SigV4 access key id; the demo Vertex hands out (and accepts) its key as the token."""


@dataclass
class Zoo:
    url: str
    key: str
    providers: list[Provider]
    ports: dict[str, int]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=30)

    def last_request(self, demo: str) -> dict:
        return httpx.get(f"http://127.0.0.1:{self.ports[demo]}/_demo/requests").json()[-1]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    workdir = tmp_path_factory.mktemp("zoo")
    supervisor = Supervisor(log_dir=workdir)
    try:
        ports = {}
        for demo, kind in DEMOS.items():
            _, ready = supervisor.start_reporting(f"demo-{demo}", python_module(
                "ext_proc.demo", "--kind", kind, "--name", f"zoo-{demo}", "--port", "0",
                "--api-key", DEMO_KEYS.get(demo, "sk-zoo")))
            ports[demo] = ready["port"]
        token_uri = f"http://127.0.0.1:{ports['vertex']}/token"
        found = providers(ports, write_service_account(workdir / "sa.json", token_uri))
        key = generate_key()
        routes = [{"model": p.route, "backends": [{"backend": p.route, "model": p.model}]} for p in found]
        routes += [{"model": f"{p.route}-embed", "backends": [{"backend": p.route, "model": p.embedding_model}]}
                   for p in found if p.embedding_model]
        config = {
            "listener": {"port": free_port(), "admin_port": free_port()},
            "ext_proc": {"port": free_port()},
            "backends": [{"id": p.route, **p.backend} for p in found],
            "routes": routes,
            "virtual_keys": [{"id": "zoo", "hash": hash_key(key)}],
        }
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        stack = start_stack(load_config(config_path), config_path, workdir, supervisor,
                            env={"E2E_PROVIDER_KEY": "sk-zoo", "AWS_ACCESS_KEY_ID": "AKIDZOO",
                                 "AWS_SECRET_ACCESS_KEY": "zoo-secret"})
        yield Zoo(stack.url, key, found, ports)
    finally:
        supervisor.stop_all()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test runs for every provider that claims its feature (the closing note's table lists the rest)."""
    if "provider" in metafunc.fixturenames:
        feature = metafunc.function.__name__.removeprefix("test_")
        claimed = [p for p in providers({d: 0 for d in DEMOS}, Path("/nonexistent"))
                   if (p.embedding_model if feature == "embeddings" else feature in p.features)]
        metafunc.parametrize("provider", [p.route for p in claimed])


def _provider(zoo: Zoo, name: str) -> Provider:
    return next(p for p in zoo.providers if p.route == name)


def test_text(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
    raw = zoo.client().chat.completions.with_raw_response.create(
        model=p.route, max_tokens=100, messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "hello zoo"}])
    answer = raw.parse()
    assert f"zoo-{p.demo}" in answer.choices[0].message.content and "hello zoo" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert raw.headers["x-babelgate-backend"] == p.route


def test_stream(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
    chunks = list(zoo.client().chat.completions.create(
        model=p.route, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream zoo"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream zoo" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_tools(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
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


def test_stream_tools(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
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


def test_images(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
    zoo.client().chat.completions.create(model=p.route, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}])
    assert PIXEL in json.dumps(zoo.last_request(p.demo)["body"])


def test_json_schema(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
    zoo.client().chat.completions.create(model=p.route, messages=[{"role": "user", "content": "facts"}],
                                         response_format=SCHEMA)
    # The schema reached the provider's structured-output field (Gemini spells types INTEGER; Bedrock nests JSON text).
    sent = json.dumps(zoo.last_request(p.demo)["body"]).lower()
    assert "population" in sent and "integer" in sent


def test_embeddings(zoo: Zoo, provider: str) -> None:
    p = _provider(zoo, provider)
    result = zoo.client().embeddings.create(model=f"{p.route}-embed", input=["alpha", "beta"])
    assert len(result.data) == 2 and result.data[1].index == 1 and len(result.data[0].embedding) > 0


def test_json_schema_refused(zoo: Zoo) -> None:
    """Providers without structured output refuse `response_format` on purpose, with a 400 naming it."""
    refusing = [p for p in zoo.providers if "json_schema" not in p.features]
    assert refusing
    for p in refusing:
        with pytest.raises(openai.BadRequestError) as raised:
            zoo.client().chat.completions.create(model=p.route, messages=[{"role": "user", "content": "x"}],
                                                 response_format=SCHEMA)
        assert raised.value.body["param"] == "response_format", p.route


@pytest.mark.parametrize("route", ["p-bedrock", "p-gemini", "p-vertex-claude", "p-cohere", "p-azure"])
def test_anthropic_sdk_reaches_every_schema(zoo: Zoo, route: str) -> None:
    claude = anthropic.Anthropic(base_url=zoo.url + "/anthropic", api_key=zoo.key, max_retries=0, timeout=30)
    with claude.messages.stream(model=route, max_tokens=200,
                                messages=[{"role": "user", "content": "from anthropic"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "from anthropic" in text and final.stop_reason == "end_turn" and final.usage.output_tokens > 0


@pytest.mark.parametrize("route", ["p-gemini-embed", "p-bedrock-embed", "p-cohere-embed"])
def test_embeddings_asked_as_base64_come_back_as_base64(zoo: Zoo, route: str) -> None:
    floats = zoo.client().embeddings.create(model=route, input=["alpha"], encoding_format="float").data[0].embedding
    raw = httpx.post(zoo.url + "/v1/embeddings", timeout=30, headers={"authorization": f"Bearer {zoo.key}"},
                     json={"model": route, "input": ["alpha"], "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(floats, rel=1e-6)
