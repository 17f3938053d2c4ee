"""MCP servers wherever Babelgate is rendered or launched: the config `babelgate up` hands its servers (bridges' ports
filled in), the ports a stack claims, the demo config, the snippets for an existing Envoy, and the Istio objects
(applied the way Istio applies them, then checked by `envoy --mode validate`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from ext_proc.cli import main
from ext_proc.config.loading import ConfigError, load_config, parse_config
from ext_proc.envoy_config.istio import render_istio
from ext_proc.envoy_config.snippets import filters_only, filters_only_yaml
from ext_proc.launch import demo
from ext_proc.launch.mcp_bridges import (
    SERVED_CONFIG,
    bind_host,
    bridge_argv,
    needs_ports,
    with_ports,
    write_served_config,
)
from ext_proc.launch.ports import stack_claims
from ext_proc.launch.processes import free_port

from .test_istio_render import NAMESPACE, by_kind, envoy_validate, mesh_envoy, patches

BASE = """
backends: [{id: oa, schema: openai, base_url: "https://api.openai.com/v1", api_key: {env: OPENAI_API_KEY}}]
routes: [{model: m, backends: [{backend: oa, model: m}]}]
"""
REMOTE = """
mcp:
  servers:
    - name: github
      url: https://api.githubcopilot.com/mcp/
      bearer: {env: GITHUB_TOKEN}
    - name: search
      url: http://search.tools.svc.cluster.local:8080/mcp
      headers: {x-api-key: {env: SEARCH_KEY}}
"""
STDIO = """
keys_file: keys.yaml
mcp:
  servers:
    - name: notes
      command: [python, -m, ext_proc.demo.mcp_stdio]
      env: {NOTES_TOKEN: {env: NOTES_TOKEN}}
    - name: fixed
      command: [notes-server]
      args: [--verbose]
      port: 8100
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "babelgate.yaml"
    path.write_text(text)
    return path


# -- `babelgate up`: the config its servers read -----------------------------------------------------------------------

def test_the_servers_copy_has_the_bridges_ports_and_absolute_paths(tmp_path: Path) -> None:
    source = _write(tmp_path, BASE + STDIO)
    config = load_config(source)
    assert needs_ports(config)
    resolved = with_ports(config, {"notes": 40123, "fixed": 8100})
    workdir = tmp_path / "work"
    workdir.mkdir()
    served = write_served_config(source, resolved, workdir)
    assert served == workdir / SERVED_CONFIG
    again = load_config(served)
    assert {s.name: s.port for s in again.mcp.servers} == {"notes": 40123, "fixed": 8100}
    assert again.keys_file == tmp_path / "keys.yaml"  # relative to the user's file, not the work directory
    assert not needs_ports(again) and again.mcp.servers[0].env == config.mcp.servers[0].env
    assert yaml.safe_load(source.read_text())["mcp"]["servers"][0].get("port") is None  # the user's file as it was


def test_the_servers_copy_follows_a_config_that_dropped_its_mcp_section(tmp_path: Path) -> None:
    source = _write(tmp_path, BASE)
    (tmp_path / "work").mkdir()
    served = write_served_config(source, load_config(source), tmp_path / "work")
    assert load_config(served).mcp is None


def test_a_bridge_runs_its_servers_command_and_args_on_the_port_and_host_given() -> None:
    config = parse_config(BASE + STDIO)
    fixed = config.mcp.servers[1]
    argv = bridge_argv(fixed, 8100, "0.0.0.0")
    assert argv[:3] == [sys.executable, "-m", "ext_proc.mcp_bridge"]
    assert argv[3:] == ["--name", "fixed", "--host", "0.0.0.0", "--port", "8100", "--", "notes-server", "--verbose"]
    assert bind_host("127.0.0.1") == "127.0.0.1" and bind_host("babelgate") == "0.0.0.0"


def test_a_stack_claims_the_ports_of_bridges_that_name_one() -> None:
    claims = {(claim.port, claim.role) for claim in stack_claims(parse_config(BASE + STDIO))}
    assert (8100, "the MCP bridge of fixed") in claims
    assert not any("notes" in role for _, role in claims)


def test_the_demo_config_has_an_http_and_a_stdio_mcp_server(tmp_path: Path) -> None:
    data, _ = demo.demo_config({p.name: 1000 + i for i, p in enumerate(demo.PROVIDERS)}, tmp_path, listen_port=1,
                               admin_port=2, ext_proc_port=3, processes=1, mcp_tools_port=4567)
    config = parse_config(yaml.safe_dump(data))
    http, stdio = config.mcp.servers
    assert http.url == "http://127.0.0.1:4567/mcp" and http.bearer.env == demo.MCP_KEY_ENV
    assert stdio.command == [sys.executable, "-m", "ext_proc.demo.mcp_stdio"] and stdio.port is None
    assert (http.name_prefix, stdio.name_prefix) == ("tools", "local")


# -- renderings -----------------------------------------------------------------------------------------------------

def test_snippets_for_an_existing_envoy_carry_the_mcp_routes_and_clusters() -> None:
    config = parse_config(BASE + REMOTE)
    pieces = filters_only(config)
    assert {"mcp_github", "mcp_search"} <= {route["name"] for route in pieces["routes"]}
    assert {"bg_mcp_github", "bg_mcp_search"} <= {cluster["name"] for cluster in pieces["clusters"]}
    assert "bg_mcp_<server>" in filters_only_yaml(config)


def test_rendering_refuses_a_stdio_server_without_a_port(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write(tmp_path, BASE + STDIO)
    for extra in ([], ["--filters-only"]):
        assert main(["render", "-c", str(path), *extra]) == 2
        assert "notes: a stdio server needs `port`" in capsys.readouterr().err
    assert main(["serve", "-c", str(path)]) == 2
    assert "set mcp.servers[].port for notes" in capsys.readouterr().err


def _istio(text: str, placement: str = "gateway") -> list[dict]:
    return render_istio(parse_config(text), placement=placement, namespace=NAMESPACE,  # type: ignore[arg-type]
                        image="babelgate:test", config_text=text)


def test_istio_registers_an_external_mcp_host_like_a_provider_host() -> None:
    found = by_kind(_istio(BASE + REMOTE))
    entry = found["ServiceEntry", "babelgate-api-githubcopilot-com"]["spec"]
    assert entry["hosts"] == ["api.githubcopilot.com"] and entry["location"] == "MESH_EXTERNAL"
    assert {port["number"] for port in entry["ports"]} == {443, 80}
    rule = found["DestinationRule", "babelgate-api-githubcopilot-com"]["spec"]
    assert rule["trafficPolicy"]["portLevelSettings"] == [{"port": {"number": 80},
                                                            "tls": {"mode": "SIMPLE", "sni": "api.githubcopilot.com"}}]
    assert not any("search" in name for _, name in found)  # in the cluster: no ServiceEntry
    container = found["Deployment", "babelgate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "babelgate-provider-keys"}}]


@pytest.mark.parametrize("placement", ["gateway", "sidecar"])
def test_istio_patches_in_the_mcp_routes_and_clusters_and_envoy_accepts_them(placement: str, tmp_path: Path) -> None:
    objects = _istio(BASE + REMOTE, placement)
    added = [patch["patch"]["value"] for patch in patches(objects)]
    assert {"bg_mcp_github", "bg_mcp_search"} <= {value.get("name") for value in added}
    config = mesh_envoy(objects, placement, port=free_port(), admin_port=free_port(), ext_proc_port=50051)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = [route.get("name") for route in manager["route_config"]["virtual_hosts"][0]["routes"]]
    assert routes.index("mcp_github") < routes.index("mcp_search") < routes.index("babelgate-unrouted")
    result = envoy_validate(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_istio_refuses_a_stdio_server_and_says_how_to_run_it() -> None:
    with pytest.raises(ConfigError, match=r"notes, fixed: stdio servers .*`url: http://<service>:N/mcp`"):
        _istio(BASE + STDIO.replace("keys_file: keys.yaml\n", ""))
