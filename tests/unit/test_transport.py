"""Babelgate's own HTTP/2 + gRPC server, checked against an independent implementation: grpcio's client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.transport import http2
from ext_proc.transport.grpc import Call, RpcError, Status, unary
from ext_proc.transport.health import SERVING, HealthService
from tests.eventually import eventually

from .transport_peers import RawPeer, ServerThread


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


@pytest.fixture
def health() -> HealthService:
    return HealthService()


@pytest.fixture
def server(health: HealthService) -> Iterator[ServerThread]:
    Echo.events = []
    running = ServerThread(methods={"/t.T/Echo": Echo, "/t.T/Fail": unary(_fail), "/t.T/Double": unary(_double),
                                    **health.methods()})
    running.call(lambda: health.set("", SERVING))
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
    eventually(lambda: "cancel" in Echo.events, what="the handler hears of the cancel")
    assert Echo.events[-1] == "cancel"


def test_health_check_and_watch(server: ServerThread, channel: grpc.Channel, health: HealthService) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
    with pytest.raises(grpc.RpcError) as failure:
        stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(watch).status == SERVING
    server.loop.call_soon_threadsafe(health.set, "", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()


def test_watching_made_up_service_names_holds_nothing(server: ServerThread, channel: grpc.Channel,
                                                      health: HealthService) -> None:
    """The health port may be open to anyone (probes): a Watch of a name the server doesn't serve is answered
    SERVICE_UNKNOWN and leaves no entry behind."""
    stub = health_pb2_grpc.HealthStub(channel)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service=f"made-up-{i}"), timeout=5) for i in range(50)]
    assert {next(watch).status for watch in watches} == {health_pb2.HealthCheckResponse.SERVICE_UNKNOWN}
    for watch in watches:
        watch.cancel()
    assert not any(name.startswith("made-up") for name in health._watchers)


def test_ping_is_acknowledged_with_its_payload(server: ServerThread) -> None:
    peer = RawPeer(server.port)
    peer.send(http2.frame(http2.PING, 0, 0, b"12345678"))
    assert peer.wait_for(lambda frames: (http2.PING, http2.ACK, 0, b"12345678") in frames)
    peer.close()


def test_a_client_that_does_not_speak_http2_is_sent_away(server: ServerThread) -> None:
    peer = RawPeer(server.port, preface=False)
    peer.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert peer.wait_goaway()[1] == http2.PROTOCOL_ERROR
    peer.close()


def test_stopping_the_server_lets_open_streams_finish(server: ServerThread, channel: grpc.Channel) -> None:
    gate = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"before"
        gate.wait(5)
        yield b"after"

    call = _echo(channel)(requests(), timeout=10)
    assert next(call) == b"erofeb"
    stopping = asyncio.run_coroutine_threadsafe(server.server.stop(grace=5), server.loop)
    eventually(lambda: server.call(lambda: all(c._going_away for c in server.server._connections)),
               what="the server sends GOAWAY")
    gate.set()
    assert list(call) == [b"retfa"]
    stopping.result(5)
