"""Request bodies as large as `requests.max_body_bytes` allows, end to end through the real Envoy: every client format
(chat, embeddings, Anthropic Messages) to translated and untranslated backends, base64 images to Anthropic and
Bedrock; above the limit the gateway's own OpenAI-shaped 413 (`request_too_large`).

Envoy buffers a request body for the route stage (and, per attempt, for translation); its 1 MiB defaults
(`per_connection_buffer_limit_bytes` on the listener and the clusters) once refused anything larger with its own 413.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from .gateways import Gateway, GatewayBuilder

MIB = 1 << 20
LIMIT = 20 * MIB


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("large"), processes=2, client_timeout=120) as build:
        # Envoy waits 5 s by default for each ext_proc answer; parsing and translating 16 MiB in Python on a busy
        # machine can take longer, and the gateway's bounds on large bodies are what these tests are about
        build.set(requests={"max_body_bytes": LIMIT}, ext_proc={"message_timeout": "30s"})
        build.backend("oa", build.demo("openai", name="large-openai"))
        build.backend("an", build.demo("anthropic", "anthropic", name="large-anthropic"))
        build.backend("br", build.demo("bedrock", "bedrock", name="large-bedrock"))
        build.route("openai", ("oa", "gpt-4o"))
        build.route("anthropic", ("an", "claude-sonnet-4-5"))
        build.route("chain", ("an", "claude-sonnet-4-5"), ("oa", "gpt-4o"))
        build.route("bedrock", ("br", "us.amazon.nova-pro-v1:0"))
        build.route("embed", ("oa", "text-embedding-3-small"))
        build.key("large")
        yield build.start()


def _last_body_size(gateway: Gateway, demo: str) -> int:
    recorded = gateway.last_request(demo)
    return len(recorded["body"] if isinstance(recorded["body"], str) else str(recorded["body"]))


def _text(size: int) -> str:
    words = "the quick brown fox jumps over the lazy dog "
    return (words * (size // len(words) + 1))[:size]


def _png(raw_bytes: int) -> bytes:
    """A valid PNG of random pixels (incompressible) with about `raw_bytes` of pixel data."""
    width = 1024
    height = max(1, raw_bytes // (3 * width))
    rows = b"".join(b"\x00" + os.urandom(3 * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [1 * MIB, 4 * MIB, 16 * MIB], ids=["1MiB", "4MiB", "16MiB"])
@pytest.mark.parametrize("model", ["openai", "anthropic", "chain"])
def test_a_chat_body_up_to_the_limit_is_served(gateway: Gateway, model: str, size: int) -> None:
    answer = gateway.client().chat.completions.create(
        model=model, max_tokens=20, messages=[{"role": "user", "content": _text(size)}])
    assert answer.choices[0].message.content
    demo = "openai" if model == "openai" else "anthropic"
    assert _last_body_size(gateway, demo) >= size


@pytest.mark.parametrize("model", ["anthropic", "bedrock"])
@pytest.mark.parametrize("size", [4 * MIB, 12 * MIB], ids=["4MiB", "12MiB"])
def test_a_large_base64_image_reaches_anthropic_and_bedrock(gateway: Gateway, model: str, size: int) -> None:
    """Base64 grows the image by a third: 12 MiB of pixels is a 16 MiB request."""
    image = base64.b64encode(_png(size)).decode()
    content = [{"type": "text", "text": "what is in this picture?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
    answer = gateway.client().chat.completions.create(model=model, max_tokens=20,
                                                      messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content
    assert _last_body_size(gateway, model) >= len(image)


def test_large_embeddings_input_is_served(gateway: Gateway) -> None:
    inputs = [_text(MIB) for _ in range(4)]
    result = gateway.client().embeddings.create(model="embed", input=inputs)
    assert len(result.data) == 4


def test_a_large_anthropic_messages_request_is_served(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0,
                                 timeout=120)
    message = client.messages.create(model="openai", max_tokens=20,
                                     messages=[{"role": "user", "content": _text(8 * MIB)}])
    assert message.content[0].text
    assert _last_body_size(gateway, "openai") >= 8 * MIB


def test_above_the_limit_the_gateway_answers_413_request_too_large(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        gateway.client().chat.completions.create(
            model="openai", messages=[{"role": "user", "content": _text(LIMIT + MIB)}])
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "request_too_large"  # type: ignore[index]


def test_a_chunked_body_above_the_limit_gets_the_same_413(gateway: Gateway) -> None:
    """No content-length: the size is only known once Envoy has buffered past its limit."""
    body = b'{"model": "openai", "messages": [{"role": "user", "content": "' + _text(LIMIT + 2 * MIB).encode() + b'"}]}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), MIB):
            yield body[start:start + MIB]

    response = httpx.post(gateway.url + "/v1/chat/completions", content=chunks(), timeout=120,
                          headers={"authorization": f"Bearer {gateway.key}", "content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
