"""The fake OpenAI Responses API: `POST /v1/responses` (a JSON `response`, or the typed SSE event stream), shared by
the fake OpenAI provider (`openai_server`) and the fake Azure OpenAI provider (`azure_server`, `/openai/responses`).

The script is the chat endpoint's (`answers.py`): a request whose input ends with a user message and that offers
function-like tools (function, custom, or either inside a namespace) gets a call of the first one (arguments sampled
from its schema; a custom tool's input is `"demo"`); one ending with a tool's output gets `tool_reply`; a
`text.format` of json_schema / json_object gets `structured_answer`; anything else gets `greeting`. Hosted tools
(web_search, file_search, mcp, ...) are accepted and never called. Tokens are counted as for chat.

Decisions worth knowing before changing this file:

- The demo stores nothing. `store` is accepted (and echoed), but `previous_response_id`, `conversation`, `prompt`,
  `item_reference` items and `GET`/`DELETE /v1/responses/{id}` are 404s, as OpenAI answers for an id it does not
  hold, and `background: true` is refused (the client would poll a response that is never kept).
- Reasoning. With `reasoning.effort` set (and not "none") the output opens with a reasoning item: a summary when
  `reasoning.summary` is set, and `encrypted_content` when `include` has `reasoning.encrypted_content`. That content
  is `demo-enc:` + random text; a reasoning item handed back whose `encrypted_content` lacks the prefix is refused
  like OpenAI refuses content it did not encrypt (400 `invalid_encrypted_content`), which is what a gateway leaking
  another backend's reasoning (or its own `bgw1.` envelope) to an OpenAI backend would get.
- Reasoning costs a fixed number of tokens per effort, spent before the answer: `max_output_tokens` (at least 16, as
  OpenAI requires) first pays for them, then cuts the text; a cut answer is `status: incomplete` with reason
  `max_output_tokens`, and an answer left with no text at all has no message item, as OpenAI's.
- Unknown top-level fields are refused (`unknown_parameter`), as OpenAI does: a gateway field leaking through shows.
- A `function_call_output` (or `custom_tool_call_output`) needs its call earlier in the input, as OpenAI requires
  when there is no previous response to find it in.
- The stream is derived from the finished response (the same ids and text), so the JSON and streamed answers of a
  request differ only in ids and timestamps.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from ext_proc.demo.answers import (
    NOT_JSON,
    Call,
    Rejected,
    Reply,
    complete,
    estimate_tokens,
    fragments,
    greeting,
    new_id,
    parallel_tool_count,
    structured_answer,
    tool_input,
    tool_reply,
    verbose_text,
    words,
)

ENCRYPTED_PREFIX = "demo-enc:"
"""How the demo's own reasoning `encrypted_content` starts (and how it recognises it when handed back)."""
MIN_OUTPUT_TOKENS = 16
CUSTOM_TOOL_INPUT = "demo"
EFFORT_TOKENS = {"minimal": 4, "low": 8, "medium": 16, "high": 32, "xhigh": 64, "max": 128}
"""Reasoning tokens each `reasoning.effort` spends."""

_FIELDS = frozenset({
    "access_programs", "background", "background_options", "context_management", "conversation", "image", "include",
    "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation",
    "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream", "stream_options",
    "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
    "client_metadata",
})
"""Every top-level field of a create-response request (openai SDK `ResponseCreateParams`), and `client_metadata`,
which OpenAI accepts from Codex (string tags about the client) though the SDK's types don't declare it."""
_HOSTED_TOOLS = frozenset({
    "file_search", "computer", "computer_use_preview", "web_search", "web_search_2025_08_26", "web_search_preview",
    "web_search_preview_2025_03_11", "mcp", "code_interpreter", "programmatic_tool_calling", "image_generation",
    "local_shell", "shell", "tool_search", "apply_patch",
})
_HOSTED_CHOICES = frozenset({
    "file_search", "web_search_preview", "web_search_preview_2025_03_11", "computer", "computer_use_preview",
    "computer_use", "image_generation", "code_interpreter", "mcp", "apply_patch", "shell", "programmatic_tool_calling",
})
"""`tool_choice` types that force a hosted tool (the SDK's `ToolChoiceTypes` and its siblings)."""
_PASSIVE_ITEMS = frozenset({
    "file_search_call", "computer_call", "computer_call_output", "web_search_call", "tool_search_call",
    "tool_search_output", "additional_tools", "configuration_update", "compaction", "compaction_trigger",
    "image_generation_call", "code_interpreter_call", "local_shell_call", "local_shell_call_output", "shell_call",
    "shell_call_output", "apply_patch_call", "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request",
    "mcp_approval_response", "mcp_call", "program", "program_output",
})
"""Input item types the demo accepts and reads nothing from (the tools that make them are never called)."""
_INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
})
_ROLES = ("user", "assistant", "system", "developer")
_INPUT_PARTS = ("input_text", "input_image", "input_file")
_ASSISTANT_PARTS = ("output_text", "refusal")
_SUMMARIES = ("auto", "concise", "detailed")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_OUTPUTS = {"function_call_output": ("function_call", "function call output"),
                 "custom_tool_call_output": ("custom_tool_call", "custom tool call output")}


class _Tool(NamedTuple):
    """A tool the demo can call: `function` or `custom`, maybe inside a namespace."""

    kind: str
    name: str
    namespace: str | None
    parameters: object


@dataclass(frozen=True, slots=True)
class _Request:
    """A create-response request after the checks."""

    body: dict[str, Any]
    model: str
    items: list[dict[str, Any]]
    tools: list[_Tool]
    schema: object | None
    max_output_tokens: int | None
    effort: str | None
    summary: str | None
    encrypted: bool
    stream: bool


def create(call: Call) -> Reply:
    """`POST /v1/responses`."""
    request = _request(call)
    output, output_tokens, reason = _output(call, request)
    input_tokens = estimate_tokens(request.body.get("instructions"), request.items, request.body.get("tools"))
    usage = _usage(input_tokens, output_tokens, EFFORT_TOKENS.get(request.effort or "", 0))
    response = _response(request, output, usage, reason)
    if request.stream:
        return Reply(200, events=_events(response))
    return Reply(200, orjson.dumps(response))


def stored(call: Call) -> Reply:
    """`GET`/`DELETE /v1/responses/{id}` and its sub-resources: the demo keeps no response."""
    response_id = call.path.removeprefix("/v1/responses/").split("/")[0]
    raise Rejected(f"Response with id '{response_id}' not found.", status=404)


def _request(call: Call) -> _Request:
    body = call.body
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("We could not parse the JSON body of your request. The body must be a JSON object.")
    for key in body:
        if key not in _FIELDS:
            raise Rejected(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    _refuse_stored(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    effort, summary = _reasoning(body.get("reasoning"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong_type("stream", "a boolean", stream)
    return _Request(body, model, _input_items(body.get("input")), _tools(body.get("tools")),
                    _answer_schema(body.get("text")), _max_output_tokens(body.get("max_output_tokens")), effort,
                    summary, "reasoning.encrypted_content" in _include(body.get("include")), stream is True)


def _refuse_stored(body: dict[str, Any]) -> None:
    """Whatever refers to something OpenAI would have stored: the demo has none of it."""
    previous = body.get("previous_response_id")
    if previous is not None:
        raise Rejected(f"Previous response with id '{previous}' not found.", status=404,
                       param="previous_response_id", code="previous_response_not_found")
    for field in ("conversation", "prompt"):
        value = body.get(field)
        if value is not None:
            named = value.get("id") if isinstance(value, dict) else value
            raise Rejected(f"{field.capitalize()} with id '{named}' not found.", status=404, param=field)
    if body.get("background") is True:
        raise Rejected("The demo provider stores no responses, so it runs none in the background.",
                       param="background")


def _wrong_type(where: str, expected: str, value: object) -> Rejected:
    return Rejected(f"Invalid type for '{where}': expected {expected}, but got {_json_type(value)} instead.",
                    param=where, code="invalid_type")


def _invalid_value(where: str, value: object, supported: tuple[str, ...] | frozenset[str]) -> Rejected:
    listed = ", ".join(repr(item) for item in sorted(supported))
    return Rejected(f"Invalid value: {value!r}. Supported values are: {listed}.", param=where, code="invalid_value")


def _missing(where: str) -> Rejected:
    return Rejected(f"Missing required parameter: '{where}'.", param=where, code="missing_required_parameter")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), "a value")


def _string(item: dict[str, Any], key: str, where: str) -> str:
    """`item[key]`, which must be a string."""
    value = item.get(key)
    if value is None:
        raise _missing(f"{where}.{key}")
    if not isinstance(value, str):
        raise _wrong_type(f"{where}.{key}", "a string", value)
    return value


# --- input items -------------------------------------------------------------------------------------------------

def _input_items(value: object) -> list[dict[str, Any]]:
    """The input as a list of items (a string is one user message), each checked."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise _wrong_type("input", "one of a string or array of input items", value)
    for index, item in enumerate(value):
        _check_item(item, f"input[{index}]")
    _check_outputs_follow_calls(value)
    return value


def _check_item(item: object, where: str) -> None:
    if not isinstance(item, dict):
        raise _wrong_type(where, "an object", item)
    kind = item.get("type", "message" if "role" in item else None)
    check = _ITEM_CHECKS.get(kind) if isinstance(kind, str) else None
    if check is not None:
        check(item, where)
    elif kind == "item_reference":
        raise Rejected(f"Item with id '{item.get('id')}' not found.", status=404, param=where)
    elif kind is None:
        raise _missing(f"{where}.type")
    elif kind not in _PASSIVE_ITEMS:
        raise _invalid_value(f"{where}.type", kind, frozenset({*_ITEM_CHECKS, *_PASSIVE_ITEMS, "item_reference"}))


def _check_message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role not in _ROLES:
        raise _invalid_value(f"{where}.role", role, _ROLES) if role is not None else _missing(f"{where}.role")
    content = item.get("content")
    if content is None:
        raise _missing(f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong_type(f"{where}.content", "one of a string or array of content parts", content)
    allowed = _ASSISTANT_PARTS if role == "assistant" else _INPUT_PARTS
    for index, part in enumerate(content):
        _check_part(part, f"{where}.content[{index}]", allowed)


def _check_part(part: object, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(part, dict):
        raise _wrong_type(where, "an object", part)
    kind = part.get("type")
    if kind not in allowed:
        raise _invalid_value(f"{where}.type", kind, allowed) if kind is not None else _missing(f"{where}.type")
    if kind in ("input_text", "output_text"):
        _string(part, "text", where)
    elif kind == "refusal":
        _string(part, "refusal", where)
    elif kind == "input_image" and not any(isinstance(part.get(key), str) for key in ("image_url", "file_id")):
        raise _missing(f"{where}.image_url")
    elif kind == "input_file" and not any(isinstance(part.get(key), str)
                                          for key in ("file_id", "file_data", "file_url")):
        raise _missing(f"{where}.file_id")


def _check_call(item: dict[str, Any], where: str) -> None:
    _string(item, "call_id", where)
    _string(item, "name", where)
    _string(item, "input" if item.get("type") == "custom_tool_call" else "arguments", where)


def _check_call_output(item: dict[str, Any], where: str) -> None:
    _string(item, "call_id", where)
    output = item.get("output")
    if output is None:
        raise _missing(f"{where}.output")
    if isinstance(output, list):
        for index, part in enumerate(output):
            _check_part(part, f"{where}.output[{index}]", _INPUT_PARTS)
    elif not isinstance(output, str):
        raise _wrong_type(f"{where}.output", "one of a string or array of content parts", output)


def _check_reasoning(item: dict[str, Any], where: str) -> None:
    summary = item.get("summary")
    if summary is None:
        raise _missing(f"{where}.summary")
    if not isinstance(summary, list):
        raise _wrong_type(f"{where}.summary", "an array", summary)
    for index, part in enumerate(summary):
        if not isinstance(part, dict) or part.get("type") != "summary_text" or not isinstance(part.get("text"), str):
            raise Rejected(f"Invalid '{where}.summary[{index}]': expected a summary_text part with text.",
                           param=f"{where}.summary[{index}]")
    encrypted = item.get("encrypted_content")
    if encrypted is not None and not (isinstance(encrypted, str) and encrypted.startswith(ENCRYPTED_PREFIX)):
        raise Rejected(f"The encrypted content for item {item.get('id') or where} could not be verified.",
                       param=f"{where}.encrypted_content", code="invalid_encrypted_content")


_ITEM_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "message": _check_message,
    "function_call": _check_call,
    "custom_tool_call": _check_call,
    "function_call_output": _check_call_output,
    "custom_tool_call_output": _check_call_output,
    "reasoning": _check_reasoning,
}


def _check_outputs_follow_calls(items: list[dict[str, Any]]) -> None:
    """A tool output needs its call earlier in the input (there is no stored response to find it in)."""
    calls: set[tuple[str, str]] = set()
    for item in items:
        kind = item.get("type")
        if kind in ("function_call", "custom_tool_call"):
            calls.add((kind, item["call_id"]))
        elif kind in _TOOL_OUTPUTS:
            call_kind, wording = _TOOL_OUTPUTS[kind]
            if (call_kind, item["call_id"]) not in calls:
                raise Rejected(f"No tool call found for {wording} with call_id {item['call_id']}.", param="input")


# --- tools and the other options -----------------------------------------------------------------------------------

def _tools(value: object) -> list[_Tool]:
    """The tools the demo may call, in order; hosted tools are checked by type only and never called."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type("tools", "an array", value)
    tools: list[_Tool] = []
    for index, tool in enumerate(value):
        tools += _tool(tool, f"tools[{index}]", None)
    return tools


def _tool(tool: object, where: str, namespace: str | None) -> list[_Tool]:
    if not isinstance(tool, dict):
        raise _wrong_type(where, "an object", tool)
    kind = tool.get("type")
    if kind in ("function", "custom"):
        return [_Tool(kind, _tool_name(tool, where), namespace, tool.get("parameters"))]
    if kind == "namespace" and namespace is None:
        name = _tool_name(tool, where)
        inner = tool.get("tools")
        if not isinstance(inner, list) or not inner:
            raise _missing(f"{where}.tools") if inner is None else _wrong_type(f"{where}.tools", "an array", inner)
        return [found for index, each in enumerate(inner) for found in _tool(each, f"{where}.tools[{index}]", name)]
    if kind in _HOSTED_TOOLS and namespace is None:
        return []
    if kind is None:
        raise _missing(f"{where}.type")
    allowed = ("function", "custom") if namespace else ("function", "custom", "namespace", *_HOSTED_TOOLS)
    raise _invalid_value(f"{where}.type", kind, allowed)


def _tool_name(tool: dict[str, Any], where: str) -> str:
    name = _string(tool, "name", where)
    if not _TOOL_NAME.fullmatch(name):
        raise Rejected(f"Invalid '{where}.name': string does not match pattern. Expected a string that matches the "
                       "pattern '^[a-zA-Z0-9_-]+$' of at most 64 characters.", param=f"{where}.name",
                       code="invalid_value")
    return name


def _answer_schema(text: object) -> object | None:
    """What a structured answer must fit (`text.format`): the json_schema's schema, any object for json_object."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _wrong_type("text", "an object", text)
    verbosity = text.get("verbosity")
    if verbosity is not None and verbosity not in ("low", "medium", "high"):
        raise _invalid_value("text.verbosity", verbosity, ("low", "medium", "high"))
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        raise _wrong_type("text.format", "an object", form)
    kind = form.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise _invalid_value("text.format.type", kind, ("text", "json_object", "json_schema"))
    _string(form, "name", "text.format")
    schema = form.get("schema")
    if not isinstance(schema, dict):
        raise _missing("text.format.schema") if schema is None else _wrong_type("text.format.schema", "an object",
                                                                                schema)
    return schema


def _max_output_tokens(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type("max_output_tokens", "an integer", value)
    if value < MIN_OUTPUT_TOKENS:
        raise Rejected(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                       f"{MIN_OUTPUT_TOKENS}, but got {value} instead.", param="max_output_tokens",
                       code="integer_below_min_value")
    return value


def _reasoning(value: object) -> tuple[str | None, str | None]:
    """(effort, summary) of `reasoning`; effort None when there is no reasoning ("none" included)."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise _wrong_type("reasoning", "an object", value)
    effort = value.get("effort")
    if effort is not None and effort != "none" and effort not in EFFORT_TOKENS:
        raise _invalid_value("reasoning.effort", effort, ("none", *EFFORT_TOKENS))
    summary = value.get("summary", value.get("generate_summary"))
    if summary is not None and summary not in _SUMMARIES:
        raise _invalid_value("reasoning.summary", summary, _SUMMARIES)
    return (effort if effort != "none" else None), summary


def _include(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong_type("include", "an array", value)
    for index, item in enumerate(value):
        if item not in _INCLUDABLE:
            raise _invalid_value(f"include[{index}]", item, _INCLUDABLE)
    return value


# --- the answer ------------------------------------------------------------------------------------------------------

def _output(call: Call, request: _Request) -> tuple[list[dict[str, Any]], int, str | None]:
    """(output items, output tokens, incomplete reason or None)."""
    reasoning_tokens = EFFORT_TOKENS.get(request.effort or "", 0)
    last = request.items[-1] if request.items else {}
    calls = _calls(call, request) if _is_user_message(last) else []
    if calls:
        plan = f"call the {calls[0]['name']} tool"
        tokens = estimate_tokens([item.get("arguments", item.get("input")) for item in calls])
        output, reason = calls, None
    else:
        plan, said = _answer_text(call.name, request, last)
        budget = None if request.max_output_tokens is None else max(0, request.max_output_tokens - reasoning_tokens)
        done = complete(verbose_text(budget) if call.verbose else said, [], budget)
        reason = "max_output_tokens" if done.reason == "length" else None
        output = [_message_item(done.text, reason)] if done.text or reason is None else []
        tokens = done.tokens
    if request.effort is not None:
        output = [_reasoning_item(call.name, plan, request), *output]
    return output, tokens + reasoning_tokens, reason


def _is_user_message(item: dict[str, Any]) -> bool:
    return item.get("type", "message") == "message" and item.get("role") == "user"


def _answer_text(name: str, request: _Request, last: dict[str, Any]) -> tuple[str, str]:
    """(what the reasoning says it will do, the text): the tool result, a structured answer, or a greeting."""
    if last.get("type") in _TOOL_OUTPUTS:
        return "report what the tool returned", tool_reply(name, request.model, _text(last.get("output")))
    if request.schema is not None:
        return "answer in the requested JSON format", structured_answer(request.schema)
    said = next((_text(item.get("content")) for item in reversed(request.items) if _is_user_message(item)), "")
    return "greet the user and repeat what they said", greeting(name, request.model, said)


def _text(content: object) -> str:
    """The text of a message content or tool output: a string, or its text parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part["text"] for part in content
                        if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"))
    return ""


def _calls(call: Call, request: _Request) -> list[dict[str, Any]]:
    """The tool call items: of the forced tool if `tool_choice` names one, else of the first callable tool."""
    chosen = _chosen(request.tools, request.body.get("tool_choice"))
    if not chosen:
        return []
    count = parallel_tool_count(call.headers) if request.body.get("parallel_tool_calls") is not False else 1
    return [_call_item(chosen[index % len(chosen)]) for index in range(count)]


def _chosen(tools: list[_Tool], choice: object) -> list[_Tool]:
    if choice is None or choice in ("auto", "required"):
        return tools
    if choice == "none":
        return []
    if not isinstance(choice, dict):
        raise _invalid_value("tool_choice", choice, ("none", "auto", "required"))
    kind = choice.get("type")
    if kind in ("function", "custom"):
        chosen = [tool for tool in tools if tool.kind == kind and tool.name == choice.get("name")]
        if not chosen:
            raise Rejected(f"Tool choice '{choice.get('name')}' not found in 'tools' parameter.", param="tool_choice")
        return chosen
    if kind == "allowed_tools":
        return _allowed(tools, choice)
    if kind in _HOSTED_CHOICES:
        return []  # a hosted tool is never called: the demo answers in text
    raise _invalid_value("tool_choice.type", kind, ("function", "custom", "allowed_tools", *_HOSTED_CHOICES))


def _allowed(tools: list[_Tool], choice: dict[str, Any]) -> list[_Tool]:
    mode = choice.get("mode")
    if mode not in ("auto", "required"):
        raise _invalid_value("tool_choice.mode", mode, ("auto", "required"))
    listed = choice.get("tools")
    if not isinstance(listed, list):
        raise _wrong_type("tool_choice.tools", "an array", listed)
    names = {(entry.get("type"), entry.get("name")) for entry in listed if isinstance(entry, dict)}
    return [tool for tool in tools if (tool.kind, tool.name) in names]


def _call_item(tool: _Tool) -> dict[str, Any]:
    if tool.kind == "custom":
        item: dict[str, Any] = {"id": new_id("ctc_"), "type": "custom_tool_call", "call_id": new_id("call_"),
                                "name": tool.name, "input": CUSTOM_TOOL_INPUT}
    else:
        item = {"id": new_id("fc_"), "type": "function_call", "status": "completed",
                "arguments": orjson.dumps(tool_input(tool.parameters)).decode(), "call_id": new_id("call_"),
                "name": tool.name}
    if tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


def _message_item(text: str, incomplete: str | None) -> dict[str, Any]:
    return {"id": new_id("msg_"), "type": "message", "status": "incomplete" if incomplete else "completed",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
            "role": "assistant"}


def _reasoning_item(name: str, plan: str, request: _Request) -> dict[str, Any]:
    item: dict[str, Any] = {"id": new_id("rs_"), "type": "reasoning", "summary": []}
    if request.summary is not None:
        text = f"**Planning the reply**\n\nThe user wrote to {name} ({request.model}); I will {plan}."
        item["summary"] = [{"type": "summary_text", "text": text}]
    if request.encrypted:
        item["encrypted_content"] = ENCRYPTED_PREFIX + base64.b64encode(secrets.token_bytes(48)).decode()
    return item


def _usage(input_tokens: int, output_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _response(request: _Request, output: list[dict[str, Any]], usage: dict[str, Any],
              incomplete: str | None) -> dict[str, Any]:
    body = request.body
    now = int(time.time())
    text = body["text"] if isinstance(body.get("text"), dict) else {}
    reasoning = {"effort": (body.get("reasoning") or {}).get("effort"), "summary": request.summary}
    return {
        "id": new_id("resp_"), "object": "response", "created_at": now,
        "status": "incomplete" if incomplete else "completed", "background": False,
        "completed_at": None if incomplete else now, "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"), "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": body.get("max_tool_calls"), "model": request.model, "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False, "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"), "reasoning": reasoning,
        "safety_identifier": body.get("safety_identifier"), "service_tier": "default",
        "store": body.get("store") is not False, "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium", **text},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [_echoed_tool(tool) for tool in body.get("tools") or ()],
        "top_logprobs": body.get("top_logprobs") or 0, "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled", "usage": usage, "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _echoed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as OpenAI echoes it: a function tool with its defaults filled in."""
    if tool.get("type") == "function":
        return {"description": None, "parameters": None, "strict": True, **tool}
    return tool


# --- the stream ------------------------------------------------------------------------------------------------------

def _events(response: dict[str, Any]) -> tuple[bytes, ...]:
    """The typed event stream of a finished response: lifecycle events around each output item's own events."""
    opening = {**response, "status": "in_progress", "completed_at": None, "incomplete_details": None, "output": [],
               "usage": None}
    events: list[tuple[str, dict[str, Any]]] = [("response.created", {"response": opening}),
                                                ("response.in_progress", {"response": opening})]
    for index, item in enumerate(response["output"]):
        events.append(("response.output_item.added", {"output_index": index, "item": _opened(item)}))
        events += _ITEM_EVENTS[item["type"]]({"item_id": item["id"], "output_index": index}, item)
        events.append(("response.output_item.done", {"output_index": index, "item": item}))
    terminal = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    events.append((terminal, {"response": response}))
    return tuple(_sse(name, {"type": name, **data, "sequence_number": number})
                 for number, (name, data) in enumerate(events))


def _opened(item: dict[str, Any]) -> dict[str, Any]:
    """An output item as `output_item.added` shows it: nothing generated yet."""
    kind = item["type"]
    if kind == "reasoning":
        return {"id": item["id"], "type": "reasoning", "summary": []}
    if kind == "message":
        return {**item, "status": "in_progress", "content": []}
    if kind == "function_call":
        return {**item, "status": "in_progress", "arguments": ""}
    return {**item, "input": ""}


def _reasoning_events(at: dict[str, Any], item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    for index, part in enumerate(item["summary"]):
        where = {**at, "summary_index": index}
        events.append(("response.reasoning_summary_part.added", {**where, "part": {**part, "text": ""}}))
        events += [("response.reasoning_summary_text.delta", {**where, "delta": piece})
                   for piece in words(part["text"])]
        events.append(("response.reasoning_summary_text.done", {**where, "text": part["text"]}))
        events.append(("response.reasoning_summary_part.done", {**where, "part": part}))
    return events


def _message_events(at: dict[str, Any], item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    for index, part in enumerate(item["content"]):
        where = {**at, "content_index": index}
        events.append(("response.content_part.added", {**where, "part": {**part, "text": ""}}))
        events += [("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
                   for piece in words(part["text"])]
        events.append(("response.output_text.done", {**where, "text": part["text"], "logprobs": []}))
        events.append(("response.content_part.done", {**where, "part": part}))
    return events


def _function_call_events(at: dict[str, Any], item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    deltas = [("response.function_call_arguments.delta", {**at, "delta": piece})
              for piece in fragments(item["arguments"])]
    return [*deltas, ("response.function_call_arguments.done", {**at, "arguments": item["arguments"]})]


def _custom_call_events(at: dict[str, Any], item: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    deltas = [("response.custom_tool_call_input.delta", {**at, "delta": piece}) for piece in fragments(item["input"])]
    return [*deltas, ("response.custom_tool_call_input.done", {**at, "input": item["input"]})]


_ITEM_EVENTS: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[tuple[str, dict[str, Any]]]]] = {
    "reasoning": _reasoning_events,
    "message": _message_events,
    "function_call": _function_call_events,
    "custom_tool_call": _custom_call_events,
}


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
