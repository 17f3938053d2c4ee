"""OpenAI Responses API requests (`POST /v1/responses`) -> the gateway's canonical OpenAI chat request.

`to_openai` turns a Responses request body into a chat completions request that every provider translator takes;
`dropped_fields` names what it leaves out on purpose (`x-babelgate-dropped-fields`); `rough_form` is a chat form of
any body, valid or not, for estimating tokens when `to_openai` refuses. Every top-level field is listed in `FIELDS`
(mapped / dropped / refused / gateway); a field not listed, and an unknown key inside an item, content part or tool,
is refused with `BadRequest` naming it, as the Responses API itself refuses unknown parameters. A refusal here only
makes translated backends ineligible: a native OpenAI-Responses backend gets the client's body as written.

Decisions worth knowing before changing this file:

- Gateway fields (`store`, `metadata`, `include`, `stream_options`, `previous_response_id`) are the gateway's own
  business: never sent upstream, never named as dropped. `previous_response_id` is resolved into `input` before this
  conversion, so one still present was not found and is refused. `include: ["message.output_text.logprobs"]` also
  asks for `logprobs: true`; the other includes shape the answer, which the answer side decides.
- Items -> messages. `instructions` is a leading system message; `developer` becomes `system`. An assistant message,
  the function and custom tool calls directly after it, and the thinking blocks of reasoning items directly before
  it, become ONE chat assistant message (text first, calls after: the chat form has no text after a call in one
  message); calls with no message before them get an assistant message of their own (content null). Tool outputs
  become `tool` messages in order. Item `id`, `status` and `phase` (commentary / final answer), a call's `async`,
  an output's `name` and `namespace`, and the `annotations` and `logprobs` of past output text are bookkeeping
  the model doesn't read: ignored.
- Reasoning items: the gateway's envelope (`responses_common.decode_thinking`: Claude's signed blocks, from an
  earlier answer of a translated backend) goes back as the `thinking_blocks` of the assistant message that follows
  (the Anthropic-family translators send them first in that turn; others drop them); such an item starts a new
  assistant message. OpenAI's own opaque reasoning can't be read by another model and is left out without being
  named; so are blocks with no assistant message after them, and every summary or reasoning text (the model's
  notes to itself, which the signed blocks already carry).
- Custom (free-form) tools become function tools taking `{"input": "<text>"}` (`responses_common`), and a past
  `custom_tool_call` goes back as a call with those arguments; a `grammar` format can't be enforced by a translated
  backend, so it is named `tools[].format`, and its text is appended to the tool's description for the model to
  read. Namespace tools are flattened to `<namespace>__<name>` functions whose description starts with the
  namespace's; the answer side maps the names back.
- Hosted tools (web_search, file_search, code_interpreter, mcp, shell, computer ...) run on OpenAI's side or need
  OpenAI's own tool training: they are left out and named `tools[].<type>`, so the model answers without them; a
  `tool_choice` that forces one is refused. `defer_loading: true` tools wait for OpenAI's tool search, which
  translated backends lack: left out and named `tools[].defer_loading`. A tool only programs may call
  (`allowed_callers` without `direct`) is left out and named `tools[].allowed_callers`; `output_schema` (a note
  on what a function returns) and `async` are dropped and named too. A `tool_choice` naming a tool that was left
  out is refused. `allowed_tools` filters the chat tools, its `mode` becomes `tool_choice`.
- Without any chat tool left, `tool_choice` and `parallel_tool_calls` are not sent (OpenAI refuses them without
  tools); `required` with only hosted tools is refused (it forces one of them).
- Content: `input_image` -> `image_url` part (`detail` kept), `input_file` with `file_data` -> chat `file` part.
  `file_data` is passed on as a base64 data URL (what every translator reads); bare base64 is wrapped into one
  with the media type its `filename` names, and refused when no filename names one. Files API ids (`file_id`) and
  `file_url` are refused: translated backends can't fetch them. A file's `detail` has no chat field: dropped and
  named. `prompt_cache_breakpoint` marks travel on the chat part, where the Anthropic-family translators read them.
- Tool outputs carry text only (as chat `tool` messages do): an image or file in one is refused, as the Anthropic
  client format refuses them; text parts stay parts. A call made by a program (`caller.type: program`) is refused.
- `max_output_tokens` -> `max_completion_tokens`; `text.format` json_object / json_schema -> `response_format`;
  `text.verbosity` -> `verbosity`; `reasoning.effort` -> `reasoning_effort`; `reasoning.summary` is honoured by the
  answer side (not named); `reasoning.mode` other than standard and `reasoning.context` other than auto are named.
  `moderation` has the same chat field and is passed on (translators decide). `prompt_cache_options` goes to the
  chat field as far as it exists there: `mode`, and `ttl` "30m" (a longer ttl and `comparison_response_id`, a
  cache diagnosis, are dropped and named; `prewarm: true`, which asks for no answer, is refused);
  `prompt_cache_retention`, deprecated by `prompt_cache_options`, is dropped.
- Dropped and named: `truncation: "auto"` (the backend refuses an oversized prompt instead of trimming it),
  `max_tool_calls` (it limits hosted tool calls, which are left out), `context_management` (server-side compaction),
  `access_programs`, `background_options`, `image`. Refused: `background: true`, `conversation`, `prompt`.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field
from typing import TypeGuard

import orjson

from ..errors import BadRequest
from ..json_types import JsonObject
from .responses_common import (
    CUSTOM_TOOL_PARAMETER,
    NAMESPACE_SEPARATOR,
    chat_tool_name,
    decode_thinking,
)

MAPPED = "mapped"
DROPPED = "dropped"
REFUSED = "refused"
GATEWAY = "gateway"

FIELDS: dict[str, str] = {
    "model": MAPPED,  # kept: the route stage resolves it
    "input": MAPPED,  # items -> messages
    "instructions": MAPPED,  # -> a leading system message
    "stream": MAPPED,  # -> stream, with stream_options.include_usage
    "max_output_tokens": MAPPED,  # -> max_completion_tokens
    "temperature": MAPPED,
    "top_p": MAPPED,
    "top_logprobs": MAPPED,  # -> logprobs: true + top_logprobs
    "parallel_tool_calls": MAPPED,  # sent only with tools
    "tools": MAPPED,  # function / custom / namespace -> function tools; hosted tools left out and named
    "tool_choice": MAPPED,
    "text": MAPPED,  # format -> response_format, verbosity -> verbosity
    "reasoning": MAPPED,  # effort -> reasoning_effort; summary honoured by the answer side
    "user": MAPPED,
    "safety_identifier": MAPPED,
    "prompt_cache_key": MAPPED,
    "service_tier": MAPPED,
    "moderation": MAPPED,  # the same chat field; translators that can't run it refuse it
    "prompt_cache_options": MAPPED,  # mode and ttl 30m -> the same chat field; translators without it drop it
    "truncation": DROPPED,  # "auto" only; "disabled" is what a backend does anyway
    "max_tool_calls": DROPPED,  # limits hosted tool calls, which translated backends don't make
    "context_management": DROPPED,  # OpenAI's server-side compaction
    "prompt_cache_retention": DROPPED,  # deprecated cache-lifetime hint
    "access_programs": DROPPED,  # OpenAI-side access programs
    "background_options": DROPPED,  # only meaningful with background: true, which is refused
    "image": DROPPED,  # OpenAI's image context compression
    "client_metadata": DROPPED,  # string tags Codex sends about itself (accepted by OpenAI, not in the SDK's types)
    "background": REFUSED,  # true only: a background response is stored and polled on OpenAI's side
    "conversation": REFUSED,  # OpenAI-side conversation state
    "prompt": REFUSED,  # stored prompt templates
    "store": GATEWAY,
    "metadata": GATEWAY,
    "include": GATEWAY,
    "stream_options": GATEWAY,
    "previous_response_id": GATEWAY,  # resolved before conversion; still present means unknown: refused
}

_REFUSAL_REASONS = {
    "background": "'background' responses are stored and polled on OpenAI's side; translated backends can't serve "
                  "them",
    "conversation": "'conversation' (OpenAI-side conversation state) is not supported by this gateway; send the "
                    "conversation as input items",
    "prompt": "'prompt' (stored prompt templates) is not supported by this gateway; send the prompt's text as "
              "instructions and input",
    "previous_response_id": "'previous_response_id' names a response this gateway does not know; send the "
                            "conversation as input items",
}
_HARMLESS: dict[str, tuple[object, ...]] = {"background": (False,)}

_S, _B, _I, _O, _A = (str,), (bool,), (int,), (dict,), (list,)
_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": _S, "input": (str, list), "instructions": _S, "stream": _B, "max_output_tokens": _I,
    "temperature": _NUMBER, "top_p": _NUMBER, "top_logprobs": _I, "parallel_tool_calls": _B, "tools": _A,
    "tool_choice": (str, dict), "text": _O, "reasoning": _O, "user": _S, "safety_identifier": _S,
    "prompt_cache_key": _S, "service_tier": _S, "moderation": _O, "prompt_cache_options": _O, "truncation": _S,
    "max_tool_calls": _I, "context_management": _A, "prompt_cache_retention": _S, "access_programs": _O,
    "background_options": _O, "image": _O, "client_metadata": _O, "background": _B, "conversation": (str, dict),
    "prompt": _O,
    "store": _B, "metadata": _O, "include": _A, "stream_options": _O, "previous_response_id": _S,
}
_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", dict: "an object",
               list: "an array"}

_PASSED_ON = ("user", "safety_identifier", "prompt_cache_key", "service_tier", "moderation")
_CACHE_OPTION_KEYS = frozenset({"mode", "ttl", "comparison_response_id", "prewarm"})
_CHAT_CACHE_TTLS = ("30m",)
"""The lifetimes the chat API's `prompt_cache_options.ttl` takes; a longer one is dropped and named."""
_REASONING_DROPS: dict[str, tuple[object, ...]] = {"mode": (None, "standard"), "context": (None, "auto")}
_CACHE_OPTION_DROPS: dict[str, tuple[object, ...]] = {"ttl": (None, *_CHAT_CACHE_TTLS),
                                                      "comparison_response_id": (None,)}
"""Settings inside a field -> the values that lose nothing; any other value is named, being left out."""
_LOGPROBS_INCLUDE = "message.output_text.logprobs"
_TOOL_CHOICES = ("none", "auto", "required")

# Keys each input item, content part and tool may have (the openai SDK's types; a test keeps them equal).
_MESSAGE_KEYS = frozenset({"type", "role", "content", "id", "status", "phase"})
_FUNCTION_CALL_KEYS = frozenset({"type", "call_id", "name", "arguments", "namespace", "id", "status", "caller",
                                 "async"})
_CUSTOM_CALL_KEYS = frozenset({"type", "call_id", "name", "input", "namespace", "id", "caller", "async"})
_FUNCTION_OUTPUT_KEYS = frozenset({"type", "call_id", "output", "id", "status", "caller", "name", "namespace"})
_CUSTOM_OUTPUT_KEYS = frozenset({"type", "call_id", "output", "id", "caller"})
_REASONING_KEYS = frozenset({"type", "id", "summary", "content", "encrypted_content", "status"})
_PART_KEYS = {
    "input_text": frozenset({"type", "text", "prompt_cache_breakpoint"}),
    "input_image": frozenset({"type", "image_url", "file_id", "detail", "prompt_cache_breakpoint"}),
    "input_file": frozenset({"type", "file_data", "file_id", "file_url", "filename", "detail",
                             "prompt_cache_breakpoint"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
}
_FUNCTION_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict", "defer_loading",
                                 "allowed_callers", "output_schema", "async"})
_CUSTOM_TOOL_KEYS = frozenset({"type", "name", "description", "format", "defer_loading", "allowed_callers", "async"})
_NAMESPACE_KEYS = frozenset({"type", "name", "description", "tools"})
_TEXT_KEYS = frozenset({"format", "verbosity"})
_REASONING_CONFIG_KEYS = frozenset({"effort", "summary", "generate_summary", "context", "mode"})
_JSON_SCHEMA_KEYS = frozenset({"type", "name", "schema", "strict", "description"})

_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_CALLS = ("function_call", "custom_tool_call")
_OUTPUTS = ("function_call_output", "custom_tool_call_output")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


# --- request -------------------------------------------------------------------------------------------------------


def to_openai(body: dict) -> dict:
    """Translate a Responses API request into the gateway's canonical OpenAI chat request."""
    _check_fields(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", param="model")
    messages = _instructions(body.get("instructions")) + _input_messages(body.get("input"))
    request: dict = {"model": model, "messages": messages}
    _add_tools(request, body)
    _add_sampling(request, body)
    _add_output(request, body)
    return request


def dropped_fields(body: JsonObject) -> list[str]:
    """What `to_openai` leaves out of this (valid) request on purpose, for `x-babelgate-dropped-fields`: the DROPPED
    fields it carries (`truncation` only when "auto") and the settings inside fields it leaves out."""
    dropped = [name for name, value in body.items() if FIELDS.get(name) == DROPPED and value is not None
               and (name != "truncation" or value == "auto")]
    dropped += _setting_drops(body.get("reasoning"), _REASONING_DROPS, "reasoning")
    dropped += _setting_drops(body.get("prompt_cache_options"), _CACHE_OPTION_DROPS, "prompt_cache_options")
    tools = body.get("tools")
    for tool in _all_tools(tools if isinstance(tools, list) else []):
        dropped += _tool_drops(tool)
    if _file_details(body.get("input")):
        dropped.append("input[].content[].detail")
    return list(dict.fromkeys(dropped))


def _setting_drops(settings: object, harmless: dict[str, tuple[object, ...]], where: str) -> list[str]:
    if not isinstance(settings, dict):
        return []
    return [f"{where}.{key}" for key, values in harmless.items() if settings.get(key) not in values]


def _check_fields(body: object) -> None:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for name, value in body.items():
        rule = FIELDS.get(name)
        if rule is None:
            raise BadRequest(f"'{name}' is not a Responses API field this gateway knows; it is refused rather than "
                             "ignored", param=name)
        if value is None:
            continue
        kinds = _TYPES[name]
        if type(value) not in kinds:
            raise BadRequest(f"'{name}' must be {' or '.join(_TYPE_NAMES[k] for k in kinds)}", param=name)
        refused = rule == REFUSED or name == "previous_response_id"
        if refused and value not in _HARMLESS.get(name, ()):
            raise BadRequest(_REFUSAL_REASONS[name], param=name)
    _check_gateway_fields(body)


def _check_gateway_fields(body: dict) -> None:
    """The fields the gateway honours itself are not sent on, but a malformed one is still the client's error."""
    include = body.get("include")
    if include is not None and not all(isinstance(value, str) for value in include):
        raise BadRequest("'include' must be an array of strings", param="include")
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise BadRequest("'truncation' must be 'auto' or 'disabled'", param="truncation")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(obj: dict, allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise BadRequest(f"{where}.{key} is not a field this gateway knows; it is refused rather than ignored",
                             param=f"{where}.{key}")


def _required_str(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where}.{key} is required and must be a string", param=f"{where}.{key}")
    return value


def _optional_str(obj: dict, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return value


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    return value


# --- sampling and output -------------------------------------------------------------------------------------------


def _add_sampling(request: dict, body: dict) -> None:
    for name, top in (("temperature", 2), ("top_p", 1)):
        value = body.get(name)
        if value is not None:
            if not 0 <= value <= top:
                raise BadRequest(f"'{name}' must be a number between 0 and {top}", param=name)
            request[name] = value
    for name in _PASSED_ON:
        if body.get(name) is not None:
            request[name] = body[name]
    cache_options = _prompt_cache_options(body.get("prompt_cache_options"))
    if cache_options:
        request["prompt_cache_options"] = cache_options
    _add_logprobs(request, body)


def _add_logprobs(request: dict, body: dict) -> None:
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None:
        if not 0 <= top_logprobs <= 20:
            raise BadRequest("'top_logprobs' must be an integer between 0 and 20", param="top_logprobs")
        request["logprobs"] = True
        request["top_logprobs"] = top_logprobs
    elif _LOGPROBS_INCLUDE in (body.get("include") or ()):
        request["logprobs"] = True


def _prompt_cache_options(options: dict | None) -> dict | None:
    """The part of `prompt_cache_options` the chat API has: `mode`, and a `ttl` it offers."""
    if options is None:
        return None
    _check_keys(options, _CACHE_OPTION_KEYS, "prompt_cache_options")
    if options.get("prewarm") is True:
        raise BadRequest("prompt_cache_options.prewarm asks for no answer at all, which translated backends can't "
                         "do", param="prompt_cache_options.prewarm")
    return {key: options[key] for key in ("mode", "ttl")
            if options.get(key) is not None and (key != "ttl" or options[key] in _CHAT_CACHE_TTLS)}


def _add_output(request: dict, body: dict) -> None:
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if max_tokens < 1:
            raise BadRequest("'max_output_tokens' must be a positive integer", param="max_output_tokens")
        request["max_completion_tokens"] = max_tokens
    _add_text(request, body.get("text"))
    _add_reasoning(request, body.get("reasoning"))
    if body.get("stream") is True:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}


def _add_text(request: dict, text: dict | None) -> None:
    if text is None:
        return
    _check_keys(text, _TEXT_KEYS, "text")
    output_format = text.get("format")
    if output_format is not None:
        response_format = _response_format(_object(output_format, "text.format"))
        if response_format is not None:
            request["response_format"] = response_format
    verbosity = text.get("verbosity")
    if verbosity is not None:
        if verbosity not in ("low", "medium", "high"):
            raise BadRequest("text.verbosity must be low, medium or high", param="text.verbosity")
        request["verbosity"] = verbosity


def _response_format(output_format: dict) -> dict | None:
    kind = output_format.get("type")
    if kind in ("text", "json_object"):
        _check_keys(output_format, frozenset({"type"}), "text.format")
        return None if kind == "text" else {"type": "json_object"}
    if kind != "json_schema":
        raise BadRequest("text.format.type must be text, json_object or json_schema", param="text.format.type")
    _check_keys(output_format, _JSON_SCHEMA_KEYS, "text.format")
    json_schema: dict = {"name": _required_str(output_format, "name", "text.format"),
                         "schema": _object(output_format.get("schema"), "text.format.schema")}
    description = _optional_str(output_format, "description", "text.format")
    if description is not None:
        json_schema["description"] = description
    strict = output_format.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise BadRequest("text.format.strict must be a boolean", param="text.format.strict")
        json_schema["strict"] = strict
    return {"type": "json_schema", "json_schema": json_schema}


def _add_reasoning(request: dict, reasoning: dict | None) -> None:
    if reasoning is None:
        return
    _check_keys(reasoning, _REASONING_CONFIG_KEYS, "reasoning")
    for key in ("summary", "generate_summary", "context", "mode"):
        _optional_str(reasoning, key, "reasoning")
    effort = _optional_str(reasoning, "effort", "reasoning")
    if effort is not None:
        request["reasoning_effort"] = effort


# --- input ---------------------------------------------------------------------------------------------------------


def _instructions(instructions: str | None) -> list[dict]:
    return [{"role": "system", "content": instructions}] if instructions else []


@dataclass(slots=True)
class _Conversation:
    """The chat messages built so far, the assistant message later calls still join, and thinking blocks waiting
    for the next assistant message."""

    messages: list[dict] = field(default_factory=list)
    open: dict | None = None
    thinking: list[JsonObject] = field(default_factory=list)

    def add(self, message: dict) -> None:
        self.messages.append(message)
        self.open = None
        self.thinking = []

    def add_assistant(self, message: dict) -> dict:
        if self.thinking:
            message["thinking_blocks"] = self.thinking
        self.add(message)
        self.open = message
        return message


def _input_messages(items: str | list | None) -> list[dict]:
    if items is None:
        raise BadRequest("'input' is required", param="input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    conversation = _Conversation()
    for i, item in enumerate(items):
        _add_item(conversation, item, f"input[{i}]")
    if not conversation.messages:
        raise BadRequest("'input' holds nothing a chat model can read", param="input")
    return conversation.messages


def _add_item(conversation: _Conversation, item: object, where: str) -> None:
    item = _object(item, where)
    kind = _item_type(item, where)
    if kind == "message":
        _add_message(conversation, item, where)
    elif kind in _CALLS:
        call = _tool_call(item, kind, where)
        message = conversation.open or conversation.add_assistant({"role": "assistant", "content": None})
        message.setdefault("tool_calls", []).append(call)
    elif kind in _OUTPUTS:
        conversation.add(_tool_message(item, kind, where))
    elif kind == "reasoning":
        _check_keys(item, _REASONING_KEYS, where)
        blocks = decode_thinking(item.get("encrypted_content"))
        if blocks:
            conversation.open = None
            conversation.thinking = conversation.thinking + blocks
    elif kind == "item_reference":
        raise BadRequest(f"{where} refers to item {item.get('id')!r}, which this gateway does not know; send the "
                         "item itself", param=f"{where}.id")
    else:
        raise BadRequest(f"{where}: input item type {kind!r} can't be served by this gateway's translated "
                         "backends (it belongs to a hosted tool or an OpenAI-side feature)", param=f"{where}.type")


def _item_type(item: dict, where: str) -> str:
    kind = item.get("type")
    if kind is None:
        return "message" if "role" in item else "item_reference"
    if not isinstance(kind, str):
        raise BadRequest(f"{where}.type must be a string", param=f"{where}.type")
    return kind


def _add_message(conversation: _Conversation, item: dict, where: str) -> None:
    _check_keys(item, _MESSAGE_KEYS, where)
    role = _role(item.get("role"))
    if role is None:
        raise BadRequest(f"{where}.role must be user, assistant, system or developer", param=f"{where}.role")
    content = item.get("content")
    if not isinstance(content, str | list):
        raise BadRequest(f"{where}.content must be a string or an array of content parts", param=f"{where}.content")
    if role == "assistant":
        conversation.add_assistant(_assistant_message(content, f"{where}.content"))
    elif role == "system":
        conversation.add({"role": "system", "content": _system_content(content, f"{where}.content")})
    else:
        conversation.add({"role": "user", "content": _user_content(content, f"{where}.content")})


def _role(role: object) -> str | None:
    """The chat role of a Responses role: developer messages are system messages."""
    return _ROLES.get(role) if isinstance(role, str) else None


def _part_type(part: object, where: str) -> tuple[dict, str]:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise BadRequest(f"{where} must be an object with a string 'type'", param=where)
    kind = part["type"]
    allowed = _PART_KEYS.get(kind)
    if allowed is None:
        raise BadRequest(f"{where}: content part type {kind!r} is not supported by this gateway",
                         param=f"{where}.type")
    _check_keys(part, allowed, where)
    return part, kind


def _unexpected_part(kind: str, where: str, holder: str) -> BadRequest:
    return BadRequest(f"{where}: a {kind} part can't be in {holder}", param=f"{where}.type")


def _text_part(part: dict, key: str, where: str) -> dict:
    text = part.get(key)
    if not isinstance(text, str):
        raise BadRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return _with_breakpoint({"type": "text", "text": text}, part)


def _with_breakpoint(chat_part: dict, part: dict) -> dict:
    breakpoint_ = part.get("prompt_cache_breakpoint")
    if breakpoint_ is not None:
        chat_part["prompt_cache_breakpoint"] = _object(breakpoint_, "prompt_cache_breakpoint")
    return chat_part


def _user_content(content: str | list, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    parts = []
    for j, raw in enumerate(content):
        here = f"{where}[{j}]"
        part, kind = _part_type(raw, here)
        if kind == "input_text":
            parts.append(_text_part(part, "text", here))
        elif kind == "input_image":
            parts.append(_image_part(part, here))
        elif kind == "input_file":
            parts.append(_file_part(part, here))
        else:
            raise _unexpected_part(kind, here, "a user message")
    return parts


def _system_content(content: str | list, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    parts = []
    for j, raw in enumerate(content):
        here = f"{where}[{j}]"
        part, kind = _part_type(raw, here)
        if kind != "input_text":
            raise _unexpected_part(kind, here, "a system or developer message (text only)")
        parts.append(_text_part(part, "text", here))
    return parts


def _assistant_message(content: str | list, where: str) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if isinstance(content, str):
        return message
    parts, refusals = [], []
    for j, raw in enumerate(content):
        here = f"{where}[{j}]"
        part, kind = _part_type(raw, here)
        if kind in ("output_text", "input_text"):
            parts.append({"type": "text", "text": _text_part(part, "text", here)["text"]})
        elif kind == "refusal":
            refusals.append(_text_part(part, "refusal", here)["text"])
        else:
            raise _unexpected_part(kind, here, "an assistant message (text and refusals only)")
    message["content"] = parts or None
    if refusals:
        message["refusal"] = "".join(refusals)
    return message


def _image_part(part: dict, where: str) -> dict:
    if part.get("file_id") is not None:
        raise BadRequest(f"{where}.file_id: Files API ids can't be read by this gateway's translated backends; send "
                         "the image as image_url (a URL or a base64 data URL)", param=f"{where}.file_id")
    url = _required_str(part, "image_url", where)
    image: dict = {"url": url}
    detail = part.get("detail")
    if detail is not None:
        if detail not in ("auto", "low", "high", "original"):
            raise BadRequest(f"{where}.detail must be auto, low, high or original", param=f"{where}.detail")
        image["detail"] = detail
    return _with_breakpoint({"type": "image_url", "image_url": image}, part)


def _file_part(part: dict, where: str) -> dict:
    for key, instead in (("file_id", "Files API ids"), ("file_url", "file URLs")):
        if part.get(key) is not None:
            raise BadRequest(f"{where}.{key}: {instead} can't be read by this gateway's translated backends; send "
                             "the file's content as file_data (a base64 data URL)", param=f"{where}.{key}")
    data = _required_str(part, "file_data", where)
    filename = _optional_str(part, "filename", where)
    file: dict = {"file_data": _data_url(data, filename, f"{where}.file_data")}
    if filename:
        file["filename"] = filename
    return _with_breakpoint({"type": "file", "file": file}, part)


def _data_url(data: str, filename: str | None, where: str) -> str:
    """`file_data` as a base64 data URL: one already is; bare base64 takes the media type its filename names."""
    if data.startswith("data:"):
        if ";base64," not in data:
            raise BadRequest(f"{where} must be a base64 data URL (data:application/pdf;base64,...)", param=where)
        return data
    media_type = mimetypes.guess_type(filename)[0] if filename else None
    if media_type is None or not _BASE64.fullmatch(data):
        raise BadRequest(f"{where} must be a base64 data URL (data:application/pdf;base64,...), or base64 with a "
                         "filename whose extension names its type", param=where)
    return f"data:{media_type};base64,{data}"


def _check_caller(item: dict, where: str) -> None:
    caller = item.get("caller")
    if caller is not None and caller != {"type": "direct"}:
        raise BadRequest(f"{where}.caller: calls made by programs (programmatic tool calling) can't be served by "
                         "this gateway's translated backends", param=f"{where}.caller")


def _tool_call(item: dict, kind: str, where: str) -> dict:
    _check_keys(item, _FUNCTION_CALL_KEYS if kind == "function_call" else _CUSTOM_CALL_KEYS, where)
    _check_caller(item, where)
    call_id = _required_str(item, "call_id", where)
    name = _required_str(item, "name", where)
    namespace = _optional_str(item, "namespace", where)
    key = "arguments" if kind == "function_call" else "input"
    value = item.get(key)
    if not isinstance(value, str):  # may be empty: a call without arguments, a custom call with empty input
        raise BadRequest(f"{where}.{key} is required and must be a string", param=f"{where}.{key}")
    arguments = value if kind == "function_call" else orjson.dumps({CUSTOM_TOOL_PARAMETER: value}).decode()
    return {"id": call_id, "type": "function",
            "function": {"name": chat_tool_name(name, namespace), "arguments": arguments}}


def _tool_message(item: dict, kind: str, where: str) -> dict:
    _check_keys(item, _FUNCTION_OUTPUT_KEYS if kind == "function_call_output" else _CUSTOM_OUTPUT_KEYS, where)
    _check_caller(item, where)
    call_id = _required_str(item, "call_id", where)
    output = item.get("output")
    content: str | list[dict]
    if isinstance(output, list):
        content = parts = []
        for j, raw in enumerate(output):
            here = f"{where}.output[{j}]"
            part, part_kind = _part_type(raw, here)
            if part_kind != "input_text":
                raise BadRequest(f"{here}: tool outputs can hold text only on this gateway's translated backends "
                                 "(chat tool messages carry text)", param=f"{here}.type")
            parts.append(_text_part(part, "text", here))
    elif isinstance(output, str):
        content = output
    else:
        raise BadRequest(f"{where}.output must be a string or an array of content parts", param=f"{where}.output")
    return {"role": "tool", "tool_call_id": call_id, "content": content or ""}


# --- tools ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tools:
    """The chat tools, and what `tool_choice` may name: chat names left out (and why), namespaces' chat names,
    and the hosted tool types given."""

    chat: list[dict] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, list[str]] = field(default_factory=dict)
    hosted: set[str] = field(default_factory=set)


def _add_tools(request: dict, body: dict) -> None:
    tools = _tools(body.get("tools") or [])
    chat, choice = _tool_choice(body.get("tool_choice"), tools)
    if not chat:
        return
    request["tools"] = chat
    if choice is not None:
        request["tool_choice"] = choice
    if body.get("parallel_tool_calls") is not None:
        request["parallel_tool_calls"] = body["parallel_tool_calls"]


def _tools(tools: list) -> _Tools:
    found = _Tools()
    wheres: dict[str, str] = {}
    for i, raw in enumerate(tools):
        where = f"tools[{i}]"
        tool = _object(raw, where)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"{where}.type must be a string", param=f"{where}.type")
        if kind == "namespace":
            _namespace(tool, where, found, wheres)
        elif kind in ("function", "custom"):
            _add_function(found, _function(tool, kind, where, None), tool, where, wheres)
        else:
            found.hosted.add(kind)
    return found


def _namespace(tool: dict, where: str, found: _Tools, wheres: dict[str, str]) -> None:
    _check_keys(tool, _NAMESPACE_KEYS, where)
    namespace = _required_str(tool, "name", where)
    description = _optional_str(tool, "description", where) or ""
    inner = tool.get("tools")
    if not isinstance(inner, list):
        raise BadRequest(f"{where}.tools must be an array", param=f"{where}.tools")
    found.namespaces[namespace] = []
    for j, raw in enumerate(inner):
        here = f"{where}.tools[{j}]"
        member = _object(raw, here)
        kind = member.get("type")
        if kind not in ("function", "custom"):
            raise BadRequest(f"{here}: a namespace holds function and custom tools only", param=f"{here}.type")
        function = _function(member, kind, here, (namespace, description))
        found.namespaces[namespace].append(function["name"])
        _add_function(found, function, member, here, wheres)


def _add_function(found: _Tools, function: dict, tool: dict, where: str, wheres: dict[str, str]) -> None:
    name = function["name"]
    if name in wheres:
        raise BadRequest(f"{where}: its chat function name {name!r} is also that of {wheres[name]} (a namespace's "
                         f"tools are named <namespace>{NAMESPACE_SEPARATOR}<name>)", param=f"{where}.name")
    wheres[name] = where
    reason = _left_out(tool, where)
    if reason:
        found.left_out[name] = reason
    else:
        found.chat.append({"type": "function", "function": function})


def _left_out(tool: dict, where: str) -> str | None:
    """Why a function or custom tool stays out of the chat request: None when it goes in."""
    deferred = tool.get("defer_loading")
    if deferred not in (None, True, False):
        raise BadRequest(f"{where}.defer_loading must be a boolean", param=f"{where}.defer_loading")
    callers = tool.get("allowed_callers")
    if callers is not None and (not isinstance(callers, list) or not all(isinstance(c, str) for c in callers)):
        raise BadRequest(f"{where}.allowed_callers must be an array of strings", param=f"{where}.allowed_callers")
    if deferred:
        return "it has defer_loading (translated backends have no tool search)"
    if callers is not None and "direct" not in callers:
        return "only programs may call it (allowed_callers), and translated backends have no programmatic calls"
    return None


def _function(tool: dict, kind: str, where: str, namespace: tuple[str, str] | None) -> dict:
    _check_keys(tool, _FUNCTION_TOOL_KEYS if kind == "function" else _CUSTOM_TOOL_KEYS, where)
    name = _required_str(tool, "name", where)
    description = _optional_str(tool, "description", where)
    if namespace is not None:
        name = namespace[0] + NAMESPACE_SEPARATOR + name
        description = "\n\n".join(text for text in (namespace[1], description) if text)
    function: dict = {"name": name}
    if description:
        function["description"] = description
    if kind == "custom":
        grammar = _custom_format(tool.get("format"), where)
        if grammar is not None:  # not enforced, but the model reads it (Codex's apply_patch format is one)
            function["description"] = "\n\n".join(text for text in (description, grammar) if text)
        function["parameters"] = _custom_parameters()
    else:
        _add_parameters(function, tool, where)
    return function


def _add_parameters(function: dict, tool: dict, where: str) -> None:
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"{where}.parameters must be an object (a JSON schema)", param=f"{where}.parameters")
    # No parameters means none, as on OpenAI; every translator reads an explicit empty schema.
    function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise BadRequest(f"{where}.strict must be a boolean", param=f"{where}.strict")
        function["strict"] = strict


def _custom_parameters() -> dict:
    """A new schema per request: translators may change what they are given."""
    return {"type": "object",
            "properties": {CUSTOM_TOOL_PARAMETER: {"type": "string", "description": CUSTOM_INPUT_DESCRIPTION}},
            "required": [CUSTOM_TOOL_PARAMETER], "additionalProperties": False}


CUSTOM_INPUT_DESCRIPTION = ("The tool's whole input, as the text the tool's description asks for (this JSON object "
                            "only carries it).")
"""Said to the model: a free-form tool's description asks for raw text ("do not wrap the patch in JSON"), which a
translated backend's model must nonetheless put in this one string."""


def _custom_format(output_format: object, where: str) -> str | None:
    """Checked; free text needs nothing, and no translated backend can enforce a grammar: its text goes into the
    tool's description instead (returned here), so the model at least knows the format expected."""
    if output_format is None:
        return None
    here = f"{where}.format"
    checked = _object(output_format, here)
    kind = checked.get("type")
    if kind == "grammar":
        _check_keys(checked, frozenset({"type", "syntax", "definition"}), here)
        definition = _required_str(checked, "definition", here)
        syntax = checked.get("syntax")
        return (f"The input must follow this {syntax if isinstance(syntax, str) else ''} grammar:\n{definition}"
                .replace("this  grammar", "this grammar"))
    if kind == "text":
        _check_keys(checked, frozenset({"type"}), here)
        return None
    raise BadRequest(f"{here}.type must be text or grammar", param=f"{here}.type")


def _tool_choice(choice: str | dict | None, tools: _Tools) -> tuple[list[dict], str | dict | None]:
    """(the chat tools, the chat tool_choice); `allowed_tools` filters the tools."""
    if choice is None or choice in ("auto", "none"):
        return tools.chat, choice
    if choice == "required":
        if not tools.chat:
            raise BadRequest("tool_choice 'required' needs a function or custom tool in 'tools' on this gateway's "
                             "translated backends, which don't have hosted tools", param="tool_choice")
        return tools.chat, choice
    if isinstance(choice, str):
        raise BadRequest(f"tool_choice must be one of {', '.join(_TOOL_CHOICES)} or an object", param="tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        _check_keys(choice, frozenset({"type", "name"}), "tool_choice")
        name = _required_str(choice, "name", "tool_choice")
        _chosen(name, tools, "tool_choice.name")
        return tools.chat, {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        return _allowed_tools(choice, tools)
    raise BadRequest(f"tool_choice forces the hosted tool {kind!r}, which translated backends don't have",
                     param="tool_choice")


def _chosen(name: str, tools: _Tools, where: str) -> None:
    if name in tools.left_out:
        raise BadRequest(f"{where} names {name!r}, which is left out: {tools.left_out[name]}", param=where)
    if not any(tool["function"]["name"] == name for tool in tools.chat):
        raise BadRequest(f"{where} names {name!r}, which is not a function or custom tool in 'tools'", param=where)


def _allowed_tools(choice: dict, tools: _Tools) -> tuple[list[dict], str | None]:
    _check_keys(choice, frozenset({"type", "mode", "tools"}), "tool_choice")
    mode = choice.get("mode")
    if mode not in ("auto", "required"):
        raise BadRequest("tool_choice.mode must be auto or required", param="tool_choice.mode")
    listed = choice.get("tools")
    if not isinstance(listed, list):
        raise BadRequest("tool_choice.tools must be an array", param="tool_choice.tools")
    names: set[str] = set()
    for k, raw in enumerate(listed):
        names |= _allowed_names(_object(raw, f"tool_choice.tools[{k}]"), tools, f"tool_choice.tools[{k}]")
    chat = [tool for tool in tools.chat if tool["function"]["name"] in names]
    if not chat and mode == "required":
        raise BadRequest("tool_choice requires a tool, and every allowed tool is a hosted one, which translated "
                         "backends don't have", param="tool_choice.tools")
    return chat, mode


def _allowed_names(entry: dict, tools: _Tools, where: str) -> set[str]:
    kind = entry.get("type")
    if kind == "namespace":
        namespace = _required_str(entry, "name", where)
        if namespace not in tools.namespaces:
            raise BadRequest(f"{where} names namespace {namespace!r}, which is not in 'tools'", param=f"{where}.name")
        return set(tools.namespaces[namespace])
    if kind not in ("function", "custom"):
        return set()  # a hosted tool: left out anyway
    name = chat_tool_name(_required_str(entry, "name", where),
                          _optional_str(entry, "namespace", where))
    _chosen(name, tools, f"{where}.name")
    return {name}


# --- dropped settings ----------------------------------------------------------------------------------------------


def _all_tools(tools: list) -> list[dict]:
    """Every tool object, those inside namespaces included (after the namespace itself)."""
    found = []
    for tool in tools:
        if isinstance(tool, dict):
            found.append(tool)
            inner = tool.get("tools") if tool.get("type") == "namespace" else None
            found += [member for member in inner if isinstance(member, dict)] if isinstance(inner, list) else []
    return found


def _tool_drops(tool: dict) -> list[str]:
    kind = tool.get("type")
    if kind == "namespace":
        return []
    if kind not in ("function", "custom"):
        return [f"tools[].{kind}"]
    drops = []
    if tool.get("defer_loading"):
        drops.append("tools[].defer_loading")
    callers = tool.get("allowed_callers")
    if isinstance(callers, list) and "direct" not in callers:
        drops.append("tools[].allowed_callers")
    for key in ("output_schema", "async"):
        if tool.get(key):
            drops.append(f"tools[].{key}")
    output_format = tool.get("format")
    if isinstance(output_format, dict) and output_format.get("type") == "grammar":
        drops.append("tools[].format")
    return drops


def _file_details(items: object) -> bool:
    """Whether an input file part asks for a detail level, which the chat `file` part has no field for."""
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "input_file" and part.get("detail") not in (
                    None, "auto"):
                return True
    return False


# --- rough form ----------------------------------------------------------------------------------------------------

_NOT_READ = frozenset({"id", "type", "status", "call_id", "role", "encrypted_content", "image_url", "file_data",
                       "file_id", "file_url", "detail", "phase", "caller", "approval_request_id", "result"})
"""Keys whose strings the model doesn't read as text (ids, markers, binary data): left out of the rough form."""


def rough_form(body: dict) -> dict:
    """A chat form of any body, for estimating tokens only: every item's text as a message (images as image parts),
    the tools as given, the output limit. Never raises."""
    body = body if isinstance(body, dict) else {}
    messages: list[dict] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    for item in items if isinstance(items, list) else ():
        messages.append(_rough_message(item))
    form: dict = {"model": body.get("model") if isinstance(body.get("model"), str) else "",
                  "messages": messages or [{"role": "user", "content": ""}]}
    tools = _rough_tools(body.get("tools"))
    if tools:
        form["tools"] = tools
    if _is_int(body.get("max_output_tokens")) and body["max_output_tokens"] > 0:
        form["max_completion_tokens"] = body["max_output_tokens"]
    return form


def _rough_tools(tools: object) -> list[dict]:
    """Function and custom tools (namespaced ones included, deferred ones not) as chat tools: the definitions the
    model reads."""
    found = []
    for tool in _all_tools(tools if isinstance(tools, list) else []):
        if tool.get("type") in ("function", "custom") and isinstance(tool.get("name"), str) and not tool.get(
                "defer_loading"):
            grammar = tool.get("format") if tool.get("type") == "custom" else None
            described = [tool.get("description"), grammar.get("definition") if isinstance(grammar, dict) else None]
            function = {"name": tool["name"], "description": _texts([text for text in described if text]),
                        "parameters": (tool.get("parameters") if isinstance(tool.get("parameters"), dict)
                                       else _custom_parameters() if tool.get("type") == "custom" else {})}
            found.append({"type": "function", "function": function})
    return found


def _rough_message(item: object) -> dict:
    if not isinstance(item, dict):
        return {"role": "user", "content": _texts(item)}
    role = _role(item.get("role"))
    if item.get("type") in (*_CALLS, "reasoning"):
        role = "assistant"
    content = item.get("content")
    images = [{"type": "image_url", "image_url": {"url": ""}} for part in content if isinstance(part, dict)
              and part.get("type") == "input_image"] if isinstance(content, list) else []
    texts = _texts(item)
    if item.get("type") == "reasoning":
        texts += _texts(decode_thinking(item.get("encrypted_content")))
    return {"role": role or "user", "content": [{"type": "text", "text": texts}, *images] if images else texts}


def _texts(value: object) -> str:
    """The strings a model would read in `value`, joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text for text in (_texts(item) for item in value) if text)
    if isinstance(value, dict):
        return "\n".join(text for text in (_texts(item) for key, item in value.items() if key not in _NOT_READ)
                         if text)
    return ""
