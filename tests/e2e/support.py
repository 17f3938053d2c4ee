"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from ext_proc.launch.processes import Supervisor, python_module


def fault(spec: str) -> dict[str, str]:
    """Per-request fault injection for the demo providers (`extra_headers=` for the openai SDK)."""
    return {"x-demo-fault": spec}


def start_demo(supervisor: Supervisor, name: str, kind: str = "openai", api_key: str = "sk-demo",
               *extra: str) -> int:
    """Start a demo provider (its real wire format, faults on request) on a free port; return the port."""
    _, ready = supervisor.start_reporting(name, python_module(
        "ext_proc.demo", "--kind", kind, "--name", name, "--port", "0", "--api-key", api_key, *extra))
    return int(ready["port"])
