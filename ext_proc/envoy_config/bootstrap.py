"""The whole standalone Envoy bootstrap for a Babelgate config, rendered as YAML."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import betterproto2
import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutation, HeaderMutationRemoveOnMatch
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HeaderValue,
    HeaderValueOption,
    SocketAddress,
    TransportSocket,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RetryPolicy,
    RetryPolicyRetryBackOff,
    RetryPolicyRetryHostPredicate,
    RetryPolicyRetryPriority,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    Rds,
)
from envoy_data_plane.envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    HeaderMutation as EarlyHeaderMutation,
)
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import DownstreamConnectionsConfig
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.retry.priority.previous_priorities.v3 import PreviousPrioritiesConfig
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    MetadataMatcher,
    MetadataMatcherPathSegment,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.google.protobuf import Any

from .. import constants
from ..config.chains import ChainRoute, all_chain_routes, deadline
from ..config.models import Backend, Config, ListenerTls, McpServer, McpSettings
from ..errors import NotFound
from ..json_types import JsonObject
from . import admin_api
from .access_log import ATTEMPT_FIELDS, REQUEST_FIELDS, file_log
from .clusters import all_clusters, mcp_cluster_name
from .filters import local_reply_config, route_stage_filter
from .jwt import jwt_filter
from .stream_meter import metered_backends, stream_meter_filter, twin


def render_bootstrap(config: Config, routes_from: Rds | None = None) -> Bootstrap:
    return Bootstrap(
        admin=Admin(address=_address("127.0.0.1", config.listener.admin_port)),
        static_resources=BootstrapStaticResources(listeners=[listener(config, routes_from)],
                                                  clusters=all_clusters(config)),
        overload_manager=OverloadManager(resource_monitors=[ResourceMonitor(
            name="envoy.resource_monitors.global_downstream_max_connections",
            typed_config=Any.pack(DownstreamConnectionsConfig(
                max_active_downstream_connections=config.listener.max_connections)))]),
    )


def render_yaml(config: Config) -> str:
    data = message_dict(render_bootstrap(config))
    header = "# Rendered by `babelgate render`; edit the Babelgate config instead.\n"
    return header + yaml.safe_dump(data, sort_keys=False, width=120)


def message_dict(message: betterproto2.Message) -> JsonObject:
    """The message as Envoy reads it in YAML or JSON: betterproto2's snake casing splits digits from letters
    (`consecutive_5_xx`); Envoy wants the proto names."""
    return _names_in(message.to_dict(casing=betterproto2.Casing.SNAKE))


def _names_in(value: JsonObject) -> JsonObject:
    return {key.replace("_5_xx", "_5xx"): _proto_field_names(item) for key, item in value.items()}


def _proto_field_names(value: object) -> object:
    if isinstance(value, dict):
        return _names_in(value)
    if isinstance(value, list):
        return [_proto_field_names(item) for item in value]
    return value


def listener(config: Config, routes_from: Rds | None = None) -> Listener:
    """`routes_from`: routes come from RDS (`babelgate up` reloads them from a file) instead of being inline."""
    manager = HttpConnectionManager(
        stat_prefix="babelgate",
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=None if routes_from is not None else route_configuration(config),
        rds=routes_from,
        http_filters=[
            *http_filters(config),
            HttpFilter(name="envoy.filters.http.router", typed_config=Any.pack(router(config))),
        ],
        local_reply_config=local_reply_config(config),
        max_request_headers_kb=config.requests.max_header_kb,
        # Envoy decides who the client is: the connection's peer, or what the configured number of trusted
        # proxies in front said (never a client's own X-Forwarded-For). Nothing is appended for the providers.
        use_remote_address=True,
        xff_num_trusted_hops=config.listener.trusted_proxy_hops,
        skip_xff_append=True,
        early_header_mutation_extensions=[internal_headers_removed()],
    )
    if config.telemetry.access_log is not None:
        manager.access_log = [file_log(config.telemetry.access_log, REQUEST_FIELDS)]
    return Listener(
        name="babelgate",
        address=_address(config.listener.host, config.listener.port),
        # Envoy's 1 MiB default would refuse a request body the config allows (base64 images, long contexts)
        per_connection_buffer_limit_bytes=request_buffer_limit(config),
        filter_chains=[FilterChain(
            filters=[Filter(name="envoy.filters.network.http_connection_manager", typed_config=Any.pack(manager))],
            transport_socket=_listener_tls(config.listener.tls) if config.listener.tls is not None else None)],
    )


def internal_headers_removed() -> TypedExtensionConfig:
    """A client's `x-babelgate-int-*` headers go before Envoy resolves any route: the route stage removes them too,
    but only after Envoy matched a route for the request's filter chain."""
    mutation = EarlyHeaderMutation(mutations=[HeaderMutation(remove_on_match=HeaderMutationRemoveOnMatch(
        key_matcher=StringMatcher(prefix=constants.INTERNAL_HEADER_PREFIX)))])
    return TypedExtensionConfig(name="babelgate.internal_headers", typed_config=Any.pack(mutation))


def http_filters(config: Config) -> list[HttpFilter]:
    """Babelgate's filters, in order, before the router: JWT verification (with issuers configured) right before the
    route stage, which reads the verified payloads."""
    exposed = admin_api.exposed(config)
    verified = jwt_filter(config, unchecked=admin_api.PREFIXES if exposed else ())
    stages = [route_stage_filter(config)] if verified is None else [verified, route_stage_filter(config)]
    if config.limits.meter_streams_aside:  # inert where no twin turns it on; present for twins a reload adds
        stages.append(stream_meter_filter(config))
    if exposed:
        # the admin route's size limit sees the body as the client sends it (after the transcoder it would arrive
        # in one piece, which the buffer filter passes unmeasured); the transcoder turns admin JSON into gRPC
        # before the route stage would take it for an OpenAI request
        return [admin_api.size_limit_filter(), admin_api.transcoder_filter(), *stages]
    return stages


BODY_SLACK = 64 * 1024
"""Envoy buffers this much more than `requests.max_body_bytes`, so a body just over the limit gets the route stage's
own 413 (it names the limit) rather than Envoy's; past the slack Envoy answers 413 itself, also OpenAI-shaped."""


def request_buffer_limit(config: Config) -> int:
    return config.requests.max_body_bytes + BODY_SLACK


def _listener_tls(tls: ListenerTls) -> TransportSocket:
    context = DownstreamTlsContext(common_tls_context=CommonTlsContext(
        alpn_protocols=["h2", "http/1.1"],
        tls_certificates=[TlsCertificate(certificate_chain=DataSource(filename=str(tls.cert_file)),
                                         private_key=DataSource(filename=str(tls.key_file)))]))
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def router(config: Config) -> Router:
    """`suppress_envoy_headers`: no `x-envoy-expected-rq-timeout-ms` and friends for the providers (or clients)."""
    if config.telemetry.access_log is None:
        return Router(suppress_envoy_headers=True)
    return Router(suppress_envoy_headers=True,
                  upstream_log=[file_log(config.telemetry.access_log, ATTEMPT_FIELDS)])


def route_configuration(config: Config) -> RouteConfiguration:
    """One route per chain (backend order + retry settings), selected by the header the route stage sets; everything
    else gets a 404. The catch-all is only reached if the route stage let a request through without choosing."""
    backends = {b.id: b for b in config.backends}
    routes = admin_api.admin_routes() if admin_api.exposed(config) else []
    routes.extend(chain_routes(config, backends))
    if config.mcp is not None:
        routes.extend(mcp_route(server, config.mcp) for server in config.mcp.servers)
    routes.append(Route(
        name="unrouted",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(
            status=404, body=DataSource(inline_bytes=NotFound("No route for this request.").body())),
        response_headers_to_add=[HeaderValueOption(header=HeaderValue(key="content-type", value="application/json"))],
    ))
    host = VirtualHost(
        name="babelgate",
        domains=["*"],
        routes=routes,
        include_request_attempt_count=True,
        include_attempt_count_in_response=True,
        request_body_buffer_limit=request_buffer_limit(config),
    )
    return RouteConfiguration(name="babelgate", virtual_hosts=[host])


def chain_routes(config: Config, backends: dict[str, Backend]) -> list[Route]:
    """Every chain's route, and after a direct route its twin where the stream meter may settle its streams."""
    metered = metered_backends(config)
    routes = []
    for chain in all_chain_routes(config):
        route = chain_route(chain, backends)
        routes.append(route)
        if chain.direct and chain.order[0] in metered:
            routes.append(twin(route))
    return routes


def chain_route(chain: ChainRoute, backends: dict[str, Backend]) -> Route:
    """Attempts follow the chain's order (previous_priorities over the aggregate cluster's members); a direct route
    retries its one backend. Each attempt is bounded by its backend cluster's `max_stream_duration`."""
    action = RouteAction(cluster=chain.cluster, timeout=timedelta(seconds=deadline(chain, backends)))
    if chain.retry.retries:
        action.retry_policy = retry_policy(chain)
    return Route(
        name=chain.name,
        # The header names the chain; the dynamic metadata proves the route stage chose it (a client's own header
        # is removed by the route stage, but a request whose body phase never ran would still carry it).
        match=RouteMatch(prefix="/", headers=[HeaderMatcher(
            name=constants.HEADER_CHAIN, string_match=StringMatcher(exact=chain.name))],
            dynamic_metadata=[DECIDED]),
        route=action,
        # a direct route has no attempt stage to strip the routing header (and the client's addresses, which the
        # route stage can't remove before Envoy matched this route) before the request leaves
        request_headers_to_remove=[constants.HEADER_CHAIN, constants.ENVOY_ATTEMPT_COUNT_HEADER, *FORWARDED_HEADERS]
        if chain.direct else [],
    )


def mcp_route(server: McpServer, settings: McpSettings) -> Route:
    """A forwarded MCP request to `server`: chosen by the route stage (header and metadata, as for chains), the
    upstream's host set, retried only where nothing reached the server (a tool call is not idempotent), bounded by
    `mcp.call_timeout` for the whole answer, streamed or not."""
    host = urlsplit(server.url).netloc if server.url is not None else f"{settings.bridge_host}:{server.port}"
    return Route(
        name=f"mcp_{server.name}",
        match=RouteMatch(prefix="/", headers=[HeaderMatcher(
            name=constants.HEADER_MCP, string_match=StringMatcher(exact=server.name))],
            dynamic_metadata=[DECIDED]),
        route=RouteAction(
            cluster=mcp_cluster_name(server.name), timeout=timedelta(seconds=settings.call_timeout),
            host_rewrite_literal=host,
            retry_policy=RetryPolicy(retry_on="connect-failure,refused-stream", num_retries=2,
                                     retry_back_off=RetryPolicyRetryBackOff(
                                         base_interval=timedelta(milliseconds=5),
                                         max_interval=timedelta(milliseconds=50)))),
        request_headers_to_remove=[constants.HEADER_MCP, constants.ENVOY_ATTEMPT_COUNT_HEADER, *FORWARDED_HEADERS],
    )


FORWARDED_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port")

DECIDED = MetadataMatcher(filter=constants.METADATA_NAMESPACE,
                          path=[MetadataMatcherPathSegment(key=constants.METADATA_ROUTE_KEY)],
                          value=ValueMatcher(present_match=True))
"""Present only once the route stage decided this request's route (its body phase sets it)."""


def retry_policy(chain: ChainRoute) -> RetryPolicy:
    outcomes = set(chain.retry.retry_on)
    retry_on = [_RETRY_EVENTS[o] for o in ("connect-failure", "reset") if o in outcomes]
    statuses = chain.retry.statuses
    if statuses:
        retry_on.append("retriable-status-codes")
    policy = RetryPolicy(retry_on=",".join(retry_on), retriable_status_codes=statuses,
                         num_retries=chain.retry.retries)
    if not chain.direct:
        policy.retry_priority = RetryPolicyRetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=Any.pack(PreviousPrioritiesConfig(update_frequency=1)))
        policy.retry_host_predicate = [RetryPolicyRetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts", typed_config=Any.pack(PreviousHostsPredicate()))]
        policy.host_selection_retry_max_attempts = 5
    # Retries are the failover itself: a backend down is no reason to wait before trying the next.
    policy.retry_back_off = RetryPolicyRetryBackOff(base_interval=timedelta(milliseconds=1),
                                                    max_interval=timedelta(milliseconds=5))
    return policy


_RETRY_EVENTS = {"connect-failure": "connect-failure", "reset": "reset,refused-stream"}


def _address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


