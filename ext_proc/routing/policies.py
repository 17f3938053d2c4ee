"""Policies: the order a request tries a route's backends in. The first is the policy's pick; the others follow as
fallbacks in config order (by price for `cost`, by latency for `latency`), and backends in cooldown go last.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Mapping, Sequence

from .cooldowns import Cooldowns
from .latency import LatencyAverages

_UNIT = float(1 << 64)


def weighted_first(backends: Sequence[str], weights: Mapping[str, float], sticky: str | None,
                   rng: random.Random) -> list[str]:
    """One backend drawn by weight (from a hash of `sticky` when given, so the same value always draws the same),
    then the others in config order."""
    point = (int.from_bytes(hashlib.blake2b(sticky.encode(), digest_size=8).digest(), "big") / _UNIT
             if sticky is not None else rng.random())
    total = sum(weights[b] for b in backends)
    threshold, cumulative = point * total, 0.0
    chosen = backends[-1]
    for backend in backends:
        cumulative += weights[backend]
        if threshold < cumulative:
            chosen = backend
            break
    return [chosen, *(b for b in backends if b != chosen)]


def fastest_first(backends: Sequence[str], averages: Mapping[str, float], exploration: float,
                  rng: random.Random) -> list[str]:
    """Lowest average first; a backend never measured goes before all measured ones (it gets measured), and a share
    `exploration` of requests goes in random order so a backend that recovered is noticed."""
    if exploration and rng.random() < exploration:
        shuffled = list(backends)
        rng.shuffle(shuffled)
        return shuffled
    return sorted(backends, key=lambda b: averages.get(b, -1.0))


def cheapest_first(backends: Sequence[str], prices: Mapping[str, tuple[float, float]], prompt_tokens: int,
                   output_tokens: int, windows: Mapping[str, int | None]) -> list[str]:
    """By the price of this request (prompt estimate + output reserve); unpriced backends after priced ones; a
    backend whose context window the prompt does not fit is left out (`[]` when none fits)."""
    fitting = [b for b in backends if (window := windows.get(b)) is None or prompt_tokens <= window]

    def cost(backend: str) -> tuple[int, float]:
        price = prices.get(backend)
        if price is None:
            return (1, 0.0)
        return (0, prompt_tokens * price[0] + output_tokens * price[1])

    return sorted(fitting, key=cost)


def cooled_last(order: list[str], cooldowns: Cooldowns) -> list[str]:
    """Backends in cooldown keep their relative order behind the others; none is dropped."""
    if len(order) < 2 or not cooldowns.any:
        return order
    now = time.time()
    cooling = {b for b in order if cooldowns.cooling(b, now)}
    if not cooling:
        return order
    return [b for b in order if b not in cooling] + [b for b in order if b in cooling]


def rank(policy: str, backends: Sequence[str], *, weights: Mapping[str, float], sticky: str | None,
         latency: LatencyAverages, streaming: bool, exploration: float, prices: Mapping[str, tuple[float, float]],
         windows: Mapping[str, int | None], prompt_tokens: int, output_tokens: int,
         rng: random.Random) -> list[str]:
    if policy == "weighted":
        return weighted_first(backends, weights, sticky, rng)
    if policy == "latency":
        return fastest_first(backends, latency.ranking_key(streaming), exploration, rng)
    if policy == "cost":
        return cheapest_first(backends, prices, prompt_tokens, output_tokens, windows)
    return list(backends)
