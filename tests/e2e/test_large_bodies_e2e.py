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
from dataclasses import dataclass

import anthropic
import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Supervisor, free_port, free_port_run

from .support import start_demo

MIB = 1 << 20
LIMIT = 20 * MIB
BEDROCK_KEY = "AKIDLARGE"


@dataclass
class Gateway:
    url: str
    key: str
    ports: dict[str, int]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=120)

    def last_body_size(self, demo: str) -> int:
        recorded = httpx.get(f"http://127.0.0.1:{self.ports[demo]}/_demo/requests", timeout=60).json()[-1]
        return len(recorded["body"] if isinstance(recorded["body"], str) else str(recorded["body"]))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from ext_proc.launch.stack import start_stack

    workdir = tmp_path_factory.mktemp("large")
    supervisor = Supervisor(log_dir=workdir)
    try:
        ports = {kind: start_demo(supervisor, f"large-{kind}", kind, BEDROCK_KEY if kind == "bedrock" else "sk-large")
                 for kind in ("openai", "anthropic", "bedrock")}
        key = generate_key()

        def backend(backend_id: str, schema: str, url: str, **extra: object) -> dict:
            return {"id": backend_id, "schema": schema, "base_url": url, **extra}

        config = {
            "listener": {"port": free_port(), "admin_port": free_port()},
            "ext_proc": {"port": free_port_run(2), "processes": 2},
            "requests": {"max_body_bytes": LIMIT},
            "backends": [
                backend("oa", "openai", f"http://127.0.0.1:{ports['openai']}/v1", api_key={"env": "LARGE_KEY"}),
                backend("an", "anthropic", f"http://127.0.0.1:{ports['anthropic']}", api_key={"env": "LARGE_KEY"}),
                backend("br", "bedrock-converse", f"http://127.0.0.1:{ports['bedrock']}",
                        aws={"region": "us-east-1"}),
            ],
            "routes": [
                {"model": "openai", "backends": [{"backend": "oa", "model": "gpt-4o"}]},
                {"model": "anthropic", "backends": [{"backend": "an", "model": "claude-sonnet-4-5"}]},
                {"model": "chain", "backends": [{"backend": "an", "model": "claude-sonnet-4-5"},
                                                {"backend": "oa", "model": "gpt-4o"}]},
                {"model": "bedrock", "backends": [{"backend": "br", "model": "us.amazon.nova-pro-v1:0"}]},
                {"model": "embed", "backends": [{"backend": "oa", "model": "text-embedding-3-small"}]},
            ],
            "virtual_keys": [{"id": "large", "hash": hash_key(key)}],
        }
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        stack = start_stack(load_config(config_path), config_path, workdir, supervisor,
                            env={"LARGE_KEY": "sk-large", "AWS_ACCESS_KEY_ID": BEDROCK_KEY,
                                 "AWS_SECRET_ACCESS_KEY": "large-secret"})
        yield Gateway(stack.url, key, ports)
    finally:
        supervisor.stop_all()


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
    assert gateway.last_body_size(demo) >= size


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
    assert gateway.last_body_size(model) >= len(image)


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
    assert gateway.last_body_size("openai") >= 8 * MIB


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
