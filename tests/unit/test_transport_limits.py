"""What a hostile peer can make the HTTP/2 + gRPC server hold or do, over real sockets: header blocks, streams,
flow control, partial messages, control-frame floods, a peer that never reads, silent and idle connections. The
memory tests run the server in a subprocess and read its peak resident set from /proc while the attack runs; after
each attack a well-behaved connection is still served."""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from ext_proc.transport import http2
from ext_proc.transport.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    TransportLimits,
    frame,
)
from tests.eventually import eventually

from .transport_peers import (
    H2Peer,
    Hold,
    RawPeer,
    ServerProcess,
    message,
    request_headers,
    resets_of,
    started_by,
    started_servers,
)

MEMORY_BOUND_MIB = 64
U32 = struct.Struct(">L")


serve = pytest.fixture(started_servers)


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    yield from started_by(ServerProcess)


def _ping(peer: RawPeer, payload: bytes = b"are-you?") -> None:
    """Send a PING and wait for its ACK: everything sent before it has been processed."""
    peer.send(frame(PING, 0, 0, payload))
    assert peer.wait_for(lambda frames: (PING, http2.ACK, 0, payload) in frames), "no PING ACK"


def _call_length(port: int, size: int = 1000) -> None:
    """A well-behaved client (grpcio) on a new connection is served."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert channel.unary_unary("/t.T/Length")(b"x" * size, timeout=30) == str(size).encode()


def _status(peer: RawPeer, stream_id: int) -> str | None:
    trailers = peer.trailers(stream_id)
    return trailers.get("grpc-status") if trailers else None


# -- header blocks ----------------------------------------------------------------------------------------------------

def test_a_header_list_over_the_limit_is_refused_and_the_hpack_table_stays_in_step(serve: Callable) -> None:
    server = serve()
    peer = RawPeer(server.port)
    big = [("x-big", "v" * 70_000), ("x-small", "indexed after the big one")]
    peer.send(peer.headers(1, "/t.T/Length", end_stream=True, extra=big))
    assert peer.wait_for(lambda frames: _status(peer, 1)) == "8"  # RESOURCE_EXHAUSTED
    # The encoder now refers to `x-small` by its dynamic-table index: only a decoder that decoded the refused block
    # in full finds it.
    peer.send(peer.headers(3, "/t.T/Length", extra=[("x-small", "indexed after the big one")]),
              frame(DATA, END_STREAM, 3, message(b"abc")))
    assert peer.wait_for(lambda frames: _status(peer, 3)) == "0"
    assert peer.wait_for(lambda frames: [f for f in frames if f.kind == DATA and f.stream_id == 3])[0].payload \
        == message(b"3")


def test_a_header_block_over_four_times_the_limit_ends_the_connection(serve: Callable) -> None:
    server = serve()
    peer = RawPeer(server.port)
    block = peer.encoder.encode(request_headers("/t.T/Hold", [("x-big", "v" * 300_000)]), huffman=False)
    peer.send(frame(HEADERS, END_HEADERS, 1, block))
    assert peer.wait_goaway()[1] == http2.ENHANCE_YOUR_CALM
    _call_length(server.port)


def test_an_hpack_bomb_ends_the_connection_before_it_is_inflated(serve: Callable) -> None:
    """One 4 KB table entry referenced a thousand times: 4 KB on the wire, 4 MB decoded."""
    server = serve()
    peer = RawPeer(server.port)
    block = peer.encoder.encode(request_headers("/t.T/Hold", [("x-a", "v" * 4000)]), huffman=False)
    peer.send(frame(HEADERS, END_HEADERS, 1, block + b"\xbe" * 1000))
    assert peer.wait_goaway()[1] == http2.ENHANCE_YOUR_CALM
    _call_length(server.port)


def test_a_continuation_flood_is_cut_off_and_memory_stays_bounded(server_process: Callable) -> None:
    server = server_process()
    peer = RawPeer(server.port)
    peer.send(frame(HEADERS, 0, 1, peer.encoder.encode(request_headers("/t.T/Hold"))))
    chunk = frame(CONTINUATION, 0, 1, b"\x00\x01a\x01b" * 3276)  # 16 KiB of literal headers
    sent = 0
    while sent < 300 << 20 and not peer.eof.is_set() and peer.send(*[chunk] * 64):
        sent += 64 * len(chunk)
    assert peer.wait_goaway()[1] == http2.ENHANCE_YOUR_CALM
    assert server.growth_mib() < MEMORY_BOUND_MIB
    _call_length(server.port)


# -- streams ----------------------------------------------------------------------------------------------------------

def test_streams_over_the_advertised_limit_are_refused_then_a_flood_of_them_ends_the_connection(
        server_process: Callable) -> None:
    server = server_process()
    peer = RawPeer(server.port)
    settings = peer.wait_for(lambda frames: [f for f in frames if f.kind == SETTINGS and not f.flags])[0]
    advertised = dict(struct.iter_unpack(">HL", settings.payload))
    assert advertised[http2.SETTINGS_MAX_CONCURRENT_STREAMS] == 1000
    assert advertised[http2.SETTINGS_MAX_HEADER_LIST_SIZE] == 64 * 1024
    peer.send(*[peer.headers(stream_id, "/t.T/Hold") for stream_id in range(1, 2001, 2)])
    _ping(peer)
    assert not resets_of(peer.frames)
    peer.send(peer.headers(2001, "/t.T/Hold"))
    assert peer.wait_for(lambda frames: resets_of(frames)) == {2001: http2.REFUSED_STREAM}
    stream_id = 2003
    while stream_id < 200_000 and not peer.eof.is_set():
        if not peer.send(*[peer.headers(sid, "/t.T/Hold") for sid in range(stream_id, stream_id + 2000, 2)]):
            break
        stream_id += 2000
    assert peer.wait_goaway()[1] == http2.ENHANCE_YOUR_CALM
    assert server.growth_mib() < MEMORY_BOUND_MIB
    _call_length(server.port)


def test_a_reset_stream_frees_its_place(serve: Callable) -> None:
    server = serve(limits=TransportLimits(max_concurrent_streams=2))
    peer = RawPeer(server.port)
    peer.send(peer.headers(1, "/t.T/Hold"), peer.headers(3, "/t.T/Hold"), peer.headers(5, "/t.T/Hold"))
    assert peer.wait_for(lambda frames: resets_of(frames)) == {5: http2.REFUSED_STREAM}
    peer.send(frame(RST_STREAM, 0, 1, U32.pack(http2.CANCEL)), peer.headers(7, "/t.T/Length", end_stream=True))
    assert peer.wait_for(lambda frames: _status(peer, 7)) == "0"


# -- flow control and messages ----------------------------------------------------------------------------------------

def test_a_40_mib_message_gets_through_the_windows(serve: Callable) -> None:
    server = serve()
    _call_length(server.port, 40 << 20)


def test_many_concurrent_streams_of_mixed_sizes_never_stall(serve: Callable) -> None:
    """Envoy's pattern: many streams on one connection, a few KiB to a few MiB each, all in flight together."""
    server = serve()
    sizes = [random.choice((300, 4000, 60_000, 700_000, 2_500_000)) for _ in range(80)]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        method = channel.unary_unary("/t.T/Length")
        calls = [method.future(b"y" * size, timeout=60) for size in sizes]
        assert [call.result() for call in calls] == [str(size).encode() for size in sizes]


def test_a_message_announcing_more_than_the_maximum_is_refused_before_its_payload(serve: Callable) -> None:
    server = serve(max_message_bytes=1 << 20)
    peer = RawPeer(server.port)
    peer.send(peer.headers(1, "/t.T/Hold"), frame(DATA, 0, 1, struct.pack(">BL", 0, 2 << 20) + b"first bytes"))
    assert peer.wait_for(lambda frames: _status(peer, 1)) == "8"
    assert peer.wait_for(lambda frames: resets_of(frames)) == {1: http2.NO_ERROR}
    assert [c.partial_bytes for c in server.connections()] == [0]


def test_partial_messages_past_the_connection_bound_are_refused_and_memory_stays_bounded(
        server_process: Callable) -> None:
    """40 streams each sending 5 MiB of a 6 MiB message, pacing themselves by the windows (the h2 library): past the
    16 MiB bound, streams are answered RESOURCE_EXHAUSTED; the connection lives on."""
    server = server_process(limits={"max_buffered_bytes": 16 << 20})
    peer = H2Peer(server.port)
    body = struct.pack(">BL", 0, 6 << 20) + b"z" * (5 << 20)
    streams = list(range(1, 81, 2))
    for stream_id in streams:
        peer.open(stream_id, "/t.T/Hold")
    peer.send_bodies(dict.fromkeys(streams, body), deadline=time.monotonic() + 60)
    refused = [sid for sid in streams if peer.status.get(sid) == "8"]
    assert peer.terminated is None
    assert len(refused) >= len(streams) - 3, peer.status
    assert server.growth_mib() < MEMORY_BOUND_MIB
    peer.open(81, "/t.T/Length")
    peer.conn.send_data(81, message(b"still here"), end_stream=True)
    peer.flush()
    eventually(lambda: peer.pump(0.2) or peer.status.get(81) == "0", what="a call on the same connection")
    _call_length(server.port)


def test_replies_waiting_for_a_window_the_peer_never_grants_are_bounded(serve: Callable) -> None:
    server = serve(limits=TransportLimits(max_buffered_bytes=1 << 20))
    peer = RawPeer(server.port)
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", http2.SETTINGS_INITIAL_WINDOW_SIZE, 0)),
              peer.headers(1, "/t.T/Echo"), *[frame(DATA, 0, 1, message(b"r" * 100_000)) for _ in range(15)])
    assert peer.wait_for(lambda frames: resets_of(frames)) == {1: http2.ENHANCE_YOUR_CALM}
    assert not [f for f in peer.frames if f.kind == DATA]
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", http2.SETTINGS_INITIAL_WINDOW_SIZE, 65535)),
              peer.headers(3, "/t.T/Length"), frame(DATA, END_STREAM, 3, message(b"next")))
    assert peer.wait_for(lambda frames: _status(peer, 3)) == "0"


# -- floods -----------------------------------------------------------------------------------------------------------

def _flood(peer: RawPeer, kind: str) -> list[bytes]:
    if kind == "ping":
        return [frame(PING, 0, 0, b"%08d" % i) for i in range(5000)]
    if kind == "settings":
        return [frame(SETTINGS, 0, 0)] * 5000
    if kind == "window_update":
        return [frame(WINDOW_UPDATE, 0, 0, U32.pack(1))] * 5000
    if kind == "priority":
        return [frame(PRIORITY, 0, 1, b"\0\0\0\0\x10")] * 5000
    if kind == "empty_data":
        return [peer.headers(1, "/t.T/Hold"), *[frame(DATA, 0, 1)] * 5000]
    if kind == "empty_continuation":
        return [frame(HEADERS, 0, 1, peer.encoder.encode(request_headers("/t.T/Hold"))),
                *[frame(CONTINUATION, 0, 1)] * 5000]
    assert kind == "rapid_reset"
    return [f for sid in range(1, 10_001, 2) for f in (peer.headers(sid, "/t.T/Hold"),
                                                        frame(RST_STREAM, 0, sid, U32.pack(http2.CANCEL)))]


@pytest.mark.parametrize("kind", ["ping", "settings", "window_update", "priority", "empty_data",
                                  "empty_continuation", "rapid_reset"])
def test_a_control_frame_flood_ends_the_connection(serve: Callable, kind: str) -> None:
    server = serve()
    peer = RawPeer(server.port)
    peer.send(*_flood(peer, kind))
    assert peer.wait_goaway()[1] == http2.ENHANCE_YOUR_CALM
    peer.wait_closed()
    _call_length(server.port)


def test_envoy_like_traffic_never_trips_the_flood_guards(serve: Callable) -> None:
    """Envoy ends every ext_proc stream with END_STREAM and then RST_STREAM; it pings now and then, and may send
    SETTINGS. Three thousand such streams in one burst, on one connection, are all answered."""
    server = serve()
    peer = RawPeer(server.port)
    burst: list[bytes] = [frame(SETTINGS, 0, 0, struct.pack(">HL", http2.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20))]
    for stream_id in range(1, 6001, 2):
        burst += [peer.headers(stream_id, "/t.T/Echo"), frame(DATA, 0, stream_id, message(b"req")),
                  frame(DATA, END_STREAM, stream_id), frame(RST_STREAM, 0, stream_id, U32.pack(http2.CANCEL))]
        if stream_id % 1000 == 1:
            burst.append(frame(PING, 0, 0, b"keepaliv"))
    peer.send(*burst)
    _ping(peer)
    assert peer.wait_for(lambda frames: sum(1 for f in frames if f.kind == HEADERS and f.flags & END_STREAM) == 3000)
    assert not any(f.kind == http2.GOAWAY for f in peer.frames)


# -- a peer that does not read ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_peer_that_never_reads_cannot_make_the_server_buffer_its_acks(serve: Callable, loop: str) -> None:
    server = serve(limits=TransportLimits(control_frames_per_second=10**9), loop=loop)
    peer = RawPeer(server.port, reader=False, receive_buffer=16384)
    peer.sock.setblocking(False)
    pings = b"".join(frame(PING, 0, 0, b"%08d" % i) for i in range(4096))
    sent = 0
    deadline = time.monotonic() + 60
    while sent < 200 << 20 and time.monotonic() < deadline:
        try:
            sent += peer.sock.send(pings)
        except BlockingIOError:
            import select
            if not select.select([], [peer.sock], [], 2.0)[1]:
                break  # the server has stopped reading
    connection = server.connections()[0]
    assert sent < 200 << 20, "the server kept reading from a peer that never reads"
    assert server.call(lambda: connection.write_buffer_size) < 1 << 20
    assert not server.call(lambda: connection._transport.is_reading())
    peer.close()


# -- silent and idle connections ---------------------------------------------------------------------------------------

def test_a_connection_that_never_sends_the_preface_is_closed(serve: Callable) -> None:
    server = serve(limits=TransportLimits(preface_timeout=0.5))
    peer = RawPeer(server.port, preface=False)
    peer.wait_closed()
    assert peer.frames[0].kind == SETTINGS
    eventually(lambda: server.server.open_connections == 0, what="the server forgets the connection")


def test_an_idle_connection_is_sent_away_but_one_with_an_open_stream_is_not(serve: Callable) -> None:
    server = serve(limits=TransportLimits(idle_timeout=0.5))
    busy = RawPeer(server.port)
    busy.send(busy.headers(1, "/t.T/Hold"))
    eventually(lambda: Hold.opened, what="the busy stream is open")
    idle = RawPeer(server.port)
    idle.wait_closed()
    goaways = [struct.unpack_from(">LL", f.payload) for f in idle.frames if f.kind == http2.GOAWAY]
    assert goaways == [(2**31 - 1, http2.NO_ERROR), (0, http2.NO_ERROR)]
    _ping(busy)
    busy.close()


def test_a_stream_opened_while_an_idle_connection_drains_is_served(serve: Callable,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The peer opens its stream between the two GOAWAYs: 1 s apart in production, 5 s here, since a busy machine can
    # take most of a second to get the first one to the peer and the stream back.
    monkeypatch.setattr(http2, "_DRAIN_DELAY", 5.0)
    server = serve(limits=TransportLimits(idle_timeout=0.5))
    peer = RawPeer(server.port)
    peer.wait_for(lambda frames: any(f.kind == http2.GOAWAY for f in frames))
    peer.send(peer.headers(1, "/t.T/Length"), frame(DATA, END_STREAM, 1, message(b"late")))
    assert peer.wait_for(lambda frames: _status(peer, 1)) == "0"
    peer.wait_closed()
    assert [struct.unpack_from(">LL", f.payload) for f in peer.frames if f.kind == http2.GOAWAY][-1] \
        == (1, http2.NO_ERROR)


def test_tcp_nodelay_is_set_on_accepted_connections(serve: Callable) -> None:
    server = serve()
    peer = RawPeer(server.port)
    _ping(peer)
    connection = server.connections()[0]
    sock = server.call(lambda: connection._transport.get_extra_info("socket"))
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
