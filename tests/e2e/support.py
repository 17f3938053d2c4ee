"""Small helpers shared by the end-to-end tests (gateways themselves are built by `gateways.GatewayBuilder`)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import httpx
import orjson

from ext_proc.limits.windows import window_bounds

from ..eventually import eventually

MCP_PROTOCOL_VERSION = "2025-11-25"


def fault(spec: str) -> dict[str, str]:
    """Per-request fault injection for the demo providers (`extra_headers=` for the openai SDK)."""
    return {"x-demo-fault": spec}


def room_in_window(window: str, needed: float = 8.0) -> None:
    """Wait, if need be, until the current fixed UTC `window` ('minute', 'hour', 'day') has `needed` seconds left.

    Rate limits count in fixed windows that every process agrees on (`ext_proc.limits.windows`, the same function
    used here), so a test that spends a limit and then expects the refusal, or an exact count, must not straddle a
    boundary: it calls this first, and at worst waits `needed` seconds for the next window to begin."""
    while True:
        now = time.time()
        start, end = window_bounds(window, now)
        assert needed < end - start, f"a {window} can never have {needed:g}s left"
        if end - now >= needed:
            return
        time.sleep(end - now + 0.01)  # until the next window, which has all its length left


def mcp_tool_names(url: str, secret: str) -> set[str]:
    """The tools (all pages) a new session on the MCP endpoint of the gateway at `url` is offered, by hand over
    Streamable HTTP."""
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json",
               "accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:

        def request(method: str, params: dict, message_id: int) -> dict:
            answer = http.post("/mcp", content=orjson.dumps({"jsonrpc": "2.0", "id": message_id, "method": method,
                                                             "params": params}))
            answer.raise_for_status()
            if answer.headers.get("content-type", "").startswith("text/event-stream"):
                events = [orjson.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")]
                return next(event for event in events if event.get("id") == message_id)
            return dict(answer.json())

        opened = http.post("/mcp", content=orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": MCP_PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "e2e-warm-up", "version": "1"}}}))
        opened.raise_for_status()
        http.headers.update({"mcp-session-id": opened.headers["mcp-session-id"],
                             "mcp-protocol-version": MCP_PROTOCOL_VERSION})
        http.post("/mcp", content=b'{"jsonrpc": "2.0", "method": "notifications/initialized"}').raise_for_status()
        names: set[str] = set()
        cursor = None
        for message_id in itertools.count(1):
            page = request("tools/list", {"cursor": cursor} if cursor else {}, message_id)["result"]
            names |= {tool["name"] for tool in page["tools"]}
            cursor = page.get("nextCursor")
            if not cursor:
                break
    return names


def wait_for_the_full_mcp_catalog(url: str, secret: str, tools: Iterable[str], in_a_row: int = 8,
                                  timeout: float = 60.0) -> None:
    """Wait until listings on the gateway at `url` show every tool of `tools` (some of every configured server's)
    `in_a_row` times in a row.

    The first request to a cold ext_proc process waits only so long for the upstreams and then answers with the part
    of the catalog that has arrived; each process fills its own. Many full listings in a row mean every process the
    requests were spread over has filled its catalog, so the tests after this see every server."""
    expected = set(tools)
    full_in_a_row = 0

    def full_listings_in_a_row() -> bool:
        nonlocal full_in_a_row
        so_far, full_in_a_row = full_in_a_row, 0  # a listing that fails (raises) breaks the run too
        if expected <= mcp_tool_names(url, secret):
            full_in_a_row = so_far + 1
        return full_in_a_row >= in_a_row

    eventually(full_listings_in_a_row, timeout=timeout,
               what=f"{in_a_row} listings in a row with every tool of {sorted(expected)}")
