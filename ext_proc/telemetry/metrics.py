"""Metrics through the OpenTelemetry SDK, read by Prometheus (an HTTP endpoint per server process) and/or pushed
by OTLP: the GenAI conventions' token usage, duration, time to first token and time per output token, plus
Babelgate's own counters (requests by status/backend/route, failovers, rate-limit refusals, limiter store errors,
request-log drops)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from . import semconv
from .outcome import Outcome


class Metrics:
    def __init__(self, readers: list[MetricReader], service_name: str,
                 counters: Callable[[], dict[str, int]] | None = None) -> None:
        views = [
            View(instrument_name=semconv.CLIENT_TOKEN_USAGE,
                 aggregation=ExplicitBucketHistogramAggregation(semconv.TOKEN_BUCKETS)),
            View(instrument_name=semconv.CLIENT_OPERATION_DURATION,
                 aggregation=ExplicitBucketHistogramAggregation(semconv.DURATION_BUCKETS)),
            View(instrument_name=semconv.SERVER_TIME_TO_FIRST_TOKEN,
                 aggregation=ExplicitBucketHistogramAggregation(semconv.FIRST_TOKEN_BUCKETS)),
            View(instrument_name=semconv.SERVER_TIME_PER_OUTPUT_TOKEN,
                 aggregation=ExplicitBucketHistogramAggregation(semconv.PER_TOKEN_BUCKETS)),
            View(instrument_name=semconv.MCP_SERVER_OPERATION_DURATION,
                 aggregation=ExplicitBucketHistogramAggregation(semconv.MCP_DURATION_BUCKETS)),
        ]
        self.provider = MeterProvider(metric_readers=readers, views=views,
                                      resource=Resource.create({"service.name": service_name}))
        meter = self.provider.get_meter("babelgate")
        self._tokens = meter.create_histogram(semconv.CLIENT_TOKEN_USAGE, unit="{token}",
                                              description="Tokens used, by type (input, output)")
        self._duration = meter.create_histogram(semconv.CLIENT_OPERATION_DURATION, unit="s",
                                                description="Whole request, as the gateway saw it")
        self._first_token = meter.create_histogram(semconv.SERVER_TIME_TO_FIRST_TOKEN, unit="s",
                                                   description="Until the first chunk of a streamed answer")
        self._per_token = meter.create_histogram(semconv.SERVER_TIME_PER_OUTPUT_TOKEN, unit="s",
                                                 description="After the first token, per output token")
        self._requests = meter.create_counter("babelgate.requests", unit="{request}",
                                              description="Requests by status, route and backend")
        self._failovers = meter.create_counter("babelgate.failovers", unit="{attempt}",
                                               description="Attempts beyond the first")
        self._refusals = meter.create_counter("babelgate.rate_limit.refusals", unit="{request}",
                                              description="Requests refused by a rate limit or budget, by scope")
        self._mcp_duration = meter.create_histogram(semconv.MCP_SERVER_OPERATION_DURATION, unit="s",
                                                    description="MCP requests the gateway served, by method, "
                                                                "upstream server and tool")
        self._mcp_requests = meter.create_counter("babelgate.mcp.requests", unit="{request}",
                                                  description="MCP requests by method, server, tool and status")
        self._cache = meter.create_counter("babelgate.cache.requests", unit="{request}",
                                           description="Requests on routes with a response cache, by route and "
                                                       "result (hit, miss, bypass)")
        self._cache_saved = meter.create_counter("babelgate.cache.saved_cost", unit="USD",
                                                 description="What the answers served from the cache cost when "
                                                             "they were made")
        self._counters = counters
        if counters is not None:
            meter.create_observable_counter("babelgate.internal", callbacks=[self._observe],
                                            description="Limiter store errors, fail-open admissions, request-log "
                                                        "drops (attribute `counter`)")

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        assert self._counters is not None
        return [Observation(value, {"counter": name}) for name, value in self._counters().items()]

    def record(self, outcome: Outcome) -> None:
        if outcome.mcp is not None:
            self._record_mcp(outcome)
            return
        operation = semconv.OPERATION_BY_ENDPOINT.get(outcome.endpoint, "chat")
        common = {semconv.OPERATION_NAME: operation, semconv.REQUEST_MODEL: outcome.requested_model}
        if outcome.provider:
            common[semconv.PROVIDER_NAME] = outcome.provider
        if outcome.served_model:
            common[semconv.RESPONSE_MODEL] = outcome.served_model
        if outcome.error_type:
            common[semconv.ERROR_TYPE] = outcome.error_type
        self._duration.record(outcome.duration, common)
        if outcome.input_tokens:
            self._tokens.record(outcome.input_tokens, {**common, semconv.TOKEN_TYPE: "input"})
        if outcome.output_tokens:
            self._tokens.record(outcome.output_tokens, {**common, semconv.TOKEN_TYPE: "output"})
        first = outcome.time_to_first_token
        if first is not None:
            self._first_token.record(first, common)
            if outcome.output_tokens > 1 and outcome.ended:
                self._per_token.record((outcome.ended - outcome.first_token) / (outcome.output_tokens - 1), common)
        self._requests.add(1, {"status": str(outcome.status), "route": outcome.route,
                               "backend": outcome.backend or "none"})
        if outcome.attempts > 1:
            self._failovers.add(outcome.attempts - 1, {"route": outcome.route})
        if outcome.rate_limited_scope is not None:
            self._refusals.add(1, {"scope": outcome.rate_limited_scope})
        if outcome.cache:
            self._cache.add(1, {"route": outcome.route, "result": outcome.cache})
            if outcome.cache == "hit" and outcome.cache_saved_usd:
                self._cache_saved.add(outcome.cache_saved_usd, {"route": outcome.route})

    def _record_mcp(self, outcome: Outcome) -> None:
        mcp = outcome.mcp
        assert mcp is not None
        attributes = {semconv.MCP_METHOD_NAME: mcp.method, "babelgate.mcp.server": mcp.server or "none"}
        if mcp.method == "tools/call" and mcp.target:
            attributes[semconv.TOOL_NAME] = mcp.target
        if outcome.error_type:
            attributes[semconv.ERROR_TYPE] = outcome.error_type
        self._mcp_duration.record(outcome.duration, attributes)
        self._mcp_requests.add(1, {**attributes, "status": str(outcome.status)})
        if outcome.rate_limited_scope is not None:
            self._refusals.add(1, {"scope": outcome.rate_limited_scope})

    def close(self) -> None:
        self.provider.shutdown()
