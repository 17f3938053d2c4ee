"""The upstream client against a real MCP server (the official SDK over Streamable HTTP on loopback, answering as
SSE or as JSON, in both protocol eras), filling the catalog; and against broken servers (httpx mock transports and
a socket that never answers)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import mcp.types as types
import orjson
import pytest

from ext_proc.config.models import McpServer
from ext_proc.mcp.catalog import KINDS, Allow, Catalog
from ext_proc.mcp.names import Namespace
from ext_proc.mcp.protocol import LIST_METHODS
from ext_proc.mcp.upstream_client import UpstreamClient, UpstreamError, UpstreamRpcError, credential_headers

from .mcp_upstream import PAGE, TOOLS, Upstream, running

VERSIONS = ["2025-11-25", "2026-07-28"]
RESULT_TYPES = {"tools/list": types.ListToolsResult, "resources/list": types.ListResourcesResult,
                "resources/templates/list": types.ListResourceTemplatesResult,
                "prompts/list": types.ListPromptsResult}


@pytest.fixture(scope="module", params=["sse", "json"])
def upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    with running("github", json_response=request.param == "json") as server:
        yield server


@pytest.mark.parametrize("version", VERSIONS)
def test_every_list_is_read_to_the_end_of_the_upstreams_pages(upstream: Upstream, version: str) -> None:
    async def scenario() -> None:
        client = UpstreamClient(upstream.url, version=version)
        session = await client.open()
        assert session.version == version
        assert (session.session_id is None) == (version == "2026-07-28")
        tools = await client.list_all(session, "tools/list")
        assert [tool["name"] for tool in tools] == TOOLS and len(TOOLS) > 2 * PAGE
        assert [r["uri"] for r in await client.list_all(session, "resources/list")] == [
            "mem://github/r0", "mem://github/r1", "mem://github/r2"]
        assert (await client.list_all(session, "resources/templates/list"))[0]["uriTemplate"] == (
            "mem://github/items/{id}")
        await client.close(session)
        await client.aclose()
    asyncio.run(scenario())


def test_the_catalog_filled_from_a_real_server_answers_what_the_sdk_accepts(upstream: Upstream) -> None:
    async def scenario() -> Catalog:
        catalog = Catalog(Namespace([("github", "gh")]), page_size=3, ttl=60)
        client = UpstreamClient(upstream.url)
        session = await client.open()
        for server, kind in catalog.stale():
            method = next(m for m, k in LIST_METHODS.items() if k == kind)
            catalog.update(server, kind, await client.list_all(session, method))
        await client.close(session)
        await client.aclose()
        return catalog
    catalog = asyncio.run(scenario())
    assert catalog.stale() == []
    for method, result_type in RESULT_TYPES.items():
        cursor, count = None, 0
        while True:
            page = catalog.page(method, Allow(), cursor)
            count += len(result_type.model_validate(page).model_dump(by_alias=True)[LIST_METHODS[method]])
            cursor = page.get("nextCursor")
            if cursor is None:
                break
        assert count == {"tools": 5, "resources": 3, "resourceTemplates": 1, "prompts": 1}[LIST_METHODS[method]]
    assert catalog.route_tool("gh__tool_3") == ("github", "tool_3")
    assert catalog.route_uri("mem://github/items/42") == "github"
    assert set(KINDS) == set(LIST_METHODS.values())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_list_changed_on_a_calls_stream_reaches_the_catalog(version: str) -> None:
    catalog = Catalog(Namespace([("github", "gh")]), page_size=10, ttl=60)
    for kind in KINDS:
        catalog.update("github", kind, [])

    async def scenario() -> dict:
        client = UpstreamClient(upstream_url, version=version,
                                on_notification=lambda note: catalog.notified("github", note["method"]))
        session = await client.open()
        result = await client.request(session, "tools/call", {"name": "touch_tools", "arguments": {}})
        await client.close(session)
        await client.aclose()
        return result
    with running("github", json_response=False) as server:
        upstream_url = server.url
        result = asyncio.run(scenario())
    types.CallToolResult.model_validate(result)
    assert result["content"][0]["text"] == "github:touch_tools"
    assert catalog.stale() == [("github", "tools")]


def test_credentials_are_the_callers_headers_and_the_session_rides_along(upstream: Upstream) -> None:
    async def scenario() -> None:
        client = UpstreamClient(upstream.url, headers={"Authorization": "Bearer up-secret", "X-Api-Key": "k1"})
        session = await client.open()
        start = len(upstream.seen_headers)
        await client.request(session, "ping")
        seen = upstream.seen_headers[start]
        assert seen["authorization"] == "Bearer up-secret" and seen["x-api-key"] == "k1"
        assert seen["mcp-session-id"] == session.session_id and seen["mcp-protocol-version"] == "2025-11-25"
        await client.close(session)
        with pytest.raises(UpstreamError, match="HTTP 404"):  # the upstream session is gone after DELETE
            await client.request(session, "ping")
        await client.aclose()
    asyncio.run(scenario())


def test_credential_headers_come_from_the_servers_secret_refs() -> None:
    server = McpServer.model_validate({"name": "gh", "url": "http://x/mcp", "bearer": {"env": "GH_TOKEN"},
                                       "headers": {"X-Api-Key": {"file": "/run/key"}}})
    read = {"GH_TOKEN": "t0k", "/run/key": "k3y"}
    asked: list[str] = []

    def reader(ref, where: str) -> str:
        asked.append(where)
        return read[ref.env or str(ref.file)]
    assert credential_headers(server, reader, "mcp.servers.0") == {"x-api-key": "k3y", "authorization": "Bearer t0k"}
    assert asked == ["mcp.servers.0.headers.x-api-key", "mcp.servers.0.bearer"]


def test_stateless_requests_carry_the_envelope_and_routing_headers(upstream: Upstream) -> None:
    async def scenario() -> None:
        client = UpstreamClient(upstream.url, version="2026-07-28")
        session = await client.open()
        start = len(upstream.seen_headers)
        await client.request(session, "tools/call", {"name": "tool_1", "arguments": {}})
        seen = upstream.seen_headers[start]
        assert (seen["mcp-method"], seen["mcp-name"], seen["mcp-protocol-version"]) == (
            "tools/call", "tool_1", "2026-07-28")
        assert "mcp-session-id" not in seen
        await client.aclose()
    asyncio.run(scenario())


def test_an_upstream_json_rpc_error_is_passed_on(upstream: Upstream) -> None:
    async def scenario() -> None:
        client = UpstreamClient(upstream.url)
        session = await client.open()
        with pytest.raises(UpstreamRpcError) as caught:
            await client.request(session, "completion/complete", {"ref": {"type": "ref/prompt", "name": "greet"},
                                                                  "argument": {"name": "a", "value": "b"}})
        assert caught.value.error["code"] == types.METHOD_NOT_FOUND
        await client.close(session)
        await client.aclose()
    asyncio.run(scenario())


# -- broken upstreams ---------------------------------------------------------------------------------------------


def _mocked(handler, **options: object) -> UpstreamClient:
    transport = httpx.MockTransport(handler)
    return UpstreamClient("http://upstream.test/mcp", client=httpx.AsyncClient(transport=transport),
                          version="2026-07-28", **options)  # type: ignore[arg-type]


def _sse(*events: str) -> httpx.Response:
    body = "".join(f"data: {event}\n\n" for event in events).encode()
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def _ask(client: UpstreamClient, method: str = "tools/list") -> object:
    async def scenario() -> object:
        session = await client.open()
        return await client.list_all(session, method)
    return asyncio.run(scenario())


@pytest.mark.parametrize(("answer", "problem"), [
    (httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>"), "text/html"),
    (httpx.Response(502, content=b"bad gateway"), "HTTP 502"),
    (httpx.Response(200, headers={"content-type": "application/json"}, content=b"{nope"), "not JSON"),
    (httpx.Response(200, json={"jsonrpc": "2.0", "id": 99, "result": {"tools": []}}), "another request"),
    (httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {"nothing": []}}), "no 'tools' list"),
    (httpx.Response(200, json={"result": {}}), "not a JSON-RPC response"),
    (_sse('{"jsonrpc":"2.0","method":"notifications/progress","params":{}}'), "ended without an answer"),
    (_sse("not json"), "not JSON"),
    (httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": {"tools": [], "x": "y" * 5000}}), "larger"),
])
def test_answers_that_are_not_mcp_are_upstream_errors(answer: httpx.Response, problem: str) -> None:
    client = _mocked(lambda request: answer, max_bytes=4096)
    with pytest.raises(UpstreamError, match=problem):
        _ask(client)


def test_an_sse_answer_skips_priming_events_and_hands_notifications_on() -> None:
    seen: list[dict] = []
    answer = _sse("", '{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}',
                  '{"jsonrpc":"2.0","id":5,"method":"roots/list"}',
                  '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"t","inputSchema":{"type":"object"}}]}}')
    assert _ask(_mocked(lambda request: answer, on_notification=seen.append)) == [
        {"name": "t", "inputSchema": {"type": "object"}}]
    assert [note["method"] for note in seen] == ["notifications/message"]


def test_pagination_that_never_ends_is_cut_off() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": body["id"],
                                         "result": {"tools": [], "nextCursor": "same"}})
    with pytest.raises(UpstreamError, match="does not end"):
        _ask(_mocked(handler))


def test_an_upstream_error_answer_is_an_upstream_rpc_error() -> None:
    answer = httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "boom"}})
    with pytest.raises(UpstreamRpcError, match="boom"):
        _ask(_mocked(lambda request: answer))


def test_a_dead_upstream_and_a_hanging_one_are_told_apart() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    with pytest.raises(UpstreamError, match="could not be reached") as caught:
        asyncio.run(UpstreamClient(f"http://127.0.0.1:{port}/mcp").open())
    assert not caught.value.timeout
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(1)  # accepts connections (the kernel does) and never answers
    try:
        client = UpstreamClient(f"http://127.0.0.1:{hanging.getsockname()[1]}/mcp", timeout=0.5)
        with pytest.raises(UpstreamError, match="within") as caught:
            asyncio.run(client.open())
        assert caught.value.timeout
    finally:
        hanging.close()
