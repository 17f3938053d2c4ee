"""The stdio bridge (`python -m ext_proc.mcp_bridge -- <command>`) serves the stdio demo over Streamable HTTP: the
official `mcp` SDK client sees an ordinary HTTP MCP server, and the bridge's own behaviour (ids, progress as SSE,
the GET stream, sessions, timeouts, the child's death, size limits, the child's log) holds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp.types as types
import pytest
from mcp import Client

from tests.eventually import eventually
from tests.unit.mcp_peers import LATEST, STDIO_TOOLS, Peer, RawClient, bridge, run, sse_messages


@pytest.fixture(scope="module")
def bridged() -> Iterator[Peer]:
    with bridge() as peer:
        yield peer


@pytest.fixture
def raw(bridged: Peer) -> Iterator[RawClient]:
    client = RawClient(bridged.url)
    try:
        yield client
    finally:
        client.close()


def test_ready_line_names_the_bridge_its_port_and_its_child(bridged: Peer) -> None:
    assert bridged.ready["kind"] == "mcp-bridge" and bridged.ready["port"] > 0
    assert Path(f"/proc/{bridged.ready['pid']}").exists()


def test_sdk_client_uses_the_stdio_server_through_the_bridge(bridged: Peer) -> None:
    async def scenario() -> None:
        steps: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            steps.append(progress)

        async with Client(bridged.url) as client:
            assert client.protocol_version == LATEST
            assert client.server_info is not None and client.server_info.name == "demo-mcp-notes"
            names: set[str] = set()
            page = await client.list_tools()
            names.update(tool.name for tool in page.tools)
            while page.next_cursor is not None:
                page = await client.list_tools(cursor=page.next_cursor)
                names.update(tool.name for tool in page.tools)
            assert names == STDIO_TOOLS
            saved = await client.call_tool("notes_add", {"text": "through the bridge"})
            assert isinstance(saved, types.CallToolResult) and saved.structured_content is not None
            done = await client.call_tool("countdown", {"count": 3, "delay_ms": 1}, progress_callback=on_progress)
            assert done.content[0] == types.TextContent(type="text", text="liftoff") and steps == [1, 2, 3]
            resources = await client.list_resources()
            assert resources.resources and str(resources.resources[0].uri) == "notes://1"
            prompt = await client.get_prompt("daily_note", {"topic": "travel"})
            assert prompt.messages[0].role == "user"
            topics = await client.complete(types.PromptReference(type="ref/prompt", name="daily_note"),
                                           {"name": "topic", "value": "w"})
            assert topics.completion.values == ["work"]

    run(scenario())


def test_answers_keep_the_clients_id_and_progress_makes_an_sse_answer(raw: RawClient) -> None:
    assert types.InitializeResult.model_validate(raw.initialize()["result"]).protocol_version == LATEST
    plain = raw.post({"jsonrpc": "2.0", "id": "mine-1", "method": "tools/call",
                      "params": {"name": "now", "arguments": {}}})
    assert plain.headers["content-type"] == "application/json" and plain.json()["id"] == "mine-1"
    types.CallToolResult.model_validate(plain.json()["result"])
    streamed = raw.post({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {
        "name": "countdown", "arguments": {"count": 2, "delay_ms": 0}, "_meta": {"progressToken": 5}}})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(streamed.text)
    assert [message.get("method") for message in messages] == ["notifications/progress"] * 2 + [None]
    assert types.ProgressNotificationParams.model_validate(messages[0]["params"]).progress_token == 5
    assert messages[-1]["id"] == 41


def test_list_changed_from_the_child_reaches_the_get_stream(bridged: Peer) -> None:
    async def scenario() -> None:
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceListChangedNotification):
                changed.set()

        async with Client(bridged.url, mode="legacy", message_handler=on_message) as client:
            await client.call_tool("notes_add", {"text": "announce me"})
            await changed.wait()

    run(scenario())


def test_unknown_method_is_32601_and_malformed_json_a_parse_error(raw: RawClient) -> None:
    raw.initialize()
    assert raw.request("nope/nope", request_id="q")["error"]["code"] == -32601
    broken = raw.post(b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700


def test_sessions_missing_is_400_wrong_is_404(raw: RawClient) -> None:
    raw.initialize()
    session_id = raw.session_id
    raw.session_id = None
    assert raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 400
    raw.session_id = "someone-else"
    assert raw.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code == 404
    raw.session_id = session_id
    assert raw.request("ping")["result"] == {}


def test_notifications_are_forwarded_with_202(raw: RawClient) -> None:
    raw.initialize()
    reply = raw.post({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}})
    assert reply.status_code == 202 and reply.content == b""


def test_a_request_the_child_does_not_answer_in_time_is_an_error(tmp_path: Path) -> None:
    with bridge("--request-timeout", "1") as peer:
        client = RawClient(peer.url)
        try:
            client.initialize()
            answer = client.request("tools/call", {"name": "countdown", "arguments": {"count": 30, "delay_ms": 1000}})
            assert answer["error"]["code"] == -32001 and "within 1s" in answer["error"]["message"]
            assert client.request("ping")["result"] == {}
        finally:
            client.close()


def test_the_bridge_exits_nonzero_when_its_child_dies(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with bridge("--child-log", str(log)) as peer:
        client = RawClient(peer.url)
        try:
            client.initialize()
            eventually(lambda: "demo-mcp-notes: ready" in log.read_text(), what="the child's stderr in the log")
            answer = client.request("tools/call", {"name": "crash", "arguments": {}}, request_id="boom")
            assert answer["id"] == "boom" and answer["error"]["code"] == -32000
            assert "status 3" in answer["error"]["message"]
            assert peer.process.wait(timeout=30) == 1
            assert "crash tool called" in log.read_text()
        finally:
            client.close()


def test_an_oversized_post_is_refused_413() -> None:
    with bridge("--max-message-bytes", "2000") as peer:
        client = RawClient(peer.url)
        try:
            client.initialize()
            big = client.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                               "params": {"name": "notes_add", "arguments": {"text": "x" * 5000}}})
            assert big.status_code == 413
        finally:
            client.close()


def test_sigterm_stops_the_bridge_and_its_child_cleanly() -> None:
    with bridge() as peer:
        child = Path(f"/proc/{peer.ready['pid']}")
        peer.process.terminate()
        assert peer.process.wait(timeout=30) == 0
        eventually(lambda: not child.exists(), what="the child to be gone")


def test_the_bridge_needs_a_command() -> None:
    completed = subprocess.run([sys.executable, "-m", "ext_proc.mcp_bridge", "--port", "0"], capture_output=True,
                               timeout=60)
    assert completed.returncode == 2 and b"command" in completed.stderr


def test_with_an_api_key_env_every_request_needs_the_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_BRIDGE_KEY", "bridge-secret")
    with bridge("--api-key-env", "BG_TEST_BRIDGE_KEY") as peer:
        ping = b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}'
        for headers in ({}, {"authorization": "Bearer wrong"}):
            refused = httpx.post(peer.url, content=ping, timeout=30, headers={
                "content-type": "application/json", "accept": "application/json, text/event-stream", **headers})
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        keyed = RawClient(peer.url, headers={"authorization": "Bearer bridge-secret"})
        try:
            keyed.initialize()
        finally:
            keyed.close()


def test_an_api_key_env_that_is_not_set_stops_the_bridge() -> None:
    process = subprocess.run([sys.executable, "-m", "ext_proc.mcp_bridge", "--port", "0", "--api-key-env",
                              "BG_TEST_UNSET_BRIDGE_KEY", "--", sys.executable, "-c", "pass"],
                             capture_output=True, timeout=60)
    assert process.returncode == 2 and b"BG_TEST_UNSET_BRIDGE_KEY" in process.stderr
