"""The server side of one HTTP/2 connection (prior knowledge, cleartext or inside TLS), as an asyncio protocol.

Scope is what gRPC clients use (Envoy's gRPC client, grpcio): streams opened by the client, HEADERS/CONTINUATION,
DATA with flow control both ways, SETTINGS, PING, RST_STREAM, GOAWAY. No server push, no priorities (PRIORITY frames
are checked, then ignored), no HTTP/1.1 upgrade. Everything a stream receives is handed to the `StreamHandler` the
application opened for it; writes made while a read is being processed leave in one `transport.write` at its end.

The peer is not trusted. Decisions worth knowing before changing this file (the numbers are `TransportLimits`):

- Advertised and enforced from the first frame: MAX_CONCURRENT_STREAMS 1000 (a stream over it gets RST_STREAM
  REFUSED_STREAM, RFC 9113 §5.1.2) and MAX_HEADER_LIST_SIZE 64 KiB (a stream whose decoded list is over it is opened
  with `headers=None`, which the gRPC layer answers RESOURCE_EXHAUSTED). Such a block is still decoded, so the HPACK
  table stays in step with the peer's, up to 4x the limit (`max_header_block`); a raw block (HEADERS + CONTINUATION) or
  a decoded list past that ends the connection: GOAWAY ENHANCE_YOUR_CALM.
- Receive flow control: 1 MiB per stream (a local peer fills a fast link with it), 16 MiB per connection (a thousand
  Envoy streams of a few KiB fit at once; a 40 MiB message moves 1 MiB at a time). Bytes are consumed when handed to the
  stream's handler (gRPC copies them into a message, or hands a whole message on), and a WINDOW_UPDATE goes out once
  half a window was consumed: one update per half window, none on the small-message hot path. A frame larger than what
  is left of a window is FLOW_CONTROL_ERROR (a stream error for a stream's window, a connection error for the
  connection's). What handlers may hold is bounded above this layer: per message by `GrpcServer(max_message_bytes)`, per
  connection by `max_buffered_bytes` across the partial messages of all streams (`partial_bytes`, kept by `grpc.Call`).
  Bytes on streams already closed are dropped, and still returned to the connection window.
- Sending: replies waiting for the peer's window count against `max_buffered_bytes` too (the stream that passes it is
  reset, ENHANCE_YOUR_CALM), and while the transport's buffer is over its high-water mark (`pause_writing`) the
  connection stops reading, so a peer that does not read cannot make us hold its PING or SETTINGS acknowledgements.
- Floods: control frames (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM, GOAWAY, empty DATA or CONTINUATION,
  unknown types, refused streams, stream errors) spend a per-connection budget of `control_frames_per_second`; when it
  runs out less than a second after it was last refilled: GOAWAY ENHANCE_YOUR_CALM. Two things earn a frame back: a
  stream the peer half-closes (Envoy ends every ext_proc stream with END_STREAM, then RST_STREAM) and each DATA frame we
  send (answered by WINDOW_UPDATEs, by grpcio's BDP PINGs). A stream reset before the peer half-closed it earns nothing,
  which bounds rapid reset (CVE-2023-44487). The clock is read only when the budget runs out.
- One timer per connection: the preface must arrive within `preface_timeout`; then a tick every `idle_timeout / 2`, and
  after two quiet ticks (no read, no open stream) the connection drains: GOAWAY(2^31-1) first, then a second later
  GOAWAY(last stream) and close, so a stream Envoy opened meanwhile is served, not refused.
- Streams we closed while the peer was still sending (an early answer, a refusal, a reset; the last 1024) are
  remembered: frames already in flight on them are dropped, not answered. After an early answer we send
  RST_STREAM(NO_ERROR), as RFC 9113 §8.1 suggests and grpc-go does, so the peer stops sending the rest.
- Frames are checked as RFC 9113 §6 says (sizes, stream 0 or not, flags, setting values). A connection error sends
  GOAWAY and closes (aborting if the peer has not read it within a few seconds); a stream error sends RST_STREAM.
- Unix sockets: a peer whose uid (SO_PEERCRED) is not in `allowed_uids` is aborted in `connection_made`, before a byte
  is read or sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol, cast

import hpack

from .frames import (
    ACK,
    BOOLEAN_SETTINGS,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_LIMITS,
    DEFAULT_MAX_FRAME,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_HPACK_ENTRY,
    MAX_SETTINGS,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RECEIVE_FRAME_LIMIT,
    REFUSED_STREAM,
    RST_STREAM,
    SETTING,
    SETTINGS,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    ConnectionError_,
    TransportLimits,
    frame,
    header_fragment,
    reset_frame,
    strip_padding,
    unpack_frame_header,
    window_update,
)
from .listen import default_allowed_uids, peer_uid

log = logging.getLogger(__name__)

_CLOSED_EARLY_KEPT = 1024
_CLOSE_GRACE = 5.0
"""Seconds a closing connection may take to flush its last frames before it is aborted."""
_DRAIN_DELAY = 1.0
"""Seconds between an idle connection's two GOAWAY frames."""

class StreamHandler(Protocol):
    def data(self, chunk: bytes, end_stream: bool) -> None: ...
    def reset(self) -> None:
        """The stream is gone without a normal end: RST_STREAM from the client, or the connection closed."""


OpenStream = Callable[["Http2Connection", int, "list[tuple[str, str]] | None"], StreamHandler]
"""Called on a stream's first HEADERS with its header list, or None when the list is over MAX_HEADER_LIST_SIZE."""


class _Stream:
    __slots__ = ("handler", "id", "pending", "recv_window", "remote_closed", "send_window")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.handler: StreamHandler = _NO_HANDLER
        self.send_window = send_window
        self.recv_window = recv_window
        self.remote_closed = False
        self.pending: deque[tuple[int, bytes, bool]] | None = None
        """Frames waiting for flow-control window, in order: (kind, payload, end_stream)."""


class Http2Connection(asyncio.Protocol):
    def __init__(self, open_stream: OpenStream, on_close: Callable[[Http2Connection], None] | None = None,
                 limits: TransportLimits = DEFAULT_LIMITS, allowed_uids: Collection[int] | None = None,
                 on_open: Callable[[Http2Connection], None] | None = None) -> None:
        """`on_open` runs once the connection is accepted (after TLS, after the peer-uid check), `on_close` when it
        is gone; `allowed_uids` (default: our own uid and root) applies to Unix-socket peers."""
        self._open_stream = open_stream
        self._on_open = on_open
        self._on_close = on_close
        self.limits = limits
        self._allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else default_allowed_uids()
        self._max_streams = limits.max_concurrent_streams
        self._max_header_list = limits.max_header_list_size
        self._max_block = limits.max_header_block
        self._stream_window = limits.stream_window
        self._refill_stream_at = limits.stream_window // 2
        self._refill_connection_at = limits.connection_window // 2
        self._calm_budget = limits.control_frames_per_second
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._needed = len(PREFACE)
        """How long `_buffer` must be before it holds something whole (the preface, or the frame it starts)."""
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = self._max_block
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}
        """Streams with frames waiting for flow-control window."""
        self._closed_early: dict[int, None] = {}
        """Streams we closed while the peer was still sending, oldest first: frames in flight on them are dropped."""
        self._last_stream_id = 0
        self._header_block: tuple[int, int, bytearray, int] | None = None
        """(stream id, flags of the HEADERS frame, block so far, stream error code or 0) while CONTINUATION is due."""
        self._out: list[bytes] = []
        self._reading = False
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._send_window = DEFAULT_WINDOW
        self._recv_window = limits.connection_window
        self._pending_bytes = 0
        self._calm = self._calm_budget
        self._calm_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._heard = False
        self._quiet_ticks = 0
        self._going_away = False
        self._closing = False
        self.partial_bytes = 0
        """Bytes of incomplete request messages held by this connection's stream handlers (kept by `grpc.Call`)."""
        self.closed = asyncio.Event()
        self.peer = ""

    # -- asyncio.Protocol -----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio.Protocol's signature names the base class; a stream server is always handed a Transport
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        if not self._accept_peer(transport):
            self._closing = True
            self._transport.abort()
            return
        if self._on_open is not None:
            self._on_open(self)
        self._calm_since = self._loop.time()
        self._timer = self._loop.call_later(self.limits.preface_timeout, self._on_timer)
        limits = self.limits
        settings = b"".join(SETTING.pack(identifier, value) for identifier, value in (
            (SETTINGS_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams),
            (SETTINGS_INITIAL_WINDOW_SIZE, limits.stream_window),
            (SETTINGS_MAX_FRAME_SIZE, RECEIVE_FRAME_LIMIT),
            (SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list_size)))
        self._out.append(frame(SETTINGS, 0, 0, settings))
        if limits.connection_window > DEFAULT_WINDOW:
            self._out.append(window_update(0, limits.connection_window - DEFAULT_WINDOW))
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._reading = True
        self._heard = True
        try:
            self._receive(data)
        except ConnectionError_ as error:
            self._fail(error.code, str(error))
        except Exception:
            log.exception("HTTP/2 connection from %s failed while reading", self.peer)
            self._fail(INTERNAL_ERROR, "internal error")
        finally:
            self._reading = False
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._closing = True
        streams, self._streams = self._streams, {}
        self._blocked = {}
        self._out.clear()
        for stream in streams.values():
            stream.handler.reset()
        self._transport = None
        self.closed.set()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        """The transport's buffer is over its high-water mark: read nothing more until the peer has read."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _accept_peer(self, transport: asyncio.BaseTransport) -> bool:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        if sock.family == socket.AF_UNIX:
            uid = peer_uid(sock)
            if uid not in self._allowed_uids:
                log.warning("refused a Unix-socket connection from uid %s", uid)
                return False
            self.peer = f"unix:uid={uid}"
        elif sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.peer = str(transport.get_extra_info("peername")[0])
        return True

    # -- the application's side ------------------------------------------------------------------------------------

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        self._send(stream_id, HEADERS, block, end_stream)

    def send_data(self, stream_id: int, payload: bytes, end_stream: bool = False) -> None:
        self._send(stream_id, DATA, payload, end_stream)

    def reset_stream(self, stream_id: int, code: int = CANCEL) -> None:
        """Abandon a stream (its handler is not told: the caller is the application)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._write(reset_frame(stream_id, code))
            if not stream.remote_closed:
                self._remember_closed_early(stream_id)
            self._remove(stream)

    def go_away(self) -> None:
        """No new streams; the ones open finish. (Clients reconnect elsewhere for new requests.)"""
        if not self._going_away and self._transport is not None and not self._closing:
            self._going_away = True
            self._write(frame(GOAWAY, 0, 0, U32.pack(self._last_stream_id) + U32.pack(NO_ERROR)))
            if not self._streams:
                self._close_transport()

    def close(self) -> None:
        """Close after what is already written (aborted if the peer does not take it within a few seconds)."""
        self._close_transport()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def write_buffer_size(self) -> int:
        """Bytes written and not yet taken by the kernel, including those gathered during the current read."""
        held = sum(map(len, self._out))
        return held + (self._transport.get_write_buffer_size() if self._transport is not None else 0)

    # -- sending --------------------------------------------------------------------------------------------------

    def _send(self, stream_id: int, kind: int, payload: bytes, end_stream: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset by the client meanwhile: nothing to deliver to
        if stream.pending is not None:
            stream.pending.append((kind, payload, end_stream))
            self._hold_pending(stream, len(payload))
            return
        rest = self._send_now(stream, kind, payload, end_stream)
        if rest is not None:
            stream.pending = deque(((kind, rest, end_stream),))
            self._blocked[stream_id] = stream
            self._hold_pending(stream, len(rest))
        elif end_stream:
            self._local_close(stream)

    def _hold_pending(self, stream: _Stream, size: int) -> None:
        self._pending_bytes += size
        if self._pending_bytes > self.limits.max_buffered_bytes:
            log.info("resetting stream %d from %s: replies waiting for the peer's window over %d bytes",
                     stream.id, self.peer, self.limits.max_buffered_bytes)
            self._reset(stream, ENHANCE_YOUR_CALM)

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
        self._calm += 1 + size // limit  # the peer may answer each frame with WINDOW_UPDATEs or a PING
        if size <= limit:
            self._write(frame(DATA, flags, stream.id, payload))
            return
        for start in range(0, size, limit):
            last = start + limit >= size
            self._write(frame(DATA, flags if last else 0, stream.id, payload[start:start + limit]))

    def _local_close(self, stream: _Stream) -> None:
        # gRPC servers end their side last, so a locally closed stream is done. A client still sending is asked to
        # stop (RST_STREAM NO_ERROR after a complete response, RFC 9113 §8.1); what it already sent is dropped.
        if not stream.remote_closed:
            self._write(reset_frame(stream.id, NO_ERROR))
            self._remember_closed_early(stream.id)
        self._remove(stream)

    def _remove(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        if self._blocked.pop(stream.id, None) is not None and stream.pending:
            self._pending_bytes -= sum(len(payload) for _, payload, _ in stream.pending)
        stream.pending = None
        if self._going_away and not self._streams:
            self._close_transport()

    def _reset(self, stream: _Stream, code: int) -> None:
        """A stream error on an open stream: RST_STREAM, and the handler is told."""
        self._write(reset_frame(stream.id, code))
        if not stream.remote_closed:
            self._remember_closed_early(stream.id)
        self._remove(stream)
        stream.handler.reset()

    def _remember_closed_early(self, stream_id: int) -> None:
        closed = self._closed_early
        closed[stream_id] = None
        if len(closed) > _CLOSED_EARLY_KEPT:
            del closed[next(iter(closed))]

    def _resume_pending(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._resume(stream)

    def _resume(self, stream: _Stream) -> None:
        pending = stream.pending
        while pending:
            kind, payload, end_stream = pending[0]
            rest = self._send_now(stream, kind, payload, end_stream)
            self._pending_bytes -= len(payload) - (len(rest) if rest is not None else 0)
            if rest is not None:
                pending[0] = (kind, rest, end_stream)
                return
            pending.popleft()
            if end_stream:
                self._local_close(stream)
                return
        stream.pending = None
        self._blocked.pop(stream.id, None)

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._reading:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        if self._transport is not None and not self._closing:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    # -- ending the connection ------------------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        log.warning("closing the HTTP/2 connection from %s: %s", self.peer or "?", reason)
        goaway = U32.pack(self._last_stream_id) + U32.pack(code) + reason.encode("ascii", "replace")[:128]
        self._out.append(frame(GOAWAY, 0, 0, goaway))
        self._close_transport()

    def _close_transport(self) -> None:
        """Close after what is written so far; abort if the peer has not taken it within `_CLOSE_GRACE`."""
        transport = self._transport
        if transport is None or self._closing:
            return
        self._flush()
        self._closing = True
        transport.close()
        self._cancel_timer()
        if self._loop is not None:
            self._timer = self._loop.call_later(_CLOSE_GRACE, transport.abort)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing or self._transport is None or self._loop is None:
            return
        if not self._preface_seen:
            log.info("closing a connection from %s: no HTTP/2 preface within %s s", self.peer or "?",
                     self.limits.preface_timeout)
            self._close_transport()
            return
        if self._streams or self._heard:
            self._quiet_ticks = 0
        else:
            self._quiet_ticks += 1
        self._heard = False
        self._calm = min(self._calm, self._calm_budget)  # credit earned long ago is not for a flood now
        if self._quiet_ticks >= 2:
            self._write(frame(GOAWAY, 0, 0, U32.pack(MAX_WINDOW) + U32.pack(NO_ERROR)))
            self._timer = self._loop.call_later(_DRAIN_DELAY, self.go_away)
            return
        self._timer = self._loop.call_later(self.limits.idle_timeout / 2, self._on_timer)

    def _spend(self) -> None:
        """One control frame: from the budget, refilled once a second at most (the clock is read only then)."""
        self._calm -= 1
        if self._calm < 0:
            now = self._loop.time() if self._loop is not None else 0.0
            if now - self._calm_since < 1.0:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "too many control frames")
            self._calm_since = now
            self._calm = self._calm_budget - 1

    # -- receiving ------------------------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                return
            data = bytes(buffer)
            buffer.clear()
        offset = 0
        if not self._preface_seen:
            offset = self._preface(data)
            if offset < 0:
                self._buffer += data
                return
        end = len(data)
        needed = 9
        while end - offset >= 9:
            high, low, kind, flags, stream_id = unpack_frame_header(data, offset)
            length = (high << 8) | low
            if length > RECEIVE_FRAME_LIMIT:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if end - offset - 9 < length:
                needed = 9 + length
                break
            start = offset + 9
            offset = start + length
            self._frame(kind, flags, stream_id & 0x7FFFFFFF, data[start:offset])
        if offset < end:
            self._buffer += memoryview(data)[offset:]
        self._needed = needed

    def _preface(self, data: bytes) -> int:
        """Where the frames start, or -1 while the preface is incomplete."""
        if len(data) < len(PREFACE):
            if not PREFACE.startswith(data):
                raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client (bad connection preface)")
            return -1
        if not data.startswith(PREFACE):
            raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 client (bad connection preface)")
        self._preface_seen = True
        if self._timer is not None and self._loop is not None:
            self._timer.cancel()
            self._timer = self._loop.call_later(self.limits.idle_timeout / 2, self._on_timer)
        return len(PREFACE)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == PING:
            self._on_ping(flags, stream_id, payload)
        elif kind == PRIORITY:
            self._on_priority(stream_id, payload)
        elif kind == GOAWAY:
            self._on_goaway(stream_id, payload)
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "clients may not push")
        else:
            self._spend()  # unknown frame types are ignored (RFC 9113 §4.1), but not for free

    def _stream_error(self, stream_id: int, code: int) -> None:
        self._spend()
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._reset(stream, code)
        else:
            self._write(reset_frame(stream_id, code))

    def _is_idle(self, stream_id: int) -> bool:
        """Never opened: above the last stream the client opened, or even (we push nothing)."""
        return stream_id > self._last_stream_id or not stream_id & 1

    # DATA ---------------------------------------------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        window = self._recv_window - size
        if window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, f"DATA of {size} bytes past the connection window")
        if window <= self._refill_connection_at:
            self._write(window_update(0, self.limits.connection_window - window))
            window = self.limits.connection_window
        self._recv_window = window
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            self._data_without_stream(flags, stream_id, size, stream)
            return
        window = stream.recv_window - size
        if window < 0:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        if flags & END_STREAM:
            stream.remote_closed = True
            self._calm += 1
        elif window <= self._refill_stream_at:
            self._write(window_update(stream_id, self._stream_window - window))
            window = self._stream_window
        elif not size:
            self._spend()
        stream.recv_window = window
        if flags & PADDED:
            payload = strip_padding(payload)
        stream.handler.data(payload, bool(flags & END_STREAM))

    def _data_without_stream(self, flags: int, stream_id: int, size: int, stream: _Stream | None) -> None:
        if stream is not None:  # half-closed (remote), RFC 9113 §5.1
            self._stream_error(stream_id, STREAM_CLOSED)
        elif stream_id == 0 or self._is_idle(stream_id):
            raise ConnectionError_(PROTOCOL_ERROR, f"DATA on stream {stream_id}, never opened")
        elif stream_id in self._closed_early:
            if flags & END_STREAM:
                del self._closed_early[stream_id]
            elif not size:
                self._spend()
        else:
            self._stream_error(stream_id, STREAM_CLOSED)

    # HEADERS and CONTINUATION -------------------------------------------------------------------------------------

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        error = 0
        if flags & (PADDED | PRIORITY_FLAG):
            payload, dependency = header_fragment(flags, payload)
            if dependency == stream_id:
                error = PROTOCOL_ERROR  # a stream cannot depend on itself, RFC 9113 §5.3.1
        if flags & END_HEADERS:
            self._headers_complete(stream_id, flags, payload, error)
            return
        if len(payload) > self._max_block:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header block over {self._max_block} bytes")
        self._header_block = (stream_id, flags, bytearray(payload), error)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block_state = self._header_block
        if block_state is None or block_state[0] != stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "unexpected CONTINUATION frame")
        block = block_state[2]
        if len(block) + len(payload) > self._max_block:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header block over {self._max_block} bytes")
        if not payload:
            self._spend()
        block += payload
        if flags & END_HEADERS:
            self._header_block = None
            self._headers_complete(stream_id, block_state[1], bytes(block), block_state[3])

    def _headers_complete(self, stream_id: int, flags: int, block: bytes, error: int) -> None:
        headers = self._decode(block)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._trailers(stream, flags, error)
        elif stream_id > self._last_stream_id and stream_id & 1:
            self._last_stream_id = stream_id
            self._new_stream(stream_id, flags, headers, error)
        elif stream_id in self._closed_early and flags & END_STREAM:
            del self._closed_early[stream_id]  # trailers already in flight when we closed the stream
            self._spend()
        elif not stream_id & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on even stream {stream_id}")
        else:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}, closed or below the last opened")

    def _decode(self, block: bytes) -> list[tuple[str, str]] | None:
        """The header list; None when it is over MAX_HEADER_LIST_SIZE (decoded all the same, for the HPACK table)."""
        try:
            # hpack declares an Iterable; decode builds a list
            headers = cast("list[tuple[str, str]]", self._decoder.decode(block))
        except hpack.OversizedHeaderListError:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header list over {self._max_block} bytes") from None
        except hpack.HPACKError as exc:
            raise ConnectionError_(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        # Each header is at most a table entry (4096) or its literal (Huffman: up to 8/5 of its bytes), plus 32: the
        # exact size is counted only when this bound does not already settle it (a usual request: ten headers).
        count = len(headers)
        if 2 * len(block) + MAX_HPACK_ENTRY * count > self._max_header_list and \
                sum([len(name) + len(value) for name, value in headers]) + 32 * count > self._max_header_list:
            return None
        return headers

    def _trailers(self, stream: _Stream, flags: int, error: int) -> None:
        if stream.remote_closed:
            self._stream_error(stream.id, STREAM_CLOSED)
        elif error or not flags & END_STREAM:  # trailers end the stream, RFC 9113 §8.1
            self._stream_error(stream.id, error or PROTOCOL_ERROR)
        else:
            stream.remote_closed = True
            self._calm += 1
            stream.handler.data(b"", True)

    def _new_stream(self, stream_id: int, flags: int, headers: list[tuple[str, str]] | None, error: int) -> None:
        if error or self._going_away or len(self._streams) >= self._max_streams:
            self._spend()
            self._write(reset_frame(stream_id, error or REFUSED_STREAM))
            if not flags & END_STREAM:
                self._remember_closed_early(stream_id)
            return
        end_stream = bool(flags & END_STREAM)
        stream = _Stream(stream_id, self._peer_initial_window, self._stream_window)
        stream.remote_closed = end_stream
        self._streams[stream_id] = stream
        try:
            stream.handler = self._open_stream(self, stream_id, headers)
        except Exception:
            log.exception("opening HTTP/2 stream %d failed", stream_id)
            self._reset(stream, INTERNAL_ERROR)
            return
        if end_stream:
            self._calm += 1
            if stream_id in self._streams:
                stream.handler.data(b"", True)

    # Control frames -----------------------------------------------------------------------------------------------

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._spend()
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        if len(payload) > 6 * MAX_SETTINGS:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"more than {MAX_SETTINGS} settings in one frame")
        self._spend()
        window = None
        for identifier, value in SETTING.iter_unpack(payload):
            if identifier == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                window = value
            elif identifier == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, f"bad SETTINGS_MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif identifier in BOOLEAN_SETTINGS and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, f"setting {identifier} must be 0 or 1, not {value}")
        if window is not None:
            self._peer_window(window)
        self._write(frame(SETTINGS, ACK, 0))
        self._resume_pending()

    def _peer_window(self, value: int) -> None:
        delta = value - self._peer_initial_window
        self._peer_initial_window = value
        if delta > 0:
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "a stream's window above 2^31-1")
        elif delta < 0:
            for stream in self._streams.values():
                stream.send_window += delta

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload not 8 bytes")
        self._spend()
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload not 4 bytes")
        self._spend()
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._resume_pending()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise ConnectionError_(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream_id}, never opened")
            return
        stream.send_window += increment
        if not increment or stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR if increment else PROTOCOL_ERROR)
        elif stream.pending is not None and self._send_window > 0:
            self._resume(stream)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM payload not 4 bytes")
        if stream_id == 0 or self._is_idle(stream_id):
            raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}, never opened")
        self._spend()
        self._closed_early.pop(stream_id, None)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._remove(stream)
            stream.handler.reset()

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, FRAME_SIZE_ERROR)
        elif U32.unpack_from(payload)[0] & 0x7FFFFFFF == stream_id:
            self._stream_error(stream_id, PROTOCOL_ERROR)
        else:
            self._spend()

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionError_(FRAME_SIZE_ERROR, "GOAWAY payload under 8 bytes")
        self._spend()
        code = U32.unpack_from(payload, 4)[0]
        if code != NO_ERROR:
            log.info("the HTTP/2 peer %s is going away with error %d: %r", self.peer, code, payload[8:72])


class _NoHandler:
    def data(self, chunk: bytes, end_stream: bool) -> None:
        pass

    def reset(self) -> None:
        pass


_NO_HANDLER = _NoHandler()
