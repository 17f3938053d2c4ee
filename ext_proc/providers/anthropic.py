"""OpenAI chat completions <-> Anthropic Messages (`POST /v1/messages`, `anthropic-version: 2023-06-01`).

Every top-level field of an OpenAI chat request is listed in `FIELDS` with what this translator does with it, and a
field that is not listed is refused: a new OpenAI field can't be silently ignored. For a `refused` field the values in
`_HARMLESS` (OpenAI's own defaults, such as `n: 1`) mean "not asked for" and are accepted.

Things worth knowing before changing this file:

- Anthropic wants user and assistant turns to alternate, so consecutive messages of one role are merged into one turn;
  OpenAI `tool` messages become `tool_result` blocks of a user turn, which is why results of parallel tool calls (and a
  user message after them) land in one user turn, in order.
- `cache_control` (an Anthropic extension clients put on content parts, messages and tools) is carried to the block it
  was written on; on a message it marks the message's last block. OpenAI's own `prompt_cache_breakpoint` on a part is
  mapped to an ephemeral `cache_control` too.
- Anthropic reports input tokens in three parts (uncached, cache write, cache read); OpenAI's `prompt_tokens` is their
  sum, and `prompt_tokens_details.cached_tokens` the cache reads.
- `temperature`, `top_p` and `thinking: {type: enabled, budget_tokens}` are what anthropic-version 2023-06-01 accepts
  for models before Claude Opus 4.7. The anthropic SDK (1.x and later) no longer declares the sampling fields, and
  Opus 4.7+ and the 5.x models answer 400 to them and to budget-based thinking (they want `thinking: {type: adaptive}`
  with `output_config.effort`).
"""

from __future__ import annotations

import orjson

from ..errors import BadRequest, status_error_type
from ..json_types import JsonObject
from .common import (
    DROPPED,
    MAPPED,
    REFUSED,
    error_dict,
    function_tools,
    refuse_unsupported,
    requested_max_tokens,
    split_data_url,
)
from .stream import ChatStream as BaseChatStream
from .translator import Translator

SCHEMA = "anthropic"
API_VERSION = "2023-06-01"
"""The `anthropic-version` this translation is written for; `auth/backend_credentials.py` sends it with the key."""

FIELDS: dict[str, str] = {
    "messages": MAPPED,  # system/developer -> `system`; user/assistant/tool -> alternating turns
    "model": MAPPED,  # replaced by the backend's model name
    "max_completion_tokens": MAPPED,  # -> max_tokens (preferred over max_tokens)
    "max_tokens": MAPPED,  # -> max_tokens
    "temperature": MAPPED,  # clamped to 0..1; dropped when thinking is on
    "top_p": MAPPED,
    "stop": MAPPED,  # -> stop_sequences
    "stream": MAPPED,
    "stream_options": DROPPED,  # include_usage is honoured by ChatStream, nothing to send upstream
    "user": MAPPED,  # -> metadata.user_id
    "safety_identifier": MAPPED,  # -> metadata.user_id (wins over `user`)
    "tools": MAPPED,  # function tools -> {name, description, input_schema}; custom tools refused
    "tool_choice": MAPPED,
    "parallel_tool_calls": MAPPED,  # false -> tool_choice.disable_parallel_tool_use
    "reasoning_effort": MAPPED,  # -> thinking (none -> disabled; xhigh/max refused)
    "presence_penalty": DROPPED,  # no Anthropic equivalent; a sampling nudge, not a contract
    "frequency_penalty": DROPPED,
    "seed": DROPPED,  # best-effort determinism even on OpenAI
    "store": DROPPED,  # OpenAI-side storage of the completion
    "metadata": DROPPED,  # OpenAI-side tags of stored completions
    "service_tier": DROPPED,  # OpenAI's tiers have no Anthropic counterpart
    "prediction": DROPPED,  # a latency optimisation; the answer is the same without it
    "prompt_cache_key": DROPPED,  # OpenAI cache routing hint; Anthropic caches by cache_control markers
    "prompt_cache_retention": DROPPED,
    "prompt_cache_options": DROPPED,
    "n": REFUSED,  # one choice only
    "logprobs": REFUSED,
    "top_logprobs": REFUSED,
    "logit_bias": REFUSED,
    "audio": REFUSED,
    "modalities": REFUSED,  # text only
    "web_search_options": REFUSED,
    "functions": REFUSED,  # deprecated: use tools
    "function_call": REFUSED,  # deprecated: use tool_choice
    "response_format": REFUSED,  # json_object / json_schema not translated yet
    "verbosity": REFUSED,  # no Anthropic equivalent, and it changes the answer
    "moderation": REFUSED,  # OpenAI-side moderation can't run on an Anthropic backend
}

_HARMLESS: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "response_format": ({"type": "text"},),
    "verbosity": ("medium",),
}

_REFUSAL_REASONS = {
    "functions": "'functions' is deprecated and not supported on anthropic backends; use 'tools'",
    "function_call": "'function_call' is deprecated and not supported on anthropic backends; use 'tool_choice'",
    "response_format": "'response_format' json_object and json_schema are not supported on anthropic backends yet",
}

# budget_tokens per reasoning_effort. Anthropic's minimum budget is 1024; "xhigh" and "max" are refused because a
# larger budget would exceed the output limit of some Claude models.
_THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}

_IMAGE_MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_MEDIA_TYPE_ALIASES = {"image/jpg": "image/jpeg"}

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_STATUS_BY_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 503,
    "timeout_error": 504,
    "gateway_timeout_error": 504,
}

def chat_path(model: str, stream: bool, backend: object = None) -> str:
    return "/v1/messages"


# --- request -------------------------------------------------------------------------------------------------------


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int) -> JsonObject:
    """Translate an OpenAI chat request into an Anthropic Messages request for `model`."""
    refuse_unsupported(body, FIELDS, _HARMLESS, _REFUSAL_REASONS, SCHEMA)
    system, messages = _conversation(body.get("messages"))
    limit, _ = requested_max_tokens(body)
    request: JsonObject = {"model": model, "max_tokens": limit or default_max_tokens, "messages": messages}
    if system:
        request["system"] = system

    thinking = _thinking(body.get("reasoning_effort"))
    if thinking is not None:
        request["thinking"] = thinking
        if thinking["type"] == "enabled" and request["max_tokens"] <= thinking["budget_tokens"]:
            # Thinking counts against max_tokens and must stay below it: keep the room the client asked for.
            request["max_tokens"] += thinking["budget_tokens"]
    thinking_on = thinking is not None and thinking["type"] == "enabled"

    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or isinstance(temperature, bool)):
        raise BadRequest("'temperature' must be a number", param="temperature")
    if temperature is not None and not thinking_on:
        # OpenAI accepts 0..2, Anthropic 0..1: values above 1 are clamped rather than refused, since both ends mean
        # "most random" to the client. With thinking on, Anthropic only accepts the default, so it is left out.
        request["temperature"] = min(float(temperature), 1.0)
    if body.get("top_p") is not None:
        request["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        request["stream"] = True
    user_id = body.get("safety_identifier") or body.get("user")
    if user_id:
        request["metadata"] = {"user_id": user_id}

    tools = _tools(body.get("tools"))
    if tools:
        tools, tool_choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), tools)
        if thinking_on and tool_choice is not None and tool_choice["type"] in ("any", "tool"):
            raise BadRequest("anthropic backends can't force a tool call while reasoning_effort enables thinking; "
                             "use tool_choice 'auto' or 'none'", param="tool_choice")
        request["tools"] = tools
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    return request


def _thinking(effort: object) -> JsonObject | None:
    if effort is None:
        return None
    if effort == "none":
        return {"type": "disabled"}
    budget = _THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise BadRequest(f"reasoning_effort {effort!r} is not supported on anthropic backends; "
                         "use none, minimal, low, medium or high", param="reasoning_effort")
    return {"type": "enabled", "budget_tokens": budget}


def _conversation(messages: object) -> tuple[str | list[JsonObject], list[JsonObject]]:
    """Split OpenAI messages into Anthropic's `system` and a list of alternating turns."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    system: list[JsonObject] = []
    turns: list[JsonObject] = []
    for i, message in enumerate(messages):
        role, blocks = _message_blocks(message, f"messages[{i}]")
        if role == "system":
            system.extend(blocks)
        elif not blocks:
            continue
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # A lone plain text block reads better (and is shorter) as a string, as Anthropic allows.
        if len(turn["content"]) == 1 and turn["content"][0].keys() == {"type", "text"}:
            turn["content"] = turn["content"][0]["text"]
    if any("cache_control" in block for block in system):
        return system, turns
    return "\n\n".join(block["text"] for block in system), turns


def _message_blocks(message: object, where: str) -> tuple[str, list[JsonObject]]:
    """One OpenAI message -> (Anthropic role, or "system" for the top-level prompt; its content blocks)."""
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if role in ("system", "developer"):
        role, blocks = "system", _content_blocks(message.get("content"), where)
    elif role == "user":
        blocks = _content_blocks(message.get("content"), where, ("text", "image_url"))
    elif role == "assistant":
        blocks = _assistant_blocks(message, where)
    elif role == "tool":
        role, blocks = "user", [_tool_result(message, where)]
    elif role == "function":
        raise BadRequest(f"{where}: 'function' messages are deprecated and not supported on anthropic backends; "
                         "use tool messages", param=where)
    else:
        raise BadRequest(f"{where} has an unknown role {role!r}", param=f"{where}.role")
    # `name` has no Anthropic equivalent and is left out.
    cache_control = message.get("cache_control")
    if cache_control is not None and blocks:
        blocks[-1]["cache_control"] = cache_control
    return role, blocks


def _content_blocks(content: object, where: str, allowed: tuple[str, ...] = ("text",)) -> list[JsonObject]:
    """Message content (a string or an array of parts) -> Anthropic blocks; `allowed` are the part types accepted."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []  # Anthropic refuses empty text blocks
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    blocks = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise BadRequest(f"{here}: content part type {kind!r} is not supported on anthropic backends",
                             param=here)
        if kind == "image_url":
            blocks.append(_image_block(part, here))
            continue
        text = part.get(kind)  # a text part's `text`, or a past assistant `refusal`, which is plain text to Anthropic
        if not isinstance(text, str):
            raise BadRequest(f"{here}.{kind} must be a string", param=f"{here}.{kind}")
        if text:
            blocks.append(_with_cache_control({"type": "text", "text": text}, part))
    return blocks


def _with_cache_control(block: JsonObject, part: JsonObject) -> JsonObject:
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    elif part.get("prompt_cache_breakpoint") is not None:
        # OpenAI's explicit breakpoint marks the same thing; its ttl (30m/12h) has no Anthropic value, 5m is used.
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _image_block(part: JsonObject, where: str) -> JsonObject:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequest(f"{where}: image_url.url must be a string", param=where)
    if url.startswith("data:"):
        parsed = split_data_url(url)
        if parsed is None:
            raise BadRequest(f"{where}: an image data URL must look like data:image/png;base64,<data>", param=where)
        media_type, data = parsed
        media_type = _MEDIA_TYPE_ALIASES.get(media_type, media_type)
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise BadRequest(f"{where}: image type {media_type!r} is not supported on anthropic backends; "
                             f"use one of {', '.join(sorted(_IMAGE_MEDIA_TYPES))}", param=where)
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise BadRequest(f"{where}: an image URL must be an http(s) URL or a base64 data URL", param=where)
    # image_url.detail has no Anthropic equivalent and is left out.
    return _with_cache_control({"type": "image", "source": source}, part)


def _assistant_blocks(message: JsonObject, where: str) -> list[JsonObject]:
    for field in ("audio", "function_call"):
        if message.get(field) is not None:
            raise BadRequest(f"{where}.{field} is not supported on anthropic backends", param=f"{where}.{field}")
    blocks = _content_blocks(message.get("content"), where, ("text", "refusal"))
    if message.get("refusal"):
        blocks.append({"type": "text", "text": message["refusal"]})
    for k, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{k}]"))
    return blocks


def _tool_use(call: object, where: str) -> JsonObject:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise BadRequest(f"{where}: only function tool calls are supported on anthropic backends", param=where)
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        tool_input = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise BadRequest(f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments") from None
    if not isinstance(tool_input, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments")
    if not call.get("id") or not function.get("name"):
        raise BadRequest(f"{where} needs an id and a function name", param=where)
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": tool_input}


def _tool_result(message: JsonObject, where: str) -> JsonObject:
    tool_call_id = message.get("tool_call_id")
    if not tool_call_id:
        raise BadRequest(f"{where}: a tool message needs a tool_call_id", param=f"{where}.tool_call_id")
    content = message.get("content")
    block: JsonObject = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, list):
        block["content"] = _content_blocks(content, where)
    elif content:
        block["content"] = content
    return block


def _tools(tools: object) -> list[JsonObject]:
    result = []
    for _, tool, function in function_tools(tools, "anthropic"):
        converted: JsonObject = {"name": function["name"]}
        if function.get("description"):
            converted["description"] = function["description"]
        converted["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        if function.get("strict"):
            converted["strict"] = True
        if tool.get("cache_control") is not None:
            converted["cache_control"] = tool["cache_control"]
        result.append(converted)
    return result


def _tool_choice(choice: object, parallel: object,
                 tools: list[JsonObject]) -> tuple[list[JsonObject], JsonObject | None]:
    """Anthropic tool_choice for an OpenAI one; `allowed_tools` narrows the tool list instead."""
    mapped: JsonObject | None
    if choice is None:
        mapped = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        return tools, {"type": "none"}  # nothing to parallelise
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in {tool["name"] for tool in tools}:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
        mapped = {"type": "tool", "name": name}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = set()
        for entry in allowed.get("tools") or ():
            if entry.get("type") != "function":
                raise BadRequest("tool_choice.allowed_tools may only name function tools on anthropic backends",
                                 param="tool_choice")
            names.add((entry.get("function") or {}).get("name"))
        tools = [tool for tool in tools if tool["name"] in names]
        if not tools:
            raise BadRequest("tool_choice.allowed_tools names none of the tools in 'tools'", param="tool_choice")
        mapped = {"type": "any" if allowed.get("mode") == "required" else "auto"}
    else:
        raise BadRequest("tool_choice must be 'auto', 'required', 'none', a function or allowed_tools on anthropic "
                         "backends", param="tool_choice")
    if mapped is not None and parallel is False:
        mapped["disable_parallel_tool_use"] = True
    return tools, mapped


# --- response ------------------------------------------------------------------------------------------------------


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    """Translate an Anthropic Message into an OpenAI `chat.completion`."""
    text: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[JsonObject] = []
    for block in body.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
        elif kind == "tool_use":
            tool_calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        # redacted_thinking and server-tool blocks have no OpenAI form; no request of ours asks for server tools.
    message: JsonObject = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None,
                     "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    completion = {
        "id": body.get("id") or "",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(body.get("stop_reason")),
                     "logprobs": None}],
    }
    usage = usage_of(body)
    if usage is not None:
        completion["usage"] = usage
    return completion


def usage_of(response: JsonObject) -> JsonObject | None:
    usage = response.get("usage")
    return _openai_usage(usage) if isinstance(usage, dict) else None


def _openai_usage(usage: JsonObject) -> JsonObject:
    cache_write = usage.get("cache_creation_input_tokens") or 0
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cache_write + cache_read
    completion = usage.get("output_tokens") or 0
    result = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }
    thinking = (usage.get("output_tokens_details") or {}).get("thinking_tokens")
    if thinking is not None:
        result["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return result


def _finish_reason(stop_reason: str | None) -> str:
    return _FINISH_REASONS.get(stop_reason or "end_turn", "stop")


# --- streaming -----------------------------------------------------------------------------------------------------


class ChatStream(BaseChatStream):
    """Anthropic SSE events -> OpenAI `chat.completion.chunk` dicts, one event at a time.

    `finished` turns true on `message_stop` only; an `error` event ends the stream without finishing it.
    """

    provider = "anthropic"
    end_marker = "message_stop"

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self._raw_usage: JsonObject = {}
        self._tool_index: dict[int, int] = {}  # Anthropic content block index -> OpenAI tool call index
        self._silent_tools: set[int] = set()  # tool blocks that have not streamed any arguments yet

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self._malformed()
        match payload.get("type") or event:
            case "message_start":
                return self._message_start(payload.get("message") or {})
            case "content_block_start":
                return self._block_start(payload.get("index", 0), payload.get("content_block") or {})
            case "content_block_delta":
                return self._block_delta(payload.get("index", 0), payload.get("delta") or {})
            case "content_block_stop":
                return self._block_stop(payload.get("index", 0))
            case "message_delta":
                return self._message_delta(payload)
            case "message_stop":
                self.finished = True
                return self._usage_chunks()
            case "error":
                return self._fail(_error_from_anthropic(payload, None))
            case _:
                return []  # ping, and event types added after this was written

    def _message_start(self, message: JsonObject) -> list[JsonObject]:
        self._id = message.get("id") or ""
        self._model = message.get("model") or self._model
        self._update_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: int, block: JsonObject) -> list[JsonObject]:
        kind = block.get("type")
        if kind == "tool_use":
            position = self._tool_index[index] = len(self._tool_index)
            arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
            if not arguments:
                self._silent_tools.add(index)
            return [self._chunk({"tool_calls": [{"index": position, "id": block.get("id"), "type": "function",
                                                 "function": {"name": block.get("name"), "arguments": arguments}}]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        return []

    def _block_delta(self, index: int, delta: JsonObject) -> list[JsonObject]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            self._silent_tools.discard(index)
            fragment = {"index": self._tool_index[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [fragment]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        return []  # signature_delta and citations_delta have no OpenAI form

    def _block_stop(self, index: int) -> list[JsonObject]:
        if index not in self._silent_tools:
            return []
        # A tool called without arguments streams none; OpenAI clients parse the joined fragments, so send "{}".
        self._silent_tools.discard(index)
        fragment = {"index": self._tool_index[index], "function": {"arguments": "{}"}}
        return [self._chunk({"tool_calls": [fragment]})]

    def _message_delta(self, payload: JsonObject) -> list[JsonObject]:
        self._update_usage(payload.get("usage"))
        stop_reason = (payload.get("delta") or {}).get("stop_reason")
        if stop_reason is None:
            return []
        return [self._chunk({}, _finish_reason(stop_reason))]

    def _update_usage(self, usage: object) -> None:
        """message_start carries input tokens, message_delta cumulative output (and sometimes input) tokens."""
        if isinstance(usage, dict):
            self._raw_usage.update((key, value) for key, value in usage.items() if value is not None)
            self.usage = _openai_usage(self._raw_usage)


# --- errors --------------------------------------------------------------------------------------------------------


def error_response(status: int, body: bytes, headers: object = None) -> tuple[int, JsonObject]:
    """An Anthropic error answer -> (status for the client, OpenAI error). 529 (overloaded) becomes 503."""
    client_status = _client_status(status)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return client_status, _error_from_anthropic(payload, client_status)
    message = f"the anthropic backend answered HTTP {status} with a body that is not an Anthropic error"
    return client_status, error_dict(message, status_error_type(client_status), None)


def _client_status(status: int) -> int:
    if status == 529:
        return 503
    if status >= 500 and status not in (500, 502, 503, 504):
        return 502
    return status


def _error_from_anthropic(payload: JsonObject, status: int | None) -> JsonObject:
    """`{"type": "error", "error": {"type", "message"}}` -> OpenAI error; a stream error has no HTTP status."""
    error = payload.get("error")
    if not isinstance(error, dict):
        error = {}
    kind = error.get("type")
    if not isinstance(kind, str):
        kind = None
    if status is None:
        status = _STATUS_BY_ERROR_TYPE.get(kind or "api_error", 500)
    message = error.get("message")
    if not isinstance(message, str):
        message = None
    return error_dict(message or f"the anthropic backend reported {kind or 'an error'}", status_error_type(status),
                      kind)


class AnthropicTranslator(Translator):
    schemas = (SCHEMA,)
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
