"""The request log: one row per request, written as Parquet in batches by a background thread.

Requests never wait for it: `record` appends to a bounded queue and returns; when the queue is full the row is
dropped, counted and logged (once per burst). A batch is written when it reaches `batch_rows` or `flush_seconds`
after its first row, to a local directory or S3-compatible storage (`pyarrow.fs`), partitioned by date:
`<root>/date=2026-12-02/part-20261202T151040-4242-000001.parquet`. `close` writes what is queued before returning,
so a graceful shutdown loses nothing.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("timestamp", pa.timestamp("us", tz="UTC")),
    ("request_id", pa.string()),
    ("key_id", pa.string()),
    ("team", pa.string()),
    ("user", pa.string()),
    ("endpoint", pa.string()),
    ("route", pa.string()),
    ("backend", pa.string()),
    ("requested_model", pa.string()),
    ("served_model", pa.string()),
    ("status", pa.int32()),
    ("attempts", pa.int32()),
    ("stream", pa.bool_()),
    ("latency_ms", pa.float64()),
    ("ttft_ms", pa.float64()),
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("cached_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("error_type", pa.string()),
    ("prompt", pa.string()),
    ("completion", pa.string()),
    ("mcp_method", pa.string()),
    ("mcp_server", pa.string()),
    ("mcp_target", pa.string()),
    ("mcp_session", pa.string()),
    ("bytes_in", pa.int64()),
    ("bytes_out", pa.int64()),
    ("cache", pa.string()),
    ("cache_saved_usd", pa.float64()),
    ("prompt_template", pa.string()),
    ("prompt_version", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)


@dataclass
class LogStats:
    written_rows: int = 0
    written_files: int = 0
    dropped_rows: int = 0
    write_errors: int = 0


def open_filesystem(root: str, *, endpoint: str | None = None, region: str | None = None,
                    access_key: str | None = None, secret_key: str | None = None) -> tuple[fs.FileSystem, str]:
    """`/var/log/babelgate` or `s3://bucket/prefix` (with an endpoint for S3-compatible storage)."""
    if root.startswith("s3://"):
        scheme = "https"
        endpoint_override = None
        if endpoint is not None:
            scheme, _, endpoint_override = endpoint.partition("://")
        filesystem = fs.S3FileSystem(access_key=access_key, secret_key=secret_key, region=region or "us-east-1",
                                     endpoint_override=endpoint_override, scheme=scheme)
        return filesystem, root.removeprefix("s3://").rstrip("/")
    path = os.path.abspath(root)
    return fs.LocalFileSystem(), path


class RequestLog:
    def __init__(self, filesystem: fs.FileSystem, root: str, *, batch_rows: int = 1000, flush_seconds: float = 5.0,
                 queue_rows: int = 100_000) -> None:
        self._fs = filesystem
        self._root = root
        self._batch_rows = batch_rows
        self._flush_seconds = flush_seconds
        self._queue: collections.deque[dict] = collections.deque()
        self._queue_rows = queue_rows
        self._wake = threading.Condition()
        self._closing = False
        self._dropping = False
        self._sequence = 0
        self.stats = LogStats()
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def record(self, row: dict) -> None:
        """Never blocks: a full queue drops the row (counted)."""
        if len(self._queue) >= self._queue_rows or self._closing:
            self.stats.dropped_rows += 1
            if not self._dropping:
                self._dropping = True
                log.warning("request log queue full (%d rows): dropping rows until the writer catches up",
                            self._queue_rows)
            return
        self._queue.append(row)
        if len(self._queue) >= self._batch_rows:
            with self._wake:
                self._wake.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued, then stop the writer."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._closing and len(self._queue) < self._batch_rows:
                    self._wake.wait(self._flush_seconds)
                closing = self._closing
            self._write_available()
            if closing:
                self._write_available()
                return

    def _write_available(self) -> None:
        while self._queue:
            rows = [self._queue.popleft() for _ in range(min(len(self._queue), self._batch_rows * 10))]
            self._dropping = False
            self._write(rows)

    def _write_whole(self, table: pa.Table, directory: str, path: str) -> None:
        """A reader (DuckDB, `babelgate usage --from-log`, a dataset scan) never sees a half-written file: on a local
        disk the file is written under a hidden name (datasets skip names starting with "."), then renamed; an S3
        object only appears once its upload completes."""
        if not isinstance(self._fs, fs.LocalFileSystem):
            pq.write_table(table, path, filesystem=self._fs, compression="zstd")
            return
        hidden = f"{directory}/.{path.rpartition('/')[2]}.tmp"
        pq.write_table(table, hidden, filesystem=self._fs, compression="zstd")
        self._fs.move(hidden, path)

    def _write(self, rows: list[dict]) -> None:
        by_date: dict[str, list[dict]] = collections.defaultdict(list)
        for row in rows:
            by_date[row["timestamp"].strftime("%Y-%m-%d")].append(row)
        for date, group in by_date.items():
            self._sequence += 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            directory = f"{self._root}/date={date}"
            path = f"{directory}/part-{stamp}-{os.getpid()}-{self._sequence:06d}.parquet"
            table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in group], schema=SCHEMA)
            for attempt in range(3):
                try:
                    self._fs.create_dir(directory, recursive=True)
                    self._write_whole(table, directory, path)
                    self.stats.written_rows += len(group)
                    self.stats.written_files += 1
                    break
                except (OSError, pa.ArrowException) as exc:
                    if attempt == 2:
                        self.stats.write_errors += 1
                        self.stats.dropped_rows += len(group)
                        log.error("request log: %d rows could not be written to %s: %s", len(group), path, exc)
                    else:
                        time.sleep(0.5 * (attempt + 1))
