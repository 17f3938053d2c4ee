"""Attempt stage: runs once per upstream attempt (retries included), inside the chain cluster's upstream filters.

Request: translate the OpenAI body for the backend Envoy picked, set path, host, length and credentials, and strip
everything the client sent that must not reach a provider. Response: translate the answer (JSON, SSE, errors)
back to OpenAI format, pick up usage, and settle the route stage's reservation with it — at the end of a successful
answer, or with what was streamed so far when the stream is cut or the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import struct
import time
from collections.abc import Callable

import orjson

from .. import constants
from ..auth.backend_credentials import CREDENTIAL_HEADERS
from ..client_formats import anthropic_messages
from ..errors import BadRequest, GatewayError, UpstreamError, UpstreamTimeout, anthropic_error_from_openai
from ..guardrails.engine import Guardrail, GuardrailBlocked
from ..guardrails.engine import apply as apply_guardrails
from ..limits.estimate import Usage, cost_micro_usd, estimate_prompt_tokens, usage_from_openai
from ..providers.stream import ChatStream
from ..runtime.build import BackendInfo, Runtime, find_route
from ..streaming.eventstream import EventStreamDecoder, EventStreamError
from ..streaming.sse import DONE, SSEDecoder, SSEError, encode_data, encode_event
from ..telemetry import semconv
from ..telemetry.outcome import Outcome, outcome_from_decision
from ..wire.base_pb2 import Metadata
from ..wire.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from ..wire.processing_mode_pb2 import ProcessingMode
from . import messages, provider_headers
from .endpoints import Endpoint

log = logging.getLogger(__name__)

STREAMED_RESPONSE_MODE = ProcessingMode(
    request_header_mode=ProcessingMode.SEND, request_body_mode=ProcessingMode.BUFFERED,
    response_header_mode=ProcessingMode.SEND, response_body_mode=ProcessingMode.STREAMED,
    request_trailer_mode=ProcessingMode.SKIP, response_trailer_mode=ProcessingMode.SKIP)
BUFFERED_RESPONSE_MODE = ProcessingMode(
    request_header_mode=ProcessingMode.SEND, request_body_mode=ProcessingMode.BUFFERED,
    response_header_mode=ProcessingMode.SEND, response_body_mode=ProcessingMode.BUFFERED,
    request_trailer_mode=ProcessingMode.SKIP, response_trailer_mode=ProcessingMode.SKIP)
"""For direct routes, whose route stage is configured without response bodies."""
DUPLEX_RESPONSE_MODE = ProcessingMode(
    request_header_mode=ProcessingMode.SEND, request_body_mode=ProcessingMode.BUFFERED,
    response_header_mode=ProcessingMode.SEND, response_body_mode=ProcessingMode.FULL_DUPLEX_STREAMED,
    request_trailer_mode=ProcessingMode.SKIP, response_trailer_mode=ProcessingMode.SEND)
"""A stream whose backend has a `stream_idle_timeout`: replies need not follow Envoy's chunks, so the stage can end
the stream with an error event on its own when the backend stalls."""
HEADERS_ONLY_MODE = ProcessingMode(
    request_header_mode=ProcessingMode.SEND, request_body_mode=ProcessingMode.BUFFERED,
    response_header_mode=ProcessingMode.SEND, response_body_mode=ProcessingMode.NONE,
    request_trailer_mode=ProcessingMode.SKIP, response_trailer_mode=ProcessingMode.SKIP)
"""A direct route's answer that already is the client's format and settles nothing: its body skips Python."""

# Client credentials and protocol headers that must never be forwarded to a provider. On a retry Envoy shows this
# stage the previous attempt's headers, so every header a backend credential sets is listed here too.
_CLIENT_ONLY_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "anthropic-version", "anthropic-beta",
                                  "openai-organization", "openai-project", "accept-encoding", "cookie",
                                  # hop-by-hop: they describe the client's connection, not the provider's
                                  "connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
                                  "proxy-connection", "te", "trailer", "upgrade",
                                  # who the client is stays with the gateway (X-Forwarded-* go by their prefix)
                                  "forwarded", "x-real-ip"}
                                 ) | CREDENTIAL_HEADERS
_NEVER_FORWARDED_PREFIXES = (constants.CLIENT_HEADER_PREFIX, constants.ENVOY_HEADER_PREFIX, "x-forwarded-")
_EVENTSTREAM = "application/vnd.amazon.eventstream"
_GUARD_WINDOW = 512
"""Characters of a streamed answer a blocking guardrail looks back over (a phrase split across chunks)."""
_BLOCKED = "\x00blocked"
"""`_guarded` once a guardrail blocked a streamed answer (no route is named so)."""
_JSON = "application/json"
_TAGGED = frozenset({constants.RESPONSE_HEADER_BACKEND, constants.RESPONSE_HEADER_ATTEMPTS,
                     constants.RESPONSE_HEADER_MODEL, provider_headers.UPSTREAM_REQUEST_ID})
"""Set on every answer by `on_response_headers` itself (so never also in its remove list)."""

_backend_by_metadata: dict[str, str] = {}
_MEMO_LIMIT = 4096
"""Envoy sends one text per endpoint; more distinct texts than this are not remembered (a bound on what a stream's
sender can make this process hold)."""
_BACKEND_IN_METADATA = re.compile(
    r'key:\s*"' + constants.METADATA_BACKEND_KEY + r'"\s*value\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"')


def forwarded_never(header: str) -> bool:
    """Client credentials and addresses, Babelgate's and Envoy's own headers, and any credential a provider sets:
    never sent on."""
    return header in _CLIENT_ONLY_HEADERS or header.startswith(_NEVER_FORWARDED_PREFIXES)


def backend_from_attributes(attributes: object) -> str | None:
    """Which backend Envoy picked, from the upstream host's metadata.

    Envoy sends that attribute as protobuf text format; the set of distinct texts is the set of endpoints, so the
    parse result is memoised by text.
    """
    for attribute in attributes.values():  # type: ignore[attr-defined]
        field = attribute.fields.get(constants.UPSTREAM_HOST_METADATA_ATTRIBUTE)
        if field is None:
            continue
        text = field.string_value
        backend = _backend_by_metadata.get(text)
        if backend is None:
            match = _BACKEND_IN_METADATA.search(text)
            if match is None:
                return None
            backend = match.group(1)
            if len(_backend_by_metadata) < _MEMO_LIMIT:
                _backend_by_metadata[text] = backend
        return backend
    return None


class AttemptStage:
    __slots__ = (
        "_attempt",
        "_backend",
        "_base64_embeddings",
        "_client_stream",
        "_completion",
        "_counting",
        "_created",
        "_decoder",
        "_direct",
        "_duplex",
        "_ended",
        "_ended_at",
        "_endpoint",
        "_first_byte_at",
        "_first_chunk_at",
        "_guarded",
        "_guardrails",
        "_identity_answer",
        "_model",
        "_outcome",
        "_prompt_estimate",
        "_raw_usage",
        "_request_id",
        "_requested",
        "_reservation",
        "_response_headers",
        "_runtime",
        "_sent_at",
        "_settled",
        "_span",
        "_status",
        "_stream",
        "_stream_tail",
        "_streamed_chars",
        "_streaming",
        "_timer",
        "error_style",
        "push",
        "usage",
    )

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._backend: BackendInfo | None = None
        self._endpoint = Endpoint.CHAT
        self._model = ""
        self._attempt = "1"
        self._streaming = False
        self._status = 0
        self._created = 0
        self._decoder: SSEDecoder | None = None
        self._stream: ChatStream | None = None
        self._reservation: str | None = None
        self._prompt_estimate = 0
        self._streamed_chars = 0
        self._settled = False
        self._client_stream: anthropic_messages.MessagesStream | None = None
        self.error_style = "openai"
        self._response_headers: dict[str, str] = {}
        self._base64_embeddings = False
        self._direct = False
        self._identity_answer = False
        self.usage: Usage | None = None
        self.push: Callable[[ProcessingResponse], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._duplex = False
        self._ended = False
        self._requested = ""
        self._sent_at = 0.0
        self._first_byte_at = 0.0
        self._ended_at = 0.0
        self._first_chunk_at = 0.0
        self._outcome: Outcome | None = None
        """A chain attempt's report, when telemetry is on (a direct route's is the route stage's)."""
        self._counting = False
        """Streamed text is counted (to settle a reservation, or for telemetry when the provider reports none)."""
        self._completion: list[str] | None = None
        """The answer's text, kept only for routes whose content is logged."""
        self._raw_usage: dict | None = None
        self._span: object | None = None
        """This attempt's trace span (a CLIENT span, the request span's child), when tracing is on."""
        self._guardrails: tuple[Guardrail, ...] = ()
        """The route's guardrails that look at answers."""
        self._guarded = ""
        self._stream_tail = ""
        self._request_id = ""
        """Envoy's x-request-id, for log lines."""
        """The route's name, for the audit log; set once a streamed answer was blocked, "blocked"."""

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse | None:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return self.on_request_headers(request.request_headers, request.attributes, request.metadata_context)
        if kind == "request_body":
            return self.on_request_body(request.request_body)
        if kind == "response_headers":
            return self.on_response_headers(request.response_headers)
        if kind == "response_trailers":
            return messages.continue_unchanged(kind)
        if kind == "response_body":
            reply = self.on_response_body(request.response_body)
            if request.response_body.end_of_stream and 200 <= self._status < 300:
                self._ended_at = time.monotonic()
                await self._settle()
                if self._runtime.access_logged:
                    self._hand_to_access_log(reply)
            return reply
        return messages.continue_unchanged(kind)

    async def close(self) -> None:
        """The gRPC stream ended. A successful answer that never reached its end (upstream cut, client gone) is
        still charged, with what was streamed."""
        self._disarm()
        self._record_latency()
        outcome = self._outcome
        if self._span is not None:
            traced = outcome or Outcome(requested_model=self._requested, endpoint=self._endpoint.value)
            self.fill(traced)
            self._runtime.telemetry.tracing.finish(self._span, traced)  # type: ignore[union-attr]
            self._span = None
        if outcome is not None and 200 <= self._status < 300:
            self.fill(outcome)
            self._runtime.telemetry.report(outcome)
            self._outcome = None
        if 200 <= self._status < 300:
            await self._settle()

    # -- request ------------------------------------------------------------------------------------------------

    def start_direct(self, backend: BackendInfo, model: str, requested: str, endpoint: Endpoint,
                     reservation: str | None, log_content: bool = False, guardrails: tuple[Guardrail, ...] = (),
                     route: str = "", request_id: str = "") -> None:
        """Serve a direct (single-backend) route from inside the route stage: what `on_request_headers` would
        learn from Envoy's attributes and metadata is known there already."""
        self._direct = True
        self._request_id = request_id
        self._backend = backend
        self._model = model
        self._requested = requested
        self._guardrails = tuple(g for g in guardrails if g.response)
        self._guarded = route
        if self._runtime.telemetry.enabled and log_content:
            self._completion = []
        self._endpoint = endpoint
        self._reservation = reservation
        if endpoint is Endpoint.MESSAGES:
            self.error_style = "anthropic"

    def on_request_headers(self, message: HttpHeaders, attributes: object, context: Metadata) -> ProcessingResponse:
        headers = messages.header_dict(message)
        self._request_id = headers.get("x-request-id", "")
        decision = messages.babelgate_metadata(context)
        backend_id = backend_from_attributes(attributes)
        backend = self._runtime.backends.get(backend_id or "")
        requested = decision.get(constants.METADATA_REQUESTED_KEY) or decision.get(constants.METADATA_ROUTE_KEY, "")
        route = find_route(self._runtime, requested)
        if backend is None or route is None:
            raise UpstreamError("The gateway could not tell which backend this attempt goes to.",
                                code="unknown_backend")
        self._backend = backend
        self._requested = requested
        if backend.id not in route.backend_models:
            raise UpstreamError(f"Backend {backend.id!r} is not part of route {route.name!r}.", code="unknown_backend")
        self._model = route.backend_model(backend.id, self._requested)
        self._guardrails = tuple(g for g in route.guardrails if g.response)
        self._guarded = route.name
        self._endpoint = Endpoint(decision.get(constants.METADATA_ENDPOINT_KEY, Endpoint.CHAT.value))
        if self._endpoint is Endpoint.MESSAGES:
            self.error_style = "anthropic"
        self._reservation = decision.get(constants.METADATA_RESERVATION_KEY)
        self._attempt = headers.get(constants.ENVOY_ATTEMPT_COUNT_HEADER, "1")
        traced: tuple[tuple[str, str], ...] = ()
        if self._runtime.telemetry.enabled:
            self._outcome = outcome_from_decision(decision, headers, route.name, self._requested)
            if route.log_content:
                self._completion = []
            if self._runtime.telemetry.tracing is not None:
                # from the metadata, not the header: a retry sees the headers the previous attempt sent
                traced = (("traceparent", self.trace(decision.get(constants.METADATA_TRACEPARENT_KEY))),)
        return messages.request_headers_reply(set_headers=traced,
                                              remove=[name for name in headers if forwarded_never(name)])

    def trace(self, parent: str | None) -> str:
        """Start this attempt's span; the `traceparent` the provider gets (it names this span)."""
        tracing = self._runtime.telemetry.tracing
        assert tracing is not None
        self._span = tracing.start_attempt(parent)
        return tracing.traceparent(self._span) or parent or ""

    def on_request_body(self, message: HttpBody, parsed: dict | None = None) -> ProcessingResponse:
        backend = self._backend
        assert backend is not None
        body = parsed if parsed is not None else orjson.loads(message.body)
        translator = backend.translator
        if self._endpoint is Endpoint.MESSAGES:
            body = anthropic_messages.to_openai(body)
        if self._endpoint is not Endpoint.EMBEDDINGS:
            self._streaming = body.get("stream") is True
            upstream = backend.chat_request(body, self._model, self._runtime.default_max_tokens)
            path = backend.base_path + translator.chat_path(self._model, self._streaming, backend.settings)
        elif translator.serves_embeddings:
            upstream = translator.embeddings_request(body, self._model, backend.settings)
            self._base64_embeddings = body.get("encoding_format") == "base64"
            path = backend.base_path + translator.embeddings_path(self._model, backend.settings)
        else:
            raise BadRequest(f"Backend {backend.id!r} ({backend.schema}) does not serve embeddings.",
                             code="unsupported_endpoint")
        self._counting = (self._reservation is not None or self._runtime.telemetry.enabled
                          or self._runtime.access_logged)
        if self._counting:
            self._prompt_estimate = estimate_prompt_tokens(body, self._runtime.chars_per_token)
        self._identity_answer = (self._direct and self._reservation is None and not self._counting
                                 and not self._guardrails
                                 and not self._streaming
                                 and not self._base64_embeddings and self._endpoint is not Endpoint.MESSAGES
                                 and translator.identity_responses)
        if self._streaming:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._created = int(time.time())
            if self._endpoint is Endpoint.MESSAGES:
                # Anthropic clients always get usage (in message_delta), so the translator must report it.
                include_usage = True
                self._client_stream = anthropic_messages.MessagesStream(self._model)
            self._stream = translator.chat_stream(self._model, self._created, include_usage)
        encoded = orjson.dumps(upstream)
        self._sent_at = time.monotonic()
        return messages.request_body_reply(
            set_headers=(
                (":path", path),
                (":authority", backend.authority),
                ("content-type", _JSON),
                ("content-length", str(len(encoded))),
                *backend.credential.headers("POST", backend.origin + path, encoded),
            ),
            body=encoded)

    def _record_latency(self) -> None:
        """At the end of the attempt: its whole duration, or, for one that never answered, as long as it lasted."""
        backend = self._backend
        if backend is None or not self._sent_at:
            return
        latency = self._runtime.health.latency
        if self._first_byte_at == 0.0:
            latency.on_failure(backend.id, time.monotonic() - self._sent_at)
        elif self._ended_at:
            latency.on_end(backend.id, self._ended_at - self._sent_at)
        self._sent_at = 0.0

    def _arm_idle_timer(self) -> None:
        assert self._backend is not None
        timeout = self._backend.settings.stream_idle_timeout
        if timeout is not None and self.push is not None:
            self._disarm()
            self._timer = asyncio.get_running_loop().call_later(timeout, self._stream_stalled, timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stream_stalled(self, timeout: float) -> None:
        """The backend paused past its limit in the middle of a stream: the client already has part of the answer,
        so no other backend may take over; end the stream with an error event the SDKs raise."""
        self._timer = None
        assert self._backend is not None and self.push is not None
        error = UpstreamTimeout(f"Backend {self._backend.id!r} sent nothing for {timeout:g}s in the middle of the "
                                "stream; the stream was ended.", code="stream_idle_timeout")
        self._ended = True
        self.push(messages.streamed_body_reply(self._encode_error(error) + self._end_of_stream(), True))

    # -- response -----------------------------------------------------------------------------------------------

    def on_response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_dict(message)
        self._status = int(headers.get(":status", "0") or 0)
        backend = self._backend
        assert backend is not None
        health = self._runtime.health
        if self._sent_at:
            self._first_byte_at = time.monotonic()
            if 200 <= self._status < 300:
                health.latency.on_first_byte(backend.id, self._first_byte_at - self._sent_at)
            else:
                health.latency.on_failure(backend.id, self._first_byte_at - self._sent_at)
        if not 200 <= self._status < 300:
            self._response_headers = headers
            health.cooldowns.on_response(backend.id, self._status, headers)
        request_id, removed = provider_headers.screen(headers, _TAGGED)
        tags = ((constants.RESPONSE_HEADER_BACKEND, backend.id),
                (constants.RESPONSE_HEADER_ATTEMPTS, headers.get(constants.ENVOY_ATTEMPT_COUNT_HEADER, self._attempt)),
                (constants.RESPONSE_HEADER_MODEL, self._requested), *request_id)
        content_type = headers.get("content-type", "")
        if 200 <= self._status < 300 and self._streaming and content_type.startswith(("text/event-stream",
                                                                                        _EVENTSTREAM)):
            self._decoder = EventStreamDecoder() if content_type.startswith(_EVENTSTREAM) else SSEDecoder()
            mode = STREAMED_RESPONSE_MODE
            if backend.settings.stream_idle_timeout is not None and self.push is not None:
                self._duplex = True
                mode = DUPLEX_RESPONSE_MODE
                self._arm_idle_timer()
            if "content-length" in headers:
                removed.append("content-length")
            return messages.response_headers_reply(set_headers=tags, remove=removed, mode=mode)
        if self._identity_answer and 200 <= self._status < 300:
            return messages.response_headers_reply(set_headers=tags, remove=removed, mode=HEADERS_ONLY_MODE)
        return messages.response_headers_reply(set_headers=tags, remove=removed,
                                               mode=BUFFERED_RESPONSE_MODE if self._direct else None)

    def on_response_body(self, message: HttpBody) -> ProcessingResponse:
        if self._decoder is not None:
            return self._stream_chunk(message)
        backend = self._backend
        assert backend is not None
        if not 200 <= self._status < 300:
            status, error = backend.translator.error_response(self._status, message.body, self._response_headers)
            error = without_secrets(error, backend)
            if self._endpoint is Endpoint.MESSAGES:
                error = anthropic_error_from_openai(status, error)
            return _json_reply(error, status if status != self._status else None)
        try:
            answer = orjson.loads(message.body)
            if self._endpoint is Endpoint.EMBEDDINGS:
                translated = backend.translator.embeddings_response(answer, self._model)
                if self._base64_embeddings:
                    encode_embeddings_base64(translated)
            else:
                translated = backend.translator.chat_response(answer, self._model, int(time.time()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            # Not JSON is the provider's doing; anything else is a translator that met an answer it didn't expect,
            # a bug to see in the log with its traceback and the request it happened to.
            if isinstance(exc, orjson.JSONDecodeError):
                log.warning("backend %r answered request %s with a body that is not JSON", backend.id,
                            self._request_id or "-")
            else:
                log.exception("the %s translator failed on backend %r's answer to request %s", backend.schema,
                              backend.id, self._request_id or "-")
            # The response is already on its way: rewrite it rather than answering anew.
            unreadable = UpstreamError(f"Backend {backend.id!r} sent an answer the gateway could not read: "
                                       f"{type(exc).__name__}.")
            return _json_reply(orjson.loads(unreadable.body(self.error_style)), unreadable.status)
        if self._guardrails:
            try:
                apply_guardrails(self._guardrails, translated, phase="response", route=self._guarded)
            except GuardrailBlocked as blocked:
                return _json_reply(orjson.loads(blocked.body(self.error_style)), blocked.status)
        self._raw_usage = translated.get("usage")
        self.usage = usage_from_openai(self._raw_usage)
        if self._completion is not None:
            for choice in translated.get("choices") or ():
                content = (choice.get("message") or {}).get("content")
                if isinstance(content, str):
                    self._completion.append(content)
        if self._endpoint is Endpoint.MESSAGES:
            return _json_reply(anthropic_messages.from_openai(translated, self._model))
        return _json_reply(translated)

    def _stream_chunk(self, message: HttpBody) -> ProcessingResponse:
        decoder, stream = self._decoder, self._stream
        assert decoder is not None and stream is not None
        out: list[bytes] = []
        try:
            events = decoder.feed(message.body)
            if message.end_of_stream:
                events.extend(decoder.finish())
            for event in events:
                out.extend(self._encode(chunk) for chunk in stream.feed(event.event, event.data))
            if message.end_of_stream:
                out.extend(self._encode(chunk) for chunk in stream.finish())
        except (SSEError, EventStreamError) as exc:
            out.append(self._encode_error(UpstreamError(str(exc))))
        if message.end_of_stream:
            out.append(self._end_of_stream())
        if not self._duplex:
            return messages.response_body_reply(b"".join(out))
        if self._ended:  # the stage already ended this stream on its own
            return messages.streamed_body_reply(b"", False)
        if message.end_of_stream:
            self._disarm()
        else:
            self._arm_idle_timer()
        return messages.streamed_body_reply(b"".join(out), message.end_of_stream)

    def _encode_error(self, error: GatewayError) -> bytes:
        return self._encode(orjson.loads(error.body()))

    def _guard_chunk(self, chunk: dict) -> None:
        """Redaction works chunk by chunk (what was sent is sent); a `block` looks at the last stretch of the whole
        answer, so a phrase the model streams over several chunks is still found."""
        apply_guardrails(tuple(g for g in self._guardrails if g.mode != "block"), chunk, phase="response",
                         route=self._guarded)
        blocking = tuple(g for g in self._guardrails if g.mode == "block")
        if blocking:
            text = "".join((choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices") or ())
            if text:
                self._stream_tail = (self._stream_tail + text)[-_GUARD_WINDOW:]
                apply_guardrails(blocking, {"content": self._stream_tail}, phase="response", route=self._guarded)

    def _end_of_stream(self) -> bytes:
        if self._client_stream is None:
            return DONE
        return b"".join(encode_event(name, payload) for name, payload in self._client_stream.finish())

    def _encode(self, chunk: dict) -> bytes:
        if not self._first_chunk_at:
            self._first_chunk_at = time.monotonic()
        if self._guardrails and "error" not in chunk:
            if self._guarded == _BLOCKED:
                return b""
            try:
                self._guard_chunk(chunk)
            except GuardrailBlocked as blocked:
                # part of the answer already went out: end it with the error, drop whatever the model says next
                self._guarded = _BLOCKED
                return self._encode(orjson.loads(blocked.body()))
        self._count(chunk)
        if self._client_stream is None:
            return encode_data(chunk)
        return b"".join(encode_event(name, payload) for name, payload in self._client_stream.feed(chunk))

    def _count(self, chunk: dict) -> None:
        if self._counting:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if self._completion is not None and delta.get("content"):
                    self._completion.append(delta["content"])
                self._streamed_chars += len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
                for call in delta.get("tool_calls") or ():
                    self._streamed_chars += len((call.get("function") or {}).get("arguments") or "")

    def _hand_to_access_log(self, reply: ProcessingResponse) -> None:
        """A direct route's stage is the request's own filter: its metadata reaches the request's log line. An
        attempt's metadata stays on the attempt, so a whole (buffered) answer carries the fields to the route stage
        in an internal response header, which that stage turns into metadata and removes."""
        fields = self._access_log_fields()
        if self._direct:
            messages.with_metadata(reply, fields)
        elif self._decoder is None:
            reply.response_body.response.header_mutation.set_headers.extend(messages.mutation(
                ((constants.HEADER_ACCESS_LOG, orjson.dumps(fields).decode()),)).set_headers)

    def _access_log_fields(self) -> dict[str, object]:
        assert self._backend is not None
        usage = self._final_usage()
        price = self._runtime.prices.get((self._backend.id, self._model))
        return {constants.METADATA_BACKEND_KEY: self._backend.id, "model": self._model,
                "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                "cost_usd": cost_micro_usd(usage, price) / 1e6 if price is not None else 0.0}

    # -- telemetry ----------------------------------------------------------------------------------------------

    def fill(self, outcome: Outcome) -> None:
        """What this attempt knows of the request's end: backend, model, status, usage, cost, timing, text."""
        backend = self._backend
        if backend is None:
            return
        outcome.backend = backend.id
        outcome.provider = semconv.provider_name(backend.schema, backend.settings.preset)
        outcome.served_model = self._model
        outcome.stream = self._streaming
        if self._status:
            outcome.status = self._status
        if not outcome.first_token and self._streaming and self._first_chunk_at:
            outcome.first_token = self._first_chunk_at
        outcome.ended = self._ended_at or time.monotonic()
        if 200 <= self._status < 300:
            usage = self._final_usage()
            outcome.input_tokens, outcome.output_tokens = usage.input_tokens, usage.output_tokens
            outcome.cached_tokens = usage.cached_input_tokens
            details = (self._raw_usage or {}).get("completion_tokens_details") if isinstance(
                self._raw_usage, dict) else None
            if isinstance(details, dict):
                outcome.reasoning_tokens = int(details.get("reasoning_tokens") or 0)
            price = self._runtime.prices.get((backend.id, self._model))
            if price is not None:
                outcome.cost_usd = cost_micro_usd(usage, price) / 1e6
        if self._completion is not None:
            outcome.completion = "".join(self._completion)

    # -- settlement ---------------------------------------------------------------------------------------------

    def _final_usage(self) -> Usage:
        """Real usage when the provider reported it; otherwise the prompt estimate and the streamed text."""
        if self._stream is not None:
            self._raw_usage = self._stream.usage or self._raw_usage
            self.usage = usage_from_openai(self._stream.usage) or self.usage
        counted = math.ceil(self._streamed_chars / self._runtime.chars_per_token)
        usage = self.usage
        if usage is None:
            return Usage(self._prompt_estimate, counted)
        if usage.output_tokens == 0 and counted:
            return usage._replace(output_tokens=counted)
        if usage.input_tokens == 0:
            return usage._replace(input_tokens=self._prompt_estimate)
        return usage

    async def _settle(self) -> None:
        if self._settled or self._reservation is None or self._runtime.limiter is None or self._backend is None:
            return
        self._settled = True
        reservation = self._runtime.limiter.unseal(self._reservation)
        if reservation is not None:
            await self._runtime.limiter.settle(reservation, self._final_usage(), self._backend.id, self._model)


def without_secrets(error: dict, backend: BackendInfo) -> dict:
    """A provider's error may quote the credential it was sent (some echo the key they refused): never pass it on."""
    secrets = backend_secrets(backend)
    if not secrets:
        return error
    text = orjson.dumps(error).decode()
    scrubbed = text
    for secret in secrets:
        scrubbed = scrubbed.replace(secret, "[REDACTED:CREDENTIAL]")
    return error if scrubbed == text else orjson.loads(scrubbed)


def backend_secrets(backend: BackendInfo) -> tuple[str, ...]:
    """The API key values a static credential sends (the part after `Bearer`); signed or token credentials send
    nothing long-lived."""
    values = getattr(backend.credential, "values", ())
    return tuple(secret for _, value in values if len(secret := value.rpartition(" ")[2]) >= 8)


def encode_embeddings_base64(listing: dict) -> None:
    """Providers answer floats; a client that asked for `encoding_format: base64` gets OpenAI's form (little-endian
    float32, base64) whatever the backend."""
    for item in listing.get("data") or ():
        vector = item.get("embedding")
        if isinstance(vector, list):
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _json_reply(payload: dict, status: int | None = None) -> ProcessingResponse:
    encoded = orjson.dumps(payload)
    headers = [("content-type", _JSON), ("content-length", str(len(encoded)))]
    if status is not None:
        headers.append((":status", str(status)))
    return messages.response_body_reply(encoded, set_headers=headers)
