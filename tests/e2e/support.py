"""Small helpers shared by the end-to-end tests (gateways themselves are built by `gateways.GatewayBuilder`)."""

from __future__ import annotations


def fault(spec: str) -> dict[str, str]:
    """Per-request fault injection for the demo providers (`extra_headers=` for the openai SDK)."""
    return {"x-demo-fault": spec}
