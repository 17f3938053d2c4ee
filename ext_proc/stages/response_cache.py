"""The exact response cache in the request flow: the route stage looks a request up (`look_up`) and answers a hit
itself (`hit_reply`); on a miss it hands the entry's key to whichever attempt serves the request (dynamic metadata,
as everything the attempt stage needs), and that attempt stores the answer once it is whole (`AnswerWriter`).

Decisions worth knowing before changing this file:
- What is cached is the answer as the client got it, in its own format (a chat completion, an Anthropic Message, a
  Response): the key includes the client format, and a streamed miss is assembled from the bytes the client got,
  so a guardrail's redaction is what a hit replays and an answer the client never got whole is never stored. Only a
  2xx answer that finished is stored: no error, no stream cut or abandoned, no answer a guardrail ended, none cut by
  the token limit (`length`, `max_tokens`, `incomplete`), none larger than the route's `max_entry_bytes`.
- A hit gets fresh ids and timestamps (clients treat ids as unique); a Responses hit is a new Response echoing this
  request's own fields (metadata, user, store…, which the key ignores), stored under its new id when the client
  asked to store it, so `previous_response_id` works after a hit as after a miss.
- A hit uses no tokens: token and cost limits are not consulted or charged; a `requests` limit still counts it (the
  request was made, and a client hammering the gateway with one cached request is still held to its rate).
- `x-babelgate-cache` on every answer of a cached route: `hit` (with `age`, seconds since stored), `miss`, or
  `bypass` (the client said so, or the request can vary: not deterministic, `n > 1`).
- The cache failing is never the request failing: a read error is a miss, a write error a missed chance (logged).
- A route with `cache.semantic` also looks, after an exact miss, for an answer to a similar prompt
  (`cache/semantic.py`); a hit found so says how similar in `x-babelgate-cache-similarity`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from .. import constants
from ..auth.virtual_keys import KeyInfo
from ..cache.assemble import ChatAssembler, MessagesAssembler, StreamAssembler
from ..cache.keys import CACHE_HEADER, cache_key, deterministic, directive
from ..cache.replay import chat_stream, messages_stream, responses_stream
from ..cache.semantic_keys import semantic_request
from ..cache.store import AnswerCache, CachedAnswer
from ..client_formats.responses_answer import client_view, response_envelope
from ..config.models import RouteCache
from ..json_types import JsonObject
from ..limits.limiter import Demand, Limiter, Reservation, Rule
from ..limits.store import StoreUnavailable
from ..state.responses import ResponseStore
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages
from .endpoints import Endpoint
from .responses_turn import ResponsesTurn

if TYPE_CHECKING:
    from ..cache.semantic import SemanticIndex

log = logging.getLogger(__name__)

CLIENT_FORMATS = {Endpoint.CHAT: "chat", Endpoint.MESSAGES: "messages", Endpoint.RESPONSES: "responses"}
"""The endpoints whose answers are cached, and the client format each key names."""
_UNFINISHED = frozenset({"length", "max_tokens", "model_context_window_exceeded"})
"""Finish and stop reasons of an answer the token limit cut."""
_SSE = "text/event-stream"
SIMILARITY_HEADER = "x-babelgate-cache-similarity"


@dataclass(slots=True)
class Lookup:
    state: str
    """"hit", "miss" or "bypass"."""
    key: str = ""
    answer: CachedAnswer | None = None
    settings: RouteCache | None = None
    similarity: float | None = None
    """A semantic hit's cosine similarity to the prompt whose answer it is."""

    def metadata(self) -> dict[str, str]:
        """What the attempt stage needs: the state it tags the answer with, and for a miss where to store it."""
        if self.state != "miss" or self.settings is None:
            return {constants.METADATA_CACHE_KEY: self.state}
        return {constants.METADATA_CACHE_KEY: self.state,
                constants.METADATA_CACHE_ENTRY_KEY: f"{self.settings.ttl!r} {self.settings.max_entry_bytes} {self.key}"}


def scope_of(settings: RouteCache, key: KeyInfo) -> str:
    """Who shares the route's hits with this caller ("" for everyone)."""
    if settings.scope == "global":
        return ""
    if settings.scope == "team" and key.team:
        return "team:" + key.team
    return "key:" + key.id


async def look_up(cache: AnswerCache | None, settings: RouteCache | None, route: str, endpoint: Endpoint,
                  key: KeyInfo, headers: dict[str, str], body: JsonObject,
                  semantic: SemanticIndex | None = None) -> Lookup | None:
    """None when the route's answers are not cached (no `cache:`, or an endpoint whose answers are not). `semantic`:
    where a route with `cache.semantic` finds answers to similar prompts."""
    client_format = CLIENT_FORMATS.get(endpoint)
    if settings is None or cache is None or client_format is None:
        return None
    wish = directive(headers)
    choices = body.get("n", 1)
    if wish == "bypass" or (isinstance(choices, int) and choices > 1) or (
            settings.deterministic_only and not deterministic(body)):
        return Lookup("bypass")
    scope = scope_of(settings, key)
    entry = cache_key(route, scope, client_format, body)
    answer = None
    if wish != "refresh":
        try:
            answer = await cache.get(entry)
        except StoreUnavailable as exc:
            log.warning("the response cache could not be read (%s): served as a miss", exc)
    if answer is not None:
        return Lookup("hit", entry, answer, settings)
    if semantic is not None and settings.semantic is not None:
        request = semantic_request(route, scope, client_format, body, settings.semantic.embeddings_model)
        found = request and await semantic.look_up(cache, settings, route, request, entry, headers,
                                                   read=wish != "refresh")
        if found:
            return Lookup("hit", found.key, found.answer, settings, found.similarity)
    return Lookup("miss", entry, settings=settings)


async def count_hit(limiter: Limiter, scopes: list[tuple[str, str, tuple[Rule, ...]]]) -> Reservation | None:
    """A hit counts in the `requests` limits only (it uses no tokens); raises `RateLimited` past one."""
    counted = [(kind, scope_id, requests) for kind, scope_id, rules in scopes
               if (requests := tuple(rule for rule in rules if rule.metric == "requests"))]
    return await limiter.reserve(counted, Demand(0, 0, 0), "") if counted else None


async def hit_reply(lookup: Lookup, endpoint: Endpoint, request: JsonObject, requested: str, owner: str,
                    turn_store: ResponseStore | None,
                    extra_headers: tuple[tuple[str, str], ...] = ()) -> ProcessingResponse:
    """The cached answer in the client's format, whole or as a stream, with fresh ids."""
    assert lookup.answer is not None
    answer = fresh_copy(endpoint, lookup.answer.body)
    streaming = request.get("stream") is True
    if endpoint is Endpoint.RESPONSES:
        answer = await _responses_hit(answer, request, requested, owner, turn_store)
        body = responses_stream(answer) if streaming else orjson.dumps(answer)
    elif endpoint is Endpoint.MESSAGES:
        body = messages_stream(answer) if streaming else orjson.dumps(answer)
    else:
        options = request.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        body = chat_stream(answer, include_usage) if streaming else orjson.dumps(answer)
    headers = (("content-type", _SSE if streaming else messages.JSON_CONTENT_TYPE), (CACHE_HEADER, "hit"),
               ("age", str(lookup.answer.age())), (constants.RESPONSE_HEADER_MODEL, requested), *extra_headers)
    if lookup.similarity is not None:
        headers = (*headers, (SIMILARITY_HEADER, f"{lookup.similarity:.4f}"))
    return messages.immediate(200, body, headers=headers)


def fresh_copy(endpoint: Endpoint, body: JsonObject) -> JsonObject:
    """The cached answer with its own id and time (a Response gets both in `_responses_hit`)."""
    if endpoint is Endpoint.CHAT:
        return {**body, "id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time())}
    if endpoint is Endpoint.MESSAGES:
        return {**body, "id": "msg_" + uuid.uuid4().hex}
    return dict(body)


async def _responses_hit(cached: JsonObject, request: JsonObject, requested: str, owner: str,
                         store: ResponseStore | None) -> JsonObject:
    """A new Response with the cached output, echoing this request; kept when the client asked to store it."""
    turn = ResponsesTurn(request, requested, owner)
    envelope = response_envelope(request, response_id=turn.response_id, created_at=turn.created_at,
                                 model=requested, status=str(cached.get("status") or "completed"))
    turn.final = {**envelope, "output": cached.get("output") or [], "usage": cached.get("usage")}
    await turn.keep(store)
    return client_view(turn.final, request)


class AnswerWriter:
    """An attempt's side of a miss: the answer once it is whole, stored under the route stage's key."""

    __slots__ = ("_assembler", "_key", "_max_bytes", "_ttl", "state")

    def __init__(self, state: str, entry: str | None) -> None:
        self.state = state
        self._key = ""
        self._ttl = 0.0
        self._max_bytes = 0
        self._assembler: StreamAssembler | None = None
        if entry:
            ttl, max_bytes, self._key = entry.split(" ", 2)
            self._ttl, self._max_bytes = float(ttl), int(max_bytes)

    @classmethod
    def from_metadata(cls, decision: dict[str, str]) -> AnswerWriter | None:
        state = decision.get(constants.METADATA_CACHE_KEY)
        if state not in ("miss", "bypass"):
            return None
        return cls(state, decision.get(constants.METADATA_CACHE_ENTRY_KEY) if state == "miss" else None)

    @property
    def writes(self) -> bool:
        return bool(self._key)

    def follow_stream(self, endpoint: Endpoint) -> None:
        """A streamed answer begins; a Responses stream needs no assembler (the turn has the whole Response)."""
        if self.writes and endpoint is not Endpoint.RESPONSES:
            self._assembler = (MessagesAssembler(self._max_bytes) if endpoint is Endpoint.MESSAGES
                               else ChatAssembler(self._max_bytes))

    def feed(self, sent: bytes) -> None:
        """Bytes of the stream the client got."""
        if self._assembler is not None:
            self._assembler.feed(sent)

    def streamed_answer(self) -> JsonObject | None:
        return self._assembler.answer() if self._assembler is not None else None

    async def store(self, cache: AnswerCache | None, answer: JsonObject | None, input_tokens: int,
                    output_tokens: int, cost_usd: float) -> None:
        if cache is None or not self.writes or answer is None or not finished(answer):
            return
        entry = CachedAnswer(answer, time.time(), input_tokens, output_tokens, cost_usd)
        encoded = entry.encode()
        if len(encoded) > self._max_bytes:
            return
        try:
            await cache.put(self._key, entry, self._ttl)
        except StoreUnavailable as exc:
            log.warning("an answer was not cached: %s", exc)


def finished(answer: JsonObject) -> bool:
    """The answer ended on its own: no error, not cut by the token limit."""
    if "error" in answer and answer.get("error") is not None:
        return False
    if answer.get("object") == "response" or "output" in answer:
        return answer.get("status") == "completed"
    if "choices" in answer:
        choices = answer.get("choices") or []
        return bool(choices) and all(isinstance(c, dict) and c.get("finish_reason") and
                                     c.get("finish_reason") not in _UNFINISHED for c in choices)
    return answer.get("type") == "message" and answer.get("stop_reason") not in (None, *_UNFINISHED)
