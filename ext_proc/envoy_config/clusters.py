"""Clusters: one per backend (its own TLS/SNI and timeouts), one aggregate per chain (failover order, attempt stage
as upstream filter), and the ext_proc cluster with one endpoint per server process."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from urllib.parse import urlsplit

from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    CircuitBreakersThresholdsRetryBudget,
    Cluster,
    ClusterCustomClusterType,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
    ClusterLbPolicy,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    Metadata,
    Pipe,
    RoutingPriority,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.core.v3 import (
    HttpProtocolOptions as CommonHttpProtocolOptions,
)
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy_data_plane.envoy.extensions.clusters.aggregate.v3 import ClusterConfig as AggregateClusterConfig
from envoy_data_plane.envoy.extensions.filters.http.upstream_codec.v3 import UpstreamCodec
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any, Struct, Value

from .. import constants
from ..config.chains import aggregate_orders
from ..config.models import Backend, Config, ExtProcTls, McpServer
from ..config.models import OutlierDetection as OutlierSettings
from ..transport.frames import DEFAULT_LIMITS
from .filters import attempt_stage_filter
from .jwt import jwks_clusters

ADMIN_API_CLUSTER = "bg_admin_api"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
"""The service name the servers' health service reports (SERVING until told to stop)."""
EXT_PROC_MAX_STREAMS = DEFAULT_LIMITS.max_concurrent_streams
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def backend_cluster_name(backend_id: str) -> str:
    return constants.BACKEND_CLUSTER_PREFIX + backend_id


def all_clusters(config: Config) -> list[Cluster]:
    clusters = [ext_proc_cluster(config)]
    if config.admin is not None and config.admin.via_envoy:
        clusters.append(admin_api_cluster(config))
    clusters.extend(jwks_clusters(config))
    clusters.extend(backend_cluster(b, config) for b in config.backends)
    clusters.extend(chain_cluster(config, order) for order in aggregate_orders(config))
    if config.mcp is not None:
        clusters.extend(mcp_cluster(server, config) for server in config.mcp.servers)
    return clusters


def ext_proc_cluster(config: Config) -> Cluster:
    """Envoy's side of the ext_proc channel: the servers' Unix sockets, or TCP with Envoy's client certificate when
    the servers ask for mutual TLS (see `ExtProcServer` for why the channel is authenticated at all)."""
    server = config.ext_proc
    if server.socket_dir is not None:
        endpoints = [LbEndpoint(endpoint=Endpoint(address=Address(pipe=Pipe(path=str(server.socket_path(i))))))
                     for i in range(server.processes)]
        load_assignment = ClusterLoadAssignment(cluster_name=constants.EXT_PROC_CLUSTER,
                                                endpoints=[LocalityLbEndpoints(lb_endpoints=endpoints)])
        discovery = ClusterDiscoveryType.STATIC
    else:
        ports = [server.port + i for i in range(server.processes)]
        load_assignment = _assignment(constants.EXT_PROC_CLUSTER, [(server.host, port) for port in ports])
        # A host name (a compose service, a Kubernetes Service) resolves to every replica: STRICT_DNS keeps them all.
        discovery = ClusterDiscoveryType.STATIC if _is_ip(server.host) else ClusterDiscoveryType.STRICT_DNS
    cluster = Cluster(
        name=constants.EXT_PROC_CLUSTER,
        type=discovery,
        connect_timeout=timedelta(seconds=1),
        lb_policy=ClusterLbPolicy.LEAST_REQUEST,
        load_assignment=load_assignment,
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: Any.pack(HttpProtocolOptions(
            # the servers' own SETTINGS_MAX_CONCURRENT_STREAMS: Envoy opens another connection rather than burst
            # past it on a new one before the SETTINGS arrive
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions(max_concurrent_streams=EXT_PROC_MAX_STREAMS))))},
    )
    if server.tls is not None:
        cluster.transport_socket = ext_proc_client_tls(server.tls)
    cluster.health_checks = [ext_proc_health_check()]
    cluster.outlier_detection = OutlierDetection(
        # a server that refuses or drops connections leaves the rotation before its health check notices
        split_external_local_origin_errors=True, consecutive_local_origin_failure=3,
        enforcing_consecutive_local_origin_failure=100, interval=timedelta(seconds=1),
        base_ejection_time=timedelta(seconds=2), max_ejection_percent=50)
    return cluster


def ext_proc_health_check() -> HealthCheck:
    """Envoy asks every ext_proc server's gRPC health service each second (over the same channel: socket or mutual
    TLS). A server turns NOT_SERVING as soon as it is told to stop, so it leaves the rotation while it drains; one
    that is frozen stops answering and is out after two missed checks, about two seconds, instead of taking a
    share of requests that each wait out `message_timeout`."""
    return HealthCheck(
        timeout=timedelta(milliseconds=750), interval=timedelta(seconds=1),
        unhealthy_threshold=2, healthy_threshold=1,
        no_traffic_interval=timedelta(seconds=1), unhealthy_interval=timedelta(milliseconds=500),
        grpc_health_check=HealthCheckGrpcHealthCheck(service_name=EXT_PROC_SERVICE))


def ext_proc_client_tls(tls: ExtProcTls) -> TransportSocket:
    """Envoy presents its client certificate and accepts only a server certificate for `server_name` from the CA."""
    context = UpstreamTlsContext(
        sni=tls.server_name,
        common_tls_context=CommonTlsContext(
            alpn_protocols=["h2"],
            tls_certificates=[TlsCertificate(certificate_chain=DataSource(filename=str(tls.client_cert_file)),
                                             private_key=DataSource(filename=str(tls.client_key_file)))],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=str(tls.ca_file)),
                match_typed_subject_alt_names=[SubjectAltNameMatcher(
                    san_type=SubjectAltNameMatcherSanType.DNS, matcher=StringMatcher(exact=tls.server_name))])))
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def admin_api_cluster(config: Config) -> Cluster:
    """The first ext_proc process's admin port (the other processes don't serve it)."""
    host = config.ext_proc.host
    assert config.admin is not None
    return Cluster(
        name=ADMIN_API_CLUSTER,
        type=ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=timedelta(seconds=1),
        load_assignment=_assignment(ADMIN_API_CLUSTER, [(host, config.admin.port)]),
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: Any.pack(HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions())))},
    )


def backend_cluster(backend: Backend, config: Config) -> Cluster:
    name = backend_cluster_name(backend.id)
    address = backend.connect_to or backend.host
    is_ip = _is_ip(address)
    metadata = Metadata(filter_metadata={constants.METADATA_NAMESPACE: Struct(fields={
        constants.METADATA_BACKEND_KEY: Value(string_value=backend.id)})})
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if is_ip else ClusterDiscoveryType.LOGICAL_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=timedelta(seconds=backend.connect_timeout),
        load_assignment=_assignment(name, [(address, backend.port)], metadata=metadata, hostname=backend.host),
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: Any.pack(HttpProtocolOptions(
            # A stream that outlives the backend's timeout is reset, which the route's retry policy treats as
            # a failed attempt (a new backend is tried while nothing has reached the client).
            common_http_protocol_options=CommonHttpProtocolOptions(
                max_stream_duration=timedelta(seconds=backend.timeout)),
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http_protocol_options=Http1ProtocolOptions())))},
    )
    cluster.circuit_breakers = circuit_breakers(config)
    cluster.per_connection_buffer_limit_bytes = upstream_buffer_limit(config)
    if backend.is_tls:
        cluster.transport_socket = _tls_socket(backend)
    if backend.outlier_detection is not None:
        cluster.outlier_detection = outlier_detection(backend.outlier_detection)
    return cluster


def mcp_cluster_name(server: str) -> str:
    return constants.MCP_CLUSTER_PREFIX + server


def mcp_cluster(server: McpServer, config: Config) -> Cluster:
    """An upstream MCP server: its URL's host, or a stdio server's bridge (`mcp.bridge_host`, the server's `port`).
    HTTP/1.1 as most MCP servers speak it; an answer may stream (SSE) for as long as the route's timeout."""
    assert config.mcp is not None
    name = mcp_cluster_name(server.name)
    if server.url is not None:
        parts = urlsplit(server.url)
        host, tls = parts.hostname or "", parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
    else:
        host, tls, port = config.mcp.bridge_host, False, server.port or 0
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.LOGICAL_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=timedelta(seconds=min(server.timeout, 10.0)),
        load_assignment=_assignment(name, [(host, port)], hostname=host),
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: Any.pack(HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http_protocol_options=Http1ProtocolOptions())))},
    )
    cluster.circuit_breakers = circuit_breakers(config)
    cluster.per_connection_buffer_limit_bytes = upstream_buffer_limit(config)
    if tls:
        cluster.transport_socket = tls_socket(host, str(server.ca_file) if server.ca_file else None)
    return cluster


def circuit_breakers(config: Config) -> CircuitBreakers:
    """Failover is Envoy's retry, and a retry needs room in the cluster's retry circuit breaker: with Envoy's default
    (3 retries in flight per cluster) a burst of failures left all but three requests unfailed-over. A budget sized
    as a share of the requests in flight holds at any concurrency; `max_requests` replaces Envoy's default 1,024."""
    routing = config.routing
    return CircuitBreakers(thresholds=[CircuitBreakersThresholds(
        priority=RoutingPriority.DEFAULT,
        max_connections=routing.max_requests, max_pending_requests=routing.max_requests,
        max_requests=routing.max_requests,
        retry_budget=CircuitBreakersThresholdsRetryBudget(
            budget_percent=Percent(value=routing.retry_budget_percent),
            min_retry_concurrency=routing.min_retry_concurrency),
        track_remaining=True)])


def upstream_buffer_limit(config: Config) -> int:
    """What Envoy may buffer per upstream connection: a translated request (up to twice the client's limit, base64
    and JSON overheads included) and the buffered answer the attempt stage translates. Envoy's default is 1 MiB."""
    return 2 * config.requests.max_body_bytes + (1 << 20)


def outlier_detection(settings: OutlierSettings) -> OutlierDetection:
    """Each backend cluster has one host, so ejecting it takes the backend out of every chain until the ejection
    ends; Envoy's panic mode still sends to it when nothing else is left."""
    return OutlierDetection(
        consecutive_5xx=settings.consecutive_5xx,
        consecutive_gateway_failure=settings.consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure=100,
        interval=timedelta(seconds=settings.interval),
        base_ejection_time=timedelta(seconds=settings.base_ejection_time),
        max_ejection_time=timedelta(seconds=settings.max_ejection_time),
        max_ejection_percent=100,
    )


def chain_cluster(config: Config, chain: tuple[str, ...]) -> Cluster:
    """An aggregate cluster: Envoy tries its members in order, and the attempt stage runs once per attempt."""
    aggregate = AggregateClusterConfig(clusters=[backend_cluster_name(b) for b in chain])
    return Cluster(
        name=constants.CHAIN_CLUSTER_PREFIX + "__".join(chain),
        connect_timeout=timedelta(seconds=5),
        circuit_breakers=circuit_breakers(config),
        per_connection_buffer_limit_bytes=upstream_buffer_limit(config),
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        cluster_type=ClusterCustomClusterType(name="envoy.clusters.aggregate", typed_config=Any.pack(aggregate)),
        typed_extension_protocol_options={_HTTP_OPTIONS_KEY: Any.pack(HttpProtocolOptions(
            explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                http_protocol_options=Http1ProtocolOptions()),
            http_filters=[
                attempt_stage_filter(config),
                HttpFilter(name="envoy.filters.http.upstream_codec", typed_config=Any.pack(UpstreamCodec())),
            ]))},
    )


def _tls_socket(backend: Backend) -> TransportSocket:
    return tls_socket(backend.host, str(backend.ca_file) if backend.ca_file else None)


def tls_socket(host: str, ca_file: str | None) -> TransportSocket:
    """TLS to `host`: SNI and the certificate's name are the host; trusted CAs from `ca_file`, else the system's."""
    context = UpstreamTlsContext(
        sni=host,
        common_tls_context=CommonTlsContext(
            alpn_protocols=["http/1.1"],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=ca_file or SYSTEM_CA_BUNDLE),
                match_typed_subject_alt_names=[SubjectAltNameMatcher(
                    san_type=SubjectAltNameMatcherSanType.DNS, matcher=StringMatcher(exact=host))])))
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))


def _assignment(name: str, addresses: list[tuple[str, int]], *, metadata: Metadata | None = None,
                hostname: str = "") -> ClusterLoadAssignment:
    endpoints = [
        LbEndpoint(
            endpoint=Endpoint(address=Address(socket_address=SocketAddress(address=host, port_value=port)),
                              hostname=hostname),
            metadata=metadata)
        for host, port in addresses
    ]
    return ClusterLoadAssignment(cluster_name=name, endpoints=[LocalityLbEndpoints(lb_endpoints=endpoints)])


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
