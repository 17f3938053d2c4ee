"""The Parquet request log: rows read back with pyarrow, partitions by date, a bounded queue that never blocks,
nothing lost on close, and S3-compatible storage (moto's server on 127.0.0.1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pyarrow.dataset as ds
import pytest
from moto.server import ThreadedMotoServer
from pyarrow import fs

from ext_proc.launch.processes import free_port
from ext_proc.telemetry import request_log
from ext_proc.telemetry.request_log import COLUMNS, RequestLog, open_filesystem

from ..eventually import eventually


def _row(index: int, when: datetime | None = None) -> dict:
    return {"timestamp": when or datetime(2026, 12, 2, 12, 0, tzinfo=UTC), "request_id": f"r{index}",
            "key_id": "alice", "route": "gpt-4o", "backend": "oa", "requested_model": "gpt-4o",
            "served_model": "gpt-4o-2024", "status": 200, "attempts": 1, "stream": False, "latency_ms": 12.5,
            "input_tokens": 10, "output_tokens": index, "cost_usd": 0.001}


def _read(filesystem: fs.FileSystem, root: str) -> list[dict]:
    dataset = ds.dataset(root, filesystem=filesystem, format="parquet", partitioning="hive")
    return sorted(dataset.to_table().to_pylist(), key=lambda row: row["request_id"])


def test_rows_come_back_with_every_column(tmp_path: Path) -> None:
    filesystem, root = open_filesystem(str(tmp_path / "log"))
    log = RequestLog(filesystem, root, batch_rows=10, flush_seconds=60)
    for index in range(25):
        log.record(_row(index))
    log.close()
    rows = _read(filesystem, root)
    assert len(rows) == 25
    assert set(COLUMNS) <= set(rows[0])
    assert rows[0]["key_id"] == "alice" and rows[0]["prompt"] is None
    assert log.stats.written_rows == 25 and log.stats.dropped_rows == 0


def test_files_are_partitioned_by_date(tmp_path: Path) -> None:
    filesystem, root = open_filesystem(str(tmp_path / "log"))
    log = RequestLog(filesystem, root, batch_rows=100, flush_seconds=60)
    day = datetime(2026, 12, 2, 23, 59, tzinfo=UTC)
    log.record(_row(1, day))
    log.record(_row(2, day + timedelta(minutes=2)))
    log.close()
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["date=2026-12-02", "date=2026-12-03"]


def test_a_partial_batch_is_written_after_flush_seconds(tmp_path: Path) -> None:
    filesystem, root = open_filesystem(str(tmp_path / "log"))
    log = RequestLog(filesystem, root, batch_rows=1000, flush_seconds=0.2)
    log.record(_row(1))
    deadline = time.monotonic() + 5
    while log.stats.written_rows == 0:
        assert time.monotonic() < deadline, "a lone row was never written"
        time.sleep(0.05)
    log.close()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    filesystem, root = open_filesystem(str(tmp_path / "log"))
    gate = threading.Event()
    log = RequestLog(filesystem, root, batch_rows=1000, flush_seconds=60, queue_rows=5)
    original = log._write

    def slow_write(rows: list[dict]) -> None:
        gate.wait(5)
        original(rows)

    log._write = slow_write  # type: ignore[method-assign]
    started = time.monotonic()
    for index in range(8):
        log.record(_row(index))
    assert time.monotonic() - started < 3  # the writer is held for 5 s: a blocking record would wait it out
    assert log.stats.dropped_rows == 3
    gate.set()
    log.close()
    assert log.stats.written_rows == 5


def test_close_writes_everything_still_queued(tmp_path: Path) -> None:
    filesystem, root = open_filesystem(str(tmp_path / "log"))
    log = RequestLog(filesystem, root, batch_rows=10_000, flush_seconds=3600)
    for index in range(500):
        log.record(_row(index))
    log.close()
    assert len(_read(filesystem, root)) == 500


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_s3_compatible_storage(s3_endpoint: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
    client.create_bucket(Bucket="llm-logs")
    filesystem, root = open_filesystem("s3://llm-logs/babelgate", endpoint=s3_endpoint, access_key="test",
                                       secret_key="test")
    log = RequestLog(filesystem, root, batch_rows=3, flush_seconds=60)
    for index in range(7):
        log.record(_row(index))
    log.close()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="llm-logs")["Contents"] if not o["Key"].endswith("/")]
    assert keys and all(k.startswith("babelgate/date=2026-12-02/part-") and k.endswith(".parquet") for k in keys)
    assert [row["request_id"] for row in _read(filesystem, root)] == [f"r{i}" for i in range(7)]


def test_a_reader_never_sees_a_half_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is written under a hidden name and renamed whole: a dataset scan running meanwhile (here, at the moment
    the write happens) sees only complete files."""
    filesystem, root = open_filesystem(str(tmp_path / "log"))
    seen_during_writes: list[int] = []
    real_write = request_log.pq.write_table

    def write_and_look(table: object, where: str, **options: object) -> None:
        real_write(table, where, **options)  # type: ignore[arg-type]
        assert where.rpartition("/")[2].startswith(".")
        seen_during_writes.append(len(_read(filesystem, root)))  # the hidden file is complete here, yet unseen

    monkeypatch.setattr(request_log.pq, "write_table", write_and_look)
    log = RequestLog(filesystem, root, batch_rows=5, flush_seconds=60)
    for index in range(5):
        log.record(_row(index))
    eventually(lambda: log.stats.written_rows == 5, what="the first batch written")
    for index in range(5, 10):
        log.record(_row(index))
    log.close()
    assert seen_during_writes == [0, 5] and len(_read(filesystem, root)) == 10
    assert not [p for p in (tmp_path / "log").rglob("*") if p.name.startswith(".")]
