"""The server side of MCP (Model Context Protocol) for the demo tool servers (and the message helpers the stdio
bridge uses): JSON-RPC messages, the lifecycle with version negotiation, pagination, and dispatch of every server
method over a catalog of tools, resources and prompts.

Decisions worth knowing before changing this file:
- Written by hand over plain dicts: the `mcp` SDK is a test dependency only, and the tests check these answers
  against its types, so an answer the official client can't parse fails a test rather than hiding behind the SDK.
- Handshake-era revisions only (2025-03-26 .. 2025-11-25): `initialize` answers the client's version when it is one
  of them, else the newest. The stateless 2026-07-28 revision (`server/discover`) is answered "method not found",
  which is what makes a client in auto mode fall back to `initialize`.
- Lists are paginated `PAGE_SIZE` at a time so every client walks cursors; a cursor is the opaque offset it came from,
  and a cursor this server did not issue is refused with -32602 as the spec asks.
- Transport-free: `McpServer.handle` takes one message and an `emit` for the notifications that belong to that
  request (progress); server-wide notifications (list_changed) go to `McpServer.broadcast`, which each transport sets.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

JSONRPC = "2.0"
SUPPORTED_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
PAGE_SIZE = 2

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002

Message = dict[str, Any]
Emit = Callable[[Message], Awaitable[None]]
T = TypeVar("T")
_log = logging.getLogger(__name__)


class RpcError(Exception):
    """A request this server refuses; becomes a JSON-RPC error response with `code` and `message`."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def response(request_id: object, result: Message) -> Message:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": result}


def error_response(request_id: object, code: int, message: str, data: object = None) -> Message:
    error: Message = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": JSONRPC, "id": request_id, "error": error}


def notification(method: str, params: Message | None = None) -> Message:
    message: Message = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        message["params"] = params
    return message


def kind_of(message: object) -> str:
    """"request", "notification" or "response"; anything else raises RpcError(INVALID_REQUEST)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != JSONRPC:
        raise RpcError(INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    has_id = "id" in message and (message["id"] is None or isinstance(message["id"], str | int))
    if "method" in message:
        if not isinstance(message["method"], str) or not isinstance(message.get("params", {}), dict):
            raise RpcError(INVALID_REQUEST, "method must be a string and params an object")
        if "id" not in message:
            return "notification"
        if not has_id or message["id"] is None or isinstance(message["id"], bool):
            raise RpcError(INVALID_REQUEST, "a request id must be a string or an integer")
        return "request"
    if has_id and ("result" in message) != ("error" in message):
        return "response"
    raise RpcError(INVALID_REQUEST, "neither a request, a notification nor a response")


def negotiate_version(requested: object) -> str:
    return requested if isinstance(requested, str) and requested in SUPPORTED_VERSIONS else LATEST_VERSION


def paginate(items: Sequence[T], params: Message) -> tuple[list[T], str | None]:
    """One page of `items` from the request's `cursor`, and the cursor of the next page (None on the last)."""
    start = _decode_cursor(params.get("cursor"), len(items))
    end = start + PAGE_SIZE
    return list(items[start:end]), (_encode_cursor(end) if end < len(items) else None)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: object, size: int) -> int:
    if cursor is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(str(cursor).encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    prefix, _, number = text.partition(":")
    if prefix != "offset" or not number.isdigit() or not 0 < int(number) < size:
        raise RpcError(INVALID_PARAMS, f"invalid cursor {cursor!r}")
    return int(number)


def text_result(text: str, *, is_error: bool = False, structured: Message | None = None) -> Message:
    """A `CallToolResult` holding one text block."""
    result: Message = {"content": [{"type": "text", "text": text}], "isError": is_error}
    if structured is not None:
        result["structuredContent"] = structured
    return result


@dataclass(slots=True)
class ToolContext:
    """What a running tool may do besides answering: report progress when the caller asked for it."""

    progress_token: str | int | None
    emit: Emit

    async def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        if self.progress_token is None:
            return
        params: Message = {"progressToken": self.progress_token, "progress": done}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.emit(notification("notifications/progress", params))


ToolFn = Callable[[Message, ToolContext], Awaitable[Message]]
"""Arguments (already a dict) and context in, a `CallToolResult` dict out; RpcError for bad arguments."""


@dataclass(frozen=True, slots=True)
class Tool:
    spec: Message
    """The `Tool` entry of tools/list: name, description, inputSchema (outputSchema, annotations)."""
    run: ToolFn


@dataclass(frozen=True, slots=True)
class Prompt:
    spec: Message
    """The `Prompt` entry of prompts/list: name, description, arguments."""
    render: Callable[[dict[str, str]], list[Message]]
    """Arguments in, `PromptMessage` dicts out."""


@dataclass(slots=True)
class Catalog:
    """What one server offers. `resources` and `read` are functions so a server may change them while running."""

    tools: dict[str, Tool]
    resources: Callable[[], list[Message]]
    read: Callable[[str], list[Message] | None]
    """A URI's `contents` (text or blob entries), None when unknown."""
    templates: list[Message] = field(default_factory=list)
    prompts: dict[str, Prompt] = field(default_factory=dict)
    complete: Callable[[Message, str, str], list[str]] | None = None
    """(ref, argument name, typed prefix) -> suggestions; RpcError for an unknown ref."""


@dataclass(slots=True)
class Session:
    """One client's state: the negotiated version, None until `initialize`."""

    version: str | None = None
    initialized: bool = False


async def _no_broadcast(message: Message) -> None:
    return None


class McpServer:
    """Answers MCP messages from a `Catalog`; one instance per server, shared by its sessions."""

    def __init__(self, name: str, version: str, catalog: Catalog, instructions: str = "") -> None:
        self.name = name
        self.version = version
        self.catalog = catalog
        self.instructions = instructions
        self.broadcast: Emit = _no_broadcast
        """Where server-wide notifications (list_changed) go; the transport sets it."""
        self._methods: dict[str, Callable[[Message, Session, Emit], Awaitable[Message]]] = {
            "initialize": self._initialize, "ping": self._ping,
            "tools/list": self._tools_list, "tools/call": self._tools_call,
            "resources/list": self._resources_list, "resources/read": self._resources_read,
            "resources/templates/list": self._templates_list,
            "prompts/list": self._prompts_list, "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
        }

    async def handle(self, message: Message, session: Session, emit: Emit) -> Message | None:
        """The response to a request (never raises), None for a notification or a response from the client."""
        try:
            kind = kind_of(message)
        except RpcError as exc:
            request_id = message.get("id") if isinstance(message, dict) else None
            return error_response(request_id if isinstance(request_id, str | int) else None, exc.code, exc.message)
        if kind == "notification":
            if message["method"] == "notifications/initialized":
                session.initialized = True
            return None
        if kind == "response":
            return None
        try:
            return response(message["id"], await self._call(message, session, emit))
        except RpcError as exc:
            return error_response(message["id"], exc.code, exc.message, exc.data)
        except Exception:
            _log.exception("%s failed on %s", self.name, message["method"])
            return error_response(message["id"], INTERNAL_ERROR, f"internal error in {message['method']}")

    async def _call(self, message: Message, session: Session, emit: Emit) -> Message:
        method = message["method"]
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
        if session.version is None and method not in ("initialize", "ping"):
            raise RpcError(INVALID_REQUEST, f"{method} before initialize")
        return await handler(message.get("params") or {}, session, emit)

    def capabilities(self) -> Message:
        capabilities: Message = {"tools": {"listChanged": True}, "resources": {"listChanged": True}}
        if self.catalog.prompts:
            capabilities["prompts"] = {"listChanged": False}
        if self.catalog.complete is not None:
            capabilities["completions"] = {}
        return capabilities

    async def _initialize(self, params: Message, session: Session, emit: Emit) -> Message:
        session.version = negotiate_version(params.get("protocolVersion"))
        result: Message = {"protocolVersion": session.version, "capabilities": self.capabilities(),
                           "serverInfo": {"name": self.name, "version": self.version}}
        if self.instructions:
            result["instructions"] = self.instructions
        return result

    async def _ping(self, params: Message, session: Session, emit: Emit) -> Message:
        return {}

    async def _tools_list(self, params: Message, session: Session, emit: Emit) -> Message:
        tools, next_cursor = paginate([tool.spec for tool in self.catalog.tools.values()], params)
        return _page("tools", tools, next_cursor)

    async def _tools_call(self, params: Message, session: Session, emit: Emit) -> Message:
        name = params.get("name")
        tool = self.catalog.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"unknown tool: {name}")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "arguments must be an object")
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        context = ToolContext(token if isinstance(token, str | int) else None, emit)
        return await tool.run(arguments, context)

    async def _resources_list(self, params: Message, session: Session, emit: Emit) -> Message:
        resources, next_cursor = paginate(self.catalog.resources(), params)
        return _page("resources", resources, next_cursor)

    async def _resources_read(self, params: Message, session: Session, emit: Emit) -> Message:
        uri = params.get("uri")
        contents = self.catalog.read(uri) if isinstance(uri, str) else None
        if contents is None:
            raise RpcError(RESOURCE_NOT_FOUND, "resource not found", {"uri": uri})
        return {"contents": contents}

    async def _templates_list(self, params: Message, session: Session, emit: Emit) -> Message:
        templates, next_cursor = paginate(self.catalog.templates, params)
        return _page("resourceTemplates", templates, next_cursor)

    async def _prompts_list(self, params: Message, session: Session, emit: Emit) -> Message:
        prompts, next_cursor = paginate([prompt.spec for prompt in self.catalog.prompts.values()], params)
        return _page("prompts", prompts, next_cursor)

    async def _prompts_get(self, params: Message, session: Session, emit: Emit) -> Message:
        name = params.get("name")
        prompt = self.catalog.prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise RpcError(INVALID_PARAMS, f"unknown prompt: {name}")
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(isinstance(value, str) for value in arguments.values()):
            raise RpcError(INVALID_PARAMS, "prompt arguments must be an object of strings")
        for argument in prompt.spec.get("arguments", ()):
            if argument.get("required") and argument["name"] not in arguments:
                raise RpcError(INVALID_PARAMS, f"prompt {name} needs argument {argument['name']}")
        return {"description": prompt.spec.get("description", ""), "messages": prompt.render(arguments)}

    async def _complete(self, params: Message, session: Session, emit: Emit) -> Message:
        ref, argument = params.get("ref"), params.get("argument")
        if self.catalog.complete is None:
            raise RpcError(METHOD_NOT_FOUND, "this server offers no completions")
        if not isinstance(ref, dict) or not isinstance(argument, dict) or not isinstance(argument.get("name"), str):
            raise RpcError(INVALID_PARAMS, "completion needs a ref and an argument {name, value}")
        values = self.catalog.complete(ref, argument["name"], str(argument.get("value", "")))
        return {"completion": {"values": values[:100], "total": len(values), "hasMore": len(values) > 100}}


def _page(key: str, items: list[Message], next_cursor: str | None) -> Message:
    page: Message = {key: items}
    if next_cursor is not None:
        page["nextCursor"] = next_cursor
    return page


def prefix_matches(options: Sequence[str], prefix: str) -> list[str]:
    return [option for option in options if option.startswith(prefix)]
