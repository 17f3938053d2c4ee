"""Anthropic Messages clients (`POST /anthropic/v1/messages`) <-> the gateway's canonical OpenAI chat format.

`to_openai` turns a Messages request into an OpenAI chat request, `from_openai` turns a `chat.completion` into a
Message, and `MessagesStream` turns `chat.completion.chunk` dicts into Anthropic SSE events. Every top-level request
field is listed in `FIELDS` (mapped / dropped / refused); a field that is not listed, and an unknown key inside a
message, block or tool, is refused with `BadRequest` naming it, as the Messages API itself refuses extra inputs.

Decisions worth knowing before changing this file:

- `max_tokens` becomes `max_completion_tokens`: OpenAI deprecated `max_tokens` and its reasoning models refuse it;
  every provider module of the gateway reads either.
- Thinking: `thinking: {type: enabled, budget_tokens}` becomes a `reasoning_effort` bucket (below 4096 -> low, below
  16384 -> medium, else high), `adaptive` becomes `output_config.effort` or "high" (Anthropic's default effort),
  `disabled` becomes "none". An explicit `output_config.effort` (low ... max) wins over a budget. The anthropic
  provider maps the bucket back by model: 1024 / 8192 / 24576 budget tokens on budget-thinking Claude models, adaptive
  thinking with that `output_config.effort` on Opus 4.6+ (`providers/anthropic.py`, `capabilities`).
  `display: "omitted"` is dropped and named (`STEERING_SETTINGS`): a translated backend's reasoning comes back as it
  is produced; `between_tools` is refused.
- Thinking and redacted_thinking blocks of past assistant turns travel, signatures and all, in the assistant message's
  `thinking_blocks` (the gateway's documented extension of the OpenAI message): the Anthropic-family translators send
  them back first in the turn, as Anthropic requires with thinking on; other translators drop them. Answers carry them
  the same way, so `from_openai` and `MessagesStream` give the client real signed blocks (a stream's signature goes out
  as a `signature_delta` when the backend's block ends); an answer with `reasoning_content` but no `thinking_blocks`
  (an OpenAI-format backend's reasoning) becomes a thinking block with an empty signature.
- The OpenAI format has no field for text after a tool call in one assistant turn: an assistant turn's text parts stay
  in order, its tool calls follow them.
- A user turn's `tool_result` blocks become `tool` messages, in order, before a user message with the turn's other
  blocks; as on the Messages API, a tool_result after another kind of block is refused. OpenAI tool messages carry
  text only, so images or documents inside a tool_result are refused. `is_error: true` has no OpenAI field: the result
  text is prefixed with "Error: ", the wording the model then reads.
- `cache_control` stays where the client wrote it: on the OpenAI content part, on the tool, and for a tool_result (or a
  tool_use ending an assistant turn) on the message, which is where `providers/anthropic.py` reads it back. The
  top-level `cache_control` (automatic caching) marks the last message the same way.
- Documents: base64 PDFs become OpenAI `file` parts (title -> filename), plain-text and content documents become text
  (and image) parts; a URL document becomes a content part of type `anthropic` (`{"type": "anthropic", "anthropic":
  <the block as sent>}`), which Anthropic-family translators pass on (the provider fetches the URL) and others refuse.
  Files-API sources, citations, `context`, and a title on a non-PDF document are refused.
- Typed client tools with a documented input schema (bash_*, text_editor_*, memory_*: `CLIENT_TOOLS`) become
  ordinary function tools under the name Anthropic requires, with that schema and a description (other models don't
  know these tools by heart); the model's call comes back as a tool_use of that name, which the client executes as it
  does for Claude. Everything else Anthropic defines is refused, naming the tool: server tools (web_search_*,
  code_execution_* ...) run on Anthropic's side, and computer_* needs Claude's own screenshot handling. The refusal
  only makes translated backends ineligible: this conversion is not used for Anthropic-family backends, which get
  the client's body as written (`providers/anthropic_passthrough.py`), server tools and all.
- `top_k` (no OpenAI equivalent; it changes sampling) and `inference_geo` / `container` (Anthropic-side placement and
  code-execution state) are refused; `service_tier`, `speed`, `diagnostics` and the SDK's header-borne `workspace_id`
  / `user_profile_id` are dropped: they change cost, speed or bookkeeping, not the answer.
- Answers: `finish_reason` stop -> `end_turn` (OpenAI never says whether a stop sequence matched, so the stop reason
  `stop_sequence` is never reported and the `stop_sequence` field stays null), length -> `max_tokens`, tool_calls ->
  `tool_use`, content_filter (or a refusal) -> `refusal`. Tool arguments that are not a JSON object are kept as
  `{"_raw": "<arguments>"}` rather than failing the whole answer; a stream passes argument fragments through as the
  backend sent them (the SDK then reports the bad JSON itself).
- Usage: Anthropic's `input_tokens` excludes cache reads and writes, OpenAI's `prompt_tokens` includes them.
"""

from __future__ import annotations

import copy
import uuid
from typing import TypeGuard

import orjson

from ..errors import BadRequest
from ..json_types import JsonObject

MAPPED = "mapped"
DROPPED = "dropped"
REFUSED = "refused"

FIELDS: dict[str, str] = {
    "model": MAPPED,  # kept: the route stage resolves it like an OpenAI model name
    "max_tokens": MAPPED,  # -> max_completion_tokens
    "messages": MAPPED,  # user/assistant/system turns -> OpenAI messages; tool_result blocks -> tool messages
    "system": MAPPED,  # -> a leading system message (text blocks keep cache_control)
    "stop_sequences": MAPPED,  # -> stop
    "stream": MAPPED,  # -> stream, with stream_options.include_usage (Anthropic streams always report usage)
    "metadata": MAPPED,  # user_id -> user
    "tools": MAPPED,  # custom and typed client tools -> function tools; server and computer tools refused
    "tool_choice": MAPPED,  # auto/any/tool/none; disable_parallel_tool_use -> parallel_tool_calls false
    "thinking": MAPPED,  # -> reasoning_effort
    "output_config": MAPPED,  # effort -> reasoning_effort, format -> response_format json_schema
    "cache_control": MAPPED,  # automatic caching -> cache_control on the last message
    "temperature": MAPPED,  # not in the 2.x SDK's types, still accepted by the API for older models
    "top_p": MAPPED,  # likewise
    "top_k": REFUSED,  # likewise, but OpenAI has no top_k
    "container": REFUSED,  # code-execution containers live on Anthropic's side
    "inference_geo": REFUSED,  # data residency the gateway can't promise on another provider
    "service_tier": DROPPED,  # Anthropic capacity tiers; no effect on the answer
    "speed": DROPPED,  # fast mode changes tokens per second, not the answer
    "diagnostics": DROPPED,  # asks Anthropic to explain prompt-cache misses
    "workspace_id": DROPPED,  # the SDK sends it as a header; the gateway's credentials pick the workspace
    "user_profile_id": DROPPED,  # the SDK sends it as a header; attribution only
    "context_management": DROPPED,  # Claude Code's context editing (clearing old thinking/tool results): a
    # server-side context saving; a translated backend gets the whole conversation the client sent instead
}
STEERING_SETTINGS = ("thinking.display", "tools[].defer_loading")
"""Settings inside fields that only steer: `display: "omitted"` asks for thinking without its text (a translated
backend's reasoning is returned as it comes); `defer_loading` keeps a tool out of the model's context until Anthropic's
server-side tool search finds it, and translated backends have no tool search, so such a tool is left out (Claude
Code's `DeferredToolPlaceholder` among them). Both are named rather than refused."""

_REFUSAL_REASONS = {
    "top_k": "'top_k' has no OpenAI-format equivalent and is not supported by this gateway",
    "container": "'container' (Anthropic code-execution containers) is not supported by this gateway",
    "inference_geo": "'inference_geo' can't be honoured by this gateway: the backend decides where inference runs",
}

# Budgets below the first bound are "low", below the second "medium", the rest "high"; the anthropic provider maps
# those back to 1024, 8192 and 24576 tokens, so a budget survives a round trip as the bucket it falls in.
_BUDGET_BUCKETS = ((4096, "low"), (16384, "medium"))
_MIN_THINKING_BUDGET = 1024
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_ADAPTIVE_DEFAULT_EFFORT = "high"

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_TEXT_KEYS = frozenset({"type", "text", "cache_control", "citations"})
_IMAGE_KEYS = frozenset({"type", "source", "cache_control", "transformations"})
_DOCUMENT_KEYS = frozenset({"type", "source", "cache_control", "citations", "context", "title"})
_TOOL_USE_KEYS = frozenset({"type", "id", "name", "input", "cache_control", "caller", "toolset_name"})
_TOOL_RESULT_KEYS = frozenset({"type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"})
_THINKING_KEYS = {"thinking": frozenset({"type", "thinking", "signature"}),
                  "redacted_thinking": frozenset({"type", "data"})}
_THINKING_BLOCK_ORDER = {"thinking": ("type", "thinking", "signature"), "redacted_thinking": ("type", "data")}
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control", "strict", "allowed_callers",
                        "defer_loading", "eager_input_streaming", "input_examples"})
_THINKING_CONFIG_KEYS = {"enabled": frozenset({"type", "budget_tokens", "display"}),
                         "adaptive": frozenset({"type", "display"}),
                         "disabled": frozenset({"type"})}

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_ANTHROPIC_ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "billing_error",
                                    "permission_error", "not_found_error", "rate_limit_error", "timeout_error",
                                    "api_error", "overloaded_error"})
_ERROR_TYPE_BY_OPENAI_TYPE = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "rate_limit_error": "rate_limit_error",
    "service_unavailable": "overloaded_error",
    "timeout": "timeout_error",
}


# --- request -------------------------------------------------------------------------------------------------------


def to_openai(body: dict) -> dict:
    """Translate an Anthropic Messages request into the gateway's canonical OpenAI chat request."""
    _refuse_unsupported(body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("'model' is required and must be a string", param="model")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise BadRequest("'max_tokens' is required and must be a positive integer", param="max_tokens")

    messages = _system_messages(body.get("system"))
    messages += _messages(body.get("messages"))
    cache_control = body.get("cache_control")
    if cache_control is not None:
        messages[-1]["cache_control"] = cache_control
    request: dict = {"model": body["model"], "messages": messages, "max_completion_tokens": max_tokens}

    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            request[field] = _unit_interval(body[field], field)
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("'stop_sequences' must be an array of strings", param="stop_sequences")
        if stop:
            request["stop"] = list(stop)
    if body.get("stream") is True:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    elif body.get("stream") not in (None, False):
        raise BadRequest("'stream' must be a boolean", param="stream")
    user = _user_id(body.get("metadata"))
    if user:
        request["user"] = user

    output_config = body.get("output_config") or {}
    if not isinstance(output_config, dict):
        raise BadRequest("'output_config' must be an object", param="output_config")
    _check_keys(output_config, frozenset({"effort", "format"}), "output_config")
    effort = _reasoning_effort(body.get("thinking"), output_config.get("effort"), max_tokens)
    if effort is not None:
        request["reasoning_effort"] = effort
    if output_config.get("format") is not None:
        request["response_format"] = _response_format(output_config["format"])

    tools = _tools(body.get("tools"))
    if tools:
        request["tools"] = tools
    choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    if choice is not None:
        request["tool_choice"] = choice
    if parallel is not None:
        request["parallel_tool_calls"] = parallel
    return request


def dropped_fields(body: JsonObject) -> list[str]:
    """What `to_openai` leaves out of this (valid) request on purpose, for `x-babelgate-dropped-fields`: the
    DROPPED fields it carries and the steering settings it uses."""
    dropped = [field for field, value in body.items() if value is not None and FIELDS.get(field) == DROPPED]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("display") == "omitted":
        dropped.append("thinking.display")
    tools = body.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and t.get("defer_loading") for t in tools):
        dropped.append("tools[].defer_loading")
    return dropped


def _refuse_unsupported(body: object) -> None:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for field, value in body.items():
        rule = FIELDS.get(field)
        if rule is None:
            raise BadRequest(f"'{field}' is not a Messages API field this gateway knows; it is refused rather than "
                             "ignored", param=field)
        if rule == REFUSED and value is not None:
            raise BadRequest(_REFUSAL_REASONS[field], param=field)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _unit_interval(value: object, field: str) -> float | int:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise BadRequest(f"'{field}' must be a number between 0 and 1", param=field)
    return value


def _check_keys(obj: dict, allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise BadRequest(f"{where}.{key} is not a field this gateway knows; it is refused rather than ignored",
                             param=f"{where}.{key}")


def _user_id(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be an object", param="metadata")
    _check_keys(metadata, frozenset({"user_id"}), "metadata")
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise BadRequest("metadata.user_id must be a string", param="metadata.user_id")
    return user_id


def _reasoning_effort(thinking: object, effort: object, max_tokens: int) -> str | None:
    if effort is not None and effort not in _EFFORTS:
        raise BadRequest(f"output_config.effort must be one of {', '.join(_EFFORTS)}", param="output_config.effort")
    chosen = effort if isinstance(effort, str) else None
    if thinking is None:
        return chosen
    config = thinking if isinstance(thinking, dict) else {}
    kind = config.get("type")
    allowed = _THINKING_CONFIG_KEYS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        raise BadRequest(f"thinking type {kind!r} is not supported by this gateway; use enabled, adaptive or disabled",
                         param="thinking")
    _check_keys(config, allowed, "thinking")
    if kind == "disabled":
        if effort is not None:
            raise BadRequest("output_config.effort can't be combined with disabled thinking on this gateway: "
                             "OpenAI-format backends have one reasoning_effort setting", param="output_config.effort")
        return "none"
    if kind == "adaptive":
        return chosen or _ADAPTIVE_DEFAULT_EFFORT
    budget = config.get("budget_tokens")
    if not _is_int(budget) or budget < _MIN_THINKING_BUDGET:
        raise BadRequest(f"thinking.budget_tokens must be an integer of at least {_MIN_THINKING_BUDGET}",
                         param="thinking.budget_tokens")
    if budget >= max_tokens:
        raise BadRequest("thinking.budget_tokens must be less than max_tokens", param="thinking.budget_tokens")
    if chosen is not None:
        return chosen
    return next((bucket for bound, bucket in _BUDGET_BUCKETS if budget < bound), "high")


def _response_format(output_format: object) -> dict:
    if not isinstance(output_format, dict) or output_format.get("type") != "json_schema" or not isinstance(
            output_format.get("schema"), dict):
        raise BadRequest("output_config.format must be {type: json_schema, schema: {...}}",
                         param="output_config.format")
    _check_keys(output_format, frozenset({"type", "schema"}), "output_config.format")
    # Anthropic's structured output always follows the schema exactly, hence strict.
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": output_format["schema"],
                                                   "strict": True}}


# --- messages ------------------------------------------------------------------------------------------------------


def _system_messages(system: object) -> list[dict]:
    if system is None or system == "" or system == []:
        return []
    return [{"role": "system", "content": _system_content(system, "system")}]


def _system_content(content: object, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or an array of text blocks", param=where)
    parts = []
    for j, block in enumerate(content):
        here = f"{where}[{j}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(f"{here}: system prompts take text blocks only", param=here)
        parts.append(_text_part(block, here))
    return parts


def _messages(messages: object) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    result: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        _check_keys(message, frozenset({"role", "content"}), where)
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str | list):
            raise BadRequest(f"{where}.content must be a string or an array of content blocks",
                             param=f"{where}.content")
        if role == "user":
            result += _user_messages(content, where)
        elif role == "assistant":
            result += _assistant_messages(content, where)
        elif role == "system":
            result.append({"role": "system", "content": _system_content(content, f"{where}.content")})
        else:
            raise BadRequest(f"{where}.role must be 'user', 'assistant' or 'system'", param=f"{where}.role")
    if not result:
        raise BadRequest("'messages' holds nothing an OpenAI-format backend can read", param="messages")
    return result


def _user_messages(content: str | list, where: str) -> list[dict]:
    """One user turn -> its tool results as `tool` messages, then a user message with everything else."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = _block_type(block, here)
        if kind == "tool_result":
            if parts:
                raise BadRequest(f"{here}: tool_result blocks must come before any other content in a user turn",
                                 param=here)
            tool_messages.append(_tool_message(block, here))
        elif kind == "text":
            parts.append(_text_part(block, here))
        elif kind == "image":
            parts.append(_image_part(block, here))
        elif kind == "document":
            parts += _document_parts(block, here)
        else:
            raise BadRequest(f"{here}: content block type {kind!r} is not supported in a user turn by this gateway",
                             param=here)
    if not parts and not tool_messages:
        raise BadRequest(f"{where}.content must not be empty", param=f"{where}.content")
    return [*tool_messages, {"role": "user", "content": parts}] if parts else tool_messages


def _assistant_messages(content: str | list, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"role": "assistant", "content": content}]
    parts: list[dict] = []
    tool_calls: list[dict] = []
    thinking_blocks: list[dict] = []
    cache_control = None
    for j, block in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = _block_type(block, here)
        cache_control = None
        if kind == "text":
            parts.append(_text_part(block, here))
        elif kind == "tool_use":
            tool_calls.append(_tool_call(block, here))
            cache_control = block.get("cache_control")
        elif kind in _THINKING_KEYS:
            thinking_blocks.append(_thinking_block(block, kind, here))
        else:
            raise BadRequest(f"{here}: content block type {kind!r} is not supported in an assistant turn by this "
                             "gateway", param=here)
    if not parts and not tool_calls:
        return []  # a turn of thinking blocks only
    message: dict = {"role": "assistant", "content": parts or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking_blocks:
        message["thinking_blocks"] = thinking_blocks
    if cache_control is not None:
        # A tool_use ending the turn: the anthropic provider puts a message's cache_control on its last block.
        message["cache_control"] = cache_control
    return [message]


def _thinking_block(block: dict, kind: str, where: str) -> dict:
    _check_keys(block, _THINKING_KEYS[kind], where)
    for key in _THINKING_KEYS[kind] - {"type"}:
        if not isinstance(block.get(key), str):
            raise BadRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return dict(block)


def _block_type(block: object, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise BadRequest(f"{where} must be an object with a string 'type'", param=where)
    return block["type"]


def _text_part(block: dict, where: str) -> dict:
    _check_keys(block, _TEXT_KEYS, where)
    if not isinstance(block.get("text"), str):
        raise BadRequest(f"{where}.text must be a string", param=f"{where}.text")
    # `citations` of a past answer annotate the text the model already wrote; the text itself is kept.
    return _with_cache_control({"type": "text", "text": block["text"]}, block)


def _with_cache_control(part: dict, block: dict) -> dict:
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: dict, where: str) -> dict:
    _check_keys(block, _IMAGE_KEYS, where)
    if block.get("transformations"):
        raise BadRequest(f"{where}.transformations is not supported by this gateway",
                         param=f"{where}.transformations")
    source = _source(block)
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or media_type not in _IMAGE_MEDIA_TYPES or not isinstance(data, str) \
                or not data:
            raise BadRequest(f"{where}.source must hold base64 data of type {', '.join(sorted(_IMAGE_MEDIA_TYPES))}",
                             param=f"{where}.source")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise BadRequest(f"{where}: image source type {kind!r} is not supported by this gateway; use base64 or url",
                         param=f"{where}.source")
    return _with_cache_control({"type": "image_url", "image_url": {"url": url}}, block)


def _document_parts(block: dict, where: str) -> list[dict]:
    _check_keys(block, _DOCUMENT_KEYS, where)
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise BadRequest(f"{where}.citations can't be honoured by this gateway", param=f"{where}.citations")
    if block.get("context"):
        raise BadRequest(f"{where}.context is not supported by this gateway", param=f"{where}.context")
    source = _source(block)
    kind, data, inner_blocks = source.get("type"), source.get("data"), source.get("content")
    title = block.get("title")
    if kind == "url" and isinstance(source.get("url"), str):
        return [{"type": "anthropic", "anthropic": dict(block)}]  # for Anthropic-family backends, which fetch it
    if kind == "base64" and source.get("media_type") == "application/pdf" and isinstance(data, str):
        parts = [{"type": "file", "file": {"filename": title or "document.pdf",
                                           "file_data": f"data:application/pdf;base64,{data}"}}]
    elif title:
        raise BadRequest(f"{where}.title is supported for PDF documents only by this gateway", param=f"{where}.title")
    elif kind == "text" and isinstance(data, str):
        parts = [{"type": "text", "text": data}]
    elif kind == "content" and isinstance(inner_blocks, str):
        parts = [{"type": "text", "text": inner_blocks}]
    elif kind == "content" and isinstance(inner_blocks, list):
        parts = []
        for k, inner in enumerate(inner_blocks):
            here = f"{where}.source.content[{k}]"
            inner_kind = _block_type(inner, here)
            if inner_kind == "text":
                parts.append(_text_part(inner, here))
            elif inner_kind == "image":
                parts.append(_image_part(inner, here))
            else:
                raise BadRequest(f"{here}: a content document holds text and image blocks only", param=here)
    else:
        raise BadRequest(f"{where}: document source type {kind!r} is not supported by this gateway; use base64 PDF, "
                         "text or content", param=f"{where}.source")
    if parts:
        _with_cache_control(parts[-1], block)
    return parts


def _source(block: dict) -> dict:
    source = block.get("source")
    return source if isinstance(source, dict) else {}


def _tool_call(block: dict, where: str) -> dict:
    _check_keys(block, _TOOL_USE_KEYS, where)
    caller = block.get("caller")
    if caller is not None and caller != {"type": "direct"}:
        raise BadRequest(f"{where}.caller: only direct tool calls are supported by this gateway",
                         param=f"{where}.caller")
    if block.get("toolset_name") is not None:
        raise BadRequest(f"{where}.toolset_name is not supported by this gateway", param=f"{where}.toolset_name")
    if not isinstance(block.get("id"), str) or not block["id"] or not isinstance(block.get("name"), str):
        raise BadRequest(f"{where} needs an id and a name", param=where)
    tool_input = block.get("input")
    if not isinstance(tool_input, dict):
        raise BadRequest(f"{where}.input must be an object", param=f"{where}.input")
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": orjson.dumps(tool_input).decode()}}


def _tool_message(block: dict, where: str) -> dict:
    _check_keys(block, _TOOL_RESULT_KEYS, where)
    if block.get("toolset_name") is not None:
        raise BadRequest(f"{where}.toolset_name is not supported by this gateway", param=f"{where}.toolset_name")
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise BadRequest(f"{where}.tool_use_id is required", param=f"{where}.tool_use_id")
    content = block.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        parts = []
        for k, inner in enumerate(content):
            here = f"{where}.content[{k}]"
            if _block_type(inner, here) != "text":
                raise BadRequest(f"{here}: tool results can hold text only on this gateway (OpenAI-format tool "
                                 "messages carry text)", param=here)
            parts.append(_text_part(inner, here))
        content = parts
    elif not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or an array of blocks", param=f"{where}.content")
    if block.get("is_error") is True:
        content = _as_error(content)
    message = {"role": "tool", "tool_call_id": tool_use_id, "content": content}
    return _with_cache_control(message, block)


def _as_error(content: str | list[dict]) -> str | list[dict]:
    if isinstance(content, str):
        return f"Error: {content}" if content else "Error"
    if not content:
        return "Error"
    return [{**content[0], "text": f"Error: {content[0]['text']}"}, *content[1:]]


# --- tools ---------------------------------------------------------------------------------------------------------

_TYPED_TOOL_KEYS = frozenset({"type", "name", "cache_control", "strict", "allowed_callers", "defer_loading",
                              "input_examples"})
_TYPED_TOOL_EXTRA_KEYS = {"text_editor_20250728": frozenset({"max_characters"})}
_COMPUTER_PREFIXES = ("computer_",)
_SERVER_TOOL_PREFIXES = ("web_search_", "web_fetch_", "code_execution_", "tool_search_tool_", "mcp_toolset",
                         "browser_")


def _object_schema(properties: dict[str, dict], required: tuple[str, ...]) -> dict:
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_PATH = {"type": "string", "description": "Absolute path of the file or directory."}
_VIEW_RANGE = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
               "description": "view only, for a file: [first line, last line], 1-based; a last line of -1 reads to "
                              "the end."}
_BASH_SCHEMA = _object_schema({
    "command": {"type": "string", "description": "The command to run; required unless restarting."},
    "restart": {"type": "boolean", "description": "true restarts the shell session; otherwise leave it out."},
}, ())


def _editor_schema(commands: tuple[str, ...], insert_field: str) -> dict:
    """The text editor's input: one object for every command, the fields each command reads described."""
    properties: dict[str, dict] = {
        "command": {"type": "string", "enum": list(commands), "description": "What to do."},
        "path": _PATH,
        "view_range": _VIEW_RANGE,
        "file_text": {"type": "string", "description": "create: the new file's content."},
        "old_str": {"type": "string", "description": "str_replace: the exact text to replace; it must occur once."},
        "new_str": {"type": "string", "description": "str_replace: the text that replaces old_str."
                    + (" insert: the text to insert." if insert_field == "new_str" else "")},
        "insert_line": {"type": "integer", "description": "insert: the line after which to insert (0: the top)."},
    }
    if insert_field != "new_str":
        properties[insert_field] = {"type": "string", "description": "insert: the text to insert."}
    return _object_schema(properties, ("command", "path"))


_MEMORY_SCHEMA = _object_schema({
    "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "delete", "rename"],
                "description": "What to do in the /memories directory."},
    "path": {"type": "string", "description": "A path under /memories (every command but rename)."},
    "view_range": _VIEW_RANGE,
    "file_text": {"type": "string", "description": "create: the new file's content."},
    "old_str": {"type": "string", "description": "str_replace: the exact text to replace; it must occur once."},
    "new_str": {"type": "string", "description": "str_replace: the text that replaces old_str."},
    "insert_line": {"type": "integer", "description": "insert: the line after which to insert (0: the top)."},
    "insert_text": {"type": "string", "description": "insert: the text to insert."},
    "old_path": {"type": "string", "description": "rename: the current path."},
    "new_path": {"type": "string", "description": "rename: the new path."},
}, ("command",))
_EDITOR_DESCRIPTION = ("View, create and edit text files: view shows a file with line numbers (or lists a "
                       "directory), create writes a new file, str_replace replaces one exact occurrence, insert adds "
                       "text after a line")
_OLD_EDITOR = (_EDITOR_DESCRIPTION + ", undo_edit reverts the last edit of a file.",
               _editor_schema(("view", "create", "str_replace", "insert", "undo_edit"), "new_str"))
_NEW_EDITOR = (_EDITOR_DESCRIPTION + ".", _editor_schema(("view", "create", "str_replace", "insert"), "insert_text"))
_BASH = ("Run a command in a persistent bash shell session (its state carries over between calls); restart: true "
         "starts a new session.", _BASH_SCHEMA)
CLIENT_TOOLS: dict[str, tuple[str, str, dict]] = {
    "bash_20241022": ("bash", *_BASH),
    "bash_20250124": ("bash", *_BASH),
    "text_editor_20241022": ("str_replace_editor", *_OLD_EDITOR),
    "text_editor_20250124": ("str_replace_editor", *_OLD_EDITOR),
    "text_editor_20250429": ("str_replace_based_edit_tool", *_NEW_EDITOR),
    "text_editor_20250728": ("str_replace_based_edit_tool", *_NEW_EDITOR),
    "memory_20250818": ("memory", "Read and write files in the /memories directory, which persists between "
                                  "conversations: check it before a task, record progress and learnings in it.",
                        _MEMORY_SCHEMA),
}
"""Anthropic's typed client tools -> (the name Anthropic requires, a description, the input schema Anthropic
documents). Claude knows these tools without a description; other models read this one. The client executes the
call as it does for Claude: the model's tool_use comes back under the same name with the documented input."""


def _tools(tools: object) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    result = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        function = _custom_tool(tool, where) if tool.get("type") in (None, "custom") else _typed_tool(tool, where)
        if tool.get("defer_loading"):
            continue  # not in the model's context until a tool search finds it, which translated backends lack
        result.append(_with_cache_control({"type": "function", "function": function}, tool))
    return result


def _custom_tool(tool: dict, where: str) -> dict:
    _check_tool_options(tool, _TOOL_KEYS, where)
    if not isinstance(tool.get("input_schema"), dict):
        raise BadRequest(f"{where}.input_schema must be an object", param=f"{where}.input_schema")
    function: dict = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool["input_schema"]
    if tool.get("strict"):
        function["strict"] = True
    # eager_input_streaming only changes how finely argument fragments stream.
    return function


def _check_tool_options(tool: dict, allowed: frozenset[str], where: str) -> None:
    """The checks every tool the model may call gets: known keys, a name, options with an OpenAI meaning."""
    _check_keys(tool, allowed, where)
    if tool.get("defer_loading") not in (None, True, False):
        raise BadRequest(f"{where}.defer_loading must be a boolean", param=f"{where}.defer_loading")
    for field, harmless in (("allowed_callers", (None, ["direct"])), ("input_examples", (None, []))):
        if tool.get(field) not in harmless:
            raise BadRequest(f"{where}.{field} is not supported by this gateway", param=f"{where}.{field}")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise BadRequest(f"{where}.name is required", param=f"{where}.name")


def _typed_tool(tool: dict, where: str) -> dict:
    """A typed client tool with a documented input schema -> that function; anything else Anthropic defines is
    refused, naming it: only an Anthropic-family backend (which gets the request as written) can serve it."""
    kind, name = tool.get("type"), tool.get("name")
    if not isinstance(kind, str) or not isinstance(name, str) or not name:
        raise BadRequest(f"{where}: a typed or server tool needs a string type and name", param=where)
    known = CLIENT_TOOLS.get(kind)
    if known is None:
        raise BadRequest(f"{where}: {_unservable(kind, name)}; only Anthropic-family backends, which get this "
                         "request as written, can serve it", param=where)
    tool_name, description, schema = known
    if name != tool_name:
        raise BadRequest(f"{where}.name: a {kind} tool is named {tool_name!r}", param=f"{where}.name")
    _check_tool_options(tool, _TYPED_TOOL_KEYS | _TYPED_TOOL_EXTRA_KEYS.get(kind, frozenset()), where)
    if tool.get("strict"):
        raise BadRequest(f"{where}.strict: {kind}'s input schema has optional fields, which OpenAI-format strict "
                         "mode refuses", param=f"{where}.strict")
    # max_characters tells the client how far to truncate what `view` returns: the client applies it, not the model.
    return {"name": name, "description": description, "parameters": copy.deepcopy(schema)}  # translators own it


def _unservable(kind: str, name: str) -> str:
    if kind.startswith(_COMPUTER_PREFIXES):
        return (f"{name!r} ({kind}) is Anthropic's computer-use tool, whose screenshots and actions only Claude "
                "models are trained and prompted for")
    if kind.startswith(_SERVER_TOOL_PREFIXES):
        return f"{name!r} ({kind}) is an Anthropic server tool: it runs on Anthropic's side, not the client's"
    return f"{name!r} ({kind}) is an Anthropic tool type this gateway knows no input schema for"


def _tool_choice(choice: object, tools: list[dict]) -> tuple[str | dict | None, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls); OpenAI refuses either without tools, so both go when none."""
    if choice is None:
        return None, None
    config = choice if isinstance(choice, dict) else {}
    kind = config.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise BadRequest("tool_choice.type must be auto, any, tool or none", param="tool_choice")
    allowed = {"type"} if kind == "none" else {"type", "disable_parallel_tool_use"}
    _check_keys(config, frozenset(allowed | {"name"} if kind == "tool" else allowed), "tool_choice")
    names = {tool["function"]["name"] for tool in tools}
    mapped: str | dict
    if kind == "tool":
        name = config.get("name")
        if not isinstance(name, str) or name not in names:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
        mapped = {"type": "function", "function": {"name": name}}
    elif kind == "any":
        if not tools:
            raise BadRequest("tool_choice 'any' needs 'tools'", param="tool_choice")
        mapped = "required"
    else:
        mapped = str(kind)
    if not tools:
        return None, None
    return mapped, (False if config.get("disable_parallel_tool_use") is True else None)


# --- response ------------------------------------------------------------------------------------------------------


def from_openai(completion: dict, model: str) -> dict:
    """Translate an OpenAI `chat.completion` into an Anthropic Message."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = _signed_thinking(message.get("thinking_blocks"))
    reasoning = message.get("reasoning_content")
    if not content and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text_of(message.get("content"))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        text += refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or _new_tool_id(), "name": function.get("name") or "",
                        "input": _tool_input(function.get("arguments"))})
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model") or model,
        "content": content,
        "stop_reason": _stop_reason(choice.get("finish_reason"), bool(refusal)),
        "stop_sequence": None,
        "usage": _usage(completion.get("usage")),
    }


def _signed_thinking(blocks: object) -> list[dict]:
    """The answer's `thinking_blocks` as Anthropic blocks, with their known keys only."""
    if not isinstance(blocks, list):
        return []
    return [{key: block.get(key) or "" for key in _THINKING_BLOCK_ORDER[block["type"]]} for block in blocks
            if isinstance(block, dict) and block.get("type") in _THINKING_BLOCK_ORDER]


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some OpenAI-compatible servers answer with parts
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return ""


def _tool_input(arguments: object) -> dict:
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str | bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw": str(arguments)}


def _message_id(openai_id: object) -> str:
    if isinstance(openai_id, str) and openai_id:
        return openai_id if openai_id.startswith("msg_") else f"msg_{openai_id}"
    return f"msg_{uuid.uuid4().hex}"


def _new_tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _stop_reason(finish_reason: object, refused: bool) -> str:
    stop_reason = _STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    return "refusal" if refused and stop_reason == "end_turn" else stop_reason


def _usage(usage: object) -> dict:
    """OpenAI usage -> Anthropic usage, whose input_tokens leaves out the cache reads and writes."""
    if not isinstance(usage, dict):
        usage = {}
    details = usage.get("prompt_tokens_details") or {}
    cache_read = details.get("cached_tokens") or 0
    cache_write = details.get("cache_write_tokens") or 0
    result = {
        "input_tokens": max((usage.get("prompt_tokens") or 0) - cache_read - cache_write, 0),
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
    }
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        result["output_tokens_details"] = {"thinking_tokens": reasoning}
    return result


# --- streaming -----------------------------------------------------------------------------------------------------

Event = tuple[str, dict]


class MessagesStream:
    """OpenAI `chat.completion.chunk` dicts (and `{"error": ...}` dicts) -> Anthropic SSE events, in order.

    `message_start` goes out with the first chunk, with `input_tokens` set to the caller's estimate (OpenAI reports
    usage only at the end); the real usage arrives in `message_delta`, as the Messages API allows. The final
    `message_delta` + `message_stop` go out when usage follows (or comes with) the finish reason, or at `finish()`.
    Only one content block is open at a time: a new kind of content, or a new tool call index, closes the open one.
    """

    def __init__(self, model: str, *, input_tokens: int = 0) -> None:
        self.finished = False
        self._model = model
        self._input_estimate = input_tokens
        self._started = False
        self._failed = False
        self._next_index = 0
        self._open: tuple[str, object] | None = None  # ("text" | "thinking" | "tool", tool call index or None)
        self._tool_blocks: set[object] = set()  # OpenAI tool call indexes already given a block
        self._stop_reason: str | None = None
        self._refused = False
        self._usage: dict | None = None

    def feed(self, chunk: dict) -> list[Event]:
        if self.finished or self._failed:
            return []
        if isinstance(chunk.get("error"), dict):
            return self._fail(_error_type(chunk["error"]), str(chunk["error"].get("message") or "upstream error"))
        events = [] if self._started else [self._message_start(chunk)]
        choices = chunk.get("choices") or ()
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            events += self._delta("thinking", None, {"type": "thinking_delta", "thinking": delta["reasoning_content"]})
        if delta.get("thinking_blocks"):
            for block in _signed_thinking(delta["thinking_blocks"]):
                events += self._thinking_end(block)
        for field in ("content", "refusal"):
            if isinstance(delta.get(field), str) and delta[field]:
                self._refused |= field == "refusal"
                events += self._delta("text", None, {"type": "text_delta", "text": delta[field]})
        for fragment in delta.get("tool_calls") or ():
            events += self._tool_fragment(fragment)
            if self._failed:
                return events
        if choice.get("finish_reason"):
            events += self._close()
            self._stop_reason = _stop_reason(choice["finish_reason"], self._refused)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
            if self._stop_reason is not None:
                events += self._message_end()
        return events

    def finish(self) -> list[Event]:
        """The backend's stream ended: close what is open; without a finish reason that is an error."""
        if self.finished or self._failed:
            return []
        if self._stop_reason is None:
            events = self._close()
            return events + self._fail("api_error", "the backend's stream ended before its answer was complete")
        return self._close() + self._message_end()

    def _message_start(self, chunk: dict) -> Event:
        self._started = True
        message: dict = {"id": _message_id(chunk.get("id")), "type": "message", "role": "assistant",
                         "model": chunk.get("model") or self._model, "content": [], "stop_reason": None,
                         "stop_sequence": None,
                         "usage": {"input_tokens": self._input_estimate, "output_tokens": 0,
                                   "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        return "message_start", {"type": "message_start", "message": message}

    def _delta(self, kind: str, key: object, delta: dict) -> list[Event]:
        events = [] if self._open == (kind, key) else self._close() + self._block_start(kind, key, None)
        events.append(("content_block_delta", {"type": "content_block_delta", "index": self._next_index - 1,
                                               "delta": delta}))
        return events

    def _block_start(self, kind: str, key: object, fragment: dict | None) -> list[Event]:
        if kind == "text":
            block: dict = {"type": "text", "text": ""}
        elif kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            function = (fragment or {}).get("function") or {}
            block = {"type": "tool_use", "id": (fragment or {}).get("id") or _new_tool_id(),
                     "name": function.get("name") or "", "input": {}}
        self._open = (kind, key)
        self._next_index += 1
        return [("content_block_start", {"type": "content_block_start", "index": self._next_index - 1,
                                         "content_block": block})]

    def _thinking_end(self, block: dict) -> list[Event]:
        """A signed block the backend finished: its signature closes the open thinking block (whose text has
        streamed); a redacted block, or one whose text did not stream, goes out whole."""
        if block["type"] == "redacted_thinking":
            events = self._close()
            self._next_index += 1
            index = self._next_index - 1
            return [*events, ("content_block_start", {"type": "content_block_start", "index": index,
                                                      "content_block": block}),
                    ("content_block_stop", {"type": "content_block_stop", "index": index})]
        events = []
        if self._open != ("thinking", None):
            events = self._delta("thinking", None, {"type": "thinking_delta", "thinking": block["thinking"]})
        events.append(("content_block_delta", {"type": "content_block_delta", "index": self._next_index - 1,
                                               "delta": {"type": "signature_delta", "signature": block["signature"]}}))
        return events + self._close()

    def _tool_fragment(self, fragment: dict) -> list[Event]:
        key = fragment.get("index", 0)
        events: list[Event] = []
        if self._open != ("tool", key):
            if key in self._tool_blocks:
                # Backends stream calls one after another; a closed Anthropic block can't take more input.
                return self._close() + self._fail("api_error", "the backend interleaved the arguments of parallel "
                                                               "tool calls, which Anthropic streams can't carry")
            self._tool_blocks.add(key)
            events = self._close() + self._block_start("tool", key, fragment)
        arguments = (fragment.get("function") or {}).get("arguments")
        if arguments:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": self._next_index - 1,
                                                   "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._next_index - 1})]

    def _message_end(self) -> list[Event]:
        self.finished = True
        # Without a usage report, only the required output count goes out: the estimate in message_start stands.
        usage = _usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        return [("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                                   "usage": usage}),
                ("message_stop", {"type": "message_stop"})]

    def _fail(self, error_type: str, message: str) -> list[Event]:
        self._failed = True
        return [("error", {"type": "error", "error": {"type": error_type, "message": message}})]


def _error_type(error: dict) -> str:
    """The Anthropic error type for an OpenAI error; the anthropic provider keeps Anthropic's own type in `code`."""
    code = error.get("code")
    if isinstance(code, str) and code in _ANTHROPIC_ERROR_TYPES:
        return code
    kind = error.get("type")
    return _ERROR_TYPE_BY_OPENAI_TYPE.get(kind, "api_error") if isinstance(kind, str) else "api_error"
