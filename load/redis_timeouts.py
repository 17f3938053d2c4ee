"""How often a Redis reservation misses its timeout when the machine is busy, and what the one retry saves.

    python load/redis_timeouts.py [--requests 20000] [--in-flight 64] [--hogs 2]

A local redis-server, `--hogs` processes spinning on the CPU (the gateway's own Envoy and ext_proc processes under
load), and the limiter reserving against one `fail_closed` limit at `--in-flight` requests at once, for each store
timeout. Reported per timeout: calls that missed it (store errors), how many of those the retry rescued, and the
requests a `fail_closed` limit would still have refused.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ext_proc.errors import Unavailable
from ext_proc.launch.processes import free_port, wait_for_port
from ext_proc.limits.limiter import Demand, Limiter, Rule, compile_tables
from ext_proc.limits.redis_store import RedisStore


def _spin(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        pass


async def _run(url: str, timeout: float, requests: int, in_flight: int) -> dict:
    store = RedisStore.from_url(url, timeout=timeout)
    limiter = Limiter(store, _tables(), prefix="bgt:")  # type: ignore[arg-type]
    rule = Rule("hour", "requests", 10**12, fail_open=False)
    gate = asyncio.Semaphore(in_flight)
    refused = 0

    async def one(index: int) -> None:
        nonlocal refused
        async with gate:
            try:
                await limiter.reserve([("key", f"k{index % 50}", (rule,))], Demand(10, 10, 0), "b")
            except Unavailable:
                refused += 1

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.monotonic() - started
    await store.close()
    stats = limiter.stats
    return {"timeout_ms": timeout * 1000, "requests": requests, "first_misses": stats.store_retries,
            "failed_after_retry": stats.store_errors, "fail_closed_refusals": refused, "seconds": round(elapsed, 1)}


def _tables() -> object:
    from ext_proc.config.loading import parse_config

    return compile_tables(parse_config(
        "backends: [{id: b, schema: openai, base_url: 'http://127.0.0.1:9/v1'}]\n"
        "routes: [{model: m, backends: [{backend: b, model: m}]}]\n"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--timeouts", default="0.05,0.1,0.25")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", port, 10)
            print("| store timeout | reservations | calls that missed it (each a refusal without the retry) | "
                  "failed again on the retry | fail_closed refusals | seconds |")
            print("|---|---|---|---|---|---|")
            for timeout in (float(t) for t in args.timeouts.split(",")):
                hogs = [multiprocessing.Process(target=_spin, args=(time.monotonic() + 600,))
                        for _ in range(args.hogs)]
                for hog in hogs:
                    hog.start()
                try:
                    row = asyncio.run(_run(f"redis://127.0.0.1:{port}", timeout, args.requests, args.in_flight))
                finally:
                    for hog in hogs:
                        hog.terminate()
                print(f"| {row['timeout_ms']:.0f} ms | {row['requests']} | {row['first_misses']} | "
                      f"{row['failed_after_retry']} | {row['fail_closed_refusals']} | {row['seconds']} |", flush=True)
        finally:
            redis.terminate()
            redis.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
