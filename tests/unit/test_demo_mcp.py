"""The demo MCP servers speak real MCP: the official `mcp` SDK client drives the Streamable HTTP demo
(`python -m ext_proc.demo --kind mcp`) and the stdio demo (`python -m ext_proc.demo.mcp_stdio`), and every raw answer
is checked against `mcp.types`."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import mcp.types as types
import orjson
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from ext_proc.demo.mcp_tools import SECRET_EMAIL
from ext_proc.demo.server import start_demo_provider
from ext_proc.mcp.streamable_http import Outbox
from tests.unit.mcp_peers import LATEST, STDIO_DEMO, STDIO_TOOLS, Peer, RawClient, http_demo, run, sse_messages

HTTP_TOOLS = {"echo", "add", "slow_count", "secret_lookup", "fail", "toggle_tool"}


@pytest.fixture(scope="module")
def demo() -> Iterator[Peer]:
    with http_demo() as peer:
        yield peer


@pytest.fixture
def raw(demo: Peer) -> Iterator[RawClient]:
    client = RawClient(demo.url)
    try:
        yield client
    finally:
        client.close()


async def _all_tools(client: Client) -> tuple[list[types.Tool], int]:
    """Every tool, walking the cursors; and how many pages it took."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    for pages in range(1, 20):
        page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
        assert isinstance(page, types.ListToolsResult) and len(page.tools) <= 2
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools, pages
    raise AssertionError("tools/list never ended")


def test_the_demo_runs_in_process_too() -> None:
    async def scenario() -> None:
        provider = await start_demo_provider("mcp", "in-process-mcp")
        try:
            async with Client(provider.url + "/mcp", mode="legacy") as client:
                assert client.server_info is not None and client.server_info.name == "in-process-mcp"
                assert (await client.call_tool("echo", {"text": "same loop"})).content[0] == types.TextContent(
                    type="text", text="same loop")
        finally:
            await provider.close()

    run(scenario())


def test_ready_line_names_the_demo_and_its_port(demo: Peer) -> None:
    assert demo.ready["kind"] == "mcp" and demo.ready["name"] == "demo-mcp-tools" and demo.ready["port"] > 0


@pytest.mark.parametrize(("offered", "answered"), [("2025-06-18", "2025-06-18"), ("2025-03-26", "2025-03-26"),
                                                   ("2025-11-25", "2025-11-25"), ("2099-01-01", LATEST)])
def test_initialize_answers_the_clients_version_or_the_latest(raw: RawClient, offered: str, answered: str) -> None:
    reply = raw.initialize(offered)
    result = types.InitializeResult.model_validate(reply["result"])
    assert result.protocol_version == answered
    assert result.server_info.name == "demo-mcp-tools"
    assert result.capabilities.tools is not None and result.capabilities.tools.list_changed
    assert result.capabilities.completions is not None and result.capabilities.prompts is not None
    assert raw.session_id


def test_sdk_client_lists_tools_two_a_page(demo: Peer) -> None:
    async def scenario() -> None:
        async with Client(demo.url, mode="legacy") as client:
            assert client.protocol_version == LATEST
            tools, pages = await _all_tools(client)
            assert {tool.name for tool in tools} == HTTP_TOOLS and pages == 3
            add = next(tool for tool in tools if tool.name == "add")
            assert add.output_schema is not None and add.input_schema["required"] == ["a", "b"]

    run(scenario())


def test_sdk_client_in_auto_mode_falls_back_to_initialize(demo: Peer) -> None:
    async def scenario() -> None:
        async with Client(demo.url) as client:
            assert client.protocol_version == LATEST
            assert [prompt.name for prompt in (await client.list_prompts()).prompts] == ["greet", "summarize"]

    run(scenario())


def test_sdk_client_calls_tools(demo: Peer) -> None:
    async def scenario() -> None:
        async with Client(demo.url, mode="legacy") as client:
            await _all_tools(client)  # the SDK checks structured output against schemas it has listed
            echo = await client.call_tool("echo", {"text": "hi there"})
            assert echo.content == [types.TextContent(type="text", text="hi there")] and not echo.is_error
            added = await client.call_tool("add", {"a": 2, "b": 40.5})
            assert added.structured_content == {"sum": 42.5}
            secret = await client.call_tool("secret_lookup", {"user": "bob"})
            assert isinstance(secret.content[0], types.TextContent) and SECRET_EMAIL in secret.content[0].text
            failed = await client.call_tool("fail", {})
            assert failed.is_error
            wrong = await client.call_tool("add", {"a": "two", "b": 1})
            assert wrong.is_error

    run(scenario())


def test_progress_notifications_arrive_before_the_result(demo: Peer) -> None:
    events: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total, message))

    async def scenario() -> None:
        async with Client(demo.url, mode="legacy") as client:
            result = await client.call_tool("slow_count", {"count": 4, "delay_ms": 1}, progress_callback=on_progress)
            assert result.content[0] == types.TextContent(type="text", text="counted to 4")
            assert events == [(n, 4, f"counted {n}") for n in (1, 2, 3, 4)]

    run(scenario())


def test_a_call_with_a_progress_token_is_answered_as_an_sse_stream(raw: RawClient) -> None:
    raw.initialize()
    reply = raw.post({"jsonrpc": "2.0", "id": "call-1", "method": "tools/call", "params": {
        "name": "slow_count", "arguments": {"count": 2, "delay_ms": 0}, "_meta": {"progressToken": "tok"}}})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(reply.text)
    assert [message.get("method") for message in messages] == ["notifications/progress"] * 2 + [None]
    for message in messages[:-1]:
        params = types.ProgressNotificationParams.model_validate(message["params"])
        assert params.progress_token == "tok"
    assert messages[-1]["id"] == "call-1"
    types.CallToolResult.model_validate(messages[-1]["result"])
    plain = raw.post({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "slow_count", "arguments": {"count": 2, "delay_ms": 0}}})
    assert plain.headers["content-type"] == "application/json" and plain.json()["id"] == 7


def test_resources_templates_and_reads(demo: Peer) -> None:
    async def scenario() -> None:
        async with Client(demo.url, mode="legacy") as client:
            first = await client.list_resources()
            assert len(first.resources) == 2 and first.next_cursor is not None
            second = await client.list_resources(cursor=first.next_cursor)
            assert second.next_cursor is None
            uris = [str(resource.uri) for resource in first.resources + second.resources]
            assert uris == ["demo://readme", "demo://config.json", "demo://logo.png"]
            readme = await client.read_resource("demo://readme")
            assert isinstance(readme.contents[0], types.TextResourceContents)
            assert readme.contents[0].text.startswith("# Demo MCP server")
            logo = await client.read_resource("demo://logo.png")
            assert isinstance(logo.contents[0], types.BlobResourceContents)
            templates = await client.list_resource_templates()
            assert [template.uri_template for template in templates.resource_templates] == ["demo://users/{user}"]
            user = await client.read_resource("demo://users/carol")
            assert isinstance(user.contents[0], types.TextResourceContents) and "carol" in user.contents[0].text

    run(scenario())


def test_reading_an_unknown_resource_is_error_32002(raw: RawClient) -> None:
    raw.initialize()
    answer = raw.request("resources/read", {"uri": "demo://nope"})
    assert types.JSONRPCError.model_validate(answer).error.code == -32002


def test_prompts_list_and_get(demo: Peer) -> None:
    async def scenario() -> None:
        async with Client(demo.url, mode="legacy") as client:
            prompts = await client.list_prompts()
            assert [prompt.name for prompt in prompts.prompts] == ["greet", "summarize"]
            greet = await client.get_prompt("greet", {"name": "Ada", "style": "pirate"})
            assert greet.messages[0].role == "user"
            assert greet.messages[0].content == types.TextContent(type="text", text="Greet Ada in a pirate way.")

    run(scenario())


def test_a_prompt_without_its_required_argument_is_invalid_params(raw: RawClient) -> None:
    raw.initialize()
    answer = raw.request("prompts/get", {"name": "greet", "arguments": {}})
    assert answer["error"]["code"] == -32602 and "name" in answer["error"]["message"]


def test_completion_for_a_prompt_argument_and_a_template(demo: Peer) -> None:
    async def scenario() -> None:
        async with Client(demo.url, mode="legacy") as client:
            styles = await client.complete(types.PromptReference(type="ref/prompt", name="greet"),
                                           {"name": "style", "value": "p"})
            assert styles.completion.values == ["pirate"]
            users = await client.complete(
                types.ResourceTemplateReference(type="ref/resource", uri="demo://users/{user}"),
                {"name": "user", "value": ""})
            assert users.completion.values == ["alice", "bob", "carol"] and users.completion.total == 3

    run(scenario())


def test_toggle_tool_announces_list_changed_on_the_get_stream(demo: Peer) -> None:
    async def scenario() -> None:
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        async with Client(demo.url, mode="legacy", message_handler=on_message) as client:
            added = await client.call_tool("toggle_tool", {})
            await changed.wait()
            tools, _ = await _all_tools(client)
            assert added.content[0] == types.TextContent(type="text", text="bonus tool added")
            assert {tool.name for tool in tools} == HTTP_TOOLS | {"bonus"}
            assert (await client.call_tool("bonus", {})).content[0] == types.TextContent(type="text", text="bonus!")
            await client.call_tool("toggle_tool", {})
            assert {tool.name for tool in (await _all_tools(client))[0]} == HTTP_TOOLS

    run(scenario())


def test_unknown_method_is_32601(raw: RawClient) -> None:
    raw.initialize()
    answer = raw.request("tools/frobnicate", request_id="x")
    assert answer == {"jsonrpc": "2.0", "id": "x", "error": {"code": -32601,
                                                             "message": "method not found: tools/frobnicate"}}


def test_unknown_tool_and_foreign_cursor_are_invalid_params(raw: RawClient) -> None:
    raw.initialize()
    assert raw.request("tools/call", {"name": "nope", "arguments": {}})["error"]["code"] == -32602
    assert raw.request("tools/list", {"cursor": "not-ours"})["error"]["code"] == -32602


def test_malformed_json_is_a_parse_error(raw: RawClient) -> None:
    raw.initialize()
    reply = raw.post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert reply.status_code == 400 and reply.json()["error"]["code"] == -32700 and reply.json()["id"] is None


@pytest.mark.parametrize("body", [[{"jsonrpc": "2.0", "id": 1, "method": "ping"}], {"id": 1, "method": "ping"},
                                  {"jsonrpc": "2.0", "id": {"no": 1}, "method": "ping"}, "ping"])
def test_batches_and_non_messages_are_invalid_requests(raw: RawClient, body: object) -> None:
    raw.initialize()
    reply = raw.post(body)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == -32600


def test_a_request_without_a_session_is_400_and_a_wrong_one_404(raw: RawClient) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    missing = raw.post(ping)
    assert missing.status_code == 400 and "Mcp-Session-Id" in missing.json()["error"]["message"]
    raw.session_id = "not-a-session"
    assert raw.post(ping).status_code == 404


def test_deleting_a_session_ends_it(raw: RawClient) -> None:
    raw.initialize()
    assert raw.request("ping") == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert raw.http.delete(raw.url, headers={"mcp-session-id": raw.session_id or ""}).status_code == 204
    assert raw.post({"jsonrpc": "2.0", "id": 2, "method": "ping"}).status_code == 404


def test_notifications_are_accepted_with_202_and_no_body(raw: RawClient) -> None:
    raw.initialize()
    reply = raw.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})
    assert reply.status_code == 202 and reply.content == b""


@pytest.mark.parametrize(("headers", "status"), [({"mcp-protocol-version": "1999-01-01"}, 400),
                                                 ({"content-type": "text/plain"}, 415),
                                                 ({"accept": "text/html"}, 406),
                                                 ({"origin": "https://evil.example"}, 403)])
def test_headers_the_endpoint_cannot_serve_are_refused(raw: RawClient, headers: dict[str, str], status: int) -> None:
    raw.initialize()
    reply = raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
    assert reply.status_code == status and reply.json()["error"]["code"] == -32600


def test_requests_are_recorded_and_faults_apply(demo: Peer, raw: RawClient) -> None:
    raw.initialize()
    raw.request("tools/call", {"name": "echo", "arguments": {"text": "recorded"}})
    recorded = httpx.get(demo.url.removesuffix("/mcp") + "/_demo/requests", timeout=30).json()
    assert any(isinstance(entry["body"], dict) and entry["body"].get("params", {}).get("arguments") == {
        "text": "recorded"} for entry in recorded)
    failed = raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"x-demo-fault": "demo-mcp-tools:503"})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == -32603
    with pytest.raises(httpx.TransportError):
        raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"x-demo-fault": "demo-mcp-tools:reset"})


def test_an_api_key_is_required_as_a_bearer_token() -> None:
    with http_demo("--api-key", "sk-mcp-demo") as peer:
        anonymous = RawClient(peer.url)
        keyed = RawClient(peer.url, headers={"authorization": "Bearer sk-mcp-demo"})
        try:
            refused = anonymous.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}})
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert keyed.initialize()["result"]["protocolVersion"] == LATEST
        finally:
            anonymous.close()
            keyed.close()


def test_stdio_demo_over_the_sdk_stdio_client() -> None:
    async def scenario() -> None:
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceListChangedNotification):
                changed.set()

        steps: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            steps.append(progress)

        server = StdioServerParameters(command=STDIO_DEMO[0], args=STDIO_DEMO[1:])
        async with Client(server, mode="legacy", message_handler=on_message) as client:
            assert client.server_info is not None and client.server_info.name == "demo-mcp-notes"
            tools, pages = await _all_tools(client)
            assert {tool.name for tool in tools} == STDIO_TOOLS and pages == 3
            saved = await client.call_tool("notes_add", {"text": "buy milk"})
            assert saved.structured_content == {"id": 1}
            await changed.wait()
            listed = await client.call_tool("notes_list", {})
            assert listed.content[0] == types.TextContent(type="text", text="1. buy milk")
            note = await client.read_resource("notes://1")
            assert isinstance(note.contents[0], types.TextResourceContents) and note.contents[0].text == "buy milk"
            done = await client.call_tool("countdown", {"count": 3, "delay_ms": 1}, progress_callback=on_progress)
            assert done.content[0] == types.TextContent(type="text", text="liftoff") and steps == [1, 2, 3]
            now = await client.call_tool("now", {})
            assert isinstance(now.content[0], types.TextContent) and now.content[0].text.endswith("Z")
            prompt = await client.get_prompt("daily_note", {"topic": "work"})
            assert prompt.messages[0].content == types.TextContent(type="text", text="Write today's note about work.")
            topics = await client.complete(types.PromptReference(type="ref/prompt", name="daily_note"),
                                           {"name": "topic", "value": "h"})
            assert topics.completion.values == ["health", "home"]

    run(scenario())


def test_stdio_demo_answers_bad_lines_with_errors() -> None:
    lines = [b"not json", b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',
             b'{"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}',
             b'{"jsonrpc": "2.0", "id": 3, "method": "nope"}']
    completed = subprocess.run(STDIO_DEMO, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60,
                               check=True)
    answers = {answer["id"]: answer for answer in map(orjson.loads, completed.stdout.splitlines())}
    assert answers[None]["error"]["code"] == -32700
    assert answers[1]["error"]["code"] == -32600
    assert answers[2]["result"]["protocolVersion"] == "2025-06-18"
    assert answers[3]["error"]["code"] == -32601


def test_stdio_demo_stops_a_cancelled_request_without_answering_it() -> None:
    lines = [b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}',
             b'{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "countdown", '
             b'"arguments": {"count": 100, "delay_ms": 5000}}}',
             b'{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}',
             b'{"jsonrpc": "2.0", "id": 3, "method": "ping"}']
    completed = subprocess.run(STDIO_DEMO, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60,
                               check=True)
    assert [orjson.loads(line)["id"] for line in completed.stdout.splitlines()] == [1, 3]


def test_a_new_get_stream_takes_over_what_the_previous_one_had_not_sent() -> None:
    async def scenario() -> None:
        outbox = Outbox(10)
        outbox.offer({"n": 1})  # no stream open: it waits
        first = outbox.listen()
        assert first.get_nowait() == {"n": 1}
        outbox.offer({"n": 2})  # the first stream's connection may be dead: nothing has taken this yet
        second = outbox.listen()
        assert first.get_nowait() is None  # the first stream ends
        assert second.get_nowait() == {"n": 2}
        outbox.release(second)
        outbox.offer({"n": 3})
        assert outbox.listen().get_nowait() == {"n": 3}

    run(scenario())
