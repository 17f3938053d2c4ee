"""What the MCP gateway adds to a tool call: `tools/call` of the demo server's `echo`, straight to the server and
through Babelgate's `/mcp` endpoint (as `tools__echo`), side by side in one run.

    python load/mcp_call.py              # ~2 minutes; results in load/results/mcp-call-*.md and .json
    python load/mcp_call.py --smoke      # seconds; CI runs this (tests/e2e/test_bench_smoke.py), asserting no timing

One demo MCP server (`python -m ext_proc.demo --kind mcp`, Streamable HTTP, a bearer token required) and, on the same
loopback, three ways to it, each driven by the same client with its own session (`initialize` and
`notifications/initialized` once, then every call carries `Mcp-Session-Id` and `MCP-Protocol-Version`):
- (a) direct: the client sends the server's bearer itself (the baseline);
- (b) plain Envoy: a bare Envoy reverse proxy in front of the server (what the Envoy hop alone costs);
- (c) gateway: Envoy + one Babelgate ext_proc process; the client sends a virtual key, the gateway its own session,
  the tool's upstream name and the server's bearer.

Loads: serial (concurrency 1, the next call sent when the previous answer is in) and open-loop Poisson arrivals at
each `--rates` value, the same arrival sequence for every way. Latency is counted from the call's intended send time,
so a call that waits for a connection or a slow client counts that wait (no coordinated omission). Under each load
the ways take turns (`--rounds` slices each, summed), so background load that comes and goes falls on all alike; the
`other load` column is the machine's busy CPU during a row that none of the counted processes (nor the client) used.

Reported per way and load: calls/s achieved, p50/p90/p99, CPU milliseconds per call of every process on the path's
side of the machine (the upstream server, both Envoys, ext_proc; all of them counted in every row, so the idle
background of a process not on the path is in both sides of a difference) and their total, and what (b) and (c) add
to (a): latency (p50, p99) and total CPU per call. The client (this process: a small asyncio HTTP/1.1 client, keep-alive
connections, pre-encoded requests) is reported separately and not in the total, with its send lag: how long after
its intended time a call left (this VM wakes a sleeping process ~0.1 ms late, sometimes 3 ms), part of every latency
and the same on every way.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from openloop import Processes, arguments, connect, drive, header, markdown, save, select_loop
from upstreams import start_plain_proxy

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, python_module
from ext_proc.launch.stack import start_stack

RESULTS = Path(__file__).parent / "results"
PROTOCOL = "2025-11-25"
SERVER = "tools"
MCP_SECRET = "sk-mcp-bench"
ARGUMENTS = {"text": "a tool call from the benchmark"}
MAX_CONNECTIONS = 256
TICKS = os.sysconf("SC_CLK_TCK")
SPIN_SECONDS = 0.0003
"""An open-loop call's last stretch before its send time is spun (select with a zero timeout), not slept."""


# --- the client: HTTP/1.1 over asyncio protocols, one request at a time per connection ------------------------------

@dataclass
class Way:
    """One way to the tool: the port to POST `/mcp` to, the bearer, the tool's name there, and the session."""

    name: str
    port: int
    bearer: str
    tool: str
    session: str = ""
    ids: int = 0

    def request(self, message: dict, session: bool = True) -> bytes:
        body = orjson.dumps(message)
        lines = ["POST /mcp HTTP/1.1", f"host: 127.0.0.1:{self.port}", "content-type: application/json",
                 "accept: application/json, text/event-stream", f"authorization: Bearer {self.bearer}",
                 f"content-length: {len(body)}"]
        if session:
            lines += [f"mcp-session-id: {self.session}", f"mcp-protocol-version: {PROTOCOL}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def call(self) -> bytes:
        self.ids += 1
        return self.request({"jsonrpc": "2.0", "id": self.ids, "method": "tools/call",
                             "params": {"name": self.tool, "arguments": ARGUMENTS}})

    def answered(self, status: int, body: bytes) -> bool:
        return answered(status, body)


async def open_session(way: Way) -> None:
    """`initialize`, keep the session id, `notifications/initialized`; then one call that must echo the text."""
    connection = await connect(way.port)
    status, head, body = await connection.exchange(way.request({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                   "clientInfo": {"name": "babelgate-bench", "version": "1"}}}, session=False))
    session = header(head, "mcp-session-id")
    if status != 200 or not session:
        raise SystemExit(f"{way.name}: initialize answered {status}: {body[:300]!r}")
    way.session = session
    status, _, body = await connection.exchange(way.request(
        {"jsonrpc": "2.0", "method": "notifications/initialized"}))
    if status != 202:
        raise SystemExit(f"{way.name}: notifications/initialized answered {status}: {body[:300]!r}")
    status, _, body = await connection.exchange(way.call())
    if not answered(status, body):
        raise SystemExit(f"{way.name}: tools/call answered {status}: {body[:300]!r}")
    assert connection.transport is not None
    connection.transport.close()


def answered(status: int, body: bytes) -> bool:
    return (status == 200 and b'"result"' in body and ARGUMENTS["text"].encode() in body
            and b'"isError":true' not in body)


def table(rows: list[dict]) -> str:
    return markdown(rows, ["upstream", "envoy", "ext_proc"], {"envoy": "Envoy"})


def start_gateway(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str) -> tuple[int, list[int], int]:
    """Envoy + one ext_proc process with the demo server as its one MCP server: (port, ext_proc pids, Envoy pid)."""
    config = {
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": {"port": free_port(), "processes": 1},
        # A model route is required by the config; nothing calls it.
        "backends": [{"id": "unused", "schema": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                      "api_key": {"env": "BENCH_MCP_SECRET"}}],
        "routes": [{"model": "unused", "backends": [{"backend": "unused", "model": "unused"}]}],
        "virtual_keys": [{"id": "bench", "hash": hash_key(key)}],
        "mcp": {"servers": [{"name": SERVER, "url": f"http://127.0.0.1:{upstream_port}/mcp",
                             "bearer": {"env": "BENCH_MCP_SECRET"}}]},
    }
    directory = workdir / "gateway"
    directory.mkdir()
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = len(supervisor.children)
    stack = start_stack(parse_config(path.read_text()), path, directory, supervisor,
                        env={"BENCH_MCP_SECRET": MCP_SECRET}, envoy_workers=2)
    started = supervisor.children[first:]
    return (stack.config.listener.port, [c.process.pid for c in started if c.name.startswith("ext_proc")],
            next(c.process.pid for c in started if c.name == "envoy"))


async def run_all(ways: list[Way], processes: Processes, loads: list[tuple[str, float | None]], seconds: float,
                  warmup: float, rounds: int, report: Callable[[list[dict]], None]) -> list[dict]:
    for way in ways:
        await open_session(way)
    return await drive(ways, processes, loads, seconds, warmup, rounds, report)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "", [50, 200], RESULTS, argv)
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-mcp-bench-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    try:
        server, ready = supervisor.start_reporting("mcp-tools", python_module(
            "ext_proc.demo", "--kind", "mcp", "--name", SERVER, "--port", "0", "--api-key", MCP_SECRET))
        upstream_port = int(ready["port"])
        gateway_port, ext_proc, envoy = start_gateway(supervisor, workdir, upstream_port, key)
        proxy_port, proxy_pid = start_plain_proxy(supervisor, workdir, upstream_port, 29)
        processes = Processes({"upstream": [server.process.pid], "envoy": [envoy, proxy_pid],
                               "ext_proc": ext_proc})
        ways = [Way("(a) direct", upstream_port, MCP_SECRET, "echo"),
                Way("(b) plain Envoy", proxy_port, MCP_SECRET, "echo"),
                Way("(c) gateway", gateway_port, key, f"{SERVER}__echo")]
        loads: list[tuple[str, float | None]] = [("serial", None), *((f"{r:g}/s", r) for r in args.rates)]
        with asyncio.Runner(loop_factory=select_loop) as runner:
            rows = runner.run(run_all(ways, processes, loads, args.seconds, args.warmup, args.rounds,
                                      lambda rows: print("\n".join(table(rows).splitlines()[-len(ways):]),
                                                         flush=True)))
    finally:
        supervisor.stop_all()
    text = table(rows)
    save(rows, text, args.output, "mcp-call-smoke" if args.smoke else "mcp-call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
