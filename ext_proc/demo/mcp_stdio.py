"""A demo MCP server over stdio: `python -m ext_proc.demo.mcp_stdio [--name demo-mcp-notes]`.

The MCP stdio transport: one JSON-RPC message a line on stdin, answers and notifications a line on stdout, logs on
stderr (stdout carries nothing else). Requests run concurrently, so a slow tool's progress interleaves with other
answers, as a real server's would.

A note-taking tool set, unlike the HTTP demo's so a gateway aggregates two different servers: `notes_add` (sends
`notifications/resources/list_changed`), `notes_list`, `now`, `countdown` (progress notifications when the call
carries a progressToken) and `crash` (the process exits at once with status 3, for supervisors and the bridge).
`notifications/cancelled` stops the request it names; closing stdin stops everything and ends the process.
Each note is a resource `notes://<n>`; prompt `daily_note` with completions for its `topic`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import sys

import orjson

from ext_proc.mcp.server_protocol import (
    PARSE_ERROR,
    Catalog,
    McpServer,
    Message,
    Prompt,
    RpcError,
    Session,
    Tool,
    ToolContext,
    error_response,
    notification,
    prefix_matches,
    text_result,
)

SERVER_VERSION = "1.0.0"
MAX_LINE_BYTES = 4 * 1024 * 1024
CRASH_STATUS = 3
TOPICS = ("health", "home", "travel", "work")


def build_server(name: str) -> McpServer:
    """The note-taking server's logic; notes live as long as the process."""
    notes: list[str] = []

    def resources() -> list[Message]:
        return [{"uri": f"notes://{index}", "name": f"note {index}", "mimeType": "text/plain"}
                for index in range(1, len(notes) + 1)]

    def read(uri: str) -> list[Message] | None:
        number = uri.removeprefix("notes://")
        if number == uri or not number.isdigit() or not 1 <= int(number) <= len(notes):
            return None
        return [{"uri": uri, "mimeType": "text/plain", "text": notes[int(number) - 1]}]

    server = McpServer(name, SERVER_VERSION, Catalog({}, resources, read), "A scratch pad of notes.")
    for tool in (_notes_add_tool(server, notes), _notes_list_tool(notes), _now_tool(), _countdown_tool(),
                 _crash_tool()):
        server.catalog.tools[tool.spec["name"]] = tool
    server.catalog.prompts = {"daily_note": _daily_note_prompt()}
    server.catalog.complete = _complete
    return server


def _schema(properties: Message, required: tuple[str, ...] = ()) -> Message:
    return {"type": "object", "properties": properties, "required": list(required)}


def _notes_add_tool(server: McpServer, notes: list[str]) -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        text = args.get("text")
        if not isinstance(text, str) or not text:
            return text_result("notes_add needs a non-empty text", is_error=True)
        notes.append(text)
        await server.broadcast(notification("notifications/resources/list_changed"))
        return text_result(f"saved note {len(notes)}", structured={"id": len(notes)})

    return Tool({"name": "notes_add", "description": "Save a note.",
                 "inputSchema": _schema({"text": {"type": "string"}}, ("text",)),
                 "outputSchema": _schema({"id": {"type": "integer"}}, ("id",))}, run)


def _notes_list_tool(notes: list[str]) -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        lines = [f"{index}. {note}" for index, note in enumerate(notes, 1)]
        return text_result("\n".join(lines) or "no notes yet")

    return Tool({"name": "notes_list", "description": "List the notes.", "inputSchema": _schema({}),
                 "annotations": {"readOnlyHint": True}}, run)


def _now_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        return text_result(now.isoformat().replace("+00:00", "Z"))

    return Tool({"name": "now", "description": "The current UTC time (ISO 8601).", "inputSchema": _schema({})}, run)


def _countdown_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        count, delay_ms = args.get("count", 3), args.get("delay_ms", 10)
        if not (isinstance(count, int) and 1 <= count <= 100 and isinstance(delay_ms, int) and 0 <= delay_ms <= 5000):
            return text_result("countdown needs count 1..100 and delay_ms 0..5000", is_error=True)
        for done in range(1, count + 1):
            await asyncio.sleep(delay_ms / 1000)
            await context.progress(done, count, f"{count - done} to go")
        return text_result("liftoff")

    return Tool({"name": "countdown", "description": "Count down from `count`, reporting progress at each step.",
                 "inputSchema": _schema({"count": {"type": "integer", "minimum": 1, "maximum": 100},
                                         "delay_ms": {"type": "integer", "minimum": 0, "maximum": 5000}})}, run)


def _crash_tool() -> Tool:
    async def run(args: Message, context: ToolContext) -> Message:
        print("crash tool called: exiting", file=sys.stderr, flush=True)
        os._exit(CRASH_STATUS)

    return Tool({"name": "crash", "description": "Exit the server process at once (for supervisor tests).",
                 "inputSchema": _schema({})}, run)


def _daily_note_prompt() -> Prompt:
    def render(args: dict[str, str]) -> list[Message]:
        return [{"role": "user", "content": {"type": "text", "text": f"Write today's note about {args['topic']}."}}]

    return Prompt({"name": "daily_note", "description": "Draft today's note.",
                   "arguments": [{"name": "topic", "description": ", ".join(TOPICS), "required": True}]}, render)


def _complete(ref: Message, argument: str, prefix: str) -> list[str]:
    if ref.get("type") == "ref/prompt" and ref.get("name") == "daily_note" and argument == "topic":
        return prefix_matches(TOPICS, prefix)
    if ref.get("type") in ("ref/prompt", "ref/resource"):
        return []
    raise RpcError(-32602, f"unknown completion ref {ref!r}")


async def _write(message: Message) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


async def serve(server: McpServer) -> int:
    """Answer stdin until it closes; each message in its own task, and `notifications/cancelled` cancels one."""
    server.broadcast = _write
    session = Session()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: dict[object, asyncio.Task[None]] = {}
    print(f"{server.name}: ready", file=sys.stderr, flush=True)
    while line := await reader.readline():
        message = await _parse(line)
        if message is None:
            continue
        if message.get("method") == "notifications/cancelled":
            _cancel(running, message.get("params"))
            continue
        task = asyncio.create_task(_answer(server, session, message))
        key = message.get("id", task)  # a request is found by its id, anything else by nothing
        running[key] = task
        task.add_done_callback(functools.partial(_forget, running, key))
    for task in list(running.values()):  # stdin closed: the client is done with us (the stdio shutdown)
        task.cancel()
    return 0


def _forget(running: dict[object, asyncio.Task[None]], key: object, task: asyncio.Task[None]) -> None:
    if running.get(key) is task:
        running.pop(key)


async def _parse(line: bytes) -> Message | None:
    if not line.strip():
        return None
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        await _write(error_response(None, PARSE_ERROR, f"parse error: {exc}"))
        return None
    return message if isinstance(message, dict) else {"not a message": message}


def _cancel(running: dict[object, asyncio.Task[None]], params: object) -> None:
    """Stop a request the client gave up on; as the spec asks, it then gets no answer."""
    request_id = params.get("requestId") if isinstance(params, dict) else None
    task = running.get(request_id) if isinstance(request_id, str | int) else None
    if task is not None:
        task.cancel()


async def _answer(server: McpServer, session: Session, message: Message) -> None:
    reply = await server.handle(message, session, _write)
    if reply is not None:
        await _write(reply)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ext_proc.demo.mcp_stdio", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo-mcp-notes", help="the serverInfo name")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(serve(build_server(args.name)))
    except ValueError as exc:  # a line over MAX_LINE_BYTES: the framing is lost
        print(f"{args.name}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
