"""A native OpenAI Responses API answer read back into the gateway's canonical chat form.

A Responses request to an OpenAI-family backend passes through untranslated, but the gateway still meters the
answer's usage and runs its answer guardrails, and both read the chat form: `chat_completion_from_response` reads a
JSON answer, `ResponsesEventReader` a stream one typed event at a time (the `ChatStream` contract, `stream.py`).

Decisions worth knowing before changing this file:

- Content is the `output_text` parts of every message item joined without a separator (the stream sends their
  deltas back to back, so the two agree); `refusal` parts likewise. Annotations, logprobs and hosted tool items
  (web_search_call, ...) are not read: a hosted tool's result reaches the client as the message text anyway.
- Tool calls: a `function_call` is a chat tool call with its `call_id` as id and the chat form's name
  (`responses_common.chat_tool_name`: `<namespace>__<name>` inside a namespace); a `custom_tool_call` is one whose
  arguments are `{"input": <its text>}`, the chat form of a custom tool. Streamed, that JSON is sent in pieces: the
  opening `{"input":"` with the call, each input delta JSON-escaped, the closing `"}` when the item is done, so the
  fragments join to what the converter gives.
- Reasoning: summary parts, then `reasoning_text` content parts, of every reasoning item -> `reasoning_content`,
  "\\n\\n" between parts. `encrypted_content` is not carried: only an OpenAI backend can read it, and it reaches the
  client untouched.
- finish_reason: an `incomplete` response is `content_filter` for that reason and `length` for any other; a complete
  one is `tool_calls` when it called a tool, else `stop`.
- Usage: input_tokens -> prompt_tokens (Responses counts cache reads in it, as chat does), cached_tokens and
  `cache_write_tokens` -> prompt_tokens_details, output_tokens -> completion_tokens (reasoning included, as chat
  does), reasoning_tokens -> completion_tokens_details.
- A stream's `response.failed` or `error` event is an error chunk carrying the backend's message (`error_dict`);
  one without a readable message, or an event that is not a JSON object or lacks what its type needs, is the
  gateway's upstream error. `final_response` is the terminal event's `response` (completed, incomplete or failed).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..client_formats.responses_common import CUSTOM_TOOL_PARAMETER, chat_tool_name
from ..json_types import JsonObject
from .common import error_dict, gateway_error
from .stream import ChatStream

_CALL_ITEMS = ("function_call", "custom_tool_call")
_CUSTOM_OPENING = '{"' + CUSTOM_TOOL_PARAMETER + '":"'
_CUSTOM_CLOSING = '"}'
_REASONING_SEPARATOR = "\n\n"


def chat_completion_from_response(response: JsonObject) -> JsonObject:
    """A Responses API `response` object -> the `chat.completion` the gateway meters and guards."""
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    calls: list[JsonObject] = []
    for item in _items(response.get("output")):
        kind = item.get("type")
        if kind == "message":
            texts += _parts(item.get("content"), "output_text", "text")
            refusals += _parts(item.get("content"), "refusal", "refusal")
        elif kind in _CALL_ITEMS:
            calls.append(_tool_call(item))
        elif kind == "reasoning":
            reasoning += _reasoning_texts(item)
    message: JsonObject = {"role": "assistant", "content": "".join(texts) if texts else None,
                           "refusal": "".join(refusals) if refusals else None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = _REASONING_SEPARATOR.join(reasoning)
    completion: JsonObject = {
        "id": response.get("id") or "", "object": "chat.completion", "created": _created(response),
        "model": response.get("model") or "",
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": _finish_reason(response, bool(calls))}],
    }
    usage = chat_usage(response.get("usage"))
    if usage is not None:
        completion["usage"] = usage
    return completion


def chat_usage(usage: object) -> JsonObject | None:
    """Responses usage -> chat usage; None when there is none."""
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(input_details.get("cached_tokens")),
                                  "cache_write_tokens": _count(input_details.get("cache_write_tokens"))},
        "completion_tokens_details": {"reasoning_tokens": _count(output_details.get("reasoning_tokens"))},
    }


def _items(value: object) -> list[JsonObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _parts(content: object, kind: str, key: str) -> list[str]:
    return [part[key] for part in _items(content) if part.get("type") == kind and isinstance(part.get(key), str)]


def _reasoning_texts(item: JsonObject) -> list[str]:
    texts = _parts(item.get("summary"), "summary_text", "text") + _parts(item.get("content"), "reasoning_text", "text")
    return [text for text in texts if text]


def _tool_call(item: JsonObject) -> JsonObject:
    return {"id": item.get("call_id") or "", "type": "function",
            "function": {"name": _call_name(item), "arguments": _arguments(item)}}


def _call_name(item: JsonObject) -> str:
    namespace = item.get("namespace")
    return chat_tool_name(str(item.get("name") or ""), namespace if isinstance(namespace, str) else None)


def _arguments(item: JsonObject) -> str:
    """A call item's chat arguments: a function's as sent, a custom tool's input as `{"input": ...}` JSON."""
    if item.get("type") == "custom_tool_call":
        return orjson.dumps({CUSTOM_TOOL_PARAMETER: str(item.get("input") or "")}).decode()
    arguments = item.get("arguments")
    return arguments if isinstance(arguments, str) else ""


def _finish_reason(response: JsonObject, called: bool) -> str:
    if response.get("status") == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


def _created(response: JsonObject) -> int:
    created = response.get("created_at")
    return int(created) if isinstance(created, int | float) and not isinstance(created, bool) else 0


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _escaped(text: str) -> str:
    """`text` as it appears inside a JSON string (escaping is per character, so pieces join to the whole)."""
    return orjson.dumps(text).decode()[1:-1]


class ResponsesEventReader(ChatStream):
    """Responses API SSE events -> `chat.completion.chunk` dicts; `finished` turns true on response.completed or
    response.incomplete, and `final_response` holds that event's response."""

    provider = "openai"
    end_marker = "response.completed"

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self.final_response: JsonObject | None = None
        self._calls: dict[str, int] = {}  # call item id -> chat tool call index
        self._sent: dict[str, str] = {}  # call item id -> its arguments (or custom input) sent so far
        self._custom: set[str] = set()  # custom tool call items still open (their closing `"}` not sent)
        self._reasoning_part: tuple[str, str, int] | None = None  # the reasoning part the last delta was in

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self._malformed()
        kind = payload.get("type") or event
        try:
            return self._read(kind, payload)
        except (KeyError, TypeError, ValueError):
            return self._malformed()

    def _read(self, kind: object, payload: JsonObject) -> list[JsonObject]:
        """One event; a field its type needs that is missing or of the wrong type raises (a malformed event)."""
        match kind:
            case "response.created" | "response.in_progress" | "response.queued":
                return self._lifecycle(kind, _object(payload["response"]))
            case "response.output_text.delta":
                return self._content("content", payload)
            case "response.refusal.delta":
                return self._content("refusal", payload)
            case "response.reasoning_summary_text.delta":
                return self._reasoning(payload, "summary", payload["summary_index"])
            case "response.reasoning_text.delta":
                return self._reasoning(payload, "text", payload["content_index"])
            case "response.output_item.added":
                return self._call_opened(_object(payload["item"]))
            case "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta":
                return self._call_delta(_string(payload["item_id"]), _string(payload["delta"]))
            case "response.function_call_arguments.done":
                return self._call_rest(_string(payload["item_id"]), _string(payload["arguments"]))
            case "response.custom_tool_call_input.done":
                return self._call_rest(_string(payload["item_id"]), _string(payload["input"]))
            case "response.output_item.done":
                return self._call_done(_object(payload["item"]))
            case "response.completed" | "response.incomplete":
                return self._end(_object(payload["response"]))
            case "response.failed":
                return self._response_failed(_object(payload["response"]))
            case "error":
                return self._fail(_error_chunk(payload))
            case _:
                return []  # per-part bookkeeping (content_part.*, *.done), hosted tools, types added later

    def _lifecycle(self, kind: str, response: JsonObject) -> list[JsonObject]:
        self._id = str(response.get("id") or self._id)
        self._model = str(response.get("model") or self._model)
        return [self._chunk({"role": "assistant", "content": ""})] if kind == "response.created" else []

    def _content(self, key: str, payload: JsonObject) -> list[JsonObject]:
        delta = _string(payload["delta"])
        return [self._chunk({key: delta})] if delta else []

    def _reasoning(self, payload: JsonObject, kind: str, index: object) -> list[JsonObject]:
        delta = _string(payload["delta"])
        if not delta:
            return []
        part = (_string(payload["item_id"]), kind, _integer(index))
        if self._reasoning_part is not None and part != self._reasoning_part:
            delta = _REASONING_SEPARATOR + delta
        self._reasoning_part = part
        return [self._chunk({"reasoning_content": delta})]

    def _call_opened(self, item: JsonObject) -> list[JsonObject]:
        if item.get("type") not in _CALL_ITEMS:
            return []
        item_id = _string(item["id"])
        self._calls[item_id] = len(self._calls)
        custom = item["type"] == "custom_tool_call"
        sent = str(item.get("input" if custom else "arguments") or "")
        self._sent[item_id] = sent
        if custom:
            self._custom.add(item_id)
        arguments = _CUSTOM_OPENING + _escaped(sent) if custom else sent
        return [self._chunk({"tool_calls": [{"index": self._calls[item_id], "id": _string(item["call_id"]),
                                             "type": "function",
                                             "function": {"name": _call_name(item), "arguments": arguments}}]})]

    def _call_delta(self, item_id: str, delta: str) -> list[JsonObject]:
        index = self._calls[item_id]
        self._sent[item_id] += delta
        if not delta:
            return []
        fragment = _escaped(delta) if item_id in self._custom else delta
        return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})]

    def _call_rest(self, item_id: str, whole: str) -> list[JsonObject]:
        """What a call's `done` (or its item's) holds beyond the deltas sent: a backend may skip the deltas."""
        sent = self._sent[item_id]
        return self._call_delta(item_id, whole[len(sent):]) if whole.startswith(sent) else []

    def _call_done(self, item: JsonObject) -> list[JsonObject]:
        if item.get("type") not in _CALL_ITEMS:
            return []
        item_id = _string(item["id"])
        opened = [] if item_id in self._calls else self._call_opened({**item, "arguments": "", "input": ""})
        custom = item["type"] == "custom_tool_call"
        chunks = [*opened, *self._call_rest(item_id, _string(item["input" if custom else "arguments"]))]
        if item_id in self._custom:
            self._custom.discard(item_id)
            closing = {"index": self._calls[item_id], "function": {"arguments": _CUSTOM_CLOSING}}
            chunks.append(self._chunk({"tool_calls": [closing]}))
        return chunks

    def _end(self, response: JsonObject) -> list[JsonObject]:
        self._settle(response)
        self.finished = True
        called = bool(self._calls) or any(item.get("type") in _CALL_ITEMS for item in _items(response.get("output")))
        return [self._chunk({}, _finish_reason(response, called)), *self._usage_chunks()]

    def _response_failed(self, response: JsonObject) -> list[JsonObject]:
        self._settle(response)
        error = response.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            return self._fail(_backend_error(error))
        return self._fail(gateway_error("the openai backend reported the response failed without saying why"))

    def _settle(self, response: JsonObject) -> None:
        self.final_response = response
        self._id = str(response.get("id") or self._id)
        usage = chat_usage(response.get("usage"))
        if usage is not None:
            self.usage = usage


def _error_chunk(payload: JsonObject) -> JsonObject:
    """An `error` event: its fields at the top level (the SDK's `ResponseErrorEvent`) or under `error`."""
    nested = payload.get("error")
    error: JsonObject = nested if isinstance(nested, dict) else payload
    if isinstance(error.get("message"), str) and error["message"]:
        return _backend_error(error)
    return gateway_error("the openai backend sent an error event without a message")


def _backend_error(error: JsonObject) -> JsonObject:
    code = error.get("code")
    param = error.get("param")
    type_ = error.get("type")
    if not isinstance(type_, str) or type_ == "error":
        type_ = "rate_limit_error" if code == "rate_limit_exceeded" else "server_error"
    return error_dict(error["message"], type_, code if isinstance(code, str | int) else None,
                      param if isinstance(param, str) else None)


def _object(value: Any) -> JsonObject:
    if not isinstance(value, dict):
        raise TypeError("expected a JSON object")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value
