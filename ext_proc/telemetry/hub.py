"""The process's telemetry: built once from `telemetry:` in the config, fed one `Outcome` per request.

Everything here is off the request's critical path or cheap: a row appended to the log's queue, a few histogram
records, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..auth.credentials import read_secret
from ..config.models import TelemetrySettings
from .outcome import Outcome

if TYPE_CHECKING:  # pyarrow and the OpenTelemetry SDK load only when telemetry is configured (~40 MiB)
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from .metrics import Metrics
    from .request_log import RequestLog
    from .tracing import Tracing

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, metrics: Metrics | None = None, request_log: RequestLog | None = None,
                 tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self.tracing = tracing
        self.extra_counters: Callable[[], dict[str, int]] | None = None
        """More counters for the metrics (the limiter's, read from the current runtime)."""

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or self.request_log is not None or self.tracing is not None

    def report(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.record(outcome)
        if self.request_log is not None:
            self.request_log.record(row(outcome))

    def counters(self) -> dict[str, int]:
        found = dict(self.extra_counters()) if self.extra_counters is not None else {}
        if self.request_log is not None:
            stats = self.request_log.stats
            found.update(request_log_dropped_rows=stats.dropped_rows, request_log_write_errors=stats.write_errors)
        return found

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()
        if self.request_log is not None:
            self.request_log.close()
        if self.metrics is not None:
            self.metrics.close()


def row(outcome: Outcome) -> dict:
    """Prompt and completion are only ever filled in for routes with `log_content`."""
    return {
        "timestamp": datetime.fromtimestamp(outcome.started_wall, UTC),
        "request_id": outcome.request_id,
        "key_id": outcome.key_id,
        "team": outcome.team,
        "user": outcome.user,
        "endpoint": outcome.endpoint,
        "route": outcome.route,
        "backend": outcome.backend or None,
        "requested_model": outcome.requested_model,
        "served_model": outcome.served_model or None,
        "status": outcome.status,
        "attempts": outcome.attempts,
        "stream": outcome.stream,
        "latency_ms": outcome.duration * 1000,
        "ttft_ms": first * 1000 if (first := outcome.time_to_first_token) is not None else None,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "cached_tokens": outcome.cached_tokens,
        "reasoning_tokens": outcome.reasoning_tokens,
        "cost_usd": outcome.cost_usd,
        "error_type": outcome.error_type,
        "prompt": outcome.prompt,
        "completion": outcome.completion,
        **_mcp_columns(outcome),
        "cache": outcome.cache or None,
        "cache_saved_usd": outcome.cache_saved_usd if outcome.cache == "hit" else None,
        "prompt_template": outcome.prompt_template or None,
        "prompt_version": outcome.prompt_version or None,
    }


def _mcp_columns(outcome: Outcome) -> dict:
    mcp = outcome.mcp
    if mcp is None:
        return {"mcp_method": None, "mcp_server": None, "mcp_target": None, "mcp_session": None, "bytes_in": None,
                "bytes_out": None}
    return {"mcp_method": mcp.method, "mcp_server": mcp.server or None, "mcp_target": mcp.target or None,
            "mcp_session": mcp.session_id or None, "bytes_in": mcp.bytes_in, "bytes_out": mcp.bytes_out}


class TelemetryUnavailable(Exception):
    """The installation can't export what the configuration asks for; the message says how to fix it."""


def require_otlp_protos() -> None:
    """Babelgate installs nothing over opentelemetry-proto's modules, but another package in the same environment may
    (xds-protos ships an older copy): the OTLP exporters then fail with an ImportError that names neither."""
    try:
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope  # noqa: F401
    except ImportError:
        raise TelemetryUnavailable(
            "opentelemetry-proto's modules were overwritten by another package's copy (xds-protos ships one); OTLP "
            "export needs them back: pip install --force-reinstall --no-deps opentelemetry-proto") from None


def build_telemetry(settings: TelemetrySettings, process_index: int) -> Telemetry:
    """`process_index`: the n-th server process of this config; its Prometheus port is `port + n`."""
    from .metrics import Metrics
    from .request_log import RequestLog, open_filesystem

    request_log = None
    if settings.request_log is not None:
        sink = settings.request_log
        filesystem, root = open_filesystem(
            sink.destination, endpoint=sink.s3_endpoint, region=sink.s3_region,
            access_key=read_secret(sink.access_key, "telemetry.request_log.access_key") if sink.access_key else None,
            secret_key=read_secret(sink.secret_key, "telemetry.request_log.secret_key") if sink.secret_key else None)
        request_log = RequestLog(filesystem, root, batch_rows=sink.batch_rows, flush_seconds=sink.flush_seconds,
                                 queue_rows=sink.queue_rows)
    readers: list[MetricReader] = []
    if settings.metrics.prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        port = settings.metrics.prometheus_port + process_index
        start_http_server(port, addr=settings.metrics.prometheus_host)
        readers.append(PrometheusMetricReader())
        log.info("Prometheus metrics on http://%s:%d/metrics", settings.metrics.prometheus_host, port)
    if settings.metrics.otlp_endpoint is not None:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        require_otlp_protos()
        exporter: MetricExporter
        if settings.metrics.otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

            exporter = GrpcMetrics(endpoint=settings.metrics.otlp_endpoint,
                                   insecure=settings.metrics.otlp_endpoint.startswith("http://"))
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            exporter = OTLPMetricExporter(endpoint=settings.metrics.otlp_endpoint)
        readers.append(PeriodicExportingMetricReader(exporter))
    telemetry = Telemetry(request_log=request_log)
    if settings.traces is not None:
        from .tracing import Tracing

        traces = settings.traces
        require_otlp_protos()
        span_exporter: SpanExporter
        if traces.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

            span_exporter = GrpcSpans(endpoint=traces.otlp_endpoint, insecure=traces.otlp_endpoint.startswith("http://"))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(endpoint=traces.otlp_endpoint)
        telemetry.tracing = Tracing(span_exporter, settings.service_name, traces.sample_ratio)
    if readers:
        telemetry.metrics = Metrics(readers, settings.service_name, counters=telemetry.counters)
    return telemetry
