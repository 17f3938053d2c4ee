"""Which backends' streams the stream meter may settle from a copy (`stages/stream_meter.py`): one answer for the
renderer, which gives their direct routes a twin that turns the stream meter on, and for the runtime, which names
that twin. Both must agree: a twin the runtime names and Envoy lacks would match no route."""

from __future__ import annotations

from ..config.models import Backend, Config
from . import for_schema


def meters_aside(config: Config, backend: Backend) -> bool:
    """Limits are what reads a stream's usage and nothing else does (telemetry, the access log), and the backend's
    chunks already are the client's with nothing to watch between them (no stream idle timeout)."""
    return (config.limits.meter_streams_aside and config.limits_configured and not config.telemetry.enabled
            and config.telemetry.access_log is None and for_schema(backend.schema_).identity_streams
            and backend.stream_idle_timeout is None)
