"""`babelgate render --istio`: the EnvoyFilter's patches are Envoy config that the real Envoy accepts and runs once
applied the way Istio applies them, and the Kubernetes objects around them do what envoy/istio/README.md says.

Istio itself is not here: `mesh_envoy` builds what Istio would generate for the gateway that runs Babelgate's
filters — the ingress gateway (placement `gateway`) or Babelgate's own gateway in the mesh (placement `sidecar`) —
from the rendered Gateway/VirtualService (only the parts the patches touch, plus another host on the same
listener), then applies the EnvoyFilter's patches with Istio's semantics (INSERT_BEFORE the router, proto merges,
INSERT_FIRST routes, ADD clusters). A patch that would match nothing in Istio fails the test. Who may reach the
ext_proc server (PeerAuthentication, AuthorizationPolicy) is tested in tests/unit/test_deploy_trust_policies.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from ext_proc import constants, healthcheck
from ext_proc.auth.certificates import make_certificates
from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config, parse_config
from ext_proc.envoy_config.bootstrap import route_configuration
from ext_proc.envoy_config.istio import render_istio, render_istio_yaml
from ext_proc.errors import status_error_type
from ext_proc.launch.processes import Supervisor, free_port, python_module, wait_for_envoy
from ext_proc.launch.stack import envoy_argv, envoy_binary

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "envoy" / "babelgate.example.yaml"
NAMESPACE = "babelgate"
PLACEMENTS = ("gateway", "sidecar")
EXT_PROC_CLUSTER = "outbound|50051||babelgate.babelgate.svc.cluster.local"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
OTHER_HOST = "other.example"
PATCH_MESSAGES = {
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
}

CONFIG = """
ext_proc: {port: 50100, processes: 3, message_timeout: 2s}
requests: {max_body_bytes: 1048576}
backends:
  - id: oa
    schema: openai
    base_url: "https://api.openai.com/v1"
    api_key: {env: OPENAI_API_KEY}
    timeout: 30s
    outlier_detection: {consecutive_5xx: 7, consecutive_gateway_failure: 2, interval: 1500ms, base_ejection_time: 45s}
  - {id: oa-batch, schema: openai, base_url: "https://api.openai.com/v1", api_key: {env: OPENAI_BATCH_KEY}}
  - {id: an, schema: anthropic, base_url: "https://api.anthropic.com", outlier_detection: null}
  - id: private
    schema: openai
    base_url: "https://llm.internal.example:8443/v1"
    connect_to: 10.1.2.3
    ca_file: /etc/ssl/certs/ca-certificates.crt
  - {id: vllm, schema: openai, base_url: "http://vllm.ml.svc.cluster.local:8000/v1"}
routes:
  - model: a
    backends: [{backend: oa, model: x}, {backend: an, model: y}, {backend: private, model: z}]
  - model: b
    backends: [{backend: oa-batch, model: x}, {backend: vllm, model: w}]
  - model: solo
    backends: [{backend: an, model: y}]
limits:
  per_key: [{window: minute, requests: 100}]
keys_file: keys.yaml
"""


def render(text: str, placement: str, **kwargs: str) -> list[dict]:
    return render_istio(parse_config(text), placement=placement, namespace=NAMESPACE,  # type: ignore[arg-type]
                        image="registry.example/babelgate:1.2.3", config_text=text, **kwargs)


def by_kind(objects: list[dict]) -> dict[tuple[str, str], dict]:
    found = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert len(found) == len(objects), "two objects share a kind and name"
    return found


def patches(objects: list[dict]) -> list[dict]:
    return by_kind(objects)["EnvoyFilter", "babelgate"]["spec"]["configPatches"]


def typed_configs(value: object) -> Iterator[dict]:
    if isinstance(value, dict):
        if "@type" in value:
            yield value
        for item in value.values():
            yield from typed_configs(item)
    elif isinstance(value, list):
        for item in value:
            yield from typed_configs(item)


def merge(target: dict, patch: dict) -> dict:
    """Istio's MERGE is a proto merge. On the JSON form of the messages these patches touch that is: a field the
    patch sets replaces a scalar, appends to a list, and merges into a message or map (an `Any` only when the types
    match). What a proto parse would refuse (a misnamed field, a wrong type, two members of a oneof) is left for
    `envoy --mode validate`, which every applied config goes through."""
    merged = copy.deepcopy(target)
    for name, value in patch.items():
        current = merged.get(name)
        if isinstance(value, dict) and isinstance(current, dict) and value.get("@type") == current.get("@type"):
            merged[name] = merge(current, value)
        elif isinstance(value, list) and isinstance(current, list):
            merged[name] = current + copy.deepcopy(value)
        else:
            merged[name] = copy.deepcopy(value)
    return merged


# -- what Istio would hand the proxy ----------------------------------------------------------------------------------

@dataclass
class Names:
    """Istio's names for the pieces the patches match, derived from the rendered Gateway or Service."""

    port: int
    route_config: str
    virtual_host: str
    domains: list[str]
    client_host: str


def istio_names(found: dict[tuple[str, str], dict], placement: str) -> Names:
    """Istio's names on a gateway: route configuration `http.<port>` for an HTTP server and
    `https.<port>.<port name>.<gateway>.<namespace>` for an HTTPS one (ISTIO_MUTUAL included), virtual host
    `<host>:<port>` with domains `<host>` and `<host>:*` (`*` alone for the host `*`)."""
    gateway = found["Gateway", "babelgate"]
    server = gateway["spec"]["servers"][0]
    port, host = server["port"]["number"], server["hosts"][0]
    domains = [host] if host == "*" else [host, f"{host}:*"]
    if placement == "gateway":
        assert server["port"]["protocol"] == "HTTP"
        return Names(port, f"http.{port}", f"{host}:{port}", domains, host)
    assert server["port"]["protocol"] == "HTTPS" and server["tls"] == {"mode": "ISTIO_MUTUAL"}
    route_config = f"https.{port}.{server['port']['name']}.{gateway['metadata']['name']}.{NAMESPACE}"
    service = found["Service", "babelgate-api"]
    # what an application sends: the Service's short name, which the gateway's `*` host takes
    return Names(port, route_config, f"{host}:{port}", domains, f"{service['metadata']['name']}.{NAMESPACE}")


def mesh_envoy(objects: list[dict], placement: str, *, port: int, admin_port: int, ext_proc_port: int) -> dict:
    """The gateway's listener, route configuration and clusters as Istio would make them, patched. The listener is
    plaintext: the ISTIO_MUTUAL server of Babelgate's own gateway terminates Istio's TLS in front of the same HTTP
    connection manager, which is all the patches touch."""
    found = by_kind(objects)
    names = istio_names(found, placement)
    http = found["VirtualService", "babelgate"]["spec"]["http"][0]
    unrouted = {
        "name": http["name"], "match": {"prefix": "/"},
        "direct_response": {"status": http["directResponse"]["status"],
                            "body": {"inline_string": http["directResponse"]["body"]["string"]}},
        "response_headers_to_add": [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                                    for k, v in http["headers"]["response"]["set"].items()],
    }
    route_config = {"name": names.route_config, "virtual_hosts": [
        {"name": names.virtual_host, "domains": names.domains, "routes": [unrouted]},
        {"name": f"{OTHER_HOST}:{names.port}", "domains": [OTHER_HOST], "routes": [
            {"match": {"prefix": "/nowhere"}, "route": {"cluster": f"outbound|80||nowhere.{OTHER_HOST}"}},
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "other"}}}]},
    ]}
    manager = {"@type": HCM_TYPE, "stat_prefix": f"outbound_0.0.0.0_{names.port}", "http_filters": [
        {"name": "envoy.filters.http.router",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    grpc = found["Service", "babelgate"]["spec"]["ports"][0]
    assert grpc["appProtocol"] == "grpc"  # Istio makes the cluster HTTP/2 for it
    ext_proc = f"outbound|{grpc['port']}||babelgate.{NAMESPACE}.svc.cluster.local"
    clusters = [
        {"name": ext_proc, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": _assignment(ext_proc, ext_proc_port),
         "typed_extension_protocol_options": {HTTP_OPTIONS: {
             "@type": f"type.googleapis.com/{HTTP_OPTIONS}", "explicit_http_config": {"http2_protocol_options": {}}}}},
        *[{"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": name}}
          for name in (f"outbound|80||nowhere.{OTHER_HOST}",)],
    ]
    for patch in patches(objects):
        assert patch["match"]["context"] == "GATEWAY"
        assert apply(patch, manager, route_config, clusters, names), f"Istio would apply this to nothing: {patch}"
    manager["route_config"] = route_config
    listener = {"name": f"0.0.0.0_{names.port}", "address": _address(port),
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": manager}]}]}
    return {"admin": {"address": _address(admin_port)},
            "static_resources": {"listeners": [listener], "clusters": clusters}}


def apply(patch: dict, manager: dict, route_config: dict, clusters: list[dict], names: Names) -> bool:
    kind, match = patch["applyTo"], patch["match"]
    operation, value = patch["patch"]["operation"], patch["patch"]["value"]
    if kind in ("HTTP_FILTER", "NETWORK_FILTER"):
        listener = match["listener"]
        if listener.get("portNumber", names.port) != names.port or listener["filterChain"]["filter"]["name"] != HCM:
            return False
        if kind == "NETWORK_FILTER":
            assert operation == "MERGE"
            manager.update(merge(manager, {k: v for k, v in value["typed_config"].items() if k != "@type"}))
            return True
        assert operation == "INSERT_BEFORE"
        filters = [f["name"] for f in manager["http_filters"]]
        before = listener["filterChain"]["filter"]["subFilter"]["name"]
        if before not in filters:
            return False
        manager["http_filters"].insert(filters.index(before), copy.deepcopy(value))
        return True
    if kind in ("VIRTUAL_HOST", "HTTP_ROUTE"):
        wanted = match["routeConfiguration"]
        if wanted.get("portNumber", names.port) != names.port:
            return False
        name = wanted.get("vhost", {}).get("name")  # none: every virtual host of the route configuration
        hosts = [i for i, h in enumerate(route_config["virtual_hosts"]) if name in (None, h["name"])]
        for index in hosts:
            host = route_config["virtual_hosts"][index]
            if kind == "VIRTUAL_HOST":
                assert operation == "MERGE"
                route_config["virtual_hosts"][index] = merge(host, value)
            else:  # INSERT_FIRST without a route to match: in front of the virtual host's routes
                assert operation == "INSERT_FIRST" and "route" not in wanted.get("vhost", {})
                host["routes"].insert(0, copy.deepcopy(value))
        return bool(hosts)
    assert kind == "CLUSTER" and operation == "ADD", kind
    clusters.append(copy.deepcopy(value))
    return True


def _address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _assignment(name: str, port: int) -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}]}


def envoy_validate(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


def babelgate_routes(config: dict) -> list[str]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [r.get("name") for r in manager["route_config"]["virtual_hosts"][0]["routes"]]


# -- (1) every patch is typed Envoy config ----------------------------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_patches_carry_every_kind_of_envoy_config_babelgate_needs(placement: str) -> None:
    """Each of these is parsed as its Envoy message by `envoy --mode validate` in the tests below."""
    found = list(typed_configs(patches(render(CONFIG, placement))))
    types = {typed["@type"].rsplit(".", 1)[1] for typed in found}
    assert {"ExternalProcessor", "HttpConnectionManager", "FilterConfig", "ExpressionFilter", "HttpProtocolOptions",
            "ClusterConfig", "UpstreamTlsContext", "PreviousPrioritiesConfig", "UpstreamCodec"} <= types
    assert {patch["applyTo"] for patch in patches(render(CONFIG, placement))} <= set(PATCH_MESSAGES)


def test_a_misnamed_field_in_a_patch_would_be_caught(tmp_path: Path) -> None:
    objects = render(CONFIG, "gateway")
    cluster = next(p["patch"]["value"] for p in patches(objects)
                   if p["applyTo"] == "CLUSTER" and "outlier_detection" in p["patch"]["value"])
    cluster["outlier_detection"]["consecutive_5_xx"] = cluster["outlier_detection"].pop("consecutive_5xx")
    config = mesh_envoy(objects, "gateway", port=free_port(), admin_port=free_port(), ext_proc_port=50051)
    result = envoy_validate(config, tmp_path)
    assert result.returncode != 0
    assert "consecutive_5_xx" in result.stdout + result.stderr


# -- (2) applied as Istio applies them, the real Envoy accepts and runs them ------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_patched_istio_config_passes_envoy_validate(placement: str, tmp_path: Path) -> None:
    config = mesh_envoy(render(CONFIG, placement), placement, port=free_port(), admin_port=free_port(),
                        ext_proc_port=50051)
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_chain_routes_end_up_in_front_of_istios_route_in_the_standalone_order(placement: str) -> None:
    config = mesh_envoy(render(CONFIG, placement), placement, port=1, admin_port=2, ext_proc_port=3)
    standalone = [r.name for r in route_configuration(parse_config(CONFIG)).virtual_hosts[0].routes]
    assert standalone[-1] == "unrouted"
    assert babelgate_routes(config) == [*standalone[:-1], "babelgate-unrouted"]


def test_a_patch_matching_nothing_in_istio_is_caught() -> None:
    objects = render(CONFIG, "gateway")
    for patch in patches(objects):
        if patch["applyTo"] == "VIRTUAL_HOST":
            patch["match"]["routeConfiguration"]["vhost"]["name"] = "llm.example.com:8080"
    with pytest.raises(AssertionError, match="apply this to nothing"):
        mesh_envoy(objects, "gateway", port=1, admin_port=2, ext_proc_port=3)


def test_an_invalid_patch_would_fail_envoy_validate(tmp_path: Path) -> None:
    objects = render(CONFIG, "sidecar")
    for patch in patches(objects):
        if patch["applyTo"] == "NETWORK_FILTER":
            cel = next(t for t in typed_configs(patch) if t["@type"].endswith("ExpressionFilter"))
            cel["expression"] = "xds.virtual_host_name =="
    config = mesh_envoy(objects, "sidecar", port=free_port(), admin_port=free_port(), ext_proc_port=50051)
    assert envoy_validate(config, tmp_path).returncode != 0


LIVE_CONFIG = """
backends:
  - {{id: oa, schema: openai, base_url: "http://127.0.0.1:{openai}/v1", api_key: {{env: ISTIO_TEST_OPENAI}},
     outlier_detection: null}}
  - {{id: an, schema: anthropic, base_url: "http://127.0.0.1:{anthropic}", api_key: {{env: ISTIO_TEST_ANTHROPIC}},
     outlier_detection: null}}
routes:
  - model: gpt-4o-mini
    backends: [{{backend: oa, model: gpt-4o-mini}}, {{backend: an, model: claude-haiku-4-5}}]
  - model: claude-opus-4-1
    backends: [{{backend: an, model: claude-opus-4-1}}]
virtual_keys: [{{id: istio-test, hash: "{hash}"}}]
routing: {{cooldown_max: 1ms}}
"""


@dataclass
class Servers:
    workdir: Path
    config_text: str
    key: str
    ext_proc_port: int
    refusing_port: int


@dataclass
class Mesh:
    url: str
    host: str
    key: str

    def chat(self, model: str = "gpt-4o-mini", headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", timeout=20,
                          headers={"host": self.host, "authorization": f"Bearer {self.key}", **(headers or {})},
                          json={"model": model, "messages": [{"role": "user", "content": "Hello"}]})


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two demo providers and one ext_proc server, shared by both placements' Envoys."""
    workdir = tmp_path_factory.mktemp("istio")
    supervisor = Supervisor(log_dir=workdir)
    secrets = {"ISTIO_TEST_OPENAI": "sk-istio-openai", "ISTIO_TEST_ANTHROPIC": "sk-istio-anthropic"}
    key = generate_key()
    # bound, never listening: connections to it are refused, and no port picked later can be it
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    try:
        ports = {}
        for kind, secret in (("openai", "ISTIO_TEST_OPENAI"), ("anthropic", "ISTIO_TEST_ANTHROPIC")):
            _, ready = supervisor.start_reporting(f"istio-{kind}", python_module(
                "ext_proc.demo", "--kind", kind, "--name", f"istio-{kind}", "--port", "0",
                "--api-key", secrets[secret]))
            ports[kind] = ready["port"]
        text = LIVE_CONFIG.format(hash=hash_key(key), **ports)
        path = workdir / "babelgate.yaml"
        path.write_text(text)
        # the Deployment's command, on loopback ports
        ext_proc_port = free_port()
        local = {"/etc/babelgate/babelgate.yaml": str(path), "0.0.0.0": "127.0.0.1", "50051": str(ext_proc_port),
                 "50061": str(free_port())}
        container = by_kind(render_istio(parse_config(text), placement="gateway", namespace=NAMESPACE,
                                         image="babelgate:test", config_text=text))["Deployment", "babelgate"]
        args = container["spec"]["template"]["spec"]["containers"][0]["args"]
        supervisor.start_reporting("ext_proc", python_module("ext_proc", *[local.get(a, a) for a in args],
                                                             "--report-ready"),
                                   env={**secrets, "BABELGATE_METADATA_KEY": "istio-test-shared-key"})
        yield Servers(workdir, text, key, ext_proc_port, refusing.getsockname()[1])
    finally:
        supervisor.stop_all()
        refusing.close()


@contextlib.contextmanager
def mesh_envoy_running(servers: Servers, placement: str, ext_proc_port: int) -> Iterator[Mesh]:
    """The real Envoy, running the config Istio would give the ingress gateway or the application's sidecar."""
    objects = render_istio(parse_config(servers.config_text), placement=placement,  # type: ignore[arg-type]
                           namespace=NAMESPACE, image="babelgate:test", config_text=servers.config_text)
    port, admin_port = free_port(), free_port()
    path = servers.workdir / f"envoy-{placement}-{ext_proc_port}.yaml"
    path.write_text(yaml.safe_dump(mesh_envoy(objects, placement, port=port, admin_port=admin_port,
                                              ext_proc_port=ext_proc_port), sort_keys=False))
    supervisor = Supervisor(log_dir=servers.workdir)
    try:
        supervisor.start(f"envoy-{placement}", envoy_argv(path, workers=1))
        wait_for_envoy(admin_port, timeout=30, supervisor=supervisor)
        yield Mesh(f"http://127.0.0.1:{port}", istio_names(by_kind(objects), placement).client_host, servers.key)
    finally:
        supervisor.stop_all()


@pytest.fixture(scope="module", params=PLACEMENTS)
def mesh(request: pytest.FixtureRequest, servers: Servers) -> Iterator[Mesh]:
    with mesh_envoy_running(servers, request.param, servers.ext_proc_port) as running:
        yield running


def test_requests_to_babelgates_host_are_translated_and_fail_over(mesh: Mesh) -> None:
    answered = mesh.chat()
    assert answered.status_code == 200, answered.text
    assert answered.headers[constants.RESPONSE_HEADER_BACKEND] == "oa"
    assert answered.json()["choices"][0]["message"]["content"]
    # the chain route, the aggregate cluster and the attempt stage (through Istio's ext_proc cluster) at work:
    # the OpenAI-format request reaches the Anthropic provider, translated, after the first backend's 503
    failed_over = mesh.chat(headers={"x-demo-fault": "istio-openai:503"})
    assert failed_over.status_code == 200, failed_over.text
    assert failed_over.headers[constants.RESPONSE_HEADER_BACKEND] == "an"
    assert failed_over.headers[constants.RESPONSE_HEADER_ATTEMPTS] == "2"
    assert failed_over.json()["choices"][0]["message"]["content"]


def test_a_direct_route_reaches_its_backend_after_the_host_changes(mesh: Mesh) -> None:
    # the route stage sets the backend's host, and Envoy picks the virtual host again by it: the route must be there
    answered = mesh.chat(model="claude-opus-4-1")
    assert answered.status_code == 200, answered.text
    assert answered.headers[constants.RESPONSE_HEADER_BACKEND] == "an"
    assert answered.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_envoys_own_errors_are_openai_shaped_on_babelgates_host_only(servers: Servers, placement: str) -> None:
    with mesh_envoy_running(servers, placement, ext_proc_port=servers.refusing_port) as broken:
        # the ext_proc server is unreachable: Envoy answers 503 itself, mapped to an OpenAI-style error
        answer = broken.chat()
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/json"
        error = answer.json()["error"]
        assert error["type"] == status_error_type(503) and "HTTP 503" in error["message"]
        nowhere = httpx.get(broken.url + "/nowhere", headers={"host": OTHER_HOST})
        assert nowhere.status_code == 503 and nowhere.text == "no healthy upstream"


def test_other_hosts_on_the_same_listener_are_left_alone(mesh: Mesh) -> None:
    # on Babelgate's host the route stage refuses a request without a key; on another host it does not run
    refused = httpx.get(mesh.url + "/v1/models", headers={"host": mesh.host})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    other = httpx.get(mesh.url + "/", headers={"host": OTHER_HOST})
    assert other.status_code == 200 and other.text == "other"
    # Babelgate's routes outside its virtual host need the route stage's decision, not just its header
    spoofed = httpx.get(mesh.url + "/", headers={"host": OTHER_HOST, constants.HEADER_CHAIN: "bg_direct_an"})
    assert spoofed.status_code == 200 and spoofed.text == "other"
    # and Envoy's own error replies for this host keep their usual form
    nowhere = httpx.get(mesh.url + "/nowhere", headers={"host": OTHER_HOST})
    assert nowhere.status_code == 503
    assert nowhere.text == "no healthy upstream"


# -- (3) the committed examples ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", PLACEMENTS)
def test_committed_istio_examples_are_in_sync_with_the_renderer(placement: str) -> None:
    expected = render_istio_yaml(load_config(EXAMPLE), placement=placement, namespace=NAMESPACE,  # type: ignore[arg-type]
                                 image="babelgate:latest", config_text=EXAMPLE.read_text())
    committed = ROOT / "envoy" / "istio" / f"{placement}.yaml"
    assert committed.read_text() == expected, f"{committed.relative_to(ROOT)} is stale: see envoy/istio/README.md"


# -- (4) the objects around the EnvoyFilter ---------------------------------------------------------------------------

def test_one_service_entry_and_destination_rule_per_external_provider_host() -> None:
    found = by_kind(render(CONFIG, "sidecar"))
    entries = {o["spec"]["hosts"][0]: o["spec"] for (kind, _), o in found.items() if kind == "ServiceEntry"}
    rules = {o["spec"]["host"]: o["spec"] for (kind, name), o in found.items()
             if kind == "DestinationRule" and name not in ("babelgate-api", "babelgate-ext-proc")}
    # oa and oa-batch share a host; the in-cluster vLLM Service is no MESH_EXTERNAL host
    assert set(entries) == set(rules) == {"api.openai.com", "api.anthropic.com", "llm.internal.example"}
    openai = entries["api.openai.com"]
    assert openai["location"] == "MESH_EXTERNAL" and openai["resolution"] == "DNS"
    assert openai["ports"] == [{"number": 443, "name": "https", "protocol": "TLS"},
                               {"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443}]
    private = entries["llm.internal.example"]
    assert private["resolution"] == "STATIC" and private["endpoints"] == [{"address": "10.1.2.3"}]
    assert {p["number"]: p.get("targetPort") for p in private["ports"]} == {8443: None, 80: 8443}


def test_destination_rules_originate_tls_with_the_hosts_sni_and_mirror_outlier_detection() -> None:
    found = by_kind(render(CONFIG, "gateway"))
    rules = {o["spec"]["host"]: o["spec"]["trafficPolicy"] for (kind, name), o in found.items()
             if kind == "DestinationRule" and name != "babelgate-ext-proc"}
    for host, policy in rules.items():
        assert policy["portLevelSettings"] == [{"port": {"number": 80}, "tls": {"mode": "SIMPLE", "sni": host}}]
    assert rules["api.openai.com"]["outlierDetection"] == {  # oa's settings, not oa-batch's defaults
        "consecutive5xxErrors": 7, "consecutiveGatewayErrors": 2, "interval": "1500ms", "baseEjectionTime": "45s",
        "maxEjectionPercent": 100}
    assert rules["llm.internal.example"]["outlierDetection"]["consecutive5xxErrors"] == 5  # the default
    assert "outlierDetection" not in rules["api.anthropic.com"]  # `outlier_detection: null`


def test_backend_clusters_keep_their_own_tls_and_endpoint_metadata() -> None:
    clusters = {p["patch"]["value"]["name"]: p["patch"]["value"] for p in patches(render(CONFIG, "gateway"))
                if p["applyTo"] == "CLUSTER"}
    assert constants.EXT_PROC_CLUSTER not in clusters  # Istio makes the ext_proc cluster, from the Service
    anthropic = clusters["bg_backend_an"]
    assert anthropic["transport_socket"]["typed_config"]["sni"] == "api.anthropic.com"
    endpoint = anthropic["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["metadata"]["filter_metadata"]["babelgate"] == {"backend": "an"}
    assert clusters["bg_backend_private"]["transport_socket"]["typed_config"]["sni"] == "llm.internal.example"
    assert clusters["bg_backend_oa"]["outlier_detection"]["consecutive_5xx"] == 7
    assert "transport_socket" not in clusters["bg_backend_vllm"]


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_both_stages_call_the_ext_proc_service_by_istios_cluster_name(placement: str) -> None:
    objects = render(CONFIG, placement)
    processors = [t for t in typed_configs(patches(objects)) if t["@type"] == EXT_PROC_TYPE]
    stages = sorted(p["grpc_service"]["initial_metadata"][0]["value"] for p in processors)
    assert stages[0] == "attempt" and stages[-1] == "route"
    for processor in processors:
        assert processor["grpc_service"]["envoy_grpc"] == {
            "cluster_name": EXT_PROC_CLUSTER, "authority": "babelgate.babelgate.svc.cluster.local"}
    assert constants.EXT_PROC_CLUSTER not in json.dumps(objects)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_route_stage_runs_only_on_babelgates_virtual_host(placement: str) -> None:
    objects = render(CONFIG, placement)
    names = istio_names(by_kind(objects), placement)
    by_type = {p["applyTo"]: p for p in patches(objects)}
    filters = {p["patch"]["value"]["name"]: p["patch"]["value"] for p in patches(objects)
               if p["applyTo"] == "HTTP_FILTER"}
    assert filters["babelgate.route_stage"]["disabled"] is True
    # the stream meter stays on for every host: its own mode sends nothing, only Babelgate's twin routes turn it on
    meter = filters["babelgate.stream_meter"]
    assert "disabled" not in meter and meter["typed_config"]["observability_mode"] is True
    assert set(meter["typed_config"]["processing_mode"].values()) <= {"SKIP", "NONE"}
    enabled = by_type["VIRTUAL_HOST"]["patch"]["value"]["typed_per_filter_config"]["babelgate.route_stage"]
    assert enabled == {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
    assert by_type["VIRTUAL_HOST"]["match"]["routeConfiguration"]["vhost"]["name"] == names.virtual_host
    mappers = by_type["NETWORK_FILTER"]["patch"]["value"]["typed_config"]["local_reply_config"]["mappers"]
    for mapper in mappers:
        scope = mapper["filter"]["and_filter"]["filters"][0]["extension_filter"]["typed_config"]
        assert scope["expression"] == (f'xds.virtual_host_name == "{names.virtual_host}"'
                                       ' || xds.route_name.startsWith("bg_direct_")')


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_direct_routes_follow_the_backends_host_and_need_the_route_stages_decision(placement: str) -> None:
    objects = render(CONFIG, placement)
    names = istio_names(by_kind(objects), placement)
    routes = [p for p in patches(objects) if p["applyTo"] == "HTTP_ROUTE"]
    direct = [p for p in routes if p["patch"]["value"]["name"].startswith(constants.DIRECT_ROUTE_PREFIX)]
    # route `solo`, and each backend of the mixed routes alone (what remains when the others can't serve a request)
    names_found = {p["patch"]["value"]["name"] for p in direct}
    assert {name for name in names_found if not name.endswith(".metered")} == {
        "bg_direct_an", "bg_direct_oa", "bg_direct_private", "bg_direct_oa-batch", "bg_direct_vllm"}
    # the OpenAI-schema backends' twins, where the stream meter settles a stream from a copy
    assert {name for name in names_found if name.endswith(".metered")} == {
        f"{name}.metered" for name in names_found if name != "bg_direct_an" and not name.endswith(".metered")}
    patch = next(p for p in direct if p["patch"]["value"]["name"] == "bg_direct_an")
    assert patch["patch"]["value"]["match"]["dynamic_metadata"] == [
        {"filter": "babelgate", "path": [{"key": "route"}], "value": {"present_match": True}}]
    # the backend's host selects Babelgate's own virtual host again: every route is there
    assert all(p["match"]["routeConfiguration"] == {"portNumber": 80, "vhost": {"name": names.virtual_host}}
               for p in routes)
    merged = next(p for p in patches(objects) if p["applyTo"] == "VIRTUAL_HOST")["patch"]["value"]
    if placement == "gateway":  # the ingress gateway's virtual host takes the provider's host too
        assert merged["domains"][:2] == ["api.openai.com", "api.anthropic.com"]
    else:  # Babelgate's own gateway's virtual host is `*` already
        assert names.domains == ["*"] and "domains" not in merged


def test_gateway_placement_patches_the_ingress_gateway_from_its_namespace() -> None:
    found = by_kind(render(CONFIG, "gateway", gateway_host="ai.corp.example", gateway_namespace="ingress"))
    envoy_filter = found["EnvoyFilter", "babelgate"]
    assert envoy_filter["metadata"]["namespace"] == "ingress"
    assert envoy_filter["spec"]["workloadSelector"] == {"labels": {"istio": "ingressgateway"}}
    assert found["Gateway", "babelgate"]["spec"]["selector"] == {"istio": "ingressgateway"}
    assert found["Gateway", "babelgate"]["spec"]["servers"][0]["hosts"] == ["ai.corp.example"]
    assert found["VirtualService", "babelgate"]["spec"]["gateways"] == ["babelgate"]
    assert {p["match"]["context"] for p in envoy_filter["spec"]["configPatches"]} == {"GATEWAY"}
    assert not [key for key in found if key[0] in ("ServiceAccount", "Service") and key[1] != "babelgate"]


def test_sidecar_placement_is_a_babelgate_gateway_that_applications_reach_through_their_sidecars() -> None:
    """No application pod runs Babelgate's filters: a gateway of Babelgate's own does, and `babelgate-api` is it."""
    found = by_kind(render(CONFIG, "sidecar"))
    envoy_filter = found["EnvoyFilter", "babelgate"]
    gateway = found["Deployment", "babelgate-gateway"]
    pod = gateway["spec"]["template"]
    labels = pod["metadata"]["labels"]
    # the EnvoyFilter reaches the gateway's pods only (a selector, in the gateway's namespace), never a sidecar
    assert envoy_filter["metadata"]["namespace"] == gateway["metadata"]["namespace"] == NAMESPACE
    assert envoy_filter["spec"]["workloadSelector"] == {"labels": {"istio": "babelgate-gateway"}}
    assert envoy_filter["spec"]["workloadSelector"]["labels"].items() <= labels.items()
    assert {p["match"]["context"] for p in envoy_filter["spec"]["configPatches"]} == {"GATEWAY"}
    # Istio's gateway injection: the proxy alone, as the pod's only container, with its own identity
    assert pod["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway"
    assert labels["sidecar.istio.io/inject"] == "true"
    (proxy,) = pod["spec"]["containers"]
    assert (proxy["name"], proxy["image"]) == ("istio-proxy", "auto")
    assert proxy["securityContext"]["runAsNonRoot"] is True and proxy["securityContext"]["runAsUser"] == 1337
    assert pod["spec"]["serviceAccountName"] == "babelgate-gateway"
    assert ("ServiceAccount", "babelgate-gateway") in found
    # applications call babelgate-api:80, which is the gateway (its proxy listens on 8080 unprivileged)
    api = found["Service", "babelgate-api"]["spec"]
    assert api["selector"].items() <= labels.items()
    assert api["ports"] == [{"name": "http-openai", "port": 80, "targetPort": 8080, "protocol": "TCP",
                             "appProtocol": "http"}]
    assert proxy["ports"][0]["containerPort"] == 8080
    # the Gateway takes any name of that Service, over Istio's mutual TLS only; callers' sidecars originate it
    server = found["Gateway", "babelgate"]["spec"]
    assert server["selector"].items() <= labels.items()
    assert server["servers"] == [{"port": {"number": 80, "name": "https-babelgate", "protocol": "HTTPS"},
                                  "hosts": ["*"], "tls": {"mode": "ISTIO_MUTUAL"}}]
    assert found["DestinationRule", "babelgate-api"]["spec"] == {
        "host": "babelgate-api.babelgate.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
    # bound to the gateway alone: the applications' sidecars route babelgate-api to its pods like any Service
    assert found["VirtualService", "babelgate"]["spec"]["gateways"] == ["babelgate"]
    assert found["VirtualService", "babelgate"]["spec"]["hosts"] == ["*"]
    for kind in ("Deployment", "Service", "ServiceAccount"):
        for (found_kind, _), obj in found.items():
            if found_kind == kind:
                kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_the_deployments_command_serves_tcp_in_the_mesh_whatever_channel_the_config_names(tmp_path: Path) -> None:
    """The same config file serves a standalone Envoy (Unix sockets, or mutual TLS) and the mesh: the Deployment's
    `--peers mesh` makes the server listen on its TCP port in plaintext for its sidecar either way."""
    files = make_certificates(tmp_path / "tls", "babelgate-ext-proc")
    channels = {"socket_dir": f"ext_proc: {{socket_dir: {tmp_path / 'run'}}}",
                "tls": f"ext_proc: {{tls: {json.dumps(files.config('babelgate-ext-proc'))}}}"}
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        for name, channel in channels.items():
            text = LIVE_CONFIG.format(hash=hash_key(generate_key()), openai=9, anthropic=9) + channel + "\n"
            path = tmp_path / f"{name}.yaml"
            path.write_text(text)
            (deployment,) = [o for o in render_istio(parse_config(text), placement="sidecar", namespace=NAMESPACE,
                                                     image="babelgate:test", config_text=text)
                             if o["kind"] == "Deployment" and o["metadata"]["name"] == "babelgate"]
            args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            port, health_port = free_port(), free_port()
            local = {"/etc/babelgate/babelgate.yaml": str(path), "0.0.0.0": "127.0.0.1", "50051": str(port),
                     "50061": str(health_port)}
            _, ready = supervisor.start_reporting(name, python_module("ext_proc", *[local.get(a, a) for a in args],
                                                                      "--report-ready"),
                                                  env={"ISTIO_TEST_OPENAI": "x", "ISTIO_TEST_ANTHROPIC": "x"})
            assert ready["port"] == port, name
            assert healthcheck.check(f"127.0.0.1:{port}", timeout=10) == (True, "SERVING"), name  # no TLS
            assert not (tmp_path / "run").exists()
    finally:
        supervisor.stop_all()


def test_ext_proc_server_runs_non_root_behind_its_sidecar_probed_on_the_health_port() -> None:
    objects = render(CONFIG, "sidecar")
    found = by_kind(objects)
    for kind in ("Deployment", "Service", "ConfigMap"):
        for (found_kind, _), obj in found.items():
            if found_kind == kind:
                kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    deployment = found["Deployment", "babelgate"]["spec"]
    pod = deployment["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/babelgate:1.2.3"
    # plaintext behind the pod's sidecar (the mesh authenticates peers), health alone on its own port
    assert container["args"] == ["serve", "-c", "/etc/babelgate/babelgate.yaml", "--host", "0.0.0.0",
                                 "--port", "50051", "--peers", "mesh", "--health-port", "50061"]
    assert container["readinessProbe"]["grpc"] == container["livenessProbe"]["grpc"] == {"port": 50061}
    assert {"name": "grpc-health", "containerPort": 50061, "protocol": "TCP"} in container["ports"]
    annotations = deployment["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/rewriteAppHTTPProbers"] == "true"  # probes through the sidecar's agent
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert container["envFrom"] == [{"secretRef": {"name": "babelgate-provider-keys"}}]
    # every replica seals and opens reservations with the one key (required: no pod starts without it)
    assert container["env"] == [{"name": "BABELGATE_METADATA_KEY", "valueFrom": {"secretKeyRef": {
        "name": "babelgate-provider-keys", "key": "BABELGATE_METADATA_KEY"}}}]
    assert {"name": "config", "mountPath": "/etc/babelgate", "readOnly": True} in container["volumeMounts"]
    assert deployment["replicas"] == 3  # ext_proc.processes: one process per pod
    service = found["Service", "babelgate"]["spec"]
    assert "clusterIP" not in service  # not headless: Istio would make it an ORIGINAL_DST cluster
    assert service["ports"] == [{"name": "grpc-ext-proc", "port": 50051, "targetPort": "grpc-ext-proc",
                                 "protocol": "TCP", "appProtocol": "grpc"}]
    assert service["selector"].items() <= deployment["template"]["metadata"]["labels"].items()
    assert found["ConfigMap", "babelgate-config"]["data"] == {"babelgate.yaml": CONFIG}


def test_a_changed_config_rolls_the_ext_proc_pods() -> None:
    def checksum(text: str) -> str:
        pod = by_kind(render(text, "sidecar"))["Deployment", "babelgate"]["spec"]["template"]
        return pod["metadata"]["annotations"]["babelgate/config-sha256"]

    assert checksum(CONFIG) == checksum(CONFIG)
    assert checksum(CONFIG) != checksum(CONFIG.replace("timeout: 30s", "timeout: 31s"))


def test_with_an_admin_api_every_pod_serves_it_on_a_named_service_port() -> None:
    text = CONFIG + "admin: {port: 50070, credentials: [{name: ops, secret: {env: BG_ADMIN_KEY}}]}\n"
    objects = by_kind(render(text, "gateway"))
    container = objects["Deployment", "babelgate"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc-admin", "containerPort": 50070, "protocol": "TCP"} in container["ports"]
    service_ports = objects["Service", "babelgate"]["spec"]["ports"]
    assert {"name": "grpc-admin", "port": 50070, "targetPort": "grpc-admin", "protocol": "TCP",
            "appProtocol": "grpc"} in service_ports
    without = by_kind(render(CONFIG, "gateway"))
    assert [p["name"] for p in without["Service", "babelgate"]["spec"]["ports"]] == ["grpc-ext-proc"]


@pytest.mark.parametrize("placement", ["gateway", "sidecar"])
def test_the_gateways_envoy_spreads_ext_proc_streams_by_load_and_ejects_a_failing_pod(placement: str) -> None:
    rule = by_kind(render(CONFIG, placement))[("DestinationRule", "babelgate-ext-proc")]["spec"]
    assert rule["host"] == "babelgate.babelgate.svc.cluster.local"
    assert rule["trafficPolicy"]["loadBalancer"] == {"simple": "LEAST_REQUEST"}
    assert rule["trafficPolicy"]["outlierDetection"]["consecutiveLocalOriginFailures"] == 3
