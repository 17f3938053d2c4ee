"""The built-in configuration of `babelgate up --demo`: two fake providers, failover both ways, one fresh key."""

from __future__ import annotations

import secrets

from ..auth.virtual_keys import generate_key, hash_key

DEMO_OPENAI = "demo-openai"
DEMO_ANTHROPIC = "demo-anthropic"
OPENAI_KEY_ENV = "BABELGATE_DEMO_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "BABELGATE_DEMO_ANTHROPIC_KEY"


def provider_keys() -> dict[str, str]:
    """Credentials the demo providers demand, handed to the gateway through the environment like real ones."""
    return {OPENAI_KEY_ENV: "sk-demo-" + secrets.token_hex(8), ANTHROPIC_KEY_ENV: "sk-ant-demo-" + secrets.token_hex(8)}


def demo_config(openai_port: int, anthropic_port: int, *, listen_port: int, admin_port: int, ext_proc_port: int,
                processes: int, client_key: str | None = None) -> tuple[dict, str]:
    """The config as data plus the virtual key it admits (generated unless given)."""
    key = client_key or generate_key()
    config = {
        "listener": {"host": "127.0.0.1", "port": listen_port, "admin_port": admin_port},
        "ext_proc": {"host": "127.0.0.1", "port": ext_proc_port, "processes": processes},
        "backends": [
            {"id": DEMO_OPENAI, "schema": "openai", "base_url": f"http://127.0.0.1:{openai_port}/v1",
             "api_key": {"env": OPENAI_KEY_ENV}, "timeout": "60s"},
            {"id": DEMO_ANTHROPIC, "schema": "anthropic", "base_url": f"http://127.0.0.1:{anthropic_port}",
             "api_key": {"env": ANTHROPIC_KEY_ENV}, "timeout": "60s"},
        ],
        "routes": [
            {"model": "gpt-4o-mini", "aliases": ["demo"], "backends": [
                {"backend": DEMO_OPENAI, "model": "gpt-4o-mini"},
                {"backend": DEMO_ANTHROPIC, "model": "claude-haiku-4-5"}]},
            {"model": "claude-sonnet-4-5", "backends": [
                {"backend": DEMO_ANTHROPIC, "model": "claude-sonnet-4-5"},
                {"backend": DEMO_OPENAI, "model": "gpt-4o"}]},
        ],
        "virtual_keys": [{"id": "demo", "hash": hash_key(key), "models": ["*"]}],
    }
    return config, key
