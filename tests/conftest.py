"""Shared by every test: each pytest-xdist worker takes its free ports from a range of its own (`free_port`), so two
workers never hand out the same port (a port chosen now is often bound a moment later, by a child process)."""

from __future__ import annotations

import os

from ext_proc.launch.processes import FREE_PORT_FLOOR, FREE_PORTS_ENV

FIRST_EPHEMERAL_PORT = 32768
"""Linux's default `ip_local_port_range` starts here; the workers' ranges stay below it."""


def _worker_ports() -> str | None:
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not worker[2:].isdigit() or not count.isdigit():
        return None
    width = (FIRST_EPHEMERAL_PORT - FREE_PORT_FLOOR) // int(count)
    low = FREE_PORT_FLOOR + int(worker[2:]) * width
    return f"{low}-{low + width - 1}"


_ports = _worker_ports()
if _ports is not None:  # children (babelgate up, benchmark scripts) inherit it
    os.environ[FREE_PORTS_ENV] = _ports
