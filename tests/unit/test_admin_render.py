"""The admin API in the rendered Envoy config: the gRPC-JSON transcoder ahead of the route stage, a route to the
admin port with the route stage off, the admin cluster over HTTP/2; and the `admin:` section's own validation."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2

from ext_proc import constants
from ext_proc.cli import main
from ext_proc.config.loading import ConfigError, parse_config
from ext_proc.envoy_config.admin_api import SERVICE, SIZE_LIMIT_FILTER, TRANSCODER_FILTER
from ext_proc.envoy_config.bootstrap import render_yaml
from ext_proc.envoy_config.clusters import ADMIN_API_CLUSTER

from .test_envoy_render import envoy_validate

BASE = """
ext_proc: {host: 127.0.0.9, port: 50100, processes: 3}
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9001/v1"}
  - {id: an, schema: anthropic, base_url: "https://api.anthropic.com"}
routes:
  - model: a
    backends: [{backend: oa, model: x}, {backend: an, model: y}]
  - model: b
    backends: [{backend: an, model: y}]
"""
ADMIN = """
keys_file: /var/lib/babelgate/keys.yaml
admin:
  port: 50999
  credentials: [{name: ops, secret: {env: BG_ADMIN_OPS}}, {name: ci, secret: {file: /run/secrets/ci}}]
  via_envoy: true
"""
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
TRANSCODER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"


def render(text: str) -> dict:
    return yaml.safe_load(render_yaml(parse_config(text)))


def manager(rendered: dict) -> dict:
    [listener] = rendered["static_resources"]["listeners"]
    [chain] = listener["filter_chains"]
    [hcm] = chain["filters"]
    return hcm["typed_config"]


def routes(rendered: dict) -> list[dict]:
    [host] = manager(rendered)["route_config"]["virtual_hosts"]
    return host["routes"]


def clusters(rendered: dict) -> dict[str, dict]:
    return {c["name"]: c for c in rendered["static_resources"]["clusters"]}


@pytest.fixture(scope="module")
def with_admin() -> dict:
    return render(BASE + ADMIN)


def test_the_transcoder_comes_after_the_size_limit_and_before_the_route_stage(with_admin: dict) -> None:
    filters = manager(with_admin)["http_filters"]
    assert [f["name"] for f in filters] == [SIZE_LIMIT_FILTER, TRANSCODER_FILTER, constants.ROUTE_STAGE_FILTER,
                                            constants.STREAM_METER_FILTER, "envoy.filters.http.router"]
    assert filters[0]["disabled"] is True  # the admin route alone turns the size limit on
    transcoder = filters[1]["typed_config"]
    assert transcoder["@type"] == TRANSCODER_TYPE
    assert transcoder["services"] == [SERVICE]
    assert transcoder["convert_grpc_status"] is True


def test_the_transcoders_descriptor_set_describes_the_admin_service(with_admin: dict) -> None:
    encoded = manager(with_admin)["http_filters"][1]["typed_config"]["proto_descriptor_bin"]
    files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(encoded)).file
    services = {f"{f.package}.{s.name}": [m.name for m in s.method] for f in files for s in f.service}
    assert services[SERVICE] == ["CreateKey", "ListKeys", "RevokeKey", "RotateKey", "ListRoutes", "GetUsage",
                                 "ListMcpServers", "CreatePromptVersion", "ListPrompts", "GetPrompt", "SetPromptLabel"]
    names = {f.name for f in files}
    assert {"google/api/annotations.proto", "google/api/http.proto", "google/protobuf/timestamp.proto",
            "google/protobuf/struct.proto"} <= names


def test_the_admin_route_comes_first_with_the_route_stage_off(with_admin: dict) -> None:
    first, *rest = routes(with_admin)
    assert first["name"] == "admin_api"
    assert first["match"] == {"prefix": f"/{SERVICE}/"}
    assert first["route"]["cluster"] == ADMIN_API_CLUSTER
    per_route = first["typed_per_filter_config"][constants.ROUTE_STAGE_FILTER]
    assert per_route == {"@type": PER_ROUTE_TYPE, "disabled": True}
    limit = first["typed_per_filter_config"][SIZE_LIMIT_FILTER]["buffer"]["max_request_bytes"]
    assert limit == constants.ADMIN_MAX_MESSAGE_BYTES + 5
    (client_address,) = first["request_headers_to_add"]
    assert client_address["header"] == {"key": constants.ADMIN_CLIENT_ADDRESS_HEADER,
                                        "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
    assert client_address["append_action"] == "OVERWRITE_IF_EXISTS_OR_ADD"
    # the JSON paths have a route of their own: Envoy picks the filters by the path the request arrives with
    json_paths, *rest = rest
    assert json_paths["name"] == "admin_api_json" and json_paths["match"] == {"prefix": "/admin/v1/"}
    assert json_paths["typed_per_filter_config"] == first["typed_per_filter_config"]
    assert json_paths["direct_response"]["status"] == 404  # reached only by a path the transcoder doesn't know
    assert "admin_api" not in [r["name"] for r in rest]
    assert rest[-1]["name"] == "unrouted"
    assert all("typed_per_filter_config" not in r for r in rest)  # the chain routes keep the route stage


def test_the_admin_cluster_reaches_the_first_ext_proc_process_admin_port_over_http2(with_admin: dict) -> None:
    cluster = clusters(with_admin)[ADMIN_API_CLUSTER]
    endpoints = [e["endpoint"]["address"]["socket_address"]
                 for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    assert endpoints == [{"address": "127.0.0.9", "port_value": 50999}]
    assert cluster["type"] == "STATIC"
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


def test_an_ext_proc_host_name_is_resolved_for_the_admin_cluster() -> None:
    rendered = render(BASE.replace("host: 127.0.0.9", "host: babelgate-ext-proc") + ADMIN)
    cluster = clusters(rendered)[ADMIN_API_CLUSTER]
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "babelgate-ext-proc", "port_value": 50999}


@pytest.mark.parametrize("text", [BASE, BASE + ADMIN.replace("  via_envoy: true\n", ""),
                                  BASE + ADMIN.replace("via_envoy: true", "via_envoy: false")],
                         ids=["no admin", "via_envoy not set (off by default)", "not via envoy"])
def test_without_the_admin_api_on_envoy_nothing_of_it_is_rendered(text: str) -> None:
    rendered_text = render_yaml(parse_config(text))
    rendered = yaml.safe_load(rendered_text)
    assert [f["name"] for f in manager(rendered)["http_filters"]] == [constants.ROUTE_STAGE_FILTER,
                                                                      constants.STREAM_METER_FILTER,
                                                                      "envoy.filters.http.router"]
    assert "admin_api" not in [r["name"] for r in routes(rendered)]
    assert ADMIN_API_CLUSTER not in clusters(rendered)
    assert "grpc_json_transcoder" not in rendered_text and SERVICE not in rendered_text


def test_envoy_accepts_the_rendered_config_with_the_admin_api(tmp_path: Path) -> None:
    result = envoy_validate(render_yaml(parse_config(BASE + ADMIN)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_would_refuse_a_transcoder_for_an_unknown_service(tmp_path: Path) -> None:
    broken = render_yaml(parse_config(BASE + ADMIN)).replace(f"- {SERVICE}\n", "- babelgate.admin.v1.Nope\n")
    assert "babelgate.admin.v1.Nope" in broken
    assert envoy_validate(broken, tmp_path).returncode != 0


def test_render_filters_only_includes_the_transcoder_and_the_admin_route(tmp_path: Path) -> None:
    config_path = tmp_path / "babelgate.yaml"
    config_path.write_text(BASE + ADMIN)
    output = tmp_path / "filters.yaml"
    assert main(["render", "-c", str(config_path), "--filters-only", "-o", str(output)]) == 0
    pieces = yaml.safe_load(output.read_text())
    assert [f["name"] for f in pieces["http_filters"]] == [SIZE_LIMIT_FILTER, TRANSCODER_FILTER,
                                                            constants.ROUTE_STAGE_FILTER, constants.STREAM_METER_FILTER]
    assert pieces["http_filters"][1]["typed_config"]["services"] == [SERVICE]
    admin_route = pieces["routes"][0]
    assert admin_route["name"] == "admin_api" and admin_route["route"]["cluster"] == ADMIN_API_CLUSTER
    assert admin_route["typed_per_filter_config"][constants.ROUTE_STAGE_FILTER]["disabled"] is True
    assert ADMIN_API_CLUSTER in [c["name"] for c in pieces["clusters"]]


def test_render_filters_only_without_admin_has_none_of_it(tmp_path: Path) -> None:
    config_path = tmp_path / "babelgate.yaml"
    config_path.write_text(BASE)
    output = tmp_path / "filters.yaml"
    assert main(["render", "-c", str(config_path), "--filters-only", "-o", str(output)]) == 0
    pieces = yaml.safe_load(output.read_text())
    assert [f["name"] for f in pieces["http_filters"]] == [constants.ROUTE_STAGE_FILTER, constants.STREAM_METER_FILTER]
    assert "admin_api" not in [r["name"] for r in pieces["routes"]]
    assert ADMIN_API_CLUSTER not in [c["name"] for c in pieces["clusters"]]


# -- the admin section's validation -------------------------------------------------------------------------------

def test_admin_needs_a_key_store() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE + ADMIN.replace("keys_file: /var/lib/babelgate/keys.yaml\n", ""))
    message = str(raised.value)
    assert "limits.redis" in message and "keys_file" in message


@pytest.mark.parametrize("store", ["keys_file: keys.yaml\n", "limits: {redis: {url: 'redis://127.0.0.1:6379'}}\n"])
def test_either_key_store_is_enough(store: str) -> None:
    text = BASE + ADMIN.replace("keys_file: /var/lib/babelgate/keys.yaml\n", store)
    config = parse_config(text)
    assert config.admin is not None and [c.name for c in config.admin.credentials] == ["ops", "ci"]


def test_admin_credential_names_are_unique() -> None:
    duplicated = ADMIN.replace("{name: ci, secret: {file: /run/secrets/ci}}", "{name: ops, secret: {env: OTHER}}")
    with pytest.raises(ConfigError, match="duplicate admin credential name 'ops'"):
        parse_config(BASE + duplicated)


def test_admin_needs_at_least_one_credential() -> None:
    with pytest.raises(ConfigError, match=r"admin\.credentials"):
        parse_config(BASE + "keys_file: k.yaml\nadmin: {credentials: []}\n")


def test_a_free_admin_port_cannot_be_rendered_into_envoys_config() -> None:
    with pytest.raises(ConfigError, match=r"admin\.port 0"):
        parse_config(BASE + ADMIN.replace("port: 50999", "port: 0"))
    served_alone = parse_config(BASE + ADMIN.replace("port: 50999", "port: 0").replace("via_envoy: true",
                                                                                        "via_envoy: false"))
    assert served_alone.admin is not None and served_alone.admin.port == 0
