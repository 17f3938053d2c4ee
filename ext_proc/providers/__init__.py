"""Provider schemas: one module per wire format, each a set of pure functions over dicts and the `Translator` that
the gateway calls them through.

`for_schema(schema)` gives the `translator.Translator` of a configured schema (`openai`, `anthropic`, ...); the
runtime build looks it up once per backend, and the stages call only what that class declares:

- `chat_path(model, stream, backend) -> str`: path (and query) appended to the backend's base URL path; `backend` is
  the backend's `config.models.Backend` (region, api_version, project, ...).
- `chat_request(body, model, *, default_max_tokens, dropped=None, reasoning=None) -> dict`: OpenAI chat request ->
  provider request. Raises `errors.BadRequest` for fields the provider can't honour (never silently drops one that
  changes the answer); appends to `dropped` what it leaves out for this model or value (its `FIELDS` table's drops
  are `Translator.table_drops`); `reasoning` is a backend model's configured thinking style (Anthropic family only).
- `chat_response(body, model, created) -> dict`: provider answer -> OpenAI `chat.completion`.
- `chat_stream(model, created, include_usage) -> stream.ChatStream`: `.feed(event, data) -> list[dict]` turns one
  provider stream event (SSE, or AWS binary event-stream frames, both decoded to (event type, payload bytes)) into
  OpenAI `chat.completion.chunk` dicts; `.finish() -> list[dict]`; `.usage` holds the OpenAI usage dict once known.
- `error_response(status, body, headers) -> tuple[int, dict]`: a provider error (with its response headers, where
  e.g. AWS names the exception) -> (HTTP status for the client, OpenAI error).
- `serves_embeddings` with `embeddings_path(model, backend)`, `embeddings_request(body, model, backend)` and
  `embeddings_response(body, model)` (OpenAI `list` of `embedding` objects with usage).
- `identity_responses`: its successful non-streaming answers (chat and embeddings) already are OpenAI's, so a request
  that needs nothing from the answer (no reservation to settle) may skip sending the body to Babelgate.
- `identity_streams`: the same for its streams (OpenAI's own; Azure's are not: `prompt_filter_results` move).

Credentials (API keys, signatures, refreshed tokens) are built by `auth/backend_credentials.py`, not here. No module
does I/O or keeps globals: the attempt stage owns the stream state and the bytes.
"""

from __future__ import annotations

from .anthropic import AnthropicTranslator
from .azure_openai import AzureOpenAITranslator
from .bedrock_anthropic import BedrockAnthropicTranslator
from .bedrock_converse import BedrockConverseTranslator
from .cohere import CohereTranslator
from .gemini import GeminiTranslator
from .openai import OpenAITranslator
from .translator import Translator
from .vertex_anthropic import VertexAnthropicTranslator

_TRANSLATORS: tuple[Translator, ...] = (
    OpenAITranslator(), AnthropicTranslator(), AzureOpenAITranslator(), CohereTranslator(),
    BedrockConverseTranslator(), BedrockAnthropicTranslator(), GeminiTranslator(), VertexAnthropicTranslator())
_BY_SCHEMA: dict[str, Translator] = {schema: translator for translator in _TRANSLATORS for schema in translator.schemas}

SCHEMAS = tuple(_BY_SCHEMA)


def for_schema(schema: str) -> Translator:
    return _BY_SCHEMA[schema]
