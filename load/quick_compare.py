"""A first, rough side-by-side measurement: Envoy alone vs Envoy + Babelgate, same fake upstream, same run.

    python load/quick_compare.py [--seconds 10] [--connections 1 16]

The upstream is an Envoy `direct_response` (behind a buffer filter, so it reads the body first) answering a canned
chat completion, so neither side is limited by a Python upstream. Load comes from `wrk` (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, wait_for_envoy, wait_for_port
from ext_proc.launch.stack import envoy_argv, start_stack
from ext_proc.limits.estimate import Usage
from ext_proc.limits.limiter import Demand
from ext_proc.limits.setup import build_limiter

ANSWER = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}).decode()
REQUEST = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say ok."}],
                        "max_tokens": 16}).decode()


def _listener(name: str, port: int, route: dict, filters: list[dict]) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                         "HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
                "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def upstream_and_baseline_config(upstream_port: int, baseline_port: int, admin_port: int) -> dict:
    """One Envoy holding both the fake upstream and the baseline proxy in front of it."""
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1 << 20}}
    upstream = _listener("upstream", upstream_port, {"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": ANSWER}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}]}, [buffer])
    baseline = _listener("baseline", baseline_port, {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}, [])
    cluster = {"name": "upstream", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": [upstream, baseline], "clusters": [cluster]}}


def run_wrk(url: str, key: str, connections: int, seconds: int, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{REQUEST}]]\n'
                      f'wrk.headers["Content-Type"] = "application/json"\n'
                      f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    output = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                            capture_output=True, text=True, check=True).stdout
    latencies = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)$", output, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": latencies["50"], "p90": latencies["90"], "p99": latencies["99"],
            "non_2xx": int(errors.group(1)) if errors else 0}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def start_babelgate(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str,
                    redis_url: str | None) -> str:
    """One Babelgate stack (one ext_proc process) in front of the upstream; with Redis-backed limits if given."""
    limits = {"redis": {"url": redis_url}, "per_key": [{"window": "hour", "total_tokens": 10**12, "requests": 10**9}]}
    config_text = yaml.safe_dump({
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": {"port": free_port(), "processes": 1},
        "backends": [{"id": "upstream", "schema": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                      "api_key": {"env": "BENCH_UPSTREAM_KEY"}}],
        "routes": [{"model": "bench", "backends": [{"backend": "upstream", "model": "bench-model"}]}],
        "virtual_keys": [{"id": "bench", "hash": hash_key(key)}],
        **({"limits": limits} if redis_url else {})})
    directory = workdir / ("limits" if redis_url else "plain")
    directory.mkdir()
    config_path = directory / "config.yaml"
    config_path.write_text(config_text)
    stack = start_stack(parse_config(config_text), config_path, directory, supervisor,
                        env={"BENCH_UPSTREAM_KEY": "sk-bench"})
    return f"{stack.url}/v1/chat/completions"


def start_redis(supervisor: Supervisor) -> str:
    port = free_port()
    supervisor.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"])
    wait_for_port("127.0.0.1", port, 10, supervisor)
    return f"redis://127.0.0.1:{port}"


async def time_limiter_calls(redis_url: str, rounds: int = 2000) -> tuple[float, float]:
    """Median microseconds of one reservation and of one settlement against Redis, measured in-process."""
    config = parse_config(yaml.safe_dump({
        "backends": [{"id": "b", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "b", "model": "m"}]}],
        "limits": {"redis": {"url": redis_url, "key_prefix": "bench:"},
                   "per_key": [{"window": "hour", "total_tokens": 10**12, "requests": 10**9}]}}))
    limiter = build_limiter(config)
    assert limiter is not None
    scopes = limiter.scopes("k", None, None, "m", "b")
    reserve_times, settle_times = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        reservation = await limiter.reserve(scopes, Demand(20, 16, 0), "b")
        reserved = time.perf_counter()
        await limiter.settle(reservation, Usage(9, 1), "b", "m")
        reserve_times.append(reserved - started)
        settle_times.append(time.perf_counter() - reserved)
    await limiter.store.close()
    return statistics.median(reserve_times) * 1e6, statistics.median(settle_times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-bench-"))
    supervisor = Supervisor(log_dir=workdir)
    upstream_port, baseline_port, admin_port = free_port(), free_port(), free_port()
    key = generate_key()
    try:
        (workdir / "upstream.yaml").write_text(yaml.safe_dump(
            upstream_and_baseline_config(upstream_port, baseline_port, admin_port)))
        supervisor.start("upstream-envoy", [*envoy_argv(workdir / "upstream.yaml"), "--base-id", "7"])
        wait_for_envoy(admin_port, 30, supervisor)
        redis_url = start_redis(supervisor) if shutil.which("redis-server") else None
        targets = {"envoy alone": f"http://127.0.0.1:{baseline_port}/v1/chat/completions",
                   "envoy + babelgate": start_babelgate(supervisor, workdir, upstream_port, key, None)}
        if redis_url:
            targets["  + redis limits"] = start_babelgate(supervisor, workdir, upstream_port, key, redis_url)
        for name, url in targets.items():
            check = httpx.post(url, content=REQUEST, timeout=10, headers={
                "authorization": f"Bearer {key}", "content-type": "application/json"})
            if check.status_code != 200:
                raise SystemExit(f"{name} answered {check.status_code}: {check.text}")
        print(f"{'target':<20} {'conns':>5} {'rps':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for connections in args.connections:
            for name, url in targets.items():
                run_wrk(url, key, connections, 2, workdir)  # warm-up
                r = run_wrk(url, key, connections, args.seconds, workdir)
                print(f"{name:<20} {connections:>5} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p90']:>8.2f} "
                      f"{r['p99']:>8.2f} {r['non_2xx']:>8}")
        if redis_url:
            reserve_us, settle_us = asyncio.run(time_limiter_calls(redis_url))
            print(f"\nlimiter against Redis, in-process medians: reserve {reserve_us:.0f} µs, "
                  f"settle {settle_us:.0f} µs")
    finally:
        supervisor.stop_all()


if __name__ == "__main__":
    main()
