"""The two ext_proc filter configs (route stage, attempt stage) and the local-reply rewriting."""

from __future__ import annotations

from datetime import timedelta

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLogFilter, MetadataFilter
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRules
from envoy_data_plane.envoy.config.core.v3 import (
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    MetadataOptions,
    MetadataOptionsMetadataNamespaces,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpFilter,
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.type.matcher.v3 import MetadataMatcher, MetadataMatcherPathSegment, ValueMatcher
from envoy_data_plane.google.protobuf import Any, Struct, Value

from .. import constants
from ..config.models import Config

_SEND = ProcessingModeHeaderSendMode.SEND
_SKIP = ProcessingModeHeaderSendMode.SKIP
_BUFFERED = ProcessingModeBodySendMode.BUFFERED
_NONE = ProcessingModeBodySendMode.NONE

ROUTE_STAGE_MODE = ProcessingMode(
    request_header_mode=_SEND, request_body_mode=_BUFFERED,
    response_header_mode=_SKIP, response_body_mode=_NONE,
    request_trailer_mode=_SKIP, response_trailer_mode=_SKIP)

ATTEMPT_STAGE_MODE = ProcessingMode(
    request_header_mode=_SEND, request_body_mode=_BUFFERED,
    response_header_mode=_SEND, response_body_mode=_BUFFERED,
    request_trailer_mode=_SKIP, response_trailer_mode=_SKIP)


def _processor(config: Config, stage: str, mode: ProcessingMode, **extra: object) -> ExternalProcessor:
    timeout = timedelta(seconds=config.ext_proc.message_timeout)
    return ExternalProcessor(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=constants.EXT_PROC_CLUSTER),
            initial_metadata=[HeaderValue(key=constants.STAGE_METADATA_KEY, value=stage)]),
        processing_mode=mode,
        message_timeout=timeout,
        max_message_timeout=timeout,
        failure_mode_allow=False,
        # The route stage publishes its decision as dynamic metadata; the attempt stage reads it back on every
        # attempt (request headers are shared by all attempts, so state kept there would not survive a retry).
        metadata_options=MetadataOptions(
            receiving_namespaces=MetadataOptionsMetadataNamespaces(untyped=[constants.METADATA_NAMESPACE]),
            forwarding_namespaces=MetadataOptionsMetadataNamespaces(untyped=[constants.METADATA_NAMESPACE])),
        **extra,
    )


def route_stage_filter(config: Config) -> HttpFilter:
    processor = _processor(config, constants.STAGE_ROUTE, ROUTE_STAGE_MODE)
    return HttpFilter(name="babelgate.route_stage", typed_config=Any.pack(processor))


def attempt_stage_filter(config: Config) -> HttpFilter:
    processor = _processor(
        config, constants.STAGE_ATTEMPT, ATTEMPT_STAGE_MODE,
        allow_mode_override=True,
        # The attempt stage sets the backend's host and strips Envoy's internal headers before they leave.
        mutation_rules=HeaderMutationRules(allow_all_routing=True, allow_envoy=True),
        request_attributes=[constants.UPSTREAM_HOST_METADATA_ATTRIBUTE])
    return HttpFilter(name="babelgate.attempt_stage", typed_config=Any.pack(processor))


def local_reply_config() -> LocalReplyConfig:
    """Envoy's own error replies (no healthy upstream, timeouts, resets, oversize bodies) as OpenAI-style JSON.

    Babelgate's immediate responses already carry that shape; they mark themselves with dynamic metadata
    (`replied: true`), and the mapper only matches when the mark is absent. (The access-log metadata filter ignores
    `MetadataMatcher.invert`, hence the `bool_match: false` that a present mark never satisfies.)
    """
    not_ours = AccessLogFilter(metadata_filter=MetadataFilter(
        matcher=MetadataMatcher(
            filter=constants.METADATA_NAMESPACE,
            path=[MetadataMatcherPathSegment(key=constants.METADATA_REPLIED_KEY)],
            value=ValueMatcher(bool_match=False)),
        match_if_key_not_found=True))
    body = Struct(fields={"error": Value(struct_value=Struct(fields={
        "message": Value(string_value="%LOCAL_REPLY_BODY%"),
        "type": Value(string_value="gateway_error"),
        "code": Value(string_value="%RESPONSE_CODE_DETAILS%"),
        "param": Value(null_value=0),
    }))})
    mapper = ResponseMapper(
        filter=not_ours,
        body_format_override=SubstitutionFormatString(json_format=body, content_type="application/json"))
    return LocalReplyConfig(mappers=[mapper])
