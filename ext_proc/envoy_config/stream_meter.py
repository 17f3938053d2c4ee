"""The stream meter's filter and the direct routes' twins that turn it on (`stages/stream_meter.py`).

A second ext_proc filter, after the route stage, in Envoy's observability mode: Envoy sends it copies and never waits
for a reply, so a stream it reads goes from the backend to the client at Envoy's speed. Its own processing mode sends
nothing, so on every other route it opens no gRPC stream at all; the twin of a direct route (the same route, under
the chain name with `.metered` after it) overrides the mode to copy the answer's headers and each chunk of its body.
The route stage names the twin for a stream it hands over (`AttemptStage._meters_aside`); a backend gets a twin when
such a stream can happen on it (`providers.metered_aside`, which the runtime reads too).
"""

from __future__ import annotations

import copy
from datetime import timedelta

from envoy_data_plane.envoy.config.route.v3 import Route
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ExtProcOverrides,
    ExtProcPerRoute,
    MetadataOptions,
    MetadataOptionsMetadataNamespaces,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any

from .. import constants
from ..config.chains import all_chain_routes
from ..config.models import Config
from ..providers.metered_aside import meters_aside
from .filters import ext_proc_service

_SKIP = ProcessingModeHeaderSendMode.SKIP
_NONE = ProcessingModeBodySendMode.NONE

IDLE_MODE = ProcessingMode(
    request_header_mode=_SKIP, request_body_mode=_NONE, request_trailer_mode=_SKIP,
    response_header_mode=_SKIP, response_body_mode=_NONE, response_trailer_mode=_SKIP)
"""Everywhere but on a twin: nothing sent, no gRPC stream opened."""

COPY_MODE = ProcessingMode(
    request_header_mode=_SKIP, request_body_mode=_NONE, request_trailer_mode=_SKIP,
    response_header_mode=ProcessingModeHeaderSendMode.SEND, response_body_mode=ProcessingModeBodySendMode.STREAMED,
    response_trailer_mode=_SKIP)
"""On a twin: the answer's headers (its status and content type) and every chunk."""


def metered_backends(config: Config) -> set[str]:
    """The backends whose direct routes get a twin."""
    backends = {b.id: b for b in config.backends}
    return {chain.order[0] for chain in all_chain_routes(config)
            if chain.direct and meters_aside(config, backends[chain.order[0]])}


def stream_meter_filter(config: Config) -> HttpFilter:
    """After the route stage (which picks the twin), before the router; rendered whenever streams may be metered
    aside, not only when a backend has a twin: `babelgate up` reloads routes, not the listener's filters, and a reload
    that adds limits adds twins the filter must already be there for. It reads the route stage's decision (the
    sealed reservation, backend, model, estimate) from the metadata; a copy it cannot send fails nothing: the
    reservation then stands as the charge."""
    timeout = timedelta(seconds=config.ext_proc.message_timeout)
    processor = ExternalProcessor(
        grpc_service=ext_proc_service(constants.STAGE_METER),
        processing_mode=IDLE_MODE,
        observability_mode=True,
        stat_prefix="stream_meter",
        failure_mode_allow=True,
        message_timeout=timeout,
        metadata_options=MetadataOptions(
            forwarding_namespaces=MetadataOptionsMetadataNamespaces(untyped=[constants.METADATA_NAMESPACE])),
    )
    return HttpFilter(name=constants.STREAM_METER_FILTER, typed_config=Any.pack(processor))


def twin(route: Route) -> Route:
    """A direct route's twin: matched by the chain name with the suffix, the stream meter's copies turned on."""
    assert route.match is not None
    match = copy.deepcopy(route.match)
    name = route.name + constants.METERED_ROUTE_SUFFIX
    match.headers[0].string_match = StringMatcher(exact=name)
    copies = ExtProcPerRoute(overrides=ExtProcOverrides(processing_mode=COPY_MODE))
    return Route(name=name, match=match, route=route.route, request_headers_to_remove=route.request_headers_to_remove,
                 typed_per_filter_config={constants.STREAM_METER_FILTER: Any.pack(copies)})
