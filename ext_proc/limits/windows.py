"""Fixed UTC windows: every process and replica agrees on where a window starts without talking to the others."""

from __future__ import annotations

import calendar
import math
import time

_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def window_bounds(window: str, now: float) -> tuple[int, int]:
    """(start, end) in Unix seconds of the window containing `now`."""
    length = _SECONDS.get(window)
    if length is not None:
        start = int(now // length) * length
        return start, start + length
    if window == "month":
        moment = time.gmtime(now)
        start = calendar.timegm((moment.tm_year, moment.tm_mon, 1, 0, 0, 0))
        year, month = (moment.tm_year + 1, 1) if moment.tm_mon == 12 else (moment.tm_year, moment.tm_mon + 1)
        return start, calendar.timegm((year, month, 1, 0, 0, 0))
    raise ValueError(f"unknown window {window!r}")


def seconds_until(end: int, now: float) -> int:
    return max(1, math.ceil(end - now))


def duration_text(seconds: int) -> str:
    """OpenAI's `x-ratelimit-reset-*` style: 45s, 6m0s, 2h3m0s."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
