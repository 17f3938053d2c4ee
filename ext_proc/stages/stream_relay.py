"""One streamed answer, provider bytes in, client bytes out: SSE or AWS event-stream frames decoded into events, the
backend's `ChatStream` turning each into OpenAI chunks, and each chunk encoded as the client reads it (OpenAI SSE
`data:` lines, or Anthropic Messages events), through the stream guard and the usage meter when there are any.

This runs once per chunk Envoy hands over: it keeps to plain attributes and one call per decoded chunk.
"""

from __future__ import annotations

import time

import orjson

from ..client_formats.anthropic_messages import MessagesStream
from ..errors import GatewayError, UpstreamError
from ..guardrails.engine import GuardrailBlocked
from ..json_types import JsonObject
from ..providers.stream import ChatStream
from ..streaming.eventstream import EventStreamDecoder, EventStreamError
from ..streaming.sse import DONE, SSEDecoder, SSEError, encode_data, encode_event
from .stream_guard import StreamGuard
from .usage_meter import UsageMeter

EVENTSTREAM = "application/vnd.amazon.eventstream"
_STREAMED_TYPES = ("text/event-stream", EVENTSTREAM)


def is_stream(content_type: str) -> bool:
    """An answer the relay translates as it flows (SSE, or Bedrock's binary event-stream)."""
    return content_type.startswith(_STREAMED_TYPES)


class StreamRelay:
    __slots__ = ("_client_stream", "_decoder", "_guard", "_meter", "first_chunk_at", "stream")

    def __init__(self, content_type: str, stream: ChatStream, client_stream: MessagesStream | None,
                 guard: StreamGuard | None, meter: UsageMeter | None) -> None:
        """`client_stream`: the re-encoder for Anthropic Messages clients, None for OpenAI clients."""
        self._decoder = EventStreamDecoder() if content_type.startswith(EVENTSTREAM) else SSEDecoder()
        self.stream = stream
        self._client_stream = client_stream
        self._guard = guard
        self._meter = meter
        self.first_chunk_at = 0.0

    def relay(self, body: bytes, end_of_stream: bool) -> bytes:
        """What the client gets for one piece of the provider's stream; at its end, the stream's end too (and an
        error chunk first if the provider's stream was cut or malformed)."""
        stream = self.stream
        out: list[bytes] = []
        try:
            events = self._decoder.feed(body)
            if end_of_stream:
                events.extend(self._decoder.finish())
            for event in events:
                out.extend(self.encode(chunk) for chunk in stream.feed(event.event, event.data))
            if end_of_stream:
                out.extend(self.encode(chunk) for chunk in stream.finish())
        except (SSEError, EventStreamError) as exc:
            out.append(self.encode_error(UpstreamError(str(exc))))
        if end_of_stream:
            out.append(self.end())
        return b"".join(out)

    def encode(self, chunk: JsonObject) -> bytes:
        if not self.first_chunk_at:
            self.first_chunk_at = time.monotonic()
        guard = self._guard
        if guard is not None and "error" not in chunk:
            if guard.blocked:
                return b""
            try:
                guard.check(chunk)
            except GuardrailBlocked as blocked:
                # part of the answer already went out: end it with the error, drop whatever the model says next
                guard.blocked = True
                return self.encode_error(blocked)
        if self._meter is not None:
            self._meter.count(chunk)
        if self._client_stream is None:
            return encode_data(chunk)
        return b"".join(encode_event(name, payload) for name, payload in self._client_stream.feed(chunk))

    def encode_error(self, error: GatewayError) -> bytes:
        """An error as a chunk of the stream (OpenAI's error object, re-encoded for Anthropic clients)."""
        return self.encode(orjson.loads(error.body()))

    def abort(self, error: GatewayError) -> bytes:
        """What ends the client's stream early: the error as a chunk, then the stream's end."""
        return self.encode_error(error) + self.end()

    def end(self) -> bytes:
        """What closes the client's stream: `data: [DONE]`, or the Anthropic events still owed."""
        if self._client_stream is None:
            return DONE
        return b"".join(encode_event(name, payload) for name, payload in self._client_stream.finish())
