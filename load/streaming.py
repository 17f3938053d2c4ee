"""What Babelgate adds to a stream: time to first token, delay per chunk, CPU per chunk.

    python load/streaming.py [--requests 40] [--pause-ms 5]

The upstream is the demo Anthropic provider pausing between events (`slow=MS`), so chunks arrive one by one as a
model would send them. The same streams are read through a plain Envoy proxy (the baseline) and through Envoy +
Babelgate, which translates them to OpenAI chunks. Reported, medians over all requests:
- time to first token (first content chunk) and what the gateway adds to it;
- delay per chunk: how much later than in the baseline chunk k arrives, counted from the first chunk (0 when the
  gateway keeps pace with the provider);
- ext_proc CPU per chunk (process CPU over the run divided by the chunks it translated).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import procstats
from upstreams import start_plain_proxy

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import Supervisor, free_port, python_module
from ext_proc.launch.stack import start_stack

PROMPT = " ".join(f"w{i}" for i in range(60))


def timed_stream(client: httpx.Client, url: str, headers: dict, body: dict) -> list[float]:
    """Arrival times (seconds after the request was sent) of every event carrying generated text."""
    started = time.perf_counter()
    arrivals = []
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and _has_text(orjson.loads(line[6:])):
                arrivals.append(time.perf_counter() - started)
    return arrivals


def _has_text(event: dict) -> bool:
    kind = event.get("type")
    if kind == "content_block_delta":  # Anthropic, read directly
        return bool(event["delta"].get("text"))
    if kind == "response.output_text.delta":  # the Responses API's events
        return bool(event.get("delta"))
    choices = event.get("choices") or [{}]  # OpenAI chunks, through the gateway
    return bool(choices and choices[0].get("delta", {}).get("content"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--pause-ms", type=int, default=5)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-stream-"))
    supervisor = Supervisor(log_dir=workdir)
    key = generate_key()
    try:
        _, ready = supervisor.start_reporting("anthropic", python_module(
            "ext_proc.demo", "--kind", "anthropic", "--name", "anthropic", "--port", "0", "--api-key", "sk-stream",
            "--faults", f"*:slow={args.pause_ms}"))
        provider = f"http://127.0.0.1:{ready['port']}"
        config = {"listener": {"port": free_port(), "admin_port": free_port()},
                  "ext_proc": {"port": free_port()},
                  "backends": [{"id": "anthropic", "schema": "anthropic", "base_url": provider,
                                "api_key": {"env": "STREAM_KEY"}}],
                  "routes": [{"model": "streamer", "backends": [{"backend": "anthropic", "model": "claude-x"}]}],
                  "virtual_keys": [{"id": "bench", "hash": hash_key(key)}]}
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        first = len(supervisor.children)
        stack = start_stack(parse_config(path.read_text()), path, workdir, supervisor,
                            env={"STREAM_KEY": "sk-stream"})
        ext_proc_pid = next(c.process.pid for c in supervisor.children[first:] if c.name.startswith("ext_proc"))
        proxy_port, _ = start_plain_proxy(supervisor, workdir, ready["port"], 23)
        message = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 60, "stream": True}
        direct = (f"http://127.0.0.1:{proxy_port}/v1/messages",
                  {"x-api-key": "sk-stream", "anthropic-version": "2023-06-01"}, {"model": "claude-x", **message})
        gateway = (stack.url + "/v1/chat/completions", {"authorization": f"Bearer {key}"},
                   {"model": "streamer", **message})
        with httpx.Client(timeout=30) as client:
            for target in (direct, gateway):  # warm-up
                timed_stream(client, *target)
            baseline = [timed_stream(client, *direct) for _ in range(args.requests)]
            cpu_before = procstats.cpu_seconds(ext_proc_pid)
            through = [timed_stream(client, *gateway) for _ in range(args.requests)]
            cpu = procstats.cpu_seconds(ext_proc_pid) - cpu_before
    finally:
        supervisor.stop_all()
    chunks = sum(len(arrivals) for arrivals in through)
    ttft_direct = statistics.median(a[0] for a in baseline)
    ttft_gateway = statistics.median(a[0] for a in through)
    lag = [(g[k] - g[0]) - (d[k] - d[0]) for g, d in zip(through, baseline, strict=True)
           for k in range(1, min(len(g), len(d)))]
    table = ("| chunks/stream | pause ms | TTFT Envoy alone ms | TTFT via Babelgate ms | TTFT added ms "
             "| delay per chunk ms (median) | ext_proc CPU ms/chunk |\n|---|---|---|---|---|---|---|\n"
             f"| {chunks // args.requests} | {args.pause_ms} | {1000 * ttft_direct:.2f} | {1000 * ttft_gateway:.2f} | "
             f"{1000 * (ttft_gateway - ttft_direct):.2f} | {1000 * statistics.median(lag):.3f} | "
             f"{1000 * cpu / chunks:.3f} |")
    print(table)
    output = Path(__file__).parent / "results"
    output.mkdir(exist_ok=True)
    (output / f"streaming-{time.strftime('%Y%m%dT%H%M%S')}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
