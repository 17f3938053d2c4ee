"""What an attempt tells the rest of the gateway about itself once it ran: its timing to the backend's latency
averages (which the routing policies read), its outcome to telemetry (metrics, trace span, request log), and its
backend, model, tokens and cost to Envoy's access log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson

from .. import constants
from ..limits.estimate import Price, cost_micro_usd
from ..routing.latency import LatencyAverages, handed
from ..runtime.build import BackendInfo
from ..telemetry import semconv
from ..telemetry.outcome import Outcome
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages
from .messages import MetadataValue
from .usage_meter import UsageMeter

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Span


class AttemptReport:
    __slots__ = ("ended_at", "first_byte_at", "outcome", "sent_at", "span")

    def __init__(self) -> None:
        self.sent_at = 0.0
        """When the request left for the backend (0: it never did)."""
        self.first_byte_at = 0.0
        self.ended_at = 0.0
        """When a successful answer reached its end."""
        self.outcome: Outcome | None = None
        """A chain attempt's report, when telemetry is on (a direct route's is the route stage's)."""
        self.span: Span | None = None
        """This attempt's trace span (a CLIENT span, the request span's child), when tracing is on."""

    def first_byte(self, latency: LatencyAverages, backend: str, ok: bool) -> None:
        """The answer's headers arrived: time to first byte for a success, a penalty for a failure."""
        if not self.sent_at:
            return
        self.first_byte_at = time.monotonic()
        if ok:
            latency.on_first_byte(backend, self.first_byte_at - self.sent_at)
        else:
            latency.on_failure(backend, self.first_byte_at - self.sent_at)

    def handed(self, ok: bool) -> tuple[str, str] | None:
        """The samples this attempt recorded, as the header that hands them to a route stage in another process
        (`routing.latency`); None before the answer's headers."""
        if not self.sent_at or not self.first_byte_at:
            return None
        total = self.ended_at - self.sent_at if self.ended_at else None
        return constants.HEADER_LATENCY, handed(self.first_byte_at - self.sent_at, total, ok)

    def record_latency(self, latency: LatencyAverages, backend: str) -> None:
        """At the end of the attempt: its whole duration, or, for one that never answered, as long as it lasted."""
        if not self.sent_at:
            return
        if self.first_byte_at == 0.0:
            latency.on_failure(backend, time.monotonic() - self.sent_at)
        elif self.ended_at:
            latency.on_end(backend, self.ended_at - self.sent_at)
        self.sent_at = 0.0

    def fill(self, outcome: Outcome, backend: BackendInfo, model: str, *, status: int, streaming: bool,
             first_chunk_at: float, meter: UsageMeter | None, price: Price | None) -> None:
        """What this attempt knows of the request's end: backend, model, status, usage, cost, timing, text."""
        outcome.backend = backend.id
        outcome.provider = semconv.provider_name(backend.schema, backend.settings.preset)
        outcome.served_model = model
        outcome.stream = streaming
        if status:
            outcome.status = status
        if not outcome.first_token and streaming and first_chunk_at:
            outcome.first_token = first_chunk_at
        outcome.ended = self.ended_at or time.monotonic()
        if meter is None:
            return
        if 200 <= status < 300:
            usage = meter.final()
            outcome.input_tokens, outcome.output_tokens = usage.input_tokens, usage.output_tokens
            outcome.cached_tokens = usage.cached_input_tokens
            details = meter.raw_usage.get("completion_tokens_details") if isinstance(meter.raw_usage, dict) else None
            if isinstance(details, dict):
                outcome.reasoning_tokens = int(details.get("reasoning_tokens") or 0)
            if price is not None:
                outcome.cost_usd = cost_micro_usd(usage, price) / 1e6
        if meter.completion is not None:
            outcome.completion = "".join(meter.completion)


def access_log_fields(backend: BackendInfo, model: str, meter: UsageMeter,
                      price: Price | None) -> dict[str, MetadataValue]:
    usage = meter.final()
    return {constants.METADATA_BACKEND_KEY: backend.id, "model": model,
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cost_usd": cost_micro_usd(usage, price) / 1e6 if price is not None else 0.0}


def hand_to_access_log(reply: ProcessingResponse, fields: dict[str, MetadataValue], direct: bool,
                       streamed: bool) -> None:
    """A direct route's stage is the request's own filter: its metadata reaches the request's log line. An
    attempt's metadata stays on the attempt, so a whole (buffered) answer carries the fields to the route stage
    in an internal response header, which that stage turns into metadata and removes."""
    if direct:
        messages.with_metadata(reply, fields)
    elif not streamed:
        reply.response_body.response.header_mutation.set_headers.extend(messages.mutation(
            ((constants.HEADER_ACCESS_LOG, orjson.dumps(fields).decode()),)).set_headers)
