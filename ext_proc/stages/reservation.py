"""What a request's reservation must cover so that no attempt can use more than was reserved.

Output: the most any backend of the request's order may produce, read from the body each would be sent
(`providers/output_bounds.py`): the translation made for it, or the client's own body where it passes through.
Cost: the dearest backend of the order at that output, since Envoy may fail over to any of them; settlement then
charges what the serving backend really cost. The prompt estimate is the same for every backend.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from ..json_types import JsonObject
from ..limits.estimate import Price, Usage, cost_micro_usd
from ..limits.limiter import Demand
from ..providers.output_bounds import RESPONSES, output_bound
from ..runtime.build import Runtime
from .endpoints import Endpoint


def output_bounds(runtime: Runtime, endpoint: Endpoint, order: Sequence[str],
                  translations: Mapping[str, JsonObject] | None, passing: Collection[str],
                  original: JsonObject) -> dict[str, int]:
    """Each backend of `order` -> the most output tokens its request may produce. `translations`: the request as
    each translated backend gets it; `passing`: the backends that get the client's `original` body as it is."""
    unbounded = runtime.config.requests.unbounded_output_tokens
    bounds: dict[str, int] = {}
    for backend_id in order:
        if backend_id in passing:
            backend = runtime.backends[backend_id]
            bound = output_bound(RESPONSES if endpoint is Endpoint.RESPONSES else backend.schema, original)
            if endpoint is Endpoint.RESPONSES and original.get("max_output_tokens") is None:
                bound = runtime.default_max_tokens  # what the passthrough sends
            if any(name in backend.settings.drop_fields for name in _LIMIT_FIELDS):
                bound = None  # the backend's `drop_fields` takes the limit out of what it is sent
        else:
            upstream = translations.get(backend_id) if translations is not None else None
            bound = output_bound(runtime.backends[backend_id].schema, upstream) if upstream is not None else None
        bounds[backend_id] = bound if bound is not None else unbounded
    return bounds


_LIMIT_FIELDS = ("max_output_tokens", "max_tokens")
"""The output limits of the bodies that pass through: the Responses API's, and Anthropic's."""


def demand(prompt_tokens: int, bounds: Mapping[str, int], prices: Mapping[str, Price]) -> Demand:
    """The reservation: the prompt, the largest output bound, and the dearest backend's cost at its bound."""
    cost = max((cost_micro_usd(Usage(prompt_tokens, bound), prices[backend]) for backend, bound in bounds.items()),
               default=0)
    return Demand(prompt_tokens, max(bounds.values(), default=0), cost)
