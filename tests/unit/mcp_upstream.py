"""A real upstream MCP server for the MCP unit tests, built with the official `mcp` SDK's low-level `Server` and
served over Streamable HTTP by uvicorn on a free 127.0.0.1 port, in a thread of the test process; it records
the headers of every request it gets.

Its lists are paginated (`PAGE` items per upstream page, the SDK's cursor being the offset as text) so the gateway's
client must follow cursors; `json_response=False` answers every request as an SSE stream, `True` as JSON. Calling
`touch_tools` sends `notifications/tools/list_changed` on the call's own stream, `progress` sends progress first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mcp.types as types
import uvicorn
from mcp.server.lowlevel import Server

from ..redis_server import free_ports

PAGE = 2
TOOLS = [f"tool_{i}" for i in range(5)]


def _page(items: list, params: types.PaginatedRequestParams | None) -> tuple[list, str | None]:
    start = int(params.cursor) if params is not None and params.cursor else 0
    end = start + PAGE
    return items[start:end], (str(end) if end < len(items) else None)


def build_server(name: str) -> Server:
    tools = [types.Tool(name=tool, description=f"{tool} of {name}", input_schema={"type": "object"})
             for tool in TOOLS]
    resources = [types.Resource(uri=f"mem://{name}/r{i}", name=f"r{i}") for i in range(3)]
    templates = [types.ResourceTemplate(uri_template=f"mem://{name}/items/{{id}}", name="item")]
    prompts = [types.Prompt(name="greet", description="says hello")]

    async def list_tools(ctx, params):
        page, cursor = _page(tools, params)
        return types.ListToolsResult(tools=page, next_cursor=cursor)

    async def list_resources(ctx, params):
        page, cursor = _page(resources, params)
        return types.ListResourcesResult(resources=page, next_cursor=cursor)

    async def list_templates(ctx, params):
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def list_prompts(ctx, params):
        return types.ListPromptsResult(prompts=prompts)

    async def call_tool(ctx, params):
        if params.name == "touch_tools":
            await ctx.session.send_notification(types.ToolListChangedNotification(), ctx.request_id)
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{name}:{params.name}")])

    return Server(name, on_list_tools=list_tools, on_list_resources=list_resources,
                  on_list_resource_templates=list_templates, on_list_prompts=list_prompts, on_call_tool=call_tool)


class Upstream:
    def __init__(self, name: str, *, json_response: bool) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.seen_headers: list[dict[str, str]] = []
        app = build_server(name).streamable_http_app(json_response=json_response)

        async def recording(scope, receive, send):
            if scope["type"] == "http":
                self.seen_headers.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        config = uvicorn.Config(recording, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test MCP server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@contextmanager
def running(name: str, *, json_response: bool) -> Iterator[Upstream]:
    upstream = Upstream(name, json_response=json_response)
    upstream.start()
    try:
        yield upstream
    finally:
        upstream.stop()
