"""The bridges of stdio MCP servers (`mcp.servers` entries with `command`), as supervised children of `babelgate up`
or `babelgate serve`: `python -m ext_proc.mcp_bridge --name <server> --port <port> -- <command> <args...>`.

Decisions worth knowing before changing this file:
- A bridge starts before the ext_proc servers and Envoy: Envoy's cluster and the servers' `McpService` both need its
  port. A server without `port` gets its bridge on `--port 0`, and the port it reports is filled into the config
  (`Bridges.start` returns that config); a restart comes back on the same port (`reported_port_argv`).
- The ext_proc servers read a config *file*: when a port was filled in, `babelgate up` gives them a copy of the
  user's file with the ports written in (`write_served_config`, in the work directory, relative paths made
  absolute), and rewrites it on every reload it accepts, so a reload keeps the ports. Without port-less stdio
  servers they read the user's file itself, as before.
- One bridge serves one child and one MCP session; every ext_proc process of one host shares it. A dead bridge (its
  child died, or it was killed) is restarted by the supervisor like any child; the gateway's upstream session then
  gets a 404 and opens a new one.
- A bridge serves only the gateway: it wants a bearer token derived from the deployment's shared key
  (`auth.sealing.mcp_bridge_key`), which the ext_proc servers send (`mcp/service.py`); anything else reaching its
  port gets 401.
- The server's `env` SecretRefs are read when its bridge starts and passed in the bridge's environment (the child
  inherits it); the bridge's restarts get the same environment. A reload restarts a bridge only when its server's
  `command`, `args`, `env` (the references, not the values behind them) or `port` changed: a rotated secret
  reaches the server when its bridge next starts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..auth.credentials import read_secret
from ..auth.sealing import mcp_bridge_key
from ..config.loading import resolve_paths  # the loader's own rule for relative paths
from ..config.models import Config, McpServer
from .processes import Supervisor, python_module, reported_port_argv

log = logging.getLogger(__name__)

BRIDGE_MODULE = "ext_proc.mcp_bridge"
BRIDGE_KEY_ENV = "BABELGATE_MCP_BRIDGE_KEY"
SERVED_CONFIG = "babelgate.served.yaml"
"""The copy of the user's config with the bridges' ports filled in, in the work directory."""
ANY_ADDRESS = "0.0.0.0"


def child_name(server: str) -> str:
    return f"mcp-bridge-{server}"


def stdio_servers(config: Config) -> list[McpServer]:
    return [s for s in config.mcp.servers if s.command is not None] if config.mcp is not None else []


def needs_ports(config: Config) -> bool:
    """A stdio server without `port`: its bridge's port is only known once it runs."""
    return any(server.port is None for server in stdio_servers(config))


def bind_host(bridge_host: str) -> str:
    """Where a bridge listens: `mcp.bridge_host` when it is an address, else every address (a service name in
    compose or Kubernetes names this host from the outside)."""
    try:
        ipaddress.ip_address(bridge_host)
    except ValueError:
        return ANY_ADDRESS
    return bridge_host


def bridge_argv(server: McpServer, port: int, host: str, *, keyed: bool = False) -> list[str]:
    """`keyed`: the bridge wants the gateway's bearer (`BRIDGE_KEY_ENV` in its environment)."""
    assert server.command is not None
    key = ["--api-key-env", BRIDGE_KEY_ENV] if keyed else []
    return python_module(BRIDGE_MODULE, "--name", server.name, "--host", host, "--port", str(port), *key, "--",
                         *server.command, *server.args)



def bridge_env(config: Config, server: McpServer) -> dict[str, str]:
    """The server's `env`, its secrets read now (CredentialError naming the YAML path when one is missing)."""
    assert config.mcp is not None
    index = config.mcp.servers.index(server)
    return {name: read_secret(ref, config.origin.at(("mcp", "servers", index, "env", name)))
            for name, ref in server.env.items()}


def _spec(server: McpServer) -> tuple[object, ...]:
    """What makes a bridge: a reload that changes none of it keeps the running one."""
    env = tuple(sorted((name, ref.model_dump_json()) for name, ref in server.env.items()))
    return (tuple(server.command or ()), tuple(server.args), env, server.port)


@dataclass
class Bridges:
    """The running bridges of one stack, by server name: (what they run, the port they serve)."""

    supervisor: Supervisor
    shared_key: str | None = None
    """The deployment's shared key (`BABELGATE_METADATA_KEY`): each bridge then wants a bearer derived from it."""
    running: dict[str, tuple[tuple[object, ...], int]] = field(default_factory=dict)

    def start(self, config: Config) -> Config:
        """Bring the bridges in line with `config` (start new or changed ones, stop the ones it dropped) and return
        `config` with every stdio server's port filled in."""
        wanted = {server.name: server for server in stdio_servers(config)}
        for name in [name for name, (spec, _) in self.running.items()
                     if name not in wanted or spec != _spec(wanted[name])]:
            self.supervisor.stop_child(child_name(name))
            del self.running[name]
        for server in wanted.values():
            if server.name not in self.running:
                self.running[server.name] = (_spec(server), self._start_one(config, server))
        return with_ports(config, {name: port for name, (_, port) in self.running.items()})

    def _start_one(self, config: Config, server: McpServer) -> int:
        assert config.mcp is not None
        keyed = self.shared_key is not None
        argv = bridge_argv(server, server.port or 0, bind_host(config.mcp.bridge_host), keyed=keyed)
        env = bridge_env(config, server)
        if self.shared_key is not None:
            env[BRIDGE_KEY_ENV] = mcp_bridge_key(self.shared_key, server.name)
        _, ready = self.supervisor.start_reporting(child_name(server.name), argv, env=env,
                                                   restart_argv=reported_port_argv, expendable=True)
        log.info("MCP server %s: its bridge serves port %s", server.name, ready["port"])
        return int(ready["port"])


def with_ports(config: Config, ports: dict[str, int]) -> Config:
    """`config` with the stdio servers' ports set from `ports` (by server name)."""
    if config.mcp is None:
        return config
    servers = [server.model_copy(update={"port": ports[server.name]})
               if server.command is not None and server.name in ports else server for server in config.mcp.servers]
    return config.model_copy(update={"mcp": config.mcp.model_copy(update={"servers": servers})})


def write_served_config(source: Path, config: Config, workdir: Path) -> Path:
    """The user's config file as written, relative paths made absolute and the bridges' ports filled in, where the
    ext_proc servers read it (replaced in one rename: they may be reading it)."""
    data = yaml.safe_load(source.read_text())
    resolve_paths(data, source.parent)
    ports = {server.name: server.port for server in stdio_servers(config)}
    for entry in (data.get("mcp") or {}).get("servers") or []:
        if entry.get("command") is not None and ports.get(entry.get("name")) is not None:
            entry["port"] = ports[entry["name"]]
    target = workdir / SERVED_CONFIG
    temporary = target.with_suffix(".tmp")
    temporary.write_text("# written by `babelgate up` from " + str(source) + ", with the MCP bridges' ports\n"
                         + yaml.safe_dump(data, sort_keys=False))
    os.replace(temporary, target)
    return target
