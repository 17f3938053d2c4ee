"""What the Redis limiter costs per request, measured in-process: median reserve and settle against a local Redis.

    python load/limiter_cost.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import time

import yaml

from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import free_port, wait_for_port
from ext_proc.limits.estimate import Usage
from ext_proc.limits.limiter import Demand
from ext_proc.limits.setup import build_limiter


async def time_limiter_calls(redis_url: str, rounds: int) -> tuple[float, float, float, float]:
    """Median microseconds of one reservation and of one settlement, one at a time; then the process CPU
    microseconds per reserve+settle pair, one at a time and with 32 requests in flight."""
    config = parse_config(yaml.safe_dump({
        "backends": [{"id": "b", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "b", "model": "m"}]}],
        "limits": {"redis": {"url": redis_url, "key_prefix": "bench:"},
                   "per_key": [{"window": "hour", "total_tokens": 10**12, "requests": 10**9}]}}))
    limiter = build_limiter(config)
    assert limiter is not None
    scopes = limiter.scopes("k", None, None, "m", "b")
    reserve_times, settle_times = [], []
    cpu_started = time.process_time()
    for _ in range(rounds):
        started = time.perf_counter()
        reservation = await limiter.reserve(scopes, Demand(20, 16, 0), "b")
        reserved = time.perf_counter()
        await limiter.settle(reservation, Usage(9, 1), "b", "m")
        reserve_times.append(reserved - started)
        settle_times.append(time.perf_counter() - reserved)
    sequential_cpu = (time.process_time() - cpu_started) / rounds * 1e6

    async def client(count: int) -> None:
        for _ in range(count):
            reservation = await limiter.reserve(scopes, Demand(20, 16, 0), "b")
            await limiter.settle(reservation, Usage(9, 1), "b", "m")

    cpu_started = time.process_time()
    await asyncio.gather(*(client(rounds // 32) for _ in range(32)))
    concurrent_cpu = (time.process_time() - cpu_started) / (32 * (rounds // 32)) * 1e6
    await limiter.store.close()
    return (statistics.median(reserve_times) * 1e6, statistics.median(settle_times) * 1e6, sequential_cpu,
            concurrent_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 10)
        reserve_us, settle_us, sequential_cpu, concurrent_cpu = asyncio.run(
            time_limiter_calls(f"redis://127.0.0.1:{port}", args.rounds))
        print(f"limiter against Redis, medians over {args.rounds}: reserve {reserve_us:.0f} µs, "
              f"settle {settle_us:.0f} µs; gateway CPU per reserve+settle: {sequential_cpu:.0f} µs one at a time, "
              f"{concurrent_cpu:.0f} µs with 32 in flight")
    finally:
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
