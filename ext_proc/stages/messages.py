"""Builders and readers for the ext_proc protocol messages (upb stubs compiled into ext_proc.wire).

The stages speak in plain tuples and bytes; this module is the only place that knows the protobuf shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import orjson
from google.protobuf.struct_pb2 import Struct

from .. import constants
from ..errors import GatewayError
from ..wire.base_pb2 import HeaderValueOption, Metadata
from ..wire.external_processor_pb2 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    HttpHeaders,
    ImmediateResponse,
    ProcessingResponse,
)
from ..wire.http_status_pb2 import HttpStatus
from ..wire.processing_mode_pb2 import ProcessingMode

Headers = Sequence[tuple[str, str]]
MetadataValue = str | float | bool | None
"""What a dynamic metadata field holds here (access-log fields: names, token counts, a cost)."""
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
JSON_CONTENT_TYPE = "application/json"
_JSON = (("content-type", JSON_CONTENT_TYPE),)

_REPLIED_MARK = Struct()
_REPLIED_MARK.update({constants.METADATA_NAMESPACE: {constants.METADATA_REPLIED_KEY: True}})


def header_dict(headers: HttpHeaders) -> dict[str, str]:
    """All headers of a message; Envoy 1.3x+ sends values in `raw_value`."""
    return {h.key: (h.raw_value.decode("latin-1") if h.raw_value else h.value) for h in headers.headers.headers}


def add_headers(target: HeaderMutation, set_headers: Headers) -> None:
    """Append `set_headers` to `target`, each overwriting any header of its name. Built in place field by field: a
    quarter of the CPU of constructing the options and copying them in (every reply sets some)."""
    options = target.set_headers
    for key, value in set_headers:
        option = options.add()
        header = option.header
        header.key = key
        header.raw_value = value.encode("latin-1")
        option.append_action = _OVERWRITE


def mutation(set_headers: Headers = (), remove: Iterable[str] = ()) -> HeaderMutation:
    built = HeaderMutation()
    add_headers(built, set_headers)
    built.remove_headers.extend(remove)
    return built


def _common(set_headers: Headers, remove: Iterable[str], body: bytes | None, clear_route_cache: bool) -> CommonResponse:
    response = CommonResponse(clear_route_cache=clear_route_cache)
    if set_headers:
        add_headers(response.header_mutation, set_headers)
    if remove:
        response.header_mutation.remove_headers.extend(remove)
    if body is not None:
        response.body_mutation.CopyFrom(BodyMutation(body=body))
    return response


def request_headers_reply(set_headers: Headers = (), remove: Iterable[str] = ()) -> ProcessingResponse:
    return ProcessingResponse(request_headers=HeadersResponse(response=_common(set_headers, remove, None, False)))


def request_body_reply(set_headers: Headers = (), remove: Iterable[str] = (), body: bytes | None = None,
                       clear_route_cache: bool = False, metadata: dict[str, str] | None = None) -> ProcessingResponse:
    reply = ProcessingResponse(
        request_body=BodyResponse(response=_common(set_headers, remove, body, clear_route_cache)))
    if metadata:
        reply.dynamic_metadata.update({constants.METADATA_NAMESPACE: metadata})
    return reply


def babelgate_metadata(context: Metadata) -> dict[str, str]:
    """The route stage's decision, as forwarded by Envoy to the attempt stage."""
    entry = context.filter_metadata.get(constants.METADATA_NAMESPACE)
    if entry is None:
        return {}
    return {key: value.string_value for key, value in entry.fields.items()}


def response_headers_reply(set_headers: Headers = (), remove: Iterable[str] = (),
                           mode: ProcessingMode | None = None) -> ProcessingResponse:
    reply = ProcessingResponse(response_headers=HeadersResponse(response=_common(set_headers, remove, None, False)))
    if mode is not None:
        reply.mode_override.CopyFrom(mode)
    return reply


def response_body_reply(body: bytes | None = None, set_headers: Headers = (),
                        remove: Iterable[str] = ()) -> ProcessingResponse:
    return ProcessingResponse(response_body=BodyResponse(response=_common(set_headers, remove, body, False)))


def with_metadata(reply: ProcessingResponse, metadata: Mapping[str, MetadataValue]) -> ProcessingResponse:
    """Dynamic metadata for Envoy's access logs (the stage's filter stream info: downstream or upstream)."""
    reply.dynamic_metadata.update({constants.METADATA_NAMESPACE: metadata})
    return reply


def streamed_body_reply(body: bytes, end_of_stream: bool) -> ProcessingResponse:
    """A body chunk in FULL_DUPLEX_STREAMED mode, where replies need not match Envoy's chunks one for one."""
    reply = ProcessingResponse()
    streamed = reply.response_body.response.body_mutation.streamed_response
    streamed.body = body
    streamed.end_of_stream = end_of_stream
    return reply


def continue_unchanged(kind: str | None) -> ProcessingResponse | None:
    """A phase the stage does not act on (sent only if Envoy's processing mode asks for it): continue as is."""
    if kind is None:
        return None
    reply = ProcessingResponse()
    getattr(reply, kind).SetInParent()
    return reply


def immediate(status: int, body: bytes, headers: Headers = _JSON, details: str = "babelgate") -> ProcessingResponse:
    # protoc's stubs take an enum field as the enum or its name; the message takes any int (unnamed codes too)
    reply = ProcessingResponse(immediate_response=ImmediateResponse(
        status=HttpStatus(code=status),  # type: ignore[arg-type]
        headers=mutation(headers), body=body, details=details))
    reply.dynamic_metadata.CopyFrom(_REPLIED_MARK)
    return reply


def error_reply(error: GatewayError, style: str = "openai") -> ProcessingResponse:
    """`style` is the client's API: "openai", "anthropic" for `/anthropic/v1/messages` clients, "mcp" for the MCP
    endpoint (a JSON-RPC error, the gateway's error type and code in its `data`)."""
    details = f"babelgate_{error.code or error.type}"
    if style == "mcp":
        body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {
            "code": MCP_CODES.get(error.status, -32603), "message": error.message,
            "data": {"type": error.type, "code": error.code}}})
        extra: Headers = (("www-authenticate", 'Bearer realm="babelgate"'),) if error.status == 401 else ()
        return immediate(error.status, body, (*_JSON, *error.headers, *extra), details=details)
    return immediate(error.status, error.body(style), (*_JSON, *error.headers), details=details)


MCP_CODES = {400: -32600, 401: -32080, 403: -32081, 404: -32600, 413: -32083, 429: -32082, 502: -32084,
              503: -32084, 504: -32085}
"""HTTP statuses of the gateway's own refusals -> the JSON-RPC codes of `mcp/jsonrpc.py`."""
