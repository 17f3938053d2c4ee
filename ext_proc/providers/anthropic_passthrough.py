"""Anthropic Messages clients to Anthropic-family backends, untranslated; and `count_tokens` on every backend that
counts natively.

An `/anthropic/v1/messages` body whose attempt goes to an `anthropic`, `bedrock-anthropic` or `vertex-anthropic`
backend is sent as the client wrote it: the provider decides about fields the gateway does not know
(`context_management`, `mcp_servers`, server tools, thinking blocks, `output_config` ...), so a new Messages API
feature needs no Babelgate release. Each service's own adaptations only:

- anthropic: `model` becomes the backend's model id; the client's `anthropic-beta` goes on as the header;
- bedrock-anthropic (InvokeModel / InvokeModelWithResponseStream): `model` and `stream` leave the body (the model
  is in the path, streaming is the operation), `anthropic_version: "bedrock-2023-05-31"` is added and the betas
  travel in the body as `anthropic_beta: [...]` (what the anthropic SDK's Bedrock client does);
- vertex-anthropic (rawPredict / streamRawPredict): `model` leaves the body (it is in the path), `stream` stays,
  `anthropic_version: "vertex-2023-10-16"` is added, the betas go as the `anthropic-beta` header (as the SDK's
  Vertex client sends them).

The path is the translator's own `chat_path`, and the answer goes back as the provider sent it (Bedrock's
event-stream frames decoded into the Anthropic events they carry: `stages/stream_relay.py`). The one thing checked
in the body: `s3://` / `gs://` source URLs are refused (`fetches.check_messages`), whatever the backend's
`fetch_urls`: neither Bedrock's InvokeModel nor Vertex's rawPredict reads them today, and the Messages format has no
field for the S3 bucket owner a grant would require.

Counting (`POST /anthropic/v1/messages/count_tokens`): Anthropic's `/v1/messages/count_tokens`, Bedrock's
`CountTokens` (`POST /model/{modelId}/count-tokens`, body `{"input": {"invokeModel": {"body": <base64 of the
InvokeModel body>}}}`, answer `{"inputTokens": N}`), Vertex's `count-tokens:rawPredict` (the Messages body with
`model` kept), and Gemini's `models/{m}:countTokens` (AI Studio: `{"generateContentRequest": ...}`; Vertex: the
request's `contents`, `systemInstruction` and `tools`; both answer `{"totalTokens": N}`).
Every answer reaches the client as Anthropic's `{"input_tokens": N}`.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

import orjson

from ..config.models import Backend
from ..json_types import JsonObject
from . import fetches, gemini
from .bedrock_anthropic import BEDROCK_ANTHROPIC_VERSION
from .bedrock_converse import model_path_segment
from .vertex_anthropic import API_VERSION as VERTEX_ANTHROPIC_VERSION
from .vertex_anthropic import VERTEX_VERSION

ANTHROPIC = "anthropic"
BEDROCK = "bedrock-anthropic"
VERTEX = "vertex-anthropic"
SCHEMAS = frozenset({ANTHROPIC, BEDROCK, VERTEX})
"""Backends an Anthropic Messages body passes through to."""
GEMINI_SCHEMAS = frozenset({"gemini", "vertex-gemini"})
COUNTING_SCHEMAS = SCHEMAS | GEMINI_SCHEMAS
"""Backends whose service counts a prompt's tokens; elsewhere the gateway answers its own estimate."""
_VERTEX_COUNTED = ("contents", "systemInstruction", "tools")
BETA_HEADER = "anthropic-beta"
MAX_BETAS = 64
"""A client's `anthropic-beta` list is bounded before it reaches a provider."""
Headers = tuple[tuple[str, str], ...]


def passes_through(schema: str) -> bool:
    return schema in SCHEMAS


def counts(schema: str, converted: bool) -> bool:
    """The backend's service counts this request: Anthropic-family services count any Messages body, Gemini's
    only one the client format could convert (its count is of the translated request)."""
    return schema in SCHEMAS or (converted and schema in GEMINI_SCHEMAS)


def betas(header: str | None) -> list[str]:
    """The client's `anthropic-beta` header as a list (comma-separated, as the SDKs send it)."""
    if not header:
        return []
    return [beta for beta in (part.strip() for part in header.split(",")) if beta][:MAX_BETAS]


def request(schema: str, body: JsonObject, model: str, beta: list[str]) -> tuple[JsonObject, Headers]:
    """The client's Messages body for this backend, and the headers that go with it (the betas, where the service
    reads them from a header). `body` is not changed. An `s3://` or `gs://` source URL is refused (`fetches.
    check_messages`): none of these services reads one, and none may with the gateway's identity."""
    fetches.check_messages(schema, body)
    upstream = dict(body)
    headers: Headers = ((BETA_HEADER, ",".join(beta)),) if beta and schema != BEDROCK else ()
    if schema == ANTHROPIC:
        upstream["model"] = model
        return upstream, headers
    upstream.pop("model", None)
    if schema == BEDROCK:
        upstream.pop("stream", None)
        upstream = {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, **upstream}
        if beta:
            upstream["anthropic_beta"] = beta
        return upstream, headers
    return {"anthropic_version": VERTEX_ANTHROPIC_VERSION, **upstream}, headers


# --- count_tokens ---------------------------------------------------------------------------------------------------


def count_request(schema: str, body: JsonObject, model: str, beta: list[str],
                  gemini_request: JsonObject | None = None) -> tuple[JsonObject, Headers]:
    """The counting request for a backend of `COUNTING_SCHEMAS`. `body` is the client's count_tokens body (a
    Messages body without `max_tokens`); `gemini_request` the generateContent body a Gemini backend would get."""
    if schema in GEMINI_SCHEMAS:
        assert gemini_request is not None
        if schema == "vertex-gemini":  # Vertex's countTokens takes the parts of the request that count
            return {key: value for key, value in gemini_request.items() if key in _VERTEX_COUNTED}, ()
        counted = {key: value for key, value in gemini_request.items() if key != "generationConfig"}
        return {"generateContentRequest": {"model": _gemini_model_name(model), **counted}}, ()
    if schema == BEDROCK:
        invoke, _ = request(BEDROCK, {**body, "max_tokens": _invoke_max_tokens(body)}, model, beta)
        encoded = base64.b64encode(orjson.dumps(invoke)).decode()
        return {"input": {"invokeModel": {"body": encoded}}}, ()
    upstream, headers = request(ANTHROPIC, body, model, beta)  # both keep `model` in the body
    upstream.pop("stream", None)
    upstream.pop("max_tokens", None)
    if schema == VERTEX:
        upstream = {"anthropic_version": VERTEX_ANTHROPIC_VERSION, **upstream}
    return upstream, headers


def _invoke_max_tokens(body: JsonObject) -> int:
    """InvokeModel requires `max_tokens` (a count_tokens body has none), above a thinking budget when there is one;
    it is not counted."""
    thinking = body.get("thinking")
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    return budget + 1 if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 else 1


def count_path(schema: str, model: str, backend: Backend) -> str:
    if schema == ANTHROPIC:
        return "/v1/messages/count_tokens"
    if schema == BEDROCK:
        return f"/model/{model_path_segment(model)}/count-tokens"
    if schema == VERTEX:
        assert backend.gcp is not None  # the config requires project and location for vertex
        return (f"/{VERTEX_VERSION}/projects/{quote(backend.gcp.project or '', safe='')}/locations/"
                f"{quote(backend.gcp.location or '', safe='')}/publishers/anthropic/models/count-tokens:rawPredict")
    return gemini.chat_path(model, False, backend).rpartition(":")[0] + ":countTokens"


def _gemini_model_name(model: str) -> str:
    return model if model.startswith("models/") else f"models/{model}"


def count_answer(schema: str, answer: JsonObject) -> JsonObject:
    """The service's count as Anthropic's `{"input_tokens": N}`. Raises KeyError/TypeError for an answer without one."""
    if schema == BEDROCK:
        tokens = answer["inputTokens"]
    elif schema in GEMINI_SCHEMAS:
        tokens = answer["totalTokens"]
    else:
        tokens = answer["input_tokens"]
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise TypeError("the token count is not an integer")
    return {"input_tokens": tokens}
