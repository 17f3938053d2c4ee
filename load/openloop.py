"""The open-loop load harness the per-request benchmarks share (`mcp_call.py`, `cache_hit.py`): a small asyncio
HTTP/1.1 client (keep-alive connections, pre-encoded requests), serial and open-loop Poisson loads, and per-role CPU
accounting of every process on the path.

A way is anything with `name`, `port`, `call() -> bytes` (the next pre-encoded request) and `answered(status, body)`
(the answer is the one expected). Under each load the ways take turns (`rounds` slices each, summed), so background
load that comes and goes falls on all alike. Latency is counted from each call's intended send time, so a call that
waits for a connection or a slow client counts that wait (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import selectors
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import procstats

MAX_CONNECTIONS = 256
TICKS = os.sysconf("SC_CLK_TCK")
SPIN_SECONDS = 0.0003
"""An open-loop call's last stretch before its send time is spun (select with a zero timeout), not slept."""


class Way(Protocol):
    name: str
    port: int

    def call(self) -> bytes: ...

    def answered(self, status: int, body: bytes) -> bool: ...


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `exchange` sends a pre-encoded request and returns (status, head, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        parsed = parse_response(self.buffer)
        if parsed is not None:
            status, head, body, used = parsed
            self.buffer = self.buffer[used:]
            self.waiter.set_result((status, head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))

    async def exchange(self, request: bytes) -> tuple[int, bytes, bytes]:
        if self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


def parse_response(buffer: bytes) -> tuple[int, bytes, bytes, int] | None:
    """(status, head, body, bytes used) of the first complete response in `buffer`, or None while it is partial.
    Framed by `content-length` or chunked transfer-encoding (an SSE answer through Envoy), nothing else."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end]
    status = int(head[9:12])
    lower = head.lower()
    start = end + 4
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        stop = lower.find(b"\r\n", at + 2)
        length = int(head[at + 17:stop if stop >= 0 else len(head)])
        if len(buffer) < start + length:
            return None
        return status, head, buffer[start:start + length], start + length
    if b"\r\ntransfer-encoding: chunked" not in lower:
        raise ValueError(f"unframed answer: {head[:200]!r}")
    parts, position = [], start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";")[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n", line_end + 2)  # no trailers expected: an empty line
            if trailer_end < 0:
                return None
            return status, head, b"".join(parts), trailer_end + 2
        if len(buffer) < line_end + 2 + size + 2:
            return None
        parts.append(buffer[line_end + 2:line_end + 2 + size])
        position = line_end + 2 + size + 2


def header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.encode():
            return value.strip().decode()
    return None



def post(port: int, path: str, body: bytes, extra_headers: str = "") -> bytes:
    """A pre-encoded HTTP/1.1 JSON POST to 127.0.0.1:`port`; `extra_headers`: whole header lines, each ending CRLF."""
    return (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"{extra_headers}content-length: {len(body)}\r\n\r\n").encode() + body


async def connect(port: int) -> Connection:
    _, connection = await asyncio.get_running_loop().create_connection(Connection, "127.0.0.1", port)
    return connection


class Pool:
    """Idle keep-alive connections to one port; a call that finds none opens another (up to MAX_CONNECTIONS)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Connection] = []
        self.opened = 0
        self.freed = asyncio.Event()

    async def fill(self, count: int) -> None:
        while self.opened < count:
            self.opened += 1
            self.idle.append(await connect(self.port))

    async def take(self) -> Connection:
        while True:
            while self.idle:
                connection = self.idle.pop()
                if connection.transport is not None:
                    return connection
                self.opened -= 1
            if self.opened < MAX_CONNECTIONS:
                self.opened += 1
                return await connect(self.port)
            self.freed.clear()
            await self.freed.wait()

    def give(self, connection: Connection) -> None:
        if connection.transport is None:
            self.opened -= 1
        else:
            self.idle.append(connection)
        self.freed.set()

    def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        self.idle.clear()


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    """Seconds from each call's intended send time to its whole answer."""
    lags: list[float] = field(default_factory=list)
    """Seconds from intended to actual send: the client's own lateness (part of the latency)."""
    errors: int = 0
    seconds: float = 0.0

    def add(self, other: Run) -> None:
        self.latencies += other.latencies
        self.lags += other.lags
        self.errors += other.errors
        self.seconds += other.seconds


async def one_call(way: Way, pool: Pool, intended: float, run: Run) -> None:
    clock = time.perf_counter
    connection = await pool.take()
    request = way.call()
    run.lags.append(clock() - intended)
    try:
        status, _, body = await connection.exchange(request)
    except ConnectionError:
        run.errors += 1
        pool.give(connection)
        return
    run.latencies.append(clock() - intended)
    if not way.answered(status, body):
        run.errors += 1
    pool.give(connection)


async def serial(way: Way, pool: Pool, seconds: float) -> Run:
    run = Run()
    clock = time.perf_counter
    started = clock()
    while clock() - started < seconds:
        await one_call(way, pool, clock(), run)
    run.seconds = clock() - started
    return run


async def open_loop(way: Way, pool: Pool, rate: float, seconds: float, seed: int) -> Run:
    """`rate x seconds` calls at Poisson arrival times (uniform over the run, sorted: a Poisson process given its
    count, so every run makes the calls its rate says), each started at its time whatever is still in flight."""
    run = Run()
    arrivals = random.Random(seed)
    clock = time.perf_counter
    started = clock() + 0.01
    tasks = []
    for offset in sorted(arrivals.uniform(0, seconds) for _ in range(max(1, round(rate * seconds)))):
        intended = started + offset
        wait = intended - clock() - SPIN_SECONDS
        if wait > 0:
            await asyncio.sleep(wait)  # wakes ~0.1 ms late on this VM: the rest of the way is spun, loop running
        while clock() < intended:
            await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(one_call(way, pool, intended, run)))
    await asyncio.gather(*tasks)
    run.seconds = max(seconds, clock() - started)
    return run


# --- the measurement ---------------------------------------------------------------------------------------------

@dataclass
class Processes:
    """The pids whose CPU every row counts, by role."""

    roles: dict[str, list[int]]

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far by role, `client` (this process) and `machine` (every CPU's busy time, /proc/stat)."""
        seconds = {role: sum(procstats.cpu_seconds(pid) for pid in pids) for role, pids in self.roles.items()}
        seconds["client"] = time.process_time()
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
        seconds["machine"] = (sum(fields[:8]) - fields[3] - fields[4]) / TICKS  # all but idle and iowait
        return seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@dataclass
class Measured:
    """One way under one load, summed over the rounds."""

    way: Way
    pool: Pool
    processes: Processes
    """Whose CPU this way's slices count: the way's own `processes` if it has them, else the load's."""
    run: Run = field(default_factory=Run)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, run: Run, before: dict[str, float], after: dict[str, float]) -> None:
        self.run.add(run)
        for role in after:
            self.cpu[role] = self.cpu.get(role, 0.0) + after[role] - before[role]


async def measure_load(ways: list[Way], processes: Processes, mode: str, rate: float | None, seconds: float,
                       warmup: float, rounds: int) -> list[dict]:
    """Every way under one load: warmed up, then `rounds` slices of `seconds / rounds` each, the ways taking turns,
    so a change in the machine's background load falls on all of them alike."""
    measured = [Measured(way, Pool(way.port), getattr(way, "processes", None) or processes) for way in ways]

    def go(item: Measured, duration: float, seed: int) -> asyncio.Future[Run]:
        if rate is None:
            return asyncio.ensure_future(serial(item.way, item.pool, duration))
        return asyncio.ensure_future(open_loop(item.way, item.pool, rate, duration, seed))

    for item in measured:
        await item.pool.fill(1 if rate is None else min(MAX_CONNECTIONS, max(2, int(rate / 50) + 2)))
        await go(item, warmup, 1)
    gc.collect()
    gc.freeze()
    try:
        for index in range(rounds):
            for item in measured:
                before = item.processes.cpu()
                run = await go(item, seconds / rounds, 2 + index)  # the same arrivals for every way
                item.add(run, before, item.processes.cpu())
    finally:
        gc.unfreeze()
    rows = []
    for item in measured:
        item.pool.close()
        rows.append(summary(item, item.processes, mode, rate))
    return rows


def summary(item: Measured, processes: Processes, mode: str, rate: float | None) -> dict:
    run, cpu = item.run, item.cpu
    calls = max(1, len(run.latencies))
    per_call = {role: 1000 * cpu[role] / calls for role in processes.roles}
    ms = [1000 * latency for latency in run.latencies]
    counted = sum(cpu[role] for role in processes.roles) + cpu["client"]
    return {"way": item.way.name, "mode": mode, "rate": rate, "calls": len(run.latencies), "errors": run.errors,
            "seconds": run.seconds, "calls_per_s": len(run.latencies) / run.seconds,
            "p50_ms": percentile(ms, 0.50), "p90_ms": percentile(ms, 0.90), "p99_ms": percentile(ms, 0.99),
            "mean_ms": statistics.fmean(ms) if ms else 0.0,
            "send_lag_p50_ms": 1000 * percentile(run.lags, 0.5), "send_lag_p99_ms": 1000 * percentile(run.lags, 0.99),
            "connections": item.pool.opened,
            **{f"{role}_cpu_ms_per_call": value for role, value in per_call.items()},
            "total_cpu_ms_per_call": sum(per_call.values()),
            "client_cpu_ms_per_call": 1000 * cpu["client"] / calls,
            "other_load_cores": max(0.0, cpu["machine"] - counted) / run.seconds}


def markdown(rows: list[dict], roles: list[str], labels: dict[str, str] | None = None) -> str:
    """One line per way and load; `added` columns against the way named `(a) ...` under the same load. `roles`: the
    CPU columns, in order (`labels` names them, e.g. {"envoy": "Envoy"})."""
    labels = labels or {}
    baseline = {row["mode"]: row for row in rows if row["way"].startswith("(a)")}
    role_heads = " | ".join(f"{labels.get(role, role)} CPU ms/call" for role in roles)
    lines = [f"| way | load | calls/s | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms | {role_heads} "
             "| total CPU ms/call | added CPU ms/call | client CPU ms/call | client send lag p50/p99 ms "
             "| other load, cores | errors |", "|" + "---|" * (14 + len(roles))]
    for row in rows:
        base = baseline.get(row["mode"])

        def added(key: str, row: dict = row, base: dict | None = base) -> str:
            return "-" if base is None or base is row else f"{row[key] - base[key]:+.2f}"

        cells = [row["way"], row["mode"], f"{row['calls_per_s']:.0f}", f"{row['p50_ms']:.2f}", f"{row['p90_ms']:.2f}",
                 f"{row['p99_ms']:.2f}", added("p50_ms"), added("p99_ms"),
                 *(f"{row[f'{role}_cpu_ms_per_call']:.3f}" for role in roles),
                 f"{row['total_cpu_ms_per_call']:.3f}", added("total_cpu_ms_per_call"),
                 f"{row['client_cpu_ms_per_call']:.3f}",
                 f"{row['send_lag_p50_ms']:.2f}/{row['send_lag_p99_ms']:.2f}", f"{row['other_load_cores']:.2f}",
                 str(row["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def drive(ways: list[Way], processes: Processes, loads: list[tuple[str, float | None]], seconds: float,
                warmup: float, rounds: int, report: Callable[[list[dict]], None]) -> list[dict]:
    """Every load in turn, each measuring every way; `report` gets the rows so far after each load."""
    rows: list[dict] = []
    for mode, rate in loads:
        rows += await measure_load(ways, processes, mode, rate, seconds, warmup, rounds)
        report(rows)
    return rows


def select_loop() -> asyncio.AbstractEventLoop:
    """select(2) takes a timeout in microseconds (epoll in milliseconds), so calls leave on time."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def save(rows: list[dict], text: str, output: Path, kind: str) -> None:
    """The run's table on stdout, and its rows and table in `output` as `<kind>-<time>.json` and `.md`."""
    print("\n" + text)
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (output / f"{kind}-{stamp}.json").write_text(json.dumps(rows, indent=2))
    (output / f"{kind}-{stamp}.md").write_text(text + "\n")


def arguments(description: str, rates: list[float], output: Path, argv: list[str] | None) -> argparse.Namespace:
    """The options every open-loop benchmark takes; `--smoke` shrinks the run to a few calls per row (CI)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few calls per row, for CI")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per way and load")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds per way before each load")
    parser.add_argument("--rounds", type=int, default=5, help="the ways take turns this many times per load")
    parser.add_argument("--rates", type=float, nargs="*", default=rates, help="open-loop calls per second")
    parser.add_argument("--output", type=Path, default=output)
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.rounds, args.rates = 1, 0.2, 1, [50]
    return args
