"""Incremental AWS event-stream codec (`application/vnd.amazon.eventstream`), as Bedrock streams answers.

A message is: total length (4 bytes), headers length (4), CRC32 of those 8 bytes, headers, payload, CRC32 of
everything before it; integers big-endian. Both CRCs are checked, and a message longer than `max_message_bytes` is
refused before it is buffered, so a broken or hostile upstream can't make the gateway buffer without limit.
"""

from __future__ import annotations

import struct
import zlib

from .sse import SSEEvent

_PRELUDE = struct.Struct(">III")
_MINIMUM = _PRELUDE.size + 4
# header value type -> fixed size (None: 2-byte length prefix follows)
_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_STRING, _BYTES = 7, 6


class EventStreamError(ValueError):
    """The stream broke the event-stream framing (bad CRC, bad lengths, unknown header type)."""


def decode_headers(raw: bytes) -> dict[str, object]:
    headers: dict[str, object] = {}
    position = 0
    while position < len(raw):
        name_length = raw[position]
        name = raw[position + 1:position + 1 + name_length].decode("utf-8", "replace")
        position += 1 + name_length
        if position >= len(raw):
            raise EventStreamError("event-stream header without a value type")
        kind = raw[position]
        position += 1
        if kind in (_STRING, _BYTES):
            (length,) = struct.unpack_from(">H", raw, position)
            data = raw[position + 2:position + 2 + length]
            position += 2 + length
            value: object = data.decode("utf-8", "replace") if kind == _STRING else data
        elif kind in _FIXED_SIZES:
            size = _FIXED_SIZES[kind]
            value = {0: True, 1: False}.get(kind, raw[position:position + size])
            position += size
        else:
            raise EventStreamError(f"unknown event-stream header type {kind}")
        headers[name] = value
    return headers


class EventStreamDecoder:
    """Feed bytes as they arrive; get one `SSEEvent(event, payload)` per complete message.

    `event` is the `:event-type` header for events, and `exception:<:exception-type>` for exception messages (Bedrock
    reports mid-stream failures that way), so provider stream translators see both through one interface.
    """

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        while len(self._buffer) >= _PRELUDE.size:
            total, headers_length, prelude_crc = _PRELUDE.unpack_from(self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise EventStreamError("event-stream prelude CRC mismatch")
            if total < _MINIMUM + headers_length or total > self._max:
                raise EventStreamError(f"event-stream message length {total} is out of bounds")
            if len(self._buffer) < total:
                break
            message = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack_from(">I", message, total - 4)
            if zlib.crc32(message[:-4]) != message_crc:
                raise EventStreamError("event-stream message CRC mismatch")
            headers = decode_headers(message[_PRELUDE.size:_PRELUDE.size + headers_length])
            payload = message[_PRELUDE.size + headers_length:-4]
            if headers.get(":message-type") == "exception":
                event = f"exception:{headers.get(':exception-type', 'unknown')}"
            elif headers.get(":message-type") == "error":
                event = f"exception:{headers.get(':error-code', 'unknown')}"
            else:
                event = str(headers.get(":event-type", ""))
            events.append(SSEEvent(event, payload))
        return events

    def finish(self) -> list[SSEEvent]:
        if self._buffer:
            raise EventStreamError("event-stream ended in the middle of a message")
        return []


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (what the demo Bedrock provider and tests need)."""
    raw_headers = b"".join(
        bytes([len(name.encode())]) + name.encode() + bytes([_STRING]) + struct.pack(">H", len(value.encode()))
        + value.encode() for name, value in headers.items())
    total = _MINIMUM + len(raw_headers) + len(payload)
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def encode_event(event_type: str, payload: bytes) -> bytes:
    return encode_message({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
                          payload)
