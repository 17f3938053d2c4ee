"""How an ext_proc server process listens, and why it may: the channel between Envoy and the server is a trust
boundary (anything that can open an ext_proc stream can ask for provider credentials; see `ExtProcServer`).

- a Unix socket (mode 0600 in a 0700 directory; the transport serves only its own user and root);
- TCP with mutual TLS (only certificates from the configured CA);
- plaintext TCP behind a service mesh that authenticates peers (`peers: mesh`);
- plaintext TCP on a loopback address: served, with a warning at start (any local process can connect);
- plaintext TCP elsewhere: refused.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..config.models import ExtProcServer

log = logging.getLogger(__name__)


class ChannelError(Exception):
    """The server would listen where anyone could ask it for credentials."""


@dataclass(frozen=True)
class Channel:
    address: str
    """`host:port` or `unix:/path`."""
    ssl_context: ssl.SSLContext | None = None

    @property
    def described(self) -> str:
        return self.address + (" (mutual TLS)" if self.ssl_context is not None else "")


def server_channel(settings: ExtProcServer, *, host: str, port: int, index: int, socket: Path | None = None,
                   peers: str | None = None) -> Channel:
    """Where process `index` listens. `socket`, `host`, `port` and `peers` come from the command line (they win
    over the config: `--peers mesh` serves plaintext TCP whatever channel the config names)."""
    if peers == "mesh":
        return Channel(f"{host}:{port}")
    if socket is None and settings.socket_dir is not None:
        socket = settings.socket_path(index)
    if socket is not None:
        prepare_socket_dir(socket.parent)
        return Channel(f"unix:{socket}")
    if settings.tls is not None:
        from ..auth.certificates import server_context

        return Channel(f"{host}:{port}", server_context(settings.tls))
    if settings.peers == "mesh":
        return Channel(f"{host}:{port}")
    if not _is_loopback(host):
        raise ChannelError(
            f"the ext_proc server would listen in plaintext on {host}:{port}, where anything that reaches the address "
            "could ask it for provider credentials: configure `ext_proc.tls` (`babelgate certs` makes the files), "
            "`ext_proc.socket_dir` (Envoy on the same host), or `ext_proc.peers: mesh` behind a mesh that "
            "authenticates peers")
    log.warning("the ext_proc server listens in plaintext on %s:%d: any process on this host can reach it and ask "
                "for provider credentials; prefer `ext_proc.socket_dir` or `ext_proc.tls`", host, port)
    return Channel(f"{host}:{port}")


def prepare_socket_dir(directory: Path) -> None:
    """Create the directory 0700, or close an existing one of ours to others; another user's is refused (its
    owner could swap the sockets)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise ChannelError(f"{directory} belongs to another user: ext_proc sockets go into a directory of this "
                           "user's own")
    directory.chmod(0o700)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
