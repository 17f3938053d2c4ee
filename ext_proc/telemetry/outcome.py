"""What happened to one request, gathered by the stage that saw its end, then handed to telemetry once.

Exactly one stage reports each request: the route stage for its own refusals, direct routes and failed final
answers; the attempt stage for a successful answer on a chain (it alone sees the body: usage, first token, end).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import constants


@dataclass(slots=True)
class McpFacts:
    """What an MCP request was: the method, and for a forwarded one the server, the tool (or prompt, URI) and sizes."""

    method: str = ""
    server: str = ""
    target: str = ""
    """The namespaced tool or prompt name, or the resource URI."""
    session_id: str = ""
    protocol_version: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(slots=True)
class Outcome:
    request_id: str = ""
    key_id: str = ""
    team: str | None = None
    user: str | None = None
    endpoint: str = ""
    route: str = ""
    requested_model: str = ""
    backend: str = ""
    provider: str = ""
    served_model: str = ""
    status: int = 0
    attempts: int = 1
    stream: bool = False
    started_wall: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    first_token: float = 0.0
    ended: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    error_type: str | None = None
    rate_limited_scope: str | None = None
    prompt: str | None = None
    completion: str | None = None
    mcp: McpFacts | None = None
    """Set for a request to the MCP endpoint (whose telemetry differs: no tokens, a server and a tool)."""
    cache: str = ""
    """On a route with a response cache: "hit", "miss" or "bypass"."""
    cache_saved_usd: float = 0.0
    """A hit: what the answer cost when it was made (nothing was spent on it now)."""
    prompt_template: str = ""
    """The prompt template that made the request's messages, and its version."""
    prompt_version: str = ""

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def time_to_first_token(self) -> float | None:
        return self.first_token - self.started if self.first_token else None


def outcome_from_decision(decision: dict[str, str], headers: dict[str, str], route: str,
                          requested: str) -> Outcome:
    """A chain attempt's report, from what the route stage handed on (request start included, so the latency is
    the whole request's, earlier attempts too)."""
    started_wall = float(decision.get(constants.METADATA_STARTED_KEY) or time.time())
    template, _, version = decision.get(constants.METADATA_TEMPLATE_KEY, "").rpartition("@")
    return Outcome(
        request_id=headers.get("x-request-id", ""), key_id=decision.get(constants.METADATA_KEY_ID_KEY, ""),
        team=decision.get(constants.METADATA_TEAM_KEY) or None, user=decision.get(constants.METADATA_USER_KEY) or None,
        endpoint=decision.get(constants.METADATA_ENDPOINT_KEY, ""), route=route, requested_model=requested,
        attempts=int(headers.get(constants.ENVOY_ATTEMPT_COUNT_HEADER, "1") or 1),
        started_wall=started_wall, started=time.monotonic() - max(0.0, time.time() - started_wall),
        prompt=decision.get(constants.METADATA_PROMPT_KEY), cache=decision.get(constants.METADATA_CACHE_KEY, ""),
        prompt_template=template, prompt_version=version if template else "")
