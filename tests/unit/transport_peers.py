"""Peers and servers for the transport tests: a raw-frame HTTP/2 client (hand-built frames over a socket), an h2
library client (its own flow control and state machine), a `GrpcServer` in a thread or in a subprocess (whose memory
is read from /proc), and a throwaway PKI for mutual TLS.

`python -m tests.unit.transport_peers '{"limits": {...}, "max_message_bytes": N}'` runs the subprocess server on
uvloop, as production does, and prints its port.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import hpack

from ext_proc.transport.frames import GOAWAY, HEADERS, PREFACE, RST_STREAM, SETTINGS, TransportLimits, frame
from ext_proc.transport.grpc import Call, GrpcServer, MethodFactory, RpcError, Status, unary

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
PREFIX = struct.Struct(">BL")


def message(payload: bytes) -> bytes:
    """A gRPC length-prefixed message."""
    return PREFIX.pack(0, len(payload)) + payload


def request_headers(path: str, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra]


# -- methods the test servers serve -----------------------------------------------------------------------------------

class Echo:
    """Bidirectional: every message comes back reversed; the call ends when the client's side does."""

    def __init__(self, call: Call, metadata: dict[str, str]) -> None:
        self._call = call

    def on_message(self, message: bytes) -> None:
        self._call.send_message(message[::-1])

    def on_end(self) -> None:
        self._call.finish()

    def on_cancel(self) -> None:
        pass


class Hold:
    """Never answers: the stream stays open (and its partial messages held) until the client resets it."""

    opened = 0
    messages = 0

    def __init__(self, call: Call, metadata: dict[str, str]) -> None:
        Hold.opened += 1

    def on_message(self, message: bytes) -> None:
        Hold.messages += 1

    def on_end(self) -> None:
        pass

    def on_cancel(self) -> None:
        pass


async def _length(request: bytes) -> bytes:
    return str(len(request)).encode()


async def _peer(request: bytes, metadata: dict[str, str]) -> bytes:
    return metadata[":peer"].encode()


def _guarded(call: Call, metadata: dict[str, str]) -> Hold:
    if metadata.get("authorization") != "Bearer right":
        raise RpcError(Status.UNAUTHENTICATED, "no valid credential")
    return Hold(call, metadata)


def _broken(call: Call, metadata: dict[str, str]) -> Hold:
    raise ValueError("a bug in a method factory")


def serving_methods() -> dict[str, MethodFactory]:
    from ext_proc.transport.grpc import unary_with_metadata

    return {"/t.T/Echo": Echo, "/t.T/Hold": Hold, "/t.T/Length": unary(_length),
            "/t.T/Peer": unary_with_metadata(_peer), "/t.T/Guarded": _guarded, "/t.T/Broken": _broken}


# -- a server in a thread ---------------------------------------------------------------------------------------------

class ServerThread:
    """A `GrpcServer` on its own event loop in a thread; `run(coroutine)` and `call(function)` reach into it."""

    def __init__(self, address: str = "127.0.0.1:0", methods: dict[str, MethodFactory] | None = None,
                 ssl_context: Any = None, loop: str = "asyncio", **server_options: Any) -> None:
        """`loop`: "asyncio", or "uvloop" (production's)."""
        self.server = GrpcServer(methods if methods is not None else serving_methods(), **server_options)
        if loop == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.address = address
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.port = self.loop.run_until_complete(self.server.start(address, ssl_context))
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                started.set()
            self.loop.run_forever()

        self.stopped = False
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        started.wait(10)
        if failure:
            self.thread.join(10)
            self.loop.close()
            raise failure[0]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(15)

    def call(self, function: Callable[[], T]) -> T:
        async def inside() -> T:
            return function()

        return self.run(inside())

    def connections(self) -> list[Any]:
        return self.call(lambda: list(self.server._connections))

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.run(self.server.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def started_by(kind: Callable[..., T]) -> Iterator[Callable[..., T]]:
    """For a fixture: `start(**options)` makes a `kind` (a server with a `stop()`); all are stopped when the test
    ends."""
    started: list[T] = []

    def start(**options: Any) -> T:
        started.append(kind(**options))
        return started[-1]

    yield start
    for server in started:
        server.stop()  # type: ignore[attr-defined]


def started_servers() -> Iterator[Callable[..., ServerThread]]:
    """For a fixture: `start(**options)` starts a `ServerThread`; all are stopped when the test ends."""
    yield from started_by(ServerThread)


# -- a server in a subprocess, for memory ------------------------------------------------------------------------------

class ServerProcess:
    """The server in its own process, so that its memory can be read while a peer attacks it."""

    def __init__(self, limits: dict[str, Any] | None = None, max_message_bytes: int | None = None) -> None:
        options: dict[str, Any] = {"limits": limits or {}}
        if max_message_bytes is not None:
            options["max_message_bytes"] = max_message_bytes
        self.process = subprocess.Popen([sys.executable, "-m", "tests.unit.transport_peers", json.dumps(options)],
                                        cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.baseline_kib = self.status_kib("VmRSS")

    def status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for the server process")

    def growth_mib(self) -> float:
        """How far the resident set has ever risen above what it was once the server was ready (VmHWM is the peak)."""
        return (self.status_kib("VmHWM") - self.baseline_kib) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _serve_forever(options: dict[str, Any]) -> None:
    import uvloop

    async def serve() -> None:
        kwargs: dict[str, Any] = {"limits": TransportLimits(**options["limits"])}
        if "max_message_bytes" in options:
            kwargs["max_message_bytes"] = options["max_message_bytes"]
        server = GrpcServer(serving_methods(), **kwargs)
        print(await server.start("127.0.0.1:0"), flush=True)
        await asyncio.Event().wait()

    uvloop.run(serve())


# -- a raw-frame client ------------------------------------------------------------------------------------------------

class Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes


def parse_frames(data: bytes | bytearray) -> tuple[list[Frame], bytes]:
    """Whole frames in `data`, and what is left after them."""
    frames, offset = [], 0
    while len(data) - offset >= 9:
        high, low, kind, flags, stream_id = struct.unpack_from(">HBBBL", data, offset)
        length = (high << 8) | low
        if len(data) - offset - 9 < length:
            break
        frames.append(Frame(kind, flags, stream_id & 0x7FFFFFFF, bytes(data[offset + 9:offset + 9 + length])))
        offset += 9 + length
    return frames, bytes(data[offset:])


def goaway_of(frames: Iterable[Frame]) -> tuple[int, int] | None:
    """(last stream id, error code) of the last GOAWAY (an idle connection sends two: 2^31-1 first)."""
    found = None
    for kind, _, _, payload in frames:
        if kind == GOAWAY:
            found = struct.unpack_from(">LL", payload)
    return found


def resets_of(frames: Iterable[Frame]) -> dict[int, int]:
    return {f.stream_id: struct.unpack(">L", f.payload)[0] for f in frames if f.kind == RST_STREAM}


class RawPeer:
    """An HTTP/2 client that writes whatever frames it is given; a thread reads and parses what comes back."""

    def __init__(self, port: int | None = None, unix_path: str | None = None, preface: bool = True,
                 reader: bool = True, receive_buffer: int | None = None) -> None:
        family = socket.AF_UNIX if unix_path else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(unix_path if unix_path else ("127.0.0.1", port))
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []
        self.eof = threading.Event()
        self._changed = threading.Condition()
        if reader:
            threading.Thread(target=self._read, daemon=True).start()
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, *frames: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(b"".join(frames))
        except OSError:
            return False
        return True

    def headers(self, stream_id: int, path: str, end_stream: bool = False,
                extra: Iterable[tuple[str, str]] = (), flags: int = 0x4) -> bytes:
        """A HEADERS frame opening a gRPC call (the block from this connection's HPACK encoder)."""
        block = self.encoder.encode(request_headers(path, extra), huffman=False)
        return frame(HEADERS, flags | (0x1 if end_stream else 0), stream_id, block)

    def wait_for(self, predicate: Callable[[list[Frame]], Any], timeout: float = 15.0) -> Any:
        """Until `predicate(frames so far)` is truthy (its value), or the connection ended (None)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(self.frames)
                if value or self.eof.is_set():
                    return value or predicate(self.frames)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no answer within {timeout} s; frames: {self.frames[-5:]}")
                self._changed.wait(min(left, 0.2))

    def wait_goaway(self, timeout: float = 15.0) -> tuple[int, int]:
        found = self.wait_for(goaway_of, timeout)
        assert found is not None, f"the connection ended without GOAWAY; frames: {self.frames[-5:]}"
        return found

    def wait_closed(self, timeout: float = 15.0) -> None:
        assert self.eof.wait(timeout), "the server did not close the connection"

    def trailers(self, stream_id: int) -> dict[str, str] | None:
        """The decoded HEADERS frames the server sent on a stream, merged (a trailers-only answer is one)."""
        found: dict[str, str] = {}
        for kind, _, sid, payload in self.frames:
            if kind == HEADERS and sid == stream_id:
                found.update(self.decoder.decode(payload))
        return found or None

    def close(self) -> None:
        self.sock.close()

    def _read(self) -> None:
        rest = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                frames, rest = parse_frames(rest + chunk)
                with self._changed:
                    self.frames.extend(frames)
                    self._changed.notify_all()
        except OSError:
            pass
        with self._changed:
            self.eof.set()
            self._changed.notify_all()


# -- an h2 library client ----------------------------------------------------------------------------------------------

class H2Peer:
    """A client built on the h2 library: its state machine checks our frames, its flow control paces its sends."""

    def __init__(self, port: int) -> None:
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.status: dict[int, str] = {}
        self.reset: dict[int, int] = {}
        self.terminated: int | None = None
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(self, stream_id: int, path: str, extra: Iterable[tuple[str, str]] = ()) -> None:
        self.conn.send_headers(stream_id, request_headers(path, extra))
        self.flush()

    def done(self, stream_id: int) -> bool:
        return stream_id in self.status or stream_id in self.reset or self.terminated is not None

    def pump(self, timeout: float) -> None:
        """Read what has arrived (waiting up to `timeout`) and act on it."""
        import h2.events

        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(30)
        if not data:
            self.terminated = self.terminated if self.terminated is not None else -1
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                headers = dict(event.headers)
                if "grpc-status" in headers:
                    self.status[event.stream_id] = headers["grpc-status"]
            elif isinstance(event, h2.events.StreamReset):
                self.reset[event.stream_id] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event.error_code
        self.flush()

    def send_bodies(self, bodies: dict[int, bytes], deadline: float) -> None:
        """Send each stream its bytes, as the windows allow, round robin; a stream answered or reset stops."""
        import h2.exceptions

        sent = dict.fromkeys(bodies, 0)
        while sent and self.terminated is None and time.monotonic() < deadline:
            progress = False
            for stream_id in list(sent):
                body, offset = bodies[stream_id], sent[stream_id]
                if self.done(stream_id) or offset == len(body):
                    del sent[stream_id]
                    continue
                size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size,
                           len(body) - offset)
                if size > 0:
                    try:
                        self.conn.send_data(stream_id, body[offset:offset + size])
                    except h2.exceptions.StreamClosedError:
                        del sent[stream_id]
                        continue
                    sent[stream_id] = offset + size
                    progress = True
            self.flush()
            self.pump(0.001 if progress else 0.2)

    def close(self) -> None:
        self.sock.close()


# -- mutual TLS --------------------------------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    """A client certificate from another CA."""
    stranger_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed; and a client from another CA."""
    ca_cert, ca_key = _certificate("test CA", None, ca=True)
    other_cert, other_key = _certificate("other CA", None, ca=True)
    files = {
        "ca": ca_cert, "server": _certificate("server", (ca_cert, ca_key), server=True),
        "client": _certificate("client", (ca_cert, ca_key)),
        "stranger": _certificate("client", (other_cert, other_key)),
    }
    paths: dict[str, Path] = {}
    for name, value in files.items():
        if name == "ca":
            (directory / "ca.pem").write_bytes(_pem(value))
            paths["ca"] = directory / "ca.pem"
            continue
        cert, key = value
        paths[f"{name}_cert"] = directory / f"{name}.pem"
        paths[f"{name}_key"] = directory / f"{name}.key"
        paths[f"{name}_cert"].write_bytes(_pem(cert))
        paths[f"{name}_key"].write_bytes(_pem(key))
    return Pki(**paths)


def _pem(value: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(value, "public_bytes"):
        return value.public_bytes(serialization.Encoding.PEM)
    return value.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())


def _certificate(name: str, issuer: tuple[Any, Any] | None, ca: bool = False, server: bool = False) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
        certificate = builder.sign(key, hashes.SHA256())
        return certificate, key
    return builder.sign(issuer_key, hashes.SHA256()), key


if __name__ == "__main__":
    _serve_forever(json.loads(sys.argv[1]))
