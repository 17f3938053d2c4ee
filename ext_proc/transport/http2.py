"""The server side of one HTTP/2 connection (cleartext, prior knowledge), as an asyncio protocol.

Scope is what gRPC clients use (Envoy's gRPC client, grpcio): streams opened by the client, HEADERS/CONTINUATION,
DATA with flow control both ways, SETTINGS, PING, RST_STREAM, GOAWAY. No server push, no priorities, no HTTP/1.1
upgrade. Everything a stream receives is handed to the `StreamHandler` the application opened for it; writes made
while a read is being processed leave in one `transport.write` at its end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol

import hpack

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x5, 0x6, 0x7, 0x8, 0x9

SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
RECEIVE_FRAME_LIMIT = 1 << 20
"""Advertised SETTINGS_MAX_FRAME_SIZE: large request bodies arrive in fewer frames."""
_REPLENISH_AT = 1 << 30
"""Receive windows start at the maximum and are topped up once half of one is used."""

_FRAME_HEADER = struct.Struct(">HBBBL")
_pack_frame_header = _FRAME_HEADER.pack
_unpack_frame_header = _FRAME_HEADER.unpack_from
_U32 = struct.Struct(">L")


class StreamHandler(Protocol):
    def data(self, chunk: bytes, end_stream: bool) -> None: ...
    def reset(self) -> None:
        """The stream is gone without a normal end: RST_STREAM from the client, or the connection closed."""


OpenStream = Callable[["Http2Connection", int, list[tuple[str, str]]], StreamHandler]


class ConnectionError_(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _pack_frame_header(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


class _Stream:
    __slots__ = ("handler", "id", "pending", "received", "remote_closed", "send_window")

    def __init__(self, stream_id: int, handler: StreamHandler, send_window: int) -> None:
        self.id = stream_id
        self.handler = handler
        self.send_window = send_window
        self.received = 0
        self.remote_closed = False
        self.pending: deque[tuple[int, bytes, bool]] | None = None
        """Frames waiting for flow-control window, in order: (kind, payload, end_stream)."""


class Http2Connection(asyncio.Protocol):
    def __init__(self, open_stream: OpenStream, on_close: Callable[[Http2Connection], None] | None = None) -> None:
        self._open_stream = open_stream
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}
        """Streams with frames waiting for flow-control window."""
        self._last_stream_id = 0
        self._header_block: tuple[int, int, bytearray] | None = None
        """(stream id, flags of the HEADERS frame, block so far) while CONTINUATION frames are due."""
        self._out: list[bytes] = []
        self._reading = False
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._send_window = DEFAULT_WINDOW
        self._received = 0
        self._going_away = False
        self.closed = asyncio.Event()
        self.peer = ""

    # -- asyncio.Protocol -----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.peer = str(transport.get_extra_info("peername")[0])
        settings = (struct.pack(">HL", SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
                    + struct.pack(">HL", SETTINGS_MAX_FRAME_SIZE, RECEIVE_FRAME_LIMIT))
        self._out.append(frame(SETTINGS, 0, 0, settings))
        self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - DEFAULT_WINDOW)))
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._reading = True
        try:
            self._buffer += data
            self._process()
        except ConnectionError_ as error:
            log.warning("closing an HTTP/2 connection: %s", error)
            self._out.append(frame(GOAWAY, 0, 0, _U32.pack(self._last_stream_id) + _U32.pack(error.code)))
            self._flush()
            if self._transport is not None:
                self._transport.close()
        finally:
            self._reading = False
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        streams, self._streams = self._streams, {}
        self._blocked = {}
        for stream in streams.values():
            stream.handler.reset()
        self._transport = None
        self.closed.set()
        if self._on_close is not None:
            self._on_close(self)

    # -- sending --------------------------------------------------------------------------------------------------

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        self._send(stream_id, HEADERS, block, end_stream)

    def send_data(self, stream_id: int, payload: bytes, end_stream: bool = False) -> None:
        self._send(stream_id, DATA, payload, end_stream)

    def reset_stream(self, stream_id: int, code: int = CANCEL) -> None:
        self._blocked.pop(stream_id, None)
        if self._streams.pop(stream_id, None) is not None:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def go_away(self) -> None:
        """No new streams; the ones open finish. (Clients reconnect elsewhere for new requests.)"""
        if not self._going_away and self._transport is not None:
            self._going_away = True
            self._write(frame(GOAWAY, 0, 0, _U32.pack(self._last_stream_id) + _U32.pack(NO_ERROR)))
            if not self._streams:
                self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def _send(self, stream_id: int, kind: int, payload: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset by the client meanwhile: nothing to deliver to
        if stream.pending is not None:
            stream.pending.append((kind, payload, end_stream))
            return
        rest = self._send_now(stream, kind, payload, end_stream)
        if rest is not None:
            stream.pending = deque(((kind, rest, end_stream),))
            self._blocked[stream_id] = stream
        elif end_stream:
            self._local_close(stream)

    def _send_now(self, stream: _Stream, kind: int, payload: bytes, end_stream: bool) -> bytes | None:
        """Frame and queue as much of `payload` as the flow-control windows allow; the unsent rest, or None."""
        if kind == HEADERS:
            self._write(frame(HEADERS, (END_STREAM if end_stream else 0) | END_HEADERS, stream.id, payload))
            return None
        allowed = min(stream.send_window, self._send_window)
        size = len(payload)
        if size > allowed:
            if allowed <= 0:
                return payload
            self._data_frames(stream, payload[:allowed], False)
            return payload[allowed:]
        self._data_frames(stream, payload, end_stream)
        return None

    def _data_frames(self, stream: _Stream, payload: bytes, end_stream: bool) -> None:
        size = len(payload)
        stream.send_window -= size
        self._send_window -= size
        flags = END_STREAM if end_stream else 0
        limit = self._peer_max_frame
        if size <= limit:
            self._write(frame(DATA, flags, stream.id, payload))
            return
        for start in range(0, size, limit):
            last = start + limit >= size
            self._write(frame(DATA, flags if last else 0, stream.id, payload[start:start + limit]))

    def _local_close(self, stream: _Stream) -> None:
        # gRPC servers end their side last, so a locally closed stream is done (a client still sending after the
        # status is answered with nothing).
        self._streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if self._going_away and not self._streams and self._transport is not None:
            self._flush()
            self._transport.close()

    def _resume_pending(self) -> None:
        for stream in list(self._blocked.values()):
            pending = stream.pending
            while pending:
                kind, payload, end_stream = pending[0]
                rest = self._send_now(stream, kind, payload, end_stream)
                if rest is not None:
                    pending[0] = (kind, rest, end_stream)
                    break
                pending.popleft()
                if end_stream:
                    self._local_close(stream)
            if not pending:
                stream.pending = None
                self._blocked.pop(stream.id, None)

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._reading:
            self._flush()

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            out = self._out
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # -- receiving ------------------------------------------------------------------------------------------------

    def _process(self) -> None:
        buffer = self._buffer
        offset = 0
        if not self._preface_seen:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client (bad connection preface)")
                return
            if not buffer.startswith(PREFACE):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client (bad connection preface)")
            self._preface_seen = True
            offset = len(PREFACE)
        end = len(buffer)
        while end - offset >= 9:
            high, low, kind, flags, stream_id = _unpack_frame_header(buffer, offset)
            length = (high << 8) | low
            if length > RECEIVE_FRAME_LIMIT:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - offset - 9 < length:
                break
            payload = bytes(buffer[offset + 9:offset + 9 + length])
            offset += 9 + length
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
        if offset:
            del buffer[:offset]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self._streams.pop(stream_id, None)
            self._blocked.pop(stream_id, None)
            if stream is not None:
                stream.handler.reset()
        elif kind == GOAWAY:
            self._going_away = True
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "clients may not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self._received += size
        if self._received >= _REPLENISH_AT:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream_id or stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we already closed or reset: the data is dropped (its window was counted above)
        if stream.remote_closed:
            self.reset_stream(stream_id, STREAM_CLOSED)
            return
        stream.received += size
        if stream.received >= _REPLENISH_AT:
            self._write(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.received)))
            stream.received = 0
        if flags & PADDED:
            payload = _strip_padding(payload)
        end_stream = bool(flags & END_STREAM)
        if end_stream:
            stream.remote_closed = True
        stream.handler.data(payload, end_stream)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _strip_padding(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._headers_complete(stream_id, flags, payload)
        else:
            self._header_block = (stream_id, flags, bytearray(payload))

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is None or self._header_block[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION frame")
        block = self._header_block[2]
        block += payload
        if flags & END_HEADERS:
            first_flags = self._header_block[1]
            self._header_block = None
            self._headers_complete(stream_id, first_flags, bytes(block))

    def _headers_complete(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)
        except hpack.HPACKError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        end_stream = bool(flags & END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers
            stream.remote_closed = True
            stream.handler.data(b"", True)
            return
        if stream_id <= self._last_stream_id or stream_id % 2 == 0:
            if stream_id % 2 == 0 or stream_id > self._last_stream_id:
                raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS opening stream {stream_id}")
            return  # trailers of a stream we already finished
        self._last_stream_id = stream_id
        if self._going_away:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, _NO_HANDLER, self._peer_initial_window)
        self._streams[stream_id] = stream
        stream.handler = self._open_stream(self, stream_id, headers)
        if end_stream and stream_id in self._streams:
            stream.remote_closed = True
            stream.handler.data(b"", True)

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            identifier, value = struct.unpack_from(">HL", payload, offset)
            if identifier == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, f"bad SETTINGS_MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
        self._write(frame(SETTINGS, ACK, 0))
        self._resume_pending()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self._resume_pending()


def _strip_padding(payload: bytes) -> bytes:
    if not payload:
        raise ConnectionError_(PROTOCOL_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ConnectionError_(PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1:len(payload) - pad]


class _NoHandler:
    def data(self, chunk: bytes, end_stream: bool) -> None:
        pass

    def reset(self) -> None:
        pass


_NO_HANDLER = _NoHandler()
