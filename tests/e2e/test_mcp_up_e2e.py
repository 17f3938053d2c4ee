"""`babelgate up` and MCP: `up --demo` serves both demo tool servers on `/mcp` and prints how to connect, and `up -c`
runs the bridge of a stdio server without a `port`, restarts it when it dies and keeps its port across a reload;
a reload restarts only the bridges whose servers changed.
Clients are the official `mcp` SDK's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from ext_proc.config.loading import parse_config
from ext_proc.launch.mcp_bridges import Bridges, child_name
from ext_proc.launch.processes import Supervisor, free_port

from ..eventually import eventually
from .gateways import GatewayBuilder

DEADLINE_SECONDS = 60.0
BANNER_END = "asyncio.run(main())"
"""The last line `up` prints once it serves (the MCP part of its banner)."""


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE_SECONDS))


def client(url: str, key: str) -> Client:
    http = create_mcp_http_client(headers={"authorization": f"Bearer {key}"})
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


async def _list_and_call(url: str, key: str, *calls: tuple[str, dict]) -> tuple[list[str], list[types.CallToolResult]]:
    async with client(url, key) as session:
        names = [tool.name for tool in (await session.list_tools()).tools]
        return names, [await session.call_tool(name, arguments) for name, arguments in calls]


async def _refused_call(url: str, key: str, tool: str) -> MCPError:
    async with client(url, key) as session:
        try:
            await session.call_tool(tool, {})
        except MCPError as error:
            return error
    raise AssertionError(f"{tool} was called")


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    return "".join(part.text for part in result.content if isinstance(part, types.TextContent))


def _read_until(process: subprocess.Popen, lines: queue.Queue, marker: str, timeout: float = 90) -> str:
    output, deadline = "", time.monotonic() + timeout
    while marker not in output and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            output += lines.get(timeout=1)
        assert process.poll() is None, output
    assert marker in output, output
    return output


def _pump(stream: Any, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_up_demo_serves_both_demo_mcp_servers_and_says_how_to_connect() -> None:
    port, admin, ext_proc, admin_api = free_port(), free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ext_proc", "up", "--demo", "--port", str(port), "--admin-port", str(admin),
         "--ext-proc-port", str(ext_proc), "--admin-api-port", str(admin_api)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    try:
        output = _read_until(process, lines, BANNER_END)
        endpoint = f"http://127.0.0.1:{port}/mcp"
        assert f"MCP endpoint: {endpoint}" in output
        key = re.search(r"api_key=\"(bg-[^\"]+)\"", output).group(1)
        assert f'claude mcp add --transport http babelgate {endpoint} --header "Authorization: Bearer {key}"' in output
        mcp_config = json.loads(re.search(r"--mcp-config '([^']+)'", output).group(1))
        assert mcp_config == {"mcpServers": {"babelgate": {
            "type": "http", "url": endpoint, "headers": {"Authorization": f"Bearer {key}"}}}}
        assert f'streamable_http_client("{endpoint}", http_client=http)' in output
        names, (echoed, noted) = run(_list_and_call(endpoint, key, ("tools__echo", {"text": "via the demo"}),
                                                    ("local__notes_add", {"text": "a note"})))
        assert {"tools__echo", "tools__add", "local__notes_add", "local__now"} <= set(names), names
        assert _text(echoed) == "via the demo"
        assert _text(noted) == "saved note 1" and noted.structured_content == {"id": 1}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(30) == 0
    for closed_port in (port, admin, ext_proc, admin_api):
        assert _closed(closed_port), f"port {closed_port} still open after stop"


# -- a stdio server of the user's, no port given -------------------------------------------------------------------

NOTES_TOKEN_ENV = "BG_E2E_NOTES_TOKEN"
NOTES_TOKEN = "notes-token-from-a-secret-ref"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _argv(pid: int) -> list[str]:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"))[:-1]
    except OSError:
        return []


def _bridge(up_pid: int) -> tuple[int, list[str]] | None:
    """The bridge `babelgate up` runs (its pid and argv), once there is a live one."""
    for pid in _children(up_pid):
        argv = _argv(pid)
        if "ext_proc.mcp_bridge" in argv:
            return pid, argv
    return None


def _served_config(up_pid: int) -> Path:
    """The config file the ext_proc servers of `up` read."""
    argv = next(_argv(pid) for pid in _children(up_pid) if "serve" in _argv(pid))
    return Path(argv[argv.index("-c") + 1])


def test_up_runs_restarts_and_keeps_the_port_of_a_stdio_servers_bridge(tmp_path: Path) -> None:
    with GatewayBuilder(tmp_path, config_name="babelgate.yaml") as build:
        build.backend("oa", build.demo("openai"))
        build.route("gpt-4o", ("oa", "gpt-4o"))
        key = build.key("me")
        # the server starts only if its `env` SecretRef reached it
        check_then_serve = f'test "${{NOTES}}" = "{NOTES_TOKEN}" && exec "$0" -m ext_proc.demo.mcp_stdio'
        build.set(mcp={"servers": [{"name": "notes", "command": ["sh", "-c", check_then_serve, sys.executable],
                                    "env": {"NOTES": {"env": NOTES_TOKEN_ENV}}}]})
        build.env[NOTES_TOKEN_ENV] = NOTES_TOKEN
        gateway = build.up()
        assert gateway.up is not None
        up_pid, endpoint = gateway.up.process.pid, f"{gateway.url}/mcp"
        names, (now,) = run(_list_and_call(endpoint, key, ("notes__now", {})))
        assert "notes__notes_add" in names and re.match(r"\d{4}-\d\d-\d\dT", _text(now))

        first_pid, first_argv = _bridge(up_pid)
        served = _served_config(up_pid)
        port = yaml.safe_load(served.read_text())["mcp"]["servers"][0]["port"]
        assert first_argv[first_argv.index("--port") + 1] == "0" and port > 0
        assert yaml.safe_load(build.config_path.read_text())["mcp"]["servers"][0].get("port") is None

        os.kill(first_pid, signal.SIGKILL)
        restarted = eventually(lambda: (found := _bridge(up_pid)) is not None and found[0] != first_pid and found,
                               what="the supervisor restarts the killed bridge")
        assert restarted[1][restarted[1].index("--port") + 1] == str(port)  # where Envoy and the servers look
        eventually(lambda: _text(run(_list_and_call(endpoint, key, ("notes__now", {})))[1][0]),
                   what="a tool call through the restarted bridge")

        # a reload (a new key) keeps the bridge and its port: the servers' copy is rewritten with it
        other = build.key("other")
        build.write()
        eventually(lambda: _text(run(_list_and_call(endpoint, other, ("notes__notes_list", {})))[1][0]),
                   what="the reloaded config serves the new key")
        assert yaml.safe_load(served.read_text())["mcp"]["servers"][0]["port"] == port
        assert _bridge(up_pid)[0] == restarted[0]

        # SIGHUP reloads the servers and Envoy, and leaves the bridge alone
        os.kill(up_pid, signal.SIGHUP)
        eventually(lambda: "reloaded (SIGHUP)" in (tmp_path / "up.log").read_text(), what="the SIGHUP reload")
        assert _bridge(up_pid)[0] == restarted[0]
        assert _text(run(_list_and_call(endpoint, key, ("notes__now", {})))[1][0])

        # an edited allow-list holds from the reload on, for lists and calls, with nothing restarted
        next(entry for entry in build.config["virtual_keys"] if entry["id"] == "me")["mcp_tools"] = ["notes__now"]
        build.write()
        eventually(lambda: run(_list_and_call(endpoint, key))[0] == ["notes__now"],
                   what="the reloaded allow-list narrows the key's tools")
        assert "Unknown tool" in str(run(_refused_call(endpoint, key, "notes__notes_list")))
        assert _bridge(up_pid)[0] == restarted[0]


def test_a_reload_restarts_only_the_bridges_whose_servers_changed(tmp_path: Path) -> None:
    """What `Bridges.start` does on each reload `up` accepts: unchanged servers keep their bridge (and port), a
    changed one gets a new bridge, a dropped one's bridge stops, a new one's starts."""
    def config(servers: list[dict]) -> Any:
        return parse_config(yaml.safe_dump({
            "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}],
            "mcp": {"servers": servers}}))

    def stdio(name: str, *args: str) -> dict:
        return {"name": name, "command": [sys.executable, "-m", "ext_proc.demo.mcp_stdio"], "args": list(args)}

    supervisor = Supervisor(log_dir=tmp_path)
    try:
        bridges = Bridges(supervisor)
        first = bridges.start(config([stdio("kept"), stdio("changed"), stdio("dropped")]))
        pids = {child.name: child.process.pid for child in supervisor.children}
        ports = {server.name: server.port for server in first.mcp.servers}
        assert all(ports.values()) and len(set(ports.values())) == 3
        second = bridges.start(config([stdio("kept"), stdio("changed", "--name", "renamed"), stdio("new")]))
        now = {child.name: child for child in supervisor.children}
        assert set(now) == {child_name(name) for name in ("kept", "changed", "new")}
        assert now[child_name("kept")].process.pid == pids[child_name("kept")]
        assert now[child_name("changed")].process.pid != pids[child_name("changed")]
        assert {s.name: s.port for s in second.mcp.servers}["kept"] == ports["kept"]
        assert all(child.alive() for child in now.values())
        assert not Path(f"/proc/{pids[child_name('dropped')]}").exists()  # stopped and reaped
    finally:
        supervisor.stop_all()
