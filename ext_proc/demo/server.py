"""A running demo provider: the HTTP server, fault injection, request recording, and the provider's answers.

Each request is recorded, then the faults aimed at this provider (server-wide spec plus the request's `x-demo-fault`
header) are applied, then the provider module answers. `GET /_demo/requests` lists what was received (newest last) and
`DELETE /_demo/requests` forgets it; neither is recorded nor subject to faults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import orjson

from ext_proc.demo import (
    anthropic_server,
    azure_server,
    bedrock_server,
    cohere_server,
    gemini_server,
    mcp_tools,
    openai_server,
)
from ext_proc.demo.answers import NOT_JSON, Call, Reply
from ext_proc.demo.faults import FAULT_HEADER, NO_FAULTS, Faults, FaultSpecError, parse_faults
from ext_proc.transport.http1 import HttpServer, Request, Response, start_http_server

ACCOUNT_HEADERS = {
    "openai": (("x-request-id", "req_demo0001"), ("openai-organization", "demo-org-acme"),
               ("openai-processing-ms", "12"), ("openai-version", "2020-10-01"),
               ("x-ratelimit-limit-requests", "10000"), ("x-ratelimit-remaining-requests", "9999"),
               ("x-ratelimit-reset-requests", "6ms"), ("set-cookie", "__cf_bm=demo-cookie; path=/; HttpOnly"),
               ("cf-ray", "8f0000demo-IAD"), ("server", "cloudflare")),
    "anthropic": (("request-id", "req_demo0002"), ("anthropic-organization-id", "demo-org-acme"),
                  ("anthropic-ratelimit-requests-limit", "4000"), ("anthropic-ratelimit-requests-remaining", "3999"),
                  ("set-cookie", "_cfuvid=demo-cookie; path=/; HttpOnly"), ("cf-ray", "8f0001demo-SJC")),
}
"""What the real services send about the account and their infrastructure with every answer (a gateway must not
pass it on to its own clients)."""
PROVIDER_HEADER = "x-demo-provider"
SNI_HEADER = "x-demo-sni"
REQUESTS_PATH = "/_demo/requests"
MAX_RECORDED_REQUESTS = 200


class _Api(NamedTuple):
    answer: Callable[[Call], Reply]
    error: Callable[[int, str], Reply]


# Each provider module exposes `KIND` (or `KINDS`), `answer(call) -> Reply` and `error(status, message) -> Reply`.
_APIS = {
    kind: _Api(module.answer, module.error)
    for module in (openai_server, anthropic_server, bedrock_server, gemini_server, azure_server, cohere_server,
                   mcp_tools)
    for kind in (getattr(module, "KINDS", None) or (module.KIND,))
}
KINDS = tuple(_APIS)


class DemoProvider:
    """One fake provider listening on `host:port`; `requests` holds the most recent requests it received."""

    def __init__(self, kind: str, name: str, api_key: str | None, faults: Faults, tls: bool) -> None:
        self.kind = kind
        self.name = name
        self.tls = tls
        self.requests: deque[dict[str, object]] = deque(maxlen=MAX_RECORDED_REQUESTS)
        self._api = _APIS[kind]
        self._mcp = mcp_tools.McpDemo(name, api_key) if kind == mcp_tools.KIND else None
        """The MCP demo answers `/mcp` itself: its answers stream and its sessions outlive a request."""
        self._api_key = api_key
        self._faults = faults
        self._server: HttpServer | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._server = await start_http_server(self.handle, host, port, ssl_context=ssl_context)
        self.host = host
        self.port = self._server.port

    @property
    def url(self) -> str:
        """The base URL, e.g. `http://127.0.0.1:40123` (OpenAI clients append `/v1`)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def handle(self, request: Request, response: Response) -> None:
        if request.path == REQUESTS_PATH:
            await self._control(request, response)
            return
        body = _parse_json(request.body)
        self.requests.append(_record(request, body))
        headers = [(PROVIDER_HEADER, self.name)]
        if self.tls:
            headers.append((SNI_HEADER, request.sni or ""))
        try:
            faults = parse_faults(request.headers.get(FAULT_HEADER), self.name, self._faults)
        except FaultSpecError as exc:
            await _send(response, self._api.error(400, str(exc)), headers)
            return
        if faults.stall_ms:
            await asyncio.sleep(faults.stall_ms / 1000)
        if faults.reset:
            response.abort()
            return
        if faults.status is not None:
            reply = self._api.error(faults.status, f"demo fault: {self.name} answers {faults.status}")
            if faults.retry_after is not None:
                kept = tuple((name, value) for name, value in reply.headers if name != "retry-after")
                reply = dataclasses.replace(reply, headers=(*kept, ("retry-after", str(faults.retry_after))))
        elif self._mcp is not None and request.path == mcp_tools.MCP_PATH:
            await self._mcp.handle(request, response, headers)
            return
        else:
            call = Call(self.name, request.method, request.path, request.headers, body, self._api_key,
                        request.target.partition("?")[2], faults.verbose, faults.off_schema)
            reply = self._api.answer(call)
            if 200 <= reply.status < 300:
                headers.extend(ACCOUNT_HEADERS.get(self.kind, ()))
        await _send(response, reply, headers, faults)

    async def _control(self, request: Request, response: Response) -> None:
        headers = [("content-type", "application/json"), (PROVIDER_HEADER, self.name)]
        if request.method == "GET":
            await response.send(200, headers, orjson.dumps(list(self.requests)))
        elif request.method == "DELETE":
            self.requests.clear()
            await response.send(200, headers, b'{"cleared":true}')
        else:
            await response.send(405, [*headers, ("allow", "GET, DELETE")], b'{"error":"use GET or DELETE"}')


async def start_demo_provider(
    kind: str,
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    faults: str | None = None,
) -> DemoProvider:
    """Start a fake `kind` (one of `KINDS`, e.g. "openai", "mcp") provider called `name`; port 0 picks a free port.

    `faults` applies to every request (see `faults.py`); an invalid spec raises ValueError here rather than per request.
    With `ssl_context` the server speaks TLS and its `sni_callback` is wrapped to report the SNI in `x-demo-sni`.
    """
    if kind not in _APIS:
        raise ValueError(f"unknown demo provider kind {kind!r}; expected one of {KINDS}")
    provider = DemoProvider(kind, name, api_key, parse_faults(faults, name), ssl_context is not None)
    await provider.start(host, port, ssl_context)
    return provider


async def _send(response: Response, reply: Reply, headers: list[tuple[str, str]], faults: Faults = NO_FAULTS) -> None:
    """Write `reply`; a stream honours `midstream` (drop the connection after N events) and `slow` (pause between)."""
    own_type = any(name == "content-type" for name, _ in reply.headers)
    if reply.events is None:
        default = () if own_type else (("content-type", "application/json"),)
        await response.send(reply.status, [*default, *reply.headers, *headers], reply.body)
        return
    # SSE unless the provider names its own stream type (Bedrock's binary event-stream)
    default = () if own_type else (("content-type", "text/event-stream"),)
    await response.start(reply.status, [*default, ("cache-control", "no-cache"), *reply.headers, *headers])
    for index, event in enumerate(reply.events):
        if index == faults.midstream:
            break
        if index and faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        await response.write(event)
    if faults.midstream is not None:
        response.abort()
        return
    await response.end()


def _parse_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return NOT_JSON


def _record(request: Request, body: object) -> dict[str, object]:
    recorded = body if body is not NOT_JSON else request.body.decode("utf-8", "replace") or None
    return {"method": request.method, "path": request.target, "headers": request.headers, "body": recorded,
            "sni": request.sni}
