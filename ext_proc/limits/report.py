"""`babelgate usage`: current usage and remaining quota per scope, read from the limiter's store."""

from __future__ import annotations

import time
from typing import NamedTuple

from .estimate import MICRO
from .limiter import LimitTables, Rule
from .windows import duration_text, seconds_until, window_bounds


class UsageRow(NamedTuple):
    scope: str
    scope_id: str
    metric: str
    window: str
    used: int
    limit: int | None
    resets_in: int


def usage_rows(values: dict[str, int], tables: LimitTables, prefix: str, now: float | None = None) -> list[UsageRow]:
    """Counters of the windows open now, each with the limit that governs it."""
    now = time.time() if now is None else now
    rows = []
    for key, used in values.items():
        parsed = _parse(key, prefix)
        if parsed is None:
            continue
        kind, scope_id, metric, window, start = parsed
        current, end = window_bounds(window, now)
        if start != current:
            continue
        limits = [r.limit for r in _rules(tables, kind, scope_id) if r.metric == metric and r.window == window]
        rows.append(UsageRow(kind, scope_id, metric, window, used, min(limits) if limits else None,
                             seconds_until(end, now)))
    return sorted(rows)


def format_rows(rows: list[UsageRow]) -> str:
    if not rows:
        return "No usage recorded in the current windows."
    table = [("scope", "id", "metric", "window", "used", "limit", "remaining", "resets in")]
    for row in rows:
        remaining = None if row.limit is None else max(0, row.limit - row.used)
        table.append((row.scope, row.scope_id, row.metric, row.window, _value(row.metric, row.used),
                      _value(row.metric, row.limit), _value(row.metric, remaining), duration_text(row.resets_in)))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in table)


def _value(metric: str, value: int | None) -> str:
    if value is None:
        return "-"
    return f"${value / MICRO:.4f}" if metric == "usd" else str(value)


def _parse(key: str, prefix: str) -> tuple[str, str, str, str, int] | None:
    if not key.startswith(prefix + "{"):
        return None
    tag, _, rest = key[len(prefix) + 1:].partition("}:")
    kind, _, scope_id = tag.partition(":")
    parts = rest.split(":")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return kind, scope_id, parts[0], parts[1], int(parts[2])


def _rules(tables: LimitTables, kind: str, scope_id: str) -> tuple[Rule, ...]:
    if kind == "key":
        return tables.key_rules.get(scope_id, tables.default_key_rules)
    if kind == "team":
        return tables.team_rules.get(scope_id, ())
    if kind == "user":
        return tables.user_rules
    if kind == "route":
        return tables.route_rules.get(scope_id, ())
    return tables.backend_rules.get(scope_id, ())
