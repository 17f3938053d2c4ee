"""OpenAI and OpenAI-compatible backends: the request and answer are already in the client's format.

The changes on the way out:

- `stream_options.include_usage = true` on streamed requests, because the gateway settles token limits with the real
  usage. When the client did not ask for usage itself, `ChatStream` hides what that option added (the usage-only
  chunk and the `"usage": null` on every other chunk) and keeps the numbers in `.usage`.
- Anthropic's `cache_control` marks are taken out (OpenAI-format APIs don't know them; caching there is automatic).
- Babelgate's `provider_options` is taken out (OpenAI answers 400 to a field it doesn't know) and its `openai`
  object merged into the body (`common.with_provider_options`): the way to send a field only to OpenAI backends of a
  chain. `model`, `stream` and the output limits (`max_tokens`, `max_completion_tokens`, `n`) are refused there: the
  gateway reserved for the request's own. Presets (`presets.py`) adapt the merged body like any other.
- `thinking_blocks` (Claude's signed thinking, `common.DROPPED_ASSISTANT_FIELDS`) are taken off past assistant
  messages: no OpenAI-format model can use them. `reasoning_content` stays: OpenAI-compatible servers that want it
  back on tool-calling turns (DeepSeek) read it.
"""

from __future__ import annotations

import orjson

from ..errors import error_body, status_error_type
from ..json_types import JsonObject
from .common import PROVIDER_OPTIONS, with_provider_options
from .stream import ChatStream as BaseChatStream
from .translator import Translator

SCHEMA = "openai"

_DONE = b"[DONE]"
_RESERVED_OPTIONS = ("model", "stream", "max_tokens", "max_completion_tokens", "n")
_ANTHROPIC_KEYS = frozenset({"cache_control", "thinking_blocks"})


def chat_path(model: str, stream: bool, backend: object = None) -> str:
    """The backend's base URL carries the `/v1` (as with the OpenAI SDK's `base_url`)."""
    return "/chat/completions"


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """The client's body with the backend's model name; every other field (n, logprobs, ...) passes untouched,
    except Anthropic's `cache_control` marks and `thinking_blocks`, and Babelgate's `provider_options` (its `openai`
    object merged in). A body without an output limit gets `max_completion_tokens: default_max_tokens`: what the
    limiter reserved is what the provider may produce (the provider's own default is the model's maximum)."""
    return passthrough_request(body, model, SCHEMA, default_max_tokens)


def passthrough_request(body: JsonObject, model: str, schema: str, default_max_tokens: int) -> JsonObject:
    """`chat_request` for an OpenAI-format `schema`, whose `provider_options` object is the one merged."""
    request = {key: value for key, value in body.items() if key != PROVIDER_OPTIONS}
    request["model"] = model
    if request.get("max_completion_tokens") is None and request.get("max_tokens") is None:
        request["max_completion_tokens"] = default_max_tokens
    request = with_provider_options(_without_anthropic_keys(request), body, (schema,), _RESERVED_OPTIONS)
    if request.get("stream"):
        request["stream_options"] = {**(request.get("stream_options") or {}), "include_usage": True}
    return request


def _without_anthropic_keys(request: JsonObject) -> JsonObject:
    """`request` without `cache_control` marks (messages, parts, tools) and `thinking_blocks` (messages)."""
    messages = request.get("messages")
    if isinstance(messages, list) and any(_has_anthropic_keys(m) for m in messages):
        request["messages"] = [_without_cache_control(m) for m in messages]
    tools = request.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and "cache_control" in t for t in tools):
        request["tools"] = [_without_cache_control(t) for t in tools]
    return request


def _has_anthropic_keys(message: object) -> bool:
    if not isinstance(message, dict):
        return False
    content = message.get("content")
    return "cache_control" in message or "thinking_blocks" in message or (isinstance(content, list) and any(
        isinstance(part, dict) and "cache_control" in part for part in content))


def _without_cache_control(item: object) -> object:
    if not isinstance(item, dict):
        return item
    cleaned = {k: v for k, v in item.items() if k not in _ANTHROPIC_KEYS}
    if isinstance(cleaned.get("content"), list):
        cleaned["content"] = [_without_cache_control(part) for part in cleaned["content"]]
    return cleaned


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    return body


def embeddings_path(model: str, backend: object = None) -> str:
    return "/embeddings"


def embeddings_request(body: JsonObject, model: str, backend: object = None) -> JsonObject:
    return {**body, "model": model}


def embeddings_response(body: JsonObject, model: str) -> JsonObject:
    return body


def usage_of(response: JsonObject) -> JsonObject | None:
    usage = response.get("usage")
    return usage if isinstance(usage, dict) else None


class ChatStream(BaseChatStream):
    """Passes chunks through, recording usage; `finished` turns true on `data: [DONE]`.

    A backend that ends the stream after a `finish_reason` but without `[DONE]` has still said everything, so `finish`
    accepts that too; a stream cut before any `finish_reason` is reported as an error.
    """

    provider = "openai"
    end_marker = "its last chunk"

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self._saw_finish_reason = False

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed:
            return []
        if data.strip() == _DONE:
            self.finished = True
            return []  # the caller writes its own [DONE]
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            return self._malformed()
        if "error" in chunk:
            return self._fail(_openai_error(chunk, 500))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices") or []
        if any(isinstance(choice, dict) and choice.get("finish_reason") for choice in choices):
            self._saw_finish_reason = True
        if self._include_usage:
            return [chunk]
        if not choices:
            return []  # the usage-only chunk the gateway asked for, not the client
        chunk.pop("usage", None)
        return [chunk]

    def _last_chunks(self) -> list[JsonObject] | None:
        return [] if self._saw_finish_reason else None


def error_response(status: int, body: bytes, headers: object = None) -> tuple[int, JsonObject]:
    """Keep an OpenAI error object (filling in what it lacks); wrap anything else. The status is kept."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    return status, _openai_error(payload, status)


def _openai_error(payload: object, status: int) -> JsonObject:
    """`{"error": {...}}`, `{"error": "text"}` or `{"message": "text"}` -> the OpenAI error envelope."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        type_, code, param = error.get("type"), error.get("code"), error.get("param")
        return _error(error["message"],
                      type_ if isinstance(type_, str) else status_error_type(status),
                      code if isinstance(code, str | int) else None,
                      param if isinstance(param, str) else None)
    if isinstance(error, str) and error:
        message = error
    elif isinstance(payload, dict) and isinstance(payload.get("message"), str) and payload["message"]:
        message = payload["message"]
    else:
        message = f"the openai backend answered HTTP {status} with a body that is not an OpenAI error"
    return _error(message, status_error_type(status), None)


def _error(message: str, type_: str, code: str | int | None, param: str | None = None) -> JsonObject:
    error: JsonObject = orjson.loads(error_body(message, type_, code, param))
    return error


class OpenAITranslator(Translator):
    schemas = (SCHEMA,)
    identity_responses = True
    identity_streams = True
    serves_embeddings = True
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
    embeddings_path = staticmethod(embeddings_path)
    embeddings_request = staticmethod(embeddings_request)
    embeddings_response = staticmethod(embeddings_response)
