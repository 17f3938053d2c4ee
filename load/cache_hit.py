"""What the exact response cache costs and saves: a cache hit against a miss, against the same route uncached, and
against Envoy alone, side by side in one run, with the cache in memory and in Redis.

    python load/cache_hit.py              # ~3 minutes; results in load/results/cache-hit-*.md and .json
    python load/cache_hit.py --smoke      # seconds; CI runs this (tests/e2e/test_bench_smoke.py), asserting no timing

The upstream is one Envoy answering a canned OpenAI chat completion with `direct_response` (`upstreams.py`), so no
Python upstream limits either side. Ways, each a temperature-0 chat completion (`POST /v1/chat/completions`):
- (a) Envoy alone: a plain Envoy reverse proxy in front of the upstream (the baseline);
- (b) gateway, uncached: Envoy + one ext_proc process, a route without `cache:`;
- (c) gateway, miss: a cached route, every request a new prompt (lookup, upstream call, the answer stored);
- (d) gateway, hit: the same route and one prompt (answered by the route stage; the upstream is not called);
- (e)/(f): miss and hit with the cache in Redis (a second gateway; only when `redis-server` is installed).

Loads, harness and columns are `openloop.py`'s: serial, then open-loop Poisson arrivals at each `--rates` value,
latency from each call's intended send time; CPU per call of every process on the path (all Envoys, every ext_proc
process, Redis), all counted in every row.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from openloop import Processes, arguments, connect, drive, header, markdown, post, save, select_loop
from upstreams import upstream_config

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, wait_for_envoy, wait_for_port
from ext_proc.launch.stack import envoy_argv, start_stack

RESULTS = Path(__file__).parent / "results"
PROVIDER_KEY = "sk-cache-bench"


@dataclass
class Way:
    """One way to an answer: where to POST, with which key and route; `fresh` makes every prompt new (misses)."""

    name: str
    port: int
    bearer: str
    model: str
    fresh: bool = False
    expect: str | None = None
    """The `x-babelgate-cache` the priming call must see (None: no header, an uncached route or Envoy alone)."""
    count: int = 0

    def call(self) -> bytes:
        self.count += 1
        prompt = f"question number {self.count}" if self.fresh else "the same question"
        body = orjson.dumps({"model": self.model, "temperature": 0,
                             "messages": [{"role": "user", "content": prompt}]})
        return post(self.port, "/v1/chat/completions", body, f"authorization: Bearer {self.bearer}\r\n")

    def answered(self, status: int, body: bytes) -> bool:
        return status == 200 and b'"choices"' in body


async def prime(way: Way) -> None:
    """Two calls: the second must carry the cache state the way is about (a hit way's first call stores the answer)."""
    connection = await connect(way.port)
    for _ in range(2):
        status, head, body = await connection.exchange(way.call())
        if not way.answered(status, body):
            raise SystemExit(f"{way.name}: answered {status}: {body[:300]!r}")
    seen = header(head, "x-babelgate-cache")
    if seen != way.expect:
        raise SystemExit(f"{way.name}: x-babelgate-cache is {seen!r}, expected {way.expect!r}")
    assert connection.transport is not None
    connection.transport.close()


def start_gateway(supervisor: Supervisor, workdir: Path, name: str, upstream_port: int, key: str,
                  redis_url: str | None) -> tuple[int, list[int], int]:
    """Envoy + one ext_proc process with a cached and an uncached route: (port, ext_proc pids, Envoy pid)."""
    backend = {"id": "openai", "schema": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
               "api_key": {"env": "BENCH_KEY"}}
    config: dict = {
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": {"port": free_port(), "processes": 1},
        "backends": [backend],
        "routes": [{"model": "bench-plain", "backends": [{"backend": "openai", "model": "bench-model"}]},
                   {"model": "bench-cached", "backends": [{"backend": "openai", "model": "bench-model"}],
                    "cache": {"scope": "team", "ttl": "3600s"}}],
        "virtual_keys": [{"id": "bench", "hash": hash_key(key)}],
    }
    if redis_url is not None:
        config["limits"] = {"redis": {"url": redis_url}}
    directory = workdir / name
    directory.mkdir()
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = len(supervisor.children)
    stack = start_stack(parse_config(path.read_text()), path, directory, supervisor, env={"BENCH_KEY": PROVIDER_KEY},
                        envoy_workers=2)
    started = supervisor.children[first:]
    return (stack.config.listener.port, [c.process.pid for c in started if c.name.startswith("ext_proc")],
            next(c.process.pid for c in started if c.name == "envoy"))


def table(rows: list[dict], roles: list[str]) -> str:
    return markdown(rows, roles, {"envoy": "Envoy (all)", "redis": "Redis"})


async def run_all(ways: list[Way], processes: Processes, loads: list[tuple[str, float | None]],
                  args: argparse.Namespace, roles: list[str]) -> list[dict]:
    for way in ways:
        await prime(way)

    def report(rows: list[dict]) -> None:
        print("\n".join(table(rows, roles).splitlines()[-len(ways):]), flush=True)
    return await drive(ways, processes, loads, args.seconds, args.warmup, args.rounds, report)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__ or "", [200], RESULTS, argv)
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-cache-bench-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    try:
        upstream_port, baseline_port, upstream_admin = free_port(), free_port(), free_port()
        (workdir / "upstream.yaml").write_text(yaml.safe_dump(upstream_config(upstream_port, baseline_port,
                                                                              upstream_admin)))
        upstream = supervisor.start("upstream", [*envoy_argv(workdir / "upstream.yaml"), "--base-id", "31"])
        wait_for_envoy(upstream_admin, 30, supervisor)
        port, ext_proc, envoy = start_gateway(supervisor, workdir, "memory", upstream_port, key, None)
        roles = {"envoy": [upstream.process.pid, envoy], "ext_proc": list(ext_proc)}
        ways = [Way("(a) Envoy alone", baseline_port, PROVIDER_KEY, "bench-model"),
                Way("(b) gateway, uncached", port, key, "bench-plain"),
                Way("(c) gateway, miss", port, key, "bench-cached", fresh=True, expect="miss"),
                Way("(d) gateway, hit", port, key, "bench-cached", expect="hit")]
        if shutil.which("redis-server"):
            redis_port = free_port()
            redis = supervisor.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                               "--save", "", "--appendonly", "no"])
            wait_for_port("127.0.0.1", redis_port, 10, supervisor)
            port, ext_proc, envoy = start_gateway(supervisor, workdir, "redis", upstream_port, key,
                                                  f"redis://127.0.0.1:{redis_port}")
            roles["envoy"].append(envoy)
            roles["ext_proc"] += ext_proc
            roles["redis"] = [redis.process.pid]
            ways += [Way("(e) gateway + Redis, miss", port, key, "bench-cached", fresh=True, expect="miss"),
                     Way("(f) gateway + Redis, hit", port, key, "bench-cached", expect="hit")]
        processes = Processes(roles)
        loads: list[tuple[str, float | None]] = [("serial", None), *((f"{r:g}/s", r) for r in args.rates)]
        with asyncio.Runner(loop_factory=select_loop) as runner:
            rows = runner.run(run_all(ways, processes, loads, args, list(roles)))
    finally:
        supervisor.stop_all()
    text = table(rows, list(roles))
    save(rows, text, args.output, "cache-hit-smoke" if args.smoke else "cache-hit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
