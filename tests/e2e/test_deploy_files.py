"""The deployment files: docker-compose.yaml, the Dockerfile and its health check, envoy/compose/, deploy/kubernetes/.

There is no Docker engine here, so compose files are checked by `docker-compose config`, and the compose services'
commands (as compose resolves them, the image's ENTRYPOINT/CMD included) run as plain processes on 127.0.0.1, with
service host names and container ports swapped for loopback ones and mounted files for rendered variants.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import kubernetes_validate
import openai
import pytest
import redis
import yaml

from ext_proc import healthcheck
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
CORE_SERVICES = {"envoy", "babelgate", "redis"}
DEMO_SERVICES = {"demo-openai", "demo-anthropic"}
LOOPBACK = "127.0.0.1"


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
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k != "DEMO_PROVIDER_KEY"}
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
    broken.write_text(COMPOSE_FILE.read_text().replace("    depends_on: [redis]", "    depends_onn: [redis]"))
    assert broken.read_text() != COMPOSE_FILE.read_text()
    refused = compose(docker_compose, "config", "-q", file=broken)
    assert refused.returncode != 0 and "depends_onn" in refused.stderr


def test_compose_envoy_config_is_rendered_from_its_babelgate_config() -> None:
    expected = render_yaml(load_config(COMPOSE_CONFIG))  # {env: ...} secrets are not resolved to render
    assert COMPOSE_ENVOY.read_text() == expected, (
        "envoy/compose/envoy.yaml is stale: "
        "babelgate render -c envoy/compose/babelgate.yaml -o envoy/compose/envoy.yaml")
    validated = envoy_validate(COMPOSE_ENVOY)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    clusters = {c["name"]: c for c in yaml.safe_load(expected)["static_resources"]["clusters"]}
    ext_proc = clusters["bg_ext_proc"]
    assert ext_proc["type"] == "STRICT_DNS"
    assert _endpoint(ext_proc) == ("babelgate", 50051)


def test_envoy_images_are_the_release_the_configs_are_validated_with() -> None:
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    minor = re.search(r"version: \w+/(\d+\.\d+)\.\d+/", version).group(1)
    images = [yaml.safe_load(COMPOSE_FILE.read_text())["services"]["envoy"]["image"]]
    images += [c["image"] for c in objects()["Deployment", "babelgate-envoy"]["spec"]["template"]["spec"]["containers"]]
    assert images == [f"envoyproxy/envoy:v{minor}-latest"] * 2


def test_compose_config_names_the_services_compose_runs() -> None:
    """Every host the Babelgate config dials is a compose service listening on that port, and the files each
    service mounts are the ones its command reads."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    config = load_config(COMPOSE_CONFIG)
    for backend in config.backends:
        argv = services[backend.host]["command"]
        assert argv[argv.index("--port") + 1] == str(backend.port), backend.id
        assert argv[argv.index("--host") + 1] == "0.0.0.0", backend.id
    assert config.ext_proc.host == "babelgate" and config.listener.host == "0.0.0.0"
    assert urlsplit(config.limits.redis.url).hostname == "redis"
    assert services["envoy"]["ports"] == [f"127.0.0.1:{config.listener.port}:{config.listener.port}"]
    assert services["babelgate"]["volumes"] == ["./envoy/compose/babelgate.yaml:/etc/babelgate/babelgate.yaml:ro"]
    assert services["envoy"]["volumes"] == ["./envoy/compose/envoy.yaml:/etc/envoy/envoy.yaml:ro"]
    assert services["envoy"]["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    assert DEMO_KEY in COMPOSE_FILE.read_text() and DEMO_KEY in COMPOSE_CONFIG.read_text()


def test_compose_services_run_as_plain_processes_and_serve_openai_clients(docker_compose: str,
                                                                          tmp_path: Path) -> None:
    provider_key = "sk-compose-test-" + secrets.token_hex(6)
    result = compose(docker_compose, "config", profiles=("demo",), env={"DEMO_PROVIDER_KEY": provider_key})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == CORE_SERVICES | DEMO_SERVICES
    image = dockerfile()

    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    ports = _loopback_ports(config, services)
    variant = tmp_path / "babelgate.yaml"
    variant.write_text(yaml.safe_dump(_on_loopback(config, ports), sort_keys=False))
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(render_yaml(load_config(variant)))
    mounts = {str(COMPOSE_CONFIG): variant, str(COMPOSE_ENVOY): rendered}

    supervisor = Supervisor(log_dir=tmp_path)
    redis_argv = _argv(services["redis"], image)
    assert redis_argv[0] == "redis-server"
    store = RedisServer(tmp_path / "redis", port=ports["redis", 6379], extra_args=tuple(redis_argv[1:]))
    try:
        store.start()
        for name in sorted(DEMO_SERVICES):
            argv = _local(_argv(services[name], image), services[name], mounts, ports, name)
            supervisor.start_reporting(name, argv, env=_environment(services[name]))
        server_argv = _local(_argv(services["babelgate"], image), services["babelgate"], mounts, ports, "babelgate")
        assert server_argv[3:] == ["serve", "-c", str(variant), "--host", LOOPBACK]
        supervisor.start("babelgate", server_argv, env=_environment(services["babelgate"]))
        _wait_serving(f"{LOOPBACK}:{ports['babelgate', 50051]}", supervisor)
        supervisor.start("envoy", _local(_argv(services["envoy"], image), services["envoy"], mounts, ports, "envoy"))
        wait_for_envoy(ports["envoy", 9901], timeout=30, supervisor=supervisor)

        client = openai.OpenAI(base_url=f"http://{LOOPBACK}:{ports['envoy', 10000]}/v1", api_key=DEMO_KEY,
                               max_retries=0, timeout=20)
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
        admin_key = _environment(services["babelgate"])["BABELGATE_ADMIN_KEY"]
        created = httpx.post(f"{str(client.base_url).removesuffix('/v1/')}/admin/v1/keys", json={"key": {"id": "me"}},
                             headers={"authorization": f"Bearer {admin_key}"}, timeout=10)
        assert created.status_code == 200, created.text
        mine = openai.OpenAI(base_url=str(client.base_url), api_key=created.json()["secret"], max_retries=0)
        assert mine.chat.completions.create(model="gpt-4o-mini", messages=hello).choices
        # the limits of the compose config, and the keys the admin API made, live in the compose Redis
        with redis.Redis(host=LOOPBACK, port=store.port) as counters:
            assert counters.keys("bg:{*") and counters.hexists("bg:keys", "me")
        supervisor.check()
    finally:
        supervisor.stop_all()
        store.stop()


def _loopback_ports(config: dict, services: dict) -> dict[tuple[str, int], int]:
    """A free loopback port for every (service, container port) the stack uses."""
    wanted = [("envoy", config["listener"]["port"]), ("envoy", config["listener"]["admin_port"]),
              ("babelgate", config["ext_proc"]["port"]), ("babelgate", config["admin"]["port"]), ("redis", 6379)]
    for name in sorted(DEMO_SERVICES):
        argv = services[name]["command"]
        wanted.append((name, int(argv[argv.index("--port") + 1])))
    return dict(zip(wanted, free_ports(len(wanted)), strict=True))


def _on_loopback(config: dict, ports: dict[tuple[str, int], int]) -> dict:
    """The compose config with every service address replaced by its loopback port."""
    listener, server = config["listener"], config["ext_proc"]
    config["listener"] = {**listener, "host": LOOPBACK, "port": ports["envoy", listener["port"]],
                          "admin_port": ports["envoy", listener["admin_port"]]}
    config["ext_proc"] = {**server, "host": LOOPBACK, "port": ports[server["host"], server["port"]]}
    config["admin"]["port"] = ports[server["host"], config["admin"]["port"]]
    for backend in config["backends"]:
        backend["base_url"] = _url_on_loopback(backend["base_url"], ports)
    config["limits"]["redis"]["url"] = _url_on_loopback(config["limits"]["redis"]["url"], ports)
    return config


def _url_on_loopback(url: str, ports: dict[tuple[str, int], int]) -> str:
    parts = urlsplit(url)
    port = ports[parts.hostname, parts.port]
    return urlunsplit(parts._replace(netloc=f"{LOOPBACK}:{port}"))


def _argv(service: dict, image: dict[str, list[str]]) -> list[str]:
    """What the container runs: compose's entrypoint/command, else the image's (compose drops the image's CMD when
    a service sets its own entrypoint)."""
    entrypoint = service.get("entrypoint")
    command = service.get("command")
    if "build" not in service:
        return [*(entrypoint or []), *(command or [])]
    if entrypoint is None:
        return [*image["ENTRYPOINT"], *(command if command is not None else image["CMD"])]
    return [*entrypoint, *(command or [])]


def _local(argv: list[str], service: dict, mounts: dict[str, Path], ports: dict[tuple[str, int], int],
           name: str) -> list[str]:
    """The container's argv as a local process: local executables, mounted files, loopback addresses and ports."""
    volumes = {}
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        volumes[target] = str(mounts[source])
    executables = {"babelgate": [sys.executable, "-m", "ext_proc"], "python": [sys.executable],
                   "envoy": [envoy_binary()]}
    local = [*executables[argv[0]]]
    for index, arg in enumerate(argv[1:], start=1):
        if argv[index - 1] == "--port":
            arg = str(ports[name, int(arg)])
        local.append(volumes.get(arg, LOOPBACK if arg == "0.0.0.0" else arg))
    return local


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _wait_serving(target: str, supervisor: Supervisor, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not healthcheck.check(target, timeout=1)[0]:
        supervisor.check()
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
    assert image["EXPOSE"] == ["50051"]
    assert image["ENTRYPOINT"] == ["babelgate"]
    assert image["CMD"] == ["serve", "-c", "/etc/babelgate/babelgate.yaml", "--host", "0.0.0.0"]
    check = healthcheck_argv(image)
    assert check[:3] == ["python", "-m", "ext_proc.healthcheck"] and check[3].endswith(":50051")
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
    # the context's setup.py (with pyproject.toml) as `pip install .` runs it: build_py compiles the admin protos and
    # lays out exactly what would be installed
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=context, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    for module in ("healthcheck.py", "cli.py", "demo/__main__.py", "server.py", "admin/admin_pb2.py", "admin/admin.pb"):
        assert (tmp_path / "lib" / "ext_proc" / module).is_file(), module


def test_healthcheck_exits_zero_only_for_a_serving_server(tmp_path: Path) -> None:
    check = healthcheck_argv(dockerfile())
    config = tmp_path / "babelgate.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}]}))
    port = free_port()
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        supervisor.start_reporting("babelgate", [sys.executable, "-m", "ext_proc", "serve", "-c", str(config),
                                                 "--host", LOOPBACK, "--port", str(port), "--report-ready"])
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


def manifests() -> dict[str, list[dict]]:
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
            for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml"}


def objects() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for docs in manifests().values() for doc in docs}


def test_kubernetes_manifests_match_the_schemas() -> None:
    found = manifests()
    assert set(found) >= {"namespace.yaml", "babelgate-config.yaml", "babelgate.yaml", "envoy.yaml",
                          "provider-keys.secret.example.yaml"}
    for docs in found.values():
        for doc in docs:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
    deployment = objects()["Deployment", "babelgate"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_everything_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(manifests()) - {"provider-keys.secret.example.yaml"}
    secret = objects()["Secret", "babelgate-provider-keys"]
    assert all(value.startswith("REPLACE-ME") for value in secret["stringData"].values())


def test_kubernetes_ext_proc_deployment_is_non_root_probed_over_grpc_and_sized() -> None:
    found = objects()
    pod = found["Deployment", "babelgate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert container["livenessProbe"]["grpc"] == {"port": 50051}
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "128Mi"}
    assert container["resources"]["limits"] == {"memory": "256Mi"}
    assert container["args"] == dockerfile()["CMD"]
    assert {ref["secretRef"]["name"] for ref in container["envFrom"]} == {"babelgate-provider-keys"}
    service = found["Service", "babelgate"]["spec"]
    assert service["ports"] == [{"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP",
                                 "appProtocol": "grpc"}]
    assert service["selector"].items() <= found["Deployment", "babelgate"]["spec"]["template"]["metadata"][
        "labels"].items()
    mounted = {volume["name"]: volume for volume in pod["volumes"]}
    assert mounted["config"]["configMap"]["name"] == "babelgate-config"


def test_kubernetes_config_map_holds_a_config_whose_envoy_rendering_validates(tmp_path: Path) -> None:
    found = objects()
    config = parse_config(found["ConfigMap", "babelgate-config"]["data"]["babelgate.yaml"], source="configmap")
    assert config.ext_proc.host == "babelgate" and config.ext_proc.processes == 1
    assert ("Service", config.ext_proc.host) in found
    secret_keys = set(found["Secret", "babelgate-provider-keys"]["stringData"])
    assert {backend.api_key.env for backend in config.backends} == secret_keys
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(render_yaml(config))
    result = envoy_validate(rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    gateway = found["Deployment", "babelgate-envoy"]["spec"]["template"]["spec"]
    assert gateway["initContainers"][0]["args"][:1] == ["render"]
    assert gateway["containers"][0]["ports"][0]["containerPort"] == config.listener.port
