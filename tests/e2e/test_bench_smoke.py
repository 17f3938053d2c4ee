"""The benchmark harness runs end to end in its smoke mode (timings are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_measures_every_scenario(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "load" / "bench.py"), "--smoke", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("smoke-*.json")).read_text())
    rows = report["rows"]
    assert {(row["scenario"][:3], row["mode"]) for row in rows} == {
        (scenario, mode) for scenario in ("(a)", "(b)", "(c)", "(d)", "(e)", "(h)")
        for mode in ("c=2", "open loop 50/s")}
    assert all(row["non_2xx"] == 0 and row["requests"] > 0 for row in rows)
    gateway = [row for row in rows if not row["scenario"].startswith("(a)")]
    assert all(row["python_cpu_ms_per_req"] > 0 and row["gateway_cpu_ms_per_req"] > 0 for row in gateway)
    alone = [row for row in rows if row["scenario"].startswith("(a)")]
    assert all(row["python_cpu_ms_per_req"] == 0 for row in alone)  # Envoy alone has no Python on its path
    table = next(tmp_path.glob("smoke-*.md")).read_text()
    assert table.startswith("`python load/bench.py --smoke") and "commit " in report["header"]
    assert "| scenario |" in table and "| target | this run | met |" in table


def test_responses_stream_benchmark_compares_the_three_ways(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "load" / "responses_stream.py"), "--requests", "2",
                             "--pause-ms", "1", "--output", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = next(tmp_path.glob("responses-stream-*.md")).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| (")]
    assert [row[:5] for row in rows] == ["| (a)", "| (b)", "| (c)"]
    assert all(float(row.split("|")[2]) > 0 for row in rows)  # text events per stream: every way streamed text


def test_mcp_call_benchmark_compares_direct_and_gateway(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "load" / "mcp_call.py"), "--smoke", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(next(tmp_path.glob("mcp-call-smoke-*.json")).read_text())
    assert {(row["way"][:3], row["mode"]) for row in rows} == {
        (way, mode) for way in ("(a)", "(b)", "(c)") for mode in ("serial", "50/s")}
    assert all(row["errors"] == 0 and row["calls"] > 0 and row["p50_ms"] > 0 for row in rows)
    gateway = [row for row in rows if row["way"].startswith("(c)")]
    assert all(row["total_cpu_ms_per_call"] > 0 for row in gateway)
    serial = next(row for row in gateway if row["mode"] == "serial")  # hundreds of calls: every process ticked
    assert serial["ext_proc_cpu_ms_per_call"] > 0 and serial["envoy_cpu_ms_per_call"] > 0
    table = next(tmp_path.glob("mcp-call-smoke-*.md")).read_text()
    assert table.startswith("| way |")
    assert "| (a) direct | serial |" in table and "| (c) gateway | 50/s |" in table
    assert "| (c) gateway | 50/s |" in result.stdout


def test_cache_hit_benchmark_compares_hit_miss_and_envoy_alone(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "load" / "cache_hit.py"), "--smoke", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(next(tmp_path.glob("cache-hit-smoke-*.json")).read_text())
    ways = {row["way"][:3] for row in rows}
    assert {"(a)", "(b)", "(c)", "(d)"} <= ways  # (e) and (f) when redis-server is installed (the suite installs it)
    assert all(row["errors"] == 0 and row["calls"] > 0 and row["p50_ms"] > 0 for row in rows)
    table = next(tmp_path.glob("cache-hit-smoke-*.md")).read_text()
    assert "| (a) Envoy alone | serial |" in table and "| (d) gateway, hit | 50/s |" in table


def test_stream_chunk_benchmark_measures_every_chunk_of_every_way(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "load" / "stream_chunks.py"), "--smoke", "--output",
                             str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(next(tmp_path.glob("stream-chunks-smoke-*.json")).read_text())
    assert {(row["way"][:3], row["streams"]) for row in rows} == {
        (way, streams) for way in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)") for streams in (1, 4)}
    assert all(row["errors"] == 0 and row["chunks"] > 0 and row["delay_p50_ms"] > 0 for row in rows)
    # (e) reads copies of the chunks, (b) and (f) the chunks themselves; (d): Envoy relays them, nothing reads them
    read_by_ext_proc = [row for row in rows if row["way"][:3] in ("(b)", "(e)", "(f)")]
    assert all(row["ext_proc_cpu_ms_per_chunk"] > 0 for row in read_by_ext_proc)
