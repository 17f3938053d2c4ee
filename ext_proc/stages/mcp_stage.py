"""The MCP endpoint (`mcp.path`, `/mcp` by default): one virtual MCP server over every configured upstream, run in
the route stage's stream of the request.

- Answered here, from memory or the session store: `initialize` (a new gateway session), `server/discover` (the
  stateless revision), `ping`, every list method (the merged catalog, the caller's allow-list applied, the gateway's
  own cursors), notifications and client responses (202), `DELETE` (the session ends).
- Forwarded through Envoy to the server's cluster (`x-babelgate-int-mcp` names it): `tools/call`, `prompts/get`,
  `resources/read` and `completion/complete`, with the upstream's name restored, the gateway's credentials for that
  server, the upstream session and revision, and the client's credentials and session removed. The answer streams
  back through `mcp_relay.py`.
- Policy before forwarding: the caller's allow-list (a tool the key may not call reads exactly like an unknown one,
  INVALID_PARAMS "Unknown tool": a distinct refusal would tell the caller it exists; the audit log says which it
  was), call limits (`limits.limiter.call_scopes`), argument size, and guardrails on the arguments.
- No `GET` stream (405, as the transport allows): the gateway pushes nothing unasked; a client sees list changes
  on its next list, which the catalog answers fresh (upstream `list_changed` refreshes it at once).
- Errors: JSON-RPC errors with the request's id; HTTP 200 for a request the gateway refused on policy (the client's
  SDK hands it to the caller), 400 for a body that is not a usable JSON-RPC request, 404 for an unknown session,
  401 for a missing or bad key.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING

import orjson

from .. import constants
from ..auth.virtual_keys import KeyInfo
from ..errors import GatewayError, RateLimited
from ..guardrails.engine import apply as apply_guardrails
from ..json_types import JsonObject
from ..limits.limiter import Demand
from ..limits.store import StoreUnavailable
from ..mcp import jsonrpc
from ..mcp.catalog import Allow
from ..mcp.jsonrpc import Message, RpcError
from ..mcp.protocol import (
    LIST_METHODS,
    META_PROTOCOL_VERSION,
    METHOD_HEADER,
    NAME_HEADER,
    SESSION_HEADER,
    STATELESS_VERSIONS,
    VERSION_HEADER,
    allows_batches,
    negotiate,
    read_envelope,
)
from ..mcp.service import McpService
from ..mcp.sessions import Session
from ..mcp.upstream_client import UpstreamError, UpstreamSession
from ..runtime.build import Runtime
from ..telemetry.outcome import McpFacts, Outcome
from ..wire.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from . import messages
from .attempt import STREAMED_RESPONSE_MODE
from .mcp_forward import SERVER_INFO, fit_meta, rename, target, upstream_headers
from .mcp_relay import SSE_CONTENT_TYPE, CallFacts, Relay, decorate_stateless
from .upstream_request import forwarded_never

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Span

log = logging.getLogger(__name__)
audit = logging.getLogger("babelgate.audit")

FORWARDED_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})
CAPABILITIES: JsonObject = {"tools": {"listChanged": False}, "resources": {"listChanged": False},
                            "prompts": {"listChanged": False}, "completions": {}}
"""`listChanged: false`: the gateway offers no stream of its own to push changes on (no GET stream, no
`subscriptions/listen`); a client sees a change on its next list, which the catalog answers fresh."""
KEPT_ANSWER_HEADERS = frozenset({"content-type", "cache-control", "date", "vary"})
"""What a client sees of an upstream's answer headers: nothing that names the upstream or Envoy's attempts."""
_REMOVED_UPSTREAM = ("authorization", "x-api-key", "cookie", SESSION_HEADER, VERSION_HEADER, METHOD_HEADER,
                     NAME_HEADER, "last-event-id", "content-length")
_ACCEPTED = 202


class McpStage:
    def __init__(self, runtime: Runtime, service: McpService, key: KeyInfo, headers: dict[str, str],
                 outcome: Outcome | None, span: Span | None = None) -> None:
        self._runtime = runtime
        self._service = service
        self._key = key
        self._headers = headers
        self._outcome = outcome
        self._span = span
        self._allow: Allow = service.allow_for(key)
        self._relay: Relay | None = None
        self._facts: CallFacts | None = None
        self._session: Session | None = None
        self._upstream: UpstreamSession | None = None
        self._answered = False
        """This stage answered the request itself (an immediate response)."""
        self._mcp = outcome.mcp if outcome is not None and outcome.mcp is not None else McpFacts()

    # -- phases --------------------------------------------------------------------------------------------------

    async def on_request_headers(self) -> ProcessingResponse:
        method = self._headers.get(":method", "")
        if method == "DELETE":
            return await self._delete()
        if method == "GET":  # the optional server-to-client stream: the gateway offers none (as the spec allows)
            return self._status(405, b"", (("allow", "POST, DELETE"),))
        if method != "POST":
            return self._status(405, b"", (("allow", "POST, DELETE"),))
        return messages.request_headers_reply()

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse | None:
        kind = request.WhichOneof("request")
        if kind == "request_body":
            return await self._on_body(request.request_body.body)
        if kind == "response_headers":
            return await self._on_response_headers(messages.header_dict(request.response_headers))
        if kind == "response_body" and self._relay is not None:
            body = request.response_body
            out = self._relay.chunk(body.body, body.end_of_stream)
            if body.end_of_stream:
                self._finish_relay()
            return messages.response_body_reply(body=out)
        return messages.continue_unchanged(kind)

    def fill(self, outcome: Outcome) -> None:
        """What the route stage reports of this request (`outcome.mcp` was filled as it went)."""
        outcome.endpoint = "mcp"
        if self._mcp.server:
            outcome.route = f"mcp:{self._mcp.server}"

    # -- the request ---------------------------------------------------------------------------------------------

    async def _on_body(self, raw: bytes) -> ProcessingResponse:
        self._mcp.bytes_in = len(raw)
        session_id = self._headers.get(SESSION_HEADER)
        if session_id is not None:
            self._mcp.session_id = _session_label(session_id)
        try:
            if session_id is not None:
                self._session = await self._service.sessions.get(session_id, self._key.id)
        except StoreUnavailable:
            return self._error(None, jsonrpc.INTERNAL_ERROR, "The session store is unavailable; try again.", 503)
        if session_id is not None and self._session is None:
            return self._error(None, jsonrpc.SESSION_UNKNOWN, "Unknown or expired session: initialize again.", 404)
        version = self._session.version if self._session is not None else ""
        try:
            parsed = jsonrpc.parse_body(raw, allow_batch=allows_batches(version),
                                        max_bytes=self._runtime.max_body_bytes)
        except RpcError as error:
            return self._error(error.id, error.code, error.message, 400, error.data)
        requests = [item for item in parsed.items if isinstance(item, Message) and item.kind == "request"]
        errors = [item for item in parsed.items if isinstance(item, RpcError)]
        if not requests and not errors:
            self._record(method="notification", status=_ACCEPTED)
            return self._status(_ACCEPTED, b"", ())
        if parsed.batch:
            return await self._batch(requests, errors)
        if errors:
            return self._error(errors[0].id, errors[0].code, errors[0].message, 400, errors[0].data)
        message = requests[0]
        try:
            return await self._request(message)
        except RpcError as error:
            return self._error(message.id, error.code, error.message, 200, error.data)

    async def _batch(self, requests: list[Message], errors: list[RpcError]) -> ProcessingResponse:
        """2025-03-26 batches: answered here, member by member; a call must come alone (it streams)."""
        answers = [orjson.loads(error.with_id(error.id).encode()) for error in errors]
        for message in requests:
            try:
                if message.method in FORWARDED_METHODS:
                    raise RpcError(jsonrpc.INVALID_REQUEST, f"send {message.method} on its own, not in a batch")
                answers.append({"jsonrpc": "2.0", "id": message.id, "result": await self._local(message)})
            except RpcError as error:
                answers.append(orjson.loads(error.with_id(message.id).encode()))
        self._record(method="batch", status=200)
        return self._status(200, orjson.dumps(answers))

    async def _request(self, message: Message) -> ProcessingResponse:
        assert message.method is not None
        self._record(method=message.method, status=200)
        if message.method == "initialize":
            return await self._initialize(message)
        if self._session is None and message.method != "server/discover":
            if not self._stateless(message):
                return self._error(message.id, jsonrpc.INVALID_REQUEST, "Bad Request: no valid session id; send "
                                   f"initialize first, then its {SESSION_HEADER} header.", 400)
            read_envelope(message.method, message.params, self._headers)
        if message.method in FORWARDED_METHODS:
            return await self._forward(message)
        return self._answer(message.id, await self._local(message))

    def _stateless(self, message: Message) -> bool:
        meta = (message.params or {}).get("_meta")
        return (isinstance(meta, dict) and META_PROTOCOL_VERSION in meta) or (
            self._headers.get(VERSION_HEADER) in STATELESS_VERSIONS)

    async def _initialize(self, message: Message) -> ProcessingResponse:
        params = message.params or {}
        version = negotiate(params.get("protocolVersion"))
        offered, told = params.get("capabilities"), params.get("clientInfo")
        capabilities: JsonObject = offered if isinstance(offered, dict) else {}
        info: JsonObject | None = told if isinstance(told, dict) else None
        try:
            session = await self._service.sessions.create(self._key.id, version, capabilities, info)
        except StoreUnavailable:
            return self._error(message.id, jsonrpc.INTERNAL_ERROR, "The session store is unavailable; try again.",
                               503)
        result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO,
                  "instructions": self._instructions()}
        return self._status(200, jsonrpc.result(message.id, result), (
            ("content-type", messages.JSON_CONTENT_TYPE), (SESSION_HEADER, session.id)))

    def _instructions(self) -> str:
        names = ", ".join(f"{s.name_prefix}{self._service.settings.separator}*" for s in self._service.settings.servers
                          if self._allow.server(s.name))
        return f"Babelgate: tools and prompts of several MCP servers, named {names}."

    async def _local(self, message: Message) -> JsonObject:
        """The result of a method the gateway answers itself."""
        method, params = message.method, message.params or {}
        stateless = self._session is None
        if method == "ping":
            result: JsonObject = {}
        elif method == "server/discover":
            result = {"supportedVersions": list(STATELESS_VERSIONS), "capabilities": CAPABILITIES,
                      "serverInfo": SERVER_INFO, "instructions": self._instructions()}
            stateless = True
        elif method in LIST_METHODS:
            catalog = await self._service.fresh_catalog()
            result = catalog.page(method, self._allow, params.get("cursor"))
        else:
            raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}")
        return decorate_stateless(method or "", result, self._ttl_ms()) if stateless else result

    def _ttl_ms(self) -> int:
        return int(min(self._service.settings.list_ttl, 60.0) * 1000)

    async def _delete(self) -> ProcessingResponse:
        session_id = self._headers.get(SESSION_HEADER)
        if session_id is None:
            return self._error(None, jsonrpc.INVALID_REQUEST, f"DELETE needs the {SESSION_HEADER} header.", 400)
        try:
            session = await self._service.sessions.delete(session_id, self._key.id)
        except StoreUnavailable:
            return self._error(None, jsonrpc.INTERNAL_ERROR, "The session store is unavailable; try again.", 503)
        if session is None:
            return self._error(None, jsonrpc.SESSION_UNKNOWN, "Unknown or expired session.", 404)
        self._service.end(session)
        self._record(method="session/delete", status=200)
        return self._status(200, b"", ())

    # -- forwarding ----------------------------------------------------------------------------------------------

    async def _forward(self, message: Message) -> ProcessingResponse:
        method = message.method or ""
        params = dict(message.params or {})
        catalog = await self._service.fresh_catalog()
        server, upstream_name = target(method, params, catalog, self._allow, self._refused)
        self._mcp.server, self._mcp.target = server, str(params.get("name", params.get("uri", "")))[:256]
        if method == "tools/call":
            await self._check_call(params)
        try:
            upstream = await self._service.upstream_session(server, self._session)
        except (UpstreamError, StoreUnavailable) as exc:
            self._service.failed(server, str(exc))
            return self._error(message.id, jsonrpc.UPSTREAM_UNAVAILABLE,
                               f"The MCP server {server!r} is unavailable: {exc}", 200)
        self._upstream = upstream
        self._mcp.protocol_version = upstream.version
        if self._outcome is not None and self._service.settings.log_content:
            self._outcome.prompt = orjson.dumps(params.get("arguments", params)).decode()
        rename(method, params, upstream_name)
        fit_meta(params, upstream.version)
        body = orjson.dumps({"jsonrpc": "2.0", "id": message.id, "method": method, "params": params})
        self._facts = CallFacts(message.id, method, server, self._session is None, self._service.guardrails,
                                f"mcp:{server}", self._key.id, self._ttl_ms())
        headers = upstream_headers(server, self._service.servers[server].url, self._service.credentials.get(server, {}),
                                   upstream, method, params, len(body))
        replaced = {name for name, _ in headers}
        # X-Forwarded-* go with the MCP route's `request_headers_to_remove`: Envoy matches routes on them
        remove = [name for name in self._headers if name not in replaced and (
            name in _REMOVED_UPSTREAM or forwarded_never(name)) and not name.startswith((":", "x-forwarded-"))]
        metadata = {constants.METADATA_ROUTE_KEY: f"mcp:{server}", constants.METADATA_ENDPOINT_KEY: "mcp",
                    constants.METADATA_KEY_ID_KEY: self._key.id}
        return messages.request_body_reply(set_headers=headers, remove=remove, body=body, clear_route_cache=True,
                                           metadata=metadata)

    def _refused(self, method: str, name: str) -> None:
        audit.warning("mcp refused: key=%s team=%s method=%s name=%r reason=%s", self._key.id, self._key.team,
                      method, name[:200], "not in the catalog or not allowed for this key")

    async def _check_call(self, params: JsonObject) -> None:
        """Limits, argument size and guardrails of a tool call."""
        settings = self._service.settings
        arguments = params.get("arguments", {})
        if arguments is not None and not isinstance(arguments, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS, "params.arguments must be an object")
        size = len(orjson.dumps(arguments))
        if size > settings.max_argument_bytes:
            limit = settings.max_argument_bytes
            raise RpcError(jsonrpc.TOO_LARGE, f"The tool arguments are {size} bytes; this gateway accepts at most "
                                              f"{limit}.", {"max_bytes": limit})
        limiter = self._runtime.limiter
        tool = str(params.get("name"))
        if limiter is not None:
            scopes = limiter.call_scopes(self._key.id, self._key.team, tool)
            if scopes:
                try:
                    await limiter.reserve(scopes, _ONE_CALL, "")
                except RateLimited as refusal:
                    audit.warning("mcp refused: key=%s tool=%s reason=rate limited", self._key.id, tool)
                    if self._outcome is not None:
                        self._outcome.rate_limited_scope = refusal.scope or "unknown"
                    retry = next((value for name, value in refusal.headers if name == "retry-after"), None)
                    raise RpcError(jsonrpc.RATE_LIMITED, refusal.message,
                                   {"retry_after": int(retry)} if retry else None) from None
                except GatewayError as unavailable:
                    raise RpcError(jsonrpc.INTERNAL_ERROR, unavailable.message) from None
        guardrails = self._service.guardrails
        if guardrails and arguments:
            try:
                apply_guardrails(guardrails, params, phase="request", route=f"mcp:{tool}", key_id=self._key.id)
            except GatewayError as blocked:
                audit.warning("mcp refused: key=%s tool=%s reason=guardrail", self._key.id, tool)
                raise RpcError(jsonrpc.BLOCKED, blocked.message) from None

    # -- the answer ----------------------------------------------------------------------------------------------

    async def _on_response_headers(self, headers: dict[str, str]) -> ProcessingResponse:
        facts = self._facts
        status = headers.get(":status", "")
        if facts is None:  # answered by this stage (nothing to relay), or refused by Envoy itself (413 ...)
            if status.startswith(("4", "5")) and not self._answered:
                text = ("The request body is larger than this gateway accepts." if status == "413"
                        else f"The gateway refused the request (HTTP {status}).")
                return self._error(None, messages.MCP_CODES.get(int(status), jsonrpc.INTERNAL_ERROR), text,
                                   int(status))
            return messages.response_headers_reply()
        if not status.startswith("2"):
            if status == "404" and self._upstream is not None and self._upstream.session_id:
                await self._service.forget(facts.server, self._session)
                return self._error(facts.request_id, jsonrpc.UPSTREAM_UNAVAILABLE, f"The MCP server "
                                   f"{facts.server!r} ended its session; retry the call.", 200)
            timeout = status == "504"
            text = ("did not answer in time" if timeout else f"answered HTTP {status}")
            if status.startswith("5") and not timeout:
                self._service.failed(facts.server, f"a call through Envoy was answered HTTP {status}")
            code = jsonrpc.UPSTREAM_TIMEOUT if timeout else jsonrpc.UPSTREAM_UNAVAILABLE
            return self._error(facts.request_id, code, f"The MCP server {facts.server!r} {text}.", 200)
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in (SSE_CONTENT_TYPE, messages.JSON_CONTENT_TYPE):
            return self._error(facts.request_id, jsonrpc.UPSTREAM_UNAVAILABLE,
                               f"The MCP server {facts.server!r} answered {kind or 'no content type'}.", 200)
        self._relay = Relay(facts, self._service.settings.max_result_bytes, self._service.notified,
                            streaming=kind == SSE_CONTENT_TYPE, keep_result=self._service.settings.log_content)
        hidden = [name for name in headers if not name.startswith(":") and name not in KEPT_ANSWER_HEADERS]
        return messages.response_headers_reply(remove=hidden, mode=STREAMED_RESPONSE_MODE)

    def _finish_relay(self) -> None:
        relay = self._relay
        outcome = self._outcome
        if relay is None or outcome is None:
            return
        self._mcp.bytes_out = relay.bytes_out
        outcome.ended = time.monotonic()
        if relay.error is not None:
            outcome.error_type = relay.error
        if relay.result_text is not None:
            outcome.completion = relay.result_text

    # -- replies -------------------------------------------------------------------------------------------------

    def _record(self, *, method: str, status: int) -> None:
        self._mcp.method = method
        if self._outcome is not None:
            self._outcome.status = status

    def _answer(self, message_id: str | int | None, result: JsonObject) -> ProcessingResponse:
        return self._status(200, jsonrpc.result(message_id, result))

    def _error(self, message_id: str | int | None, code: int, text: str, status: int,
               data: JsonObject | None = None) -> ProcessingResponse:
        if self._outcome is not None:
            self._outcome.error_type = str(code)
            self._outcome.status = status
        return self._status(status, jsonrpc.error(message_id, code, text, data))

    def _status(self, status: int, body: bytes,
                headers: tuple[tuple[str, str], ...] = (("content-type", messages.JSON_CONTENT_TYPE),)
                ) -> ProcessingResponse:
        self._mcp.bytes_out = len(body)
        self._answered = True
        if self._outcome is not None:
            self._outcome.status = status
            self._outcome.ended = time.monotonic()
        return messages.immediate(status, body, headers, details="babelgate_mcp")


_ONE_CALL = Demand(0, 0, 0)
"""What a tool call asks of the limiter: its rules count `calls`, one per call."""


def _session_label(session_id: str) -> str:
    """What logs and spans say of a session: a digest (the id is a bearer of the session, with its owner's key)."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]
