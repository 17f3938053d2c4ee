"""Next to an existing Envoy: `babelgate render --filters-only` pasted into a user's own Envoy config, the way the
README's worked example does, then real traffic: the user's own route keeps working untouched, OpenAI-format
requests go through Babelgate (failover included)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.launch.processes import Supervisor, free_port, python_module, wait_for_envoy
from ext_proc.launch.stack import envoy_argv, envoy_binary

from .support import fault, start_demo

USER_ENVOY = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: ADMIN}}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: LISTEN}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: everything
              domains: ["*"]
              routes:
              - match: {path: /healthz}
                direct_response: {status: 200, body: {inline_string: "user's own route"}}
  clusters: []
"""


def paste(user: dict, snippets: dict) -> dict:
    """What the README tells users to do with each piece."""
    manager = user["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"] = [*snippets["http_filters"], *manager["http_filters"]]
    manager["local_reply_config"] = snippets["local_reply_config"]
    host = manager["route_config"]["virtual_hosts"][0]
    for route in host["routes"]:
        route["typed_per_filter_config"] = snippets["disable_on_other_routes"]
    ours = [r for r in snippets["routes"] if r["name"] != "unrouted"]
    host["routes"] = [*ours, *host["routes"]]
    host.update(snippets["virtual_host_settings"])
    user["static_resources"]["clusters"] = [*user["static_resources"]["clusters"], *snippets["clusters"]]
    return user


@pytest.fixture(scope="module")
def existing_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("existing-envoy")
    supervisor = Supervisor(log_dir=workdir)
    try:
        ports = {name: start_demo(supervisor, name, "openai", "sk-existing") for name in ("first", "second")}
        key = generate_key()
        ext_proc_port = free_port()
        config = {
            "ext_proc": {"port": ext_proc_port},
            "backends": [{"id": n, "schema": "openai", "base_url": f"http://127.0.0.1:{p}/v1",
                          "api_key": {"env": "EXISTING_KEY"}} for n, p in ports.items()],
            "routes": [{"model": "m", "backends": [{"backend": "first", "model": "f"},
                                                   {"backend": "second", "model": "s"}]}],
            "virtual_keys": [{"id": "k", "hash": hash_key(key)}],
        }
        config_path = workdir / "babelgate.yaml"
        config_path.write_text(yaml.safe_dump(config))
        rendered = subprocess.run([sys.executable, "-m", "ext_proc", "render", "-c", str(config_path),
                                   "--filters-only"], capture_output=True, text=True, check=True).stdout
        listen, admin = free_port(), free_port()
        user = yaml.safe_load(USER_ENVOY.replace("LISTEN", str(listen)).replace("ADMIN", str(admin)))
        envoy_path = workdir / "envoy.yaml"
        envoy_path.write_text(yaml.safe_dump(paste(user, yaml.safe_load(rendered)), sort_keys=False))
        validated = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(envoy_path)],
                                   capture_output=True, text=True)
        assert validated.returncode == 0, validated.stderr[-2000:]
        supervisor.start_reporting("ext_proc", python_module(
            "ext_proc", "serve", "-c", str(config_path), "--report-ready"), env={"EXISTING_KEY": "sk-existing"})
        supervisor.start("envoy", envoy_argv(envoy_path))
        wait_for_envoy(admin, timeout=30, supervisor=supervisor)
        yield f"http://127.0.0.1:{listen}", key
    finally:
        supervisor.stop_all()


def test_users_own_route_is_left_alone(existing_envoy: tuple[str, str]) -> None:
    url, _ = existing_envoy
    response = httpx.get(url + "/healthz")  # no key: the route stage is off for this route
    assert response.status_code == 200 and response.text == "user's own route"


def test_openai_requests_go_through_babelgate(existing_envoy: tuple[str, str]) -> None:
    url, key = existing_envoy
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).model == "f"
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=fault("first:503"))
    assert (raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"]) == ("second", "2")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="bg-wrong", max_retries=0).models.list()


def test_envoy_errors_are_openai_shaped(existing_envoy: tuple[str, str]) -> None:
    url, key = existing_envoy
    with pytest.raises(openai.APIStatusError) as raised:
        openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=fault("first:reset,second:reset"))
    assert raised.value.status_code in (502, 503)
    assert raised.value.response.json()["error"]["message"]


def test_committed_worked_example_is_current() -> None:
    """README's worked example quotes `envoy/existing-envoy/` files: keep them in sync with the renderer."""
    root = Path(__file__).resolve().parents[2]
    example = root / "envoy" / "existing-envoy"
    rendered = subprocess.run([sys.executable, "-m", "ext_proc", "render", "-c", str(example / "babelgate.yaml"),
                               "--filters-only"], capture_output=True, text=True, check=True).stdout
    assert (example / "babelgate-snippets.yaml").read_text() == rendered
