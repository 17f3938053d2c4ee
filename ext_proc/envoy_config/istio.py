"""`babelgate render --istio`: Babelgate inside an Istio mesh, as Kubernetes objects.

Envoy is an Istio gateway here: the mesh's ingress gateway (`placement="gateway"`), or a gateway of Babelgate's
own inside the mesh that applications call (`placement="sidecar"`, kept as the CLI name; see below). An
EnvoyFilter patches into that Envoy what `babelgate render` puts in a standalone bootstrap — the route stage, the
chain routes, the chain and backend clusters with the attempt stage, the local-reply mapping — built by the same
functions, so the two renderings cannot drift. The ext_proc server runs as a Deployment behind a Service; Istio
makes the Service's cluster, and both stages point at it by Istio's name for it.

Only that gateway may open ext_proc streams (anything that can may ask for provider credentials): a
PeerAuthentication makes the ext_proc pods take mutual TLS only, and an AuthorizationPolicy admits the gateway's
service account alone to the ext_proc port. This is why the "sidecar" placement is no longer the applications' own
sidecars: an application shares its pod's network namespace and identity with its sidecar, so whatever the sidecar
may reach (the ext_proc port, with the credentials it hands out) and hold (the provider keys in its Envoy config,
readable on localhost:15000), the application may too. Credentials are therefore only added in a gateway's Envoy,
in pods that run no application code.

Babelgate may share that Envoy with other traffic, so the route stage is inserted disabled and enabled only on
Babelgate's virtual host, and the local-reply mapping only rewrites replies of that virtual host. See
`envoy/istio/README.md` for the placements and the design choices.

MCP servers (`mcp:`) are upstreams like backends: their routes and clusters are patched in, and a host outside the
cluster gets its ServiceEntry and DestinationRule. A stdio server (`command`) is refused: its bridge is one MCP
session of one process, which the ext_proc replicas behind one Service could not share (Envoy's calls and a
replica's own requests would reach different bridges). Run it behind `python -m ext_proc.mcp_bridge` as a
Deployment of its own (one replica) with a Service, and name it by `url`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

import betterproto2
import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLogFilter, AndFilter, ExtensionFilter
from envoy_data_plane.envoy.config.route.v3 import FilterConfig, VirtualHost
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager
from envoy_data_plane.google.protobuf import Any

from .. import constants
from ..config.chains import aggregate_orders, all_chain_routes
from ..config.loading import ConfigError
from ..config.models import Config, McpServer
from ..config.models import OutlierDetection as OutlierSettings
from ..errors import NotFound
from ..json_types import JsonObject
from .bootstrap import chain_routes, mcp_route, message_dict, route_configuration
from .clusters import backend_cluster, chain_cluster, mcp_cluster
from .filters import local_reply_config, route_stage_filter
from .jwt import jwks_clusters, jwt_filter
from .stream_meter import stream_meter_filter

Placement = Literal["gateway", "sidecar"]

EXT_PROC_SERVICE = "babelgate"
EXT_PROC_PORT = 50051
EXT_PROC_PORT_NAME = "grpc-ext-proc"
HEALTH_PORT = 50061
"""The gRPC health service alone, in plaintext (`serve --health-port`): what the kubelet's probes ask."""
HEALTH_PORT_NAME = "grpc-health"
ADMIN_PORT_NAME = "grpc-admin"
ADMIN_SERVICE_ACCOUNT = "babelgate-admin"
"""With an admin API: the one identity in the mesh the AuthorizationPolicy admits to the admin port."""
API_SERVICE = "babelgate-api"
"""Sidecar placement: the Service applications call; it selects Babelgate's gateway in the mesh."""
MESH_GATEWAY = "babelgate-gateway"
"""Sidecar placement: the name of Babelgate's gateway (Deployment, ServiceAccount) and its `istio` label."""
MESH_GATEWAY_TARGET_PORT = 8080
"""The port the mesh gateway's proxy listens on (unprivileged: it runs as 1337); its Service maps 80 to it."""
MESH_GATEWAY_PORT_NAME = "https-babelgate"
HTTP_PORT = 80
CONFIG_MAP = "babelgate-config"
CONFIG_DIR = "/etc/babelgate"
CONFIG_FILE = "babelgate.yaml"
PROVIDER_KEYS_SECRET = "babelgate-provider-keys"
METADATA_KEY_ENV = "BABELGATE_METADATA_KEY"
"""Every ext_proc replica seals and opens reservation metadata with it (`ext_proc/auth/sealing.py`)."""
KEYS_SECRET = "babelgate-keys"
DEFAULT_GATEWAY_HOST = "llm.example.com"
DEFAULT_GATEWAY_NAMESPACE = "istio-system"
DEFAULT_GATEWAY_SERVICE_ACCOUNT = "istio-ingressgateway-service-account"
"""The service account of the ingress gateway Istio's default profile installs."""
TRUST_DOMAIN = "cluster.local"
"""Istio's default trust domain; principals are `<trust domain>/ns/<namespace>/sa/<service account>`."""
CLUSTER_DOMAIN = "svc.cluster.local"
POLICY_NAME = "babelgate-ext-proc"

_HCM = "envoy.filters.network.http_connection_manager"
_ROUTER = "envoy.filters.http.router"
_EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
_LABELS = {"app.kubernetes.io/name": "babelgate", "app.kubernetes.io/part-of": "babelgate"}
_SERVER_LABELS = {**_LABELS, "app.kubernetes.io/component": "ext-proc"}
_SERVER_SELECTOR = {k: v for k, v in _SERVER_LABELS.items() if k != "app.kubernetes.io/part-of"}
_INGRESS_SELECTOR = {"istio": "ingressgateway"}
_MESH_GATEWAY_SELECTOR = {"istio": MESH_GATEWAY}


@dataclass(frozen=True)
class _Site:
    """Which Istio gateway runs Babelgate's filters, and the names Istio gives the pieces the patches touch."""

    placement: Placement
    namespace: str
    """Where the ext_proc server runs."""
    host: str
    """The host of the Gateway server and VirtualService (`*` on Babelgate's own gateway: any name of its
    Service, short or qualified, reaches it)."""
    filter_namespace: str
    """The gateway's namespace: an EnvoyFilter's workload selector only reaches its own namespace."""
    selector: dict[str, str]
    """The gateway pods' labels."""
    service_account: str

    @property
    def virtual_host(self) -> str:
        """Istio names the virtual host of a gateway server's host `host:port`."""
        return f"{self.host}:{HTTP_PORT}"

    @property
    def principal(self) -> str:
        """The gateway's mesh identity, the one the AuthorizationPolicy admits to the ext_proc port."""
        return _principal(self.filter_namespace, self.service_account)

    @property
    def ext_proc_host(self) -> str:
        return f"{EXT_PROC_SERVICE}.{self.namespace}.{CLUSTER_DOMAIN}"

    @property
    def ext_proc_cluster(self) -> str:
        """Istio's outbound cluster for the ext_proc Service's gRPC port."""
        return f"outbound|{EXT_PROC_PORT}||{self.ext_proc_host}"


def render_istio(config: Config, *, placement: Placement, namespace: str, image: str, config_text: str,
                 gateway_host: str = DEFAULT_GATEWAY_HOST, gateway_namespace: str = DEFAULT_GATEWAY_NAMESPACE,
                 gateway_service_account: str = DEFAULT_GATEWAY_SERVICE_ACCOUNT) -> list[dict]:
    """Every object to `kubectl apply` for Babelgate in an Istio mesh, as plain dicts.

    `config_text` is the Babelgate config file as written (it goes into the ConfigMap the server reads). For the
    gateway placement, `gateway_host` is the host clients call on the ingress gateway, `gateway_namespace` the
    namespace that gateway runs in, and `gateway_service_account` its service account (the identity admitted to
    the ext_proc port). The sidecar placement ignores the three: it renders its own gateway in `namespace`, and
    applications call `babelgate-api.<namespace>`.
    """
    _refuse_stdio_servers(config)
    if placement == "gateway":
        site = _Site(placement, namespace, gateway_host, gateway_namespace, _INGRESS_SELECTOR,
                     gateway_service_account)
        front = [_gateway(site), _virtual_service(site)]
    elif placement == "sidecar":
        site = _Site(placement, namespace, "*", namespace, _MESH_GATEWAY_SELECTOR, MESH_GATEWAY)
        front = [*_mesh_gateway(site), _gateway(site), _virtual_service(site), _api_destination_rule(site)]
    else:
        raise ValueError(f"placement must be 'gateway' or 'sidecar', not {placement!r}")
    return [
        _envoy_filter(config, site),
        *front,
        *egress_objects(config, namespace),
        _config_map(namespace, config_text),
        _deployment(config, namespace, image, config_text),
        _ext_proc_service(namespace, config),
        _ext_proc_destination_rule(namespace),
        *trust_objects(config, site),
    ]


def _refuse_stdio_servers(config: Config) -> None:
    stdio = [server.name for server in config.mcp.servers if server.command is not None] if config.mcp else []
    if stdio:
        raise ConfigError(
            f"MCP servers {', '.join(stdio)}: stdio servers (`command`) are not rendered for Istio (a bridge is one "
            "session of one process, and the ext_proc replicas share one Service): run each behind `python -m "
            "ext_proc.mcp_bridge --host 0.0.0.0 --port N -- <command>` in a Deployment of one replica with a Service, "
            "and name it by `url: http://<service>:N/mcp`")


def render_istio_yaml(config: Config, *, placement: Placement, namespace: str, image: str, config_text: str,
                      gateway_host: str = DEFAULT_GATEWAY_HOST, gateway_namespace: str = DEFAULT_GATEWAY_NAMESPACE,
                      gateway_service_account: str = DEFAULT_GATEWAY_SERVICE_ACCOUNT) -> str:
    objects = render_istio(config, placement=placement, namespace=namespace, image=image, config_text=config_text,
                           gateway_host=gateway_host, gateway_namespace=gateway_namespace,
                           gateway_service_account=gateway_service_account)
    who = (f"clients call http://{gateway_host}/v1 through the Istio ingress gateway" if placement == "gateway"
           else f"applications in the mesh call http://{API_SERVICE}.{namespace}/v1, served by Babelgate's own "
                f"gateway ({MESH_GATEWAY})")
    header = ("# Rendered by `babelgate render --istio`; edit the Babelgate config instead (envoy/istio/README.md).\n"
              f"# Placement: {placement}; {who}.\n")
    return header + yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120)


def _principal(namespace: str, service_account: str) -> str:
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


class _Dumper(yaml.SafeDumper):
    """No anchors (each object reads on its own), and the ConfigMap's config file as a block, as it was written."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


# -- the EnvoyFilter -------------------------------------------------------------------------------------------------

def _envoy_filter(config: Config, site: _Site) -> dict:
    """The standalone rendering's pieces as patches on Istio's Envoy config, for the gateway's pods alone."""
    clusters = [*jwks_clusters(config), *(backend_cluster(b, config) for b in config.backends)]
    clusters += [chain_cluster(config, order) for order in aggregate_orders(config)]
    clusters += [mcp_cluster(server, config) for server in (config.mcp.servers if config.mcp else [])]
    patches = [
        _patch("HTTP_FILTER", {"listener": _listener(_ROUTER)}, "INSERT_BEFORE", _route_stage(config, site)),
        *_token_check(config, site),
        *_stream_meter(config, site),
        _patch("NETWORK_FILTER", {"listener": _listener()}, "MERGE", _local_replies(config, site)),
        _patch("VIRTUAL_HOST", {"routeConfiguration": _virtual_host_match(site)}, "MERGE",
               _virtual_host(config, site)),
        *_route_patches(config, site),
        *[_patch("CLUSTER", {}, "ADD", _as_dict(cluster, site)) for cluster in clusters],
    ]
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": {"name": "babelgate", "namespace": site.filter_namespace, "labels": dict(_LABELS)},
            "spec": {"workloadSelector": {"labels": dict(site.selector)}, "configPatches": patches}}


def _listener(sub_filter: str | None = None) -> dict:
    """The HTTP connection managers of the gateway's listeners."""
    manager: dict = {"name": _HCM}
    if sub_filter is not None:
        manager["subFilter"] = {"name": sub_filter}
    return {"filterChain": {"filter": manager}}


def _virtual_host_match(site: _Site) -> dict:
    return {"portNumber": HTTP_PORT, "vhost": {"name": site.virtual_host}}


def _route_patches(config: Config, site: _Site) -> list[dict]:
    """The standalone chain and MCP routes, in front of the virtual host's own. Istio puts each INSERT_FIRST route
    in front of those inserted before it, so they go in reversed to end in the standalone order. A direct route sits
    there too: the backend's host it sets selects Babelgate's virtual host again (see `_direct_hosts`)."""
    backends = {b.id: b for b in config.backends}
    routes = chain_routes(config, backends)
    if config.mcp is not None:
        routes += [mcp_route(server, config.mcp) for server in config.mcp.servers]
    return [_patch("HTTP_ROUTE", {"routeConfiguration": _virtual_host_match(site)}, "INSERT_FIRST",
                   _as_dict(route, site)) for route in reversed(routes)]


def _patch(apply_to: str, match: dict, operation: str, value: dict) -> dict:
    return {"applyTo": apply_to, "match": {"context": "GATEWAY", **match},
            "patch": {"operation": operation, "value": value}}


def _route_stage(config: Config, site: _Site) -> dict:
    """Disabled by default: the listener serves other hosts too; Babelgate's virtual host turns it on."""
    stage = route_stage_filter(config)
    stage.disabled = True
    return _as_dict(stage, site)


def _stream_meter(config: Config, site: _Site) -> list[dict]:
    """The stream meter after the route stage, on for every host: its own mode sends nothing, so only Babelgate's
    twin routes, which override it, ever open a stream to it."""
    if not config.limits.meter_streams_aside:
        return []
    return [_patch("HTTP_FILTER", {"listener": _listener(_ROUTER)}, "INSERT_BEFORE",
                   _as_dict(stream_meter_filter(config), site))]


def _token_check(config: Config, site: _Site) -> list[dict]:
    """With JWT issuers, Envoy's `jwt_authn` filter right before the route stage, disabled like it: a JWT Babelgate's
    issuers don't know may be another host's business. (Named apart from the `jwt_authn` filter Istio's own
    RequestAuthentication makes; its payloads go under other keys of the same metadata namespace.)"""
    verified = jwt_filter(config)
    if verified is None:
        return []
    verified.disabled = True
    return [_patch("HTTP_FILTER", {"listener": _listener(constants.ROUTE_STAGE_FILTER)}, "INSERT_BEFORE",
                   _as_dict(verified, site))]


def _virtual_host(config: Config, site: _Site) -> dict:
    """Merged into the virtual host Istio made for the host clients call: the standalone virtual host's settings,
    and the route stage enabled (an empty `FilterConfig.config` turns a disabled filter on)."""
    own = route_configuration(config).virtual_hosts[0]
    return _as_dict(VirtualHost(
        domains=_direct_hosts(config) if site.host != "*" else [],
        include_request_attempt_count=own.include_request_attempt_count,
        include_attempt_count_in_response=own.include_attempt_count_in_response,
        request_body_buffer_limit=own.request_body_buffer_limit,
        typed_per_filter_config={name: Any.pack(FilterConfig(config=Any())) for name in _ours(config)},
    ), site)


def _ours(config: Config) -> list[str]:
    """Babelgate's HTTP filters, which its virtual host turns on."""
    return [constants.JWT_FILTER, constants.ROUTE_STAGE_FILTER] if config.jwt.issuers else [
        constants.ROUTE_STAGE_FILTER]


def _direct_hosts(config: Config) -> list[str]:
    """On a direct route the route stage sets the backend's `:authority` before Envoy matches routes again, and
    Envoy picks the virtual host anew by it. The ingress gateway has no virtual host for a provider's host:
    Babelgate's gets those names (Babelgate's own gateway, like a standalone Envoy, takes `*` already)."""
    backends = {b.id: b for b in config.backends}
    direct = [backends[chain.order[0]] for chain in all_chain_routes(config) if chain.direct]
    return list(dict.fromkeys(name for b in direct for name in (b.host, b.authority)))


def _local_replies(config: Config, site: _Site) -> dict:
    """Babelgate's local-reply mappers, each narrowed to Babelgate's requests (its virtual host, or a direct route
    in whichever virtual host the backend's host selected): the HTTP connection manager's local-reply config is per
    listener, and other hosts' replies must stay as they are."""
    expression = (f"xds.virtual_host_name == {json.dumps(site.virtual_host)}"
                  f" || xds.route_name.startsWith({json.dumps(constants.DIRECT_ROUTE_PREFIX)})")
    ours = AccessLogFilter(extension_filter=ExtensionFilter(name=_CEL_FILTER, typed_config=Any.pack(
        ExpressionFilter(expression=expression))))
    replies = local_reply_config(config)
    for mapper in replies.mappers:
        condition = mapper.filter
        assert condition is not None  # local_reply_config gives every mapper one
        conditions = condition.and_filter.filters if condition.and_filter is not None else [condition]
        mapper.filter = AccessLogFilter(and_filter=AndFilter(filters=[ours, *conditions]))
    return {"typed_config": _as_dict(Any.pack(HttpConnectionManager(local_reply_config=replies)), site)}


def _as_dict(message: betterproto2.Message, site: _Site) -> dict:
    return _object_for_istio(message_dict(message), site)


def _for_istio(value: object, site: _Site) -> object:
    """Both stages call the ext_proc server through Istio's cluster for its Service (the standalone cluster does not
    exist here), with the Service's host as `:authority`; an empty `Any` is `{}` in JSON."""
    if isinstance(value, list):
        return [_for_istio(item, site) for item in value]
    if not isinstance(value, dict):
        return value
    return _object_for_istio(value, site)


def _object_for_istio(value: JsonObject, site: _Site) -> JsonObject:
    if value == {"@type": ""}:
        return {}
    out: JsonObject = {key: _for_istio(item, site) for key, item in value.items()}
    if out.get("@type") == _EXT_PROC_TYPE:
        out["grpc_service"]["envoy_grpc"] = {"cluster_name": site.ext_proc_cluster, "authority": site.ext_proc_host}
    return out


# -- how clients reach it --------------------------------------------------------------------------------------------

def _gateway(site: _Site) -> dict:
    """The ingress gateway serves the host clients call on port 80. Babelgate's own gateway serves any host its
    Service is called by, and only over Istio's mutual TLS: only workloads of the mesh (through their sidecars)
    reach it, never a pod without one."""
    server: dict = {"port": {"number": HTTP_PORT, "name": "http-babelgate", "protocol": "HTTP"}, "hosts": [site.host]}
    if site.placement == "sidecar":
        server = {"port": {"number": HTTP_PORT, "name": MESH_GATEWAY_PORT_NAME, "protocol": "HTTPS"},
                  "hosts": [site.host], "tls": {"mode": "ISTIO_MUTUAL"}}
    return {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "babelgate", "namespace": site.namespace, "labels": dict(_LABELS)},
            "spec": {"selector": dict(site.selector), "servers": [server]}}


def _virtual_service(site: _Site) -> dict:
    """The route Istio keeps behind Babelgate's chain routes: reached only if the route stage let a request through
    without choosing a chain, like the standalone `unrouted` route. Bound to the Gateway alone: the applications'
    sidecars route `babelgate-api` to the gateway's pods as any other Service."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "babelgate", "namespace": site.namespace, "labels": dict(_LABELS)},
            "spec": {"hosts": [site.host], "gateways": ["babelgate"], "http": [{
                "name": "babelgate-unrouted",
                "directResponse": {"status": 404,
                                   "body": {"string": NotFound("No route for this request.").body().decode()}},
                "headers": {"response": {"set": {"content-type": "application/json"}}},
            }]}}


# -- sidecar placement: Babelgate's own gateway inside the mesh -----------------------------------------------------

def _mesh_gateway(site: _Site) -> list[dict]:
    """An Istio gateway of Babelgate's own (a Deployment of Istio's proxy alone, injected with Istio's `gateway`
    template), its service account (the identity the ext_proc pods admit), and the Service applications call."""
    labels = {**_LABELS, "app.kubernetes.io/component": "gateway"}
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": MESH_GATEWAY, "namespace": site.namespace, "labels": dict(labels)}}
    proxy = {
        "name": "istio-proxy",
        "image": "auto",  # Istio's injector puts the mesh's proxy image here
        "ports": [{"name": MESH_GATEWAY_PORT_NAME, "containerPort": MESH_GATEWAY_TARGET_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1337, "runAsGroup": 1337,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": MESH_GATEWAY, "namespace": site.namespace, "labels": dict(labels)},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": dict(site.selector)},
            "template": {
                "metadata": {
                    # its own name in the mesh's telemetry (Istio would take `app.kubernetes.io/name`, the server's)
                    "labels": {**labels, **site.selector, "sidecar.istio.io/inject": "true",
                               "service.istio.io/canonical-name": MESH_GATEWAY},
                    "annotations": {"inject.istio.io/templates": "gateway"},
                },
                "spec": {
                    "serviceAccountName": MESH_GATEWAY,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [proxy],
                },
            },
        },
    }
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": API_SERVICE, "namespace": site.namespace, "labels": dict(labels)},
               "spec": {"selector": dict(site.selector),
                        "ports": [{"name": "http-openai", "port": HTTP_PORT, "targetPort": MESH_GATEWAY_TARGET_PORT,
                                   "protocol": "TCP", "appProtocol": "http"}]}}
    return [account, deployment, service]


def _api_destination_rule(site: _Site) -> dict:
    """The callers' sidecars originate Istio's mutual TLS to the gateway (its pods carry no sidecar label, so
    automatic mutual TLS would send plaintext, which its ISTIO_MUTUAL server refuses)."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": API_SERVICE, "namespace": site.namespace, "labels": dict(_LABELS)},
            "spec": {"host": f"{API_SERVICE}.{site.namespace}.{CLUSTER_DOMAIN}",
                     "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}


# -- the providers, as the mesh sees them ----------------------------------------------------------------------------

class _Upstream(Protocol):
    """What the egress objects need of a backend or an MCP server."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def is_tls(self) -> bool: ...
    @property
    def connect_to(self) -> str | None: ...
    @property
    def outlier_detection(self) -> OutlierSettings | None: ...


@dataclass(frozen=True)
class _McpUpstream:
    """An MCP server's `url` as an upstream host (Envoy's TLS and pools for it are its cluster's, no ejection)."""

    host: str
    port: int
    is_tls: bool
    connect_to: str | None = None
    outlier_detection: OutlierSettings | None = None

    @classmethod
    def of(cls, server: McpServer) -> _McpUpstream:
        assert server.url is not None
        parts = urlsplit(server.url)
        tls = parts.scheme == "https"
        return cls(parts.hostname or "", parts.port or (443 if tls else HTTP_PORT), tls)


def egress_objects(config: Config, namespace: str) -> list[dict]:
    """A ServiceEntry and a DestinationRule per provider or MCP server host outside the cluster.

    Babelgate's own traffic does not use them: its backend and MCP clusters (added by the EnvoyFilter) originate
    TLS themselves. They register the host for the rest of the mesh: HTTPS on the URL's port as is, and plain HTTP
    on port 80 with TLS originated by Istio (SNI = the host), ejecting the host like Babelgate's own cluster does.
    """
    upstreams: list[_Upstream] = [*config.backends]
    if config.mcp is not None:
        upstreams += [_McpUpstream.of(server) for server in config.mcp.servers if server.url is not None]
    hosts: dict[str, list[_Upstream]] = {}
    for upstream in upstreams:
        if not _in_cluster(upstream.host):
            hosts.setdefault(upstream.host, []).append(upstream)
    objects: list[dict] = []
    for host, backends in hosts.items():
        objects += [_service_entry(host, backends, namespace), _destination_rule(host, backends, namespace)]
    return objects


def _service_entry(host: str, backends: list[_Upstream], namespace: str) -> dict:
    ports: dict[int, dict] = {}
    for backend in backends:
        if backend.is_tls:
            name = "https" if backend.port == 443 else f"https-{backend.port}"
            ports.setdefault(backend.port, {"number": backend.port, "name": name, "protocol": "TLS"})
    for backend in backends:
        if backend.is_tls:
            ports.setdefault(HTTP_PORT, {"number": HTTP_PORT, "name": "http", "protocol": "HTTP",
                                         "targetPort": backend.port})
        else:
            name = "http" if backend.port == HTTP_PORT else f"http-{backend.port}"
            ports.setdefault(backend.port, {"number": backend.port, "name": name, "protocol": "HTTP"})
    spec: dict = {"hosts": [host], "location": "MESH_EXTERNAL", "ports": list(ports.values())}
    dial = next((b.connect_to for b in backends if b.connect_to), None)
    if dial is not None:
        spec.update(resolution="STATIC", endpoints=[{"address": dial}])
    else:
        spec["resolution"] = "DNS"
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": _egress_name(host), "namespace": namespace, "labels": dict(_LABELS)}, "spec": spec}


def _destination_rule(host: str, backends: list[_Upstream], namespace: str) -> dict:
    policy: dict = {}
    # Backends sharing a host (two keys, two Azure deployments) share this rule: the first one's settings win.
    settings = next((b.outlier_detection for b in backends if b.outlier_detection is not None), None)
    if settings is not None:
        policy["outlierDetection"] = _outlier_detection(settings)
    tls = next((b for b in backends if b.is_tls), None)
    if tls is not None:
        policy["portLevelSettings"] = [{"port": {"number": HTTP_PORT}, "tls": {"mode": "SIMPLE", "sni": host}}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": _egress_name(host), "namespace": namespace, "labels": dict(_LABELS)},
            "spec": {"host": host, "trafficPolicy": policy}}


def _outlier_detection(settings: OutlierSettings) -> dict:
    """The same ejection as the backend cluster's (`clusters.outlier_detection`); Istio has no max ejection time."""
    return {"consecutive5xxErrors": settings.consecutive_5xx,
            "consecutiveGatewayErrors": settings.consecutive_gateway_failure,
            "interval": _duration(settings.interval),
            "baseEjectionTime": _duration(settings.base_ejection_time),
            "maxEjectionPercent": 100}


def _in_cluster(host: str) -> bool:
    """IP addresses, single labels and Kubernetes service names are no MESH_EXTERNAL hosts."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "." not in host or host.endswith((".svc", ".local")) or ".svc." in host
    return True


def _egress_name(host: str) -> str:
    return "babelgate-" + host.replace(".", "-")


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


# -- the ext_proc server ---------------------------------------------------------------------------------------------

def _config_map(namespace: str, config_text: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIG_MAP, "namespace": namespace, "labels": dict(_LABELS)},
            "data": {CONFIG_FILE: config_text}}


def _deployment(config: Config, namespace: str, image: str, config_text: str) -> dict:
    """One server process per pod (`--port` keeps `serve` from starting `ext_proc.processes` of them, which the
    single Service port could not reach): the config's process count becomes the replica count, two at least."""
    sources: list[dict] = [{"configMap": {"name": CONFIG_MAP}}]
    if config.keys_file is not None:
        # `babelgate keys create` output, next to the config as the config names it; optional like the file itself
        name = config.keys_file.name
        sources.append({"secret": {"name": KEYS_SECRET, "optional": True, "items": [{"key": name, "path": name}]}})
    checksum = hashlib.sha256(config_text.encode()).hexdigest()
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": EXT_PROC_SERVICE, "namespace": namespace, "labels": dict(_SERVER_LABELS)},
        "spec": {
            "replicas": max(2, config.ext_proc.processes),
            "selector": {"matchLabels": dict(_SERVER_SELECTOR)},
            "template": {
                "metadata": {
                    "labels": {**_SERVER_LABELS, "sidecar.istio.io/inject": "true"},
                    "annotations": {
                        # a changed config changes the pod template, so `kubectl apply` rolls the pods
                        "babelgate/config-sha256": checksum,
                        # credentials are fetched at start-up, through the sidecar
                        "proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}',
                        # the kubelet's probes go through the sidecar's agent, whatever the mesh's default: the
                        # PeerAuthentication refuses the kubelet's own plaintext connections
                        "sidecar.istio.io/rewriteAppHTTPProbers": "true",
                    },
                },
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    # streams in flight get up to 10 s after SIGTERM, then settlements as long again
                    "terminationGracePeriodSeconds": 30,
                    "containers": [_server_container(config, image)],
                    "volumes": [{"name": "config", "projected": {"sources": sources}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def _server_container(config: Config, image: str) -> dict:
    """Plaintext TCP behind the pod's sidecar, and the health service alone on its own port for the probes.
    `--peers mesh` on the command line wins over the config's `socket_dir` or `tls` (which Envoy on one host, or
    Envoy across hosts, would use): here Istio's mutual TLS and the AuthorizationPolicy authenticate the peers."""
    container: dict = {
        "name": "babelgate",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve", "-c", f"{CONFIG_DIR}/{CONFIG_FILE}", "--host", "0.0.0.0", "--port", str(EXT_PROC_PORT),
                 "--peers", "mesh", "--health-port", str(HEALTH_PORT)],
        "ports": [{"name": EXT_PROC_PORT_NAME, "containerPort": EXT_PROC_PORT, "protocol": "TCP"},
                  {"name": HEALTH_PORT_NAME, "containerPort": HEALTH_PORT, "protocol": "TCP"}],
    }
    if config.admin is not None:
        # every pod serves the admin API (gRPC), to the admin service account only (see `_authorization_policy`)
        container["ports"].append({"name": ADMIN_PORT_NAME, "containerPort": config.admin.port, "protocol": "TCP"})
    if _env_secrets(config):
        container["envFrom"] = [{"secretRef": {"name": PROVIDER_KEYS_SECRET}}]
    probe = {"grpc": {"port": HEALTH_PORT}}
    container.update({
        # required: a replica without the shared key could not settle what another replica reserved
        "env": [{"name": METADATA_KEY_ENV,
                 "valueFrom": {"secretKeyRef": {"name": PROVIDER_KEYS_SECRET, "key": METADATA_KEY_ENV}}}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**probe, "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    })
    return container


def _env_secrets(config: Config) -> list[str]:
    refs = [b.api_key for b in config.backends]
    refs += [b.azure.entra.client_secret for b in config.backends if b.azure and b.azure.entra]
    if config.limits.redis is not None:
        refs.append(config.limits.redis.password)
    if config.admin is not None:
        refs += [credential.secret for credential in config.admin.credentials]
    for server in config.mcp.servers if config.mcp is not None else []:
        refs += [server.bearer, *server.headers.values()]
    return [ref.env for ref in refs if ref is not None and ref.env]


def _ext_proc_service(namespace: str, config: Config) -> dict:
    """A ClusterIP Service, not headless: Istio makes a headless Service's cluster ORIGINAL_DST, which a gRPC client
    (the ext_proc filter) cannot use. Istio's EDS lists every ready pod, and Envoy spreads the streams over them."""
    admin_ports = [] if config.admin is None else [{"name": ADMIN_PORT_NAME, "port": config.admin.port,
                                                    "targetPort": ADMIN_PORT_NAME, "protocol": "TCP",
                                                    "appProtocol": "grpc"}]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": EXT_PROC_SERVICE, "namespace": namespace, "labels": dict(_SERVER_LABELS)},
            "spec": {"selector": dict(_SERVER_SELECTOR),
                     "ports": [{"name": EXT_PROC_PORT_NAME, "port": EXT_PROC_PORT, "targetPort": EXT_PROC_PORT_NAME,
                                "protocol": "TCP", "appProtocol": "grpc"}, *admin_ports]}}


def _ext_proc_destination_rule(namespace: str) -> dict:
    """How the gateway's Envoy spreads ext_proc streams: least request (a frozen or slow pod piles up requests and
    gets fewer), and a pod that refuses or drops connections is ejected, as the standalone rendering does. Health
    comes from the pods' readiness (the health port), which turns NOT_SERVING when a server is told to stop."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": f"{EXT_PROC_SERVICE}-ext-proc", "namespace": namespace, "labels": dict(_LABELS)},
            "spec": {"host": f"{EXT_PROC_SERVICE}.{namespace}.{CLUSTER_DOMAIN}",
                     "trafficPolicy": {
                         "loadBalancer": {"simple": "LEAST_REQUEST"},
                         "outlierDetection": {"splitExternalLocalOriginErrors": True,
                                              "consecutiveLocalOriginFailures": 3, "interval": "1s",
                                              "baseEjectionTime": "2s", "maxEjectionPercent": 50}}}}


# -- who may reach the ext_proc server -------------------------------------------------------------------------------

def trust_objects(config: Config, site: _Site) -> list[dict]:
    """Mutual TLS only into the ext_proc pods, and of the mesh's identities only the gateway running Babelgate's
    filters on the ext_proc port (plus, with an admin API, the admin service account on the admin port)."""
    objects = [_peer_authentication(site.namespace), _authorization_policy(config, site)]
    if config.admin is not None:
        objects.insert(0, {"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": ADMIN_SERVICE_ACCOUNT, "namespace": site.namespace,
                                        "labels": dict(_LABELS)}})
    return objects


def _peer_authentication(namespace: str) -> dict:
    """Plaintext is refused at the pods' sidecars: a pod outside the mesh cannot reach the server at all, and every
    caller that can has a verified identity for the AuthorizationPolicy."""
    return {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": POLICY_NAME, "namespace": namespace, "labels": dict(_SERVER_LABELS)},
            "spec": {"selector": {"matchLabels": dict(_SERVER_SELECTOR)}, "mtls": {"mode": "STRICT"}}}


def _authorization_policy(config: Config, site: _Site) -> dict:
    """ALLOW, so everything no rule names is denied: the other workloads of the mesh, and every other port. The
    kubelet's probes reach the health port through the pod's own sidecar agent, which no policy applies to."""
    rules = [{"from": [{"source": {"principals": [site.principal]}}],
              "to": [{"operation": {"ports": [str(EXT_PROC_PORT)]}}]}]
    if config.admin is not None:
        rules.append({"from": [{"source": {"principals": [_principal(site.namespace, ADMIN_SERVICE_ACCOUNT)]}}],
                      "to": [{"operation": {"ports": [str(config.admin.port)]}}]})
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": POLICY_NAME, "namespace": site.namespace, "labels": dict(_SERVER_LABELS)},
            "spec": {"selector": {"matchLabels": dict(_SERVER_SELECTOR)}, "action": "ALLOW", "rules": rules}}
