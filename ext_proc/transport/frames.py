"""The HTTP/2 wire as RFC 9113 defines it, and the limits Babelgate's server holds a peer to: frame types, flags,
error codes, settings, `TransportLimits`, and the helpers that build and take apart frames. No state: the connection
that uses them is `http2.py`."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB

SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x3, 0x4
SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x5, 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_NO_RFC7540_PRIORITIES = 0x8, 0x9
BOOLEAN_SETTINGS = frozenset((SETTINGS_ENABLE_PUSH, SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_NO_RFC7540_PRIORITIES))
MAX_SETTINGS = 64
"""Entries in one SETTINGS frame; about ten are defined (nghttp2 allows 32)."""

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
RECEIVE_FRAME_LIMIT = 1 << 20
"""Advertised SETTINGS_MAX_FRAME_SIZE: large request bodies arrive in fewer frames."""

MAX_HPACK_ENTRY = 4096 + 32
"""The largest HPACK table entry: the decoder's table stays at the default 4096 bytes (we never raise it)."""

FRAME_HEADER = struct.Struct(">HBBBL")
pack_frame_header = FRAME_HEADER.pack
unpack_frame_header = FRAME_HEADER.unpack_from
U32 = struct.Struct(">L")
SETTING = struct.Struct(">HL")


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """What one HTTP/2 connection may ask of the server. The defaults fit Envoy's ext_proc traffic: up to a thousand
    concurrent streams of a few KiB to a few MiB each on a connection per Envoy worker."""

    max_concurrent_streams: int = 1000
    max_header_list_size: int = 64 * 1024
    stream_window: int = 1 << 20
    connection_window: int = 16 << 20
    max_buffered_bytes: int = 64 << 20
    """Per connection, each counted on its own: bytes of partial request messages across all streams, and bytes of
    replies waiting for the peer's flow-control window."""
    control_frames_per_second: int = 2000
    preface_timeout: float = 10.0
    """Also the TLS handshake timeout."""
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        problems = [name for name, ok in (
            ("max_concurrent_streams", self.max_concurrent_streams >= 1),
            ("max_header_list_size", self.max_header_list_size >= 1024),
            ("stream_window", DEFAULT_WINDOW <= self.stream_window <= MAX_WINDOW),
            ("connection_window", DEFAULT_WINDOW <= self.connection_window <= MAX_WINDOW),
            ("max_buffered_bytes", self.max_buffered_bytes >= 1),
            ("control_frames_per_second", self.control_frames_per_second >= 1),
            ("preface_timeout", self.preface_timeout > 0),
            ("idle_timeout", self.idle_timeout > 0),
        ) if not ok]
        if problems:
            raise ValueError(f"TransportLimits out of range: {', '.join(problems)}")

    @property
    def max_header_block(self) -> int:
        """Raw header block bytes, and decoded header list bytes, past which the connection is closed."""
        return 4 * self.max_header_list_size


DEFAULT_LIMITS = TransportLimits()


class ConnectionError_(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return pack_frame_header(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


def reset_frame(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, U32.pack(code))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, U32.pack(increment))


def strip_padding(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(FRAME_SIZE_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - pad]


def header_fragment(flags: int, payload: bytes) -> tuple[bytes, int]:
    """A HEADERS frame's block fragment without padding and priority fields; and the stream it depends on."""
    start, end, dependency = 0, len(payload), 0
    if flags & PADDED:
        if not end:
            raise ConnectionError_(FRAME_SIZE_ERROR, "padded frame without a pad length")
        start, end = 1, end - payload[0]
    if flags & PRIORITY_FLAG:
        if len(payload) < start + 5:
            raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
        dependency = U32.unpack_from(payload, start)[0] & 0x7FFFFFFF
        start += 5
    if end < start:
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[start:end], dependency
