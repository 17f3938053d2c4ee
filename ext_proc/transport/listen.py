"""Listening sockets for `GrpcServer`: a Unix socket that is never reachable with loose permissions, and the uid of
the process at the other end of one.

Why bind, chmod, then listen: `bind` creates the socket file with the process umask's mode, but until `listen` every
`connect` to it is refused, so chmod-ing to 0600 between the two leaves no moment at which another user could connect
(the umask is process-wide and changing it would race other threads). `loop.create_unix_server(sock=...)` calls
`listen`. Peer credentials come from SO_PEERCRED (Linux): the kernel records them at `connect`, they cannot be forged.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

SOCKET_MODE = 0o600
_CREDENTIALS = struct.Struct("3i")
"""struct ucred: pid, uid, gid."""


def default_allowed_uids() -> frozenset[int]:
    """Who may use a Unix socket unless told otherwise: the server's own user, and root."""
    return frozenset((os.getuid(), 0))


def bind_unix_socket(path: str) -> socket.socket:
    """A stream socket bound to `path` with mode 0600, not yet listening. A stale socket file (nobody listening) is
    replaced; a live one, or a file that is not a socket, is an error."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, SOCKET_MODE)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process that connected a Unix socket; None when the kernel does not say."""
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    except (OSError, AttributeError):
        return None
    uid: int = _CREDENTIALS.unpack(credentials)[1]
    return uid


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "not a socket; refusing to replace it", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening on this socket", path)
