"""Route stage: runs once per client request, before Envoy's router.

Headers: drop spoofed internal headers, classify the endpoint, answer `HEAD /anthropic` (no key: Claude Code probes
it), authenticate the virtual key, answer `/v1/models`.
Body: parse and check the request, resolve the model route, authorize the key, reserve its share of every limit,
and name the chain Envoy must route to (`clear_route_cache` makes Envoy match routes again on the new header). The
body itself passes unchanged to a chain, whose attempt stage translates it. A direct (single-backend) route runs the
attempt stage's logic here, handing it what this stage already made: the OpenAI-form body, the translation made
while checking the request, and the prompt estimate. Response headers (only when limits are configured): release
the reservation if the final answer failed, and add the `x-ratelimit-*` headers.

Anthropic clients: the body is converted to the OpenAI form to route and estimate it, but its Anthropic-family
backends get it as the client wrote it (`providers/anthropic_passthrough.py`), so they need no translation and
can't refuse one; a body the conversion refuses (a field the client format doesn't know) goes to those backends
only. `count_tokens` (`_count`) reserves nothing: the first backend of the order counts, or this stage answers the
gateway's estimate.

Capability-aware chains: the request is translated once per kind of backend it may use (`translations.py`); a
backend whose translator refuses it leaves this request's candidates before the policy orders them, so Envoy is sent
down an order of backends that can all serve it (`RouteInfo.chain_for` finds that order's Envoy route). A 400 only
when none can serve it, or, on a `fields: strict` route, when any refuses.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from .. import constants
from ..auth.jwt_claims import identify
from ..auth.virtual_keys import KeyInfo, authorize
from ..client_formats import anthropic_messages, responses_request
from ..client_formats.openai_chat import check_chat_shape
from ..config.models import RequestLimits
from ..errors import BadRequest, GatewayError, NotFound, PayloadTooLarge, RateLimited
from ..guardrails.engine import apply as apply_guardrails
from ..guardrails.engine import check_size
from ..json_types import JsonObject
from ..limits.estimate import Price, Usage, cost_micro_usd, estimate_prompt_tokens, reserved_output_tokens
from ..limits.limiter import Demand, Limiter, Reservation
from ..providers import anthropic_passthrough, fetches
from ..routing.policies import cooled_last, rank
from ..routing.rules import RequestFacts, first_match
from ..runtime.build import BackendInfo, RouteInfo, Runtime, find_route
from ..telemetry.outcome import McpFacts, Outcome
from ..wire.base_pb2 import Metadata
from ..wire.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from . import count_tokens, messages, prompt_templates, response_cache, stored_responses
from .attempt import AttemptStage
from .endpoints import ANTHROPIC_STYLE, STORED_RESPONSE_ENDPOINTS, Endpoint, classify
from .mcp_stage import McpStage
from .reservation import demand, output_bounds
from .response_cache import AnswerWriter
from .translations import (
    Translations,
    anthropic_openai_form,
    chat_form,
    passing_through,
    translate,
    translate_others,
    without_previous,
)
from .upstream_request import forwarded_never

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Span


class RouteStage:
    __slots__ = ("_attempt", "_decided", "_endpoint", "_estimate", "_headers", "_key", "_learns_latency", "_mcp",
                 "_outcome", "_reservation", "_runtime", "_span", "_stored", "_user",
                 "error_style", "push")

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.error_style = "openai"
        self.push: Callable[[ProcessingResponse], None] | None = None
        self._endpoint: Endpoint | None = None
        self._decided = False
        """The body phase ran (a request that skipped it never reaches a backend: routes require its metadata)."""
        self._key: KeyInfo | None = None
        self._user: str | None = None
        self._reservation: Reservation | None = None
        self._headers: dict[str, str] = {}
        self._attempt: AttemptStage | None = None
        """Set for a direct route: the attempt stage's logic, run inside this stream."""
        self._mcp: McpStage | None = None
        """Set for a request to the MCP endpoint, which handles the rest of the stream."""
        self._outcome: Outcome | None = Outcome() if runtime.telemetry.enabled else None
        self._span: Span | None = None
        """The request's trace span, when tracing is on."""
        self._stored: tuple[Endpoint, str, str, str] | None = None
        """A stored Response's call (endpoint, method, response id, query), answered from the store."""
        self._estimate: int | None = None
        """The prompt's token estimate, once something needed it (the cost policy, the reservation, a direct
        route's accounting): made at most once per request."""
        self._learns_latency = False
        """The request went down a chain of a route ranked by latency: its attempt hands on its latency samples."""

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse | None:
        kind = request.WhichOneof("request")
        if self._mcp is not None:
            return await self._mcp.handle(request)
        try:
            if kind == "request_headers":
                if self._is_mcp(request.request_headers):
                    return await self._start_mcp(request.request_headers, request.metadata_context)
                reply = self.on_request_headers(request.request_headers, request.metadata_context)
                if self._stored is not None:  # a stored Response's call, answered from the store
                    return await self._answer_stored(*self._stored)
                return reply
            if kind == "request_body":
                return await self.on_request_body(request.request_body)
            if kind == "response_headers":
                return await self.on_response_headers(request)
            if kind == "response_body" and self._attempt is not None:
                return await self._attempt.handle(request)
            if kind == "request_trailers" and self._endpoint is not None and not self._decided:
                # HTTP/2 lets a request end with trailers and no DATA: Envoy then skips the body phase, so nothing
                # was checked, authorized or limited (and no route matches; this answer says why)
                raise BadRequest("The request has no body; send a JSON object.", code="missing_body")
            return messages.continue_unchanged(kind)
        except GatewayError as error:
            if self._outcome is not None:  # answered by the gateway itself: this stage reports it
                self._outcome.status = error.status
                self._outcome.error_type = error.code or error.type
                if isinstance(error, RateLimited):
                    self._outcome.rate_limited_scope = error.scope or "unknown"
            raise

    async def close(self) -> None:
        """A direct route's answer that never reached its end is still settled. Otherwise nothing to do: a
        reservation whose client left before any answer is not released here, since an attempt may be settling it
        at this moment and releasing too would under-count; it leaves with its window instead (an over-count,
        never an over-admission)."""
        if self._attempt is not None:
            await self._attempt.close()
        if self._outcome is not None:
            self._report(self._outcome)

    def _is_mcp(self, headers: HttpHeaders) -> bool:
        mcp = self._runtime.mcp
        if mcp is None:
            return False
        path = next((h.raw_value or h.value.encode() for h in headers.headers.headers if h.key == ":path"), b"")
        path = path.partition(b"?")[0]
        return (path.rstrip(b"/") or b"/") == mcp.settings.path.encode().rstrip(b"/")

    async def _start_mcp(self, message: HttpHeaders, context: Metadata | None) -> ProcessingResponse:
        """The MCP endpoint: the caller authenticates as for models; `McpStage` takes the stream from here."""
        assert self._runtime.mcp is not None
        self.error_style = "mcp"
        headers = messages.header_dict(message)
        if self._outcome is not None:
            self._outcome.request_id, self._outcome.endpoint = headers.get("x-request-id", ""), "mcp"
            self._outcome.mcp = McpFacts()
            if self._runtime.telemetry.tracing is not None:
                self._span = self._runtime.telemetry.tracing.start_request(headers)
        key = identify(self._runtime.issuers, self._runtime.keys, headers, context)
        if self._outcome is not None:
            self._outcome.key_id, self._outcome.team = key.id, key.team
        self._mcp = McpStage(self._runtime, self._runtime.mcp, key, headers, self._outcome)
        return await self._mcp.on_request_headers()

    def _report(self, outcome: Outcome) -> None:
        """This stage reports its own refusals, direct routes, MCP requests, and a chain's failed final answer; a
        chain's successful answer is reported by the attempt stage that served it (it alone saw the body)."""
        if self._mcp is not None:
            self._mcp.fill(outcome)
        elif self._attempt is not None:
            self._attempt.fill(outcome)
        elif outcome.route and outcome.cache != "hit" and (outcome.status == 0 or 200 <= outcome.status < 300):
            if self._span is not None:  # the attempt stage reports the answer; the request's span ends here
                outcome.ended = time.monotonic()
                self._finish_span(outcome)
            return
        if not outcome.ended:
            outcome.ended = time.monotonic()
        self._finish_span(outcome)
        self._runtime.telemetry.report(outcome)

    def _finish_span(self, outcome: Outcome) -> None:
        tracing = self._runtime.telemetry.tracing
        if self._span is not None and tracing is not None:
            tracing.finish(self._span, outcome)
            self._span = None

    def on_request_headers(self, message: HttpHeaders, context: Metadata | None = None) -> ProcessingResponse:
        """`context`: the metadata Envoy forwards, a verified JWT's payload among it (`auth/jwt_claims.py`)."""
        headers = messages.header_dict(message)
        outcome = self._outcome
        if outcome is not None:
            outcome.request_id = headers.get("x-request-id", "")
            if self._runtime.telemetry.tracing is not None:
                self._span = self._runtime.telemetry.tracing.start_request(headers)
        endpoint, argument = classify(headers.get(":method", ""), headers.get(":path", "/"))
        if endpoint in ANTHROPIC_STYLE:
            self.error_style = "anthropic"
        if endpoint is Endpoint.PROBE:  # as Anthropic's API answers it: no key needed, nothing said
            if outcome is not None:
                outcome.endpoint, outcome.status = endpoint.value, 200
            return messages.immediate(200, b"", headers=())
        key = identify(self._runtime.issuers, self._runtime.keys, headers, context)
        # the end user limits count: the key's or token's own, or (a caller trusted to assert users) the header's,
        # else the body's `user` (`_reserve`)
        self._user = (_bounded_user(headers.get(self._runtime.user_header) or None, self._runtime.user_header)
                      if key.asserts_users else key.user)
        if outcome is not None:
            outcome.endpoint, outcome.key_id, outcome.team, outcome.user = endpoint.value, key.id, key.team, self._user
        if endpoint is Endpoint.MODELS or endpoint is Endpoint.MODEL:
            listing = (_model_list(self._runtime, key) if endpoint is Endpoint.MODELS
                       else _model_entry(self._runtime, key, argument))
            if outcome is not None:
                outcome.status = 200
            return messages.immediate(200, listing)
        if endpoint in STORED_RESPONSE_ENDPOINTS:
            self._key = key
            self._stored = (endpoint, headers.get(":method", ""), argument, headers.get(":path", "").partition("?")[2])
            return messages.request_headers_reply()  # `handle` answers it from the store
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._runtime.max_body_bytes:
            raise _too_large(self._runtime.max_body_bytes)
        if message.end_of_stream:
            raise BadRequest("The request has no body; send a JSON object.", code="missing_body")
        self._endpoint, self._key = endpoint, key
        self._headers = headers
        # Clients steer neither Babelgate (internal headers) nor Envoy (x-envoy-max-retries and friends).
        spoofed = [name for name in headers
                   if name.startswith((constants.INTERNAL_HEADER_PREFIX, constants.ENVOY_HEADER_PREFIX))]
        return messages.request_headers_reply(remove=spoofed)

    async def _answer_stored(self, endpoint: Endpoint, method: str, response_id: str,
                             query: str) -> ProcessingResponse:
        assert self._key is not None
        reply = await stored_responses.answer(self._runtime.responses, self._key.id, endpoint, method, response_id,
                                              query)
        if self._outcome is not None:
            self._outcome.status = 200
        return reply

    async def on_request_body(self, message: HttpBody) -> ProcessingResponse:
        if self._endpoint is None or self._key is None:
            raise BadRequest("Request body arrived before its headers.")
        self._decided = True
        raw = message.body
        if len(raw) > self._runtime.max_body_bytes:
            raise _too_large(self._runtime.max_body_bytes)
        body = original = parse_json_object(raw)
        check_client_limits(body, self._runtime.config.requests)
        template = prompt_templates.expand(self._runtime, self._key, self._endpoint, body)
        if template is not None:  # a prompt template's request replaces the client's
            body = original = template.body
            if self._outcome is not None:
                self._outcome.prompt_template, self._outcome.prompt_version = template.name, str(template.version)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("`model` is required and must be a string.", param="model", code="missing_model")
        if not MODEL_NAME.fullmatch(model):
            raise BadRequest("`model` must be 1 to 256 characters: ASCII letters, digits and . _ - : / @ + ~ = "
                             "(starting with a letter or digit).", param="model", code="invalid_model_name")
        route = find_route(self._runtime, model)
        if route is None:
            raise NotFound(f"The model {model!r} does not exist or is not served by this gateway.",
                           param="model", code="model_not_found")
        authorize(self._key, route.name)
        rewritten = template is not None
        """The body Envoy sends on is not the client's: a conversation rebuilt, or a guardrail's redaction."""
        if self._endpoint is Endpoint.RESPONSES:
            expanded = await self._conversation(original)
            rewritten = rewritten or expanded is not original
            body = original = expanded
        redacted = False
        if route.guardrails or route.max_prompt_chars is not None or route.max_messages is not None:
            check_size(original, max_prompt_chars=route.max_prompt_chars, max_messages=route.max_messages)
            redacted = apply_guardrails(route.guardrails, original, phase="request", route=route.name,
                                        key_id=self._key.id)
        if self._endpoint is Endpoint.COUNT_TOKENS:
            return self._count(route, model, original, redacted)
        rough = False  # an Anthropic body the conversion refuses: only a backend that takes it as it is serves it
        if self._endpoint is Endpoint.MESSAGES:
            body, rough = anthropic_openai_form(original)
        elif self._endpoint is Endpoint.RESPONSES:
            body, rough = chat_form(original)
        if self._endpoint is not Endpoint.EMBEDDINGS:
            check_chat_shape(body)
        elif "input" not in body:
            raise BadRequest("`input` is required.", param="input", code="missing_input")
        runtime = self._runtime
        lookup = await response_cache.look_up(runtime.answers, route.cache, route.name, self._endpoint, self._key,
                                              self._headers, original, runtime.semantic)
        if lookup is not None:
            if self._outcome is not None:
                self._outcome.cache = lookup.state
            if lookup.state == "hit":
                return await self._answer_hit(lookup, route, model, original)
        # routing rules read the client's `metadata`, which a Responses body keeps out of its chat form
        candidates, policy = self._candidates(route, original if self._endpoint is Endpoint.RESPONSES else body)
        translated: Translations | None = None
        passing: tuple[str, ...] = ()
        if self._endpoint is not Endpoint.EMBEDDINGS:
            candidates, passing, translated = self._servable(route, candidates, body, original, rough, model)
        elif not route.embeddings:
            raise BadRequest(f"The model {route.name!r} does not serve embeddings.", param="model",
                             code="unsupported_endpoint")
        order = self._order(route, candidates, policy, body)
        chain = route.chain_for(order, candidates)
        self._learns_latency = route.ranks_by_latency and not chain.direct
        metadata = {
            constants.METADATA_ROUTE_KEY: route.name,
            constants.METADATA_REQUESTED_KEY: model,
            constants.METADATA_ENDPOINT_KEY: self._endpoint.value,
            constants.METADATA_KEY_ID_KEY: self._key.id,
        }
        self._add_betas(metadata)
        if lookup is not None:
            metadata.update(lookup.metadata())
        if template is not None:
            metadata[constants.METADATA_TEMPLATE_KEY] = f"{template.name}@{template.version}"
        if self._outcome is not None:
            _describe(self._outcome, route, model, body, metadata)
        limiter = runtime.limiter
        if limiter is not None:
            bounds = ({} if self._endpoint is Endpoint.EMBEDDINGS else output_bounds(
                runtime, self._endpoint, order, translated.upstream if translated is not None else None, passing,
                original))
            self._reservation = await self._reserve(limiter, body, route, order[0], model, bounds)
            if self._reservation is not None and not chain.direct:  # a direct route settles it in this stage
                metadata[constants.METADATA_RESERVATION_KEY] = limiter.seal(self._reservation)
        headers = [(constants.HEADER_CHAIN, chain.name)]
        if chain.first_byte_ms is not None and body.get("stream") is True:
            headers.append((constants.ENVOY_PER_TRY_TIMEOUT_HEADER, chain.first_byte_ms))
        tracing = runtime.telemetry.tracing
        parent = tracing.traceparent(self._span) if tracing is not None and self._span is not None else None
        if chain.direct:
            backend = runtime.backends[order[0]]
            send = None
            if backend.id in passing:
                def send(attempt: AttemptStage) -> ProcessingResponse:
                    if self._endpoint is Endpoint.RESPONSES:
                        attempt.respond_to(original)
                    return attempt.send_passthrough(original, self._estimate)
            elif self._endpoint is Endpoint.MESSAGES or self._endpoint is Endpoint.RESPONSES:
                client_dropped = (anthropic_messages.dropped_fields(original) if self._endpoint is Endpoint.MESSAGES
                                  else responses_request.dropped_fields(original))

                def send(attempt: AttemptStage) -> ProcessingResponse:
                    if self._endpoint is Endpoint.RESPONSES:
                        attempt.respond_to(original)
                    upstream = translated.upstream.get(backend.id) if translated is not None else None
                    dropped = translated.dropped.get(backend.id) if translated is not None else None
                    return attempt.send(body, upstream, self._estimate, dropped, client_dropped)
            return self._direct(route, backend, model, headers, body, translated, metadata, parent, send=send)
        if parent is not None:  # every attempt's span, in whichever process, is this one's child
            metadata[constants.METADATA_TRACEPARENT_KEY] = parent
        if redacted or rewritten:  # what Envoy sends on (and re-sends on a retry) is this stage's request
            encoded = orjson.dumps(original)
            if len(encoded) > runtime.max_body_bytes:
                raise PayloadTooLarge(f"The conversation, with the earlier turns `previous_response_id` names, is "
                                      f"larger than this gateway's limit of {runtime.max_body_bytes} bytes.")
            headers.append(("content-length", str(len(encoded))))
            return messages.request_body_reply(set_headers=headers, clear_route_cache=True, metadata=metadata,
                                               body=encoded)
        return messages.request_body_reply(set_headers=headers, clear_route_cache=True, metadata=metadata)

    async def _answer_hit(self, lookup: response_cache.Lookup, route: RouteInfo, requested: str,
                          original: JsonObject) -> ProcessingResponse:
        """A cached answer: no backend, no tokens; a `requests` limit still counts it."""
        assert self._key is not None and self._endpoint is not None and lookup.answer is not None
        runtime = self._runtime
        rate_headers: tuple[tuple[str, str], ...] = ()
        limiter = runtime.limiter
        if limiter is not None:
            scopes = limiter.scopes(self._key.id, self._key.team, self._limit_user(original), route.name, "")
            counted = await response_cache.count_hit(limiter, scopes)
            if counted is not None:
                rate_headers = counted.headers
        if self._outcome is not None:
            outcome = self._outcome
            _describe(outcome, route, requested, original, {})
            outcome.status, outcome.cache_saved_usd = 200, lookup.answer.cost_usd
        return await response_cache.hit_reply(lookup, self._endpoint, original, requested, self._key.id,
                                              runtime.responses, rate_headers)

    async def _conversation(self, original: JsonObject) -> JsonObject:
        """A Responses request with the conversation its `previous_response_id` names, bounded as the client's own
        body is (items, bytes), and before anything is reserved: a direct route sends it without another check."""
        assert self._key is not None
        runtime = self._runtime
        stored_responses.refuse_unoffered(original)
        check_input_items(original, runtime.config.requests)
        expanded = await stored_responses.with_conversation(runtime.responses, self._key.id, original)
        if expanded is not original:
            check_input_items(expanded, runtime.config.requests)
            if len(orjson.dumps(expanded)) > runtime.max_body_bytes:
                raise PayloadTooLarge(f"The conversation, with the earlier turns `previous_response_id` names, is "
                                      f"larger than this gateway's limit of {runtime.max_body_bytes} bytes.")
        return expanded

    def _servable(self, route: RouteInfo, candidates: tuple[str, ...], body: JsonObject, original: JsonObject,
                  rough: bool, model: str) -> tuple[tuple[str, ...], tuple[str, ...], Translations | None]:
        """The candidates that can serve a chat or Messages request; those of them an Anthropic client's body goes
        to as it is (no translation, nothing to refuse); the others' translations."""
        assert self._endpoint is not None
        runtime = self._runtime
        passing = passing_through(runtime, self._endpoint, candidates)
        if passing and self._endpoint is Endpoint.MESSAGES:
            try:  # a URL its provider would fetch with the gateway's identity: no passthrough backend takes it
                fetches.check_messages(runtime.backends[passing[0]].schema, original)
            except BadRequest:
                if rough or len(passing) == len(candidates):
                    raise
                candidates, passing = tuple(b for b in candidates if b not in passing), ()
        if rough:
            if not passing:  # the client format's own 400
                if self._endpoint is Endpoint.RESPONSES:
                    responses_request.to_openai(without_previous(original))
                else:
                    anthropic_messages.to_openai(original)
            return passing, passing, None
        if len(passing) == len(candidates):
            return candidates, passing, None
        translated = (translate(route, candidates, body, model, runtime.default_max_tokens) if not passing
                      else translate_others(route, candidates, passing, body, model, runtime.default_max_tokens))
        if len(translated.upstream) + len(passing) < len(candidates):
            candidates = tuple(b for b in candidates if b in translated.upstream or b in passing)
        return candidates, passing, translated

    def _add_betas(self, metadata: dict[str, str]) -> None:
        """An Anthropic client's betas, for the attempts that pass its body through."""
        beta = self._headers.get(anthropic_passthrough.BETA_HEADER)
        if beta and self._endpoint in ANTHROPIC_STYLE:
            metadata[constants.METADATA_BETAS_KEY] = beta

    def _count(self, route: RouteInfo, requested: str, original: JsonObject, redacted: bool) -> ProcessingResponse:
        """`count_tokens`: asked of the first backend of the request's order when its service counts, else
        answered here with the gateway's estimate. Nothing is reserved: counting uses no tokens of any limit."""
        assert self._endpoint is not None and self._key is not None
        runtime = self._runtime
        form = count_tokens.openai_form(original, count=True)
        body = form if form is not None else count_tokens.rough_form(original)
        candidates, policy = self._candidates(route, body)
        order = self._order(route, candidates, policy, body)
        backend = runtime.backends[order[0]]
        metadata = {
            constants.METADATA_ROUTE_KEY: route.name,
            constants.METADATA_REQUESTED_KEY: requested,
            constants.METADATA_ENDPOINT_KEY: self._endpoint.value,
            constants.METADATA_KEY_ID_KEY: self._key.id,
        }
        self._add_betas(metadata)
        if self._outcome is not None:
            _describe(self._outcome, route, requested, body, metadata)
        if not anthropic_passthrough.counts(backend.schema, converted=form is not None):
            if self._outcome is not None:
                self._outcome.status = 200
            return count_tokens.estimated_count(body, runtime.chars_per_token)
        chain = route.chain_for(order, candidates)
        self._learns_latency = route.ranks_by_latency and not chain.direct
        headers = [(constants.HEADER_CHAIN, chain.name)]
        if chain.direct:
            def send(attempt: AttemptStage) -> ProcessingResponse:
                return attempt.send_count(original, form)
            return self._direct(route, backend, requested, headers, body, None, metadata, None, send=send)
        if redacted:
            encoded = orjson.dumps(original)
            headers.append(("content-length", str(len(encoded))))
            return messages.request_body_reply(set_headers=headers, clear_route_cache=True, metadata=metadata,
                                               body=encoded)
        return messages.request_body_reply(set_headers=headers, clear_route_cache=True, metadata=metadata)

    def _candidates(self, route: RouteInfo, body: JsonObject) -> tuple[tuple[str, ...], str]:
        """The backends this request may use (its rule's, or the route's) and the policy that orders them."""
        if route.rules:
            assert self._key is not None
            metadata = body.get("metadata")
            facts = RequestFacts(self._key.id, self._key.team, self._headers,
                                 metadata if isinstance(metadata, dict) else {})
            rule = first_match(route.rules, facts)
            if rule is not None:
                return rule.backends, rule.policy
        return route.backends, route.policy

    def _order(self, route: RouteInfo, candidates: tuple[str, ...], policy: str, body: JsonObject) -> list[str]:
        """The order to try the candidates in."""
        health = self._runtime.health
        if policy == "priority" or len(candidates) == 1:
            order = list(candidates)
        else:
            prompt = output = 0
            if policy == "cost":
                prompt = self._prompt_tokens(body)
                output = (0 if self._endpoint is Endpoint.EMBEDDINGS
                          else reserved_output_tokens(body, self._runtime.default_max_tokens))
            sticky = self._headers.get(route.sticky_header) if route.sticky_header else None
            order = rank(policy, candidates, weights=route.weights, sticky=sticky, latency=health.latency,
                         streaming=body.get("stream") is True, exploration=route.exploration, prices=route.prices,
                         windows=route.windows, prompt_tokens=prompt, output_tokens=output, rng=health.rng)
            if not order:
                raise BadRequest(f"The prompt (about {prompt} tokens) is longer than the context window of every "
                                 f"backend of {route.name!r}.", param="messages", code="context_length_exceeded")
        return cooled_last(order, health.cooldowns)

    def _prompt_tokens(self, body: JsonObject) -> int:
        if self._estimate is None:
            self._estimate = estimate_prompt_tokens(body, self._runtime.chars_per_token)
        return self._estimate

    def _direct(self, route: RouteInfo, backend: BackendInfo, requested: str, headers: list[tuple[str, str]],
                body: JsonObject, translated: Translations | None, metadata: dict[str, str],
                parent: str | None, send: Callable[[AttemptStage], ProcessingResponse] | None = None
                ) -> ProcessingResponse:
        """Send straight to the backend: one gRPC stream for the whole request. `body` is the request in OpenAI
        form and `translated` its translations by backend (None for embeddings), this backend's among them, with
        the fields each left out: neither is made again."""
        assert self._endpoint is not None
        attempt = AttemptStage(self._runtime)
        attempt.push = self.push
        if parent is not None:
            headers.append(("traceparent", attempt.trace(parent)))
        attempt.start_direct(backend, route.backend_model(backend.id, requested),
                             requested, self._endpoint, self._reservation,
                             log_content=route.log_content, guardrails=route.guardrails, route=route.name,
                             request_id=self._headers.get("x-request-id", ""),
                             betas=anthropic_passthrough.betas(self._headers.get(anthropic_passthrough.BETA_HEADER)),
                             owner=self._key.id if self._key is not None else "",
                             cache=AnswerWriter.from_metadata(metadata))
        upstream = translated.upstream.get(backend.id) if translated is not None else None
        dropped = translated.dropped.get(backend.id) if translated is not None else None
        reply = send(attempt) if send is not None else attempt.send(body, upstream, self._estimate, dropped)
        self._attempt = attempt
        aside = attempt.metered_aside
        if aside is not None:  # the route's twin, where the stream meter settles the stream from a copy
            limiter = self._runtime.limiter
            assert limiter is not None and self._reservation is not None  # a stream is metered aside for them
            headers[0] = (constants.HEADER_CHAIN, headers[0][1] + constants.METERED_ROUTE_SUFFIX)
            metadata.update(aside)
            metadata[constants.METADATA_RESERVATION_KEY] = limiter.seal(self._reservation)
        common = reply.request_body.response
        common.clear_route_cache = True
        messages.add_headers(common.header_mutation, headers)
        # Headers this reply sets (the provider's own credential among them) are overwritten, not removed.
        replaced = {option.header.key for option in common.header_mutation.set_headers}
        # X-Forwarded-* go with the direct route's own `request_headers_to_remove`: Envoy matches routes on them
        common.header_mutation.remove_headers.extend(
            name for name in self._headers
            if forwarded_never(name) and name not in replaced and not name.startswith("x-forwarded-"))
        reply.dynamic_metadata.update({constants.METADATA_NAMESPACE: metadata})
        return reply

    async def on_response_headers(self, request: ProcessingRequest) -> ProcessingResponse:
        logs = self._runtime.access_logged and self._attempt is None
        wanted = logs or self._outcome is not None or self._reservation is not None or self._learns_latency
        headers = messages.header_dict(request.response_headers) if wanted else {}
        logged = None
        if logs:
            logged = headers.get(constants.HEADER_ACCESS_LOG)
        handed = headers.get(constants.HEADER_LATENCY) if self._learns_latency else None
        if handed is not None:
            backend = headers.get(constants.RESPONSE_HEADER_BACKEND)
            if backend in self._runtime.backends:
                self._runtime.health.latency.take_handed(backend, handed)
        if self._outcome is not None:
            outcome = self._outcome
            outcome.status = int(headers.get(":status", "0") or 0)
            outcome.attempts = int(headers.get(constants.ENVOY_ATTEMPT_COUNT_HEADER)
                                   or headers.get(constants.RESPONSE_HEADER_ATTEMPTS) or 1)
            outcome.backend = headers.get(constants.RESPONSE_HEADER_BACKEND, outcome.backend)
            if outcome.status >= 400 and not outcome.error_type:
                outcome.error_type = str(outcome.status)
        reservation = self._reservation
        removed: tuple[str, ...] = (constants.HEADER_ACCESS_LOG,) if logged else ()
        if handed is not None:
            removed = (*removed, constants.HEADER_LATENCY)
        reply = (self._attempt.on_response_headers(request.response_headers) if self._attempt is not None
                 else messages.response_headers_reply(remove=removed))
        if logged:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                messages.with_metadata(reply, orjson.loads(logged))
        if reservation is None:
            return reply
        status = headers.get(":status", "")
        if not status.startswith("2"):
            limiter = self._runtime.limiter
            assert limiter is not None  # it made the reservation
            await limiter.release(reservation)
        header_mutation = reply.response_headers.response.header_mutation
        messages.add_headers(header_mutation, reservation.headers)
        ours = {name for name, _ in reservation.headers}
        if ours.intersection(header_mutation.remove_headers):  # the provider's own x-ratelimit-*: replaced by ours
            kept = [name for name in header_mutation.remove_headers if name not in ours]
            del header_mutation.remove_headers[:]
            header_mutation.remove_headers.extend(kept)
        return reply

    def _limit_user(self, body: JsonObject) -> str | None:
        """The end user whose limits the request counts in."""
        assert self._key is not None
        return (self._user or _body_user(body) or self._key.user) if self._key.asserts_users else self._user

    async def _reserve(self, limiter: Limiter, body: JsonObject, route: RouteInfo, primary: str,
                       requested: str, bounds: dict[str, int]) -> Reservation | None:
        """`bounds`: the most each backend of the order may produce (`reservation.output_bounds`)."""
        assert self._key is not None
        scopes = limiter.scopes(self._key.id, self._key.team, self._limit_user(body), route.name, primary)
        if not scopes:
            return None
        prompt = self._prompt_tokens(body)
        if self._endpoint is Endpoint.EMBEDDINGS:
            wanted = Demand(prompt, 0, cost_micro_usd(Usage(prompt, 0), _price(limiter, route, primary, requested)))
        else:
            prices = {backend: _price(limiter, route, backend, requested) for backend in bounds}
            wanted = demand(prompt, bounds, prices)
        return await limiter.reserve(scopes, wanted, primary)


def _describe(outcome: Outcome, route: RouteInfo, requested: str, body: JsonObject, metadata: dict[str, str]) -> None:
    """What telemetry reports of the request, on this stage's outcome and in the metadata a chain's attempt stage
    builds its own from."""
    outcome.route, outcome.requested_model, outcome.stream = route.name, requested, body.get("stream") is True
    if outcome.user is None and isinstance(body.get("user"), str):
        outcome.user = body["user"] or None
    metadata[constants.METADATA_STARTED_KEY] = repr(outcome.started_wall)
    if outcome.team:
        metadata[constants.METADATA_TEAM_KEY] = outcome.team
    if outcome.user:
        metadata[constants.METADATA_USER_KEY] = outcome.user
    if route.log_content:
        outcome.prompt = orjson.dumps(body.get("messages", body.get("input"))).decode()
        metadata[constants.METADATA_PROMPT_KEY] = outcome.prompt


def parse_json_object(raw: bytes) -> JsonObject:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def check_input_items(body: JsonObject, limits: RequestLimits) -> None:
    """A Responses request's `input` items are its messages: bounded alike."""
    items = body.get("input")
    if isinstance(items, list) and len(items) > limits.max_messages:
        raise BadRequest(f"The request has {len(items)} input items; at most {limits.max_messages} are accepted.",
                         param="input", code="too_many_messages")


def check_client_limits(body: JsonObject, limits: RequestLimits) -> None:
    """What a client controls has a ceiling: nesting (walked without recursion), messages, tools."""
    messages_ = body.get("messages")
    if isinstance(messages_, list) and len(messages_) > limits.max_messages:
        raise BadRequest(f"The request has {len(messages_)} messages; at most {limits.max_messages} are accepted.",
                         param="messages", code="too_many_messages")
    tools = body.get("tools")
    if isinstance(tools, list) and len(tools) > limits.max_tools:
        raise BadRequest(f"The request has {len(tools)} tools; at most {limits.max_tools} are accepted.",
                         param="tools", code="too_many_tools")
    stack: list[tuple[JsonObject | list[object], int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_json_depth:
            raise BadRequest(f"The request body nests deeper than {limits.max_json_depth} levels.",
                             code="json_too_deep")
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+~=-]{0,255}")
"""What a model name may be, checked before anything is routed, reserved or sent: every provider's ids fit
(`anthropic.claude-sonnet-4-5-20250929-v1:0`, `claude-sonnet-4-5@20250929`, `accounts/fireworks/models/x`,
`meta-llama/Llama-3.3-70B`, `llama3:8b`, Bedrock ARNs), and it travels in headers (`x-babelgate-requested-model`)
and paths, where CR, LF, NUL or non-latin-1 characters would fail after the provider has already answered."""
MAX_USER_CHARS = 256
"""End-user ids (a header, or the body's `user`) name limiter counters and request-log rows: bounded."""


def _bounded_user(user: str | None, source: str) -> str | None:
    if user is not None and len(user) > MAX_USER_CHARS:
        raise BadRequest(f"The end-user id ({source}) is longer than {MAX_USER_CHARS} characters.", param="user",
                         code="user_too_long")
    return user or None


def _body_user(body: JsonObject) -> str | None:
    """The body's `user`, for a caller trusted to assert users."""
    return _bounded_user(body.get("user") if isinstance(body.get("user"), str) else None, "user")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than this gateway's limit of {limit} bytes.")


def _model_object(name: str, created: int) -> JsonObject:
    return {"id": name, "object": "model", "created": created, "owned_by": "babelgate"}


def _visible(runtime: Runtime, key: KeyInfo) -> list[str]:
    return [m for m in runtime.public_models if key.models is None or m in key.models]


def _model_list(runtime: Runtime, key: KeyInfo) -> bytes:
    created = int(time.time())
    return orjson.dumps({"object": "list", "data": [_model_object(m, created) for m in _visible(runtime, key)]})


def _model_entry(runtime: Runtime, key: KeyInfo, name: str) -> bytes:
    route = find_route(runtime, name)
    if route is None or (key.models is not None and route.name not in key.models):
        raise NotFound(f"The model {name!r} does not exist.", param="model", code="model_not_found")
    return orjson.dumps(_model_object(name if route.wildcard else route.name, int(time.time())))


def _price(limiter: Limiter, route: RouteInfo, backend: str, requested: str) -> Price:
    return limiter.price(backend, route.backend_model(backend, requested))
