"""Guardrails through the real Envoy: redacted requests are what providers receive (retries included), blocked ones
get an OpenAI-style 400 naming the guardrail, answers are redacted (JSON and streams) or blocked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Supervisor, free_port
from ext_proc.launch.stack import start_stack

from .support import fault, start_demo

CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openai.OpenAI, dict[str, int]]]:
    workdir = tmp_path_factory.mktemp("guardrails")
    supervisor = Supervisor(log_dir=workdir)
    try:
        ports = {name: start_demo(supervisor, name, kind, "sk-guard")
                 for name, kind in (("g-openai", "openai"), ("g-anthropic", "anthropic"))}
        key = generate_key()
        pii = {"name": "pii", "pii": ["email", "card"], "mode": "redact"}
        config = {
            "listener": {"port": free_port(), "admin_port": free_port()}, "ext_proc": {"port": free_port()},
            "backends": [
                {"id": "oa", "schema": "openai", "base_url": f"http://127.0.0.1:{ports['g-openai']}/v1",
                 "api_key": {"env": "GUARD_KEY"}, "outlier_detection": None},
                {"id": "an", "schema": "anthropic", "base_url": f"http://127.0.0.1:{ports['g-anthropic']}",
                 "api_key": {"env": "GUARD_KEY"}, "outlier_detection": None}],
            "routes": [
                {"model": "direct", "backends": [{"backend": "oa", "model": "m"}], "max_messages": 3,
                 "guardrails": [pii, {"name": "no-secrets-project", "deny_words": ["project orion"]}]},
                {"model": "chain", "backends": [{"backend": "oa", "model": "m"}, {"backend": "an", "model": "c"}],
                 "guardrails": [pii]},
                {"model": "answers", "backends": [{"backend": "oa", "model": "m"}],
                 "guardrails": [{"name": "answer-pii", "pii": ["email"], "mode": "redact", "apply_to": ["response"]},
                                {"name": "answer-block", "deny_words": ["launch codes"], "apply_to": ["response"]}]},
            ],
            "virtual_keys": [{"id": "k", "hash": hash_key(key)}],
            "routing": {"cooldown_max": "1ms"},
        }
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        stack = start_stack(load_config(path), path, workdir, supervisor, env={"GUARD_KEY": "sk-guard"})
        yield openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=20), ports
    finally:
        supervisor.stop_all()


def _sent(ports: dict[str, int], name: str) -> dict:
    return httpx.get(f"http://127.0.0.1:{ports[name]}/_demo/requests").json()[-1]["body"]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_direct_route_redacts_before_the_provider_sees_it(guarded: tuple) -> None:
    client, ports = guarded
    answer = client.chat.completions.create(model="direct", messages=_user(f"mail me at a@b.io, card {CARD}"))
    sent = _sent(ports, "g-openai")["messages"][0]["content"]
    assert sent == "mail me at [REDACTED:EMAIL], card [REDACTED:CARD]"
    assert "a@b.io" not in answer.choices[0].message.content


def test_chain_sends_the_redacted_body_to_every_attempt(guarded: tuple) -> None:
    client, ports = guarded
    raw = client.chat.completions.with_raw_response.create(
        model="chain", messages=_user("I am x@y.org"), extra_headers=fault("g-openai:503"))
    assert raw.headers["x-babelgate-backend"] == "an"
    assert _sent(ports, "g-openai")["messages"][0]["content"] == "I am [REDACTED:EMAIL]"
    assert _sent(ports, "g-anthropic")["messages"][0]["content"] == "I am [REDACTED:EMAIL]"


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
