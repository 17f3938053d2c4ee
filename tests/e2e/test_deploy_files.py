"""The deployment files: docker-compose.yaml, the Dockerfile and its health check, envoy/compose/, deploy/kubernetes/.

There is no Docker engine here, so compose files are checked by `docker-compose config`, and the compose services'
commands (as compose resolves them, the image's ENTRYPOINT/CMD included) run as plain processes on 127.0.0.1, with
service host names and container ports swapped for loopback ones and mounted files for rendered variants. The
`certs` service's command makes the mutual-TLS files for real, the server serves them, and Envoy connects with its
client certificate; a client without it is refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import kubernetes_validate
import openai
import pytest
import redis
import yaml
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from ext_proc import healthcheck
from ext_proc.auth.certificates import make_certificates
from ext_proc.config.loading import load_config, parse_config
from ext_proc.envoy_config.bootstrap import render_yaml
from ext_proc.launch.processes import Supervisor, free_port, wait_for_envoy
from ext_proc.launch.stack import envoy_binary

from ..redis_server import RedisServer, free_ports
from .support import fault

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
COMPOSE_CONFIG = ROOT / "envoy" / "compose" / "babelgate.yaml"
COMPOSE_ENVOY = ROOT / "envoy" / "compose" / "envoy.yaml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
DEMO_KEY = "bg-compose-demo-key-not-a-secret"  # documented in docker-compose.yaml as the demo-only key
CORE_SERVICES = {"certs", "envoy", "babelgate", "redis"}
DEMO_SERVICES = {"demo-openai", "demo-anthropic", "demo-mcp"}
LOOPBACK = "127.0.0.1"
TLS_VOLUME = "ext-proc-tls"
TLS_FILES = ("ca_file", "cert_file", "key_file", "client_cert_file", "client_key_file")
SERVER_FILES = ("ca_file", "cert_file", "key_file")
ENVOY_FILES = ("ca_file", "client_cert_file", "client_key_file")
PROCESS_METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
IMAGE_USERS = {"babelgate": 10001, "envoy": 101}
"""The users the two images run as: the babelgate image's USER, and `envoy` in envoyproxy/envoy (its entrypoint
switches to it)."""


# -- docker-compose ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker_compose() -> str:
    """Debian's docker-compose, installed the way scripts/test installs redis-server when it is missing."""
    found = shutil.which("docker-compose")
    if found is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        installed = subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "docker-compose"], env=env,
                                   capture_output=True, text=True, timeout=600)
        found = shutil.which("docker-compose")
        if found is None:
            pytest.fail(f"docker-compose is missing and could not be installed:\n{installed.stderr[-2000:]}")
    return found


def compose(binary: str, *args: str, file: Path = COMPOSE_FILE, profiles: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")
             and k not in ("DEMO_PROVIDER_KEY", "DEMO_MCP_KEY", "BABELGATE_METADATA_KEY")}
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run([binary, "-f", str(file), *flags, *args], cwd=file.parent, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_compose_file_validates_with_and_without_the_demo_profile(docker_compose: str, tmp_path: Path) -> None:
    for profiles in ((), ("demo",)):
        result = compose(docker_compose, "config", "-q", profiles=profiles)
        assert result.returncode == 0, result.stderr
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(services) == CORE_SERVICES | DEMO_SERVICES
    assert {name for name, service in services.items() if service.get("profiles") == ["demo"]} == DEMO_SERVICES
    assert all("profiles" not in services[name] for name in CORE_SERVICES)
    # The validator bites: a misspelt service key is refused.
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    restart: \"no\"", "    restartt: \"no\""))
    assert broken.read_text() != COMPOSE_FILE.read_text()
    refused = compose(docker_compose, "config", "-q", file=broken)
    assert refused.returncode != 0 and "restartt" in refused.stderr


def test_compose_envoy_config_is_rendered_from_its_babelgate_config(tmp_path: Path) -> None:
    config = load_config(COMPOSE_CONFIG)
    expected = render_yaml(config)  # {env: ...} secrets are not resolved to render
    assert COMPOSE_ENVOY.read_text() == expected, (
        "envoy/compose/envoy.yaml is stale: "
        "babelgate render -c envoy/compose/babelgate.yaml -o envoy/compose/envoy.yaml")
    clusters = {c["name"]: c for c in yaml.safe_load(expected)["static_resources"]["clusters"]}
    ext_proc = clusters["bg_ext_proc"]
    assert ext_proc["type"] == "STRICT_DNS"
    assert _endpoint(ext_proc) == ("babelgate", 50051)
    # Envoy presents its client certificate and accepts only the server's name from the CA
    context = ext_proc["transport_socket"]["typed_config"]["common_tls_context"]
    tls = config.ext_proc.tls
    assert context["tls_certificates"] == [{"certificate_chain": {"filename": str(tls.client_cert_file)},
                                            "private_key": {"filename": str(tls.client_key_file)}}]
    assert context["validation_context"]["trusted_ca"] == {"filename": str(tls.ca_file)}
    assert context["validation_context"]["match_typed_subject_alt_names"][0]["matcher"] == {"exact": tls.server_name}
    # Envoy reads the files to validate: the same config with the volume's files made here
    files = make_certificates(tmp_path / "tls", tls.server_name)
    local = expected
    for field in TLS_FILES:
        local = local.replace(str(getattr(tls, field)), str(getattr(files, field)))
    (tmp_path / "envoy.yaml").write_text(local)
    validated = envoy_validate(tmp_path / "envoy.yaml")
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_envoy_images_are_the_release_the_configs_are_validated_with() -> None:
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    minor = re.search(r"version: \w+/(\d+\.\d+)\.\d+/", version).group(1)
    images = [yaml.safe_load(COMPOSE_FILE.read_text())["services"]["envoy"]["image"]]
    images += [c["image"] for c in objects()["Deployment", "babelgate-envoy"]["spec"]["template"]["spec"]["containers"]]
    assert images == [f"envoyproxy/envoy:v{minor}-latest"] * 2


def test_compose_config_names_the_services_compose_runs() -> None:
    """Every host the Babelgate config dials is a compose service listening on that port, and the files each
    service mounts are the ones its command reads."""
    compose_file = yaml.safe_load(COMPOSE_FILE.read_text())
    services = compose_file["services"]
    config = load_config(COMPOSE_CONFIG)
    for backend in config.backends:
        argv = services[backend.host]["command"]
        assert argv[argv.index("--port") + 1] == str(backend.port), backend.id
        assert argv[argv.index("--host") + 1] == "0.0.0.0", backend.id
    assert config.ext_proc.host == "babelgate" and config.listener.host == "0.0.0.0"
    # the MCP servers: an HTTP one is a demo service, a stdio one's bridge runs in `babelgate` (its `serve`)
    for server in config.mcp.servers:
        if server.url is not None:
            argv = services[urlsplit(server.url).hostname]["command"]
            assert argv[argv.index("--port") + 1] == str(urlsplit(server.url).port), server.name
            assert server.bearer.env in services["babelgate"]["environment"], server.name
        else:
            assert config.mcp.bridge_host == "babelgate" and server.port is not None, server.name
    assert urlsplit(config.limits.redis.url).hostname == "redis"
    assert services["envoy"]["ports"] == [f"127.0.0.1:{config.listener.port}:{config.listener.port}"]
    assert services["babelgate"]["volumes"][0] == "./envoy/compose/babelgate.yaml:/etc/babelgate/babelgate.yaml:ro"
    assert services["envoy"]["volumes"][0] == "./envoy/compose/envoy.yaml:/etc/envoy/envoy.yaml:ro"
    assert services["envoy"]["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    assert DEMO_KEY in COMPOSE_FILE.read_text() and DEMO_KEY in COMPOSE_CONFIG.read_text()
    # the mutual-TLS files: made by `certs` into a named volume, which the two others mount read-only where the
    # config names them; both wait until `certs` has made them
    tls = config.ext_proc.tls
    directory = tls.ca_file.parent
    assert {getattr(tls, field).parent for field in TLS_FILES} == {directory}
    assert TLS_VOLUME in compose_file["volumes"]
    assert services["certs"]["volumes"] == [f"{TLS_VOLUME}:{directory}"]
    assert services["certs"]["command"][0] == str(directory)
    assert services["certs"]["entrypoint"][2].count("--server-name babelgate-ext-proc") == 1
    assert tls.server_name == "babelgate-ext-proc"
    for name in ("babelgate", "envoy"):
        assert f"{TLS_VOLUME}:{directory}:ro" in services[name]["volumes"], name
        assert services[name]["depends_on"]["certs"] == {"condition": "service_completed_successfully"}, name
    # each key goes to the user of the image that reads it, and the health check asks the port the server serves
    assert services["certs"]["command"][1:] == [f"{IMAGE_USERS['babelgate']}:{IMAGE_USERS['babelgate']}",
                                                f"{IMAGE_USERS['envoy']}:{IMAGE_USERS['envoy']}"]
    assert dockerfile()["USER"][-1] == f"{IMAGE_USERS['babelgate']}:{IMAGE_USERS['babelgate']}"
    assert healthcheck_argv(dockerfile())[3] == f"127.0.0.1:{config.ext_proc.health_port}"


@dataclass
class ComposeStack:
    """The compose services running as local processes."""

    services: dict
    ports: dict[tuple[str, int], int]
    tls_dir: Path
    """What the `ext-proc-tls` volume holds."""
    certs_argv: list[str]
    supervisor: Supervisor
    store: RedisServer

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['envoy', 10000]}/v1"

    @property
    def ext_proc(self) -> str:
        return f"{LOOPBACK}:{self.ports['babelgate', 50051]}"


@pytest.fixture(scope="module")
def compose_stack(docker_compose: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    tmp_path = tmp_path_factory.mktemp("compose")
    provider_key = "sk-compose-test-" + secrets.token_hex(6)
    result = compose(docker_compose, "config", profiles=("demo",), env={"DEMO_PROVIDER_KEY": provider_key})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == CORE_SERVICES | DEMO_SERVICES
    image = dockerfile()

    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    ports = _loopback_ports(config, services)
    tls_dir = tmp_path / TLS_VOLUME
    tls_dir.mkdir()
    variant = tmp_path / "babelgate.yaml"
    variant.write_text(yaml.safe_dump(_on_loopback(config, ports, tls_dir), sort_keys=False))
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(render_yaml(load_config(variant)))
    mounts = {str(COMPOSE_CONFIG): variant, str(COMPOSE_ENVOY): rendered, TLS_VOLUME: tls_dir}

    supervisor = Supervisor(log_dir=tmp_path)
    redis_argv = _argv(services["redis"], image)
    assert redis_argv[0] == "redis-server"
    store = RedisServer(tmp_path / "redis", port=ports["redis", 6379], extra_args=tuple(redis_argv[1:]))
    try:
        # depends_on: certs completes first
        certs_argv = _local(_argv(services["certs"], image), services["certs"], mounts, ports, "certs")
        _run_certs(certs_argv, tmp_path)
        store.start()
        for name in sorted(DEMO_SERVICES):
            argv = _local(_argv(services[name], image), services[name], mounts, ports, name)
            supervisor.start_reporting(name, argv, env=_environment(services[name]))
        server_argv = _local(_argv(services["babelgate"], image), services["babelgate"], mounts, ports, "babelgate")
        assert server_argv[3:] == ["serve", "-c", str(variant), "--host", LOOPBACK,
                                   "--health-port", str(ports["babelgate", 50061])]
        supervisor.start("babelgate", server_argv, env=_environment(services["babelgate"]))
        _wait_serving(f"{LOOPBACK}:{ports['babelgate', 50061]}", supervisor)
        supervisor.start("envoy", _local(_argv(services["envoy"], image), services["envoy"], mounts, ports, "envoy"))
        wait_for_envoy(ports["envoy", 9901], timeout=30, supervisor=supervisor)
        yield ComposeStack(services, ports, tls_dir, certs_argv, supervisor, store)
    finally:
        supervisor.stop_all()
        store.stop()


def _run_certs(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The `certs` service's shell script, with `babelgate` meaning this checkout (as the image's console script)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "babelgate"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m ext_proc \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_compose_services_run_as_plain_processes_and_serve_openai_clients(compose_stack: ComposeStack) -> None:
    client = openai.OpenAI(base_url=compose_stack.url, api_key=DEMO_KEY, max_retries=0, timeout=20)
    hello = [{"role": "user", "content": "Hello!"}]
    answer = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=hello)
    assert answer.headers["x-babelgate-backend"] == "demo-openai"
    assert "demo-openai" in answer.parse().choices[0].message.content
    failover = client.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=hello, extra_headers=fault("demo-anthropic:503"))
    assert failover.headers["x-babelgate-backend"] == "demo-openai"
    assert failover.parse().model == "gpt-4o"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="bg-not-the-demo-key", max_retries=0,
                      timeout=20).chat.completions.create(model="gpt-4o-mini", messages=hello)
    # the admin API answers JSON on Envoy's port, with compose's (demo-only) default credential
    admin_key = _environment(compose_stack.services["babelgate"])["BABELGATE_ADMIN_KEY"]
    created = httpx.post(f"{str(client.base_url).removesuffix('/v1/')}/admin/v1/keys", json={"key": {"id": "me"}},
                         headers={"authorization": f"Bearer {admin_key}"}, timeout=10)
    assert created.status_code == 200, created.text
    mine = openai.OpenAI(base_url=str(client.base_url), api_key=created.json()["secret"], max_retries=0)
    assert mine.chat.completions.create(model="gpt-4o-mini", messages=hello).choices
    # the limits of the compose config, and the keys the admin API made, live in the compose Redis
    with redis.Redis(host=LOOPBACK, port=compose_stack.store.port) as counters:
        assert counters.keys("bg:{*") and counters.hexists("bg:keys", "me")
    compose_stack.supervisor.check()


def test_compose_mcp_endpoint_serves_the_demo_mcp_service_and_the_stdio_server_of_the_babelgate_service(
        compose_stack: ComposeStack) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        http = create_mcp_http_client(headers={"authorization": f"Bearer {DEMO_KEY}"})
        url = compose_stack.url.removesuffix("/v1") + "/mcp"
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as session:
            names = [tool.name for tool in (await session.list_tools()).tools]
            results = [await session.call_tool("tools__echo", {"text": "compose"}),
                       await session.call_tool("local__notes_list", {})]
        return names, [part.text for result in results for part in result.content]

    names, texts = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert {"tools__echo", "local__notes_list"} <= set(names), names
    assert texts == ["compose", "no notes yet"]
    compose_stack.supervisor.check()


def test_compose_certs_hands_each_key_to_its_reader_and_keeps_the_files(compose_stack: ComposeStack,
                                                                        tmp_path: Path) -> None:
    """Each private key is readable by one user only, the image user that needs it; a second run (every `up`)
    keeps the files the running containers use."""
    tls = compose_stack.tls_dir
    owners = {"server-key.pem": IMAGE_USERS["babelgate"], "envoy-client-key.pem": IMAGE_USERS["envoy"]}
    for name, user in owners.items():
        status = (tls / name).stat()
        assert status.st_mode & 0o777 == 0o600, name
        if os.geteuid() == 0:  # as another user, the test ran the script with its own ids
            assert (status.st_uid, status.st_gid) == (user, user), name
    before = {path.name: path.read_bytes() for path in tls.iterdir()}
    assert set(before) == {"ca.pem", "server.pem", "server-key.pem", "envoy-client.pem", "envoy-client-key.pem"}
    _run_certs(compose_stack.certs_argv, tmp_path)
    assert {path.name: path.read_bytes() for path in tls.iterdir()} == before


def test_compose_ext_proc_port_serves_only_envoys_certificate(compose_stack: ComposeStack, tmp_path: Path) -> None:
    """The attack: a container on the compose network opens an ext_proc stream as if it were Envoy's attempt stage
    (which the server would answer with provider credentials). Without Envoy's client certificate the TLS
    handshake fails, whatever else the client holds."""
    tls = compose_stack.tls_dir
    ca = (tls / "ca.pem").read_bytes()
    other = make_certificates(tmp_path / "other-ca", "babelgate-ext-proc")
    attackers = {
        "plaintext": None,
        "TLS, no client certificate": grpc.ssl_channel_credentials(ca),
        "a client certificate from another CA": grpc.ssl_channel_credentials(
            ca, other.client_key_file.read_bytes(), other.client_cert_file.read_bytes()),
        "the server's own certificate as a client's": grpc.ssl_channel_credentials(
            ca, (tls / "server-key.pem").read_bytes(), (tls / "server.pem").read_bytes()),
    }
    for attacker, credentials in attackers.items():
        code = _attempt_stage_stream(compose_stack.ext_proc, credentials)
        assert code == grpc.StatusCode.UNAVAILABLE, f"{attacker}: {code}"
    # the control: Envoy's own certificate is served (so the refusals above were the certificate's doing)
    envoy = grpc.ssl_channel_credentials(ca, (tls / "envoy-client-key.pem").read_bytes(),
                                         (tls / "envoy-client.pem").read_bytes())
    assert _health(compose_stack.ext_proc, envoy) == HealthCheckResponse.SERVING
    # the plaintext health port serves the health service alone: no ext_proc stream there either
    health_port = f"{LOOPBACK}:{compose_stack.ports['babelgate', 50061]}"
    assert _health(health_port, None) == HealthCheckResponse.SERVING
    assert _attempt_stage_stream(health_port, None) == grpc.StatusCode.UNIMPLEMENTED
    # and Envoy's requests still work
    client = openai.OpenAI(base_url=compose_stack.url, api_key=DEMO_KEY, max_retries=0, timeout=20)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).choices
    compose_stack.supervisor.check()


def _channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials, options=(("grpc.ssl_target_name_override", "babelgate-ext-proc"),))


def _attempt_stage_stream(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """Open an ext_proc stream claiming to be the attempt stage; the status it ends with."""
    with _channel(target, credentials) as channel:
        stream = channel.stream_stream(PROCESS_METHOD)
        try:
            for _ in stream(iter([b""]), timeout=10, metadata=(("x-babelgate-stage", "attempt"),)):
                pass
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    with _channel(target, credentials) as channel:
        check = channel.unary_unary(healthcheck.CHECK_METHOD, request_serializer=HealthCheckRequest.SerializeToString,
                                    response_deserializer=HealthCheckResponse.FromString)
        return check(HealthCheckRequest(), timeout=10).status


def _loopback_ports(config: dict, services: dict) -> dict[tuple[str, int], int]:
    """A free loopback port for every (service, container port) the stack uses."""
    server = config["ext_proc"]
    wanted = [("envoy", config["listener"]["port"]), ("envoy", config["listener"]["admin_port"]),
              ("babelgate", server["port"]), ("babelgate", server["health_port"]),
              ("babelgate", config["admin"]["port"]), ("redis", 6379)]
    for name in sorted(DEMO_SERVICES):
        argv = services[name]["command"]
        wanted.append((name, int(argv[argv.index("--port") + 1])))
    wanted += [("babelgate", server["port"]) for server in config["mcp"]["servers"] if "command" in server]
    return dict(zip(wanted, free_ports(len(wanted)), strict=True))


def _on_loopback(config: dict, ports: dict[tuple[str, int], int], tls_dir: Path) -> dict:
    """The compose config with every service address replaced by its loopback port, and the TLS files by the
    directory standing in for the volume."""
    listener, server = config["listener"], config["ext_proc"]
    config["listener"] = {**listener, "host": LOOPBACK, "port": ports["envoy", listener["port"]],
                          "admin_port": ports["envoy", listener["admin_port"]]}
    tls = {key: str(tls_dir / Path(value).name) if key in TLS_FILES else value
           for key, value in server["tls"].items()}
    config["ext_proc"] = {**server, "host": LOOPBACK, "port": ports[server["host"], server["port"]],
                          "health_port": ports[server["host"], server["health_port"]], "tls": tls}
    config["admin"]["port"] = ports[server["host"], config["admin"]["port"]]
    for backend in config["backends"]:
        backend["base_url"] = _url_on_loopback(backend["base_url"], ports)
    config["limits"]["redis"]["url"] = _url_on_loopback(config["limits"]["redis"]["url"], ports)
    config["mcp"]["bridge_host"] = LOOPBACK
    for server in config["mcp"]["servers"]:
        if "url" in server:
            server["url"] = _url_on_loopback(server["url"], ports)
        else:
            server["port"] = ports["babelgate", server["port"]]
            server["command"] = [sys.executable if arg == "python" else arg for arg in server["command"]]
    return config


def _url_on_loopback(url: str, ports: dict[tuple[str, int], int]) -> str:
    parts = urlsplit(url)
    port = ports[parts.hostname, parts.port]
    return urlunsplit(parts._replace(netloc=f"{LOOPBACK}:{port}"))


def _argv(service: dict, image: dict[str, list[str]]) -> list[str]:
    """What the container runs: compose's entrypoint/command, else the image's (compose drops the image's CMD when
    a service sets its own entrypoint). `$$` is compose's escape for a `$` the container sees."""
    entrypoint = service.get("entrypoint")
    command = service.get("command")
    if "build" not in service:
        argv = [*(entrypoint or []), *(command or [])]
    elif entrypoint is None:
        argv = [*image["ENTRYPOINT"], *(command if command is not None else image["CMD"])]
    else:
        argv = [*entrypoint, *(command or [])]
    return [arg.replace("$$", "$") for arg in argv]


def _local(argv: list[str], service: dict, mounts: dict[str, Path], ports: dict[tuple[str, int], int],
           name: str) -> list[str]:
    """The container's argv as a local process: local executables, mounted files, loopback addresses and ports,
    and (as a user who can't hand files to others) this user's ids for the image users."""
    volumes = {}
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        volumes[target] = str(mounts[source])
    executables = {"babelgate": [sys.executable, "-m", "ext_proc"], "python": [sys.executable],
                   "envoy": [envoy_binary()], "sh": ["sh"]}
    users = {f"{uid}:{uid}" for uid in IMAGE_USERS.values()}
    local = [*executables[argv[0]]]
    for index, arg in enumerate(argv[1:], start=1):
        if argv[index - 1] in ("--port", "--health-port"):
            arg = str(ports[name, int(arg)])
        elif arg in users and os.geteuid() != 0:
            arg = f"{os.getuid()}:{os.getgid()}"
        local.append(volumes.get(arg, LOOPBACK if arg == "0.0.0.0" else arg))
    return local


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _wait_serving(target: str, supervisor: Supervisor, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not healthcheck.check(target, timeout=1)[0]:
        supervisor.check()  # a server that died fails now, not at the deadline
        assert time.monotonic() < deadline, f"{target} did not become SERVING"
        time.sleep(0.1)


def _endpoint(cluster: dict) -> tuple[str, int]:
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    return address["address"], address["port_value"]


def envoy_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


# -- Dockerfile -------------------------------------------------------------------------------------------------

def dockerfile() -> dict[str, list]:
    """Instruction -> its arguments (JSON-form arguments as lists), in order, continuations joined."""
    instructions: dict[str, list] = {}
    logical = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        keyword, _, rest = logical.strip().partition(" ")
        instructions.setdefault(keyword.upper(), []).append(rest.strip())
        logical = ""
    for keyword in ("ENTRYPOINT", "CMD"):
        instructions[keyword] = json.loads(instructions[keyword][-1])
    return instructions


def test_dockerfile_runs_the_server_as_a_non_root_user_with_a_grpc_health_check() -> None:
    image = dockerfile()
    assert image["FROM"][0].startswith("python:3.11-slim")
    assert any("pip install ." in run and "[test]" not in run for run in image["RUN"])
    user = image["USER"][-1].split(":")[0]
    assert user not in ("root", "0")
    assert image["EXPOSE"] == ["50051 50061"]
    assert image["ENTRYPOINT"] == ["babelgate"]
    assert image["CMD"] == ["serve", "-c", "/etc/babelgate/babelgate.yaml", "--host", "0.0.0.0",
                            "--health-port", "50061"]
    # the check asks the plaintext health port the CMD serves (it has no client certificate for the ext_proc port)
    check = healthcheck_argv(image)
    assert check[:3] == ["python", "-m", "ext_proc.healthcheck"] and check[3] == "127.0.0.1:50061"
    # .dockerignore lets in exactly what the Dockerfile copies
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {source for copy in image["COPY"] for source in copy.split()[:-1]}
    assert patterns[0] == "*" and {p[1:] for p in patterns if p.startswith("!")} == copied


def healthcheck_argv(image: dict[str, list]) -> list[str]:
    options, _, command = image["HEALTHCHECK"][-1].partition(" CMD ")
    assert all(option.startswith("--") for option in options.split()), options
    return json.loads(command)


def test_the_image_build_context_builds_a_package_with_the_healthcheck(tmp_path: Path) -> None:
    """`pip install .` in the image sees only what the Dockerfile copies: that must build, health check included."""
    context = tmp_path / "src"
    context.mkdir()
    for copy in dockerfile()["COPY"]:
        *sources, _ = copy.split()
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                (context / source).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, context / source)
    # the context's setup.py (with pyproject.toml) as `pip install .` runs it: build_py compiles the protos and
    # lays out exactly what would be installed
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=context, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    for module in ("healthcheck.py", "cli.py", "demo/__main__.py", "server.py", "admin/admin_pb2.py", "admin/admin.pb",
                   "wire/external_processor_pb2.py", "wire/base_pb2.py"):
        assert (tmp_path / "lib" / "ext_proc" / module).is_file(), module


def test_healthcheck_exits_zero_only_for_a_serving_server(tmp_path: Path) -> None:
    check = healthcheck_argv(dockerfile())
    config = tmp_path / "babelgate.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}]}))
    port, health_port = free_port(), free_port()
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        supervisor.start_reporting("babelgate", [sys.executable, "-m", "ext_proc", "serve", "-c", str(config),
                                                 "--host", LOOPBACK, "--port", str(port), "--health-port",
                                                 str(health_port), "--report-ready"])
        port = health_port  # what the HEALTHCHECK asks
        serving = run_healthcheck(check, f"{LOOPBACK}:{port}")
        assert serving.returncode == 0, serving.stderr
        assert "SERVING" in serving.stdout
        unknown = run_healthcheck([*check, "--service", "no.such.Service"], f"{LOOPBACK}:{port}")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    finally:
        supervisor.stop_all()
    started = time.monotonic()
    closed = run_healthcheck(check, f"{LOOPBACK}:{port}")
    assert closed.returncode == 1 and "UNAVAILABLE" in closed.stderr
    assert time.monotonic() - started < 5


def run_healthcheck(argv: list[str], target: str) -> subprocess.CompletedProcess:
    """The Dockerfile's HEALTHCHECK command, with this interpreter and the target swapped in."""
    local = [sys.executable, *argv[1:]]
    local[3] = target
    return subprocess.run(local, capture_output=True, text=True, timeout=30)


# -- Kubernetes -------------------------------------------------------------------------------------------------

KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
EXAMPLE_SECRETS = {"provider-keys.secret.example.yaml", "ext-proc-tls.secret.example.yaml"}
TLS_SECRET = "babelgate-ext-proc-tls"


def manifests() -> dict[str, list[dict]]:
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
            for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml"}


def objects() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for docs in manifests().values() for doc in docs}


def kubernetes_config() -> object:
    return parse_config(objects()["ConfigMap", "babelgate-config"]["data"]["babelgate.yaml"], source="configmap")


def test_kubernetes_manifests_match_the_schemas() -> None:
    found = manifests()
    assert set(found) >= {"namespace.yaml", "babelgate-config.yaml", "babelgate.yaml", "envoy.yaml",
                          "network-policy.yaml", *EXAMPLE_SECRETS}
    for docs in found.values():
        for doc in docs:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    deployment = objects()["Deployment", "babelgate"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_everything_but_the_example_secrets() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(manifests()) - EXAMPLE_SECRETS
    for name in ("babelgate-provider-keys", TLS_SECRET):
        secret = objects()["Secret", name]
        assert all(value.startswith("REPLACE-ME") for value in secret["stringData"].values()), name


def test_kubernetes_ext_proc_deployment_is_non_root_probed_over_grpc_and_sized() -> None:
    found = objects()
    pod = found["Deployment", "babelgate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # probes ask the plaintext health port (the kubelet has no client certificate for 50051)
    assert container["readinessProbe"]["grpc"] == {"port": 50061}
    assert container["livenessProbe"]["grpc"] == {"port": 50061}
    assert kubernetes_config().ext_proc.health_port == 50061
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}
    assert container["resources"]["limits"] == {"memory": "256Mi"}
    assert container["args"] == dockerfile()["CMD"]
    assert {ref["secretRef"]["name"] for ref in container["envFrom"]} == {"babelgate-provider-keys"}
    # every replica seals and opens reservations with one key; a pod without it does not start
    metadata_key = next(env for env in container["env"] if env["name"] == "BABELGATE_METADATA_KEY")
    assert metadata_key["valueFrom"]["secretKeyRef"] == {"name": "babelgate-provider-keys",
                                                         "key": "BABELGATE_METADATA_KEY"}
    assert "optional" not in metadata_key["valueFrom"]["secretKeyRef"]
    service = found["Service", "babelgate"]["spec"]
    assert service["ports"] == [{"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP",
                                 "appProtocol": "grpc"}]
    assert service["selector"].items() <= found["Deployment", "babelgate"]["spec"]["template"]["metadata"][
        "labels"].items()
    mounted = {volume["name"]: volume for volume in pod["volumes"]}
    assert mounted["config"]["configMap"]["name"] == "babelgate-config"


@pytest.mark.parametrize(("deployment", "container", "fields"), [
    ("babelgate", "babelgate", SERVER_FILES), ("babelgate-envoy", "envoy", ENVOY_FILES)])
def test_each_deployment_mounts_its_side_of_the_mutual_tls_secret_where_the_config_names_it(
        deployment: str, container: str, fields: tuple[str, ...]) -> None:
    tls = kubernetes_config().ext_proc.tls
    pod = objects()["Deployment", deployment]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == TLS_SECRET)
    mount = next(m for c in pod["containers"] if c["name"] == container for m in c["volumeMounts"]
                 if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    mounted = {str(Path(mount["mountPath"]) / item["path"]): item["key"] for item in volume["secret"]["items"]}
    # exactly this side's files (the other side's key never enters the pod), at the config's paths
    assert mounted == {str(getattr(tls, field)): getattr(tls, field).name for field in fields}
    # readable by the pod's user through its group only
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    secret = objects()["Secret", TLS_SECRET]["stringData"]
    assert set(secret) == {getattr(tls, field).name for field in TLS_FILES}


def test_kubernetes_config_map_holds_a_config_whose_envoy_rendering_validates(tmp_path: Path) -> None:
    found = objects()
    config = kubernetes_config()
    assert config.ext_proc.host == "babelgate" and config.ext_proc.processes == 1
    assert ("Service", config.ext_proc.host) in found
    secret_keys = set(found["Secret", "babelgate-provider-keys"]["stringData"])
    assert {backend.api_key.env for backend in config.backends} | {"BABELGATE_METADATA_KEY"} == secret_keys
    # Envoy reads the certificate files to validate: the same config with files made here at those names
    tls = config.ext_proc.tls
    files = make_certificates(tmp_path / "tls", tls.server_name)
    text = render_yaml(config)
    for field in TLS_FILES:
        text = text.replace(str(getattr(tls, field)), str(getattr(files, field)))
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(text)
    result = envoy_validate(rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    ext_proc = next(c for c in yaml.safe_load(text)["static_resources"]["clusters"] if c["name"] == "bg_ext_proc")
    assert ext_proc["transport_socket"]["typed_config"]["sni"] == tls.server_name
    gateway = found["Deployment", "babelgate-envoy"]["spec"]["template"]["spec"]
    assert gateway["initContainers"][0]["args"][:1] == ["render"]
    assert gateway["containers"][0]["ports"][0]["containerPort"] == config.listener.port
