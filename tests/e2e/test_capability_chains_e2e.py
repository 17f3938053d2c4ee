"""Capability-aware chains through Envoy: an OpenAI primary with a Claude fallback serves what only the primary can
(`n`, `logprobs`, json_schema), never failing over to a fallback that can't serve the request; a request only the
fallback serves goes straight to it; a `strict` route still refuses; `x-babelgate-dropped-fields` names what the
serving backend's translation left out."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from .gateways import Gateway, GatewayBuilder
from .support import fault

HELLO = [{"role": "user", "content": "hello"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
CLAUDE = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("capability"),
                        backend_defaults={"outlier_detection": None}) as build:
        openai_demo = build.demo("cap-openai", "openai")
        anthropic_demo = build.demo("cap-anthropic", "anthropic")
        build.backend("oa", openai_demo)
        build.backend("ol", openai_demo, preset="ollama")
        build.backend("an", anthropic_demo)
        build.route("mixed", ("oa", "gpt-4o-mini"), ("an", CLAUDE))
        build.route("mixed-strict", ("oa", "gpt-4o-mini"), ("an", CLAUDE), fields="strict")
        build.route("local-first", ("ol", "llama3"), ("an", CLAUDE))
        build.key("capability")
        yield build.start()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    gateway.clear_provider_requests("cap-openai")
    gateway.clear_provider_requests("cap-anthropic")
    return gateway.client(max_retries=0)


@pytest.mark.parametrize("extra", [
    {"n": 2},
    {"logprobs": True, "top_logprobs": 3},
    {"n": 2, "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}},
])
def test_what_only_the_primary_serves_is_served_by_it(gateway: Gateway, client: openai.OpenAI, extra: dict) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mixed", messages=HELLO, **extra)
    assert raw.status_code == 200
    assert (raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"]) == ("oa", "1")
    sent = gateway.last_request("cap-openai")["body"]
    assert {name: sent[name] for name in extra} == extra


def test_a_request_the_fallback_can_not_serve_never_fails_over_to_it(gateway: Gateway,
                                                                      client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="mixed", messages=HELLO, n=2, extra_headers=fault("cap-openai:500"))
    assert raised.value.response.headers["x-babelgate-backend"] == "oa"
    assert gateway.provider_requests("cap-anthropic") == []


def test_a_request_both_serve_still_fails_over_naming_what_claude_left_out(gateway: Gateway,
                                                                           client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mixed", messages=HELLO, seed=7, presence_penalty=0.5, extra_headers=fault("cap-openai:503"))
    assert (raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"]) == ("an", "2")
    assert set(raw.headers["x-babelgate-dropped-fields"].split(",")) == {"seed", "presence_penalty"}
    assert "seed" not in gateway.last_request("cap-anthropic")["body"]


def test_the_primary_s_answer_names_nothing_dropped(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mixed", messages=HELLO, seed=7)
    assert raw.headers["x-babelgate-backend"] == "oa"
    assert "x-babelgate-dropped-fields" not in raw.headers


def test_a_streamed_answer_names_what_was_left_out(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="mixed", messages=HELLO, stream=True, seed=7, extra_headers=fault("cap-openai:429")) as raw:
        assert raw.headers["x-babelgate-backend"] == "an"
        assert raw.headers["x-babelgate-dropped-fields"] == "seed"
        assert "".join(raw.iter_lines())


def test_a_request_only_the_fallback_serves_goes_straight_to_it(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="local-first", messages=HELLO, tools=TOOLS, tool_choice="required")  # Ollama can't force a call
    assert (raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"]) == ("an", "1")
    assert gateway.provider_requests("cap-openai") == []
    assert gateway.last_request("cap-anthropic")["body"]["tool_choice"] == {"type": "any"}


def test_a_strict_route_refuses_what_its_fallback_can_not_serve(gateway: Gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="mixed-strict", messages=HELLO, n=2)
    error = raised.value.response.json()["error"]
    assert error["param"] == "n"
    assert error["message"].startswith("Backend 'an' (anthropic) of route 'mixed-strict' can't serve `n`")
    assert gateway.provider_requests("cap-openai") == []


def test_a_request_no_backend_serves_is_a_400_naming_each(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="mixed", messages=HELLO, extra_body={"provider_options": "x"})
    message = raised.value.response.json()["error"]["message"]
    assert message.startswith("No backend of route 'mixed' can serve this request: 'oa' (openai) can't serve")
    assert "; 'an' (anthropic) can't serve `provider_options`" in message
