"""Attempt stage: runs once per upstream attempt (retries included), inside the chain cluster's upstream filters.

Request: translate the OpenAI body for the backend Envoy picked, set path, host, length and credentials, and strip
everything the client sent that must not reach a provider. Response: translate the answer (JSON, SSE, errors)
back to the client's format, pick up usage, and settle the route stage's reservation with it — at the end of a
successful answer, or with what was streamed so far when the stream is cut or the client goes away.

An Anthropic Messages body whose attempt goes to an Anthropic-family backend, and a Responses API body whose attempt
goes to a backend that serves that API itself, are not translated either way (`send_passthrough`): the answer is
read for usage and guardrails only (and a Response kept when the client asked to store it: `responses_turn`).
A `count_tokens` attempt asks the backend's own counting endpoint (`send_count`), or answers the gateway's estimate
itself on a backend that has none.

This module speaks the ext_proc protocol (phases, processing modes, Envoy's attributes and metadata) and hands the
work to one module per job:

- `upstream_request`: the request that leaves for the provider, and the headers that never do;
- `answers`: whole answers and errors back to the client's format;
- `answer_schema`: an answer checked against the JSON schema its request asked for (a 502 that fails over if not);
- `stream_relay`: a streamed answer, chunk by chunk; `stream_guard`: guardrails and the idle limit over it;
- `usage_meter`: the tokens used, and the reservation's settlement;
- `attempt_report`: latency averages, telemetry and the access log.

A direct (single-backend) route runs this same stage inside its route stage's stream (`start_direct`, `send`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping

import orjson
from google.protobuf.struct_pb2 import Struct

from .. import constants
from ..cache.keys import CACHE_HEADER
from ..client_formats import anthropic_messages
from ..errors import UpstreamError
from ..guardrails.engine import Guardrail, GuardrailBlocked
from ..guardrails.engine import apply as apply_guardrails
from ..json_types import JsonObject
from ..limits.estimate import Usage, cost_micro_usd, estimate_prompt_tokens
from ..limits.limiter import Reservation
from ..providers import anthropic_passthrough, responses_passthrough
from ..providers.openai_responses import chat_completion_from_response
from ..providers.stream import ChatStream
from ..runtime.build import BackendInfo, Runtime, find_route
from ..telemetry.outcome import Outcome, outcome_from_decision
from ..wire.base_pb2 import Metadata
from ..wire.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from ..wire.processing_mode_pb2 import ProcessingMode
from . import answer_schema, answers, attempt_report, count_tokens, messages, provider_headers, upstream_request
from .attempt_report import AttemptReport
from .endpoints import ANTHROPIC_STYLE, Endpoint
from .response_cache import AnswerWriter
from .responses_turn import ResponsesTurn
from .stream_guard import StallTimer, StreamGuard
from .stream_meter import settled_aside
from .stream_relay import SSE_CONTENT_TYPE, PassthroughRelay, ResponsesPassthroughRelay, StreamRelay, is_stream
from .upstream_request import forwarded_never
from .usage_meter import UsageMeter

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

_TAGGED = frozenset({constants.RESPONSE_HEADER_BACKEND, constants.RESPONSE_HEADER_ATTEMPTS,
                     constants.RESPONSE_HEADER_MODEL, provider_headers.UPSTREAM_REQUEST_ID})
"""Set on every answer by `on_response_headers` itself (so never also in its remove list)."""

_backend_by_metadata: dict[str, str] = {}
_MEMO_LIMIT = 4096
"""Envoy sends one text per endpoint; more distinct texts than this are not remembered (a bound on what a stream's
sender can make this process hold)."""
_BACKEND_IN_METADATA = re.compile(
    r'key:\s*"' + constants.METADATA_BACKEND_KEY + r'"\s*value\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"')


def backend_from_attributes(attributes: Mapping[str, Struct]) -> str | None:
    """Which backend Envoy picked, from the upstream host's metadata.

    Envoy sends that attribute as protobuf text format; the set of distinct texts is the set of endpoints, so the
    parse result is memoised by text.
    """
    for attribute in attributes.values():
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
        "_betas",
        "_cache",
        "_created",
        "_direct",
        "_dropped",
        "_embeddings_estimate",
        "_endpoint",
        "_guardrails",
        "_hands_latency",
        "_identity_answer",
        "_include_usage",
        "_keep_text",
        "_meter",
        "_metered_aside",
        "_model",
        "_owner",
        "_passthrough",
        "_relay",
        "_report",
        "_request_id",
        "_requested",
        "_reservation",
        "_reserved_here",
        "_response_headers",
        "_route",
        "_runtime",
        "_schema",
        "_settling",
        "_stall",
        "_status",
        "_streaming",
        "_turn",
        "_whole",
        "error_style",
        "push",
    )

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.error_style = "openai"
        self.push: Callable[[ProcessingResponse], None] | None = None
        # what the attempt is: set by `on_request_headers` (or `start_direct`)
        self._backend: BackendInfo | None = None
        self._endpoint = Endpoint.CHAT
        self._model = ""
        self._requested = ""
        self._route = ""
        self._guardrails: tuple[Guardrail, ...] = ()
        """The route's guardrails that look at answers."""
        self._keep_text = False
        """The route's content is logged: the answer's text is kept for telemetry."""
        self._reservation: str | None = None
        self._reserved_here: Reservation | None = None
        """A direct route's reservation as the route stage made it (its leases with it): never sealed, since it
        never leaves this process (`_reservation`, the sealed form, is a chain attempt's)."""
        self._attempt = "1"
        self._request_id = ""
        """Envoy's x-request-id, for log lines."""
        self._direct = False
        self._dropped = ""
        """The request fields this attempt's translation left out, comma-separated (`x-babelgate-dropped-fields`)."""
        # what the request asked: set by `send`
        self._streaming = False
        self._include_usage = False
        self._created = 0
        self._base64_embeddings = False
        self._embeddings_estimate = 0
        """The gateway's estimate of an embeddings input, for a provider whose answer counts no tokens."""
        self._schema: answer_schema.AnswerSchema | None = None
        """The JSON the request asked for (`response_format`): the answer is checked against it."""
        self._identity_answer = False
        self._metered_aside = False
        """A stream the stream meter settles (`stream_meter.py`): its chunks pass without this stage."""
        self._passthrough = False
        """The client's Anthropic body went as it was: the answer goes back as it comes."""
        self._betas: list[str] = []
        """The client's `anthropic-beta` list, for a passthrough or a count."""
        self._owner = ""
        """The key id of the request: a stored Response belongs to it."""
        self._turn: ResponsesTurn | None = None
        """A Responses API request's answer side."""
        self._cache: AnswerWriter | None = None
        """Set on a route with a response cache: the answer's `x-babelgate-cache` tag, and on a miss its storing."""
        self._whole: JsonObject | None = None
        """A whole (not streamed) answer as the client got it, for the response cache."""
        # what came back
        self._status = 0
        self._response_headers: dict[str, str] = {}
        """A failed answer's headers, for its error translation."""
        self._meter: UsageMeter | None = None
        """Set once the request is sent, when a reservation, telemetry or the access log needs the usage."""
        self._relay: StreamRelay | None = None
        """Set for a successful streamed answer."""
        self._stall: StallTimer | None = None
        """Set for a streamed answer whose backend has an idle limit (FULL_DUPLEX_STREAMED)."""
        self._report = AttemptReport()
        self._hands_latency = False
        """A chain attempt of a route ranked by latency: its samples go to the route stage (`routing.latency`)."""
        self._settling: asyncio.Future[None] | None = None
        """The settlement started with the answer's last reply, awaited when the stream closes."""

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
                self._report.ended_at = time.monotonic()
                limiter = self._runtime.limiter
                if limiter is not None and limiter.store.settles_in_order:
                    # sent before anything this process asks the store later, confirmed in `close`: the answer
                    # need not wait for the settlement's round trip
                    self._settling = asyncio.ensure_future(self._settle())
                else:
                    await self._settle()
                if self._turn is not None:
                    await self._keep_response(self._turn)
                if self._cache is not None and self._cache.writes:
                    await self._cache_answer(self._cache)
                if self._runtime.access_logged:
                    self._hand_to_access_log(reply)
                if self._hands_latency and self._relay is None and (sample := self._report.handed(ok=True)):
                    messages.add_headers(reply.response_body.response.header_mutation, (sample,))
            return reply
        return messages.continue_unchanged(kind)

    async def close(self) -> None:
        """The gRPC stream ended. A successful answer that never reached its end (upstream cut, client gone) is
        still charged, with what was streamed."""
        if self._stall is not None:
            self._stall.disarm()
        report = self._report
        if self._backend is not None:
            report.record_latency(self._runtime.health.latency, self._backend.id)
        outcome = report.outcome
        tracing = self._runtime.telemetry.tracing
        if report.span is not None and tracing is not None:
            traced = outcome or Outcome(requested_model=self._requested, endpoint=self._endpoint.value)
            self.fill(traced)
            tracing.finish(report.span, traced)
            report.span = None
        if outcome is not None and 200 <= self._status < 300:
            self.fill(outcome)
            self._runtime.telemetry.report(outcome)
            report.outcome = None
        if self._settling is not None:
            await self._settling
        if 200 <= self._status < 300:
            await self._settle()

    # -- request ------------------------------------------------------------------------------------------------

    def start_direct(self, backend: BackendInfo, model: str, requested: str, endpoint: Endpoint,
                     reserved_here: Reservation | None, log_content: bool = False,
                     guardrails: tuple[Guardrail, ...] = (), route: str = "", request_id: str = "",
                     betas: list[str] | None = None, owner: str = "", cache: AnswerWriter | None = None) -> None:
        """Serve a direct (single-backend) route from inside the route stage: what `on_request_headers` would
        learn from Envoy's attributes and metadata is known there already."""
        self._direct = True
        self._request_id = request_id
        self._backend = backend
        self._model = model
        self._requested = requested
        self._guardrails = tuple(g for g in guardrails if g.response)
        self._route = route
        self._keep_text = self._runtime.telemetry.enabled and log_content
        self._endpoint = endpoint
        self._reserved_here = reserved_here
        self._betas = betas or []
        self._owner = owner
        self._cache = cache
        if endpoint in ANTHROPIC_STYLE:
            self.error_style = "anthropic"

    def on_request_headers(self, message: HttpHeaders, attributes: Mapping[str, Struct],
                           context: Metadata) -> ProcessingResponse:
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
        self._route = route.name
        self._hands_latency = route.ranks_by_latency
        self._endpoint = Endpoint(decision.get(constants.METADATA_ENDPOINT_KEY, Endpoint.CHAT.value))
        if self._endpoint in ANTHROPIC_STYLE:
            self.error_style = "anthropic"
            self._betas = anthropic_passthrough.betas(decision.get(constants.METADATA_BETAS_KEY))
        self._reservation = decision.get(constants.METADATA_RESERVATION_KEY)
        self._owner = decision.get(constants.METADATA_KEY_ID_KEY, "")
        self._cache = AnswerWriter.from_metadata(decision)
        self._attempt = headers.get(constants.ENVOY_ATTEMPT_COUNT_HEADER, "1")
        traced: tuple[tuple[str, str], ...] = ()
        if self._runtime.telemetry.enabled:
            self._report.outcome = outcome_from_decision(decision, headers, route.name, self._requested)
            self._keep_text = route.log_content
            if self._runtime.telemetry.tracing is not None:
                # from the metadata, not the header: a retry sees the headers the previous attempt sent
                traced = (("traceparent", self.trace(decision.get(constants.METADATA_TRACEPARENT_KEY))),)
        return messages.request_headers_reply(set_headers=traced,
                                              remove=[name for name in headers if forwarded_never(name)])

    def trace(self, parent: str | None) -> str:
        """Start this attempt's span; the `traceparent` the provider gets (it names this span)."""
        tracing = self._runtime.telemetry.tracing
        assert tracing is not None
        span = self._report.span = tracing.start_attempt(parent)
        return tracing.traceparent(span) or parent or ""

    def on_request_body(self, message: HttpBody) -> ProcessingResponse:
        """A chain attempt: the body as the client sent it (after the route stage's redaction), parsed, converted
        to the OpenAI form and translated here, once; an Anthropic body to an Anthropic-family backend goes as it is,
        and a count to the backend's counting endpoint."""
        body: JsonObject = orjson.loads(message.body)
        backend = self._backend
        assert backend is not None
        if self._endpoint is Endpoint.COUNT_TOKENS:
            return self.send_count(body, count_tokens.openai_form(body, count=True))
        if self._endpoint is Endpoint.MESSAGES and anthropic_passthrough.passes_through(backend.schema):
            return self.send_passthrough(body)
        if self._endpoint is Endpoint.MESSAGES:
            client_dropped = anthropic_messages.dropped_fields(body)
            return self.send(anthropic_messages.to_openai(body), client_dropped=client_dropped)
        if self._endpoint is Endpoint.RESPONSES:
            turn = self.respond_to(body)
            if responses_passthrough.passes_through(backend.settings):
                return self.send_passthrough(body)
            chat, client_dropped = turn.chat_form()
            return self.send(chat, client_dropped=client_dropped)
        return self.send(body)

    def respond_to(self, request: JsonObject) -> ResponsesTurn:
        """A Responses API request: what its answer needs (the client's body, its conversation rebuilt)."""
        self._turn = ResponsesTurn(request, self._requested, self._owner)
        return self._turn

    def send(self, body: JsonObject, translated: JsonObject | None = None,
             prompt_estimate: int | None = None, dropped: str | None = None,
             client_dropped: list[str] | None = None) -> ProcessingResponse:
        """Send the OpenAI-form `body` to the backend. A direct route's stage passes what it already made:
        `translated`, the chat translation for this backend and model (with `dropped`, the fields it left out),
        and `prompt_estimate`. `client_dropped`: what the Anthropic client format's conversion left out."""
        backend = self._backend
        assert backend is not None
        runtime = self._runtime
        if self._endpoint is Endpoint.EMBEDDINGS:
            upstream, path = upstream_request.embeddings(backend, self._model, body)
            self._base64_embeddings = body.get("encoding_format") == "base64"
            self._embeddings_estimate = estimate_prompt_tokens(body, runtime.chars_per_token)
        else:
            self._streaming = body.get("stream") is True
            self._schema = answer_schema.of_request(body)
            left_out: list[str] = []
            upstream, path = upstream_request.chat(backend, self._model, body, self._streaming,
                                                   runtime.default_max_tokens, translated, left_out)
            names = dropped.split(",") if dropped else left_out
            if client_dropped:
                names = [*client_dropped, *names]
            self._dropped = ",".join(dict.fromkeys(names)) if names else ""
        if self._metered():
            if prompt_estimate is None:
                prompt_estimate = self._embeddings_estimate or estimate_prompt_tokens(body, runtime.chars_per_token)
            self._meter = UsageMeter(prompt_estimate, runtime.chars_per_token, self._keep_text)
        self._identity_answer = self._answers_as_sent(backend)
        if self._streaming:
            options = body.get("stream_options")
            # Anthropic clients always get usage (in message_delta), so the translator must report it.
            self._include_usage = self._endpoint is Endpoint.MESSAGES or (
                isinstance(options, dict) and options.get("include_usage") is True)
            self._created = int(time.time())
            if self._identity_answer:  # nothing meters this stream: the backend reports usage only if asked to
                upstream = upstream_request.without_gateway_usage(upstream, options)
            self._metered_aside = self._meters_aside(backend)
        self._report.sent_at = time.monotonic()
        return upstream_request.reply(backend, path, upstream)

    def _answers_as_sent(self, backend: BackendInfo) -> bool:
        """The backend's answer already is the client's and nothing here reads it (no usage to meter, no guardrail,
        schema, cache or Responses turn): Envoy relays its body, a stream's chunks too, without this process."""
        if not (self._direct and self._meter is None and not self._guardrails and not self._base64_embeddings
                and self._cache is None and self._endpoint is not Endpoint.MESSAGES and self._turn is None
                and self._schema is None):
            return False
        translator = backend.translator
        if not self._streaming:
            return translator.identity_responses
        # a backend with a stream idle timeout needs its chunks watched (`StallTimer`)
        return translator.identity_streams and backend.settings.stream_idle_timeout is None

    def _meters_aside(self, backend: BackendInfo) -> bool:
        """The stream needs nothing changed and only the limits read it, from the usage its client asked for: the
        stream meter settles it from a copy, on the backend's twin route (`providers.metered_aside`)."""
        return (self._include_usage and self._endpoint is Endpoint.CHAT and self._reserved_here is not None
                and self._direct and backend.id in self._runtime.metered_aside and not self._guardrails
                and self._cache is None and self._turn is None and self._schema is None)

    @property
    def metered_aside(self) -> dict[str, str] | None:
        """For a stream the stream meter settles: what it needs besides the sealed reservation."""
        if not self._metered_aside or self._meter is None or self._backend is None:
            return None
        return {constants.METADATA_METER_BACKEND_KEY: self._backend.id,
                constants.METADATA_METER_MODEL_KEY: self._model,
                constants.METADATA_METER_ESTIMATE_KEY: str(self._meter.prompt_estimate)}

    def send_passthrough(self, body: JsonObject, prompt_estimate: int | None = None) -> ProcessingResponse:
        """Send an Anthropic Messages body to an Anthropic-family backend as the client wrote it (adapted only as
        the service requires); its answer comes back untranslated. `prompt_estimate`: the route stage's, made
        from the OpenAI form of the body (without one, the Messages body itself is estimated)."""
        backend = self._backend
        assert backend is not None
        runtime = self._runtime
        self._passthrough = True
        self._schema = answer_schema.of_client_body(body, self._endpoint)
        self._streaming = body.get("stream") is True
        if self._streaming:  # the meter reads usage off the backend's stream, as it reads a translated one's
            self._include_usage = True
            self._created = int(time.time())
        if self._turn is not None:
            upstream, path, headers = upstream_request.responses_native(backend, self._model, body,
                                                                        runtime.default_max_tokens)
        else:
            upstream, path, headers = upstream_request.passthrough(backend, self._model, body, self._streaming,
                                                                   self._betas)
        if self._metered():
            if prompt_estimate is None:
                prompt_estimate = self._embeddings_estimate or estimate_prompt_tokens(body, runtime.chars_per_token)
            self._meter = UsageMeter(prompt_estimate, runtime.chars_per_token, self._keep_text)
        self._identity_answer = (self._direct and self._meter is None and not self._guardrails
                                 and not self._streaming and not self._reads_answer() and self._schema is None)
        self._report.sent_at = time.monotonic()
        return upstream_request.reply(backend, path, upstream, headers)

    def _metered(self) -> bool:
        """Something reads the attempt's usage: a reservation, telemetry, the access log, or a cached answer's
        saved cost."""
        runtime = self._runtime
        return (self._reservation is not None or self._reserved_here is not None or runtime.telemetry.enabled
                or runtime.access_logged
                or (self._cache is not None and self._cache.writes))

    def _reads_answer(self) -> bool:
        """A Responses answer the gateway keeps, or must give the client's `previous_response_id` back (the
        provider never saw it), or an answer the response cache keeps: its body must be read, even when nothing
        else reads it."""
        if self._cache is not None:
            return True
        turn = self._turn
        return turn is not None and (bool(turn.restored()) or (turn.store and self._runtime.responses is not None))

    def send_count(self, body: JsonObject, openai_body: JsonObject | None) -> ProcessingResponse:
        """A `count_tokens` request: the backend's own count where its service has one, else the gateway's estimate
        answered here. Counting uses no tokens: there is nothing to meter or settle. `openai_body`: the body in
        OpenAI form, None when the client format can't convert it (then only Anthropic-family services count)."""
        backend = self._backend
        assert backend is not None
        schema = backend.schema
        if not (anthropic_passthrough.passes_through(schema)
                or (openai_body is not None and schema in anthropic_passthrough.COUNTING_SCHEMAS)):
            return count_tokens.estimated_count(openai_body or count_tokens.rough_form(body),
                                                self._runtime.chars_per_token)
        upstream, path, headers = upstream_request.count_tokens(backend, self._model, body, openai_body, self._betas,
                                                                self._runtime.default_max_tokens)
        self._report.sent_at = time.monotonic()
        return upstream_request.reply(backend, path, upstream, headers)

    # -- response -----------------------------------------------------------------------------------------------

    def on_response_headers(self, message: HttpHeaders) -> ProcessingResponse:
        headers = messages.header_dict(message)
        self._status = int(headers.get(":status", "0") or 0)
        ok = 200 <= self._status < 300
        backend = self._backend
        assert backend is not None
        health = self._runtime.health
        self._report.first_byte(health.latency, backend.id, ok)
        if not ok:
            self._response_headers = headers
            health.cooldowns.on_response(backend.id, self._status, headers)
        request_id, removed = provider_headers.screen(headers, _TAGGED)
        tags = ((constants.RESPONSE_HEADER_BACKEND, backend.id),
                (constants.RESPONSE_HEADER_ATTEMPTS, headers.get(constants.ENVOY_ATTEMPT_COUNT_HEADER, self._attempt)),
                (constants.RESPONSE_HEADER_MODEL, self._requested), *request_id)
        if self._cache is not None:
            tags = (*tags, (CACHE_HEADER, self._cache.state))
        if self._dropped:
            tags = (*tags, (constants.RESPONSE_HEADER_DROPPED_FIELDS, self._dropped))
            if constants.RESPONSE_HEADER_DROPPED_FIELDS in removed:  # the provider's own: replaced by ours
                removed.remove(constants.RESPONSE_HEADER_DROPPED_FIELDS)
        if self._hands_latency and (sample := self._report.handed(ok)):
            tags = (*tags, sample)
            if constants.HEADER_LATENCY in removed:  # a provider's own: replaced by ours
                removed.remove(constants.HEADER_LATENCY)
        content_type = headers.get("content-type", "")
        if self._metered_aside and self._meter is not None and settled_aside(self._status, content_type):
            self._meter.hand_over()
            return messages.response_headers_reply(set_headers=tags, remove=removed, mode=HEADERS_ONLY_MODE)
        if self._identity_answer and ok and (not self._streaming or content_type.startswith(SSE_CONTENT_TYPE)):
            return messages.response_headers_reply(set_headers=tags, remove=removed, mode=HEADERS_ONLY_MODE)
        if ok and self._streaming and is_stream(content_type):
            if "content-length" in headers:
                removed.append("content-length")
            # every relayed stream is SSE, whatever the provider sent (Bedrock: its binary event-stream)
            return messages.response_headers_reply(set_headers=(*tags, ("content-type", SSE_CONTENT_TYPE)),
                                                   remove=[name for name in removed if name != "content-type"],
                                                   mode=self._open_stream(backend, content_type))
        return messages.response_headers_reply(set_headers=tags, remove=removed,
                                               mode=BUFFERED_RESPONSE_MODE if self._direct else None)

    def _open_stream(self, backend: BackendInfo, content_type: str) -> ProcessingMode:
        """A successful streamed answer begins: the relay that translates it, and the mode Envoy must switch to."""
        turn = self._turn
        stream: ChatStream
        if self._passthrough and turn is not None:
            stream = turn.reader(self._model, self._created)
        else:
            stream = backend.translator.chat_stream(self._model, self._created, self._include_usage)
        guard = StreamGuard(self._guardrails, self._route, self._owner) if self._guardrails else None
        if self._meter is not None:
            self._meter.stream = stream
        if self._schema is not None:
            stream = self._schema.watch(stream, backend.id)
        relay: StreamRelay
        if self._passthrough:
            relay = (ResponsesPassthroughRelay(content_type, stream, guard, self._meter, turn.restored())
                     if turn is not None else PassthroughRelay(content_type, stream, guard, self._meter))
        else:
            client_stream = (anthropic_messages.MessagesStream(self._model) if self._endpoint is Endpoint.MESSAGES
                             else turn.stream() if turn is not None else None)
            relay = StreamRelay(content_type, stream, client_stream, guard, self._meter)
        self._relay = relay
        if self._cache is not None:
            self._cache.follow_stream(self._endpoint)
        timeout = backend.settings.stream_idle_timeout
        if timeout is None or self.push is None:
            return STREAMED_RESPONSE_MODE
        self._stall = StallTimer(backend.id, timeout, self.push, relay.abort)
        self._stall.arm()
        return DUPLEX_RESPONSE_MODE

    def on_response_body(self, message: HttpBody) -> ProcessingResponse:
        if self._relay is not None:
            return self._stream_chunk(self._relay, message)
        backend = self._backend
        assert backend is not None
        if not 200 <= self._status < 300:
            return answers.error_reply(backend, self._status, message.body, self._response_headers, self._endpoint)
        if self._endpoint is Endpoint.COUNT_TOKENS:
            return answers.count_reply(backend, message.body, self._request_id)
        if self._passthrough:
            return self._untranslated_answer(backend, message.body)
        try:
            answer = answers.translated(backend, self._model, self._endpoint, message.body, self._base64_embeddings,
                                        self._request_id)
        except UpstreamError as unreadable:
            return self._unread(unreadable)
        if self._endpoint is Endpoint.EMBEDDINGS:
            answers.count_uncounted_input(answer, self._embeddings_estimate)
        if self._guardrails:
            try:
                apply_guardrails(self._guardrails, answer, phase="response", route=self._route, key_id=self._owner)
            except GuardrailBlocked as blocked:
                return self._blocked(blocked, answer)
        if self._schema is not None and (invalid := self._schema.check(answer, backend.id)) is not None:
            return self._blocked(invalid, answer)
        if self._meter is not None:
            self._meter.take_answer(answer)
        if self._turn is not None:
            return answers.json_reply(self._turn.answer(answer))
        client_answer = answers.client_answer(answer, self._model, self._endpoint)
        if self._cache is not None:
            self._whole = client_answer
        return answers.json_reply(client_answer)

    def _untranslated_answer(self, backend: BackendInfo, raw: bytes) -> ProcessingResponse:
        """An Anthropic-family backend's Message to an Anthropic client, or a native Response to a Responses
        client: passed as it came, unless a guardrail redacts or blocks it."""
        try:
            answer = answers.untranslated(backend, raw, self._request_id)
        except UpstreamError as unreadable:
            return self._unread(unreadable)
        try:
            changed = self._guardrails and apply_guardrails(self._guardrails, answer, phase="response",
                                                             route=self._route, key_id=self._owner)
        except GuardrailBlocked as blocked:
            return self._blocked(blocked, chat_completion_from_response(answer) if self._turn is not None
                                 else answers.metered(answer))
        if self._schema is not None and (invalid := self._schema.check_untranslated(
                answer, self._turn is not None, backend.id)) is not None:
            return self._blocked(invalid, chat_completion_from_response(answer) if self._turn is not None
                                 else answers.metered(answer))
        if self._turn is not None:
            restored = self._turn.restored()
            if restored:
                answer.update(restored)
                changed = True
            self._turn.final = answer
        if self._meter is not None:
            self._meter.take_answer(chat_completion_from_response(answer) if self._turn is not None
                                    else answers.metered(answer))
        if self._cache is not None:
            self._whole = answer
        return answers.json_reply(answer) if changed else messages.response_body_reply()

    def _unread(self, error: UpstreamError) -> ProcessingResponse:
        """A successful answer the gateway could not read: the provider did work nobody can count, so the
        reservation (the most the request could use) stands as the charge. The client gets the error in place of
        the answer already on its way."""
        if self._meter is not None:
            self._meter.keep_reservation()
        return answers.json_reply(orjson.loads(error.body(self.error_style)), error.status)

    def _blocked(self, blocked: GuardrailBlocked | UpstreamError, answer: JsonObject) -> ProcessingResponse:
        """An answer a guardrail refused, or that does not fit the schema the request asked for: what it used is
        charged (its usage, in the OpenAI form), none of its text is kept."""
        if self._meter is not None:
            self._meter.take_usage(answer)
        return answers.json_reply(orjson.loads(blocked.body(self.error_style)), blocked.status)

    def _stream_chunk(self, relay: StreamRelay, message: HttpBody) -> ProcessingResponse:
        out = relay.relay(message.body, message.end_of_stream)
        if self._cache is not None:
            self._cache.feed(out)
        stall = self._stall
        if stall is None:
            return messages.response_body_reply(out)
        if stall.fired:  # the stage already ended this stream on its own
            return messages.streamed_body_reply(b"", False)
        if message.end_of_stream:
            stall.disarm()
        else:
            stall.arm()
        return messages.streamed_body_reply(out, message.end_of_stream)

    # -- accounting ---------------------------------------------------------------------------------------------

    async def _settle(self) -> None:
        limiter, meter, backend = self._runtime.limiter, self._meter, self._backend
        if (self._reservation is None and self._reserved_here is None) or limiter is None or meter is None \
                or backend is None:
            return
        await meter.settle(limiter, self._reservation or "", backend.id, self._model, self._reserved_here)

    async def _keep_response(self, turn: ResponsesTurn) -> None:
        """Store a completed Response the client asked to keep; a native stream's is redacted as its events were.
        A stream a guardrail or an error ended is not kept (as a blocked or refused whole answer is not): the
        provider may have finished the answer the client never got."""
        if self._relay is not None and self._relay.spoiled:
            return
        if turn.final is None and self._passthrough and self._guardrails:
            final = turn.completed()
            if final is not None:
                apply_guardrails(tuple(g for g in self._guardrails if g.mode != "block"), final, phase="response",
                                 route=self._route, key_id=self._owner)
        await turn.keep(self._runtime.responses)

    async def _cache_answer(self, writer: AnswerWriter) -> None:
        """Keep the finished answer as the client got it (never one a guardrail ended), with what it cost."""
        backend = self._backend
        if backend is None or (self._relay is not None and self._relay.spoiled):
            return
        if self._turn is not None:
            answer = self._turn.completed()
        else:
            answer = writer.streamed_answer() if self._relay is not None else self._whole
        usage = self._meter.final() if self._meter is not None else Usage(0, 0)
        price = self._runtime.prices.get((backend.id, self._model))
        cost = cost_micro_usd(usage, price) / 1e6 if price is not None else 0.0
        await writer.store(self._runtime.answers, answer, usage.input_tokens, usage.output_tokens, cost)

    def fill(self, outcome: Outcome) -> None:
        """What this attempt knows of the request's end: backend, model, status, usage, cost, timing, text."""
        backend = self._backend
        if backend is None:
            return
        self._report.fill(outcome, backend, self._model, status=self._status, streaming=self._streaming,
                          first_chunk_at=self._relay.first_chunk_at if self._relay is not None else 0.0,
                          meter=self._meter, price=self._runtime.prices.get((backend.id, self._model)))

    def _hand_to_access_log(self, reply: ProcessingResponse) -> None:
        backend, meter = self._backend, self._meter
        assert backend is not None and meter is not None  # the access log makes the attempt count
        fields = attempt_report.access_log_fields(backend, self._model, meter,
                                                  self._runtime.prices.get((backend.id, self._model)))
        attempt_report.hand_to_access_log(reply, fields, self._direct, streamed=self._relay is not None)
