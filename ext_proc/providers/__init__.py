"""Provider schemas: one module per wire format, each a set of pure functions over dicts.

A provider module exposes:

- `SCHEMA`: its name in configuration (`openai`, `anthropic`, ...).
- `CREDENTIAL_HEADERS`: every header name its credentials may set (stripped again before each retry, since Envoy
  shows a retry the previous attempt's headers).
- `chat_path(model, stream, backend) -> str`: path (and query) appended to the backend's base URL path; `backend` is
  the backend's `config.models.Backend` (region, api_version, project, ...).
- `auth_headers(secret) -> list[tuple[str, str]]`: headers that carry an API key and protocol version; or
  `make_credential(backend, secret) -> auth.credentials.Credential` for per-request signing / refreshed tokens.
- `STREAM_FORMAT`: "sse" (default) or "eventstream" (AWS binary frames); either way `ChatStream.feed` gets
  `(event type, payload bytes)`.
- `chat_request(body, model, *, default_max_tokens) -> dict`: OpenAI chat request -> provider request. Raises
  `errors.BadRequest` for fields the provider can't honour (never silently drops one that changes the answer).
- `chat_response(body, model, created) -> dict`: provider answer -> OpenAI `chat.completion`.
- `ChatStream(model, created, include_usage)`: `.feed(event, data) -> list[dict]` turns one provider stream event into
  OpenAI `chat.completion.chunk` dicts; `.finish() -> list[dict]`; `.usage` holds the OpenAI usage dict once known.
- `error_response(status, body, headers) -> tuple[int, dict]`: a provider error (with its response headers, where
  e.g. AWS names the exception) -> (HTTP status for the client, OpenAI error).

Optional embeddings support: `EMBEDDINGS = True` with `embeddings_path(model, backend) -> str`,
`embeddings_request(body, model, backend) -> dict` and `embeddings_response(body, model) -> dict` (OpenAI `list` of
`embedding` objects with usage).

Optional `IDENTITY_RESPONSES = True`: its successful non-streaming answers (chat and embeddings) already are OpenAI's,
so a request that needs nothing from the answer (no reservation to settle) may skip sending the body to Babelgate.

No module does I/O or keeps globals: the attempt stage owns the stream state and the bytes.
"""

from __future__ import annotations

from types import ModuleType

from ..auth.credentials import Credential, StaticCredential
from ..config.models import Backend
from . import (
    anthropic,
    azure_openai,
    bedrock_anthropic,
    bedrock_converse,
    cohere,
    gemini,
    openai,
    vertex_anthropic,
)

_MODULES: tuple[ModuleType, ...] = (openai, anthropic, azure_openai, cohere, bedrock_converse, bedrock_anthropic,
                                    gemini, vertex_anthropic)
_BY_SCHEMA: dict[str, ModuleType] = {}
for _module in _MODULES:
    for _schema in getattr(_module, "SCHEMAS", None) or (_module.SCHEMA,):
        _BY_SCHEMA[_schema] = _module

SCHEMAS = tuple(_BY_SCHEMA)

CREDENTIAL_HEADERS: frozenset[str] = frozenset().union(*(getattr(m, "CREDENTIAL_HEADERS", ()) for m in _MODULES))
"""Every header any provider's credentials can set."""


def for_schema(schema: str) -> ModuleType:
    return _BY_SCHEMA[schema]


def credential_for(provider: ModuleType, backend: Backend, secret: str | None) -> Credential:
    if hasattr(provider, "make_credential"):
        return provider.make_credential(backend, secret)
    return StaticCredential(tuple(provider.auth_headers(secret)) if secret else ())


def serves_embeddings(provider: ModuleType) -> bool:
    return bool(getattr(provider, "EMBEDDINGS", False))
