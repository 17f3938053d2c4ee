"""Guardrails through the real Envoy: redacted requests are what providers receive (retries included), blocked ones
get an OpenAI-style 400 naming the guardrail, answers are redacted (JSON and streams) or blocked."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from .gateways import Gateway, GatewayBuilder
from .support import fault

CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, Gateway]]:
    with GatewayBuilder(tmp_path_factory.mktemp("guardrails"), backend_defaults={"outlier_detection": None}) as build:
        build.backend("oa", build.demo("g-openai"))
        build.backend("an", build.demo("g-anthropic", "anthropic"))
        pii = {"name": "pii", "pii": ["email", "card"], "mode": "redact"}
        build.route("direct", ("oa", "m"), max_messages=3,
                    guardrails=[pii, {"name": "no-secrets-project", "deny_words": ["project orion"]}])
        build.route("chain", ("oa", "m"), ("an", "c"), guardrails=[pii])
        build.route("answers", ("oa", "m"), guardrails=[
            {"name": "answer-pii", "pii": ["email"], "mode": "redact", "apply_to": ["response"]},
            {"name": "answer-block", "deny_words": ["launch codes"], "apply_to": ["response"]}])
        build.key("k")
        build.set(routing={"cooldown_max": "1ms"})
        gateway = build.start()
        yield gateway.client(timeout=20), gateway


def _sent(gateway: Gateway, name: str) -> dict:
    return gateway.last_request(name)["body"]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_direct_route_redacts_before_the_provider_sees_it(guarded: tuple) -> None:
    client, gateway = guarded
    answer = client.chat.completions.create(model="direct", messages=_user(f"mail me at a@b.io, card {CARD}"))
    sent = _sent(gateway, "g-openai")["messages"][0]["content"]
    assert sent == "mail me at [REDACTED:EMAIL], card [REDACTED:CARD]"
    assert "a@b.io" not in answer.choices[0].message.content


def test_chain_sends_the_redacted_body_to_every_attempt(guarded: tuple) -> None:
    client, gateway = guarded
    raw = client.chat.completions.with_raw_response.create(
        model="chain", messages=_user("I am x@y.org"), extra_headers=fault("g-openai:503"))
    assert raw.headers["x-babelgate-backend"] == "an"
    assert _sent(gateway, "g-openai")["messages"][0]["content"] == "I am [REDACTED:EMAIL]"
    assert _sent(gateway, "g-anthropic")["messages"][0]["content"] == "I am [REDACTED:EMAIL]"


def test_blocked_request_is_an_openai_400_naming_the_guardrail(guarded: tuple) -> None:
    client, _ = guarded
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="direct", messages=_user("status of Project Orion?"))
    error = raised.value.response.json()["error"]
    assert error["code"] == "guardrail_blocked" and "'no-secrets-project'" in error["message"]


def test_too_many_messages(guarded: tuple) -> None:
    client, _ = guarded
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="direct", messages=_user("a") * 4)
    assert raised.value.response.json()["error"]["code"] == "too_many_messages"


def test_answers_are_redacted_json_and_streamed(guarded: tuple) -> None:
    client, _ = guarded
    answer = client.chat.completions.create(model="answers", messages=_user("echo z@q.com"))
    content = answer.choices[0].message.content
    assert "[REDACTED:EMAIL]" in content and "z@q.com" not in content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="answers", messages=_user("echo z@q.com"), stream=True) if c.choices)
    assert "z@q.com" not in streamed


def test_blocked_answer(guarded: tuple) -> None:
    client, _ = guarded
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="answers", messages=_user("the launch codes are 1234"))
    assert "'answer-block'" in raised.value.response.json()["error"]["message"]
    stream = client.chat.completions.create(model="answers", messages=_user("the launch codes are 1234"), stream=True)
    with pytest.raises(openai.APIError, match="answer-block"):
        list(stream)
