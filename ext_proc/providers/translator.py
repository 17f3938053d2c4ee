"""The seam between the gateway and a backend's wire format: one `Translator` per schema.

The attempt stage and the runtime build hold a backend's `Translator` (from `providers.for_schema`) and call only
what is declared here, so the type checker sees every use and a new schema is a subclass it can check.

Each provider module keeps its translation as pure module-level functions (what the golden tests call) and ends with
its `Translator` subclass, which binds those functions as static methods: the gateway runs exactly the tested code,
through one method lookup and no wrapper frame. Translators hold no state; `providers/__init__.py` makes one of each.

Credentials are not the translator's business: `auth/backend_credentials.py` builds them per schema.

What a translation leaves out is named to the client (`x-babelgate-dropped-fields`): the fields its `FIELDS` table
marks DROPPED are found by `table_drops` (computed once per class from `fields`), and what a translator leaves out
only for some models or values (Claude's sampling fields with thinking on, Converse's `reasoning_effort` for models
without reasoning) it appends to the `dropped` list `chat_request` is given. Top-level fields only: keys of past
messages (`thinking_blocks` for a non-Claude model, `cache_control` marks) are not named.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from ..config.models import Backend
from ..json_types import JsonObject
from .common import DROPPED
from .stream import ChatStream

HONOURED_BY_GATEWAY = frozenset({"stream_options"})
"""DROPPED in tables because nothing goes upstream, yet honoured (include_usage is the stream's job): never named."""


class Translator(ABC):
    schemas: tuple[str, ...]
    """Its names in configuration (`openai`, `anthropic`, ...): one wire format may serve several schemas."""
    identity_responses = False
    """Successful non-streaming answers (chat and embeddings) already are OpenAI's, so a request that needs nothing
    from the answer (no reservation to settle, nothing to count) may skip sending the body to Babelgate."""
    identity_streams = False
    """Its streams already are OpenAI's chunks, each as the client expects it, once the request's own
    `stream_options` went upstream unchanged: a stream nothing reads may flow from Envoy to the client without one
    chunk passing through Babelgate."""
    serves_embeddings = False
    """The `embeddings_*` methods are implemented: its backends serve `/v1/embeddings`."""
    fields: ClassVar[Mapping[str, str]] = {}
    """The provider's `FIELDS` table (OpenAI field -> mapped / dropped / refused); empty: every field passes."""
    dropped_fields: ClassVar[frozenset[str]] = frozenset()
    """The fields `fields` marks dropped, but those the gateway honours itself: set from `fields` per subclass."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.dropped_fields = frozenset(name for name, rule in cls.fields.items()
                                       if rule == DROPPED and name not in HONOURED_BY_GATEWAY)

    def table_drops(self, body: JsonObject) -> list[str]:
        """The fields of `body` (with a value) that this translator's table drops, in the body's order."""
        dropped = self.dropped_fields
        return [name for name, value in body.items() if name in dropped and value is not None] if dropped else []

    @abstractmethod
    def chat_path(self, model: str, stream: bool, backend: Backend | None) -> str:
        """Path (and query) appended to the backend's base URL path; `backend` carries region, api_version,
        project, ..."""

    @abstractmethod
    def chat_request(self, body: JsonObject, model: str, *, default_max_tokens: int,
                     dropped: list[str] | None = None, reasoning: str | None = None) -> JsonObject:
        """OpenAI chat request -> provider request. Raises `errors.BadRequest` for a field the provider can't
        honour, never silently dropping one that changes the answer. `dropped`, when given, gets the fields left
        out for this model or value (not those of the table: `table_drops`). `reasoning`: the configured reasoning
        style of this backend model (`budget`, `adaptive`, `none`), overriding what the translator reads from the
        model id; only the Anthropic family (Anthropic, Bedrock-Anthropic, Vertex-Anthropic) reads it."""

    @abstractmethod
    def chat_response(self, body: JsonObject, model: str, created: int) -> JsonObject:
        """Provider answer -> OpenAI `chat.completion`."""

    @abstractmethod
    def chat_stream(self, model: str, created: int, include_usage: bool) -> ChatStream:
        """The state of one streamed answer (`stream.ChatStream`); AWS binary frames and SSE events alike reach
        it as (event type, payload bytes)."""

    @abstractmethod
    def error_response(self, status: int, body: bytes, headers: Mapping[str, str] | None) -> tuple[int, JsonObject]:
        """A provider error, with its response headers (where AWS names the exception) -> (HTTP status for the
        client, OpenAI error)."""

    def embeddings_path(self, model: str, backend: Backend | None) -> str:
        raise NotImplementedError(f"{type(self).__name__} serves no embeddings")

    def embeddings_request(self, body: JsonObject, model: str, backend: Backend | None) -> JsonObject:
        """OpenAI embeddings request -> provider request."""
        raise NotImplementedError(f"{type(self).__name__} serves no embeddings")

    def embeddings_response(self, body: JsonObject, model: str) -> JsonObject:
        """Provider answer -> OpenAI `list` of `embedding` objects, with usage."""
        raise NotImplementedError(f"{type(self).__name__} serves no embeddings")
