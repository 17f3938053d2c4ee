"""`babelgate render`: the Envoy config it produces is valid for the real Envoy and wires the stages as designed."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
import yaml

from ext_proc import constants
from ext_proc.config.loading import load_config, parse_config
from ext_proc.envoy_config.bootstrap import render_yaml
from ext_proc.launch.stack import envoy_binary

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
ext_proc: {port: 50100, processes: 3}
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9001/v1", timeout: 30s}
  - {id: an, schema: anthropic, base_url: "https://api.anthropic.com", timeout: 45s}
  - id: private
    schema: openai
    base_url: "https://llm.internal.example:8443/v1"
    connect_to: 10.1.2.3
    ca_file: /etc/ssl/certs/ca-certificates.crt
routes:
  - model: a
    backends: [{backend: oa, model: x}, {backend: an, model: y}]
  - model: b
    backends: [{backend: an, model: y}, {backend: oa, model: x}, {backend: private, model: z}]
  - model: c
    backends: [{backend: oa, model: other-name}, {backend: an, model: y}]
"""


def envoy_validate(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def rendered() -> dict:
    return yaml.safe_load(render_yaml(parse_config(CONFIG)))


def test_rendered_config_passes_envoy_validate(tmp_path: Path) -> None:
    result = envoy_validate(render_yaml(parse_config(CONFIG)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_invalid_rendering_would_be_caught(tmp_path: Path) -> None:
    broken = render_yaml(parse_config(CONFIG)).replace("CLUSTER_PROVIDED", "NOT_A_POLICY")
    assert envoy_validate(broken, tmp_path).returncode != 0


def _clusters(rendered: dict) -> dict[str, dict]:
    return {c["name"]: c for c in rendered["static_resources"]["clusters"]}


def test_one_aggregate_cluster_per_distinct_chain_with_members_in_order(rendered: dict) -> None:
    clusters = _clusters(rendered)
    chains = {name: c for name, c in clusters.items() if name.startswith(constants.CHAIN_CLUSTER_PREFIX)}
    # every order of each route's backends (cooldowns and policies may put any first), and of what remains of them
    # when some can't serve a request; routes a and c share theirs
    assert set(chains) == {"bg_chain_" + "__".join(order) for length in (2, 3)
                           for order in itertools.permutations(("an", "oa", "private"), length)}
    members = chains["bg_chain_an__oa__private"]["cluster_type"]["typed_config"]["clusters"]
    assert members == ["bg_backend_an", "bg_backend_oa", "bg_backend_private"]


def test_attempt_stage_is_an_upstream_filter_of_each_chain(rendered: dict) -> None:
    chain = _clusters(rendered)["bg_chain_oa__an"]
    options = chain["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    filters = options["http_filters"]
    assert [f["name"] for f in filters] == ["babelgate.attempt_stage", "envoy.filters.http.upstream_codec"]
    processor = filters[0]["typed_config"]
    assert processor["allow_mode_override"] is True
    assert processor["request_attributes"] == [constants.UPSTREAM_HOST_METADATA_ATTRIBUTE]
    assert processor["grpc_service"]["initial_metadata"] == [{"key": "x-babelgate-stage", "value": "attempt"}]
    assert processor["metadata_options"]["forwarding_namespaces"]["untyped"] == ["babelgate"]


def test_backend_clusters_carry_tls_sni_and_their_own_timeout(rendered: dict) -> None:
    clusters = _clusters(rendered)
    anthropic = clusters["bg_backend_an"]
    tls = anthropic["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.anthropic.com"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {
        "exact": "api.anthropic.com"}
    assert anthropic["type"] == "LOGICAL_DNS"
    options = anthropic["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"]["max_stream_duration"] == "45s"
    assert "transport_socket" not in clusters["bg_backend_oa"]
    private = clusters["bg_backend_private"]
    endpoint = private["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "10.1.2.3", "port_value": 8443}
    assert endpoint["metadata"]["filter_metadata"]["babelgate"] == {"backend": "private"}
    assert private["transport_socket"]["typed_config"]["sni"] == "llm.internal.example"


def test_ext_proc_cluster_lists_one_endpoint_per_process(rendered: dict) -> None:
    cluster = _clusters(rendered)[constants.EXT_PROC_CLUSTER]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [50100, 50101, 50102]


def test_routes_match_the_chain_header_and_retry_across_priorities(rendered: dict) -> None:
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == ["babelgate.route_stage", "babelgate.stream_meter",
                                                         "envoy.filters.http.router"]
    host = manager["route_config"]["virtual_hosts"][0]
    routes = {r["name"]: r for r in host["routes"]}
    route = routes["bg_chain_an__oa__private"]
    assert route["match"]["headers"] == [{"name": constants.HEADER_CHAIN,
                                          "string_match": {"exact": "bg_chain_an__oa__private"}}]
    retry = route["route"]["retry_policy"]
    assert retry["num_retries"] == 2
    assert set(retry["retry_on"].split(",")) == {"reset", "refused-stream", "connect-failure",
                                                 "retriable-status-codes"}
    assert retry["retriable_status_codes"] == [429, 500, 502, 503, 504]
    assert retry["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert route["route"]["timeout"] == "675s"  # 45 + 30 + 600 (default)
    assert host["include_request_attempt_count"] is True
    assert routes["unrouted"]["direct_response"]["status"] == 404


def test_committed_example_is_in_sync_with_its_source() -> None:
    expected = render_yaml(load_config(ROOT / "envoy" / "babelgate.example.yaml"))
    assert (ROOT / "envoy" / "envoy.yaml").read_text() == expected, (
        "envoy/envoy.yaml is stale: babelgate render -c envoy/babelgate.example.yaml -o envoy/envoy.yaml")


def test_committed_example_passes_envoy_validate(tmp_path: Path) -> None:
    result = envoy_validate((ROOT / "envoy" / "envoy.yaml").read_text(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_single_backend_routes_go_straight_to_the_backend_cluster() -> None:
    config = parse_config(CONFIG.replace("routes:\n", "routes:\n  - model: solo\n"
                                                      "    backends: [{backend: an, model: y}]\n", 1))
    rendered = yaml.safe_load(render_yaml(config))
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = {r["name"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}
    direct = routes["bg_direct_an"]
    assert direct["route"]["cluster"] == "bg_backend_an" and "retry_policy" not in direct["route"]
    assert direct["request_headers_to_remove"] == [constants.HEADER_CHAIN, "x-envoy-attempt-count", "x-forwarded-for",
                                                   "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"]
    assert direct["match"]["dynamic_metadata"] == [{"filter": "babelgate", "path": [{"key": "route"}],
                                                    "value": {"present_match": True}}]
    assert "bg_chain_an" not in _clusters(rendered)  # no aggregate cluster for a chain of one
    route_stage = manager["http_filters"][0]["typed_config"]
    assert route_stage["processing_mode"]["response_header_mode"] == "SEND"
    assert route_stage["allow_mode_override"] is True


def test_envoy_decides_client_addresses_and_strips_internal_headers_before_routing() -> None:
    rendered = yaml.safe_load(render_yaml(parse_config(CONFIG)))
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["use_remote_address"] is True and manager["skip_xff_append"] is True
    (early,) = manager["early_header_mutation_extensions"]
    assert early["typed_config"]["mutations"] == [{"remove_on_match": {"key_matcher": {
        "prefix": constants.INTERNAL_HEADER_PREFIX}}}]
    router = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.router")
    assert router["typed_config"]["suppress_envoy_headers"] is True
    chain_routes = [r for r in manager["route_config"]["virtual_hosts"][0]["routes"] if r["name"].startswith("bg_")]
    assert chain_routes and all(r["match"]["dynamic_metadata"] for r in chain_routes)


def test_trusted_proxy_hops_reach_envoy() -> None:
    config = parse_config(CONFIG).model_copy(deep=True)
    listener = config.listener.model_copy(update={"trusted_proxy_hops": 2})
    rendered = yaml.safe_load(render_yaml(config.model_copy(update={"listener": listener})))
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["xff_num_trusted_hops"] == 2


def test_failover_has_a_retry_budget_not_envoys_three_retries(rendered: dict) -> None:
    """With Envoy's default circuit breaker (3 retries in flight per cluster) concurrent failures were not failed
    over; a retry budget scales with the requests in flight."""
    clusters = _clusters(rendered)
    limited = [c for name, c in clusters.items() if name.startswith(("bg_chain_", "bg_backend_"))]
    assert limited
    for cluster in limited:
        (threshold,) = cluster["circuit_breakers"]["thresholds"]
        assert threshold["retry_budget"] == {"budget_percent": {"value": 100.0}, "min_retry_concurrency": 64}
        assert threshold["max_requests"] == threshold["max_pending_requests"] == 100_000
        assert "max_retries" not in threshold  # the budget replaces it


def test_the_ext_proc_cluster_is_health_checked_and_ejects_a_failing_server(rendered: dict) -> None:
    cluster = _clusters(rendered)[constants.EXT_PROC_CLUSTER]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"}
    assert check["interval"] == "1s" and check["unhealthy_threshold"] == 2 and check["healthy_threshold"] == 1
    assert cluster["outlier_detection"]["consecutive_local_origin_failure"] == 3
    assert cluster["outlier_detection"]["split_external_local_origin_errors"] is True


def test_buffers_fit_the_configured_body_limit() -> None:
    config = parse_config(CONFIG.replace("routes:", "requests: {max_body_bytes: 33554432}\nroutes:", 1))
    rendered = yaml.safe_load(render_yaml(config))
    listener = rendered["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 32 * 1024 * 1024 + 64 * 1024
    host = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    assert host["request_body_buffer_limit"] == 32 * 1024 * 1024 + 64 * 1024
    upstream = [c for name, c in _clusters(rendered).items() if name.startswith(("bg_chain_", "bg_backend_"))]
    assert {c["per_connection_buffer_limit_bytes"] for c in upstream} == {65 * 1024 * 1024}


def test_envoys_own_413_carries_the_gateways_error_code(rendered: dict) -> None:
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    bodies = [m["body_format_override"]["json_format"]["error"] for m in manager["local_reply_config"]["mappers"]]
    assert {"code": "request_too_large", "message": bodies[0]["message"], "param": None,
            "type": "invalid_request_error"} in bodies
