"""Chains: the backend orders a request can be sent down. Shared by the route stage and the Envoy renderer.

A chain of one backend is a direct route: Envoy sends it straight to the backend's cluster (no aggregate cluster,
no attempt stage), and the route stage translates it itself.
"""

from __future__ import annotations

from .. import constants
from .models import Config


def chain_id(backend_ids: tuple[str, ...]) -> str:
    """The chain header value that selects the chain's Envoy route."""
    if len(backend_ids) == 1:
        return constants.DIRECT_ROUTE_PREFIX + backend_ids[0]
    return constants.CHAIN_CLUSTER_PREFIX + "__".join(backend_ids)


def chains(config: Config) -> list[tuple[str, ...]]:
    """Every distinct failover order (two or more backends) a route can send a request down, in config order."""
    seen: dict[tuple[str, ...], None] = {}
    for route in config.routes:
        chain = tuple(entry.backend for entry in route.backends)
        if len(chain) > 1:
            seen.setdefault(chain, None)
    return list(seen)


def direct_backends(config: Config) -> list[str]:
    """Backends that some single-backend route sends to directly."""
    seen: dict[str, None] = {}
    for route in config.routes:
        if len(route.backends) == 1:
            seen.setdefault(route.backends[0].backend, None)
    return list(seen)
