"""An upstream MCP server's answer to a forwarded call, relayed to the client as it arrives (route stage, response
body STREAMED): progress notifications pass at once; the response is checked (size, guardrails) and fitted to the
client's protocol revision before it passes; `list_changed` notifications mark the catalog stale.

Decisions worth knowing before changing this file:
- A JSON answer is held until its end (it is one message: nothing to pass early), then sent as one chunk. An SSE
  answer is re-framed event by event (`event: message`, `data:`); upstream event ids are dropped, since the client
  can't resume a gateway stream with them.
- The whole answer is bounded by `mcp.max_result_bytes`: past it, the client gets one JSON-RPC error for its
  request and the rest of the upstream's answer is dropped.
- Server-to-client requests (sampling, elicitation) are dropped: the gateway offers upstreams no client
  capabilities, so a conforming server sends none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from ..errors import GatewayError
from ..guardrails.engine import Guardrail
from ..guardrails.engine import apply as apply_guardrails
from ..json_types import JsonObject
from ..mcp import jsonrpc
from ..mcp.protocol import LIST_CHANGED
from ..streaming.sse import SSEDecoder, SSEError

SSE_CONTENT_TYPE = "text/event-stream"


@dataclass
class CallFacts:
    """What the relay needs of the request it answers."""

    request_id: str | int | None
    method: str
    server: str
    stateless_client: bool
    guardrails: tuple[Guardrail, ...] = ()
    route: str = ""
    key_id: str = ""
    ttl_ms: int = 0


@dataclass
class Relay:
    facts: CallFacts
    max_bytes: int
    on_list_changed: Callable[[str, str], None]
    streaming: bool
    """An SSE answer (else JSON)."""
    keep_result: bool = False
    """Keep the result's JSON for the request log (`mcp.log_content`)."""
    bytes_in: int = 0
    bytes_out: int = 0
    error: str | None = None
    """Set when the answer carried (or became) a JSON-RPC error: its code, for the log."""
    redacted: bool = False
    result_text: str | None = None
    _held: list[bytes] = field(default_factory=list)
    _decoder: SSEDecoder | None = None
    _done: bool = False

    def __post_init__(self) -> None:
        if self.streaming:
            self._decoder = SSEDecoder(self.max_bytes)

    def chunk(self, data: bytes, end: bool) -> bytes:
        """The bytes to send the client for one upstream chunk."""
        if self._done:
            return b""
        self.bytes_in += len(data)
        if self.bytes_in > self.max_bytes:
            self._done = True
            return self._out(self._failure(jsonrpc.TOO_LARGE, f"The server's answer is larger than this gateway's "
                                                              f"limit of {self.max_bytes} bytes."))
        out = self._sse(data, end) if self._decoder is not None else self._json(data, end)
        return self._out(out)

    def _out(self, data: bytes) -> bytes:
        self.bytes_out += len(data)
        return data

    def _json(self, data: bytes, end: bool) -> bytes:
        self._held.append(data)
        if not end:
            return b""
        raw = b"".join(self._held)
        self._held.clear()
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._failure(jsonrpc.UPSTREAM_UNAVAILABLE, "The server's answer is not JSON.")
        return self._message(message) or b""

    def _sse(self, data: bytes, end: bool) -> bytes:
        assert self._decoder is not None
        try:
            events = self._decoder.feed(data) + (self._decoder.finish() if end else [])
        except SSEError as exc:
            self._done = True
            return self._failure(jsonrpc.UPSTREAM_UNAVAILABLE, f"The server's event stream is malformed: {exc}")
        parts: list[bytes] = []
        for event in events:
            if not event.data.strip():
                continue
            try:
                message = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            encoded = self._message(message)
            if encoded is not None:
                parts.append(b"event: message\ndata: " + encoded + b"\n\n")
        return b"".join(parts)

    def _message(self, message: object) -> bytes | None:
        """One upstream message as the client gets it (None: not for the client)."""
        if not isinstance(message, dict):
            return None
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:
                return None  # a server-to-client request: see the module docstring
            if method in LIST_CHANGED:
                self.on_list_changed(self.facts.server, method)
            return orjson.dumps(message)
        if message.get("id") != self.facts.request_id:
            return None
        self._done = self._decoder is not None
        error = message.get("error")
        if isinstance(error, dict):
            self.error = str(error.get("code"))
            return orjson.dumps(message)
        result = message.get("result")
        if not isinstance(result, dict):
            return self._encoded_failure(jsonrpc.UPSTREAM_UNAVAILABLE, "The server's response has no result.")
        try:
            self.redacted = apply_guardrails(self.facts.guardrails, result, phase="response", route=self.facts.route,
                                             key_id=self.facts.key_id)
        except GatewayError as blocked:
            return self._encoded_failure(jsonrpc.BLOCKED, blocked.message)
        if result.get("isError") is True:
            self.error = "tool_error"
        if self.facts.stateless_client:
            decorate_stateless(self.facts.method, result, self.facts.ttl_ms)
        if self.keep_result:
            self.result_text = orjson.dumps(result).decode()
        return orjson.dumps({"jsonrpc": "2.0", "id": self.facts.request_id, "result": result})

    def _encoded_failure(self, code: int, message: str) -> bytes:
        self.error = str(code)
        return jsonrpc.error(self.facts.request_id, code, message)

    def _failure(self, code: int, message: str) -> bytes:
        encoded = self._encoded_failure(code, message)
        return b"event: message\ndata: " + encoded + b"\n\n" if self._decoder is not None else encoded


_CACHEABLE = frozenset({"resources/read", "tools/list", "prompts/list", "resources/list", "resources/templates/list"})


def decorate_stateless(method: str, result: JsonObject, ttl_ms: int) -> JsonObject:
    """What the stateless revision requires of a result that an older upstream (or the gateway) left out."""
    result.setdefault("resultType", "complete")
    if method in _CACHEABLE or method == "server/discover":
        result.setdefault("cacheScope", "private")
        result.setdefault("ttlMs", ttl_ms)
    return result
