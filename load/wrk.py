"""Drive one target with `wrk` (Debian package): fixed concurrency, or a paced rate via wrk's Lua `delay()`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import orjson


def run(url: str, body: dict, key: str, *, connections: int, seconds: float, workdir: Path,
        rate: float | None = None) -> dict:
    """RPS and latency percentiles (ms). With `rate`, each connection waits so the total is about `rate` req/s.

    The waits are exponentially distributed (Poisson arrivals): a fixed delay keeps all connections in step, so
    every request of a burst would queue behind the others and the figure would measure wrk's bursts.
    """
    script = workdir / f"wrk-{abs(hash((url, connections, rate)))}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = [[{orjson.dumps(body).decode()}]]",
             'wrk.headers["Content-Type"] = "application/json"', f'wrk.headers["Authorization"] = "Bearer {key}"']
    if rate:
        mean_ms = 1000 * connections / rate
        lines.append(f"math.randomseed({abs(hash(url)) % 100000})")
        lines.append(f"function delay() return math.floor(-math.log(1 - math.random()) * {mean_ms:.3f}) end")
    script.write_text("\n".join(lines) + "\n")
    # a generous timeout: wrk leaves requests slower than it (2 s by default) out of its percentiles
    output = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s", "--latency",
                             "-s", str(script), url],
                            capture_output=True, text=True, check=True).stdout
    latencies = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50_ms": latencies.get("50"), "p90_ms": latencies.get("90"), "p99_ms": latencies.get("99"),
            "requests": int(requests.group(1)) if requests else 0,
            "non_2xx": int(errors.group(1)) if errors else 0}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
