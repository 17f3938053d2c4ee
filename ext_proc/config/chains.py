"""Chains: the backend orders a request can be sent down. Shared by the route stage and the Envoy renderer."""

from __future__ import annotations

from .. import constants
from .models import Config


def chain_id(backend_ids: tuple[str, ...]) -> str:
    """The name shared by the chain header value and its aggregate cluster."""
    return constants.CHAIN_CLUSTER_PREFIX + "__".join(backend_ids)


def chains(config: Config) -> list[tuple[str, ...]]:
    """Every distinct backend order a route can send a request down, in config order."""
    seen: dict[tuple[str, ...], None] = {}
    for route in config.routes:
        seen.setdefault(tuple(entry.backend for entry in route.backends), None)
    return list(seen)
