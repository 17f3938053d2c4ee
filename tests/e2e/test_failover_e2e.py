"""In-request failover through Envoy: a failing first backend, the next one answers, re-translated for its schema."""

from __future__ import annotations

import signal

import openai
import pytest

from .gateways import Gateway
from .support import fault

HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("failure", ["500", "502", "503", "429", "reset"])
def test_openai_failure_is_answered_by_anthropic(gateway: Gateway, client: openai.OpenAI, failure: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=fault(f"openai-a:{failure}"))
    completion = raw.parse()
    assert "anthropic-a" in completion.choices[0].message.content
    assert completion.model == "claude-haiku-4-5"
    assert raw.headers["x-babelgate-backend"] == "an"
    assert raw.headers["x-babelgate-attempts"] == "2"


def test_client_cannot_switch_off_failover_with_envoy_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO,
        extra_headers={**fault("openai-a:500"), "x-envoy-max-retries": "0", "x-envoy-retry-on": "",
                       "x-envoy-upstream-rq-timeout-ms": "1"})
    assert raw.headers["x-babelgate-backend"] == "an"


def test_anthropic_failure_is_answered_by_openai_with_the_original_body(
        gateway: Gateway, client: openai.OpenAI) -> None:
    gateway.clear_provider_requests("openai-a")
    raw = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=[{"role": "system", "content": "sys"}, *HELLO], max_tokens=99,
        extra_headers=fault("anthropic-a:529"))
    assert raw.headers["x-babelgate-backend"] == "oa"
    sent = gateway.provider_requests("openai-a")[-1]["body"]
    # The retry was translated from the client's OpenAI body, not from the Anthropic body of the first attempt.
    assert sent["messages"] == [{"role": "system", "content": "sys"}, *HELLO]
    assert sent["model"] == "gpt-4o" and sent["max_tokens"] == 99


def test_streaming_request_fails_over_before_the_first_byte(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True}, messages=HELLO,
        extra_headers=fault("openai-a:503"))
    chunks = list(stream)
    assert "anthropic-a" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None


def test_refused_connection_fails_over(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="dead-then-openai", messages=HELLO)
    assert "openai-b" in raw.parse().choices[0].message.content
    assert raw.headers["x-babelgate-attempts"] == "2"


def test_backend_stalling_past_its_timeout_fails_over(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="quick-then-anthropic", messages=HELLO, extra_headers=fault("openai-a:stall=3000"))
    assert raw.headers["x-babelgate-backend"] == "an"


def test_every_backend_failing_returns_the_last_error_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="openai-pair", messages=HELLO,
                                       extra_headers=fault("openai-a:500,openai-b:500"))
    assert raised.value.status_code == 500
    assert raised.value.response.headers["x-babelgate-attempts"] == "2"
    assert set(raised.value.response.json()["error"]) >= {"message", "type", "code"}


def test_every_backend_unreachable_is_a_json_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="dead-then-openai", messages=HELLO, extra_headers=fault("openai-b:reset"))
    assert raised.value.status_code == 503
    error = raised.value.response.json()["error"]
    assert error["type"] == "service_unavailable" and error["message"]


def test_anthropic_errors_are_mapped_when_nothing_is_left_to_try(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO,
                                       extra_headers=fault("openai-a:500,anthropic-a:429"))
    assert raised.value.response.json()["error"]["type"] == "rate_limit_error"  # Anthropic's error, translated
    assert raised.value.response.headers["x-babelgate-backend"] == "an"
    with pytest.raises(openai.BadRequestError) as raised_400:
        client.chat.completions.create(model="claude-sonnet-4-5", messages=HELLO,
                                       extra_headers=fault("anthropic-a:400"))
    assert raised_400.value.response.headers["x-babelgate-attempts"] == "1"  # a 400 is never retried elsewhere


def test_killed_first_backend_fails_over(gateway: Gateway) -> None:
    """The first backend's process is killed between two requests: the second is answered by the next backend."""
    client = gateway.client()
    before = client.chat.completions.with_raw_response.create(model="killable-then-anthropic", messages=HELLO)
    assert before.headers["x-babelgate-backend"] == "killable"
    doomed = next(child for child in gateway.supervisor.children if child.name == "killable")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(5)
    for _ in range(3):  # pooled connections to the dead process and fresh connection attempts alike
        after = client.chat.completions.with_raw_response.create(model="killable-then-anthropic", messages=HELLO)
        assert after.headers["x-babelgate-backend"] == "an"
        assert "anthropic-a" in after.parse().choices[0].message.content
