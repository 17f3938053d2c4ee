"""The two ext_proc filter configs (route stage, attempt stage) and the local-reply rewriting."""

from __future__ import annotations

from datetime import timedelta

from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLogFilter,
    AndFilter,
    ComparisonFilter,
    ComparisonFilterOp,
    ExtensionFilter,
    MetadataFilter,
    StatusCodeFilter,
)
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRules
from envoy_data_plane.envoy.config.core.v3 import (
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    RuntimeUInt32,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
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
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any, NullValue, Struct, Value

from .. import constants
from ..config.chains import all_chain_routes
from ..config.models import Config
from ..errors import PayloadTooLarge, status_error_type

_SEND = ProcessingModeHeaderSendMode.SEND
_SKIP = ProcessingModeHeaderSendMode.SKIP
_BUFFERED = ProcessingModeBodySendMode.BUFFERED
_NONE = ProcessingModeBodySendMode.NONE

# Request trailers are sent: a request of headers and trailers with no DATA (HTTP/2) skips the body phase, and the
# trailers are where the route stage learns it (and refuses it).
ROUTE_STAGE_MODE = ProcessingMode(
    request_header_mode=_SEND, request_body_mode=_BUFFERED,
    response_header_mode=_SKIP, response_body_mode=_NONE,
    request_trailer_mode=_SEND, response_trailer_mode=_SKIP)

ROUTE_STAGE_WITH_RESPONSE_MODE = ProcessingMode(
    request_header_mode=_SEND, request_body_mode=_BUFFERED,
    response_header_mode=_SEND, response_body_mode=_NONE,
    request_trailer_mode=_SEND, response_trailer_mode=_SKIP)

ATTEMPT_STAGE_MODE = ProcessingMode(
    request_header_mode=_SEND, request_body_mode=_BUFFERED,
    response_header_mode=_SEND, response_body_mode=_BUFFERED,
    request_trailer_mode=_SKIP, response_trailer_mode=_SKIP)


def _processor(config: Config, stage: str, mode: ProcessingMode, *, mutation_rules: HeaderMutationRules,
               request_attributes: list[str] | None = None, forwarded: tuple[str, ...] = ()) -> ExternalProcessor:
    """`forwarded`: the metadata namespaces Envoy copies into every message of the stage's stream."""
    timeout = timedelta(seconds=config.ext_proc.message_timeout)
    return ExternalProcessor(
        grpc_service=ext_proc_service(stage),
        processing_mode=mode,
        message_timeout=timeout,
        max_message_timeout=timeout,
        failure_mode_allow=False,
        # An unreachable ext_proc service is an outage of the gateway, not a bug in the request.
        status_on_error=HttpStatus(code=StatusCode.ServiceUnavailable),
        # The route stage publishes its decision as dynamic metadata; the attempt stage reads it back on every
        # attempt (request headers are shared by all attempts, so state kept there would not survive a retry).
        metadata_options=MetadataOptions(
            receiving_namespaces=MetadataOptionsMetadataNamespaces(untyped=[constants.METADATA_NAMESPACE]),
            forwarding_namespaces=MetadataOptionsMetadataNamespaces(untyped=list(forwarded))),
        allow_mode_override=True,
        mutation_rules=mutation_rules,
        request_attributes=request_attributes or [],
    )


def ext_proc_service(stage: str) -> GrpcService:
    """The ext_proc servers, told which stage a stream is for in its gRPC metadata."""
    return GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=constants.EXT_PROC_CLUSTER),
                       initial_metadata=[HeaderValue(key=constants.STAGE_METADATA_KEY, value=stage)])


def route_stage_filter(config: Config) -> HttpFilter:
    # The final response headers are only worth a message when a reservation must be released or reported, or when
    # the route stage translates a direct (single-backend) route's answer itself.
    needs_response = (config.limits_configured or config.telemetry.enabled or config.telemetry.access_log is not None
                      or any(chain.direct for chain in all_chain_routes(config)) or config.mcp is not None)
    mode = ROUTE_STAGE_WITH_RESPONSE_MODE if needs_response else ROUTE_STAGE_MODE
    processor = _processor(config, constants.STAGE_ROUTE, mode,
                           # direct routes: the route stage sets the backend's host and switches the response body
                           # to BUFFERED/STREAMED per answer (both stages may override the processing mode)
                           mutation_rules=HeaderMutationRules(allow_all_routing=True, allow_envoy=True),
                           # verified JWT payloads (`jwt.py`): the route stage maps their claims to an identity.
                           # Not its own decision: it keeps that in memory, and Envoy would copy it into each of
                           # the request's later messages (the answer's headers and body) for nothing.
                           forwarded=(constants.JWT_METADATA_NAMESPACE,) if config.jwt.issuers else ())
    return HttpFilter(name=constants.ROUTE_STAGE_FILTER, typed_config=Any.pack(processor))


def attempt_stage_filter(config: Config) -> HttpFilter:
    processor = _processor(
        config, constants.STAGE_ATTEMPT, ATTEMPT_STAGE_MODE,
        # The attempt stage sets the backend's host and strips Envoy's internal headers before they leave.
        mutation_rules=HeaderMutationRules(allow_all_routing=True, allow_envoy=True),
        request_attributes=[constants.UPSTREAM_HOST_METADATA_ATTRIBUTE],
        forwarded=(constants.METADATA_NAMESPACE,))  # the route stage's decision, read back on every attempt
    return HttpFilter(name="babelgate.attempt_stage", typed_config=Any.pack(processor))


def local_reply_config(config: Config | None = None) -> LocalReplyConfig:
    """Envoy's own error replies (no healthy upstream, timeouts, resets, oversize bodies) as OpenAI-style JSON.

    Babelgate's immediate responses already carry that shape; they mark themselves with dynamic metadata
    (`replied: true`), and the mapper only matches when the mark is absent. (The access-log metadata filter ignores
    `MetadataMatcher.invert`, hence the `bool_match: false` that a present mark never satisfies.)
    With JWT issuers configured, every refusal of the `jwt_authn` filter is a 401 `invalid_token` (Envoy answers a
    wrong audience with 403), its reason in the message.
    """
    not_ours = AccessLogFilter(metadata_filter=MetadataFilter(
        matcher=MetadataMatcher(
            filter=constants.METADATA_NAMESPACE,
            path=[MetadataMatcherPathSegment(key=constants.METADATA_REPLIED_KEY)],
            value=ValueMatcher(bool_match=False)),
        match_if_key_not_found=True))
    mappers = [_token_refused()] if config is not None and config.jwt.issuers else []
    mappers += [
        ResponseMapper(
            filter=AccessLogFilter(and_filter=AndFilter(filters=[not_ours, _status_is(status)])),
            body_format_override=_error_format(status_error_type(status), _CODES.get(status)))
        for status in _TYPED_STATUSES
    ]
    # Only errors: a user's own `direct_response` routes (next to Babelgate's) keep their bodies.
    errors = AccessLogFilter(and_filter=AndFilter(filters=[not_ours, _status_at_least(400)]))
    mappers.append(ResponseMapper(filter=errors, body_format_override=_error_format("gateway_error")))
    return LocalReplyConfig(mappers=mappers)


_TYPED_STATUSES = (400, 404, 408, 413, 429, 431, 500, 502, 503, 504)
_CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
JWT_REFUSED = "response.code_details.startsWith('jwt_authn_access_denied')"
"""Envoy's response code details on a reply of its `jwt_authn` filter (`jwt_authn_access_denied{<reason>}`)."""


def _token_refused() -> ResponseMapper:
    refused = AccessLogFilter(extension_filter=ExtensionFilter(name=_CEL_FILTER, typed_config=Any.pack(
        ExpressionFilter(expression=JWT_REFUSED))))
    return ResponseMapper(filter=refused, status_code=401,
                          body_format_override=_error_format(status_error_type(401), "invalid_token"))


def _status_at_least(status: int) -> AccessLogFilter:
    return AccessLogFilter(status_code_filter=StatusCodeFilter(comparison=ComparisonFilter(
        op=ComparisonFilterOp.GE,
        value=RuntimeUInt32(default_value=status, runtime_key="babelgate.local_reply.errors_from"))))


def _status_is(status: int) -> AccessLogFilter:
    return AccessLogFilter(status_code_filter=StatusCodeFilter(comparison=ComparisonFilter(
        op=ComparisonFilterOp.EQ,
        value=RuntimeUInt32(default_value=status, runtime_key=f"babelgate.local_reply.status_{status}"))))


_CODES = {413: PayloadTooLarge.code}
"""Envoy's own answers that mean what one of Babelgate's errors means get that error's code (a body larger than
Envoy buffers is the route stage's `request_too_large`); the others carry Envoy's response code details."""


def _error_format(error_type: str, code: str | None = None) -> SubstitutionFormatString:
    body = Struct(fields={"error": Value(struct_value=Struct(fields={
        "message": Value(string_value="The gateway could not complete the request (HTTP %RESPONSE_CODE%). "
                                      "%LOCAL_REPLY_BODY%"),
        "type": Value(string_value=error_type),
        "code": Value(string_value=code or "%RESPONSE_CODE_DETAILS%"),
        "param": Value(null_value=NullValue.NULL_VALUE),
    }))})
    return SubstitutionFormatString(json_format=body, content_type="application/json")
