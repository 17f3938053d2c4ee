"""Provider schemas: one module per wire format, each a set of pure functions over dicts.

A provider module exposes:

- `SCHEMA`: its name in configuration (`openai`, `anthropic`, ...).
- `chat_path(model, stream) -> str`: the path appended to the backend's base URL path.
- `auth_headers(credential) -> list[tuple[str, str]]`: headers that carry the credential and protocol version.
- `chat_request(body, model, *, default_max_tokens) -> dict`: OpenAI chat request -> provider request. Raises
  `errors.BadRequest` for fields the provider can't honour (never silently drops one that changes the answer).
- `chat_response(body, model, created) -> dict`: provider answer -> OpenAI `chat.completion`.
- `ChatStream(model, created, include_usage)`: `.feed(event, data) -> list[dict]` turns one provider stream event into
  OpenAI `chat.completion.chunk` dicts; `.finish() -> list[dict]`; `.usage` holds the OpenAI usage dict once known.
- `error_response(status, body) -> tuple[int, dict]`: a provider error -> (HTTP status for the client, OpenAI error).

No module does I/O or keeps globals: the attempt stage owns the stream state and the bytes.
"""

from __future__ import annotations

from types import ModuleType

from . import anthropic, openai

_BY_SCHEMA: dict[str, ModuleType] = {module.SCHEMA: module for module in (openai, anthropic)}

SCHEMAS = tuple(_BY_SCHEMA)


def for_schema(schema: str) -> ModuleType:
    return _BY_SCHEMA[schema]
