"""The admin API on Envoy's listener: the gRPC-JSON transcoder turns `GET /admin/v1/keys` and the other HTTP rules of
`protos/babelgate/admin/v1/admin.proto` into gRPC calls, and one route sends those (and native gRPC calls) to the
admin port of the first ext_proc process, with the route stage switched off (the admin API checks its own
credential)."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources

from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
)
from envoy_data_plane.envoy.config.route.v3 import DirectResponseAction, Route, RouteAction, RouteMatch
from envoy_data_plane.envoy.extensions.filters.http.buffer.v3 import Buffer, BufferPerRoute
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import ExtProcPerRoute
from envoy_data_plane.envoy.extensions.filters.http.grpc_json_transcoder.v3 import (
    GrpcJsonTranscoder,
    GrpcJsonTranscoderPrintOptions,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.google.protobuf import Any

from .. import constants
from ..config.models import Config
from ..errors import NotFound
from .clusters import ADMIN_API_CLUSTER as CLUSTER

SERVICE = "babelgate.admin.v1.Admin"
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"
SIZE_LIMIT_FILTER = "babelgate.admin_size_limit"
JSON_PREFIX = "/admin/v1/"
"""Where admin.proto's HTTP rules put the JSON API."""
PREFIXES = (f"/{SERVICE}/", JSON_PREFIX)
"""The admin API's paths (gRPC and JSON): its callers' bearer tokens are admin credentials."""
MAX_REQUEST_BYTES = constants.ADMIN_MAX_MESSAGE_BYTES + 5
"""One gRPC message of the largest size the admin server reads, with its 5-byte prefix."""


def exposed(config: Config) -> bool:
    return config.admin is not None and config.admin.via_envoy


def descriptor_set() -> bytes:
    """Built with the package from protos/ (setup.py), imports included, as the transcoder needs."""
    return resources.files("ext_proc.admin").joinpath("admin.pb").read_bytes()


def transcoder_filter() -> HttpFilter:
    transcoder = GrpcJsonTranscoder(
        proto_descriptor_bin=descriptor_set(),
        services=[SERVICE],
        # a gRPC error becomes its HTTP status (401, 404, 409...) with a JSON body naming the problem
        convert_grpc_status=True,
        print_options=GrpcJsonTranscoderPrintOptions(always_print_primitive_fields=True,
                                                     preserve_proto_field_names=True),
        max_request_body_size=constants.ADMIN_MAX_MESSAGE_BYTES,
        max_response_body_size=16 << 20,
    )
    return HttpFilter(name=TRANSCODER_FILTER, typed_config=Any.pack(transcoder))


def size_limit_filter() -> HttpFilter:
    """A buffer filter, off unless a route turns it on: the admin route does, so Envoy refuses (413) an admin call
    bigger than the admin server would read, for native gRPC callers as for JSON ones."""
    return HttpFilter(name=SIZE_LIMIT_FILTER, typed_config=Any.pack(Buffer(max_request_bytes=MAX_REQUEST_BYTES)),
                      disabled=True)


def admin_routes() -> list[Route]:
    """The gRPC route, and one for the JSON paths: Envoy builds a request's filter chain from the route its
    original path matches, so `/admin/v1/...` needs a route of its own that switches the size limit on (and the
    route stage off). Once the transcoder has rewritten the path the gRPC route serves it; a JSON path the
    transcoder does not know stays on this one and gets a 404."""
    json_paths = Route(
        name="admin_api_json",
        match=RouteMatch(prefix=JSON_PREFIX),
        direct_response=DirectResponseAction(
            status=404, body=DataSource(inline_bytes=NotFound("No admin API method at this path.").body())),
        response_headers_to_add=[HeaderValueOption(header=HeaderValue(key="content-type", value="application/json"))],
        typed_per_filter_config=_admin_filter_configs(),
    )
    return [_grpc_route(), json_paths]


def _admin_filter_configs() -> dict[str, Any]:
    return {
        constants.ROUTE_STAGE_FILTER: Any.pack(ExtProcPerRoute(disabled=True)),
        SIZE_LIMIT_FILTER: Any.pack(BufferPerRoute(buffer=Buffer(max_request_bytes=MAX_REQUEST_BYTES))),
    }


def _grpc_route() -> Route:
    return Route(
        name="admin_api",
        match=RouteMatch(prefix=f"/{SERVICE}/"),
        route=RouteAction(cluster=CLUSTER, timeout=timedelta(seconds=30)),
        typed_per_filter_config=_admin_filter_configs(),
        # the audit log's client address: Envoy's own resolution of it, whatever the client wrote in this header
        request_headers_to_add=[HeaderValueOption(
            header=HeaderValue(key=constants.ADMIN_CLIENT_ADDRESS_HEADER,
                               value="%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD)],
    )
