"""The MCP endpoint through real Envoy, driven by the official `mcp` Python SDK client: one virtual server over a
Streamable HTTP demo server (with a bearer the gateway adds) and a stdio demo server behind the bridge, two ext_proc
processes sharing sessions in Redis, call limits, guardrails, and the request log, metrics and spans of each call."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import orjson
import pyarrow.parquet as pq
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from ext_proc.auth.sealing import KEY_ENV
from ext_proc.demo.mcp_tools import SECRET_EMAIL
from ext_proc.launch.processes import free_port

from ..eventually import eventually
from .gateways import Gateway, GatewayBuilder
from .support import room_in_window, wait_for_the_full_mcp_catalog
from .test_tracing_e2e import Collector

DEADLINE_SECONDS = 60.0
MCP_API_KEY = "demo-mcp-secret"
LATEST = "2025-11-25"
SHARED_METADATA_KEY = "mcp-e2e-shared-metadata-key"
SOME_TOOL_OF_EVERY_SERVER = {"tools__echo", "tools__add", "tools__slow_count", "fragile__echo", "local__notes_add"}
IN_A_ROW = 8
"""Consecutive answers that must agree before a test trusts that both ext_proc processes (each with its own catalog)
give them: requests are spread over the processes, so a run this long is all but sure to have reached both."""


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE_SECONDS))


def client(url: str, secret: str, **options: Any) -> Client:
    """The SDK's client with a key as its bearer token (an `httpx2` client is how the SDK takes headers)."""
    http = create_mcp_http_client(headers={"authorization": f"Bearer {secret}"})
    return Client(streamable_http_client(f"{url}/mcp", http_client=http), **options)


@dataclass
class Setup:
    gateway: Gateway
    other: Gateway
    """A second gateway (its own Envoy and ext_proc) on the same Redis: another process continues a session."""
    workdir: Path
    metrics_port: int
    collector: Collector
    tools_url: str
    """The `tools` demo server itself (its `/_demo/requests` lists what it received)."""

    def client(self, key_id: str = "everything", **options: Any) -> Client:
        return client(self.gateway.url, self.gateway._secret(key_id), **options)

    def raw(self, key_id: str = "everything", gateway: Gateway | None = None) -> RawMcp:
        target = gateway or self.gateway
        return RawMcp(target.url, self.gateway._secret(key_id))


class RawMcp:
    """Streamable HTTP by hand, for what the SDK won't send and the statuses it hides."""

    def __init__(self, url: str, secret: str | None) -> None:
        self.url = f"{url}/mcp"
        self.headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if secret is not None:
            self.headers["authorization"] = f"Bearer {secret}"

    def initialize(self) -> str:
        answer = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        assert answer.status_code == 200, answer.text
        session = answer.headers["mcp-session-id"]
        self.headers.update({"mcp-session-id": session, "mcp-protocol-version": LATEST})
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        return session

    def post(self, body: object, **headers: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.post(self.url, content=content, headers={**self.headers, **headers}, timeout=30)

    def call(self, method: str, params: dict | None = None, message_id: int = 1) -> dict:
        answer = self.post({"jsonrpc": "2.0", "id": message_id, "method": method, "params": params or {}})
        kind = answer.headers.get("content-type", "")
        if kind.startswith("text/event-stream"):
            messages = [orjson.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")]
            return next(m for m in messages if m.get("id") == message_id)
        return answer.json()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("mcp")
    collector = Collector()
    metrics_port = free_port()
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    with GatewayBuilder(workdir / "a", processes=2) as build, GatewayBuilder(workdir / "b") as second:
        build.on_stop(collector.server.shutdown)
        redis = build.redis()
        for each in (build, second):
            each.env[KEY_ENV] = SHARED_METADATA_KEY  # list cursors and sessions work across both gateways
            each.backend("openai", each.demo("openai"))
            each.route("gpt-4o", ("openai", "gpt-4o"))
        build.key("everything")
        build.key("echo-only", mcp_tools=["tools__echo"])
        build.key("local-only", mcp_servers=["local"])
        build.key("two-calls", mcp_limits=[{"window": "minute", "calls": 2}])
        tools = build.mcp_server("tools", api_key=MCP_API_KEY)
        build.mcp_stdio_server("local")
        build.mcp_server("fragile")
        build.set(mcp={"call_timeout": "4s", "log_content": True, "page_size": 3,
                       "limits": {"per_tool": [{"tool": "tools__add", "window": "minute", "calls": 3}]},
                       "guardrails": [{"name": "pii", "pii": ["email"], "mode": "redact",
                                       "apply_to": ["request", "response"]},
                                      {"name": "no-drop", "deny_words": ["drop table"], "mode": "block"}]},
                  telemetry={"request_log": {"destination": str(workdir / "requests"), "flush_seconds": "200ms"},
                             "metrics": {"prometheus_port": metrics_port},
                             "traces": {"otlp_endpoint": collector.url}})
        second.redis(redis)
        second.config["virtual_keys"] = build.config["virtual_keys"]
        second.keys.update(build.keys)
        second.config["mcp"] = build.config["mcp"]
        second.env.update(build.env)
        gateway = build.start()
        other = second.start()
        for each in (gateway, other):  # a cold process answers its first lists with the servers that answered it
            wait_for_the_full_mcp_catalog(each.url, gateway._secret("everything"), SOME_TOOL_OF_EVERY_SERVER,
                                          in_a_row=IN_A_ROW)
        yield Setup(gateway, other, workdir, metrics_port, collector, tools["url"])


async def _tool_names(session: Client) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        page = await session.list_tools(cursor=cursor)
        names += [tool.name for tool in page.tools]
        cursor = page.next_cursor
        if not cursor:
            return names


def _call(setup: Setup, tool: str, arguments: dict, key_id: str = "everything", **options: Any) -> Any:
    async def scenario() -> Any:
        async with setup.client(key_id, mode="legacy") as session:
            await _tool_names(session)  # the SDK checks structured output against schemas it has listed
            try:
                return await session.call_tool(tool, arguments, **options)
            except MCPError as error:
                return error

    return run(scenario())


# -- aggregation ------------------------------------------------------------------------------------------------------


def test_tools_of_every_server_are_listed_namespaced_over_pages(setup: Setup) -> None:
    async def scenario() -> list[str]:
        async with setup.client(mode="legacy") as session:
            assert session.protocol_version == LATEST
            return await _tool_names(session)

    names = run(scenario())
    assert {"tools__echo", "tools__add", "tools__slow_count", "fragile__echo"} <= set(names)
    assert any(name.startswith("local__") for name in names)
    assert len(names) == len(set(names))


def test_a_tool_call_reaches_the_upstream_with_its_own_name_and_the_gateways_bearer(setup: Setup) -> None:
    result = _call(setup, "tools__echo", {"text": "through the gateway"})
    assert result.content == [types.TextContent(type="text", text="through the gateway")]


def test_a_stdio_servers_tool_is_called_through_the_bridge(setup: Setup) -> None:
    async def scenario() -> Any:
        async with setup.client(mode="legacy") as session:
            await _tool_names(session)
            added = await session.call_tool("local__notes_add", {"text": "via stdio"})
            return added, await session.call_tool("local__notes_list", {})

    added, listed = run(scenario())
    assert not added.is_error and "via stdio" in str(listed.content)


def test_progress_notifications_stream_before_the_result(setup: Setup) -> None:
    events: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        events.append((progress, total))

    result = _call(setup, "tools__slow_count", {"count": 3, "delay_ms": 1}, progress_callback=on_progress)
    assert result.content[0].text == "counted to 3"
    assert events == [(1, 3), (2, 3), (3, 3)]


def test_resources_templates_prompts_and_completion(setup: Setup) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with setup.client(mode="legacy") as session:
            resources = await session.list_resources()
            templates = await session.list_resource_templates()
            prompts = await session.list_prompts()
            first = resources.resources[0]
            read = await session.read_resource(first.uri)
            greeting = await session.get_prompt("tools__greet", {"name": "Ada"})
            completion = await session.complete(types.PromptReference(type="ref/prompt", name="tools__greet"),
                                                {"name": "style", "value": ""})
            return resources, templates, prompts, read, greeting, completion

    resources, templates, prompts, read, greeting, completion = run(scenario())
    assert resources.resources and templates.resource_templates
    assert "tools__greet" in [prompt.name for prompt in prompts.prompts]
    assert read.contents and read.contents[0].uri == resources.resources[0].uri
    assert "Ada" in str(greeting.messages[0].content)
    assert completion.completion.values


def test_an_upstreams_list_changed_reaches_the_merged_list(setup: Setup) -> None:
    """`toggle_tool` adds (then removes) a tool and says so on the server's own stream, which the gateway reads."""
    raw = setup.raw()
    raw.initialize()

    def all_tools() -> set[str]:
        names, cursor = set(), None
        while True:
            page = raw.call("tools/list", {"cursor": cursor} if cursor else {})["result"]
            names |= {tool["name"] for tool in page["tools"]}
            cursor = page.get("nextCursor")
            if not cursor:
                return names

    def bonus_called_every_time() -> dict | None:
        """The last of IN_A_ROW calls of the new tool if all of them succeeded: each process learns of the change
        on its own upstream stream, so until both have, a call can reach one that does not know the tool yet."""
        for _ in range(IN_A_ROW):
            answer = raw.call("tools/call", {"name": "tools__bonus", "arguments": {}})
            if "result" not in answer:
                return None
        return answer

    def bonus_gone_every_time() -> bool:
        return all("tools__bonus" not in all_tools() for _ in range(IN_A_ROW))

    assert "tools__bonus" not in all_tools()
    assert "result" in raw.call("tools/call", {"name": "tools__toggle_tool", "arguments": {}})
    eventually(lambda: "tools__bonus" in all_tools(), timeout=30, what="the new tool is listed")
    called = eventually(bonus_called_every_time, timeout=30, what=f"{IN_A_ROW} calls in a row of the new tool")
    assert called["result"]["content"] == [{"type": "text", "text": "bonus!"}]
    raw.call("tools/call", {"name": "tools__toggle_tool", "arguments": {}})
    eventually(bonus_gone_every_time, timeout=30, what=f"the removed tool gone from {IN_A_ROW} listings in a row")


def test_a_stateless_client_discovers_and_calls(setup: Setup) -> None:
    """The SDK's default (`auto`) asks `server/discover` first: the gateway speaks the stateless revision too."""
    async def scenario() -> tuple[str | None, list[str], Any]:
        async with setup.client() as session:
            names = await _tool_names(session)
            return session.protocol_version, names, await session.call_tool("tools__echo", {"text": "stateless"})

    version, names, result = run(scenario())
    assert version == "2026-07-28"
    assert "tools__echo" in names and result.content[0].text == "stateless"


def test_a_session_and_a_cursor_continue_on_another_gateway_process(setup: Setup) -> None:
    first = setup.raw()
    first.initialize()
    page = first.call("tools/list")["result"]
    assert page["nextCursor"]
    other = setup.raw(gateway=setup.other)
    other.headers.update({k: v for k, v in first.headers.items() if k.startswith("mcp-")})
    rest = other.call("tools/list", {"cursor": page["nextCursor"]})["result"]
    assert {t["name"] for t in rest["tools"]}.isdisjoint({t["name"] for t in page["tools"]})
    echoed = other.call("tools/call", {"name": "tools__echo", "arguments": {"text": "elsewhere"}})
    assert echoed["result"]["content"][0]["text"] == "elsewhere"


def test_the_upstream_gets_the_gateways_credential_and_never_the_clients(setup: Setup) -> None:
    marker = "credential-check-marker"
    _call(setup, "tools__echo", {"text": marker})
    recorded = httpx.get(setup.tools_url.removesuffix("/mcp") + "/_demo/requests", timeout=30).json()
    entry = next(e for e in recorded if marker in orjson.dumps(e.get("body")).decode())
    headers = {name.lower(): value for name, value in entry["headers"].items()}
    assert headers["authorization"] == f"Bearer {MCP_API_KEY}"
    assert entry["body"]["params"]["name"] == "echo"
    sent = orjson.dumps(entry).decode()
    assert setup.gateway._secret("everything") not in sent and "x-babelgate" not in sent
    raw = setup.raw()
    raw.initialize()
    answer = raw.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                       "params": {"name": "tools__echo", "arguments": {"text": "headers"}}})
    assert not [name for name in answer.headers if name.startswith(("x-demo", "x-envoy", "mcp-session"))]


def test_a_stdio_servers_bridge_serves_only_the_gateway(setup: Setup) -> None:
    stack = setup.gateway.stack
    assert stack is not None and stack.config.mcp is not None
    port = next(server.port for server in stack.config.mcp.servers if server.name == "local")
    answer = httpx.post(f"http://127.0.0.1:{port}/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}',
                        headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
                        timeout=30)
    assert answer.status_code == 401


def test_a_client_cannot_route_itself_to_an_mcp_server(setup: Setup) -> None:
    """The routing header is the route stage's: a client's own is dropped and never reaches an upstream."""
    answer = httpx.post(f"{setup.gateway.url}/v1/anything", timeout=30, content=b"{}", headers={
        "x-babelgate-int-mcp": "tools", "authorization": f"Bearer {setup.gateway._secret('everything')}"})
    assert answer.status_code == 404
    forged = httpx.post(f"{setup.gateway.url}/mcp/", timeout=30, content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
                        headers={"x-babelgate-int-mcp": "tools", "content-type": "application/json"})
    assert forged.status_code == 401


# -- policy -----------------------------------------------------------------------------------------------------------


def test_a_key_sees_and_calls_only_its_tools(setup: Setup) -> None:
    async def scenario() -> list[str]:
        async with setup.client("echo-only", mode="legacy") as session:
            return await _tool_names(session)

    assert run(scenario()) == ["tools__echo"]
    refused = _call(setup, "tools__add", {"a": 1, "b": 2}, key_id="echo-only")
    assert isinstance(refused, MCPError) and "Unknown tool" in str(refused)
    assert _call(setup, "tools__echo", {"text": "allowed"}, key_id="echo-only").content[0].text == "allowed"


def test_a_server_allow_list_hides_other_servers_resources_and_prompts(setup: Setup) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        async with setup.client("local-only", mode="legacy") as session:
            prompts = [prompt.name for prompt in (await session.list_prompts()).prompts]
            return await _tool_names(session), prompts

    tools, prompts = run(scenario())
    assert tools and all(name.startswith("local__") for name in tools)
    assert all(name.startswith("local__") for name in prompts)
    raw = setup.raw("local-only")
    raw.initialize()
    assert raw.call("prompts/get", {"name": "tools__greet", "arguments": {"name": "x"}})["error"]["code"] == -32602


def test_a_keys_call_limit_refuses_the_call_after_the_limit(setup: Setup) -> None:
    raw = setup.raw("two-calls")
    raw.initialize()
    room_in_window("minute")  # the limit counts per fixed minute: all three calls in one
    answers = [raw.call("tools/call", {"name": "tools__echo", "arguments": {"text": str(n)}}, message_id=n)
               for n in range(3)]
    assert [("result" in answer) for answer in answers] == [True, True, False]
    assert answers[2]["error"]["code"] == -32082 and "calls per minute" in answers[2]["error"]["message"]


def test_a_per_tool_limit_counts_that_tool_only(setup: Setup) -> None:
    raw = setup.raw()
    raw.initialize()
    room_in_window("minute")  # the limit counts per fixed minute: all four calls in one
    answers = [raw.call("tools/call", {"name": "tools__add", "arguments": {"a": n, "b": 1}}, message_id=n)
               for n in range(4)]
    assert answers[3]["error"]["code"] == -32082
    assert "result" in raw.call("tools/call", {"name": "tools__echo", "arguments": {"text": "still fine"}})


def test_a_guardrail_redacts_an_argument_and_a_result(setup: Setup) -> None:
    echoed = _call(setup, "tools__echo", {"text": "mail bob@example.com now"})
    assert "bob@example.com" not in echoed.content[0].text and "mail" in echoed.content[0].text
    secret = _call(setup, "tools__secret_lookup", {"user": "bob"})
    assert SECRET_EMAIL not in secret.content[0].text


def test_a_blocking_guardrail_refuses_the_call(setup: Setup) -> None:
    refused = _call(setup, "tools__echo", {"text": "please DROP TABLE users"})
    assert isinstance(refused, MCPError) and refused.error.code == -32087


# -- bad input --------------------------------------------------------------------------------------------------------


def test_no_key_is_401_with_a_json_rpc_error(setup: Setup) -> None:
    answer = RawMcp(setup.gateway.url, None).post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == -32080
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, -32700),
    (b'{"jsonrpc": "2.0", "id": 1}', 400, -32600),
    (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', 400, -32600),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "no/such/method"}', 200, -32601),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nobody__echo"}}', 200, -32602),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}', 200, -32602),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": "forged"}}', 200, -32602),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///etc/passwd"}}', 200,
     -32002),
])
def test_bad_requests_get_json_rpc_errors(setup: Setup, body: bytes, status: int, code: int) -> None:
    raw = setup.raw()
    raw.initialize()
    answer = raw.post(body)
    assert answer.status_code == status and answer.json()["error"]["code"] == code


def test_oversized_arguments_are_refused_before_the_upstream(setup: Setup) -> None:
    raw = setup.raw()
    raw.initialize()
    answer = raw.call("tools/call", {"name": "tools__echo", "arguments": {"text": "x" * (1100 * 1024)}})
    assert answer["error"]["code"] == -32083


def test_a_body_past_envoys_buffer_is_a_413_json_rpc_error(setup: Setup) -> None:
    raw = setup.raw()
    raw.initialize()
    answer = raw.post(b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"x" * (6 << 20) + b'"}}')
    assert answer.status_code == 413 and answer.json()["error"]["code"] == -32083


def test_sessions_are_required_checked_and_owned(setup: Setup) -> None:
    raw = setup.raw()
    assert raw.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).status_code == 400
    unknown = raw.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, **{"mcp-session-id": "x" * 43})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == -32086
    session = raw.initialize()
    thief = setup.raw("echo-only")
    stolen = thief.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, **{"mcp-session-id": session})
    assert stolen.status_code == 404
    assert httpx.delete(raw.url, headers=raw.headers, timeout=30).status_code == 200
    assert raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 404


def test_get_stream_is_not_offered(setup: Setup) -> None:
    answer = httpx.get(f"{setup.gateway.url}/mcp", headers=setup.raw().headers, timeout=30)
    assert answer.status_code == 405 and "POST" in answer.headers["allow"]


def test_an_upstream_that_hangs_is_a_timeout_error(setup: Setup) -> None:
    raw = setup.raw()
    raw.initialize()
    answer = raw.call("tools/call", {"name": "tools__slow_count", "arguments": {"count": 3, "delay_ms": 5000}})
    assert answer["error"]["code"] == -32085
    assert "result" in raw.call("tools/call", {"name": "tools__echo", "arguments": {"text": "after"}})


def test_a_dead_upstream_is_an_error_and_disturbs_no_other(setup: Setup) -> None:
    """Runs last of the upstream tests: it stops the `fragile` server."""
    raw = setup.raw()
    raw.initialize()
    assert "result" in raw.call("tools/call", {"name": "fragile__echo", "arguments": {"text": "alive"}})
    fragile = next(child for child in setup.gateway.supervisor.children if child.name == "mcp-fragile")
    fragile.process.kill()
    fragile.process.wait(timeout=30)
    answer = raw.call("tools/call", {"name": "fragile__echo", "arguments": {"text": "dead"}})
    assert answer["error"]["code"] == -32084 and "fragile" in answer["error"]["message"]
    assert "result" in raw.call("tools/call", {"name": "tools__echo", "arguments": {"text": "others fine"}})
    assert "tools__echo" in [t["name"] for t in raw.call("tools/list")["result"]["tools"]]


# -- observability ----------------------------------------------------------------------------------------------------


def test_the_request_log_metrics_and_spans_have_the_call(setup: Setup) -> None:
    marker = "observed-call-marker"
    _call(setup, "tools__echo", {"text": marker})

    def logged() -> list[dict]:
        files = sorted((setup.workdir / "requests").rglob("*.parquet"))
        rows = [row for path in files for row in pq.read_table(path).to_pylist()]
        return [row for row in rows if row["mcp_method"] == "tools/call" and marker in (row["prompt"] or "")]

    rows = eventually(logged, timeout=30, what="the request log has the call")
    row = rows[0]
    assert (row["endpoint"], row["mcp_server"], row["mcp_target"], row["key_id"], row["status"]) == (
        "mcp", "tools", "tools__echo", "everything", 200)
    assert row["bytes_in"] > 0 and row["bytes_out"] > 0 and marker in row["completion"] and row["mcp_session"]

    def scraped() -> str:
        """The scrape of whichever process counted a call of `tools__echo` (each of the two serves its own, on
        `metrics_port` + its index)."""
        for port in (setup.metrics_port, setup.metrics_port + 1):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            if 'gen_ai_tool_name="tools__echo"' in text:
                return text
        return ""

    metrics = eventually(scraped, timeout=30, what="Prometheus has the MCP call")
    assert "babelgate_mcp_requests_total" in metrics and "mcp_server_operation_duration_seconds" in metrics

    def attributes(span: Any) -> dict[str, Any]:
        return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}

    def span() -> Any:
        """This call's span (other tests of the module call the same tool, in whichever order they run)."""
        return next((s for s in setup.collector.spans if s.name == "tools/call tools__echo"
                     and attributes(s).get("mcp.session.id") == row["mcp_session"]), None)

    found = attributes(eventually(span, timeout=30, what="a span for the call"))
    assert found["mcp.method.name"] == "tools/call" and found["gen_ai.tool.name"] == "tools__echo"
    assert found["babelgate.mcp.server"] == "tools"
