"""Babelgate's own HTTP/2 + gRPC server, checked against an independent implementation: grpcio's client."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.transport import http2
from ext_proc.transport.grpc import Call, GrpcServer, RpcError, Status, unary
from ext_proc.transport.health import SERVING, HealthService


class Echo:
    """Bidirectional: every message comes back reversed; `size:N` asks for an N-byte reply."""

    events: list[str] = []

    def __init__(self, call: Call, metadata: dict[str, str]) -> None:
        self._call = call
        Echo.events.append(f"open {metadata.get('x-tag', '')}")

    def on_message(self, message: bytes) -> None:
        if message.startswith(b"size:"):
            self._call.send_message(b"x" * int(message[5:]))
        else:
            self._call.send_message(message[::-1])

    def on_end(self) -> None:
        Echo.events.append("end")
        self._call.finish()

    def on_cancel(self) -> None:
        Echo.events.append("cancel")


async def _fail(request: bytes) -> bytes:
    raise RpcError(Status.UNAVAILABLE, "down for maintenance ✓ 100%")


async def _double(request: bytes) -> bytes:
    return request * 2


class ServerThread:
    def __init__(self) -> None:
        self.health = HealthService()
        self.server = GrpcServer({"/t.T/Echo": Echo, "/t.T/Fail": unary(_fail), "/t.T/Double": unary(_double),
                                  **self.health.methods()})
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.server.start("127.0.0.1:0"))
            self.health.set("", SERVING)
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    Echo.events = []
    running = ServerThread()
    yield running
    running.stop()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def _echo(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream("/t.T/Echo")


def test_a_bidirectional_stream_answers_every_message_in_order(channel: grpc.Channel) -> None:
    replies = list(_echo(channel)(iter([b"abc", b"", b"hello"]), metadata=(("x-tag", "one"),), timeout=5))
    assert replies == [b"cba", b"", b"olleh"]
    assert Echo.events == ["open one", "end"]


def test_many_concurrent_streams_on_one_connection(channel: grpc.Channel) -> None:
    calls = [_echo(channel)(iter([f"n{i}".encode()]), timeout=10)
             for i in range(200)]
    assert [next(call) for call in calls] == [f"n{i}".encode()[::-1] for i in range(200)]


def test_large_messages_cross_frames_and_flow_control_windows(channel: grpc.Channel) -> None:
    """grpcio's client starts with a 64 KiB window: a 4 MB reply must wait for WINDOW_UPDATEs, and a 3 MiB
    request arrives split over many frames."""
    big = bytes(range(256)) * (3 * 4096)
    replies = list(_echo(channel)(iter([big, b"size:4000000", b"ok"]), timeout=20))
    assert replies[0] == big[::-1]
    assert len(replies[1]) == 4_000_000 and replies[2] == b"ko"


def test_unary_methods_reply_and_fail_with_status_and_message(channel: grpc.Channel) -> None:
    assert channel.unary_unary("/t.T/Double")(b"ab", timeout=5) == b"abab"
    with pytest.raises(grpc.RpcError) as failure:
        channel.unary_unary("/t.T/Fail")(b"", timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "down for maintenance ✓ 100%"


def test_an_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        channel.unary_unary("/t.T/Nope")(b"", timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_client_cancel_reaches_the_handler(channel: grpc.Channel) -> None:
    gate = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"first"
        gate.wait(5)

    call = _echo(channel)(requests(), timeout=10)
    assert next(call) == b"tsrif"
    call.cancel()
    gate.set()
    deadline = time.monotonic() + 5
    while "cancel" not in Echo.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Echo.events[-1] == "cancel"


def test_health_check_and_watch(server: ServerThread, channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
    with pytest.raises(grpc.RpcError) as failure:
        stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(watch).status == SERVING
    server.loop.call_soon_threadsafe(server.health.set, "", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


def _raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(http2.PREFACE + http2.frame(http2.SETTINGS, 0, 0))
    return sock


def _read_frames(sock: socket.socket, until_type: int) -> list[tuple[int, int, int, bytes]]:
    frames, data = [], b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return frames
        data += chunk
        while len(data) >= 9:
            high, low, kind, flags, stream = struct.unpack(">HBBBL", data[:9])
            length = (high << 8) | low
            if len(data) < 9 + length:
                break
            frames.append((kind, flags, stream, data[9:9 + length]))
            data = data[9 + length:]
            if kind == until_type:
                return frames


def test_ping_is_acknowledged_with_its_payload(server: ServerThread) -> None:
    with _raw_connection(server.port) as sock:
        sock.sendall(http2.frame(http2.PING, 0, 0, b"12345678"))
        frames = _read_frames(sock, http2.PING)
    assert frames[-1] == (http2.PING, http2.ACK, 0, b"12345678")


def test_a_client_that_does_not_speak_http2_is_sent_away(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = _read_frames(sock, http2.GOAWAY)
    kind, _, _, payload = frames[-1]
    assert kind == http2.GOAWAY and struct.unpack(">L", payload[4:8])[0] == http2.PROTOCOL_ERROR


def test_stopping_the_server_lets_open_streams_finish(server: ServerThread, channel: grpc.Channel) -> None:
    gate = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"before"
        gate.wait(5)
        yield b"after"

    call = _echo(channel)(requests(), timeout=10)
    assert next(call) == b"erofeb"
    stopping = asyncio.run_coroutine_threadsafe(server.server.stop(grace=5), server.loop)
    time.sleep(0.2)
    gate.set()
    assert list(call) == [b"retfa"]
    stopping.result(5)
