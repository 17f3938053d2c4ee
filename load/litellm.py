"""The LiteLLM proxy as a baseline (scenario f), in its own virtualenv so it never touches Babelgate's environment.

Facts this relies on: releases from 1.106.3 need a newer `certifi` than the registry here serves, so the version is
pinned; the proxy refuses to start without a master key; without LITELLM_LOCAL_MODEL_COST_MAP it tries to download its
price list.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from ext_proc.launch.processes import Child, Supervisor, free_port

VERSION = "1.106.2"
VENV = Path(os.environ.get("BABELGATE_LITELLM_VENV") or Path(__file__).parent / ".venv-litellm")
MASTER_KEY = "sk-litellm-bench-master"


def ensure_installed() -> Path:
    """The proxy's executable, installing it into load/.venv-litellm the first time (a few minutes)."""
    executable = VENV / "bin" / "litellm"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={VERSION}"], check=True)
    return executable


def start(supervisor: Supervisor, workdir: Path, upstream_port: int, redis_port: int | None = None,
          ) -> tuple[str, Child]:
    """One worker in front of the same fake upstream; returns its chat completions URL and process.

    Without `redis_port`: model `bench-openai`, passed through to the upstream's OpenAI endpoint (Babelgate's (b)).
    With it: model `bench-anthropic`, translated to the upstream's Anthropic Messages endpoint, with requests-per-minute
    and tokens-per-minute limits kept in that Redis (`usage-based-routing-v2`: usage read before each call and
    counted after it) - the job Babelgate's full flow (e) does. LiteLLM's per-key limits need its Postgres database;
    its per-deployment limits are the Redis-backed ones it has without one.
    """
    executable = ensure_installed()
    port = free_port()
    name = "litellm-limited" if redis_port else "litellm"
    config = workdir / f"{name}.yaml"
    if redis_port is None:
        settings: dict = {"model_list": [{"model_name": "bench-openai", "litellm_params": {
            "model": "openai/bench-model", "api_base": f"http://127.0.0.1:{upstream_port}/v1",
            "api_key": "sk-bench"}}]}
    else:
        settings = {"model_list": [{"model_name": "bench-anthropic", "litellm_params": {
            "model": "anthropic/bench-model", "api_base": f"http://127.0.0.1:{upstream_port}",
            "api_key": "sk-bench", "rpm": 10**9, "tpm": 10**12}}],
            "router_settings": {"routing_strategy": "usage-based-routing-v2", "redis_host": "127.0.0.1",
                                "redis_port": redis_port}}
    config.write_text(yaml.safe_dump(settings))
    child = supervisor.start(name, [str(executable), "--config", str(config), "--host", "127.0.0.1",
                                    "--port", str(port), "--num_workers", "1"],
                             env={"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                  "LITELLM_LOG": "ERROR"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        supervisor.check()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}/v1/chat/completions", child
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"LiteLLM did not become ready; see {child.log_path}")
