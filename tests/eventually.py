"""Wait for a condition, never for a fixed time: CI machines are busy, so deadlines are generous and the wait ends
as soon as the condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """The first truthy value `check` returns; AssertionError (naming `what`) past `timeout` seconds. An exception
    from `check` counts as "not yet" until the deadline, then propagates."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:
            if time.monotonic() >= deadline:
                raise
        else:
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"not within {timeout:g}s: {what or check}")
        time.sleep(interval)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")
