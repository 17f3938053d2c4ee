"""End-to-end fixtures: real Envoy + ext_proc servers + demo providers on free loopback ports.

One gateway serves the whole session; tests steer the demo providers per request with the `x-demo-fault` header,
so failures stay local to the test that asks for them. Everything started here is stopped at the end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import openai
import pytest

from .gateways import Gateway, GatewayBuilder

TLS_HOSTNAME = "api.demo.test"


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # The tests sharing this gateway inject failures back to back: cooldowns and ejections would carry one test's
    # failures into the next. They are tested on gateways of their own (test_routing_e2e.py).
    defaults = {"timeout": "20s", "outlier_detection": None}
    with GatewayBuilder(tmp_path_factory.mktemp("gateway"), backend_defaults=defaults) as build:
        openai_a, openai_b = build.demo("openai-a"), build.demo("openai-b")
        anthropic_a = build.demo("anthropic-a", "anthropic")
        build.backend("oa", openai_a)
        build.backend("ob", openai_b)
        build.backend("an", anthropic_a)
        build.backend("oa-quick", openai_a, timeout="1s")
        build.backend("killable", build.demo("killable"))
        build.backend("dead", build.unreachable("dead"))
        build.backend("secure", build.demo("tls", name="openai-tls", tls_hostname=TLS_HOSTNAME))
        build.route("gpt-4o-mini", ("oa", "gpt-4o-mini"), ("an", "claude-haiku-4-5"), aliases=["mini"])
        build.route("claude-sonnet-4-5", ("an", "claude-sonnet-4-5"), ("oa", "gpt-4o"))
        build.route("openai-pair", ("oa", "gpt-4.1"), ("ob", "gpt-4.1"))
        build.route("quick-then-anthropic", ("oa-quick", "gpt-4o-mini"), ("an", "claude-haiku-4-5"))
        build.route("anthropic-solo", ("an", "claude-opus-4-1"))
        build.route("killable-then-anthropic", ("killable", "gpt-4o-mini"), ("an", "claude-haiku-4-5"))
        build.route("dead-then-openai", ("dead", "gpt-4o-mini"), ("ob", "gpt-4o-mini"))
        build.route("secure-model", ("secure", "gpt-4o-mini"))
        build.route("embed-small", ("oa", "text-embedding-3-small"))
        build.key("test-all")
        build.key("test-limited", models=["gpt-4o-mini"])
        build.key("test-expired", expires_at="2020-01-01T00:00:00Z")
        build.set(requests={"max_body_bytes": 256 * 1024}, routing={"cooldown_max": "1ms"})
        yield build.start()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return gateway.client()


@pytest.fixture(autouse=True, scope="session")
def _resolve_test_hostname() -> Iterator[None]:
    """Make TLS_HOSTNAME resolve to loopback inside the test process (Envoy uses `connect_to` instead)."""
    original = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        return original("127.0.0.1" if host == TLS_HOSTNAME else host, *args, **kwargs)  # type: ignore[arg-type]

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    yield
    socket.getaddrinfo = original  # type: ignore[assignment]
