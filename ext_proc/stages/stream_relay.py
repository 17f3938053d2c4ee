"""One streamed answer, provider bytes in, client bytes out: SSE or AWS event-stream frames decoded into events, the
backend's `ChatStream` turning each into OpenAI chunks, and each chunk encoded as the client reads it (OpenAI SSE
`data:` lines, or Anthropic Messages events), through the stream guard and the usage meter when there are any.

An Anthropic-family stream to an Anthropic Messages client is not translated (`PassthroughRelay`): the provider's
events go out as they came, Bedrock's frames decoded into the Anthropic events they carry; the backend's `ChatStream`
still reads each event, so the meter sees the answer as it sees any other. A native Responses stream to a Responses
client is relayed the same way (`ResponsesPassthroughRelay`). A route's answer guardrails read the client's own events
there (`StreamGuard.anthropic_event`, `responses_event`): text delta events are held back and re-cut, so a guarded
Responses stream is numbered as sent.

This runs once per chunk Envoy hands over: it keeps to plain attributes and one call per decoded chunk.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time

import orjson

from ..client_formats.anthropic_messages import MessagesStream
from ..client_formats.responses_stream import ResponsesStream
from ..errors import GatewayError, UpstreamError, anthropic_error_from_openai
from ..guardrails.engine import GuardrailBlocked
from ..json_types import JsonObject
from ..providers.stream import ChatStream
from ..streaming.eventstream import EventStreamDecoder, EventStreamError
from ..streaming.sse import DONE, SSEDecoder, SSEError, SSEEvent, encode_data, encode_event
from .stream_guard import StreamGuard
from .usage_meter import UsageMeter

EVENTSTREAM = "application/vnd.amazon.eventstream"
SSE_CONTENT_TYPE = "text/event-stream"
"""What every relayed stream is, whatever the provider sent (Bedrock's event-stream included)."""
_STREAMED_TYPES = ("text/event-stream", EVENTSTREAM)
RESPONSE_LIFECYCLE_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress",
                                       "response.completed", "response.incomplete", "response.failed"})
"""Responses stream events that carry the whole Response."""


def is_stream(content_type: str) -> bool:
    """An answer the relay translates as it flows (SSE, or Bedrock's binary event-stream)."""
    return content_type.startswith(_STREAMED_TYPES)


class StreamRelay:
    __slots__ = ("_client_stream", "_decoder", "_guard", "_meter", "first_chunk_at", "stream")

    def __init__(self, content_type: str, stream: ChatStream, client_stream: MessagesStream | ResponsesStream | None,
                 guard: StreamGuard | None, meter: UsageMeter | None) -> None:
        """`client_stream`: the re-encoder for Anthropic Messages or Responses clients, None for OpenAI chat
        clients."""
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
                out.append(self._leftover())
                out.extend(self.encode(chunk) for chunk in stream.finish())
        except (SSEError, EventStreamError) as exc:
            out.append(self.encode_error(UpstreamError(str(exc))))
        if end_of_stream:
            out.append(self.end())
        return b"".join(out)

    @property
    def blocked(self) -> bool:
        """A guardrail ended the answer: the client never got it whole, so nothing of it is kept."""
        return self._guard is not None and self._guard.blocked

    @property
    def spoiled(self) -> bool:
        """The client did not get the answer whole: a guardrail ended it, or an error chunk took the place of its
        end. Nothing of it is kept (stored Responses, the response cache)."""
        return self.blocked or self.stream.failed

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
        return self._encode_checked(chunk)

    def _encode_checked(self, chunk: JsonObject) -> bytes:
        """A chunk the guard has seen (or made), metered and encoded as the client reads it."""
        if self._meter is not None:
            self._meter.count(chunk)
        if self._client_stream is None:
            return encode_data(chunk)
        return b"".join(encode_event(name, payload) for name, payload in self._client_stream.feed(chunk))

    def _leftover(self) -> bytes:
        """What the guard still holds when the provider's stream ends without a finish reason."""
        guard = self._guard
        if guard is None or guard.blocked:
            return b""
        try:
            chunk = guard.leftover()
        except GuardrailBlocked as blocked:
            guard.blocked = True
            return self.encode_error(blocked)
        return self._encode_checked(chunk) if chunk is not None else b""

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


class PassthroughRelay(StreamRelay):
    """An Anthropic-family backend's stream to an Anthropic Messages client, untranslated."""

    __slots__ = ("_bedrock",)
    _error_events: frozenset[str] = frozenset({"error"})
    """Provider events that already tell the client the stream failed."""

    def __init__(self, content_type: str, stream: ChatStream, guard: StreamGuard | None,
                 meter: UsageMeter | None) -> None:
        super().__init__(content_type, stream, None, guard, meter)
        self._bedrock = content_type.startswith(EVENTSTREAM)

    def relay(self, body: bytes, end_of_stream: bool) -> bytes:
        out: list[bytes] = []
        try:
            events = self._decoder.feed(body)
            if end_of_stream:
                events.extend(self._decoder.finish())
            for event in events:
                out.append(self._forward(event))
            if end_of_stream:
                out.append(self._leftover())
                out.extend(self._observe(chunk, None) for chunk in self.stream.finish())
        except (SSEError, EventStreamError) as exc:
            out.append(self.encode_error(UpstreamError(str(exc))))
        return b"".join(out)

    def _forward(self, event: SSEEvent) -> bytes:
        """One provider event: what the client gets for it (nothing once a guardrail ended the answer)."""
        forwarded = self._client_event(event.event, event.data)
        guard = self._guard
        sent = b""
        if forwarded is not None and guard is None:
            sent = self._emit(forwarded)
        elif forwarded is not None and guard is not None and not guard.blocked:
            try:
                sent = self._guarded(guard, forwarded)
            except GuardrailBlocked as blocked:
                guard.blocked = True
                sent = self.encode_error(blocked)
        if sent and not self.first_chunk_at:
            self.first_chunk_at = time.monotonic()
        out = [self._observe(chunk, forwarded) for chunk in self.stream.feed(event.event, event.data)]
        return sent + b"".join(out)

    def _emit(self, forwarded: tuple[str, bytes]) -> bytes:
        """The bytes of a provider event the client gets."""
        return _raw_event(*forwarded)

    def _emit_payload(self, name: str, payload: JsonObject) -> bytes:
        """The bytes of a provider event the guard went through (changed or not)."""
        return _raw_event(name, orjson.dumps(payload))

    def _guarded(self, guard: StreamGuard, forwarded: tuple[str, bytes]) -> bytes:
        """The events the client gets for one provider event, text held back and redacted (an event that is no
        JSON object goes out as it came: there is no text in it the guard could read)."""
        payload = _payload(forwarded[1])
        if payload is None:
            return self._emit(forwarded)
        return b"".join(self._emit_payload(name, event) for name, event in self._events(guard, forwarded[0], payload))

    @staticmethod
    def _events(guard: StreamGuard, name: str, payload: JsonObject) -> list[tuple[str, JsonObject]]:
        return guard.anthropic_event(name, payload)

    def _leftover(self) -> bytes:
        guard = self._guard
        if guard is None or guard.blocked:
            return b""
        try:
            return b"".join(self._emit_payload(name, payload) for name, payload in self._held_events(guard))
        except GuardrailBlocked as blocked:
            guard.blocked = True
            return self.encode_error(blocked)

    @staticmethod
    def _held_events(guard: StreamGuard) -> list[tuple[str, JsonObject]]:
        return guard.anthropic_leftover()

    def _client_event(self, name: str | None, data: bytes) -> tuple[str, bytes] | None:
        """The Anthropic event a provider event is (Bedrock's `chunk` carries one, base64 in JSON); None for an
        event that carries none (a Bedrock exception: the stream's error chunk speaks for it)."""
        if not self._bedrock:
            return (name or "message", data)
        if name != "chunk":
            return None
        try:
            inner = base64.b64decode(orjson.loads(data)["bytes"], validate=True)
            kind = orjson.loads(inner).get("type")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, binascii.Error):
            return None  # the stream reports the malformed event
        return (kind if isinstance(kind, str) else "message", inner)

    def _observe(self, chunk: JsonObject, forwarded: tuple[str, bytes] | None) -> bytes:
        """The translated chunk, for the meter only (the guard reads the client's own events); bytes only for an
        error the client's own events don't already carry."""
        if "error" in chunk:
            if forwarded is not None and forwarded[0] in self._error_events:
                return b""
            return self._stream_error(chunk)
        if self._guard is not None and self._guard.blocked:
            return b""
        if self._meter is not None:
            self._meter.count(chunk)
        return b""

    def encode_error(self, error: GatewayError) -> bytes:
        return _raw_event("error", error.body("anthropic"))

    def _stream_error(self, chunk: JsonObject) -> bytes:
        """The client's error event for an error the translation found (a cut or malformed stream)."""
        return encode_event("error", anthropic_error_from_openai(502, chunk))

    def end(self) -> bytes:
        """The provider's own events close the client's stream."""
        return b""


class ResponsesPassthroughRelay(PassthroughRelay):
    """A native Responses API stream (OpenAI, Azure) to a Responses client, untranslated; an error the gateway adds
    (a cut stream, a guardrail) is a Responses `error` event numbered after the last event the client got."""

    __slots__ = ("_restored", "_sequence")
    _error_events = frozenset({"error", "response.failed"})

    def __init__(self, content_type: str, stream: ChatStream, guard: StreamGuard | None, meter: UsageMeter | None,
                 restored: JsonObject) -> None:
        """`restored`: fields of the Response the provider could not know (the client's `previous_response_id`,
        which the gateway resolved itself), put back into the events that carry the Response."""
        super().__init__(content_type, stream, guard, meter)
        self._sequence = 0
        self._restored = restored

    def _client_event(self, name: str | None, data: bytes) -> tuple[str, bytes] | None:
        if self._restored and name in RESPONSE_LIFECYCLE_EVENTS:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
                event = orjson.loads(data)
                event["response"].update(self._restored)
                data = orjson.dumps(event)
        return (name or "message", data)

    def _emit(self, forwarded: tuple[str, bytes]) -> bytes:
        # counted as sent, not as received: an error event the gateway adds follows the client's last event (a
        # provider event a guardrail dropped leaves no gap in the numbers)
        self._sequence += 1
        return _raw_event(*forwarded)

    def _emit_payload(self, name: str, payload: JsonObject) -> bytes:
        # a guarded stream is numbered as sent: the guard holds some delta events back and adds others
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        return _raw_event(name, orjson.dumps(payload))

    @staticmethod
    def _events(guard: StreamGuard, name: str, payload: JsonObject) -> list[tuple[str, JsonObject]]:
        return guard.responses_event(name, payload)

    @staticmethod
    def _held_events(guard: StreamGuard) -> list[tuple[str, JsonObject]]:
        return guard.responses_leftover()

    def encode_error(self, error: GatewayError) -> bytes:
        payload = orjson.loads(error.body())["error"]
        return self._error_event(payload.get("message"), payload.get("code") or payload.get("type"))

    def _stream_error(self, chunk: JsonObject) -> bytes:
        error = chunk.get("error")
        error = error if isinstance(error, dict) else {}
        return self._error_event(error.get("message"), error.get("code") or "server_error")

    def _error_event(self, message: object, code: object) -> bytes:
        event = {"type": "error", "code": code if isinstance(code, str) else "server_error",
                 "message": message if isinstance(message, str) else "The upstream stream failed.", "param": None,
                 "sequence_number": self._sequence}
        self._sequence += 1
        return encode_event("error", event)


def _payload(data: bytes) -> JsonObject | None:
    """A provider event's JSON object; None for one that is not (it goes out as it came: the guard cannot read it)."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _raw_event(name: str, data: bytes) -> bytes:
    """An event as the provider encoded it (a payload of several lines keeps them, one `data:` field each)."""
    if b"\n" not in data:
        return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\n" + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"
