"""A demo MCP tool server over Streamable HTTP at `/mcp`: `python -m ext_proc.demo --kind mcp --name demo-mcp-tools`.

Tools: `echo`, `add` (structured output), `slow_count` (progress notifications, so its answer is an SSE stream when
the call carries a progressToken), `secret_lookup` (text with an email address, for guardrails), `fail` (isError),
`toggle_tool` (adds or removes `bonus` and sends `notifications/tools/list_changed` on every session's GET stream).
Resources `demo://readme`, `demo://config.json`, `demo://logo.png`; template `demo://users/{user}`; prompts `greet`
and `summarize`; completions for the prompt's `style` and the template's `user`. Every list is paginated two a page.

Sessions: `initialize` issues an `Mcp-Session-Id`; every later request needs it (400 without, 404 for an unknown or
deleted one). With `--api-key` every request needs `Authorization: Bearer <key>` (401 otherwise). Faults and request
recording are `server.py`'s, as for the other demos: a status fault answers that status with a JSON-RPC error (id
null), `reset` drops the connection, `stall` waits first; `midstream` and `slow` don't apply to MCP answers. The tool
set is the server's, not a session's: `toggle_tool` changes it for every session.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import orjson

from ext_proc.demo.answers import Call, Reply
from ext_proc.mcp.server_protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    Catalog,
    Emit,
    McpServer,
    Message,
    Prompt,
    RpcError,
    Session,
    Tool,
    ToolContext,
    error_response,
    kind_of,
    notification,
    prefix_matches,
    text_result,
)
from ext_proc.mcp.streamable_http import (
    MCP_PATH,
    SESSION_HEADER,
    Outbox,
    Refusal,
    answer_request,
    check_headers,
    parse_message,
    send_json,
    send_refusal,
    stream_events,
)
from ext_proc.transport.http1 import Request, Response

KIND = "mcp"
SERVER_VERSION = "1.0.0"
MAX_SESSIONS = 1000
OUTBOX_SIZE = 100
SECRET_EMAIL = "alice.admin@example.com"
STYLES = ("casual", "formal", "pirate")
USERS = ("alice", "bob", "carol")
_LOGO_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def error(status: int, message: str) -> Reply:
    """A refusal outside the protocol (faults, bad fault specs): the status with a JSON-RPC error, id null."""
    return Reply(status, orjson.dumps(error_response(None, INTERNAL_ERROR, message)))


def answer(call: Call) -> Reply:
    """Any path but `/mcp`."""
    return error(404, f"no MCP endpoint at {call.path}; use {MCP_PATH}")


@dataclass(slots=True)
class _HttpSession:
    state: Session = field(default_factory=Session)
    outbox: Outbox = field(default_factory=lambda: Outbox(OUTBOX_SIZE))


class McpDemo:
    """The `/mcp` endpoint of one demo server: its sessions and the `McpServer` they share."""

    def __init__(self, name: str, api_key: str | None) -> None:
        self.server = build_server(name)
        self.server.broadcast = self._broadcast
        self._api_key = api_key
        self._sessions: OrderedDict[str, _HttpSession] = OrderedDict()

    async def handle(self, request: Request, response: Response, headers: list[tuple[str, str]]) -> None:
        if self._api_key is not None and request.headers.get("authorization") != f"Bearer {self._api_key}":
            await send_refusal(response, Refusal(401, INVALID_REQUEST, "missing or wrong bearer token"),
                               [*headers, ("www-authenticate", "Bearer")])
            return
        try:
            check_headers(request)
            if request.method == "POST":
                await self._post(request, response, headers)
            elif request.method == "GET":
                await stream_events(response, self._session(request).outbox, headers)
            elif request.method == "DELETE":
                self._end(request)
                await response.send(204, headers)
            else:
                await send_refusal(response, Refusal(405, INVALID_REQUEST, "use POST, GET or DELETE"),
                                   [*headers, ("allow", "POST, GET, DELETE")])
        except Refusal as refusal:
            await send_refusal(response, refusal, headers)

    async def _post(self, request: Request, response: Response, headers: list[tuple[str, str]]) -> None:
        message = parse_message(request.body)
        try:
            kind = kind_of(message)
        except RpcError as exc:
            raise Refusal(400, exc.code, exc.message) from None
        if kind == "request" and message["method"] == "initialize":
            session_id = self._open()
            result = await self.server.handle(message, self._sessions[session_id].state, _no_emit)
            assert result is not None
            await send_json(response, 200, result, [*headers, (SESSION_HEADER, session_id)])
            return
        session = self._session(request)
        if kind != "request":
            await self.server.handle(message, session.state, _no_emit)
            await response.send(202, headers)
            return
        await answer_request(response, lambda emit: self._answer(message, session.state, emit), headers)

    async def _answer(self, message: Message, state: Session, emit: Emit) -> Message:
        result = await self.server.handle(message, state, emit)
        assert result is not None
        return result

    def _open(self) -> str:
        session_id = secrets.token_urlsafe(24)
        self._sessions[session_id] = _HttpSession()
        while len(self._sessions) > MAX_SESSIONS:
            _, oldest = self._sessions.popitem(last=False)
            oldest.outbox.close()
        return session_id

    def _session(self, request: Request) -> _HttpSession:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            raise Refusal(400, INVALID_REQUEST, "missing Mcp-Session-Id header; send initialize first")
        session = self._sessions.get(session_id)
        if session is None:
            raise Refusal(404, INVALID_REQUEST, "unknown or ended session; send initialize without a session id")
        return session

    def _end(self, request: Request) -> None:
        session = self._session(request)
        del self._sessions[request.headers[SESSION_HEADER]]
        session.outbox.close()

    async def _broadcast(self, message: Message) -> None:
        for session in self._sessions.values():
            session.outbox.offer(message)


async def _no_emit(message: Message) -> None:
    return None


def build_server(name: str) -> McpServer:
    """The demo tool server's logic; `name` is its serverInfo name."""
    server = McpServer(name, SERVER_VERSION, Catalog({}, _resources, _read), "Demo tools for Babelgate tests.")
    catalog = server.catalog
    for tool in (_echo_tool(), _add_tool(), _slow_count_tool(), _secret_tool(), _fail_tool(), _toggle_tool(server)):
        catalog.tools[tool.spec["name"]] = tool
    catalog.templates = [{"uriTemplate": "demo://users/{user}", "name": "user", "mimeType": "application/json",
                          "description": "A demo user's profile"}]
    catalog.prompts = {prompt.spec["name"]: prompt for prompt in (_greet_prompt(), _summarize_prompt())}
    catalog.complete = _complete
    return server


def _schema(properties: Message, required: tuple[str, ...] = ()) -> Message:
    return {"type": "object", "properties": properties, "required": list(required)}


def _echo_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        return text_result(str(args.get("text", "")))

    return Tool({"name": "echo", "description": "Answer the text it is given.",
                 "inputSchema": _schema({"text": {"type": "string"}}, ("text",))}, run)


def _add_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        a, b = args.get("a"), args.get("b")
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b)):
            return text_result("add needs numbers a and b", is_error=True)
        total = a + b  # type: ignore[operator]
        return text_result(str(total), structured={"sum": total})

    return Tool({"name": "add", "description": "Add two numbers.",
                 "inputSchema": _schema({"a": {"type": "number"}, "b": {"type": "number"}}, ("a", "b")),
                 "outputSchema": _schema({"sum": {"type": "number"}}, ("sum",)),
                 "annotations": {"readOnlyHint": True}}, run)


def _slow_count_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        count, delay_ms = args.get("count", 3), args.get("delay_ms", 10)
        if not (isinstance(count, int) and 1 <= count <= 100 and isinstance(delay_ms, int) and 0 <= delay_ms <= 5000):
            return text_result("slow_count needs count 1..100 and delay_ms 0..5000", is_error=True)
        for done in range(1, count + 1):
            await asyncio.sleep(delay_ms / 1000)
            await context.progress(done, count, f"counted {done}")
        return text_result(f"counted to {count}")

    return Tool({"name": "slow_count", "description": "Count to `count`, reporting progress at each step.",
                 "inputSchema": _schema({"count": {"type": "integer", "minimum": 1, "maximum": 100},
                                         "delay_ms": {"type": "integer", "minimum": 0, "maximum": 5000}})}, run)


def _secret_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        user = str(args.get("user", "alice"))
        return text_result(f"The on-call contact for {user} is {SECRET_EMAIL}, phone +1 555 0100.")

    return Tool({"name": "secret_lookup", "description": "Look up a user's contact details (personal data).",
                 "inputSchema": _schema({"user": {"type": "string"}})}, run)


def _fail_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        return text_result("the fail tool always fails", is_error=True)

    return Tool({"name": "fail", "description": "Always fail (a tool error, not a protocol error).",
                 "inputSchema": _schema({})}, run)


def _bonus_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        return text_result("bonus!")

    return Tool({"name": "bonus", "description": "Exists only after toggle_tool.", "inputSchema": _schema({})}, run)


def _toggle_tool(server: McpServer) -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        tools = server.catalog.tools
        added = tools.pop("bonus", None) is None
        if added:
            tools["bonus"] = _bonus_tool()
        await server.broadcast(notification("notifications/tools/list_changed"))
        return text_result("bonus tool added" if added else "bonus tool removed")

    return Tool({"name": "toggle_tool", "description": "Add or remove the `bonus` tool (sends list_changed).",
                 "inputSchema": _schema({})}, run)


_RESOURCES = {
    "demo://readme": ("readme", "text/markdown", "# Demo MCP server\n\nTools, resources and prompts for tests.\n"),
    "demo://config.json": ("config", "application/json", '{"mode": "demo", "page_size": 2}'),
}


def _resources() -> list[Message]:
    listed = [{"uri": uri, "name": name, "mimeType": mime} for uri, (name, mime, _) in _RESOURCES.items()]
    return [*listed, {"uri": "demo://logo.png", "name": "logo", "mimeType": "image/png"}]


def _read(uri: str) -> list[Message] | None:
    if uri in _RESOURCES:
        _, mime, text = _RESOURCES[uri]
        return [{"uri": uri, "mimeType": mime, "text": text}]
    if uri == "demo://logo.png":
        return [{"uri": uri, "mimeType": "image/png", "blob": _LOGO_PNG}]
    user = uri.removeprefix("demo://users/")
    if user != uri and user in USERS:
        return [{"uri": uri, "mimeType": "application/json", "text": f'{{"user": "{user}", "team": "demo"}}'}]
    return None


def _greet_prompt() -> Prompt:
    def render(args: dict[str, str]) -> list[Message]:
        style = args.get("style", "casual")
        return [{"role": "user", "content": {"type": "text", "text": f"Greet {args['name']} in a {style} way."}}]

    return Prompt({"name": "greet", "description": "Greet someone.",
                   "arguments": [{"name": "name", "description": "Who to greet", "required": True},
                                 {"name": "style", "description": "casual, formal or pirate", "required": False}]},
                  render)


def _summarize_prompt() -> Prompt:
    def render(args: dict[str, str]) -> list[Message]:
        return [{"role": "user", "content": {"type": "text", "text": f"Summarize this:\n{args['text']}"}},
                {"role": "assistant", "content": {"type": "text", "text": "Here is a short summary:"}}]

    return Prompt({"name": "summarize", "description": "Summarize a text.",
                   "arguments": [{"name": "text", "description": "The text", "required": True}]}, render)


def _complete(ref: Message, argument: str, prefix: str) -> list[str]:
    if ref.get("type") == "ref/prompt" and ref.get("name") == "greet" and argument == "style":
        return prefix_matches(STYLES, prefix)
    if ref.get("type") == "ref/resource" and ref.get("uri") == "demo://users/{user}" and argument == "user":
        return prefix_matches(USERS, prefix)
    if ref.get("type") in ("ref/prompt", "ref/resource"):
        return []
    raise RpcError(INVALID_PARAMS, f"unknown completion ref {ref!r}")
