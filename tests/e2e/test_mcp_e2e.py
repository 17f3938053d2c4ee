"""The MCP endpoint through real Envoy, driven by the official `mcp` Python SDK client: one virtual server over a
Streamable HTTP demo server (with a bearer the gateway adds) and a stdio demo server behind the bridge."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from .gateways import Gateway, GatewayBuilder

DEADLINE_SECONDS = 60.0
MCP_API_KEY = "demo-mcp-secret"


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE_SECONDS))


def client(gateway: Gateway, key_id: str | None = None, **options: Any) -> Client:
    """The SDK's client with the key as its bearer token (an `httpx2` client is how the SDK takes headers)."""
    http = create_mcp_http_client(headers={"authorization": f"Bearer {gateway._secret(key_id)}"})
    return Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http), **options)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("mcp"), processes=2) as build:
        build.redis()  # sessions shared by both ext_proc processes
        demo = build.demo("openai")
        build.backend("openai", demo)
        build.route("gpt-4o", ("openai", "gpt-4o"))
        build.key("everything")
        build.key("echo-only", mcp_tools=["tools__echo"])
        build.mcp_server("tools", api_key=MCP_API_KEY)
        build.mcp_stdio_server("local")
        yield build.start()


async def _tool_names(session: Client) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        page = await session.list_tools(cursor=cursor)
        names += [tool.name for tool in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return names


def test_tools_of_both_servers_are_listed_namespaced(gateway: Gateway) -> None:
    async def scenario() -> list[str]:
        async with client(gateway, mode="legacy") as session:
            return await _tool_names(session)

    names = run(scenario())
    assert "tools__echo" in names and "tools__add" in names
    assert any(name.startswith("local__") for name in names)


def test_a_tool_call_reaches_the_upstream_with_its_own_name(gateway: Gateway) -> None:
    async def scenario() -> types.CallToolResult:
        async with client(gateway, mode="legacy") as session:
            await _tool_names(session)
            return await session.call_tool("tools__echo", {"text": "through the gateway"})

    result = run(scenario())
    assert result.content == [types.TextContent(type="text", text="through the gateway")]


def test_a_key_sees_and_calls_only_its_tools(gateway: Gateway) -> None:
    async def scenario() -> tuple[list[str], types.CallToolResult | Exception]:
        async with client(gateway, "echo-only", mode="legacy") as session:
            names = await _tool_names(session)
            try:
                refused: types.CallToolResult | Exception = await session.call_tool("tools__add", {"a": 1, "b": 2})
            except Exception as exc:  # the SDK raises the JSON-RPC error
                refused = exc
            return names, refused

    names, refused = run(scenario())
    assert names == ["tools__echo"]
    assert isinstance(refused, Exception) and "Unknown tool" in str(refused)
