"""JSON-RPC 2.0 as MCP uses it: one client message body parsed and checked, answers and errors built as bytes.

Decisions worth knowing before changing this file:
- Plain dicts and orjson, no pydantic: this runs per request. `parse_body` checks the envelope only (`jsonrpc`,
  `id`, `method`, `params` shapes); what a method's params must hold is the route stage's business.
- Ids are strings or integers (MCP forbids null; JSON-RPC's fractional numbers and booleans are refused), bounded:
  a string id is at most `MAX_ID_CHARS`, an integer fits JavaScript's safe range, so an id echoes back intact through
  any client.
- Batches exist only in protocol revision 2025-03-26 (added there, removed in 2025-06-18; 2026-07-28 is one message
  per POST). `parse_body(allow_batch=...)` says whether the negotiated revision allows them; a batch otherwise is an
  Invalid Request that says so. An empty batch is an Invalid Request (JSON-RPC 2.0, section 6).
- Error codes: the standard ones, MCP's own (-32020..-32022, from `mcp_types.jsonrpc`), and the gateway's policy
  range -32080..-32089. The range is away from the codes MCP SDKs already use in -32000..-32099 (-32000 connection
  closed, -32001 request timeout, -32002 resource not found, -32042 URL elicitation), so a client never reads a
  refusal as one of those. `data` always says what the gateway objected to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from ..json_types import JsonObject

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
RESOURCE_NOT_FOUND = -32002
"""MCP's own: `resources/read` of a URI no server has."""

UNAUTHORIZED = -32080
"""No key, or a key (or token) the gateway does not accept (HTTP 401)."""
FORBIDDEN = -32081
"""The caller's key (or team) may not use this server, tool, prompt or resource."""
RATE_LIMITED = -32082
"""A per-key or per-tool call limit is spent; `data.retry_after` says when to try again (seconds)."""
TOO_LARGE = -32083
"""Arguments or an upstream result past the configured size."""
UPSTREAM_UNAVAILABLE = -32084
"""The upstream server could not be reached or answered something that is not MCP."""
UPSTREAM_TIMEOUT = -32085
"""The upstream server did not answer in time."""
SESSION_UNKNOWN = -32086
"""`Mcp-Session-Id` names no session of this caller (expired, deleted, or another key's)."""
BLOCKED = -32087
"""A guardrail blocked the arguments or the result."""

MAX_ID_CHARS = 256
MAX_SAFE_INTEGER = 2**53 - 1
MAX_BATCH = 64
MAX_METHOD_CHARS = 256

Kind = Literal["request", "notification", "response"]


class RpcError(Exception):
    """A JSON-RPC error for the message `id` (None when it could not be read)."""

    def __init__(self, code: int, message: str, data: JsonObject | None = None, id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.id = id

    def with_id(self, id: str | int | None) -> RpcError:
        return RpcError(self.code, self.message, self.data, id)

    def body(self) -> JsonObject:
        error: JsonObject = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return {"jsonrpc": "2.0", "id": self.id, "error": error}

    def encode(self) -> bytes:
        return orjson.dumps(self.body())


@dataclass(frozen=True, slots=True)
class Message:
    """One checked message. `payload` is the whole object as sent (a response's `result` or `error` are in it)."""

    kind: Kind
    id: str | int | None
    method: str | None
    params: JsonObject | None
    payload: JsonObject


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one POST body held: its messages (or an error in a message's place) and whether it was a batch."""

    items: tuple[Message | RpcError, ...]
    batch: bool


def parse_body(body: bytes, *, allow_batch: bool, max_bytes: int) -> Parsed:
    """Check a client's POST body. Raises `RpcError` when the body as a whole is unusable (too big, not JSON, a batch
    where none is allowed); a bad member of a batch becomes an `RpcError` in its place."""
    if len(body) > max_bytes:
        raise RpcError(INVALID_REQUEST, "message too large", {"max_bytes": max_bytes, "bytes": len(body)})
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RpcError(PARSE_ERROR, "Parse error: the body is not JSON", {"detail": str(exc)[:200]}) from None
    if isinstance(document, list):
        return Parsed(_batch(document, allow_batch), True)
    message = parse_message(document)
    if isinstance(message, RpcError):
        raise message
    return Parsed((message,), False)


def _batch(document: list, allow_batch: bool) -> tuple[Message | RpcError, ...]:
    if not allow_batch:
        raise RpcError(INVALID_REQUEST, "JSON-RPC batches are not part of the negotiated protocol revision "
                                        "(only 2025-03-26 has them): send one message per request")
    if not document:
        raise RpcError(INVALID_REQUEST, "empty batch")
    if len(document) > MAX_BATCH:
        raise RpcError(INVALID_REQUEST, "batch too long", {"max_messages": MAX_BATCH, "messages": len(document)})
    return tuple(parse_message(item) for item in document)


def parse_message(item: object) -> Message | RpcError:
    """One decoded JSON value checked as a JSON-RPC message; an `RpcError` (with the id when readable) if not."""
    if not isinstance(item, dict):
        return RpcError(INVALID_REQUEST, "a JSON-RPC message is an object")
    id_problem, has_id = _id_problem(item), "id" in item
    message_id = item.get("id") if has_id and id_problem is None else None
    if item.get("jsonrpc") != "2.0":
        return RpcError(INVALID_REQUEST, 'expected "jsonrpc": "2.0"', id=message_id)
    if id_problem is not None:
        return RpcError(INVALID_REQUEST, id_problem)
    if "method" in item:
        return _request_or_notification(item, message_id if has_id else None, has_id)
    return _response(item, message_id, has_id)


def _id_problem(item: dict) -> str | None:
    if "id" not in item:
        return None
    value = item["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return "id must be a string or an integer"
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        return f"id longer than {MAX_ID_CHARS} characters"
    if isinstance(value, int) and abs(value) > MAX_SAFE_INTEGER:
        return "id outside the safe integer range (|id| <= 2**53 - 1)"
    return None


def _request_or_notification(item: dict, message_id: str | int | None, has_id: bool) -> Message | RpcError:
    method = item["method"]
    if not isinstance(method, str) or not method or len(method) > MAX_METHOD_CHARS:
        return RpcError(INVALID_REQUEST, "method must be a non-empty string", id=message_id)
    if "result" in item or "error" in item:
        return RpcError(INVALID_REQUEST, "a request carries no result or error", id=message_id)
    params = item.get("params")
    if "params" in item and not isinstance(params, dict):
        return RpcError(INVALID_REQUEST, "params must be an object", id=message_id)
    kind: Kind = "request" if has_id else "notification"
    return Message(kind, message_id, method, params, item)


def _response(item: dict, message_id: str | int | None, has_id: bool) -> Message | RpcError:
    if not has_id:
        return RpcError(INVALID_REQUEST, "a request needs a method; a response needs an id")
    if ("result" in item) == ("error" in item):
        return RpcError(INVALID_REQUEST, "a response carries exactly one of result or error", id=message_id)
    if "error" in item:
        error = item["error"]
        if not (isinstance(error, dict) and isinstance(error.get("code"), int)
                and isinstance(error.get("message"), str)):
            return RpcError(INVALID_REQUEST, "error must be an object with an integer code and a message",
                            id=message_id)
    elif not isinstance(item["result"], dict):
        return RpcError(INVALID_REQUEST, "result must be an object", id=message_id)
    return Message("response", message_id, None, None, item)


def result(message_id: str | int | None, value: JsonObject) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": message_id, "result": value})


def error(message_id: str | int | None, code: int, message: str, data: JsonObject | None = None) -> bytes:
    return RpcError(code, message, data, message_id).encode()


def request(message_id: str | int, method: str, params: JsonObject | None = None) -> bytes:
    body: JsonObject = {"jsonrpc": "2.0", "id": message_id, "method": method}
    if params is not None:
        body["params"] = params
    return orjson.dumps(body)


def notification(method: str, params: JsonObject | None = None) -> bytes:
    body: JsonObject = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    return orjson.dumps(body)
