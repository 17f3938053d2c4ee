"""Incremental Server-Sent Events codec with a bounded buffer.

Envoy hands the attempt stage the response body in arbitrary chunks; an event may be split across chunks, and one
chunk may hold many events. The decoder keeps only the unfinished tail, and refuses a tail that grows past
`max_event_bytes` so a misbehaving upstream can't make the gateway buffer without limit.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

DONE = b"data: [DONE]\n\n"


class SSEEvent(NamedTuple):
    event: str | None
    data: bytes


class SSEError(ValueError):
    """The stream broke the SSE framing or an event outgrew the buffer limit."""


class SSEDecoder:
    def __init__(self, max_event_bytes: int = 1 << 20) -> None:
        self._tail = b""
        self._max = max_event_bytes
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode every complete event in `chunk` (plus what was left over before it)."""
        buffer = self._tail + chunk if self._tail else chunk
        if b"\r" in buffer:
            # Normalise CRLF and lone CR line endings; a CR at the very end may be the first half of a CRLF.
            keep_cr = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buffer = buffer[:-1] + b"\r"
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._line(buffer[start:end], events)
            start = end + 1
        self._tail = buffer[start:]
        pending = len(self._tail) + sum(len(d) for d in self._data)
        if pending > self._max:
            raise SSEError(f"an SSE event exceeded {self._max} bytes")
        return events

    def finish(self) -> list[SSEEvent]:
        """Flush at end of stream: a final event without its blank line still counts."""
        events: list[SSEEvent] = []
        if self._tail.strip():
            self._line(self._tail.rstrip(b"\r"), events)
        self._tail = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data or self._event is not None:
                events.append(SSEEvent(self._event, b"\n".join(self._data)))
            self._event = None
            self._data = []
            return
        if line[0] == 0x3A:  # ":" starts a comment (keep-alive)
            return
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        # "id" and "retry" carry nothing a translator needs.


def encode_data(payload: dict) -> bytes:
    """One `data:` event as OpenAI streams them."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def encode_event(event: str, payload: dict) -> bytes:
    """One named event as Anthropic streams them."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
