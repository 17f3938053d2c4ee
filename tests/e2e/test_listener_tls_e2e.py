"""TLS on Envoy's client-facing listener: the official SDK trusting a test CA, HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ext_proc.launch.stack import Stack

from .certs import make_ca_and_server_cert
from .gateways import GatewayBuilder

HOSTNAME = "localhost"


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, Path]]:
    workdir = tmp_path_factory.mktemp("tls-listener")
    ca, cert, key_file = make_ca_and_server_cert(workdir, HOSTNAME)
    with GatewayBuilder(workdir) as build:
        build.set(listener={"tls": {"cert_file": cert.name, "key_file": key_file.name}})  # relative to the config
        build.backend("p", build.demo("p"))
        build.route("m", ("p", "served"))
        key = build.key("k")
        yield build.start().stack, key, ca


def _url(stack: Stack) -> str:
    return f"https://{HOSTNAME}:{stack.config.listener.port}"


def test_stack_url_says_https(tls_gateway: tuple[Stack, str, Path]) -> None:
    stack, _, _ = tls_gateway
    assert stack.url.startswith("https://")


def test_openai_sdk_over_tls_trusting_the_test_ca(tls_gateway: tuple[Stack, str, Path]) -> None:
    stack, key, ca = tls_gateway
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(ca)))
    client = openai.OpenAI(base_url=_url(stack) + "/v1", api_key=key, max_retries=0, timeout=20, http_client=http)
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).model == "served"
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_http2_is_offered(tls_gateway: tuple[Stack, str, Path]) -> None:
    stack, key, ca = tls_gateway
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(ca))) as http:
        response = http.post(_url(stack) + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                             json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200 and response.http_version == "HTTP/2"


def test_a_client_without_the_ca_is_refused(tls_gateway: tuple[Stack, str, Path]) -> None:
    stack, key, _ = tls_gateway
    client = openai.OpenAI(base_url=_url(stack) + "/v1", api_key=key, max_retries=0, timeout=10)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_plain_http_gets_no_answer(tls_gateway: tuple[Stack, str, Path]) -> None:
    stack, key, _ = tls_gateway
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{stack.config.listener.port}/v1/models",
                  headers={"authorization": f"Bearer {key}"}, timeout=5)
