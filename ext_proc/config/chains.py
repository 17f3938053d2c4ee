"""Chains: the backend orders a request can be sent down, and the Envoy route that sends it down each.

The route stage picks an order per request (policy, rules, cooldowns); Envoy can only follow orders it was given, so
the renderer and the route stage both derive them from this module. A route of up to `FULL_ORDERS_UP_TO` backends
gets every order; a longer one gets one order per first backend (the rest in config order), which keeps the number
of Envoy routes linear. An order of one backend is a direct route: no aggregate cluster and no attempt stage, the
route stage translates the request itself.

A backend that can't serve a request (its translator refuses a field) leaves that request's order, so Envoy must also
be given orders of the backends that remain. Backends whose translations are alike (`translation_kinds`: schema,
preset, dropped fields, model, reasoning style) serve the same requests, so what can remain is a union of kinds: each
candidate set of more than one kind also gets the orders of each such union, when it has at most
`KIND_SETS_UP_TO` kinds; past that, each backend alone (a request whose remaining set Envoy was not given goes to its
first backend, without failover, rather than to a backend that can't serve it).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from .. import constants
from .models import Backend, Config, ModelRoute

FULL_ORDERS_UP_TO = 4
KIND_SETS_UP_TO = 4
"""Candidate sets of this many translation kinds at most get orders for every union of kinds (14 sets for 4)."""
DEFAULT_RETRY_ON: tuple[int | str, ...] = (429, 500, 502, 503, 504, "connect-failure", "reset")


@dataclass(frozen=True, slots=True)
class RetrySettings:
    retry_on: tuple[int | str, ...]
    retries: int
    deadline: float | None
    """None: the sum of the timeouts of the backends in the order."""

    @property
    def statuses(self) -> list[int]:
        return sorted(o for o in self.retry_on if isinstance(o, int))

    @property
    def is_default(self) -> bool:
        return self.retry_on == DEFAULT_RETRY_ON and self.deadline is None


@dataclass(frozen=True, slots=True)
class ChainRoute:
    """One Envoy route: a backend order and how the requests sent down it are retried."""

    order: tuple[str, ...]
    retry: RetrySettings

    @property
    def cluster(self) -> str:
        """The aggregate cluster of the order (its member clusters for a direct route)."""
        if len(self.order) == 1:
            return constants.BACKEND_CLUSTER_PREFIX + self.order[0]
        return constants.CHAIN_CLUSTER_PREFIX + "__".join(self.order)

    @property
    def name(self) -> str:
        """The chain header value that selects this Envoy route."""
        base = (constants.DIRECT_ROUTE_PREFIX + self.order[0] if len(self.order) == 1
                else constants.CHAIN_CLUSTER_PREFIX + "__".join(self.order))
        if self.retry.is_default and self.retry.retries == len(self.order) - 1:
            return base
        digest = hashlib.sha256(repr((self.retry.retry_on, self.retry.retries, self.retry.deadline)).encode())
        return f"{base}.{digest.hexdigest()[:8]}"

    @property
    def direct(self) -> bool:
        return len(self.order) == 1


def orders(backends: tuple[str, ...], length: int) -> list[tuple[str, ...]]:
    """Every order a request may take through `backends`, `length` of them at most."""
    length = min(length, len(backends))
    if len(backends) <= FULL_ORDERS_UP_TO:
        return list(itertools.permutations(backends, length))
    return [(first, *[b for b in backends if b != first][:length - 1]) for first in backends]


def retry_settings(route: ModelRoute, chain_length: int) -> RetrySettings:
    """One attempt per backend of the order, unless the route sets `max_attempts` (then attempts past the order's
    length go round it again)."""
    attempts = route.max_attempts or chain_length
    outcomes = tuple(sorted(set(route.retry_on), key=lambda o: (isinstance(o, str), str(o))))
    default = tuple(sorted(DEFAULT_RETRY_ON, key=lambda o: (isinstance(o, str), str(o))))
    return RetrySettings(retry_on=DEFAULT_RETRY_ON if outcomes == default else outcomes,
                         retries=attempts - 1, deadline=route.deadline)


def route_chain_sets(route: ModelRoute, kinds: Mapping[str, Hashable] | None = None
                     ) -> dict[tuple[str, ...], dict[tuple[str, ...], ChainRoute]]:
    """Per candidate set (the route's backends, then each rule's, then what remains of them when backends of some
    translation `kinds` can't serve a request), every order Envoy is given for it.

    Orders are cut to the route's attempt count. The `cost` policy may leave backends out (their context window is
    too small), so a set it ranks also gets every shorter order, down to each backend alone."""
    sets = [(tuple(entry.backend for entry in route.backends), route.policy)]
    sets += [(tuple(rule.backends), rule.policy or route.policy) for rule in route.rules]
    if kinds is not None:
        sets += [(subset, policy) for backends, policy in list(sets) for subset in remaining_sets(backends, kinds)]
    found: dict[tuple[str, ...], dict[tuple[str, ...], ChainRoute]] = {}
    for backends, policy in sets:
        length = min(len(backends), route.max_attempts or len(backends))
        lengths = range(1, length + 1) if policy == "cost" else (length,)
        table = found.setdefault(backends, {})
        for cut in lengths:
            for order in orders(backends, cut):
                table.setdefault(order, ChainRoute(order, retry_settings(route, len(order))))
    return found


def remaining_sets(backends: tuple[str, ...], kinds: Mapping[str, Hashable]) -> list[tuple[str, ...]]:
    """The proper subsets of `backends` that can remain once some kinds can't serve a request, in `backends`' order:
    every union of its kinds, or each backend alone past `KIND_SETS_UP_TO` kinds."""
    present = list(dict.fromkeys(kinds[b] for b in backends))
    if len(present) < 2:
        return []
    if len(present) > KIND_SETS_UP_TO:
        return [(b,) for b in backends]
    return [tuple(b for b in backends if kinds[b] in chosen)
            for size in range(1, len(present)) for chosen in itertools.combinations(present, size)]


def reasoning_styles(config: Config) -> dict[tuple[str, str], str]:
    """(backend, backend model) -> the reasoning style a route's backend entry configures for it."""
    return {(entry.backend, entry.model): entry.reasoning.style
            for route in config.routes for entry in route.backends if entry.reasoning is not None}


def translation_kinds(config: Config, route: ModelRoute,
                      styles: Mapping[tuple[str, str], str] | None = None) -> dict[str, Hashable]:
    """Backend id -> what its translation of a request depends on besides the request: backends of one kind
    translate every request alike, so they serve the same requests (`runtime.build.BackendInfo.chat_request`)."""
    settings = {backend.id: backend for backend in config.backends}
    styles = reasoning_styles(config) if styles is None else styles
    found: dict[str, Hashable] = {}
    for entry in route.backends:
        backend = settings[entry.backend]
        found[entry.backend] = (backend.schema_, backend.preset, tuple(backend.drop_fields), entry.model,
                                styles.get((entry.backend, entry.model)),
                                tuple((grant.prefix, grant.bucket_owner) for grant in backend.fetch_urls))
    return found


def route_chains(route: ModelRoute, kinds: Mapping[str, Hashable] | None = None
                 ) -> dict[tuple[str, ...], ChainRoute]:
    """Every Envoy route a model route may send a request down, by backend order."""
    flat: dict[tuple[str, ...], ChainRoute] = {}
    for table in route_chain_sets(route, kinds).values():
        for order, chain in table.items():
            flat.setdefault(order, chain)
    return flat


def all_chain_routes(config: Config) -> list[ChainRoute]:
    """Every distinct Envoy route, over all model routes, in config order."""
    seen: dict[str, ChainRoute] = {}
    styles = reasoning_styles(config)
    for route in config.routes:
        for chain in route_chains(route, translation_kinds(config, route, styles)).values():
            seen.setdefault(chain.name, chain)
    return list(seen.values())


def aggregate_orders(config: Config) -> list[tuple[str, ...]]:
    """Orders of two or more backends: each needs an aggregate cluster."""
    return list(dict.fromkeys(c.order for c in all_chain_routes(config) if not c.direct))


def deadline(chain: ChainRoute, backends: dict[str, Backend]) -> float:
    """The whole request: every attempt may take its backend's full timeout, unless the route sets a deadline."""
    if chain.retry.deadline is not None:
        return chain.retry.deadline
    attempts = chain.retry.retries + 1
    timeouts = [backends[b].timeout for b in chain.order]
    # Attempts past the order's length go round it again.
    return sum(timeouts[i % len(timeouts)] for i in range(attempts))
