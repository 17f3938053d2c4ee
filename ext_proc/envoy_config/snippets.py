"""`babelgate render --filters-only`: the pieces a user pastes into an Envoy config of their own.

Four pieces, each in the shape of the Envoy field it goes into: the route-stage HTTP filter (before the router), the
chain routes and MCP routes (at the front of the virtual host that serves OpenAI-format traffic), the clusters (the
ext_proc servers, each backend, each chain with the attempt stage as its upstream filter, each MCP server), and the
local-reply mapper that gives Envoy's own errors the OpenAI shape. Routes of the user's that carry other traffic
switch the route stage off with the per-route config printed alongside.

MCP: the route stage answers `mcp.path` itself and sends tool calls on to the `mcp_<server>` routes; a stdio server's
cluster names `mcp.bridge_host` and its `port`, where `babelgate serve` runs its bridge (the port must be set).
"""

from __future__ import annotations

import betterproto2
import yaml

from .. import constants
from ..config.models import Config
from .bootstrap import (
    http_filters,
    internal_headers_removed,
    message_dict,
    request_buffer_limit,
    route_configuration,
)
from .clusters import all_clusters
from .filters import local_reply_config

_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"

_GUIDE = """\
# Babelgate for an existing Envoy (rendered by `babelgate render --filters-only`; edit the Babelgate config instead).
#
# 1. http_filters: put these in your HttpConnectionManager's http_filters, in this order, before
#    envoy.filters.http.router (with the admin API configured, its size limit and gRPC-JSON transcoder come
#    first; the size limit is off except on the admin routes; with JWT issuers configured, babelgate.jwt_authn
#    verifies tokens right before the route stage, and its JWKS clusters are among the clusters).
# 2. routes: put these at the front of the virtual host that receives OpenAI-format requests; they only match
#    requests the route stage has chosen a chain for (header x-babelgate-int-chain and its decision in the
#    dynamic metadata), `mcp_<server>` the MCP tool calls the route stage forwards (header x-babelgate-int-mcp;
#    the MCP endpoint itself, mcp.path, is answered by the route stage), and `admin_api`/`admin_api_json` the admin
#    API's gRPC and JSON paths. The last one (`unrouted`) is a catch-all 404: leave it out if your own routes follow.
#    A `bg_direct_<backend>.metered` route is a direct route's twin that turns on babelgate.stream_meter (an ext_proc
#    filter in observability mode that sends nothing elsewhere): streams the limits alone read are settled from a copy.
# 3. clusters: add to static_resources.clusters (or your CDS); they include the ext_proc servers (bg_ext_proc) and
#    one per MCP server (bg_mcp_<server>; a stdio server's is `babelgate serve`'s bridge at mcp.bridge_host:port).
# 4. local_reply_config: set it on the HttpConnectionManager so Envoy's own errors are OpenAI-shaped (optional;
#    with JWT issuers it also makes every token refusal a 401, where Envoy answers a wrong audience with 403).
# 5. disable_on_other_routes: add it as `typed_per_filter_config` to each of your routes that carries other traffic,
#    so the route stage leaves those requests alone.
# 6. virtual_host_settings: set these on that virtual host (request bodies up to the configured size are buffered
#    for translation; the attempt counts feed x-babelgate-attempts).
# 7. connection_manager_settings: set these on the HttpConnectionManager: Envoy decides client addresses (never a
#    client's own X-Forwarded-For) and removes clients' x-babelgate-int-* headers before any route is resolved.
# 8. router_settings: set these on envoy.filters.http.router (no x-envoy-* headers for the providers).
# 9. listener_settings: set these on the listener (Envoy's 1 MiB default buffer would refuse larger request bodies).
"""


def filters_only(config: Config) -> dict:
    host = route_configuration(config).virtual_hosts[0]
    routes = host.routes
    return {
        "http_filters": [_plain(f) for f in http_filters(config)],
        "routes": [_plain(route) for route in routes],
        "clusters": [_plain(cluster) for cluster in all_clusters(config)],
        "local_reply_config": _plain(local_reply_config(config)),
        "virtual_host_settings": {"request_body_buffer_limit": request_buffer_limit(config),
                                  "include_request_attempt_count": True, "include_attempt_count_in_response": True},
        "disable_on_other_routes": {constants.ROUTE_STAGE_FILTER: {"@type": _PER_ROUTE_TYPE, "disabled": True}},
        "listener_settings": {"per_connection_buffer_limit_bytes": request_buffer_limit(config)},
        "connection_manager_settings": {
            "use_remote_address": True, "xff_num_trusted_hops": config.listener.trusted_proxy_hops,
            "skip_xff_append": True, "early_header_mutation_extensions": [_plain(internal_headers_removed())]},
        "router_settings": {"suppress_envoy_headers": True},
    }


def filters_only_yaml(config: Config) -> str:
    return _GUIDE + yaml.safe_dump(filters_only(config), sort_keys=False, width=120)


def _plain(message: betterproto2.Message) -> dict:
    return message_dict(message)
