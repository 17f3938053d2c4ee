"""OpenAI chat completions <-> Azure OpenAI (`POST /openai/deployments/{deployment}/chat/completions?api-version=`).

Azure OpenAI speaks OpenAI's own format, so this module is the OpenAI passthrough (`providers/openai.py`: its
request with `stream_options.include_usage`, its `ChatStream`, its error mapping) plus what Azure does differently:

- The URL names the deployment (`backend.azure.deployment`, else the route's backend model) and the API version
  (`backend.azure.api_version`). The body keeps `model`: Azure ignores it (the deployment decides), and the
  `openai.AzureOpenAI` SDK sends it too. Streamed usage needs api-version 2024-09-01-preview or later (the default,
  2024-10-21, has it): older versions refuse `stream_options`. Azure's newer `/openai/v1` API is plain OpenAI: use
  schema `openai` with base_url `https://<resource>.openai.azure.com/openai/v1` for it.
- Every OpenAI field is passed on (`FIELDS`): Azure validates the body against the api-version and answers 400
  "Unrecognized request argument supplied: <field>" to what that version lacks, so nothing is lost silently. A
  field that is neither an OpenAI field nor an Azure extension (`EXTENSIONS`) is refused here, as for every schema.
- Babelgate's `provider_options` is taken out and its `azure-openai` object merged into the body, as `openai.py`
  does with its `openai` object (the same keys are the gateway's).
- Answers carry Azure's content-filter annotations (`prompt_filter_results`, and `content_filter_results` on each
  choice). They are kept: OpenAI clients ignore fields they don't know. A stream opens with a filter-only chunk
  (`"choices": []`, `"object": ""`, `"created": 0`) that is neither a valid `chat.completion.chunk` nor the usage
  chunk clients expect after `include_usage`; its `prompt_filter_results` move onto the first chunk with choices.
- Errors are OpenAI-shaped already; a content-filter refusal (400, `code: content_filter`, with `innererror`) keeps
  its code and param. The OpenAI error envelope has no room for `innererror`, so its details are not forwarded.
- Credentials (built in `auth/azure.py`, not here): the static key goes in `api-key`; with `backend.azure.entra` a
  client-credentials bearer token is used instead, refreshed in the background.
"""

from __future__ import annotations

from urllib.parse import quote

import orjson

from ..config.models import AzureSettings, Backend
from ..errors import BadRequest, error_body, status_error_type
from ..json_types import JsonObject
from . import openai
from .common import GATEWAY_CHAT_FIELDS, MAPPED, OPENAI_CHAT_FIELDS
from .translator import Translator

SCHEMA = "azure-openai"
DEFAULT_API_VERSION = AzureSettings.model_fields["api_version"].default

FIELDS: dict[str, str] = dict.fromkeys(OPENAI_CHAT_FIELDS + GATEWAY_CHAT_FIELDS, MAPPED)
"""Every OpenAI field is passed to Azure, which refuses (400) what the configured api-version does not know;
`provider_options` is Babelgate's, and its `azure-openai` object is merged into the body."""

EXTENSIONS = frozenset({"data_sources"})
"""Azure-only request fields passed on as they are ("On Your Data")."""

_FILTER_MARKER = b'"prompt_filter_results"'


def chat_path(model: str, stream: bool, backend: Backend | None = None) -> str:
    return f"/openai/deployments/{_deployment(model, backend)}/chat/completions?api-version={_api_version(backend)}"


def embeddings_path(model: str, backend: Backend | None = None) -> str:
    return f"/openai/deployments/{_deployment(model, backend)}/embeddings?api-version={_api_version(backend)}"


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """The OpenAI request (model swapped, usage asked for on streams, the reserved output limit when the client
    set none); unknown fields are refused."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for field in body:
        if field not in FIELDS and field not in EXTENSIONS:
            raise BadRequest(f"'{field}' is not a chat completions field the azure-openai translator knows; "
                             "it is refused rather than ignored", param=field)
    return openai.passthrough_request(body, model, SCHEMA, default_max_tokens)


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    return body


def usage_of(response: JsonObject) -> JsonObject | None:
    return openai.usage_of(response)


def embeddings_request(body: JsonObject, model: str, backend: object = None) -> JsonObject:
    return openai.embeddings_request(body, model)


def embeddings_response(body: JsonObject, model: str) -> JsonObject:
    return body


def error_response(status: int, body: bytes, headers: object = None) -> tuple[int, JsonObject]:
    """Azure errors are OpenAI-shaped (`{"error": {"code", "message", "param", "innererror"?}}`); anything else
    (a proxy's HTML page, say) is reported without echoing it."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and ("error" in payload or "message" in payload):
        return openai.error_response(status, body)
    message = f"the azure-openai backend answered HTTP {status} with a body that is not an Azure error"
    return status, orjson.loads(error_body(message, status_error_type(status)))


class ChatStream(openai.ChatStream):
    """The OpenAI stream, with Azure's filter-only opening chunk folded into the first chunk that has choices."""

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self._prompt_filter_results: object = None

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if _FILTER_MARKER in data and self._hold_filter_chunk(data):
            return []
        chunks = openai.ChatStream.feed(self, event, data)  # not super(): on 3.11 that builds a proxy per chunk
        if self._prompt_filter_results is not None:
            for chunk in chunks:
                if chunk.get("choices"):
                    chunk["prompt_filter_results"] = self._prompt_filter_results
                    self._prompt_filter_results = None
                    break
        return chunks

    def _hold_filter_chunk(self, data: bytes) -> bool:
        """Keep the results of a chunk that carries nothing but prompt filter results; False for any other chunk."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(chunk, dict) or chunk.get("choices") or chunk.get("usage") is not None or "error" in chunk:
            return False
        self._prompt_filter_results = chunk.get("prompt_filter_results")
        return True


def _deployment(model: str, backend: Backend | None) -> str:
    settings = backend.azure if backend is not None else None
    return quote((settings.deployment if settings is not None and settings.deployment else None) or model, safe="")


def _api_version(backend: Backend | None) -> str:
    settings = backend.azure if backend is not None else None
    return quote(settings.api_version if settings is not None else DEFAULT_API_VERSION, safe="")


class AzureOpenAITranslator(Translator):
    schemas = (SCHEMA,)
    fields = FIELDS
    identity_responses = True
    serves_embeddings = True
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
    embeddings_path = staticmethod(embeddings_path)
    embeddings_request = staticmethod(embeddings_request)
    embeddings_response = staticmethod(embeddings_response)
