"""Output normalization through the real Envoy (issue 21, part 3): an answer to a request for a JSON schema is checked
against it whatever the backend. An invalid answer fails over to the next backend of the chain; when none is left
(or the route is direct) the client gets a 502 that names the violation, in its own API's error shape. A stream
that turns out invalid ends with an error event the SDKs raise.

The demo providers answer a structured request with JSON that fits its schema; the `off-schema` fault makes them
answer JSON that does not (every value of another type).
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pydantic
import pytest

from .gateways import Gateway, GatewayBuilder
from .support import fault

ASK = [{"role": "user", "content": "Tell me about a person."}]


class Person(pydantic.BaseModel):
    name: str
    age: int


PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                 "required": ["name", "age"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True}}
OUTPUT_CONFIG = {"format": {"type": "json_schema", "schema": PERSON_SCHEMA}}
VIOLATION = "does not match the response_format schema: at $.name: 1 is not of type 'string'"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("output-schema"),
                        backend_defaults={"outlier_detection": None}) as build:
        for handle, kind in (("openai-a", "openai"), ("openai-b", "openai"), ("anthropic-a", "anthropic")):
            build.demo(handle, kind)
        build.backend("oa", build.demos["openai-a"])
        build.backend("ob", build.demos["openai-b"])
        build.backend("an", build.demos["anthropic-a"])
        build.route("pair", ("oa", "gpt-4o-mini"), ("ob", "gpt-4o-mini"))
        build.route("single", ("oa", "gpt-4o-mini"))
        build.route("claude-pair", ("an", "claude-haiku-4-5"), ("oa", "gpt-4o-mini"))
        build.route("claude-single", ("an", "claude-haiku-4-5"))
        build.key("schema")
        yield build.start()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return gateway.client()


@pytest.fixture
def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def _fresh_providers(gateway: Gateway) -> None:
    for handle in gateway.demos:
        gateway.clear_provider_requests(handle)


def _model_requests(gateway: Gateway, handle: str) -> list[dict]:
    return [request for request in gateway.provider_requests(handle) if request.get("method") == "POST"]


def test_a_valid_answer_goes_through_unchanged(client: openai.OpenAI, gateway: Gateway) -> None:
    completion = client.chat.completions.parse(model="pair", messages=ASK, response_format=Person)
    assert completion.choices[0].message.parsed == Person(name="demo", age=1)
    assert len(_model_requests(gateway, "openai-a")) == 1 and _model_requests(gateway, "openai-b") == []


def test_an_invalid_answer_fails_over_to_the_next_backend(client: openai.OpenAI, gateway: Gateway) -> None:
    raw = client.chat.completions.with_raw_response.parse(
        model="pair", messages=ASK, response_format=Person, extra_headers=fault("openai-a:off-schema"))
    assert raw.parse().choices[0].message.parsed == Person(name="demo", age=1)
    assert raw.headers["x-babelgate-backend"] == "ob"
    assert raw.headers["x-babelgate-attempts"] == "2"
    assert len(_model_requests(gateway, "openai-a")) == 1
    assert len(_model_requests(gateway, "openai-b")) == 1


def test_every_backend_invalid_is_a_502_naming_the_violation(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="pair", messages=ASK, response_format=RESPONSE_FORMAT,
                                       extra_headers=fault("openai-a:off-schema,openai-b:off-schema"))
    assert raised.value.status_code == 502
    error = raised.value.response.json()["error"]
    assert error["code"] == "invalid_structured_output" and error["type"] == "upstream_error"
    assert error["message"] == f"The answer from backend 'ob' {VIOLATION}"
    assert raised.value.response.headers["x-babelgate-attempts"] == "2"
    assert len(_model_requests(gateway, "openai-a")) == 1 and len(_model_requests(gateway, "openai-b")) == 1


def test_a_direct_route_answers_an_invalid_answer_with_a_502(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="single", messages=ASK, response_format=RESPONSE_FORMAT,
                                       extra_headers=fault("openai-a:off-schema"))
    assert raised.value.status_code == 502
    assert raised.value.response.json()["error"]["message"] == f"The answer from backend 'oa' {VIOLATION}"
    assert len(_model_requests(gateway, "openai-a")) == 1


def test_json_object_answers_must_be_objects(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="single", messages=ASK,
                                                response_format={"type": "json_object"})
    assert completion.choices[0].message.content == "{}"
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="single", messages=ASK, response_format={"type": "json_object"},
                                       extra_headers=fault("openai-a:off-schema"))
    assert raised.value.status_code == 502
    assert "the answer is not a JSON object" in raised.value.response.json()["error"]["message"]


def test_an_invalid_stream_ends_with_an_error_and_never_fails_over(client: openai.OpenAI, gateway: Gateway) -> None:
    stream = client.chat.completions.create(model="pair", messages=ASK, response_format=RESPONSE_FORMAT, stream=True,
                                            extra_headers=fault("openai-a:off-schema"))
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert VIOLATION in raised.value.message
    assert "".join(received) == '{"name":1,"age":"demo"}'  # what went out before the end can't be taken back
    assert len(_model_requests(gateway, "openai-a")) == 1 and _model_requests(gateway, "openai-b") == []


def test_a_valid_stream_is_untouched(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="single", messages=ASK, response_format=RESPONSE_FORMAT,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '{"name":"demo","age":1}'
    assert chunks[-1].usage is not None


def test_an_anthropic_client_fails_over_from_an_invalid_passthrough_answer(
        claude: anthropic.Anthropic, gateway: Gateway) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-pair", max_tokens=200, messages=ASK, output_config=OUTPUT_CONFIG,
        extra_headers=fault("anthropic-a:off-schema"))
    message = raw.parse()
    assert Person.model_validate_json(message.content[0].text) == Person(name="demo", age=1)
    assert raw.headers["x-babelgate-backend"] == "oa"
    assert len(_model_requests(gateway, "anthropic-a")) == 1 and len(_model_requests(gateway, "openai-a")) == 1


def test_an_anthropic_client_gets_an_anthropic_style_502(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(model="claude-single", max_tokens=200, messages=ASK, output_config=OUTPUT_CONFIG,
                               extra_headers=fault("anthropic-a:off-schema"))
    assert raised.value.status_code == 502
    body = raised.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["message"] == f"The answer from backend 'an' {VIOLATION}"


def test_an_anthropic_translated_answer_is_checked_too(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(model="single", max_tokens=200, messages=ASK, output_config=OUTPUT_CONFIG,
                               extra_headers=fault("openai-a:off-schema"))
    assert raised.value.status_code == 502
    assert raised.value.response.json()["error"]["message"] == f"The answer from backend 'oa' {VIOLATION}"


def test_an_anthropic_stream_that_turns_out_invalid_raises(claude: anthropic.Anthropic) -> None:
    with (pytest.raises(anthropic.APIStatusError) as raised,
          claude.messages.stream(model="claude-single", max_tokens=200, messages=ASK, output_config=OUTPUT_CONFIG,
                                 extra_headers=fault("anthropic-a:off-schema")) as stream):
        for _ in stream:
            pass
    assert VIOLATION in str(raised.value)
