"""Next to an existing Envoy: `babelgate render --filters-only` pasted into a user's own Envoy config, the way the
README's worked example does, then real traffic: the user's own route keeps working untouched, OpenAI-format
requests go through Babelgate (failover included). Envoy reaches the ext_proc servers over their Unix sockets (the
same-host channel of envoy/existing-envoy/README.md), which another user of the host cannot use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc import healthcheck
from ext_proc.auth.certificates import make_certificates
from ext_proc.launch.processes import free_port, python_module, wait_for_envoy
from ext_proc.launch.stack import envoy_argv, envoy_binary

from ..eventually import eventually
from .gateways import GatewayBuilder
from .support import fault

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "envoy" / "existing-envoy"
PROCESSES = 2

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
    manager.update(snippets["connection_manager_settings"])
    user["static_resources"]["listeners"][0].update(snippets["listener_settings"])
    manager["http_filters"][-1]["typed_config"].update(snippets["router_settings"])
    user["static_resources"]["clusters"] = [*user["static_resources"]["clusters"], *snippets["clusters"]]
    return user


@dataclass
class ExistingEnvoy:
    url: str
    key: str
    sockets: list[Path]


@pytest.fixture(scope="module")
def existing_envoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExistingEnvoy]:
    """The builder's demos and config; the servers (`babelgate serve`) and the user's own Envoy started here."""
    workdir = tmp_path_factory.mktemp("existing-envoy")
    # beside pytest's directories, which other users can't traverse: here only the server's own mode keeps them out
    base = Path(tempfile.mkdtemp(prefix="bg-existing-"))
    base.chmod(0o711)
    with GatewayBuilder(workdir, config_name="babelgate.yaml") as build:
        build.on_stop(lambda: shutil.rmtree(base, ignore_errors=True))
        for name in ("first", "second"):
            build.backend(name, build.demo(name))
        build.route("m", ("first", "f"), ("second", "s"))
        key = build.key("k")
        socket_dir = base / "run"
        del build.config["listener"]  # the user's Envoy listens; only the servers' side is configured
        build.config["ext_proc"] = {"socket_dir": str(socket_dir), "processes": PROCESSES}
        config_path = build.write()
        rendered = subprocess.run([sys.executable, "-m", "ext_proc", "render", "-c", str(config_path),
                                   "--filters-only"], capture_output=True, text=True, check=True).stdout
        listen, admin = free_port(), free_port()
        user = yaml.safe_load(USER_ENVOY.replace("LISTEN", str(listen)).replace("ADMIN", str(admin)))
        envoy_path = workdir / "envoy.yaml"
        envoy_path.write_text(yaml.safe_dump(paste(user, yaml.safe_load(rendered)), sort_keys=False))
        validated = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(envoy_path)],
                                   capture_output=True, text=True)
        assert validated.returncode == 0, validated.stderr[-2000:]
        supervisor = build.supervisor
        supervisor.start("ext_proc", python_module("ext_proc", "serve", "-c", str(config_path)),
                         env=build.environment())
        sockets = [socket_dir / f"ext_proc-{index}.sock" for index in range(PROCESSES)]

        def serving() -> bool:
            supervisor.check()
            return all(healthcheck.check(f"unix:{path}", timeout=1)[0] for path in sockets)

        eventually(serving, timeout=30, what="every ext_proc process SERVING on its socket")
        supervisor.start("envoy", envoy_argv(envoy_path))
        wait_for_envoy(admin, timeout=30, supervisor=supervisor)
        yield ExistingEnvoy(f"http://127.0.0.1:{listen}", key, sockets)


def test_users_own_route_is_left_alone(existing_envoy: ExistingEnvoy) -> None:
    url = existing_envoy.url
    response = httpx.get(url + "/healthz")  # no key: the route stage is off for this route
    assert response.status_code == 200 and response.text == "user's own route"


def test_openai_requests_go_through_babelgate(existing_envoy: ExistingEnvoy) -> None:
    url, key = existing_envoy.url, existing_envoy.key
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)
    assert client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).model == "f"
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=fault("first:503"))
    assert (raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"]) == ("second", "2")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="bg-wrong", max_retries=0).models.list()


def test_envoy_errors_are_openai_shaped(existing_envoy: ExistingEnvoy) -> None:
    url, key = existing_envoy.url, existing_envoy.key
    with pytest.raises(openai.APIStatusError) as raised:
        openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers=fault("first:reset,second:reset"))
    assert raised.value.status_code in (502, 503)
    assert raised.value.response.json()["error"]["message"]


def test_committed_worked_example_is_current() -> None:
    """README's worked example quotes `envoy/existing-envoy/` files: keep them in sync with the renderer."""
    rendered = subprocess.run([sys.executable, "-m", "ext_proc", "render", "-c", str(EXAMPLE / "babelgate.yaml"),
                               "--filters-only"], capture_output=True, text=True, check=True).stdout
    assert (EXAMPLE / "babelgate-snippets.yaml").read_text() == rendered
    (cluster,) = [c for c in yaml.safe_load(rendered)["clusters"] if c["name"] == "bg_ext_proc"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/run/babelgate/ext_proc-0.sock"}}
    assert "transport_socket" not in cluster


def test_across_hosts_the_snippets_cluster_presents_envoys_client_certificate(tmp_path: Path) -> None:
    """The README's other channel: `babelgate certs` output as `ext_proc.tls`, and the cluster that uses it."""
    files = make_certificates(tmp_path / "tls", "babelgate-ext-proc")
    config = yaml.safe_load((EXAMPLE / "babelgate.yaml").read_text())
    config["ext_proc"] = {"host": "ext-proc.internal", "port": 50051, "tls": files.config("babelgate-ext-proc")}
    path = tmp_path / "babelgate.yaml"
    path.write_text(yaml.safe_dump(config))
    rendered = subprocess.run([sys.executable, "-m", "ext_proc", "render", "-c", str(path), "--filters-only"],
                              capture_output=True, text=True, check=True).stdout
    (cluster,) = [c for c in yaml.safe_load(rendered)["clusters"] if c["name"] == "bg_ext_proc"]
    assert cluster["type"] == "STRICT_DNS"
    context = cluster["transport_socket"]["typed_config"]
    assert context["sni"] == "babelgate-ext-proc"
    assert context["common_tls_context"]["tls_certificates"] == [
        {"certificate_chain": {"filename": str(files.client_cert_file)},
         "private_key": {"filename": str(files.client_key_file)}}]
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(files.ca_file)}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "babelgate-ext-proc"}}]


# -- another user of the host ------------------------------------------------------------------------------------

PROBE = r"""
import socket, sys
conn = socket.socket(socket.AF_UNIX)
try:
    conn.connect(sys.argv[1])
except OSError as exc:
    print("refused", exc.strerror)
    sys.exit()
conn.settimeout(20)
try:
    # what a gRPC client sends first: the HTTP/2 preface and an empty SETTINGS frame
    conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
    print("answered" if conn.recv(65536) else "closed")
except TimeoutError:
    print("silent")
except OSError as exc:
    print("closed", exc.strerror)
"""


def as_nobody(socket_path: Path) -> str:
    """The probe, run by `nobody` with the system's Python (this interpreter may sit where nobody can read)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run as another user")
    done = subprocess.run([python, "-c", PROBE, str(socket_path)], user="nobody", capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user takes root")
def test_another_user_of_the_host_cannot_reach_the_ext_proc_sockets(existing_envoy: ExistingEnvoy) -> None:
    """The attack: another local user opens an ext_proc stream to pose as Envoy. The socket directory (0700) keeps
    it out; and were the permissions loosened, the server itself serves no other user (it asks the kernel who the
    peer is)."""
    for path in existing_envoy.sockets:
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert path.stat().st_mode & 0o777 == 0o600
        assert as_nobody(path).startswith("refused"), path
    directory = existing_envoy.sockets[0].parent
    try:
        directory.chmod(0o755)
        for path in existing_envoy.sockets:
            path.chmod(0o666)
            assert as_nobody(path).startswith("closed"), path
    finally:
        directory.chmod(0o700)
        for path in existing_envoy.sockets:
            path.chmod(0o600)
    # Envoy (this user) is served as before
    test_openai_requests_go_through_babelgate(existing_envoy)
