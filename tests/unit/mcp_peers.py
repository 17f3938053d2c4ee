"""The MCP demo servers and the stdio bridge as processes, and a raw HTTP client for what the SDK won't send.

Shared by `test_demo_mcp.py` and `test_mcp_bridge.py`. Every process is started by a context manager that stops it;
every coroutine runs under `run`'s deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson

T = TypeVar("T")
DEADLINE_SECONDS = 60.0
HTTP_DEMO_NAME = "demo-mcp-tools"
STDIO_DEMO = [sys.executable, "-m", "ext_proc.demo.mcp_stdio"]
LATEST = "2025-11-25"
STDIO_TOOLS = {"notes_add", "notes_list", "now", "countdown", "crash"}
"""What the stdio demo server lists."""


@dataclass(frozen=True)
class Peer:
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ready['port']}/mcp"


@contextmanager
def started(argv: list[str]) -> Iterator[Peer]:
    """Run `argv` until the block ends; it must print one JSON "ready" line (with its port) first."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"{argv} exited with {process.wait()} before it was ready"
        yield Peer(process, orjson.loads(line))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def http_demo(*options: str) -> Any:
    return started([sys.executable, "-m", "ext_proc.demo", "--kind", "mcp", "--name", HTTP_DEMO_NAME, "--port", "0",
                    *options])


def bridge(*options: str) -> Any:
    return started([sys.executable, "-m", "ext_proc.mcp_bridge", "--port", "0", *options, "--", *STDIO_DEMO])


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a test's async part under a deadline, so a hung peer fails the test instead of the suite."""
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE_SECONDS))


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body, in order."""
    return [orjson.loads(line.removeprefix("data:").strip()) for line in text.splitlines()
            if line.startswith("data:") and line.removeprefix("data:").strip()]


class RawClient:
    """Streamable HTTP by hand: exact bodies and headers, and the HTTP status the SDK would hide."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.http = httpx.Client(timeout=30, headers=headers)
        self.session_id: str | None = None
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    def post(self, body: object, *, headers: dict[str, str] | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        sent = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if self.session_id is not None:
            sent["mcp-session-id"] = self.session_id
        return self.http.post(self.url, content=content, headers={**sent, **(headers or {})})

    def initialize(self, version: str = LATEST) -> dict[str, Any]:
        reply = self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}})
        assert reply.status_code == 200, reply.text
        self.session_id = reply.headers["mcp-session-id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202
        result: dict[str, Any] = reply.json()
        return result

    def request(self, method: str, params: dict[str, Any] | None = None, request_id: object = None) -> dict[str, Any]:
        """The response message to one request, whether it came as JSON or as the last event of an SSE stream."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id or next(self._ids), "method": method}
        if params is not None:
            message["params"] = params
        reply = self.post(message)
        assert reply.status_code == 200, reply.text
        if reply.headers["content-type"].startswith("text/event-stream"):
            return sse_messages(reply.text)[-1]
        answer: dict[str, Any] = reply.json()
        return answer
