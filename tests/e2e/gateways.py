"""One builder for every end-to-end gateway: demo providers, backends, routes, keys, Redis and any other config,
written to one YAML file and started under one Supervisor, which stops everything the builder started.

    with GatewayBuilder(tmp_path, processes=2) as build:
        openai_a = build.demo("openai-a")                       # a demo provider speaking OpenAI's wire format
        build.backend("oa", openai_a, timeout="20s")
        build.route("mini", ("oa", "gpt-4o-mini"))
        build.key("k")
        gateway = build.start()                                 # or build.up(): `babelgate up -c` itself
        gateway.client().chat.completions.create(model="mini", ...)

Decisions worth knowing before changing this file:
- A demo provider starts when it is added: its port goes into the base URL of every backend over it.
- A backend reads its demo's key the way that kind of provider is configured (an env variable the builder names; AWS
  variables for Bedrock; for Vertex a service account whose token endpoint is the demo) unless the test gives
  credentials of its own. The variable is set only while a backend still names it: a test that moves a key to a file
  or a command leaves no copy of it in the servers' environment.
- `start` uses `start_stack`, the same wiring `babelgate up` runs; it returns once Envoy is ready. Readiness is
  Envoy's admin `/ready`, never a request through the listener: request logs, access logs and counters stay exactly
  the test's own traffic.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import ssl
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Child, Supervisor, free_port, free_port_run, python_module
from ext_proc.launch.stack import Stack, start_stack

from ..eventually import eventually
from ..redis_server import RedisServer
from .certs import make_ca_and_server_cert
from .token_server import write_service_account

SCHEMAS = {"openai": "openai", "anthropic": "anthropic", "bedrock": "bedrock-converse", "gemini": "gemini",
           "vertex": "vertex-gemini", "azure": "azure-openai", "cohere": "cohere"}
"""The backend schema a demo provider of each kind is reached with unless the backend names another."""
VERTEX_LOCATIONS = {"vertex-gemini": "us-central1", "vertex-anthropic": "us-east5"}
AWS_SECRET_ACCESS_KEY = "e2e-aws-secret-access-key"
"""The demo Bedrock checks only the access key id of a SigV4 signature."""
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
"""`babelgate up` drains for up to 10 s on SIGTERM, then stops its children: killed sooner, it would orphan them."""
REDIS_TIMEOUT = "1s"
"""`limits.redis.timeout` of the test gateways unless a test gives its own. The product's 0.1 s suits a quiet host; on a
busy CI machine a reply can miss it, and a reservation that times out is admitted uncounted (`fail_open`, the
default) or, retried, counted twice, so exact counters and refusals would depend on the machine's load. Outages stay
quick to handle: a refused connection fails at once, and a call to a hung Redis ends within 4 x 1 s + 0.05 s
(`RedisStore.from_url`)."""


@dataclass(frozen=True)
class Demo:
    """One demo provider (`python -m ext_proc.demo`): its wire format, the name its answers carry, where it listens
    and the key it demands. With `tls_hostname` it serves HTTPS with a certificate for that name, signed by `ca`."""

    handle: str
    name: str
    kind: str
    port: int
    api_key: str
    tls_hostname: str | None = None
    ca: Path | None = None

    @property
    def base_url(self) -> str:
        origin = f"https://{self.tls_hostname}" if self.tls_hostname else "http://127.0.0.1"
        return f"{origin}:{self.port}" + ("/v1" if self.kind == "openai" else "")

    def requests(self) -> list[dict]:
        """What it received, oldest first (`/_demo/requests`)."""
        with self._http() as http:
            return http.get("/_demo/requests").json()

    def last_request(self) -> dict:
        return self.requests()[-1]

    def clear_requests(self) -> None:
        with self._http() as http:
            http.delete("/_demo/requests")

    def _http(self) -> httpx.Client:
        if self.tls_hostname is None:
            return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        # the certificate names the hostname: the test process resolves it to loopback (conftest), Envoy uses
        # `connect_to`
        return httpx.Client(base_url=f"https://{self.tls_hostname}:{self.port}", timeout=60,
                            verify=ssl.create_default_context(cafile=str(self.ca)))


@dataclass
class Gateway:
    """A running gateway and what tests reach it with. `stack` when started in this process, `up` when it is a
    `babelgate up` child."""

    url: str
    config_path: Path
    supervisor: Supervisor
    demos: dict[str, Demo]
    keys: dict[str, str]
    """Virtual key id -> its secret, in the order they were added."""
    redis: RedisServer | None = None
    stack: Stack | None = None
    up: Child | None = None
    client_timeout: float = 30.0

    @property
    def key(self) -> str:
        """The secret of the first virtual key added."""
        return next(iter(self.keys.values()))

    def client(self, key_id: str | None = None, **options: Any) -> openai.OpenAI:
        """An OpenAI SDK client (no retries) with the key `key_id`, the first key by default, or `api_key=`."""
        api_key = options.pop("api_key", None) or self._secret(key_id)
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key,
                             **{"max_retries": 0, "timeout": self.client_timeout, **options})

    def async_client(self, key_id: str | None = None, **options: Any) -> openai.AsyncOpenAI:
        api_key = options.pop("api_key", None) or self._secret(key_id)
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=api_key,
                                  **{"max_retries": 0, "timeout": self.client_timeout, **options})

    def provider_requests(self, handle: str) -> list[dict]:
        return self.demos[handle].requests()

    def clear_provider_requests(self, handle: str) -> None:
        self.demos[handle].clear_requests()

    def last_request(self, handle: str) -> dict:
        return self.demos[handle].last_request()

    def stop_servers(self) -> None:
        """SIGTERM every ext_proc server and see each exit 0: a graceful stop flushes the request log and the span
        exporter. Envoy keeps running."""
        for child in self.supervisor.children:
            if child.name.startswith("ext_proc"):
                child.process.send_signal(signal.SIGTERM)
                assert child.process.wait(30) == 0

    def _secret(self, key_id: str | None) -> str:
        return self.keys[key_id] if key_id is not None else self.key


class GatewayBuilder:
    """Collects a gateway's config piece by piece (`config` is the plain dict, open to any change), starts it, and
    stops everything it started when the `with` block ends (or on `stop`)."""

    def __init__(self, workdir: Path, *, processes: int = 1, backend_defaults: dict[str, Any] | None = None,
                 config_name: str = "config.yaml", client_timeout: float = 30.0) -> None:
        """`backend_defaults` are fields every backend gets (`outlier_detection: None` for gateways whose tests
        inject failures back to back), before its own."""
        self.workdir = workdir
        self.config_path = workdir / config_name
        self.supervisor = Supervisor(log_dir=workdir)
        self.config: dict[str, Any] = {
            "listener": {"port": free_port(), "admin_port": free_port()},
            "ext_proc": {"port": free_port_run(processes), "processes": processes},
            "backends": [], "routes": []}
        self.env: dict[str, str] = {}
        """Environment of the processes started (provider keys the builder chose are added by `environment`)."""
        self.demos: dict[str, Demo] = {}
        self.keys: dict[str, str] = {}
        self._backend_defaults = backend_defaults or {}
        self._client_timeout = client_timeout
        self._provider_keys: dict[str, str] = {}
        self._redis: RedisServer | None = None
        self._cleanups = contextlib.ExitStack()

    def __enter__(self) -> GatewayBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        listener = self.config["listener"]
        return f"http://{listener.get('host', '127.0.0.1')}:{listener['port']}"

    # -- providers and config --------------------------------------------------------------------------------------

    def demo(self, handle: str, kind: str = "openai", *, name: str | None = None, api_key: str | None = None,
             tls_hostname: str | None = None) -> Demo:
        """Start a demo provider of `kind` (its real wire format; faults on request with `x-demo-fault`). `name`, which
        its answers and fault specs use, is `handle` unless given; its supervised process and log are `handle`."""
        api_key = api_key or _demo_key(kind)
        argv = ["--kind", kind, "--name", name or handle, "--port", "0", "--api-key", api_key]
        ca = None
        if tls_hostname is not None:
            directory = self.workdir / f"{handle}-tls"
            directory.mkdir(exist_ok=True)
            ca, cert, key_file = make_ca_and_server_cert(directory, tls_hostname)
            argv += ["--tls-cert", str(cert), "--tls-key", str(key_file)]
        _, ready = self.supervisor.start_reporting(handle, python_module("ext_proc.demo", *argv))
        demo = Demo(handle, name or handle, kind, int(ready["port"]), api_key, tls_hostname, ca)
        self.demos[handle] = demo
        return demo

    def mcp_server(self, name: str, *, api_key: str | None = None, prefix: str | None = None,
                   **fields: Any) -> dict[str, Any]:
        """The demo MCP tool server over Streamable HTTP (`ext_proc.demo --kind mcp`), added to `mcp.servers`; with
        `api_key`, it wants it as a bearer token, which the gateway sends from an env SecretRef."""
        argv = ["--kind", "mcp", "--name", name, "--port", "0", *(["--api-key", api_key] if api_key else [])]
        _, ready = self.supervisor.start_reporting(f"mcp-{name}", python_module("ext_proc.demo", *argv))
        entry: dict[str, Any] = {"name": name, "url": f"http://127.0.0.1:{ready['port']}/mcp", **fields}
        if api_key is not None:
            variable = "BG_E2E_MCP_" + re.sub(r"\W", "_", name).upper()
            self.env[variable] = api_key
            entry["bearer"] = {"env": variable}
        if prefix is not None:
            entry["prefix"] = prefix
        self.config.setdefault("mcp", {}).setdefault("servers", []).append(entry)
        return entry

    def mcp_stdio_server(self, name: str, **fields: Any) -> dict[str, Any]:
        """The demo stdio MCP server as a `command` server in `mcp.servers`: the stack starts its bridge."""
        entry: dict[str, Any] = {"name": name, "command": [sys.executable, "-m", "ext_proc.demo.mcp_stdio"],
                                 **fields}
        self.config.setdefault("mcp", {}).setdefault("servers", []).append(entry)
        return entry

    def unreachable(self, handle: str, kind: str = "openai") -> Demo:
        """Where a demo provider would listen, with nothing there: its backends' connections are refused."""
        return Demo(handle, handle, kind, free_port(), _demo_key(kind))

    def backend(self, backend_id: str, demo: Demo, schema: str | None = None, **fields: Any) -> dict[str, Any]:
        """A backend over `demo`, with its credentials; `fields` (and the builder's `backend_defaults` before them)
        replace or add top-level fields (`api_key={"file": ...}`, `timeout`, `preset` ...)."""
        schema = schema or SCHEMAS[demo.kind]
        entry = {"id": backend_id, "schema": schema, "base_url": demo.base_url, **self._credentials(demo, schema)}
        if demo.tls_hostname is not None:
            entry.update(connect_to="127.0.0.1", ca_file=str(demo.ca))
        entry.update(self._backend_defaults)
        entry.update(fields)
        self.config["backends"].append(entry)
        return entry

    def route(self, model: str, *chain: tuple[str, str] | dict[str, Any], **fields: Any) -> dict[str, Any]:
        """A route to its chain of (backend id, backend model) or backend entries as dicts (with weights ...)."""
        backends = [step if isinstance(step, dict) else {"backend": step[0], "model": step[1]} for step in chain]
        entry = {"model": model, "backends": backends, **fields}
        self.config["routes"].append(entry)
        return entry

    def key(self, key_id: str, secret: str | None = None, **fields: Any) -> str:
        """A virtual key in the config, stored hashed; returns its secret (new unless given)."""
        secret = secret or generate_key()
        self.config.setdefault("virtual_keys", []).append({"id": key_id, "hash": hash_key(secret), **fields})
        self.keys[key_id] = secret
        return secret

    def redis(self, server: RedisServer | None = None, **settings: Any) -> RedisServer:
        """Limits kept in Redis (`limits.redis`, with `settings`; `timeout` is REDIS_TIMEOUT unless given): `server`,
        else one this builder starts and stops."""
        if server is None:
            server = RedisServer(self.workdir / "redis")
            server.start()
            self._cleanups.callback(server.stop)
        self._redis = server
        self.set(limits={"redis": {"url": server.url, "timeout": REDIS_TIMEOUT, **settings}})
        return server

    def admin(self, secret: str, *, env: str = "BG_E2E_ADMIN", **fields: Any) -> int:
        """The admin API on a port of its own, one credential ("ops", read from `env`); returns the port."""
        port = free_port()
        self.config["admin"] = {"port": port, **fields, "credentials": [{"name": "ops", "secret": {"env": env}}]}
        self.env[env] = secret
        return port

    def set(self, **sections: Any) -> None:
        """Top-level config sections, merged: dicts key by key (`listener={"tls": ...}` keeps the ports), anything else
        replaces."""
        _merge(self.config, sections)

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Something else to stop with the gateway (a collector, a directory), after its processes."""
        self._cleanups.callback(callback)

    def environment(self) -> dict[str, str]:
        named = {backend["api_key"].get("env") for backend in self.config["backends"]
                 if isinstance(backend.get("api_key"), dict)}
        return {**{name: key for name, key in self._provider_keys.items() if name in named}, **self.env}

    def write(self) -> Path:
        """The config as YAML, the way editors and ConfigMap updates write: a new file renamed over the old one."""
        temporary = self.config_path.with_suffix(".tmp")
        temporary.write_text(yaml.safe_dump(self.config, sort_keys=False))
        os.replace(temporary, self.config_path)
        return self.config_path

    # -- running it ------------------------------------------------------------------------------------------------

    def start(self, **stack_options: Any) -> Gateway:
        """Write the config and start its ext_proc servers and Envoy in this process (`start_stack`, as `babelgate
        up` does; `stack_options` such as `envoy_log_level` go to it); return once the gateway serves."""
        path = self.write()
        stack = start_stack(load_config(path), path, self.workdir, self.supervisor, env=self.environment(),
                            **stack_options)
        return self._serving(self._gateway(stack.url, stack=stack))

    def up(self, *args: str) -> Gateway:
        """Write the config and run `babelgate up -c <config> *args` as a supervised child; return once it serves."""
        path = self.write()
        child = self.supervisor.start("up", python_module("ext_proc", "up", "-c", str(path), *args),
                                      env=self.environment())
        return self._serving(self._gateway(self.url, up=child))

    def stop(self) -> None:
        """Every process, newest first (a `babelgate up` child gets the time to drain and stop its own), then the
        rest."""
        try:
            self.supervisor.stop_all(timeout=STOP_TIMEOUT)
        finally:
            self._cleanups.close()

    def _gateway(self, url: str, **running: Any) -> Gateway:
        return Gateway(url, self.config_path, self.supervisor, self.demos, self.keys, self._redis,
                       client_timeout=self._client_timeout, **running)

    def _serving(self, gateway: Gateway) -> Gateway:
        """Once Envoy is ready (it starts after the servers reported ready); a child that exits meanwhile fails the
        start at once, with its log."""
        admin = f"http://127.0.0.1:{self.config['listener']['admin_port']}/ready"
        eventually(lambda: not all(child.alive() for child in self.supervisor.children) or _ok(admin),
                   timeout=READY_TIMEOUT, what=f"the gateway at {gateway.url} is ready")
        self.supervisor.check()
        return gateway

    def _credentials(self, demo: Demo, schema: str) -> dict[str, Any]:
        if demo.kind == "bedrock":
            self.env.update(AWS_ACCESS_KEY_ID=demo.api_key, AWS_SECRET_ACCESS_KEY=AWS_SECRET_ACCESS_KEY)
            return {"aws": {"region": "us-east-1"}}
        if demo.kind == "vertex":
            account = self.workdir / f"{demo.handle}-service-account.json"
            if not account.exists():
                write_service_account(account, f"http://127.0.0.1:{demo.port}/token")
            return {"gcp": {"project": "babelgate-e2e", "location": VERTEX_LOCATIONS[schema],
                            "service_account_file": str(account)}}
        variable = "BG_E2E_KEY_" + re.sub(r"\W", "_", demo.handle).upper()
        self._provider_keys[variable] = demo.api_key
        return {"api_key": {"env": variable}}


def every_backend_kind(build: GatewayBuilder) -> None:
    """One demo provider of each kind and one backend of each schema over them: `oa` (openai), `az` (azure-openai),
    `an` (anthropic), `br` (bedrock-converse) and `brc` (bedrock-anthropic) on demo `bedrock`, `gm` (gemini), `vg`
    (vertex-gemini) and `vc` (vertex-anthropic) on demo `vertex`, `co` (cohere). Demo handles are the kinds."""
    build.backend("oa", build.demo("openai", "openai"))
    build.backend("az", build.demo("azure", "azure"))
    build.backend("an", build.demo("anthropic", "anthropic"))
    bedrock = build.demo("bedrock", "bedrock")
    build.backend("br", bedrock)
    build.backend("brc", bedrock, schema="bedrock-anthropic")
    build.backend("gm", build.demo("gemini", "gemini"))
    vertex = build.demo("vertex", "vertex")
    build.backend("vg", vertex, schema="vertex-gemini")
    build.backend("vc", vertex, schema="vertex-anthropic")
    build.backend("co", build.demo("cohere", "cohere"))


def _demo_key(kind: str) -> str:
    if kind == "bedrock":
        return "AKIDE2E" + secrets.token_hex(6).upper()  # an access key id
    if kind == "vertex":
        return "ya29.e2e-" + secrets.token_hex(8)  # the token the demo hands out and then demands
    return "sk-e2e-" + secrets.token_hex(8)


def _merge(target: dict[str, Any], changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            _merge(target[name], value)
        else:
            target[name] = value


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
