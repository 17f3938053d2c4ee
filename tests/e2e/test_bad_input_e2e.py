"""Hostile and broken requests through the real Envoy: always an OpenAI-style error, never a crash or a hang."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc.config.loading import parse_config
from ext_proc.envoy_config.bootstrap import render_yaml
from ext_proc.launch.processes import Supervisor, free_port, wait_for_envoy
from ext_proc.launch.stack import envoy_argv

from .gateways import Gateway
from .support import fault

HELLO = [{"role": "user", "content": "hello"}]


def post(gateway: Gateway, body: bytes | str, *, key: str | None = None, path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None) -> httpx.Response:
    all_headers = {"authorization": f"Bearer {key or gateway.key}", "content-type": "application/json",
                   **(headers or {})}
    return httpx.post(gateway.url + path, content=body, headers=all_headers, timeout=15)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    if code is not None:
        assert error["code"] == code
    return error


def test_malformed_json_is_400(gateway: Gateway) -> None:
    assert_openai_error(post(gateway, b'{"model": "gpt-4o-mini", "messages": ['), 400, "invalid_json")


def test_missing_and_unknown_model(gateway: Gateway, client: openai.OpenAI) -> None:
    assert_openai_error(post(gateway, b'{"messages": [{"role": "user", "content": "x"}]}'), 400, "missing_model")
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-17", messages=HELLO)
    assert raised.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("which", ["missing", "invalid", "expired"])
def test_bad_keys_are_401(gateway: Gateway, which: str) -> None:
    headers = {"content-type": "application/json"}
    if which != "missing":
        headers["authorization"] = "Bearer " + ("bg-not-a-real-key" if which == "invalid"
                                                else gateway.keys["test-expired"])
    response = httpx.post(gateway.url + "/v1/chat/completions", headers=headers, timeout=15,
                          json={"model": "gpt-4o-mini", "messages": HELLO})
    error = assert_openai_error(response, 401)
    assert error["code"] == {"missing": "missing_api_key", "invalid": "invalid_api_key",
                             "expired": "expired_api_key"}[which]


def test_key_limited_to_one_model_is_refused_another(gateway: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        gateway.client("test-limited").chat.completions.create(model="claude-sonnet-4-5", messages=HELLO)
    assert gateway.client("test-limited").chat.completions.create(model="mini", messages=HELLO)


def test_wrong_method_is_405(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {gateway.key}"})
    assert_openai_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_unknown_path_is_404(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/v1/assistants", headers={"authorization": f"Bearer {gateway.key}"})
    assert_openai_error(response, 404, "unknown_url")


def test_oversize_body_is_413_whether_declared_or_chunked(gateway: Gateway) -> None:
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * 300_000 + b'"}]}'
    assert_openai_error(post(gateway, big), 413, "request_too_large")

    def chunks():
        for start in range(0, len(big), 16_384):
            yield big[start:start + 16_384]

    response = httpx.post(gateway.url + "/v1/chat/completions", content=chunks(), timeout=15,
                          headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json"})
    assert_openai_error(response, 413)


def test_field_no_backend_can_honour_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="anthropic-solo", messages=HELLO, n=2)
    assert raised.value.body["param"] == "n"
    assert raised.value.body["message"].startswith("Backend 'an' (anthropic) of route 'anthropic-solo' can't serve `n`")


def test_field_only_the_primary_can_honour_is_served_by_it(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, n=2)
    assert raw.headers["x-babelgate-backend"] == "oa"  # its Anthropic fallback can't serve n=2: left out, no 400


def test_messages_of_the_wrong_shape_are_400(gateway: Gateway) -> None:
    for body in (b'{"model": "gpt-4o-mini", "messages": "hi"}', b'{"model": "gpt-4o-mini", "messages": [42]}',
                 b'{"model": "gpt-4o-mini", "messages": [], "stream": 1}', b"[]", b"null", b""):
        assert_openai_error(post(gateway, body), 400)


def test_stream_cut_by_the_provider_ends_without_hanging(client: openai.OpenAI) -> None:
    """After bytes went to the client no backend switch is possible; the client must see the end, not wait."""
    received = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in client.with_options(timeout=10).chat.completions.create(
                model="claude-sonnet-4-5", stream=True, messages=HELLO,
                extra_headers=fault("anthropic-a:slow=100,anthropic-a:midstream=4")):
            received.append(chunk)
    assert received  # the first chunk did arrive before the cut, from the backend that was cut (Anthropic ids)
    assert received[0].id.startswith("msg_")


def test_ext_proc_service_down_is_a_fast_json_503(tmp_path: Path) -> None:
    """Envoy alone, its ext_proc service unreachable: clients get a clear 503 at once, not a hang or HTML."""
    config = parse_config(yaml.safe_dump({
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": {"port": free_port()},
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}]}))
    (tmp_path / "envoy.yaml").write_text(render_yaml(config))
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        supervisor.start("envoy", envoy_argv(tmp_path / "envoy.yaml"))
        wait_for_envoy(config.listener.admin_port, timeout=30, supervisor=supervisor)
        response = httpx.post(f"http://127.0.0.1:{config.listener.port}/v1/chat/completions", timeout=5,
                              json={"model": "m", "messages": HELLO}, headers={"authorization": "Bearer x"})
    finally:
        supervisor.stop_all()
    assert assert_openai_error(response, 503)["type"] == "service_unavailable"


def test_gateway_still_serves_after_all_of_this(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content


def test_oversized_headers_are_refused_by_envoy(gateway: Gateway) -> None:
    """Past `requests.max_header_kb` Envoy refuses before any filter runs: a 431 (in the OpenAI shape) or, when
    its HTTP/1 codec gives up mid-headers, a closed connection; never a 5xx, never Babelgate's work."""
    padding = {f"x-padding-{i}": "x" * 8000 for i in range(9)}
    try:
        response = httpx.post(gateway.url + "/v1/chat/completions",
                              headers={"authorization": f"Bearer {gateway.key}", **padding},
                              json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    except httpx.TransportError:  # the codec's 431 races the client still sending: a reset or a bare close
        return
    assert response.status_code == 431
    assert response.json()["error"]["type"]


def test_deep_json_and_too_many_messages_are_400(gateway: Gateway) -> None:
    auth = {"authorization": f"Bearer {gateway.key}"}
    deep = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + \
        "[" * 100 + "]" * 100 + "}"
    response = httpx.post(gateway.url + "/v1/chat/completions", headers={**auth, "content-type": "application/json"},
                          content=deep)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "json_too_deep")
