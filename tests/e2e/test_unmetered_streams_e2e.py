"""A stream nothing reads (no limits, telemetry, access log, guardrail, schema or cache) from a backend whose chunks
already are the client's: Envoy relays the chunks without one passing through ext_proc, and the backend is asked for
exactly what the client asked for. Counted with Envoy's own ext_proc stats, beside the same route metered."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import openai
import pytest

from .gateways import Gateway, GatewayBuilder

HELLO = [{"role": "user", "content": "stream to me"}]
HEADERS_ONLY_MESSAGES = 3
"""The route stage's request headers, request body and response headers: no chunk."""


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    started: dict[str, Gateway] = {}
    builders: list[GatewayBuilder] = []
    try:
        for name in ("unmetered", "metered"):
            build = GatewayBuilder(tmp_path_factory.mktemp(name)).__enter__()
            builders.append(build)
            provider = build.demo("openai-a")
            build.backend("oa", provider)
            build.backend("oa-watched", provider, stream_idle_timeout="30s")
            build.route("mini", ("oa", "gpt-4o-mini"))
            build.route("watched", ("oa-watched", "gpt-4o-mini"))
            build.key("k")
            if name == "metered":
                build.config["limits"] = {"per_key": [{"window": "hour", "total_tokens": 10**9}]}
            started[name] = build.start()
        yield started
    finally:
        for build in reversed(builders):
            build.__exit__(None, None, None)


def _ext_proc_messages(gateway: Gateway) -> int:
    """Messages Envoy has sent to ext_proc so far, every filter and worker summed."""
    assert gateway.stack is not None
    port = gateway.stack.config.listener.admin_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats?filter=ext_proc", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return sum(int(line.rpartition(": ")[2]) for line in lines if line.split(": ")[0].endswith(".stream_msgs_sent"))


def _stream(gateway: Gateway, model: str = "mini", **options: object) -> tuple[list, int, dict[str, str]]:
    """The chunks, the ext_proc messages the stream cost, and the response headers."""
    before = _ext_proc_messages(gateway)
    with gateway.client().chat.completions.with_streaming_response.create(
            model=model, stream=True, messages=HELLO, **options) as response:
        chunks = list(response.parse())
        headers = dict(response.headers)
    return chunks, _ext_proc_messages(gateway) - before, headers


def _text(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_an_unmetered_stream_never_passes_through_ext_proc(gateways: dict[str, Gateway]) -> None:
    gateway = gateways["unmetered"]
    chunks, messages, headers = _stream(gateway)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert "openai-a" in _text(chunks)
    assert messages == HEADERS_ONLY_MESSAGES
    assert headers["x-babelgate-backend"] == "oa" and headers["content-type"].startswith("text/event-stream")
    assert all(c.usage is None for c in chunks)
    # the backend was asked for what the client asked for: no usage the client would then be sent
    assert "stream_options" not in gateway.last_request("openai-a")["body"]


def test_an_unmetered_stream_with_usage_asked_gets_the_backends_usage(gateways: dict[str, Gateway]) -> None:
    gateway = gateways["unmetered"]
    chunks, messages, _ = _stream(gateway, stream_options={"include_usage": True})
    assert messages == HEADERS_ONLY_MESSAGES
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert gateway.last_request("openai-a")["body"]["stream_options"] == {"include_usage": True}


def test_the_same_stream_metered_is_read_chunk_by_chunk(gateways: dict[str, Gateway]) -> None:
    """With limits to settle, the gateway asks the backend for usage and keeps it from a client that did not ask."""
    unmetered, _, _ = _stream(gateways["unmetered"])
    gateway = gateways["metered"]
    chunks, messages, _ = _stream(gateway)
    assert _text(chunks) == _text(unmetered)
    assert messages > HEADERS_ONLY_MESSAGES  # the body went through ext_proc
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert gateway.last_request("openai-a")["body"]["stream_options"] == {"include_usage": True}


def test_a_backend_with_a_stream_idle_timeout_keeps_its_chunks_watched(gateways: dict[str, Gateway]) -> None:
    gateway = gateways["unmetered"]
    chunks, messages, _ = _stream(gateway, model="watched")
    assert "openai-a" in _text(chunks)
    assert messages > HEADERS_ONLY_MESSAGES  # the body went through ext_proc
    assert all(c.usage is None for c in chunks)


def test_an_unmetered_non_streamed_answer_also_skips_ext_proc(gateways: dict[str, Gateway]) -> None:
    gateway = gateways["unmetered"]
    before = _ext_proc_messages(gateway)
    completion = gateway.client().chat.completions.create(model="mini", messages=HELLO)
    assert "openai-a" in (completion.choices[0].message.content or "")
    assert _ext_proc_messages(gateway) - before == HEADERS_ONLY_MESSAGES
    assert isinstance(completion, openai.types.chat.ChatCompletion)
