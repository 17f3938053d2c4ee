"""What the Responses API costs over chat completions, streamed through the same Anthropic backend.

    python load/responses_stream.py [--requests 40] [--pause-ms 5]

One demo Anthropic provider pauses between its events (`slow=MS`), as a model streams. The same prompt is streamed
through one gateway (Envoy + one ext_proc process) three ways, in one run, one stream at a time:
- (a) Envoy alone in front of the provider (the baseline: Anthropic events, untranslated);
- (b) `/v1/chat/completions`: Anthropic SSE translated to OpenAI chunks;
- (c) `/v1/responses`: the same chunks re-encoded as typed Responses events (`response.output_text.delta` ...).
Reported per scenario, medians over all requests: time to first text, what the gateway adds to it, and CPU per
request and per text event of ext_proc and of the gateway's Envoy, each counted from /proc over that scenario's run
(the baseline Envoy's for (a)).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import procstats
from streaming import PROMPT, timed_stream
from upstreams import start_plain_proxy

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, python_module
from ext_proc.launch.stack import start_stack


def run_scenario(client: httpx.Client, target: tuple[str, dict, dict], requests: int, python_pids: list[int],
                 envoy_pids: list[int]) -> tuple[list[list[float]], float, float]:
    """The streams' arrival times, and the CPU seconds ext_proc and Envoy spent on them."""
    timed_stream(client, *target)  # warm-up

    def cpu(pids: list[int]) -> float:
        return sum(procstats.cpu_seconds(pid) for pid in pids)

    python_before, envoy_before = cpu(python_pids), cpu(envoy_pids)
    arrivals = [timed_stream(client, *target) for _ in range(requests)]
    return arrivals, cpu(python_pids) - python_before, cpu(envoy_pids) - envoy_before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--pause-ms", type=int, default=5)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results",
                        help="directory the table is written to (as responses-stream-<time>.md)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-responses-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    rows: list[tuple[str, list[list[float]], float, float]] = []
    try:
        _, ready = supervisor.start_reporting("anthropic", python_module(
            "ext_proc.demo", "--kind", "anthropic", "--name", "anthropic", "--port", "0", "--api-key", "sk-stream",
            "--faults", f"*:slow={args.pause_ms}"))
        config = {"listener": {"port": free_port(), "admin_port": free_port()},
                  "ext_proc": {"port": free_port()},
                  "backends": [{"id": "anthropic", "schema": "anthropic",
                                "base_url": f"http://127.0.0.1:{ready['port']}", "api_key": {"env": "STREAM_KEY"}}],
                  "routes": [{"model": "streamer", "backends": [{"backend": "anthropic", "model": "claude-x"}]}],
                  "virtual_keys": [{"id": "bench", "hash": hash_key(key)}]}
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        first = len(supervisor.children)
        stack = start_stack(parse_config(path.read_text()), path, workdir, supervisor,
                            env={"STREAM_KEY": "sk-stream"})
        started = supervisor.children[first:]
        ext_proc = [c.process.pid for c in started if c.name.startswith("ext_proc")]
        gateway_envoy = [c.process.pid for c in started if c.name.startswith("envoy")]
        proxy_port, baseline_envoy_pid = start_plain_proxy(supervisor, workdir, ready["port"], 23)
        bearer = {"authorization": f"Bearer {key}"}
        scenarios: list[tuple[str, tuple[str, dict, dict], list[int], list[int]]] = [
            ("(a) Envoy alone (Anthropic events)",
             (f"http://127.0.0.1:{proxy_port}/v1/messages",
              {"x-api-key": "sk-stream", "anthropic-version": "2023-06-01"},
              {"model": "claude-x", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 60,
               "stream": True}), [], [baseline_envoy_pid]),
            ("(b) chat completions", (stack.url + "/v1/chat/completions", bearer,
                                      {"model": "streamer", "messages": [{"role": "user", "content": PROMPT}],
                                       "max_tokens": 60, "stream": True}), ext_proc, gateway_envoy),
            ("(c) Responses API", (stack.url + "/v1/responses", bearer,
                                   {"model": "streamer", "input": PROMPT, "max_output_tokens": 60, "stream": True,
                                    "store": False}), ext_proc, gateway_envoy),
        ]
        with httpx.Client(timeout=30) as client:
            for name, target, python_pids, envoy_pids in scenarios:
                rows.append((name, *run_scenario(client, target, args.requests, python_pids, envoy_pids)))
    finally:
        supervisor.stop_all()
    table = _table(rows, args)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"responses-stream-{time.strftime('%Y%m%dT%H%M%S')}.md").write_text(table + "\n")
    return 0


def _table(rows: list[tuple[str, list[list[float]], float, float]], args: argparse.Namespace) -> str:
    baseline_ttft = statistics.median(a[0] for a in rows[0][1])
    lines = [f"{args.requests} streams per scenario, one at a time; provider pause {args.pause_ms} ms per event", "",
             "| scenario | text events/stream | TTFT ms | TTFT added ms | ext_proc CPU ms/req | ext_proc CPU ms/event "
             "| Envoy CPU ms/req | total CPU ms/event |",
             "|---|---|---|---|---|---|---|---|"]
    for name, arrivals, python_cpu, envoy_cpu in rows:
        events = sum(len(a) for a in arrivals)
        ttft = statistics.median(a[0] for a in arrivals)
        requests = len(arrivals)
        lines.append(f"| {name} | {events / requests:.0f} | {1000 * ttft:.2f} | {1000 * (ttft - baseline_ttft):.2f} "
                     f"| {1000 * python_cpu / requests:.3f} | {1000 * python_cpu / events:.3f} "
                     f"| {1000 * envoy_cpu / requests:.3f} | {1000 * (python_cpu + envoy_cpu) / events:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
