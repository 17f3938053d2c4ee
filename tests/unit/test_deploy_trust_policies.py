"""Who may open an ext_proc stream, in the deployments rendered for Kubernetes and Istio.

Anything that can open an ext_proc stream can pose as Envoy's attempt stage and be handed provider credentials, so
only the Envoy running Babelgate's filters may reach the ext_proc port. Neither a cluster nor a mesh runs here, so
these tests read the rendered objects the way Kubernetes and Istio evaluate them: `network_admits` follows
NetworkPolicy's rules (a pod selected by an Ingress policy admits only what some rule of it allows), `mesh_admits`
Istio's (STRICT PeerAuthentication refuses plaintext; with an ALLOW AuthorizationPolicy on the workload, a request
no rule matches is denied). Each attack is a caller that must be refused; each control one that must get in. The
objects also match the Kubernetes schemas (kubernetes-validate) and, for Istio's kinds, the structure of the fields
they use (Istio's CRDs are not installed here: the schemas below are written from Istio's API reference).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ext_proc.config.loading import load_config, parse_config
from ext_proc.envoy_config.istio import render_istio

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
EXAMPLE = ROOT / "envoy" / "babelgate.example.yaml"
NAMESPACE = "babelgate"
EXT_PROC_PORT = 50051
HEALTH_PORT = 50061
ADMIN_PORT = 50070
INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
MESH_GATEWAY_PRINCIPAL = "cluster.local/ns/babelgate/sa/babelgate-gateway"
ADMIN_PRINCIPAL = "cluster.local/ns/babelgate/sa/babelgate-admin"
APPLICATION_PRINCIPALS = ("cluster.local/ns/babelgate/sa/default", "cluster.local/ns/shop/sa/checkout")
WITH_ADMIN = (EXAMPLE.read_text()
              + "admin: {port: 50070, credentials: [{name: ops, secret: {env: BABELGATE_ADMIN_KEY}}]}\n")


# -- Kubernetes: NetworkPolicy ----------------------------------------------------------------------------------------

def kubernetes_objects() -> dict[tuple[str, str], dict]:
    docs = [doc for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A label selector with `matchLabels` (the only form rendered: anything else fails the test)."""
    selector = selector or {}
    assert set(selector) <= {"matchLabels"}, selector
    return selector.get("matchLabels", {}).items() <= labels.items()


def network_admits(policies: list[dict], *, target: dict[str, str], source: dict[str, str], source_namespace: str,
                   port: int) -> bool:
    """Whether a TCP connection from a pod (`source` labels, in `source_namespace`) to port `port` of a pod with
    `target` labels in the policies' namespace is admitted."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    return any(_rule_admits(rule, p["metadata"]["namespace"], source, source_namespace, port)
               for p in selecting for rule in p["spec"].get("ingress", []))


def _rule_admits(rule: dict, namespace: str, source: dict[str, str], source_namespace: str, port: int) -> bool:
    ports = rule.get("ports")
    if ports is not None and not any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in ports):
        return False
    peers = rule.get("from")
    if peers is None:
        return True
    for peer in peers:
        assert "ipBlock" not in peer, peer
        if "namespaceSelector" in peer:
            assert peer["namespaceSelector"] == {}, peer  # any namespace; labelled namespaces are not emulated
        elif source_namespace != namespace:
            continue  # a podSelector alone selects pods of the policy's own namespace
        if _selects(peer.get("podSelector"), source):
            return True
    return False


@pytest.fixture(scope="module")
def cluster() -> dict[tuple[str, str], dict]:
    return kubernetes_objects()


def test_network_policy_selects_the_ext_proc_pods_and_admits_envoys_to_the_ext_proc_port(cluster: dict) -> None:
    policies = [o for (kind, _), o in cluster.items() if kind == "NetworkPolicy"]
    ext_proc = pod_labels(cluster["Deployment", "babelgate"])
    envoy = pod_labels(cluster["Deployment", "babelgate-envoy"])
    (policy,) = [p for p in policies if _selects(p["spec"]["podSelector"], ext_proc)]
    assert not _selects(policy["spec"]["podSelector"], envoy)
    assert policy["metadata"]["namespace"] == cluster["Deployment", "babelgate"]["metadata"]["namespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # the serving port and the health port are the config's and the Deployment's
    config = parse_config(cluster["ConfigMap", "babelgate-config"]["data"]["babelgate.yaml"], source="configmap")
    assert (config.ext_proc.port, config.ext_proc.health_port) == (EXT_PROC_PORT, HEALTH_PORT)
    (container,) = cluster["Deployment", "babelgate"]["spec"]["template"]["spec"]["containers"]
    assert {p["containerPort"] for p in container["ports"]} == {EXT_PROC_PORT, HEALTH_PORT}
    for version in ("1.29.0", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(policy, version, strict=True)

    def admits(source: dict[str, str], port: int, namespace: str = NAMESPACE) -> bool:
        return network_admits(policies, target=ext_proc, source=source, source_namespace=namespace, port=port)

    assert admits(envoy, EXT_PROC_PORT)  # the control: Envoy gets in
    # the attacks: every other pod, in this namespace or another, Envoy's labels in another namespace included
    assert not admits({"app": "checkout"}, EXT_PROC_PORT)
    assert not admits({}, EXT_PROC_PORT)
    assert not admits(ext_proc, EXT_PROC_PORT)
    assert not admits(envoy, EXT_PROC_PORT, namespace="shop")
    assert not admits({"app.kubernetes.io/name": "babelgate"}, EXT_PROC_PORT)  # a label subset is not Envoy
    # the health port (it serves the health service alone) admits anyone, e.g. the kubelet's probes
    assert admits({"app": "checkout"}, HEALTH_PORT, namespace="shop")
    # and every other port nobody, Envoy included: the admin API's default port, the metrics port
    for port in (50050, 9464, 50052):
        assert not admits(envoy, port) and not admits({}, port), port


def test_the_network_policy_emulation_bites() -> None:
    """The emulation refuses and admits by the rules, not by accident."""
    policy = {"metadata": {"namespace": "n"}, "spec": {"podSelector": {"matchLabels": {"a": "1"}},
                                                       "ingress": [{"from": [{"podSelector": {}}]}]}}
    assert network_admits([policy], target={"a": "1"}, source={"x": "y"}, source_namespace="n", port=1)
    assert not network_admits([policy], target={"a": "1"}, source={"x": "y"}, source_namespace="m", port=1)
    assert network_admits([policy], target={"b": "2"}, source={}, source_namespace="m", port=1)  # not selected
    assert not network_admits([{**policy, "spec": {**policy["spec"], "ingress": []}}], target={"a": "1"},
                              source={}, source_namespace="n", port=1)


# -- Istio: PeerAuthentication + AuthorizationPolicy ------------------------------------------------------------------

def render(placement: str, text: str = WITH_ADMIN, **kwargs: str) -> list[dict]:
    return render_istio(parse_config(text), placement=placement, namespace=NAMESPACE,  # type: ignore[arg-type]
                        image="babelgate:test", config_text=text, **kwargs)


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def mesh_admits(objects: list[dict], *, target: dict[str, str], peer: str | None, port: int) -> bool:
    """Whether Istio lets a request into a pod with `target` labels in NAMESPACE on `port`: `peer` is the caller's
    principal when it comes over the mesh's mutual TLS, None for plaintext (a pod without a sidecar)."""
    def applies(policy: dict) -> bool:
        return policy["metadata"]["namespace"] == NAMESPACE and _selects(policy["spec"].get("selector"), target)

    for authentication in filter(applies, of_kind(objects, "PeerAuthentication")):
        spec = authentication["spec"]
        mode = spec.get("portLevelMtls", {}).get(port, spec.get("mtls", {})).get("mode", "PERMISSIVE")
        if mode == "STRICT" and peer is None:
            return False
    policies = list(filter(applies, of_kind(objects, "AuthorizationPolicy")))
    assert {p["spec"]["action"] for p in policies} <= {"ALLOW"}, "only ALLOW policies are emulated"
    if not policies:
        return True
    return any(_mesh_rule_matches(rule, peer, port) for p in policies for rule in p["spec"]["rules"])


def _mesh_rule_matches(rule: dict, peer: str | None, port: int) -> bool:
    sources = [entry["source"] for entry in rule.get("from", [])]
    operations = [entry["operation"] for entry in rule.get("to", [])]
    for source in sources:
        assert set(source) == {"principals"}, source
    for operation in operations:
        assert set(operation) == {"ports"}, operation
    # a principal is known only over mutual TLS; exact names only (no `*` patterns are rendered)
    from_ok = not sources or any(peer is not None and peer in s["principals"] for s in sources)
    to_ok = not operations or any(str(port) in o["ports"] for o in operations)
    return from_ok and to_ok


def ext_proc_pod(objects: list[dict]) -> dict[str, str]:
    (deployment,) = [o for o in of_kind(objects, "Deployment") if o["metadata"]["name"] == "babelgate"]
    return pod_labels(deployment)


@pytest.mark.parametrize("placement", ["gateway", "sidecar"])
def test_the_ext_proc_pods_take_mutual_tls_only(placement: str) -> None:
    objects = render(placement)
    (authentication,) = of_kind(objects, "PeerAuthentication")
    assert authentication["metadata"]["namespace"] == NAMESPACE
    assert authentication["spec"] == {"selector": {"matchLabels": {
        "app.kubernetes.io/name": "babelgate", "app.kubernetes.io/component": "ext-proc"}}, "mtls": {"mode": "STRICT"}}
    target = ext_proc_pod(objects)
    gateway = INGRESS_PRINCIPAL if placement == "gateway" else MESH_GATEWAY_PRINCIPAL
    for port in (EXT_PROC_PORT, HEALTH_PORT, ADMIN_PORT):  # a pod without a sidecar reaches nothing
        assert not mesh_admits(objects, target=target, peer=None, port=port), port
    assert mesh_admits(objects, target=target, peer=gateway, port=EXT_PROC_PORT)


def test_gateway_placement_admits_the_ingress_gateway_alone_to_the_ext_proc_port() -> None:
    objects = render("gateway")
    target = ext_proc_pod(objects)
    (policy,) = of_kind(objects, "AuthorizationPolicy")
    assert policy["metadata"]["namespace"] == NAMESPACE and policy["spec"]["action"] == "ALLOW"
    assert policy["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "babelgate",
                                                          "app.kubernetes.io/component": "ext-proc"}}
    assert policy["spec"]["rules"] == [
        {"from": [{"source": {"principals": [INGRESS_PRINCIPAL]}}], "to": [{"operation": {"ports": ["50051"]}}]},
        {"from": [{"source": {"principals": [ADMIN_PRINCIPAL]}}], "to": [{"operation": {"ports": ["50070"]}}]}]
    assert mesh_admits(objects, target=target, peer=INGRESS_PRINCIPAL, port=EXT_PROC_PORT)
    # the attacks: any other workload of the mesh, the ingress gateway on another port
    for principal in (*APPLICATION_PRINCIPALS, MESH_GATEWAY_PRINCIPAL, ADMIN_PRINCIPAL):
        assert not mesh_admits(objects, target=target, peer=principal, port=EXT_PROC_PORT), principal
    assert not mesh_admits(objects, target=target, peer=INGRESS_PRINCIPAL, port=ADMIN_PORT)
    assert not mesh_admits(objects, target=target, peer=INGRESS_PRINCIPAL, port=HEALTH_PORT)


def test_gateway_placement_names_the_gateway_service_account_it_is_given() -> None:
    objects = render("gateway", gateway_namespace="edge", gateway_service_account="llm-gateway")
    target = ext_proc_pod(objects)
    assert mesh_admits(objects, target=target, peer="cluster.local/ns/edge/sa/llm-gateway", port=EXT_PROC_PORT)
    assert not mesh_admits(objects, target=target, peer=INGRESS_PRINCIPAL, port=EXT_PROC_PORT)
    assert not mesh_admits(objects, target=target, peer="cluster.local/ns/istio-system/sa/llm-gateway",
                           port=EXT_PROC_PORT)


def test_sidecar_placement_admits_babelgates_own_gateway_and_no_application() -> None:
    """The applications' pods run no Babelgate filter and may not reach the ext_proc port: only the gateway
    Deployment rendered for them, whose identity is its own service account."""
    objects = render("sidecar")
    target = ext_proc_pod(objects)
    (gateway,) = [o for o in of_kind(objects, "Deployment") if o["metadata"]["name"] == "babelgate-gateway"]
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    assert f"cluster.local/ns/{gateway['metadata']['namespace']}/sa/{account}" == MESH_GATEWAY_PRINCIPAL
    assert ("ServiceAccount", account) in {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert mesh_admits(objects, target=target, peer=MESH_GATEWAY_PRINCIPAL, port=EXT_PROC_PORT)
    for principal in (*APPLICATION_PRINCIPALS, INGRESS_PRINCIPAL, ADMIN_PRINCIPAL):
        assert not mesh_admits(objects, target=target, peer=principal, port=EXT_PROC_PORT), principal
    # Babelgate's filters (and so the provider credentials) go to the gateway's pods alone: the EnvoyFilter's
    # selector matches them and neither the ext_proc pods nor an application's, and the pods run only the proxy
    (envoy_filter,) = of_kind(objects, "EnvoyFilter")
    selector = {"matchLabels": envoy_filter["spec"]["workloadSelector"]["labels"]}
    assert _selects(selector, pod_labels(gateway)) and not _selects(selector, target)
    assert not _selects(selector, {"app": "checkout", "sidecar.istio.io/inject": "true"})
    assert [c["name"] for c in gateway["spec"]["template"]["spec"]["containers"]] == ["istio-proxy"]
    assert {p["match"]["context"] for p in envoy_filter["spec"]["configPatches"]} == {"GATEWAY"}


@pytest.mark.parametrize("placement", ["gateway", "sidecar"])
def test_the_admin_port_admits_the_admin_service_account_alone(placement: str) -> None:
    objects = render(placement)
    target = ext_proc_pod(objects)
    assert ("ServiceAccount", "babelgate-admin") in {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert mesh_admits(objects, target=target, peer=ADMIN_PRINCIPAL, port=ADMIN_PORT)
    for principal in (*APPLICATION_PRINCIPALS, INGRESS_PRINCIPAL, MESH_GATEWAY_PRINCIPAL):
        assert not mesh_admits(objects, target=target, peer=principal, port=ADMIN_PORT), principal
    # without an admin API there is no admin rule, and no admin service account
    plain = render(placement, EXAMPLE.read_text())
    (policy,) = of_kind(plain, "AuthorizationPolicy")
    assert len(policy["spec"]["rules"]) == 1
    assert not [o for o in plain if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "babelgate-admin"]


def test_the_mesh_emulation_bites() -> None:
    objects = render("gateway")
    target = ext_proc_pod(objects)
    assert mesh_admits([], target=target, peer=None, port=EXT_PROC_PORT)  # no policy: Istio admits
    without_authz = [o for o in objects if o["kind"] != "AuthorizationPolicy"]
    assert mesh_admits(without_authz, target=target, peer=APPLICATION_PRINCIPALS[0], port=EXT_PROC_PORT)
    assert not mesh_admits(without_authz, target=target, peer=None, port=EXT_PROC_PORT)


# -- Istio's kinds: structure -----------------------------------------------------------------------------------------

def _strings() -> dict:
    return {"type": "array", "items": {"type": "string", "minLength": 1}}


_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {"matchLabels": _LABELS}}
_METADATA = {"type": "object", "additionalProperties": False, "required": ["name", "namespace"],
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS}}
_MTLS = {"type": "object", "additionalProperties": False,
         "properties": {"mode": {"enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]}}}
_SOURCE_FIELDS = ("principals", "requestPrincipals", "namespaces", "ipBlocks", "remoteIpBlocks", "serviceAccounts")
_OPERATION_FIELDS = ("hosts", "ports", "methods", "paths")


def _negatable(fields: tuple[str, ...]) -> dict:
    names = [*fields, *(f"not{f[0].upper()}{f[1:]}" for f in fields)]
    return {"type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {name: _strings() for name in names}}


def _kind(api_versions: list[str], kind: str, spec: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"enum": api_versions}, "kind": {"const": kind}, "metadata": _METADATA,
                           "spec": spec}}


ISTIO_SCHEMAS = {
    "PeerAuthentication": _kind(["security.istio.io/v1", "security.istio.io/v1beta1"], "PeerAuthentication", {
        "type": "object", "additionalProperties": False,
        "properties": {"selector": _SELECTOR, "mtls": _MTLS,
                       "portLevelMtls": {"type": "object", "additionalProperties": _MTLS}}}),
    "AuthorizationPolicy": _kind(["security.istio.io/v1", "security.istio.io/v1beta1"], "AuthorizationPolicy", {
        "type": "object", "additionalProperties": False,
        "properties": {
            "selector": _SELECTOR,
            "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
            "rules": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "from": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                        "required": ["source"],
                                                        "properties": {"source": _negatable(_SOURCE_FIELDS)}}},
                    "to": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                      "required": ["operation"],
                                                      "properties": {"operation": _negatable(_OPERATION_FIELDS)}}},
                    "when": {"type": "array"}}}}}}),
    "Gateway": _kind(["networking.istio.io/v1", "networking.istio.io/v1beta1"], "Gateway", {
        "type": "object", "additionalProperties": False, "required": ["selector", "servers"],
        "properties": {"selector": _LABELS, "servers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["port", "hosts"],
            "properties": {
                "port": {"type": "object", "additionalProperties": False, "required": ["number", "name", "protocol"],
                         "properties": {"number": {"type": "integer"}, "name": {"type": "string"},
                                        "protocol": {"enum": ["HTTP", "HTTPS", "GRPC", "HTTP2", "MONGO", "TCP",
                                                              "TLS"]}}},
                "hosts": _strings(),
                "tls": {"type": "object", "additionalProperties": False,
                        "properties": {"mode": {"enum": ["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH",
                                                         "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"]}}}}}}}}),
}


@pytest.mark.parametrize("placement", ["gateway", "sidecar"])
def test_istio_objects_have_the_structure_of_their_kinds(placement: str) -> None:
    objects = render(placement)
    for obj in objects:
        if obj["kind"] in ISTIO_SCHEMAS:
            jsonschema.validate(obj, ISTIO_SCHEMAS[obj["kind"]])
        elif obj["apiVersion"] in ("v1", "apps/v1"):
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    assert {o["kind"] for o in objects} >= {"PeerAuthentication", "AuthorizationPolicy", "Gateway"}
    # the schemas bite: a misspelt field, a wrong mode, a port as a number
    (policy,) = of_kind(objects, "AuthorizationPolicy")
    for broken in ({**policy, "spec": {**policy["spec"], "rule": []}},
                   {**policy, "spec": {**policy["spec"], "rules": [{"to": [{"operation": {"ports": [50051]}}]}]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, ISTIO_SCHEMAS["AuthorizationPolicy"])
    (authentication,) = of_kind(objects, "PeerAuthentication")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**authentication, "spec": {"mtls": {"mode": "STRICTLY"}}},
                            ISTIO_SCHEMAS["PeerAuthentication"])


def test_committed_istio_examples_carry_the_trust_objects() -> None:
    config = load_config(EXAMPLE)
    for placement in ("gateway", "sidecar"):
        committed = [doc for doc in yaml.safe_load_all((ROOT / "envoy" / "istio" / f"{placement}.yaml").read_text())
                     if doc]
        kinds = [o["kind"] for o in committed]
        assert kinds.count("PeerAuthentication") == kinds.count("AuthorizationPolicy") == 1, placement
        principal = INGRESS_PRINCIPAL if placement == "gateway" else MESH_GATEWAY_PRINCIPAL
        assert mesh_admits(committed, target=ext_proc_pod(committed), peer=principal, port=config.ext_proc.port)
        assert not mesh_admits(committed, target=ext_proc_pod(committed), peer=APPLICATION_PRINCIPALS[0],
                               port=config.ext_proc.port)
