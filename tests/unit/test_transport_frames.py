"""Malformed frames, one kind per case, answered with the GOAWAY or RST_STREAM code RFC 9113 §6 names; and random
frame sequences, from which no exception escapes the protocol. The connection is driven in-process through a fake
transport: each case is a few milliseconds."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Iterator

import hpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ext_proc.transport import http2
from ext_proc.transport.frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    TransportLimits,
    frame,
)
from ext_proc.transport.grpc import GrpcServer

from .transport_peers import Frame, goaway_of, message, parse_frames, request_headers, resets_of, serving_methods

U32 = struct.Struct(">L")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__({})
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class Driven:
    """A server connection fed bytes directly; what it wrote is parsed back into frames."""

    def __init__(self, limits: TransportLimits | None = None) -> None:
        server = GrpcServer(serving_methods(), limits=limits or TransportLimits())
        self.connection = server._protocol()
        self.transport = FakeTransport()
        self.connection.connection_made(self.transport)
        self.encoder = hpack.Encoder()

    def feed(self, *frames: bytes) -> None:
        self.connection.data_received(b"".join(frames))

    def request(self, stream_id: int, path: str = "/t.T/Hold", flags: int = END_HEADERS) -> bytes:
        return frame(HEADERS, flags, stream_id, self.encoder.encode(request_headers(path)))

    def frames(self) -> list[Frame]:
        return parse_frames(self.transport.written)[0]


def _driven(limits: TransportLimits | None = None) -> Driven:
    driven = Driven(limits)
    driven.feed(PREFACE, frame(SETTINGS, 0, 0))
    return driven


def _setting(identifier: int, value: int) -> bytes:
    return struct.pack(">HL", identifier, value)


Step = Callable[[Driven], list[bytes]]
OPEN_1: Step = lambda d: [d.request(1)]  # noqa: E731
HALF_CLOSED_1: Step = lambda d: [d.request(1, flags=END_HEADERS | END_STREAM)]  # noqa: E731

MALFORMED: list[tuple[str, Step | None, Step, tuple[str, int, int]]] = [
    # (name, setup, the bad frame, expected: ("goaway", 0, code) or ("rst", stream, code))
    ("ping_of_7_bytes", None, lambda d: [frame(PING, 0, 0, b"1234567")], ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("ping_on_a_stream", None, lambda d: [frame(PING, 0, 1, b"12345678")], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("settings_on_a_stream", None, lambda d: [frame(SETTINGS, 0, 1)], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("settings_ack_with_payload", None, lambda d: [frame(SETTINGS, http2.ACK, 0, _setting(4, 1))],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("settings_of_5_bytes", None, lambda d: [frame(SETTINGS, 0, 0, b"\0\x04\0\0\0")],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("settings_enable_push_2", None, lambda d: [frame(SETTINGS, 0, 0, _setting(2, 2))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("settings_initial_window_2_pow_31", None, lambda d: [frame(SETTINGS, 0, 0, _setting(4, 2**31))],
     ("goaway", 0, http2.FLOW_CONTROL_ERROR)),
    ("settings_max_frame_size_too_small", None, lambda d: [frame(SETTINGS, 0, 0, _setting(5, 16383))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("settings_max_frame_size_too_large", None, lambda d: [frame(SETTINGS, 0, 0, _setting(5, 2**24))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("settings_with_100_entries", None, lambda d: [frame(SETTINGS, 0, 0, _setting(1, 4096) * 100)],
     ("goaway", 0, http2.ENHANCE_YOUR_CALM)),
    ("settings_window_overflowing_an_open_stream",
     lambda d: [d.request(1), frame(WINDOW_UPDATE, 0, 1, U32.pack(2**31 - 65536))],
     lambda d: [frame(SETTINGS, 0, 0, _setting(4, 65536))], ("goaway", 0, http2.FLOW_CONTROL_ERROR)),
    ("window_update_of_0_on_the_connection", None, lambda d: [frame(WINDOW_UPDATE, 0, 0, U32.pack(0))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("window_update_of_0_on_a_stream", OPEN_1, lambda d: [frame(WINDOW_UPDATE, 0, 1, U32.pack(0))],
     ("rst", 1, http2.PROTOCOL_ERROR)),
    ("window_update_of_3_bytes", None, lambda d: [frame(WINDOW_UPDATE, 0, 0, b"\0\0\1")],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("window_update_overflowing_the_connection", None, lambda d: [frame(WINDOW_UPDATE, 0, 0, U32.pack(2**31 - 1))],
     ("goaway", 0, http2.FLOW_CONTROL_ERROR)),
    ("window_update_overflowing_a_stream", OPEN_1, lambda d: [frame(WINDOW_UPDATE, 0, 1, U32.pack(2**31 - 1))],
     ("rst", 1, http2.FLOW_CONTROL_ERROR)),
    ("window_update_on_an_idle_stream", None, lambda d: [frame(WINDOW_UPDATE, 0, 9, U32.pack(1))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("rst_stream_of_3_bytes", OPEN_1, lambda d: [frame(RST_STREAM, 0, 1, b"\0\0\0")],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("rst_stream_on_stream_0", None, lambda d: [frame(RST_STREAM, 0, 0, U32.pack(8))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("rst_stream_on_an_idle_stream", OPEN_1, lambda d: [frame(RST_STREAM, 0, 5, U32.pack(8))],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("priority_of_4_bytes", OPEN_1, lambda d: [frame(PRIORITY, 0, 1, b"\0\0\0\3")],
     ("rst", 1, http2.FRAME_SIZE_ERROR)),
    ("priority_on_stream_0", None, lambda d: [frame(PRIORITY, 0, 0, b"\0\0\0\3\x10")],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("priority_on_itself", OPEN_1, lambda d: [frame(PRIORITY, 0, 1, b"\0\0\0\1\x10")],
     ("rst", 1, http2.PROTOCOL_ERROR)),
    ("headers_depending_on_itself", None,
     lambda d: [frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 3,
                      b"\0\0\0\3\x10" + d.encoder.encode(request_headers("/t.T/Hold")))],
     ("rst", 3, http2.PROTOCOL_ERROR)),
    ("goaway_of_7_bytes", None, lambda d: [frame(GOAWAY, 0, 0, b"\0" * 7)], ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("goaway_on_a_stream", None, lambda d: [frame(GOAWAY, 0, 1, b"\0" * 8)], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("data_on_stream_0", None, lambda d: [frame(DATA, 0, 0, b"x")], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("data_on_an_idle_stream", None, lambda d: [frame(DATA, 0, 7, b"x")], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("data_on_a_half_closed_stream", HALF_CLOSED_1, lambda d: [frame(DATA, 0, 1, b"x")],
     ("rst", 1, http2.STREAM_CLOSED)),
    ("data_padding_longer_than_the_frame", OPEN_1, lambda d: [frame(DATA, PADDED, 1, b"\x05abc")],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("data_padded_without_a_pad_length", OPEN_1, lambda d: [frame(DATA, PADDED, 1)],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("headers_on_stream_0", None, lambda d: [d.request(0)], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("headers_on_an_even_stream", None, lambda d: [d.request(2)], ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("headers_on_a_lower_stream_id", lambda d: [d.request(5)], lambda d: [d.request(3)],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("headers_on_a_half_closed_stream", HALF_CLOSED_1, lambda d: [d.request(1, flags=END_HEADERS | END_STREAM)],
     ("rst", 1, http2.STREAM_CLOSED)),
    ("trailers_without_end_stream", OPEN_1, lambda d: [d.request(1)], ("rst", 1, http2.PROTOCOL_ERROR)),
    ("headers_padding_longer_than_the_frame", None, lambda d: [frame(HEADERS, END_HEADERS | PADDED, 1, b"\x09\x82")],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("headers_too_short_for_priority", None, lambda d: [frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\0\0")],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
    ("headers_with_a_bad_hpack_index", None, lambda d: [frame(HEADERS, END_HEADERS, 1, b"\xff\xff\x7f")],
     ("goaway", 0, http2.COMPRESSION_ERROR)),
    ("continuation_without_headers", None, lambda d: [frame(CONTINUATION, END_HEADERS, 1, b"\x82")],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("continuation_on_another_stream", None,
     lambda d: [frame(HEADERS, 0, 1, b"\x82"), frame(CONTINUATION, END_HEADERS, 3, b"\x86")],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("ping_inside_a_header_block", None, lambda d: [frame(HEADERS, 0, 1, b"\x82"), frame(PING, 0, 0, b"1" * 8)],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("push_promise_from_a_client", OPEN_1, lambda d: [frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2\x82")],
     ("goaway", 0, http2.PROTOCOL_ERROR)),
    ("frame_over_the_advertised_size", None, lambda d: [struct.pack(">HBBBL", 0x1000, 0x01, DATA, 0, 1)],
     ("goaway", 0, http2.FRAME_SIZE_ERROR)),
]


@pytest.mark.parametrize(("setup", "bad", "expected"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_a_malformed_frame_is_answered_with_the_rfc_error(setup: Step | None, bad: Step,
                                                          expected: tuple[str, int, int]) -> None:
    async def scenario() -> None:
        driven = _driven()
        if setup is not None:
            driven.feed(*setup(driven))
        assert goaway_of(driven.frames()) is None and not resets_of(driven.frames())
        driven.feed(*bad(driven))
        kind, stream_id, code = expected
        if kind == "goaway":
            found = goaway_of(driven.frames())
            assert found is not None and found[1] == code
            assert driven.transport.closing
        else:
            assert resets_of(driven.frames()) == {stream_id: code}
            assert goaway_of(driven.frames()) is None and not driven.transport.closing
            _still_serving(driven)

    asyncio.run(scenario())


def test_data_past_a_stream_window_is_a_stream_flow_control_error() -> None:
    async def scenario() -> None:
        driven = _driven(TransportLimits(stream_window=65535))
        driven.feed(driven.request(1), driven.request(3), frame(DATA, 0, 1, b"x" * 65536))
        assert resets_of(driven.frames()) == {1: http2.FLOW_CONTROL_ERROR}
        driven.feed(frame(DATA, 0, 3, b"x" * 65535))
        _still_serving(driven)

    asyncio.run(scenario())


def test_data_past_the_connection_window_is_a_connection_flow_control_error() -> None:
    async def scenario() -> None:
        driven = _driven(TransportLimits(connection_window=65535, stream_window=1 << 20))
        driven.feed(driven.request(1), frame(DATA, 0, 1, message(b"x" * 65531)), frame(DATA, 0, 1, b"y"))
        found = goaway_of(driven.frames())
        assert found is not None and found[1] == http2.FLOW_CONTROL_ERROR

    asyncio.run(scenario())


def test_a_malformed_preface_never_reaches_the_frame_parser() -> None:
    async def scenario() -> None:
        driven = Driven()
        driven.feed(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        found = goaway_of(driven.frames())
        assert found is not None and found[1] == http2.PROTOCOL_ERROR

    asyncio.run(scenario())


def _still_serving(driven: Driven) -> None:
    before = len(driven.frames())
    driven.feed(frame(PING, 0, 0, b"stillup!"))
    assert (PING, http2.ACK, 0, b"stillup!") in driven.frames()[before:]


# -- random frame sequences --------------------------------------------------------------------------------------------

STREAM_IDS = st.sampled_from([1, 1, 1, 3, 3, 5, 7, 0, 2, 9, 2**31 - 1])
REQUEST = b"<request>"
"""Marks a HEADERS payload to be replaced by a request block from the connection's encoder."""

raw_frames = st.tuples(st.integers(0, 12), st.integers(0, 255), STREAM_IDS, st.binary(max_size=40))
plausible_frames = st.one_of(
    st.tuples(st.just(HEADERS), st.sampled_from([END_HEADERS, END_HEADERS | END_STREAM, 0, PADDED | END_HEADERS]),
              STREAM_IDS, st.just(REQUEST)),
    st.tuples(st.just(CONTINUATION), st.sampled_from([0, END_HEADERS]), STREAM_IDS, st.just(b"\x82")),
    st.tuples(st.just(DATA), st.sampled_from([0, END_STREAM, PADDED]), STREAM_IDS,
              st.binary(max_size=20).map(message) | st.binary(max_size=8)),
    st.tuples(st.just(WINDOW_UPDATE), st.just(0), STREAM_IDS, st.integers(0, 2**32 - 1).map(U32.pack)),
    st.tuples(st.just(SETTINGS), st.sampled_from([0, http2.ACK]), st.just(0),
              st.lists(st.tuples(st.integers(0, 10), st.integers(0, 2**32 - 1)), max_size=4)
              .map(lambda entries: b"".join(_setting(i, v) for i, v in entries))),
    st.tuples(st.just(RST_STREAM), st.just(0), STREAM_IDS, st.integers(0, 20).map(U32.pack)),
    st.tuples(st.just(PING), st.sampled_from([0, http2.ACK]), st.just(0), st.binary(min_size=8, max_size=8)),
)
sequences = st.lists(st.one_of(plausible_frames, plausible_frames, plausible_frames, raw_frames), max_size=25)
"""Mostly frames a client could send, so that sequences get past the first error into stream states."""


@pytest.fixture
def transport_errors() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("ext_proc.transport.http2")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=sequences, chunk=st.integers(1, 64),
       path=st.sampled_from(["/t.T/Echo", "/t.T/Hold", "/t.T/Guarded", "/t.T/Broken", "/nope"]))
def test_random_frames_never_break_the_protocol(transport_errors: list[logging.LogRecord],
                                               frames: list[tuple[int, int, int, bytes]], chunk: int,
                                               path: str) -> None:
    """Whatever arrives, in whatever pieces: nothing escapes `data_received`, nothing reaches the protocol's own
    last-resort handler (it logs an error), and the connection either ended with a GOAWAY or still answers PING."""

    async def scenario() -> None:
        driven = _driven()
        wire = b"".join(frame(kind, flags, stream_id, driven.encoder.encode(request_headers(path))
                              if payload == REQUEST else payload)
                        for kind, flags, stream_id, payload in frames)
        for start in range(0, len(wire), chunk):
            driven.feed(wire[start:start + chunk])
        if not driven.transport.closing:
            driven.feed(frame(PING, 0, 0, b"stillup!"))  # a PING inside a header block is an error: GOAWAY
        assert driven.transport.closing or (PING, http2.ACK, 0, b"stillup!") in driven.frames()
        if driven.transport.closing:
            found = goaway_of(driven.frames())
            assert found is not None
            event(f"GOAWAY {found[1]}")
        else:
            event(f"serving {driven.connection.open_streams} streams")

    asyncio.run(scenario())
    assert not transport_errors, transport_errors[0].getMessage()


actions = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from(["/t.T/Echo", "/t.T/Hold", "/t.T/Guarded", "/t.T/Length"]),
              st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 7), st.binary(max_size=30).map(message) | st.binary(max_size=12),
              st.booleans()),
    st.tuples(st.just("reset"), st.integers(0, 7)),
    st.tuples(st.just("window"), st.integers(-1, 7), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("settings"), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("raw"), raw_frames),
), max_size=30)
"""A conversation: streams opened in order, messages (whole or not), resets, window updates; now and then a fault."""


_ON_A_STREAM = ("data", "reset", "window")


def _wire(driven: Driven, conversation: list[tuple]) -> bytes:
    opened: list[int] = []
    wire = []
    for action, *args in conversation:
        if action == "open":
            stream_id = 2 * len(opened) + 1
            opened.append(stream_id)
            wire.append(driven.request(stream_id, args[0], END_HEADERS | (END_STREAM if args[1] else 0)))
            continue
        stream_id = opened[args[0] % len(opened)] if action in _ON_A_STREAM and opened and args[0] >= 0 else 0
        if action == "data":
            wire.append(frame(DATA, END_STREAM if args[2] else 0, stream_id or 1, args[1]))
        elif action == "reset":
            wire.append(frame(RST_STREAM, 0, stream_id or 1, U32.pack(http2.CANCEL)))
        elif action == "window":
            wire.append(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(args[1])))
        elif action == "settings":
            wire.append(frame(SETTINGS, 0, 0, _setting(http2.SETTINGS_INITIAL_WINDOW_SIZE, args[0])))
        elif action == "ping":
            wire.append(frame(PING, 0, 0, b"pingpong"))
        else:
            wire.append(frame(*args[0]))
    return b"".join(wire)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation=actions, chunk=st.integers(1, 200))
def test_random_conversations_never_break_the_protocol(transport_errors: list[logging.LogRecord],
                                                     conversation: list[tuple], chunk: int) -> None:
    async def scenario() -> None:
        driven = _driven()
        wire = _wire(driven, conversation)
        for start in range(0, len(wire), chunk):
            driven.feed(wire[start:start + chunk])
        await asyncio.sleep(0)  # unary methods answer from a task
        if not driven.transport.closing:
            driven.feed(frame(PING, 0, 0, b"stillup!"))
        if driven.transport.closing:
            found = goaway_of(driven.frames())
            assert found is not None
            event(f"GOAWAY {found[1]}")
        else:
            assert (PING, http2.ACK, 0, b"stillup!") in driven.frames()
            assert driven.connection.partial_bytes >= 0
            event(f"serving {driven.connection.open_streams} streams")

    asyncio.run(scenario())
    assert not transport_errors, transport_errors[0].getMessage()
