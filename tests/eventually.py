"""Wait for a condition, never for a fixed time: CI machines are busy, so deadlines are generous and the wait ends
as soon as the condition holds."""

from __future__ import annotations

import asyncio
import inspect
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
        error: Exception | None = None
        try:
            value = check()
        except Exception as raised:
            error = raised
        if _ends_the_wait(value if error is None else None, error, deadline, f"{timeout:g}s: {what or check}"):
            return value
        time.sleep(interval)


async def eventually_async(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
                           what: str = "") -> object:
    """`eventually` inside a running event loop (which a blocking wait would freeze); `check` may return an
    awaitable, whose result counts."""
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        value: object = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except Exception as raised:
            error = raised
        if _ends_the_wait(value, error, deadline, f"{timeout:g}s: {what or check}"):
            return value
        await asyncio.sleep(interval)


def _ends_the_wait(value: object, error: Exception | None, deadline: float, described: str) -> bool:
    """True for a truthy value without an error; False to try again; past the deadline, the error (or an
    AssertionError naming the wait) is raised."""
    if error is None and value:
        return True
    if time.monotonic() < deadline:
        return False
    if error is not None:
        raise error
    raise AssertionError(f"not within {described}")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")
