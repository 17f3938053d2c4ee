"""JWT verification rendered for every deployment mode (standalone bootstrap, `babelgate up`'s watched files, the
snippets for an existing Envoy, Istio), each accepted by `envoy --mode validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ext_proc import constants
from ext_proc.config.loading import parse_config
from ext_proc.envoy_config.bootstrap import render_yaml
from ext_proc.envoy_config.jwt import JWT_SHAPED, JwksFileError
from ext_proc.envoy_config.snippets import filters_only
from ext_proc.envoy_config.xds_files import bootstrap_yaml, write_resources
from ext_proc.launch.processes import free_port

from ..jwt_issuer import TokenIssuer
from .test_envoy_render import envoy_validate
from .test_istio_render import envoy_validate as validate_mesh
from .test_istio_render import mesh_envoy, patches, render

JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
BASE = """
ext_proc: {port: 50100}
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9001/v1"}
  - {id: an, schema: anthropic, base_url: "https://api.anthropic.com"}
routes:
  - model: a
    backends: [{backend: oa, model: x}, {backend: an, model: y}]
  - model: b
    backends: [{backend: an, model: y}]
"""


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return TokenIssuer("https://files.example/").write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")


def _config_text(jwks_file: Path) -> str:
    return BASE + f"""
jwt:
  issuers:
    - name: keycloak
      issuer: https://sso.example.com/realms/acme
      audiences: [babelgate]
      jwks_uri: https://sso.example.com/realms/acme/protocol/openid-connect/certs
      cache_duration: 15m
    - name: files
      issuer: https://files.example/
      audiences: [babelgate, api]
      jwks_file: {jwks_file}
      forward: true
"""


@pytest.fixture(scope="module")
def rendered(jwks_file: Path) -> dict:
    return yaml.safe_load(render_yaml(parse_config(_config_text(jwks_file))))


def _filters(rendered: dict) -> list[dict]:
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["http_filters"]


def test_standalone_config_with_issuers_passes_envoy_validate(jwks_file: Path, tmp_path: Path) -> None:
    result = envoy_validate(render_yaml(parse_config(_config_text(jwks_file))), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tokens_are_verified_right_before_the_route_stage_which_reads_their_payloads(rendered: dict) -> None:
    names = [f["name"] for f in _filters(rendered)]
    assert names == [constants.JWT_FILTER, constants.ROUTE_STAGE_FILTER, constants.STREAM_METER_FILTER,
                     "envoy.filters.http.router"]
    stage = _filters(rendered)[1]["typed_config"]["metadata_options"]
    # its own decision is not sent back to it: it keeps that in memory
    assert stage["forwarding_namespaces"]["untyped"] == [constants.JWT_METADATA_NAMESPACE]
    assert stage["receiving_namespaces"]["untyped"] == [constants.METADATA_NAMESPACE]  # nobody writes it back


def test_each_issuer_is_a_provider_and_a_present_token_must_verify(rendered: dict) -> None:
    authn = _filters(rendered)[0]["typed_config"]
    keycloak, files = authn["providers"]["keycloak"], authn["providers"]["files"]
    assert keycloak["issuer"] == "https://sso.example.com/realms/acme" and keycloak["audiences"] == ["babelgate"]
    assert keycloak["payload_in_metadata"] == "babelgate.keycloak" and keycloak["require_expiration"]
    assert keycloak["from_headers"] == [{"name": "authorization", "value_prefix": "Bearer "}]
    assert keycloak.get("forward", False) is False and files["forward"] is True
    assert keycloak["remote_jwks"]["http_uri"]["cluster"] == "bg_jwks_keycloak"
    assert keycloak["remote_jwks"]["cache_duration"] == "900s"
    assert '"kty":"RSA"' in files["local_jwks"]["inline_string"]  # read at render time
    [rule] = authn["rules"]
    assert rule["match"]["headers"][0]["string_match"]["safe_regex"]["regex"] == JWT_SHAPED
    assert rule["requires"]["requires_any"]["requirements"] == [
        {"provider_name": "keycloak"}, {"provider_name": "files"}, {"allow_missing": {}}]


def test_a_remote_jwks_has_its_own_tls_cluster(rendered: dict) -> None:
    cluster = next(c for c in rendered["static_resources"]["clusters"] if c["name"] == "bg_jwks_keycloak")
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "sso.example.com"
    assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "sso.example.com", "port_value": 443}}


def test_jwt_refusals_are_openai_shaped_401s(rendered: dict) -> None:
    manager = rendered["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    first = manager["local_reply_config"]["mappers"][0]
    assert first["status_code"] == 401
    assert "jwt_authn_access_denied" in first["filter"]["extension_filter"]["typed_config"]["expression"]
    assert first["body_format_override"]["json_format"]["error"]["code"] == "invalid_token"


def test_without_issuers_nothing_changes() -> None:
    plain = yaml.safe_load(render_yaml(parse_config(BASE)))
    assert [f["name"] for f in _filters(plain)] == [constants.ROUTE_STAGE_FILTER, constants.STREAM_METER_FILTER,
                                                 "envoy.filters.http.router"]
    assert JWT_TYPE not in render_yaml(parse_config(BASE))
    options = _filters(plain)[0]["typed_config"]["metadata_options"]
    assert options.get("forwarding_namespaces", {}).get("untyped", []) == []  # no metadata in its messages


def test_babelgate_up_keeps_jwks_clusters_in_the_bootstrap(jwks_file: Path, tmp_path: Path) -> None:
    config = parse_config(_config_text(jwks_file).replace("ext_proc: {port: 50100}", ""))
    directory = tmp_path / "xds"
    write_resources(directory, [config], 1)
    text = bootstrap_yaml(config, directory)
    static = [c["name"] for c in yaml.safe_load(text)["static_resources"]["clusters"]]
    assert static == [constants.EXT_PROC_CLUSTER, "bg_jwks_keycloak"]
    dynamic = [c["name"] for c in yaml.safe_load((directory / "cds.yaml").read_text())["resources"]]
    assert "bg_jwks_keycloak" not in dynamic
    result = envoy_validate(text, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_admin_api_paths_skip_token_checks(jwks_file: Path, tmp_path: Path) -> None:
    text = _config_text(jwks_file) + """
admin: {port: 50060, via_envoy: true, credentials: [{name: ops, secret: {env: X}}]}
keys_file: keys.yaml
"""
    data = yaml.safe_load(render_yaml(parse_config(text)))
    rules = _filters(data)[2]["typed_config"]["rules"]
    assert [r["match"].get("prefix") for r in rules] == ["/babelgate.admin.v1.Admin/", "/admin/v1/", "/"]
    assert "requires" not in rules[0] and "requires" not in rules[1]
    result = envoy_validate(render_yaml(parse_config(text)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snippets_for_an_existing_envoy_carry_the_filter_and_its_clusters(jwks_file: Path) -> None:
    pieces = filters_only(parse_config(_config_text(jwks_file)))
    assert [f["name"] for f in pieces["http_filters"]] == [constants.JWT_FILTER, constants.ROUTE_STAGE_FILTER,
                                                          constants.STREAM_METER_FILTER]
    assert "bg_jwks_keycloak" in [c["name"] for c in pieces["clusters"]]


@pytest.mark.parametrize("placement", ["gateway", "sidecar"])
def test_istio_patches_verify_tokens_on_babelgates_virtual_host_only(jwks_file: Path, placement: str,
                                                                     tmp_path: Path) -> None:
    objects = render(_config_text(jwks_file), placement)
    [patch] = [p for p in patches(objects) if p["applyTo"] == "HTTP_FILTER"
               and p["patch"]["value"]["name"] == constants.JWT_FILTER]
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == constants.ROUTE_STAGE_FILTER
    assert patch["patch"]["operation"] == "INSERT_BEFORE" and patch["patch"]["value"]["disabled"] is True
    host = next(p for p in patches(objects) if p["applyTo"] == "VIRTUAL_HOST")["patch"]["value"]
    assert set(host["typed_per_filter_config"]) == {constants.JWT_FILTER, constants.ROUTE_STAGE_FILTER}
    assert any(p["applyTo"] == "CLUSTER" and p["patch"]["value"]["name"] == "bg_jwks_keycloak"
               for p in patches(objects))
    config = mesh_envoy(objects, placement, port=free_port(), admin_port=free_port(), ext_proc_port=50051)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert [f["name"] for f in manager["http_filters"]] == [constants.JWT_FILTER, constants.ROUTE_STAGE_FILTER,
                                                            constants.STREAM_METER_FILTER, "envoy.filters.http.router"]
    result = validate_mesh(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("content", "message"), [
    (None, "can't read"),
    ("not json", "can't read"),
    ('{"keys": []}', "no JWKS"),
    ('{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB", "d": "secret"}]}', "private key"),
])
def test_a_bad_jwks_file_stops_rendering_and_says_why(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    config = parse_config(BASE + f"""
jwt: {{issuers: [{{name: f, issuer: "https://f", audiences: [x], jwks_file: {path}}}]}}
""")
    with pytest.raises(JwksFileError, match=message):
        render_yaml(config)


def test_the_compose_rendering_with_an_issuer_passes_envoy_validate(jwks_file: Path, tmp_path: Path) -> None:
    from ext_proc.auth.certificates import make_certificates

    root = Path(__file__).resolve().parents[2]
    text = (root / "envoy" / "compose" / "babelgate.yaml").read_text() + f"""
jwt:
  issuers:
    - {{name: corp, issuer: "https://sso.example.com/realms/corp", audiences: [babelgate], jwks_file: {jwks_file}}}
    - {{name: auth0, issuer: "https://acme.eu.auth0.com/", audiences: [https://llm.acme.example],
       jwks_uri: "https://acme.eu.auth0.com/.well-known/jwks.json"}}
"""
    config = parse_config(text)
    rendered = render_yaml(config)
    assert constants.JWT_FILTER in rendered
    tls = config.ext_proc.tls
    assert tls is not None
    files = make_certificates(tmp_path / "tls", tls.server_name)
    for field in ("ca_file", "client_cert_file", "client_key_file"):  # the compose volume's files, made here
        rendered = rendered.replace(str(getattr(tls, field)), str(getattr(files, field)))
    result = envoy_validate(rendered, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
