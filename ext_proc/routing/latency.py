"""Latency averages per backend, as this process saw its attempts: time to first byte and time to the end.

An attempt that failed (an error status, or no answer at all: stalled, cut, timed out) counts as a slow sample —
as long as it lasted, and at least twice the backend's average and `FAILURE_PENALTY` — so a backend that hangs or
fails fast falls behind the others instead of looking quick.
"""

from __future__ import annotations

FAILURE_PENALTY = 1.0
SPIKE_LIMIT = 3.0


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

    def ranking_key(self, streaming: bool) -> dict[str, float]:
        """Streams care about the first token; whole answers about the whole answer."""
        return self.first_byte if streaming else self.total
