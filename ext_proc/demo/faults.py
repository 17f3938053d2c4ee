"""Fault injection for the demo providers.

A spec is a comma-separated list of `target:action` items, e.g. `openai-a:500,anthropic-b:stall=2000,*:slow=50`.
`target` is a provider name or `*`; only items aimed at this provider apply, but every item must be well formed.
Actions:

- `NNN` (400..599): answer that status with the provider's own error body (429 adds `retry-after: 1`)
- `reset`: read the request, then drop the connection without answering
- `stall=MS`: wait MS milliseconds before the first byte of the answer
- `midstream=N`: for a streamed answer, send N events, then drop the connection
- `slow=MS`: for a streamed answer, pause MS milliseconds between events
- `retry_after=S`: an error status answer carries `retry-after: S` (replacing the provider's own)
- `echo-key`: refuse the request with a 401 whose error message quotes the API key it was sent, as some
  OpenAI-compatible providers do ("Incorrect API key provided: sk-..."); OpenAI kind, per request (`x-demo-fault`)
- `verbose`: the answer uses all the output the request allows: each of OpenAI's `n` choices (Gemini's
  `candidateCount` candidates) runs to `max_completion_tokens`/`max_tokens` (`maxOutputTokens`, Converse's
  `maxTokens`, the Responses API's `max_output_tokens` less its reasoning), Claude thinks its whole budget and writes
  the rest of `max_tokens`; a request without a limit gets `answers.VERBOSE_WORDS` words, as a real model runs to its
  maximum. Tool calls and structured answers are unchanged.
- `off-schema`: a structured answer (OpenAI `response_format`, Anthropic `output_config.format`) is JSON that does
  not fit the schema asked for: each value of the fitting answer swapped for one of another type (an object without
  properties becomes an array). OpenAI and Anthropic kinds.

Later items override earlier ones, so a request's `x-demo-fault` header refines the server-wide spec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FAULT_HEADER = "x-demo-fault"

_MAX_VALUE = 3_600_000


class FaultSpecError(ValueError):
    """A fault spec that can't be understood; the message says which item and why."""


@dataclass(frozen=True, slots=True)
class Faults:
    status: int | None = None
    reset: bool = False
    stall_ms: int = 0
    midstream: int | None = None
    slow_ms: int = 0
    retry_after: int | None = None
    echo_key: bool = False
    verbose: bool = False
    off_schema: bool = False


NO_FAULTS = Faults()


def parse_faults(spec: str | None, name: str, base: Faults = NO_FAULTS) -> Faults:
    """Apply every item of `spec` aimed at provider `name` (or `*`) on top of `base`."""
    faults = base
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        target, colon, action = item.partition(":")
        if not colon or not target.strip() or not action.strip():
            raise FaultSpecError(f"fault item {item!r} is not target:action")
        change = _action(action.strip(), item)
        if target.strip() in (name, "*"):
            faults = dataclasses.replace(faults, **change)
    return faults


def _action(action: str, item: str) -> dict[str, Any]:
    """The `Faults` fields one action sets, as keyword arguments of `dataclasses.replace` (which field is known only
    at run time, hence `Any`)."""
    if action.isdigit():
        status = int(action)
        if not 400 <= status <= 599:
            raise FaultSpecError(f"fault item {item!r}: status must be 400..599")
        return {"status": status}
    if action == "reset":
        return {"reset": True}
    if action == "echo-key":
        return {"echo_key": True}
    if action == "verbose":
        return {"verbose": True}
    if action == "off-schema":
        return {"off_schema": True}
    key, equals, value = action.partition("=")
    field = {"stall": "stall_ms", "midstream": "midstream", "slow": "slow_ms", "retry_after": "retry_after"}.get(key)
    if field is None or not equals:
        raise FaultSpecError(
            f"fault item {item!r}: unknown action {action!r}; expected a 4xx/5xx status, reset, stall=MS, "
            "midstream=N, slow=MS, retry_after=S, echo-key, verbose or off-schema"
        )
    if not (value.isascii() and value.isdigit()) or int(value) > _MAX_VALUE:
        raise FaultSpecError(f"fault item {item!r}: {key} needs a whole number up to {_MAX_VALUE}")
    return {field: int(value)}
