"""The seam between the gateway and a backend's wire format: one `Translator` per schema.

The attempt stage and the runtime build hold a backend's `Translator` (from `providers.for_schema`) and call only
what is declared here, so the type checker sees every use and a new schema is a subclass it can check.

Each provider module keeps its translation as pure module-level functions (what the golden tests call) and ends with
its `Translator` subclass, which binds those functions as static methods: the gateway runs exactly the tested code,
through one method lookup and no wrapper frame. Translators hold no state; `providers/__init__.py` makes one of each.

Credentials are not the translator's business: `auth/backend_credentials.py` builds them per schema.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from ..config.models import Backend
from ..json_types import JsonObject
from .stream import ChatStream


class Translator(ABC):
    schemas: tuple[str, ...]
    """Its names in configuration (`openai`, `anthropic`, ...): one wire format may serve several schemas."""
    identity_responses = False
    """Successful non-streaming answers (chat and embeddings) already are OpenAI's, so a request that needs nothing
    from the answer (no reservation to settle, nothing to count) may skip sending the body to Babelgate."""
    serves_embeddings = False
    """The `embeddings_*` methods are implemented: its backends serve `/v1/embeddings`."""

    @abstractmethod
    def chat_path(self, model: str, stream: bool, backend: Backend | None) -> str:
        """Path (and query) appended to the backend's base URL path; `backend` carries region, api_version,
        project, ..."""

    @abstractmethod
    def chat_request(self, body: JsonObject, model: str, *, default_max_tokens: int) -> JsonObject:
        """OpenAI chat request -> provider request. Raises `errors.BadRequest` for a field the provider can't
        honour, never silently dropping one that changes the answer."""

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
