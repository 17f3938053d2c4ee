"""Envoy's own access logs, rendered when `telemetry.access_log` names a path: one JSON line per request (the HTTP
connection manager's log) and one per upstream attempt (the router's upstream log), with the metadata Babelgate's
stages hand Envoy: key, route, requested model, and per answer the backend, its model, tokens and cost.

Usage reaches the request's line: a direct route's from the route stage itself; a chain's whole answer through an
internal response header the attempt stage adds and the route stage turns into metadata (and removes). A chain's
streamed answer ends after its headers went out, so its usage is in the request log only. The per-attempt lines say
which backend each attempt went to and how it ended.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.core.v3 import SubstitutionFormatString
from envoy_data_plane.envoy.extensions.access_loggers.file.v3 import FileAccessLog
from envoy_data_plane.google.protobuf import Any, Struct, Value

from .. import constants

_NS = constants.METADATA_NAMESPACE


def _metadata(key: str) -> str:
    return f"%DYNAMIC_METADATA({_NS}:{key})%"


REQUEST_FIELDS = {
    "start_time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "key_id": _metadata(constants.METADATA_KEY_ID_KEY),
    "route": _metadata(constants.METADATA_ROUTE_KEY),
    "requested_model": _metadata(constants.METADATA_REQUESTED_KEY),
    "backend": "%RESP(X-BABELGATE-BACKEND)%",
    "model": _metadata("model"),
    "input_tokens": _metadata("input_tokens"),
    "output_tokens": _metadata("output_tokens"),
    "cost_usd": _metadata("cost_usd"),
}

ATTEMPT_FIELDS = {
    "start_time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "backend": f"%UPSTREAM_METADATA({_NS}:{constants.METADATA_BACKEND_KEY})%",
}


def file_log(path: str, fields: dict[str, str]) -> AccessLog:
    format_ = SubstitutionFormatString(json_format=Struct(fields={
        name: Value(string_value=value) for name, value in fields.items()}))
    return AccessLog(name="envoy.access_loggers.file",
                     typed_config=Any.pack(FileAccessLog(path=path, log_format=format_)))
