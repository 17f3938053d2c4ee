"""A key limited to one model can't reach another: not by alias, not by spoofed routing headers, not through the
Anthropic endpoint, and it sees only its own models."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from .gateways import Gateway

HELLO = [{"role": "user", "content": "hi"}]


def _limited(gateway: Gateway) -> openai.OpenAI:
    return gateway.client("test-limited")


def test_the_allowed_model_and_its_alias_work(gateway: Gateway) -> None:
    client = _limited(gateway)
    for model in ("gpt-4o-mini", "mini"):
        assert client.chat.completions.create(model=model, messages=HELLO).choices


def test_another_model_is_403(gateway: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        _limited(gateway).chat.completions.create(model="claude-sonnet-4-5", messages=HELLO)


@pytest.mark.parametrize("spoof", [
    {"x-babelgate-int-chain": "bg_chain_an__oa"},
    {"x-babelgate-int-chain": "bg_direct_an"},
    {"x-envoy-original-path": "/v1/chat/completions", "x-babelgate-int-route": "claude-sonnet-4-5"},
])
def test_spoofed_routing_headers_change_nothing(gateway: Gateway, spoof: dict[str, str]) -> None:
    client = _limited(gateway)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, extra_headers=spoof)
    assert raw.headers["x-babelgate-backend"] == "oa"  # the allowed route's first backend, not the spoofed chain
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="claude-sonnet-4-5", messages=HELLO, extra_headers=spoof)


def test_anthropic_endpoint_checks_the_same_key_scope(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.keys["test-limited"],
                                 max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HELLO)
    assert client.messages.create(model="gpt-4o-mini", max_tokens=10, messages=HELLO).content


def test_model_listing_and_lookup_show_only_what_the_key_may_use(gateway: Gateway) -> None:
    client = _limited(gateway)
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("claude-sonnet-4-5")


def test_revoked_or_expired_or_foreign_keys_are_401(gateway: Gateway) -> None:
    for key in (gateway.keys["test-expired"], gateway.keys["test-limited"] + "x", "bg-", "Bearer"):
        response = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                              json={"model": "gpt-4o-mini", "messages": HELLO})
        assert response.status_code == 401 and response.json()["error"]["type"]
