"""Traces: a span per request (the route stage's, SERVER) and one per upstream attempt (the attempt stage's, CLIENT),
following the OpenTelemetry GenAI conventions, exported by OTLP.

W3C trace context flows as on any hop: the client's `traceparent` is the request span's parent; the route stage
hands the request span on in `traceparent` (the attempt stage, in any process, parents its span on it); the
attempt stage replaces it with its own before the request leaves, so a provider that traces continues the trace.
"""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
from opentelemetry.trace import SpanKind, Status, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from . import semconv
from .outcome import Outcome

_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    def __init__(self, exporter: SpanExporter, service_name: str, sample_ratio: float = 1.0) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                       sampler=ParentBasedTraceIdRatio(sample_ratio))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("babelgate")

    def start(self, name: str, kind: SpanKind, headers: dict[str, str]) -> Span:
        """A span whose parent is the `traceparent` (and `tracestate`) in `headers`, if any."""
        context = _PROPAGATOR.extract(headers) if "traceparent" in headers else None
        # opentelemetry-sdk annotates start_span with the API's Span; it returns the SDK's, whose `kind` finish() reads
        return self.tracer.start_span(name, context=context, kind=kind)  # type: ignore[return-value]

    def start_request(self, headers: dict[str, str]) -> Span:
        return self.start("chat", SpanKind.SERVER, headers)

    def start_attempt(self, parent: str | None) -> Span:
        return self.start("chat", SpanKind.CLIENT, {"traceparent": parent} if parent else {})

    def traceparent(self, span: Span) -> str | None:
        return traceparent(span)

    def finish(self, span: Span, outcome: Outcome) -> None:
        finish(span, outcome)

    def close(self) -> None:
        self.provider.shutdown()


def traceparent(span: Span) -> str | None:
    context = span.get_span_context()
    if not context.is_valid:
        return None
    flags = "01" if context.trace_flags.sampled else "00"
    return f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}-{flags}"


def finish(span: Span, outcome: Outcome, *, operation: str | None = None) -> None:
    """Name the span as the conventions do (`chat gpt-4o`), set what the request was, what answered, and usage."""
    if outcome.mcp is not None:
        finish_mcp(span, outcome)
        return
    operation = operation or semconv.OPERATION_BY_ENDPOINT.get(outcome.endpoint, "chat")
    model = outcome.served_model if span.kind is SpanKind.CLIENT else outcome.requested_model
    span.update_name(f"{operation} {model}".strip())
    attributes: dict[str, AttributeValue] = {semconv.OPERATION_NAME: operation,
                                             semconv.REQUEST_MODEL: outcome.requested_model,
                                             semconv.REQUEST_STREAM: outcome.stream,
                                             semconv.HTTP_STATUS: outcome.status,
                                             "babelgate.route": outcome.route, "babelgate.key_id": outcome.key_id,
                                             "babelgate.attempts": outcome.attempts}
    if outcome.provider:
        attributes[semconv.PROVIDER_NAME] = outcome.provider
    if outcome.served_model:
        attributes[semconv.RESPONSE_MODEL] = outcome.served_model
    if outcome.backend:
        attributes["babelgate.backend"] = outcome.backend
    if outcome.input_tokens or outcome.output_tokens:
        attributes[semconv.USAGE_INPUT_TOKENS] = outcome.input_tokens
        attributes[semconv.USAGE_OUTPUT_TOKENS] = outcome.output_tokens
    if outcome.cached_tokens:
        attributes[semconv.USAGE_CACHE_READ_INPUT_TOKENS] = outcome.cached_tokens
    first = outcome.time_to_first_token
    if first is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = first
    span.set_attributes(attributes)
    if outcome.status >= 400 or outcome.error_type:
        span.set_attribute(semconv.ERROR_TYPE, outcome.error_type or str(outcome.status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def finish_mcp(span: Span, outcome: Outcome) -> None:
    """An MCP request's span, as the MCP conventions name it: `tools/call github__create_issue`, with the method, the
    tool (`gen_ai.tool.name`, operation `execute_tool`), the session and the upstream server."""
    mcp = outcome.mcp
    assert mcp is not None
    span.update_name(f"{mcp.method} {mcp.target}".strip())
    attributes: dict[str, AttributeValue] = {semconv.MCP_METHOD_NAME: mcp.method, semconv.HTTP_STATUS: outcome.status,
                                             "babelgate.key_id": outcome.key_id, "babelgate.mcp.bytes_in": mcp.bytes_in,
                                             "babelgate.mcp.bytes_out": mcp.bytes_out}
    if mcp.method == "tools/call" and mcp.target:
        attributes.update({semconv.TOOL_NAME: mcp.target, semconv.OPERATION_NAME: "execute_tool"})
    elif mcp.method == "prompts/get" and mcp.target:
        attributes[semconv.PROMPT_NAME] = mcp.target
    elif mcp.method == "resources/read" and mcp.target:
        attributes[semconv.RESOURCE_URI] = mcp.target
    if mcp.server:
        attributes["babelgate.mcp.server"] = mcp.server
    if mcp.session_id:
        attributes[semconv.MCP_SESSION_ID] = mcp.session_id
    if mcp.protocol_version:
        attributes[semconv.MCP_PROTOCOL_VERSION] = mcp.protocol_version
    span.set_attributes(attributes)
    if outcome.status >= 400 or outcome.error_type:
        span.set_attribute(semconv.ERROR_TYPE, outcome.error_type or str(outcome.status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()
