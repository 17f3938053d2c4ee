"""gRPC on top of `http2`: length-prefixed messages, method dispatch by path, status in trailers.

An application registers, per method path, a factory that receives the `Call` and the request metadata and returns
an `RpcHandler`; the handler gets each request message as bytes and answers through `Call.send_message` and
`Call.finish`. Only the identity (uncompressed) message encoding is supported, which is what Envoy and grpcio send
unless told otherwise.

Limits, for a client that is not trusted (the HTTP/2 ones are in `http2`):
- A factory runs on the stream's HEADERS, before any message is read, and may refuse the call by raising `RpcError`
  (authentication): the call is answered at once, trailers-only, and whatever the client sends on it afterwards is
  dropped unread. Any other exception from a factory is INTERNAL, and logged.
- A message whose 5-byte prefix announces more than `max_message_bytes` is answered RESOURCE_EXHAUSTED as soon as
  the prefix is read: the rest of the frame that carried it is dropped, and nothing after it is read.
- The partial messages of all streams of a connection are bounded by `TransportLimits.max_buffered_bytes`: the
  stream whose bytes would pass it is answered RESOURCE_EXHAUSTED (and reset), the others go on.
- A header list over `TransportLimits.max_header_list_size` is answered RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import ssl
import struct
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from .frames import DEFAULT_LIMITS, TransportLimits
from .http2 import Http2Connection
from .listen import bind_unix_socket, default_allowed_uids

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_PREFIX = struct.Struct(">BL")


class Status(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """Raised by a unary method to answer with a non-OK status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RpcHandler(Protocol):
    def on_message(self, message: bytes) -> None: ...
    def on_end(self) -> None:
        """The client sent its last message."""
    def on_cancel(self) -> None:
        """The client went away (reset or lost connection) before the call finished."""


MethodFactory = Callable[["Call", dict[str, str]], RpcHandler]


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 section 5.1 integer encoding."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal_header(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing: it never touches the dynamic table, so a block built from
    these is valid on every connection at any time and can be built once."""
    name_bytes, value_bytes = name.encode("ascii"), value.encode("ascii")
    return (b"\x00" + _integer(len(name_bytes), 7) + name_bytes
            + _integer(len(value_bytes), 7) + value_bytes)


_STATUS_200 = b"\x88"  # ":status: 200", entry 8 of the HPACK static table
RESPONSE_HEADERS = _STATUS_200 + literal_header("content-type", "application/grpc")
_OK_TRAILERS = literal_header("grpc-status", "0")


def _status_block(status: Status, message: str) -> bytes:
    if status == Status.OK and not message:
        return _OK_TRAILERS
    block = literal_header("grpc-status", str(int(status)))
    if message:
        block += literal_header("grpc-message", _percent_encode(message))
    return block


def _percent_encode(message: str) -> str:
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode("utf-8"))


class Call:
    """One RPC on one HTTP/2 stream; also the stream's handler for the connection."""

    __slots__ = ("_buffer", "_connection", "_headers_sent", "_held", "_max_message", "_stream_id", "done", "handler")

    def __init__(self, connection: Http2Connection, stream_id: int, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._max_message = max_message_bytes
        self._headers_sent = False
        self._buffer: bytearray | None = None
        self._held = 0
        """Bytes of `_buffer` counted in the connection's `partial_bytes`."""
        self.done = False
        self.handler: RpcHandler | None = None

    def send_message(self, message: bytes) -> None:
        if self.done:
            return
        if not self._headers_sent:
            self._headers_sent = True
            self._connection.send_headers(self._stream_id, RESPONSE_HEADERS)
        self._connection.send_data(self._stream_id, _PREFIX.pack(0, len(message)) + message)

    def finish(self, status: Status = Status.OK, message: str = "") -> None:
        if self.done:
            return
        self.done = True
        if self._buffer is not None:
            self._release()
        block = _status_block(status, message)
        if not self._headers_sent:
            block = RESPONSE_HEADERS + block  # a trailers-only response
        self._connection.send_headers(self._stream_id, block, end_stream=True)

    # -- http2.StreamHandler ----------------------------------------------------------------------------------------

    def data(self, chunk: bytes, end_stream: bool) -> None:
        handler = self.handler
        if handler is None or self.done:
            return
        try:
            if chunk:
                self._messages(chunk, handler)
            if end_stream and not self.done:
                if self._buffer:
                    self.finish(Status.INTERNAL, "the stream ended inside a message")
                else:
                    handler.on_end()
        except Exception:
            log.exception("a gRPC handler failed")
            self.finish(Status.INTERNAL, "the server failed to process this call")

    def reset(self) -> None:
        if self.done:
            return
        self.done = True
        self._release()
        if self.handler is not None:
            self.handler.on_cancel()

    def _messages(self, chunk: bytes, handler: RpcHandler) -> None:
        buffer = self._buffer
        if buffer is None:
            # The usual case: a chunk that is exactly one whole message, handed on without copying into a buffer.
            size = len(chunk)
            if 5 <= size <= self._max_message + 5 and chunk[0] == 0 and _PREFIX.unpack_from(chunk)[1] == size - 5:
                handler.on_message(chunk[5:])
                return
            buffer = self._buffer = bytearray()
        buffer += chunk
        while len(buffer) >= 5:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed:
                self.finish(Status.UNIMPLEMENTED, "compressed messages are not supported")
                return
            if length > self._max_message:
                self.finish(Status.RESOURCE_EXHAUSTED, f"message larger than {self._max_message} bytes")
                return
            if len(buffer) - 5 < length:
                break
            message = bytes(buffer[5:5 + length])
            del buffer[:5 + length]
            handler.on_message(message)
            if self.done:
                return
        self._hold(len(buffer))

    def _hold(self, size: int) -> None:
        """Count this call's partial message in its connection's; past the connection's bound, refuse the call."""
        connection = self._connection
        connection.partial_bytes += size - self._held
        self._held = size
        if not size:
            self._buffer = None
        elif connection.partial_bytes > connection.limits.max_buffered_bytes:
            log.info("refusing a call from %s: partial messages on its connection over %d bytes",
                     connection.peer, connection.limits.max_buffered_bytes)
            self.finish(Status.RESOURCE_EXHAUSTED, "too many partially received messages on this connection")

    def _release(self) -> None:
        if self._held:
            self._connection.partial_bytes -= self._held
            self._held = 0
        self._buffer = None


PEER_METADATA_KEY = ":peer"
"""Set by the server to the client's address; a pseudo-header name, so no client header can stand in for it."""


def unary(method: Callable[[bytes], Awaitable[bytes]]) -> MethodFactory:
    """A unary method: one request message in, one reply (or an `RpcError`) out."""

    async def ignoring_metadata(request: bytes, metadata: dict[str, str]) -> bytes:
        return await method(request)

    return unary_with_metadata(ignoring_metadata)


def unary_with_metadata(method: Callable[[bytes, dict[str, str]], Awaitable[bytes]]) -> MethodFactory:
    """A unary method that also reads the call's metadata (credentials, the peer's address)."""

    class _Unary:
        __slots__ = ("_call", "_metadata", "_request", "_task")

        def __init__(self, call: Call, metadata: dict[str, str]) -> None:
            self._call = call
            self._metadata = metadata
            self._request = b""
            self._task: asyncio.Task[None] | None = None

        def on_message(self, message: bytes) -> None:
            self._request = message

        def on_end(self) -> None:
            self._task = asyncio.get_running_loop().create_task(self._run())

        def on_cancel(self) -> None:
            if self._task is not None:
                self._task.cancel()

        async def _run(self) -> None:
            try:
                reply = await method(self._request, self._metadata)
            except RpcError as error:
                self._call.finish(error.status, error.message)
                return
            except Exception:
                log.exception("unary gRPC method failed")
                self._call.finish(Status.INTERNAL, "the server failed to process this call")
                return
            self._call.send_message(reply)
            self._call.finish()

    return _Unary


class _Refused:
    """The handler of a call answered before any message: what the client still sends is dropped."""

    __slots__ = ()

    def on_message(self, message: bytes) -> None:
        pass

    def on_end(self) -> None:
        pass

    def on_cancel(self) -> None:
        pass


_REFUSED = _Refused()


class GrpcServer:
    """Listens on `host:port` (port 0 picks one) or `unix:/path`; serves the registered methods.

    `limits` bound what each connection may ask (`http2.TransportLimits`), `max_message_bytes` each request message.
    A Unix socket is created with mode 0600 and serves only peers whose uid is in `allowed_uids` (default: this
    process's uid, and root).
    """

    def __init__(self, methods: dict[str, MethodFactory], *, limits: TransportLimits = DEFAULT_LIMITS,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, allowed_uids: Collection[int] | None = None) -> None:
        self._methods = methods
        self._limits = limits
        self._max_message_bytes = max_message_bytes
        self._allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else default_allowed_uids()
        self._server: asyncio.Server | None = None
        self._connections: set[Http2Connection] = set()
        self._unix_socket: tuple[str, int] | None = None
        """(path, inode) of the Unix socket file we created, removed on stop if it is still ours."""
        self.port = 0

    async def start(self, address: str, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen; with `ssl_context`, every connection is TLS (a failed handshake never reaches HTTP/2). The port
        (0 for a Unix socket)."""
        loop = asyncio.get_running_loop()
        handshake_timeout = self._limits.preface_timeout if ssl_context is not None else None
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            sock = bind_unix_socket(path)
            self._unix_socket = (path, os.stat(path).st_ino)
            self._server = await loop.create_unix_server(self._protocol, sock=sock, backlog=1024, ssl=ssl_context,
                                                         ssl_handshake_timeout=handshake_timeout)
            return 0
        host, _, port = address.rpartition(":")
        self._server = await loop.create_server(self._protocol, host.strip("[]") or None, int(port),
                                                reuse_address=True, backlog=1024, ssl=ssl_context,
                                                ssl_handshake_timeout=handshake_timeout)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let open calls finish for up to `grace` seconds, then close every connection."""
        if self._server is not None:
            self._server.close()
            self._remove_unix_socket()
        for connection in list(self._connections):
            connection.go_away()
        waits = [asyncio.ensure_future(c.closed.wait()) for c in self._connections]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for wait in pending:
                wait.cancel()
        for connection in list(self._connections):
            connection.close()

    @property
    def open_connections(self) -> int:
        """Connections past TLS and the peer check, not yet closed."""
        return len(self._connections)

    def _remove_unix_socket(self) -> None:
        if self._unix_socket is None:
            return
        path, inode = self._unix_socket
        self._unix_socket = None
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass

    def _protocol(self) -> Http2Connection:
        return Http2Connection(self._open_stream, on_close=self._connections.discard, limits=self._limits,
                               allowed_uids=self._allowed_uids, on_open=self._connections.add)

    def _open_stream(self, connection: Http2Connection, stream_id: int,
                     headers: list[tuple[str, str]] | None) -> Call:
        call = Call(connection, stream_id, self._max_message_bytes)
        call.handler = _REFUSED
        if headers is None:
            call.finish(Status.RESOURCE_EXHAUSTED,
                        f"request metadata larger than {self._limits.max_header_list_size} bytes")
            return call
        metadata = dict(headers)
        metadata[PEER_METADATA_KEY] = connection.peer
        path = metadata.get(":path", "")
        factory = self._methods.get(path)
        if factory is None or metadata.get(":method") != "POST":
            call.finish(Status.UNIMPLEMENTED, f"unknown method {path}")
            return call
        try:
            call.handler = factory(call, metadata)
        except RpcError as error:
            call.finish(error.status, error.message)
        except Exception:
            log.exception("opening a call to %s failed", path)
            call.finish(Status.INTERNAL, "the server failed to process this call")
        return call
