"""Build ext_proc protocol messages by hand, so the stages can be tested without Envoy."""

from __future__ import annotations

import asyncio

import orjson

from ext_proc.auth.virtual_keys import hash_key
from ext_proc.config.loading import parse_config
from ext_proc.runtime.build import Runtime, compile_runtime
from ext_proc.server import respond
from ext_proc.wire.base_pb2 import HeaderMap, HeaderValue
from ext_proc.wire.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

CLIENT_KEY = "bg-test-client-key"
LIMITED_KEY = "bg-test-limited-key"
EXPIRED_KEY = "bg-test-expired-key"
SERVICE_KEY = "bg-test-service-key"
"""A backend service's key: it names the end user of each request (`asserts_users`)."""

CONFIG = f"""
requests: {{max_body_bytes: 2048}}
backends:
  - {{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1", api_key: {{env: BG_UNIT_OPENAI}}}}
  - {{id: an, schema: anthropic, base_url: "https://api.anthropic.com", api_key: {{env: BG_UNIT_ANTHROPIC}}}}
routes:
  - model: gpt-4o
    aliases: [gpt4]
    backends: [{{backend: oa, model: gpt-4o-2024}}, {{backend: an, model: claude-x}}]
  - model: claude
    backends: [{{backend: an, model: claude-x}}]
  - model: embed
    backends: [{{backend: oa, model: text-embedding-3-small}}]
virtual_keys:
  - {{id: all, hash: "{hash_key(CLIENT_KEY)}"}}
  - {{id: limited, hash: "{hash_key(LIMITED_KEY)}", models: [claude]}}
  - {{id: old, hash: "{hash_key(EXPIRED_KEY)}", expires_at: "2020-01-01T00:00:00Z"}}
  - {{id: service, hash: "{hash_key(SERVICE_KEY)}", asserts_users: true}}
"""


def drive(stage: object, request: ProcessingRequest) -> ProcessingResponse | None:
    """One message through a stage exactly as the server does it (errors become replies)."""
    return asyncio.run(respond(stage, request))  # type: ignore[arg-type]


def runtime(monkeypatch: object, extra: str = "") -> Runtime:
    """The runtime of CONFIG, with `extra` YAML (top-level keys such as `limits:`) appended."""
    monkeypatch.setenv("BG_UNIT_OPENAI", "sk-unit-openai")  # type: ignore[attr-defined]
    monkeypatch.setenv("BG_UNIT_ANTHROPIC", "sk-unit-anthropic")  # type: ignore[attr-defined]
    return compile_runtime(parse_config(CONFIG + extra))


def counted(monkeypatch: object, owner: object, name: str) -> list[tuple[object, ...]]:
    """Every call of `owner.name` from now on (the arguments), the function still doing its work."""
    calls: list[tuple[object, ...]] = []
    original = getattr(owner, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)  # type: ignore[attr-defined]
    return calls


def headers(values: dict[str, str], end_of_stream: bool = False) -> HttpHeaders:
    return HttpHeaders(
        headers=HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]),
        end_of_stream=end_of_stream)


def body(payload: object) -> HttpBody:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return HttpBody(body=raw, end_of_stream=True)


def immediate(reply: ProcessingResponse) -> tuple[int, dict, dict[str, str]]:
    assert reply.WhichOneof("response") == "immediate_response", reply
    response = reply.immediate_response
    extra = {h.header.key: h.header.raw_value.decode() for h in response.headers.set_headers}
    return response.status.code, orjson.loads(response.body), extra


def set_headers(common: object) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}  # type: ignore[attr-defined]
