"""What Babelgate adds to every chunk of a stream, measured chunk by chunk: one-way delay, time to first token, and
the CPU each chunk costs every process on its path, with 1 and with many concurrent streams, side by side with
Envoy alone in one run.

    python load/stream_chunks.py                 # ~3 minutes; results in load/results/stream-chunks-*.md and .json
    python load/stream_chunks.py --smoke         # seconds; CI runs it (tests/e2e/test_bench_smoke.py), no timing

The upstream (`stream_upstream.py`) sends `--events` text events `--gap-ms` apart, each token stamped with the
CLOCK_MONOTONIC moment it was written; the client reads each token's arrival on the same clock, so every token's
one-way delay through each way is measured directly (not relative to the first chunk, which would cancel a constant
offset). Ways:
- (a) Envoy alone, Anthropic events: a plain Envoy proxy in front of the upstream;
- (b) gateway, Anthropic -> OpenAI chunks: Envoy + one ext_proc process translating each event;
- (c) Envoy alone, OpenAI chunks;
- (d) gateway, OpenAI -> OpenAI chunks, nothing metered: no translation and nothing reads the chunks, so Envoy
  relays them without ext_proc (it sees the request and the answer's headers only);
- (e) gateway, OpenAI -> OpenAI chunks, metered aside: the same through a second gateway with a token limit (the
  in-process store); the client asks for usage, so the stream meter settles the stream from a copy Envoy sends it
  without waiting (`stages/stream_meter.py`) and the chunks go to the client as in (d);
- (f) gateway, OpenAI -> OpenAI chunks, metered in the path: the same, the client not asking for usage, so every
  chunk goes through ext_proc, which reads the usage the gateway asked for and keeps it from the client.
The metered gateway idles while the other ways run (and the other gateway while (e) and (f) run); both gateways'
processes are counted in every row.
Each concurrency level runs every way for `--seconds`, in `--rounds` turns (background load falls on all alike):
`streams` slots each run one stream after another. Reported per way and level: chunks/s, delay per chunk p50/p99
and what the gateway adds to its Envoy-alone twin, TTFT p50 (from the request's send), CPU ms per chunk of the
gateway's Envoy, the proxy Envoy, ext_proc and the upstream (every process counted in every row).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

from openloop import Processes, percentile, post, save, select_loop
from upstreams import start_plain_proxy

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port
from ext_proc.launch.stack import start_stack

RESULTS = Path(__file__).parent / "results"
TOKEN = re.compile(rb"t(\d{12,20}) ")
ROLES = ["gateway_envoy", "proxy_envoy", "ext_proc", "upstream"]


@dataclass
class Way:
    name: str
    port: int
    path: str
    headers: str
    body: bytes
    twin: str = ""
    """The Envoy-alone way this one is compared with."""

    def request(self) -> bytes:
        return post(self.port, self.path, self.body, self.headers)


@dataclass
class Tally:
    delays: list[float] = field(default_factory=list)
    """Milliseconds from each token's send (upstream) to its arrival (client)."""
    ttfts: list[float] = field(default_factory=list)
    streams: int = 0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class StreamReader(asyncio.Protocol):
    """One request's answer: every stamped token's delay, and when the first arrived."""

    def __init__(self, sent_ns: int, tally: Tally, done: asyncio.Future[bool]) -> None:
        self.sent_ns = sent_ns
        self.tally = tally
        self.done = done
        self.tail = b""
        self.first = True
        self.status_checked = False

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        text = self.tail + data
        if not self.status_checked:
            if b"\r\n" not in text:
                self.tail = text
                return
            self.status_checked = True
            if not text.startswith(b"HTTP/1.1 200"):
                self.done.set_result(False)
                return
        for match in TOKEN.finditer(text):
            self.tally.delays.append((now - int(match.group(1))) / 1e6)
            if self.first:
                self.first = False
                self.tally.ttfts.append((now - self.sent_ns) / 1e6)
        cut = text.rfind(b"t")  # a token split across reads is found with the next one
        self.tail = text[cut:] if cut >= 0 and len(text) - cut < 32 and not TOKEN.search(text[cut:]) else b""
        if text.endswith(b"0\r\n\r\n") and not self.done.done():
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def one_stream(way: Way, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    sent = time.monotonic_ns()
    transport, _ = await loop.create_connection(lambda: StreamReader(sent, tally, done), "127.0.0.1", way.port)
    transport.write(way.request())
    ok = await done
    transport.close()
    tally.streams += 1
    if not ok:
        tally.errors += 1


async def slot(way: Way, tally: Tally, until: float) -> None:
    while time.monotonic() < until:
        await one_stream(way, tally)


async def measure(ways: list[Way], processes: Processes, streams: int, seconds: float, rounds: int,
                  warmup: float) -> list[dict]:
    tallies = {way.name: Tally() for way in ways}
    for way in ways:  # warm every way up (connections, caches), unmeasured
        await asyncio.gather(*(slot(way, Tally(), time.monotonic() + warmup) for _ in range(streams)))
    for _ in range(rounds):
        for way in ways:
            tally = tallies[way.name]
            before = processes.cpu()
            started = time.monotonic()
            await asyncio.gather(*(slot(way, tally, started + seconds / rounds) for _ in range(streams)))
            tally.seconds += time.monotonic() - started
            after = processes.cpu()
            for role in after:
                tally.cpu[role] = tally.cpu.get(role, 0.0) + after[role] - before[role]
    rows = []
    for way in ways:
        tally = tallies[way.name]
        chunks = max(1, len(tally.delays))
        rows.append({
            "way": way.name, "streams": streams, "twin": way.twin, "chunks": len(tally.delays),
            "streams_done": tally.streams, "errors": tally.errors, "chunks_per_s": len(tally.delays) / tally.seconds,
            "delay_p50_ms": percentile(tally.delays, 0.5), "delay_p99_ms": percentile(tally.delays, 0.99),
            "ttft_p50_ms": statistics.median(tally.ttfts) if tally.ttfts else 0.0,
            **{f"{role}_cpu_ms_per_chunk": 1000 * tally.cpu.get(role, 0.0) / chunks for role in ROLES},
            "other_load_cores": max(0.0, tally.cpu["machine"] - sum(tally.cpu[r] for r in ROLES)
                                    - tally.cpu["client"]) / tally.seconds,
        })
    return rows


def table(rows: list[dict]) -> str:
    by_name = {(row["way"], row["streams"]): row for row in rows}
    lines = ["| way | streams | chunks/s | delay p50 ms | delay p99 ms | added p50 ms | added p99 ms | TTFT p50 ms "
             "| TTFT added ms | ext_proc CPU ms/chunk | gateway Envoy CPU ms/chunk | proxy Envoy CPU ms/chunk "
             "| upstream CPU ms/chunk | other load, cores | errors |", "|" + "---|" * 15]
    for row in rows:
        twin = by_name.get((row["twin"], row["streams"]))

        def added(key: str, row: dict = row, twin: dict | None = twin) -> str:
            return "-" if twin is None else f"{row[key] - twin[key]:+.3f}"

        lines.append("| " + " | ".join([
            row["way"], str(row["streams"]), f"{row['chunks_per_s']:.0f}", f"{row['delay_p50_ms']:.3f}",
            f"{row['delay_p99_ms']:.3f}", added("delay_p50_ms"), added("delay_p99_ms"), f"{row['ttft_p50_ms']:.2f}",
            added("ttft_p50_ms"), f"{row['ext_proc_cpu_ms_per_chunk']:.3f}",
            f"{row['gateway_envoy_cpu_ms_per_chunk']:.3f}", f"{row['proxy_envoy_cpu_ms_per_chunk']:.3f}",
            f"{row['upstream_cpu_ms_per_chunk']:.3f}", f"{row['other_load_cores']:.2f}", str(row["errors"])]) + " |")
    return "\n".join(lines)


def start_gateway(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str,
                  metered: bool = False) -> tuple[int, int, list[int]]:
    """Envoy + one ext_proc process: (listener port, Envoy pid, ext_proc pids). `metered`: every key under a token
    limit (in-process store, never reached), so every answer's usage is read and settled."""
    base = f"http://127.0.0.1:{upstream_port}"
    config = {
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": {"port": free_port(), "processes": 1},
        "backends": [{"id": "anthropic", "schema": "anthropic", "base_url": base, "api_key": {"env": "STREAM_KEY"}},
                     {"id": "openai", "schema": "openai", "base_url": base + "/v1", "api_key": {"env": "STREAM_KEY"}}],
        "routes": [{"model": "translated", "backends": [{"backend": "anthropic", "model": "claude-stream"}]},
                   {"model": "passthrough", "backends": [{"backend": "openai", "model": "gpt-stream"}]}],
        "virtual_keys": [{"id": "bench", "hash": hash_key(key)}],
    }
    if metered:
        config["limits"] = {"per_key": [{"window": "hour", "total_tokens": 10**12}]}
    workdir = workdir / ("metered" if metered else "plain")
    workdir.mkdir()
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = len(supervisor.children)
    stack = start_stack(parse_config(path.read_text()), path, workdir, supervisor, env={"STREAM_KEY": "sk-stream"},
                        envoy_workers=2)
    started = supervisor.children[first:]
    return (stack.config.listener.port, next(c.process.pid for c in started if c.name == "envoy"),
            [c.process.pid for c in started if c.name.startswith("ext_proc")])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few streams per row, for CI")
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 50], help="concurrent streams per level")
    parser.add_argument("--events", type=int, default=100, help="text events per stream")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="between two events")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per way and level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--only", nargs="*", default=None, metavar="LETTER",
                        help="run only these ways (e.g. `c e`: Envoy alone and the stream metered aside, to profile)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.streams, args.events, args.gap_ms, args.seconds, args.rounds, args.warmup = [1, 4], 10, 2, 1, 1, 0.2
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-stream-chunks-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    try:
        upstream, ready = supervisor.start_reporting("upstream", [
            sys.executable, str(Path(__file__).parent / "stream_upstream.py"), "--port", "0",
            "--events", str(args.events), "--gap-ms", str(args.gap_ms)])
        upstream_port = int(ready["port"])
        gateway_port, gateway_envoy, ext_proc = start_gateway(supervisor, workdir, upstream_port, key)
        metered_port, metered_envoy, metered_ext_proc = start_gateway(supervisor, workdir, upstream_port, key,
                                                                      metered=True)
        proxy_port, proxy_pid = start_plain_proxy(supervisor, workdir, upstream_port, 37)
        processes = Processes({"gateway_envoy": [gateway_envoy, metered_envoy], "proxy_envoy": [proxy_pid],
                               "ext_proc": ext_proc + metered_ext_proc, "upstream": [upstream.process.pid]})
        prompt = b'"messages": [{"role": "user", "content": "stream to me"}], "max_tokens": 400, "stream": true'
        anthropic = "x-api-key: sk-stream\r\nanthropic-version: 2023-06-01\r\n"
        gateway = f"authorization: Bearer {key}\r\n"
        ways = [
            Way("(a) Envoy alone, Anthropic events", proxy_port, "/v1/messages", anthropic,
                b'{"model": "claude-stream", ' + prompt + b"}"),
            Way("(b) gateway, Anthropic -> OpenAI chunks", gateway_port, "/v1/chat/completions", gateway,
                b'{"model": "translated", ' + prompt + b"}", twin="(a) Envoy alone, Anthropic events"),
            Way("(c) Envoy alone, OpenAI chunks", proxy_port, "/v1/chat/completions",
                "authorization: Bearer sk-stream\r\n", b'{"model": "gpt-stream", ' + prompt + b"}"),
            Way("(d) gateway, OpenAI -> OpenAI chunks, nothing metered", gateway_port, "/v1/chat/completions",
                gateway, b'{"model": "passthrough", ' + prompt + b', "stream_options": {"include_usage": true}}',
                twin="(c) Envoy alone, OpenAI chunks"),
            Way("(e) gateway, OpenAI -> OpenAI chunks, metered aside", metered_port, "/v1/chat/completions",
                gateway, b'{"model": "passthrough", ' + prompt + b', "stream_options": {"include_usage": true}}',
                twin="(c) Envoy alone, OpenAI chunks"),
            Way("(f) gateway, OpenAI -> OpenAI chunks, metered in the path", metered_port, "/v1/chat/completions",
                gateway, b'{"model": "passthrough", ' + prompt + b"}", twin="(c) Envoy alone, OpenAI chunks"),
        ]
        if args.only:  # a way's Envoy-alone twin runs with it, so its added figures can be read
            kept = {way.name for way in ways if way.name[1] in args.only}
            ways = [way for way in ways if way.name in kept or any(w.twin == way.name for w in ways if w.name in kept)]
        rows: list[dict] = []
        with asyncio.Runner(loop_factory=select_loop) as runner:
            for streams in args.streams:
                rows += runner.run(measure(ways, processes, streams, args.seconds, args.rounds, args.warmup))
                print("\n".join(table(rows).splitlines()[-len(ways):]), flush=True)
    finally:
        supervisor.stop_all()
    save(rows, table(rows), args.output, "stream-chunks-smoke" if args.smoke else "stream-chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
