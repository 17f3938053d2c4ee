"""`babelgate usage --from-log DIR`: the Parquet request log summed up per key, model and backend, and optionally a
PNG chart of traffic and latency over time. Aggregation runs in Arrow (group-by with t-digest quantiles), so a log
of millions of rows is summarised without loading it into Python objects."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import fs

GROUP_BY = ("key_id", "requested_model", "backend")
_COLUMNS = ("key", "model", "backend", "requests", "errors", "error rate", "input tokens", "output tokens",
            "cost USD", "p50 ms", "p95 ms")


def read_log(root: str, filesystem: fs.FileSystem | None = None) -> pa.Table:
    dataset = ds.dataset(root, filesystem=filesystem, format="parquet", partitioning="hive")
    return dataset.to_table()


def summarize(table: pa.Table) -> list[dict]:
    """One row per (key, requested model, backend), busiest first."""
    if table.num_rows == 0:
        return []
    table = table.append_column("failed", pc.cast(pc.greater_equal(table["status"], 400), pa.int64()))
    table = table.set_column(table.schema.get_field_index("backend"), "backend",
                             pc.fill_null(table["backend"], "-"))
    grouped = table.group_by(list(GROUP_BY)).aggregate([
        ("request_id", "count"), ("failed", "sum"), ("input_tokens", "sum"), ("output_tokens", "sum"),
        ("cost_usd", "sum"), ("latency_ms", "tdigest", pc.TDigestOptions(q=[0.5, 0.95])),
    ])
    rows = []
    for entry in grouped.to_pylist():
        requests = entry["request_id_count"]
        quantiles = entry["latency_ms_tdigest"] or [None, None]
        rows.append({
            "key": entry["key_id"], "model": entry["requested_model"], "backend": entry["backend"],
            "requests": requests, "errors": entry["failed_sum"],
            "error rate": entry["failed_sum"] / requests if requests else 0.0,
            "input tokens": entry["input_tokens_sum"], "output tokens": entry["output_tokens_sum"],
            "cost USD": entry["cost_usd_sum"], "p50 ms": quantiles[0], "p95 ms": quantiles[1],
        })
    rows.sort(key=lambda row: (-row["requests"], row["key"] or "", row["model"] or ""))
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "The request log is empty."
    cells = [[_cell(name, row[name]) for name in _COLUMNS] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(_COLUMNS)]
    header = "  ".join(name.ljust(width) for name, width in zip(_COLUMNS, widths, strict=True))
    lines = ["  ".join(value.rjust(width) if i >= 3 else value.ljust(width)
                       for i, (value, width) in enumerate(zip(line, widths, strict=True))) for line in cells]
    return "\n".join([header, "  ".join("-" * width for width in widths), *lines])


def _cell(name: str, value: object) -> str:
    if value is None:
        return "-"
    if name == "error rate":
        return f"{value:.1%}"
    if name == "cost USD":
        return f"{value:.4f}"
    if name.endswith(" ms"):
        return f"{value:.1f}"
    return str(value)


def write_chart(table: pa.Table, path: Path) -> None:
    """Requests per minute and p50/p95 latency per minute, one above the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = pc.floor_temporal(table["timestamp"], unit="minute")
    per_minute = pa.table({"minute": minutes, "latency_ms": table["latency_ms"]}).group_by("minute").aggregate([
        ("latency_ms", "count"), ("latency_ms", "tdigest", pc.TDigestOptions(q=[0.5, 0.95]))]).sort_by("minute")
    entries = per_minute.to_pylist()
    times = [entry["minute"] for entry in entries]
    figure, (traffic, latency) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    traffic.bar(times, [entry["latency_ms_count"] for entry in entries], width=1 / 1440 * 0.8)
    traffic.set_ylabel("requests / minute")
    latency.plot(times, [entry["latency_ms_tdigest"][0] for entry in entries], label="p50")
    latency.plot(times, [entry["latency_ms_tdigest"][1] for entry in entries], label="p95")
    latency.set_ylabel("latency ms")
    latency.legend()
    figure.suptitle("Babelgate requests")
    figure.autofmt_xdate()
    figure.savefig(path, dpi=100)
    plt.close(figure)
