"""Which TCP ports a stack binds, and whether another process holds one: checked before anything starts, so a
taken port is one line naming the port, its role and, when /proc can tell, the process holding it (started
regardless, Envoy dies on the listener while its admin port, if also taken, answers `/ready` for the *other* Envoy,
so the stack would report itself up and then crash-loop).

The probe binds with SO_REUSEADDR (as Envoy and gRPC do: a connection in TIME_WAIT is no obstacle) and without
SO_REUSEPORT (gRPC sets it, so a second server on a taken port would otherwise share it without a word).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config.models import Config
from .mcp_bridges import bind_host, stdio_servers
from .processes import LaunchError

LISTENER, ENVOY_ADMIN, ADMIN_API = "the listener", "Envoy admin", "the admin API"
"""Roles of the ports a stack binds, as `PortInUse` names them."""
COMMAND_CHARS = 100
"""How much of a process's command line `PortInUse` quotes."""


class PortInUse(LaunchError):
    """A port the stack needs is taken; found before anything started, so there is nothing to stop."""


@dataclass(frozen=True)
class Claim:
    """A TCP port some process of the stack binds, and what for."""

    host: str
    port: int
    role: str


def stack_claims(config: Config) -> list[Claim]:
    """Every TCP port the processes of a stack for `config` bind (its ext_proc channel chosen, as `start_stack`
    does); port 0 (any free one) claims nothing."""
    listener, server, metrics = config.listener, config.ext_proc, config.telemetry.metrics
    claims = [Claim(listener.host, listener.port, LISTENER), Claim("127.0.0.1", listener.admin_port, ENVOY_ADMIN)]
    if config.admin is not None:
        claims.append(Claim(server.host, config.admin.port, ADMIN_API))
    for index in range(server.processes):
        if server.socket_dir is None:
            claims.append(Claim(server.host, server.port + index, f"ext_proc server {index}"))
        if server.health_port is not None:
            claims.append(Claim(server.host, server.health_port + index, f"ext_proc server {index} health"))
        if metrics.prometheus_port is not None:
            claims.append(Claim(metrics.prometheus_host, metrics.prometheus_port + index,
                                f"ext_proc server {index} metrics"))
    for bridge in stdio_servers(config):
        if bridge.port is not None:
            assert config.mcp is not None
            claims.append(Claim(bind_host(config.mcp.bridge_host), bridge.port, f"the MCP bridge of {bridge.name}"))
    return [claim for claim in claims if claim.port != 0]


def ensure_free(claims: Iterable[Claim]) -> None:
    """PortInUse naming every claimed port another process holds, grouped by the process (when /proc tells)."""
    holders: dict[str | None, list[Claim]] = {}
    for claim in claims:
        if _in_use(claim):
            holders.setdefault(_holder(claim.port), []).append(claim)
    if holders:
        raise PortInUse("; ".join(_taken(taken, holder) for holder, taken in holders.items()))


def _taken(claims: list[Claim], holder: str | None) -> str:
    ports = ", ".join(f"{claim.port} ({claim.role})" for claim in claims)
    by = f" by {holder}" if holder else ""
    return f"port {ports} is already in use{by}" if len(claims) == 1 else f"ports {ports} are already in use{by}"


def _in_use(claim: Claim) -> bool:
    """Only "address in use" counts: an unknown host or a port this user may not bind fails later, where Envoy or
    the server says why."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(claim.host, claim.port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    return False


def _holder(port: int) -> str | None:
    """'pid N (its command)' of the process listening on `port`: Linux's /proc, for processes of this user."""
    sockets = _listening_sockets(port)
    if not sockets:
        return None
    for process in Path("/proc").iterdir():
        if process.name.isdigit() and _holds(process, sockets):
            return _described(int(process.name))
    return None


def _listening_sockets(port: int) -> set[str]:
    """The fd link targets (`socket:[inode]`) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl local_address rem_address st ... inode
                if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                    found.add(f"socket:[{fields[9]}]")
    return found


def _holds(process: Path, sockets: set[str]) -> bool:
    with contextlib.suppress(OSError):  # another user's process, or one that just exited
        for fd in (process / "fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in sockets:
                    return True
    return False


def _described(pid: int) -> str:
    """A babelgate child (Envoy, a server) is named with the `babelgate up` that started it."""
    described = f"pid {pid} ({_command(pid)})"
    with contextlib.suppress(OSError, IndexError, ValueError):
        parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        command = _command(parent)
        if " ext_proc up" in command or "babelgate up" in command:
            described += f", started by pid {parent} ({command})"
    return described


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return "?"
    text = " ".join([Path(argv[0]).name, *argv[1:]]) if argv else "?"
    return text if len(text) <= COMMAND_CHARS else text[:COMMAND_CHARS - 3] + "..."
