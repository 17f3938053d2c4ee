"""The built-in configuration of `babelgate up --demo`: one fake provider per wire format, failover between the
OpenAI and Anthropic ones, two demo MCP tool servers behind the gateway's `/mcp` (one over Streamable HTTP with a
bearer the gateway adds, one stdio behind its bridge), and one fresh virtual key."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..auth.virtual_keys import generate_key, hash_key


class DemoProvider(NamedTuple):
    name: str
    kind: str


PROVIDERS = (
    DemoProvider("demo-openai", "openai"),
    DemoProvider("demo-anthropic", "anthropic"),
    DemoProvider("demo-bedrock", "bedrock"),
    DemoProvider("demo-gemini", "gemini"),
    DemoProvider("demo-vertex", "vertex"),
    DemoProvider("demo-azure", "azure"),
    DemoProvider("demo-cohere", "cohere"),
)
DEMO_OPENAI, DEMO_ANTHROPIC = PROVIDERS[0].name, PROVIDERS[1].name
KEY_ENV = "BABELGATE_DEMO_PROVIDER_KEY"
MCP_TOOLS = "demo-tools"
"""The demo MCP server over Streamable HTTP (`python -m ext_proc.demo --kind mcp`); its tools are `tools__*`."""
MCP_LOCAL = "local"
"""The demo stdio MCP server (`python -m ext_proc.demo.mcp_stdio`), behind its bridge; its tools are `local__*`."""
MCP_KEY_ENV = "BABELGATE_DEMO_MCP_KEY"
"""The bearer the demo HTTP MCP server demands; the gateway sends it from this variable."""
ADMIN_ENV = "BABELGATE_ADMIN_KEY"
"""The demo's admin API credential: this variable when set, else a fresh one."""


def provider_secrets() -> tuple[dict[str, str], dict[str, str]]:
    """(the key each demo provider demands, the environment that hands those keys to the gateway)."""
    shared = "sk-demo-" + secrets.token_hex(8)
    access_key = "AKIADEMO" + secrets.token_hex(6).upper()
    token = "ya29.demo-" + secrets.token_hex(8)
    keys = {p.name: shared for p in PROVIDERS}
    keys["demo-bedrock"] = access_key   # the demo checks the SigV4 access key id
    keys["demo-vertex"] = token         # ... and hands out this token at /token, then demands it
    env = {KEY_ENV: shared, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    return keys, env


def mcp_secret() -> str:
    return "mcp-demo-" + secrets.token_hex(8)


def mcp_section(tools_port: int) -> dict:
    """Both demo MCP servers; the stdio one has no `port`: `babelgate up` picks its bridge's."""
    return {"servers": [
        {"name": MCP_TOOLS, "prefix": "tools", "url": f"http://127.0.0.1:{tools_port}/mcp",
         "bearer": {"env": MCP_KEY_ENV}},
        {"name": MCP_LOCAL, "command": [sys.executable, "-m", "ext_proc.demo.mcp_stdio"]},
    ]}


def write_service_account(path: Path, token_uri: str) -> Path:
    """A throwaway service-account key whose token endpoint is the demo Vertex provider."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({"type": "service_account", "project_id": "babelgate-demo", "private_key_id": "demo",
                                "private_key": pem, "client_email": "demo@babelgate-demo.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": token_uri}))
    path.chmod(0o600)
    return path


def admin_credential(environ: dict[str, str]) -> str:
    return environ.get(ADMIN_ENV) or "bg-admin-" + secrets.token_urlsafe(24)


DEMO_TEMPLATE = {
    "name": "summarize", "labels": ["production"], "model": "gpt-4o-mini", "temperature": 0,
    "variables": ["text"],
    "messages": [{"role": "system", "content": "Summarize what the user sends in one sentence."},
                 {"role": "user", "content": "{{text}}"}],
}
"""The demo's prompt template (`babelgate up --demo` shows how to call it)."""


def demo_config(ports: dict[str, int], workdir: Path, *, listen_port: int, admin_port: int, ext_proc_port: int,
                processes: int, client_key: str | None = None, admin_api_port: int | None = None,
                mcp_tools_port: int | None = None) -> tuple[dict, str]:
    """The config as data plus the virtual key it admits (generated unless given). With `admin_api_port`, the admin
    API serves there (credential from $BABELGATE_ADMIN_KEY) and keeps the keys it makes in the work directory. With
    `mcp_tools_port` (where the demo HTTP MCP server listens), `/mcp` serves both demo MCP servers."""
    key = client_key or generate_key()

    def url(name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{ports[name]}{path}"

    secret = {"env": KEY_ENV}
    service_account = write_service_account(workdir / "demo-service-account.json", url("demo-vertex", "/token"))
    gcp = {"project": "babelgate-demo", "service_account_file": str(service_account)}
    backends = [
        {"id": "demo-openai", "schema": "openai", "base_url": url("demo-openai", "/v1"), "api_key": secret},
        {"id": "demo-anthropic", "schema": "anthropic", "base_url": url("demo-anthropic"), "api_key": secret},
        {"id": "demo-bedrock", "schema": "bedrock-converse", "base_url": url("demo-bedrock"),
         "aws": {"region": "us-east-1"}},
        {"id": "demo-bedrock-claude", "schema": "bedrock-anthropic", "base_url": url("demo-bedrock"),
         "aws": {"region": "us-east-1"}},
        {"id": "demo-gemini", "schema": "gemini", "base_url": url("demo-gemini"), "api_key": secret},
        {"id": "demo-vertex", "schema": "vertex-gemini", "base_url": url("demo-vertex"),
         "gcp": {**gcp, "location": "us-central1"}},
        {"id": "demo-vertex-claude", "schema": "vertex-anthropic", "base_url": url("demo-vertex"),
         "gcp": {**gcp, "location": "us-east5"}},
        {"id": "demo-azure", "schema": "azure-openai", "base_url": url("demo-azure"), "api_key": secret},
        {"id": "demo-cohere", "schema": "cohere", "base_url": url("demo-cohere"), "api_key": secret},
    ]

    def route(model: str, *chain: tuple[str, str], aliases: tuple[str, ...] = ()) -> dict:
        return {"model": model, "aliases": list(aliases), "backends": [{"backend": b, "model": m} for b, m in chain]}

    routes = [
        route("gpt-4o-mini", ("demo-openai", "gpt-4o-mini"), ("demo-anthropic", "claude-haiku-4-5"), aliases=("demo",)),
        route("claude-sonnet-4-5", ("demo-anthropic", "claude-sonnet-4-5"), ("demo-openai", "gpt-4o")),
        route("nova-pro", ("demo-bedrock", "amazon.nova-pro-v1:0")),
        route("bedrock-claude", ("demo-bedrock-claude", "anthropic.claude-sonnet-4-5-20250929-v1:0")),
        route("gemini-2.5-flash", ("demo-gemini", "gemini-2.5-flash")),
        route("vertex-gemini-pro", ("demo-vertex", "gemini-2.5-pro")),
        route("vertex-claude", ("demo-vertex-claude", "claude-sonnet-4-5@20250929")),
        route("azure-gpt-4o", ("demo-azure", "gpt-4o")),
        route("command-a", ("demo-cohere", "command-a-03-2025")),
        route("text-embedding-3-small", ("demo-openai", "text-embedding-3-small")),
        route("titan-embed", ("demo-bedrock", "amazon.titan-embed-text-v2:0")),
        route("gemini-embedding", ("demo-gemini", "gemini-embedding-001")),
    ]
    for entry in routes:  # the exact response cache on every chat route (temperature-0 requests)
        if "embed" not in entry["model"]:
            entry["cache"] = {"scope": "key", "ttl": "600s"}
    config = {
        "listener": {"host": "127.0.0.1", "port": listen_port, "admin_port": admin_port},
        "ext_proc": {"host": "127.0.0.1", "port": ext_proc_port, "processes": processes},
        "backends": backends,
        "routes": routes,
        "virtual_keys": [{"id": "demo", "hash": hash_key(key), "models": ["*"]}],
        "prompts": [DEMO_TEMPLATE],
    }
    if mcp_tools_port is not None:
        config["mcp"] = mcp_section(mcp_tools_port)
    if admin_api_port is not None:
        config["keys_file"] = str(workdir / "demo-keys.yaml")
        config["admin"] = {"port": admin_api_port, "via_envoy": True,  # the demo shows JSON through Envoy
                           "credentials": [{"name": "demo-admin", "secret": {"env": ADMIN_ENV}}]}
    return config, key
