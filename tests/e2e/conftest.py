"""End-to-end fixtures: real Envoy + ext_proc servers + demo providers on free loopback ports.

One gateway serves the whole session; tests steer the demo providers per request with the `x-demo-fault` header,
so failures stay local to the test that asks for them. Everything started here is stopped at the end.
"""

from __future__ import annotations

import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Supervisor, free_port
from ext_proc.launch.stack import Stack, start_stack

from .certs import make_ca_and_server_cert
from .support import start_demo

TLS_HOSTNAME = "api.demo.test"


@dataclass
class Gateway:
    url: str
    key: str
    limited_key: str
    expired_key: str
    stack: Stack
    providers: dict[str, int]
    provider_keys: dict[str, str]
    ca_path: Path
    supervisor: Supervisor

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", self.key),  # type: ignore[arg-type]
                             max_retries=0, timeout=30, **kwargs)  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", self.key),  # type: ignore[arg-type]
                                  max_retries=0, timeout=30, **kwargs)  # type: ignore[arg-type]

    def provider_requests(self, name: str) -> list[dict]:
        return self._provider_http(name).get("/_demo/requests").json()

    def clear_provider_requests(self, name: str) -> None:
        self._provider_http(name).delete("/_demo/requests")

    def _provider_http(self, name: str) -> httpx.Client:
        if name == "tls":  # the TLS provider's certificate names TLS_HOSTNAME; connect to loopback, verify that name
            return httpx.Client(base_url=f"https://{TLS_HOSTNAME}:{self.providers[name]}",
                                verify=_loopback_context(self.ca_path))
        return httpx.Client(base_url=f"http://127.0.0.1:{self.providers[name]}")


def _start_provider(supervisor: Supervisor, kind: str, name: str, api_key: str, *tls: str) -> int:
    return start_demo(supervisor, name, kind, api_key, *tls)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    workdir = tmp_path_factory.mktemp("gateway")
    supervisor = Supervisor(log_dir=workdir)
    keys = {name: "sk-test-" + secrets.token_hex(8)
            for name in ("openai-a", "openai-b", "anthropic-a", "tls", "killable")}
    ca, cert, key_file = make_ca_and_server_cert(workdir, TLS_HOSTNAME)
    try:
        ports = {
            "openai-a": _start_provider(supervisor, "openai", "openai-a", keys["openai-a"]),
            "openai-b": _start_provider(supervisor, "openai", "openai-b", keys["openai-b"]),
            "anthropic-a": _start_provider(supervisor, "anthropic", "anthropic-a", keys["anthropic-a"]),
            "tls": _start_provider(supervisor, "openai", "openai-tls", keys["tls"],
                                   "--tls-cert", str(cert), "--tls-key", str(key_file)),
            "killable": _start_provider(supervisor, "openai", "killable", keys["killable"]),
        }
        env = {f"TEST_KEY_{name.upper().replace('-', '_')}": value for name, value in keys.items()}
        client_key, limited_key, expired_key = generate_key(), generate_key(), generate_key()
        config = {
            "listener": {"port": free_port(), "admin_port": free_port()},
            "ext_proc": {"port": free_port(), "processes": 1},
            "backends": [
                _backend("oa", "openai", f"http://127.0.0.1:{ports['openai-a']}/v1", "TEST_KEY_OPENAI_A"),
                _backend("ob", "openai", f"http://127.0.0.1:{ports['openai-b']}/v1", "TEST_KEY_OPENAI_B"),
                _backend("an", "anthropic", f"http://127.0.0.1:{ports['anthropic-a']}", "TEST_KEY_ANTHROPIC_A"),
                {**_backend("oa-quick", "openai", f"http://127.0.0.1:{ports['openai-a']}/v1", "TEST_KEY_OPENAI_A"),
                 "timeout": "1s"},
                _backend("killable", "openai", f"http://127.0.0.1:{ports['killable']}/v1", "TEST_KEY_KILLABLE"),
                _backend("dead", "openai", f"http://127.0.0.1:{free_port()}/v1", "TEST_KEY_OPENAI_A"),
                {**_backend("secure", "openai", f"https://{TLS_HOSTNAME}:{ports['tls']}/v1", "TEST_KEY_TLS"),
                 "connect_to": "127.0.0.1", "ca_file": str(ca)},
            ],
            "routes": [
                _route("gpt-4o-mini", ("oa", "gpt-4o-mini"), ("an", "claude-haiku-4-5"), aliases=["mini"]),
                _route("claude-sonnet-4-5", ("an", "claude-sonnet-4-5"), ("oa", "gpt-4o")),
                _route("openai-pair", ("oa", "gpt-4.1"), ("ob", "gpt-4.1")),
                _route("quick-then-anthropic", ("oa-quick", "gpt-4o-mini"), ("an", "claude-haiku-4-5")),
                _route("anthropic-solo", ("an", "claude-opus-4-1")),
                _route("killable-then-anthropic", ("killable", "gpt-4o-mini"), ("an", "claude-haiku-4-5")),
                _route("dead-then-openai", ("dead", "gpt-4o-mini"), ("ob", "gpt-4o-mini")),
                {"model": "secure-model", "backends": [{"backend": "secure", "model": "gpt-4o-mini"}]},
                {"model": "embed-small", "backends": [{"backend": "oa", "model": "text-embedding-3-small"}]},
            ],
            "virtual_keys": [
                {"id": "test-all", "hash": hash_key(client_key)},
                {"id": "test-limited", "hash": hash_key(limited_key), "models": ["gpt-4o-mini"]},
                {"id": "test-expired", "hash": hash_key(expired_key), "expires_at": "2020-01-01T00:00:00Z"},
            ],
            "requests": {"max_body_bytes": 256 * 1024},
            # The tests sharing this gateway inject failures back to back: cooldowns and ejections would carry one
            # test's failures into the next. They are tested on gateways of their own (test_routing_e2e.py).
            "routing": {"cooldown_max": "1ms"},
        }
        for backend in config["backends"]:
            backend["outlier_detection"] = None
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        stack = start_stack(load_config(config_path), config_path, workdir, supervisor, env=env)
        yield Gateway(url=stack.url, key=client_key, limited_key=limited_key, expired_key=expired_key,
                      stack=stack, providers=ports, provider_keys=keys, ca_path=ca, supervisor=supervisor)
    finally:
        supervisor.stop_all()


def _route(model: str, *chain: tuple[str, str], aliases: list[str] | None = None) -> dict:
    return {"model": model, "aliases": aliases or [], "backends": [{"backend": b, "model": m} for b, m in chain]}


def _backend(backend_id: str, schema: str, base_url: str, key_env: str) -> dict:
    return {"id": backend_id, "schema": schema, "base_url": base_url, "api_key": {"env": key_env}, "timeout": "20s"}


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return gateway.client()




def _loopback_context(ca_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_path))


@pytest.fixture(autouse=True, scope="session")
def _resolve_test_hostname() -> None:
    """Make TLS_HOSTNAME resolve to loopback inside the test process (Envoy uses `connect_to` instead)."""
    original = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list:
        return original("127.0.0.1" if host == TLS_HOSTNAME else host, *args, **kwargs)  # type: ignore[arg-type]

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    yield
    socket.getaddrinfo = original  # type: ignore[assignment]
