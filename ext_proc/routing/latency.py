"""Latency averages per backend, as this process saw its attempts: time to first byte and time to the end.

An attempt that failed (an error status, or no answer at all: stalled, cut, timed out) counts as a slow sample —
as long as it lasted, and at least twice the backend's average and `FAILURE_PENALTY` — so a backend that hangs or
fails fast falls behind the others instead of looking quick.

Envoy balances a request's two ext_proc streams (its route stage, each attempt's stage) over the processes on its
own, so the process that ranks a route's backends is often not the one that timed the attempt: with two processes
and least-request balancing, nearly never. An attempt of a route ranked by latency therefore hands its samples to
the route stage in an internal response header (`handed`), which records them when they came from another process
(`take_handed`). A failed attempt that Envoy retried hands nothing (its answer is dropped): only its own process
learns of it, as do Envoy's outlier detection and the shared cooldowns.
"""

from __future__ import annotations

import secrets

FAILURE_PENALTY = 1.0
SPIKE_LIMIT = 3.0
PROCESS_TOKEN = secrets.token_hex(6)
"""Names this process in the samples it hands on, so the process that recorded them already does not again."""


def handed(first_byte: float, total: float | None, ok: bool) -> str:
    """An attempt's samples for `take_handed`: time to first byte (or to the failure) and, for a whole answer that
    reached its end, the time to the end."""
    if not ok:
        return f"{PROCESS_TOKEN} failed {first_byte:.6f}"
    if total is None:
        return f"{PROCESS_TOKEN} ok {first_byte:.6f}"
    return f"{PROCESS_TOKEN} ok {first_byte:.6f} {total:.6f}"


class LatencyAverages:
    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing
        self.first_byte: dict[str, float] = {}
        self.total: dict[str, float] = {}

    def record(self, table: dict[str, float], backend: str, seconds: float) -> None:
        previous = table.get(backend)
        table[backend] = seconds if previous is None else previous + self.smoothing * (seconds - previous)

    def record_answer(self, table: dict[str, float], backend: str, seconds: float) -> None:
        """A sample far above the average moves it at most to `SPIKE_LIMIT` times itself (plus 10 ms): one hiccup
        of a fast backend must not put it behind a slow one it would then never be measured against again, while a
        backend that really slowed down gets there within a few samples."""
        previous = table.get(backend)
        if previous is not None:
            seconds = min(seconds, SPIKE_LIMIT * previous + 0.01)
        self.record(table, backend, seconds)

    def on_first_byte(self, backend: str, seconds: float) -> None:
        self.record_answer(self.first_byte, backend, seconds)

    def on_end(self, backend: str, seconds: float) -> None:
        self.record_answer(self.total, backend, seconds)

    def on_failure(self, backend: str, seconds: float) -> None:
        for table in (self.first_byte, self.total):
            self.record(table, backend, max(seconds, 2 * table.get(backend, 0.0), FAILURE_PENALTY))

    def take_handed(self, backend: str, value: str) -> None:
        """Record what an attempt that ran in another process handed on (`handed`); ignores what it can't read."""
        parts = value.split(" ")
        if len(parts) < 3 or parts[0] == PROCESS_TOKEN:
            return
        try:
            seconds = [float(part) for part in parts[2:4]]
        except ValueError:
            return
        if not all(0.0 <= s < 86400.0 for s in seconds):  # also refuses nan
            return
        if parts[1] == "failed":
            self.on_failure(backend, seconds[0])
        elif parts[1] == "ok":
            self.on_first_byte(backend, seconds[0])
            if len(seconds) > 1:
                self.on_end(backend, seconds[1])

    def ranking_key(self, streaming: bool) -> dict[str, float]:
        """Streams care about the first token; whole answers about the whole answer."""
        return self.first_byte if streaming else self.total
