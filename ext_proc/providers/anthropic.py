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
- What a model accepts is read from its id (`_capabilities`, one table for every Claude naming scheme: Anthropic's
  `claude-sonnet-4-5-20250929`, Vertex's `claude-sonnet-4-5@20250929`, Bedrock's
  `us.anthropic.claude-sonnet-4-5-20250929-v1:0`). Claude 3.7 to 4.5 take budget-based thinking
  (`thinking: {type: enabled, budget_tokens}`); Opus 4.6 / Sonnet 4.6 and later take `thinking: {type: adaptive}` with
  `output_config.effort` (4.6: low/medium/high/max; Opus 4.7+ and 5.x add xhigh, and refuse budgets); Claude 3.5 and
  older have no thinking. `reasoning_effort` becomes the nearest level the model has at or below the one asked for
  (minimal -> low; xhigh on a 4.6 model -> high; xhigh/max on a budget model -> the high budget). An id the table does
  not know (an ARN, an alias) is taken as a budget-thinking model, the behaviour before the table existed. A route's
  backend entry may set the style itself (`reasoning: {style: budget|adaptive|none}`, `overridden`): the table's
  sampling and structured-output rules stay.
- Sampling fields and model-dependent drops are appended to the `dropped` list the caller passes (named to the client
  in `x-babelgate-dropped-fields`); the table's DROPPED fields are found by `Translator.table_drops`.
- Sampling: Opus 4.1 and later answer 400 to `temperature` and `top_p` together ("cannot both be specified"), so only
  `temperature` goes when both are given; Opus 4.7+ and 5.x answer 400 to either ("deprecated for this model"), so
  neither goes, as with thinking on. The anthropic SDK (1.x and later) no longer declares the sampling fields.
- Thinking round trip: an answer's signed `thinking` / `redacted_thinking` blocks come back as `reasoning_content` (the
  text) plus `thinking_blocks` on the message (`{type: thinking, thinking, signature}` / `{type: redacted_thinking,
  data}`); a stream sends each block in a delta's `thinking_blocks` when the block stops, signature included. An
  assistant message's `thinking_blocks` are sent back first in that turn's content, untouched: with thinking on,
  Anthropic refuses a tool-use turn that does not start with its thinking block. A thinking block with an empty
  signature (another model's reasoning, as the Anthropic client format renders it) is left out: Anthropic would refuse
  it as forged.
- `response_format` json_schema goes as `output_config.format` (Anthropic's native structured output, no beta header)
  on models that have it (Opus 4.1, the 4.5 models and later); elsewhere, and for json_object (native structured
  output takes a schema with closed objects only), the answer is a forced call of a tool named `ANSWER_TOOL` whose
  input is the answer, translated back as message content. That fallback can't run with thinking on (Anthropic refuses
  forced tool use with thinking) or beside the client's own tools, and is refused there.
- Documents: OpenAI `file` parts with a PDF (or plain text) data URL become `document` blocks (filename -> title);
  `file_id` is refused (no Files API mapping). A content part of type `anthropic` holding a `document` block (how the
  Anthropic client format carries URL documents) is passed as it is.
- `provider_options["anthropic"]` (Babelgate's per-schema passthrough, `common.with_provider_options`) is merged
  into the Messages body after translation; Bedrock and Vertex read their own namespaces instead.
- Anthropic typed and server tools (bash_*, text_editor_*, web_search_*, code_execution_* ...) travel in the OpenAI
  request as `{"type": "anthropic", "anthropic": <the tool as Anthropic takes it>}` (an OpenAI-format client's way
  to ask for them; Anthropic-format clients reach Claude backends by passthrough) and are passed through as they
  are; other translators refuse that tool type.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from functools import lru_cache

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
    signed_thinking_blocks,
    split_data_url,
    with_provider_options,
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
    "temperature": MAPPED,  # clamped to 0..1; left out with thinking on, and for Opus 4.7+ (see _add_sampling)
    "top_p": MAPPED,  # left out beside temperature for Opus 4.1+, and for Opus 4.7+
    "stop": MAPPED,  # -> stop_sequences
    "stream": MAPPED,
    "stream_options": DROPPED,  # include_usage is honoured by ChatStream, nothing to send upstream
    "user": MAPPED,  # -> metadata.user_id
    "safety_identifier": MAPPED,  # -> metadata.user_id (wins over `user`)
    "tools": MAPPED,  # function tools -> {name, description, input_schema}; custom tools refused
    "tool_choice": MAPPED,
    "parallel_tool_calls": MAPPED,  # false -> tool_choice.disable_parallel_tool_use
    "reasoning_effort": MAPPED,  # -> thinking budget, or adaptive thinking + output_config.effort (see _capabilities)
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
    "provider_options": MAPPED,  # its "anthropic" object is merged into the Messages body
    "n": REFUSED,  # one choice only
    "logprobs": REFUSED,
    "top_logprobs": REFUSED,
    "logit_bias": REFUSED,
    "audio": REFUSED,
    "modalities": REFUSED,  # text only
    "web_search_options": REFUSED,
    "functions": REFUSED,  # deprecated: use tools
    "function_call": REFUSED,  # deprecated: use tool_choice
    "response_format": MAPPED,  # json_schema -> output_config.format, or a forced ANSWER_TOOL call
    "verbosity": REFUSED,  # no Anthropic equivalent, and it changes the answer
    "moderation": REFUSED,  # OpenAI-side moderation can't run on an Anthropic backend
}

RESERVED_OPTIONS = ("model", "max_tokens", "stream")
"""What `provider_options` may not set: the gateway owns the model, the output limit it reserved for, and streaming."""

_HARMLESS: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "verbosity": ("medium",),
}

_REFUSAL_REASONS = {
    "functions": "'functions' is deprecated and not supported on anthropic backends; use 'tools'",
    "function_call": "'function_call' is deprecated and not supported on anthropic backends; use 'tool_choice'",
}

# budget_tokens per reasoning_effort on budget-thinking models. Anthropic's minimum budget is 1024; "xhigh" and "max"
# get the "high" budget, since a larger one would exceed the output limit of some of these models (Opus 4: 32000).
_THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
"""`output_config.effort` levels, lowest first; `reasoning_effort` minimal is low."""
_REASONING_EFFORTS = ("none", "minimal", *_EFFORTS)

ANSWER_TOOL = "babelgate_structured_answer"
"""The tool whose forced call carries a structured answer on models without native structured output."""

_DOCUMENT_MEDIA_TYPES = {"application/pdf", "text/plain"}

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



# --- what each Claude model accepts ----------------------------------------------------------------------------------

BUDGET = "budget"
ADAPTIVE = "adaptive"
NO_THINKING = "none"


@dataclass(frozen=True)
class Capabilities:
    """What a Claude model accepts, as far as this translation is concerned."""

    thinking: str
    """BUDGET (`thinking: {type: enabled, budget_tokens}`), ADAPTIVE (`{type: adaptive}` + `output_config.effort`) or
    NO_THINKING."""
    efforts: tuple[str, ...] = ()
    """The `output_config.effort` levels an ADAPTIVE model takes."""
    sampling_pair: bool = True
    """`temperature` and `top_p` may go together (before Opus 4.1)."""
    sampling: bool = True
    """`temperature` and `top_p` are accepted at all (before Opus 4.7)."""
    native_format: bool = False
    """`output_config.format` (structured output) is served (Opus 4.1, the 4.5 models and later)."""


_UNKNOWN_MODEL = Capabilities(BUDGET)
_OLD_SCHEME = re.compile(r"claude-(\d+)(?:-(\d)(?!\d))?-(?:opus|sonnet|haiku)")  # claude-3-7-sonnet-20250219
_NEW_SCHEME = re.compile(r"claude-(?:opus|sonnet|haiku|fable|mythos)-(\d+)(?:-(\d)(?!\d))?")  # claude-opus-4-1-...


@lru_cache(maxsize=256)  # keyed by configured model names, a handful per deployment
def capabilities(model: str) -> Capabilities:
    """The capabilities of the Claude model `model` names, by its generation (see the module docstring)."""
    if "claude-mythos-preview" in model:
        return Capabilities(ADAPTIVE, ("low", "medium", "high", "max"), False, False, True)
    found = _NEW_SCHEME.search(model) or _OLD_SCHEME.search(model)
    if found is None:
        return _UNKNOWN_MODEL
    version = (int(found[1]), int(found[2] or 0))
    if version < (3, 7):
        return Capabilities(NO_THINKING)
    if version < (4, 6):
        return Capabilities(BUDGET, sampling_pair=version < (4, 1), native_format=version >= (4, 1))
    if version < (4, 7):
        return Capabilities(ADAPTIVE, ("low", "medium", "high", "max"), False, True, True)
    return Capabilities(ADAPTIVE, _EFFORTS, False, False, True)


REASONING_STYLES = (BUDGET, ADAPTIVE, NO_THINKING)
"""What a route's backend entry may set as `reasoning.style` (`config.models.ReasoningOverride`)."""
_DEFAULT_EFFORTS = ("low", "medium", "high", "max")
"""The effort levels of a model configured `adaptive` that the table does not know as adaptive."""


@lru_cache(maxsize=256)  # keyed by configured (model, style) pairs
def overridden(model: str, style: str) -> Capabilities:
    """`capabilities(model)` with the thinking style a backend entry configures (`reasoning: {style: ...}`): for a
    model the table does not know yet, or knows wrongly. Sampling and structured-output rules stay the table's."""
    table = capabilities(model)
    if style == table.thinking:
        return table
    efforts = (table.efforts or _DEFAULT_EFFORTS) if style == ADAPTIVE else ()
    return replace(table, thinking=style, efforts=efforts)


def chat_path(model: str, stream: bool, backend: object = None) -> str:
    return "/v1/messages"


# --- request -------------------------------------------------------------------------------------------------------


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """Translate an OpenAI chat request into an Anthropic Messages request for `model`, with the client's
    `provider_options["anthropic"]` merged in."""
    request = messages_request(body, model, default_max_tokens=default_max_tokens, dropped=dropped,
                               reasoning=reasoning)
    return with_provider_options(request, body, (SCHEMA,), RESERVED_OPTIONS)


def messages_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                     reasoning: str | None = None) -> JsonObject:
    """The Messages request for `model`, before any `provider_options`: Bedrock and Vertex start from it too.
    `reasoning` (a configured thinking style) overrides the table's; `dropped` gets the sampling fields left out."""
    refuse_unsupported(body, FIELDS, _HARMLESS, _REFUSAL_REASONS, SCHEMA)
    claude = capabilities(model) if reasoning is None else overridden(model, reasoning)
    system, messages = _conversation(body.get("messages"))
    limit, _ = requested_max_tokens(body)
    request: JsonObject = {"model": model, "max_tokens": limit or default_max_tokens, "messages": messages}
    if system:
        request["system"] = system
    thinking_on = _add_reasoning(request, body.get("reasoning_effort"), claude, dropped)
    _add_sampling(request, body, claude, thinking_on, dropped)
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
    if body.get("response_format") is not None:
        _add_response_format(request, body["response_format"], claude, thinking_on)
    return request


def _add_reasoning(request: JsonObject, effort: object, claude: Capabilities, dropped: list[str] | None) -> bool:
    """`reasoning_effort` -> `thinking` (and `output_config.effort`); True when thinking is on. A model without
    extended thinking answers all the same, so the setting only steered: it is dropped (and named), not refused."""
    if effort is None:
        return False
    if not isinstance(effort, str) or effort not in _REASONING_EFFORTS:
        raise BadRequest(f"reasoning_effort {effort!r} is not supported on anthropic backends; use one of "
                         f"{', '.join(_REASONING_EFFORTS)}", param="reasoning_effort")
    if effort == "none":
        request["thinking"] = {"type": "disabled"}
        return False
    if claude.thinking == NO_THINKING:
        if dropped is not None:
            dropped.append("reasoning_effort")
        return False
    if claude.thinking == BUDGET:
        budget = _THINKING_BUDGETS[effort]
        request["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if request["max_tokens"] <= budget:
            # Thinking counts against max_tokens and must stay below it: keep the room the client asked for.
            request["max_tokens"] += budget
        return True
    request["thinking"] = {"type": "adaptive"}
    request["output_config"] = {"effort": _nearest_effort("low" if effort == "minimal" else effort, claude.efforts)}
    return True


def _nearest_effort(effort: str, available: tuple[str, ...]) -> str:
    """The highest level in `available` at or below `effort` (every adaptive model has low)."""
    for level in reversed(_EFFORTS[: _EFFORTS.index(effort) + 1]):
        if level in available:
            return level
    return available[0]


def _add_sampling(request: JsonObject, body: JsonObject, claude: Capabilities, thinking_on: bool,
                  dropped: list[str] | None) -> None:
    """`temperature` and `top_p` where the model takes them; what is left out is appended to `dropped`."""
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or isinstance(temperature, bool)):
        raise BadRequest("'temperature' must be a number", param="temperature")
    if claude.sampling:  # Opus 4.7+ answer 400 to any sampling field: like the default with thinking on, left out
        if temperature is not None and not thinking_on:
            # OpenAI accepts 0..2, Anthropic 0..1: values above 1 are clamped rather than refused, since both ends
            # mean "most random" to the client. With thinking on, Anthropic only accepts the default: left out.
            request["temperature"] = min(float(temperature), 1.0)
        if body.get("top_p") is not None and (claude.sampling_pair or "temperature" not in request):
            request["top_p"] = body["top_p"]
    if dropped is not None:
        dropped.extend(name for name in ("temperature", "top_p") if body.get(name) is not None and name not in request)


def _add_response_format(request: JsonObject, response_format: object, claude: Capabilities,
                         thinking_on: bool) -> None:
    """json_schema -> native structured output where the model has it, else (and json_object) a forced ANSWER_TOOL."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be an object", param="response_format")
        if claude.native_format:
            request.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}
            return
    elif kind == "json_object":
        schema = {"type": "object"}
    else:
        raise BadRequest("response_format.type must be text, json_object or json_schema", param="response_format")
    if thinking_on or request.get("tools"):
        raise BadRequest(f"response_format {kind} on this anthropic model is answered through a forced tool call, "
                         "which can't be combined with reasoning_effort thinking or with 'tools'",
                         param="response_format")
    request["tools"] = [{"name": ANSWER_TOOL, "description": "Give the answer as this tool's input.",
                         "input_schema": schema}]
    request["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}


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
        blocks = _content_blocks(message.get("content"), where, ("text", "image_url", "file", "anthropic"))
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
        if kind == "file":
            blocks.append(_document_block(part, here))
            continue
        if kind == "anthropic":
            blocks.append(_anthropic_block(part, here))
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


def _document_block(part: JsonObject, where: str) -> JsonObject:
    """An OpenAI `file` part (PDF or plain text, as a base64 data URL) -> a `document` block; filename -> title."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise BadRequest(f"{where}.file must be an object", param=f"{where}.file")
    if file.get("file_id") is not None:
        raise BadRequest(f"{where}: file_id is not supported on anthropic backends; send the file as file_data",
                         param=f"{where}.file.file_id")
    data_url = file.get("file_data")
    filename = file.get("filename")
    parsed = split_data_url(data_url) if isinstance(data_url, str) and data_url.startswith("data:") else None
    if parsed is None and isinstance(data_url, str) and data_url and isinstance(filename, str) \
            and filename.lower().endswith(".pdf"):
        parsed = "application/pdf", data_url  # bare base64, as some clients send it, named as a PDF
    if parsed is None or parsed[0] not in _DOCUMENT_MEDIA_TYPES:
        raise BadRequest(f"{where}: file_data must be a base64 data URL of a PDF or plain text "
                         "(data:application/pdf;base64,...)", param=f"{where}.file.file_data")
    media_type, data = parsed
    source: JsonObject = {"type": "base64", "media_type": media_type, "data": data}
    if media_type == "text/plain":
        try:
            source = {"type": "text", "media_type": media_type, "data": base64.b64decode(data).decode()}
        except (binascii.Error, UnicodeDecodeError):
            raise BadRequest(f"{where}: file_data is not base64 UTF-8 text", param=f"{where}.file.file_data") from None
    block: JsonObject = {"type": "document", "source": source}
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return _with_cache_control(block, part)


def _anthropic_block(part: JsonObject, where: str) -> JsonObject:
    """A document block written for Anthropic (a URL document, from the Anthropic client format): passed as it is."""
    block = part.get("anthropic")
    if not isinstance(block, dict) or block.get("type") != "document":
        raise BadRequest(f"{where}.anthropic must be an Anthropic document block", param=f"{where}.anthropic")
    return dict(block)


def _assistant_blocks(message: JsonObject, where: str) -> list[JsonObject]:
    for field in ("audio", "function_call"):
        if message.get(field) is not None:
            raise BadRequest(f"{where}.{field} is not supported on anthropic backends", param=f"{where}.{field}")
    blocks = signed_thinking_blocks(message.get("thinking_blocks"), where)
    blocks += _content_blocks(message.get("content"), where, ("text", "refusal"))
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
    if isinstance(tools, list) and any(isinstance(tool, dict) and tool.get("type") == "anthropic" for tool in tools):
        return [_anthropic_tool(tool, f"tools[{i}]") if isinstance(tool, dict) and tool.get("type") == "anthropic"
                else _function_tools([tool])[0] for i, tool in enumerate(tools)]
    return _function_tools(tools)


def _anthropic_tool(tool: JsonObject, where: str) -> JsonObject:
    """A typed or server tool (bash_*, web_search_* ...) written for Anthropic: passed as it is, Anthropic checks it."""
    inner = tool.get("anthropic")
    if not isinstance(inner, dict) or not isinstance(inner.get("type"), str) or not isinstance(inner.get("name"), str):
        raise BadRequest(f"{where}.anthropic must be an Anthropic tool with a type and a name",
                         param=f"{where}.anthropic")
    return dict(inner)


def _function_tools(tools: object) -> list[JsonObject]:
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
    thinking_blocks: list[JsonObject] = []
    tool_calls: list[JsonObject] = []
    answered = False  # the forced ANSWER_TOOL was called
    for block in body.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                                    "signature": block.get("signature") or ""})
        elif kind == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif kind == "tool_use" and block.get("name") == ANSWER_TOOL:
            text.append(orjson.dumps(block.get("input") or {}).decode())
            answered = True
        elif kind == "tool_use":
            tool_calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"], "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        # Server-tool blocks (server_tool_use, web_search_tool_result ...) have no OpenAI form; their findings are
        # in the text that follows them.
    message: JsonObject = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None,
                           "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        message["thinking_blocks"] = thinking_blocks
    stop_reason = body.get("stop_reason")
    if stop_reason == "tool_use" and answered and not tool_calls:
        stop_reason = "end_turn"  # only the forced ANSWER_TOOL was called: the answer is complete
    completion = {
        "id": body.get("id") or "",
        "object": "chat.completion",
        "created": created,
        "model": body.get("model") or model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(stop_reason),
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
        self._answer_blocks: set[int] = set()  # forced ANSWER_TOOL blocks, whose input is the answer's content
        self._thinking: dict[int, list[str]] = {}  # thinking block index -> its text so far, then its signature

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
        if kind == "tool_use" and block.get("name") == ANSWER_TOOL:
            self._answer_blocks.add(index)
            return [self._chunk({"content": orjson.dumps(block["input"]).decode()})] if block.get("input") else []
        if kind == "tool_use":
            position = self._tool_index[index] = len(self._tool_index)
            arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
            if not arguments:
                self._silent_tools.add(index)
            return [self._chunk({"tool_calls": [{"index": position, "id": block.get("id"), "type": "function",
                                                 "function": {"name": block.get("name"), "arguments": arguments}}]})]
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking":
            self._thinking[index] = [block.get("thinking") or "", block.get("signature") or ""]
            return [self._chunk({"reasoning_content": block["thinking"]})] if block.get("thinking") else []
        if kind == "redacted_thinking":
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": block.get("data") or ""}]})]
        return []

    def _block_delta(self, index: int, delta: JsonObject) -> list[JsonObject]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._answer_blocks:
            return [self._chunk({"content": delta["partial_json"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            self._silent_tools.discard(index)
            fragment = {"index": self._tool_index[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [fragment]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            pieces = self._thinking.get(index)
            if pieces is not None:
                pieces.insert(-1, delta["thinking"])  # the signature stays last
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "signature_delta" and index in self._thinking:
            self._thinking[index][-1] = delta.get("signature") or ""  # the whole signature, as the SDK reads it
        return []  # the signature goes out with the block when it stops; citations_delta has no OpenAI form

    def _block_stop(self, index: int) -> list[JsonObject]:
        pieces = self._thinking.pop(index, None)
        if pieces is not None:
            block = {"type": "thinking", "thinking": "".join(pieces[:-1]), "signature": pieces[-1]}
            return [self._chunk({"thinking_blocks": [block]})]
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
        if stop_reason == "tool_use" and self._answer_blocks and not self._tool_index:
            stop_reason = "end_turn"  # only the forced ANSWER_TOOL was called: the answer is complete
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
    fields = FIELDS
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
