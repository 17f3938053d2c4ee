"""The fake Anthropic provider: `POST /v1/messages`, answered as a `Message` or as the Messages SSE event stream, and
`POST /v1/messages/count_tokens` (`{"input_tokens": N}`, the same count a Message's usage reports; as on the real
API, `max_tokens` and `stream` are extra inputs there).

Pure functions from a `Call` to a `Reply`; the HTTP server, faults and request recording live in `server.py`. Claude
on Bedrock (InvokeModel) and on Vertex (rawPredict) are answered by this module too, so they keep the same rules.

The rules of the real API that clients trip over are enforced, with the real messages:

- with thinking on (`thinking: {type: enabled | adaptive}`), answers start with a `thinking` block signed by this
  server (an HMAC of its text; streamed as `thinking_delta`s and a `signature_delta`), and the assistant turn whose
  tool calls the last user turn answers must start with a thinking or redacted_thinking block, else 400, and a
  tool_choice that forces a tool is refused;
- a replayed thinking block must carry the signature this server gave it, else 400;
- `output_config.format` (structured output) is answered with JSON that fits the schema.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import TypeGuard

import orjson

from ext_proc.demo.answers import (
    NOT_JSON,
    Call,
    Rejected,
    Reply,
    complete,
    contains_key,
    estimate_tokens,
    fragments,
    greeting,
    new_id,
    parallel_tool_count,
    structured_answer,
    text_of,
    tool_input,
    tool_reply,
    verbose_text,
    words,
)
from ext_proc.json_types import JsonObject

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"end": "end_turn", "stop": "stop_sequence", "length": "max_tokens"}
_BLOCK_TYPES = {
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result",
}
_TOOL_CHOICES = {"auto", "any", "tool", "none"}


KIND = "anthropic"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

_SIGNING_KEY = b"babelgate demo thinking"
_THINKING_RULE = (
    "messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When `thinking` "
    "is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of "
    "`tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid this "
    "requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")


def thinking_signature(thinking: str) -> str:
    """The signature this fake gives a thinking block: an HMAC of its text, so a replayed block can be checked."""
    return base64.b64encode(hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()).decode()


def answer(call: Call) -> Reply:
    if call.path not in ("/v1/messages", COUNT_TOKENS_PATH):
        return error(404, f"Not found: {call.method} {call.path}")
    if call.method != "POST":
        return error(405, f"Method {call.method} not allowed on {call.path}")
    key = _api_key(call.headers)
    if not key or (call.api_key is not None and key != call.api_key):
        return error(401, "invalid x-api-key")
    if not call.headers.get("anthropic-version"):
        return error(400, "anthropic-version: header is required")
    try:
        if call.path == COUNT_TOKENS_PATH:
            return Reply(200, orjson.dumps({"input_tokens": count_tokens(call.body)}))
        return _messages(call)
    except Rejected as exc:
        return error(exc.status, exc.message)


def count_tokens(body: object) -> int:
    """A count_tokens body's prompt tokens, as `_messages` would report them (Bedrock and Vertex count with this
    too). Raises `Rejected` as the real endpoint refuses."""
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("The request body is not valid JSON.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Rejected("model: Field required")
    for extra in ("max_tokens", "stream"):
        if extra in body:
            raise Rejected(f"{extra}: Extra inputs are not permitted")
    messages = _checked_messages(body.get("messages"))
    _check_system(body.get("system"))
    usage = _input_usage(body, messages)
    return usage["input_tokens"] + usage["cache_read_input_tokens"]


def error(status: int, message: str) -> Reply:
    """An answer in Anthropic's error format; a 429 also tells the client to retry after a second."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    request_id = new_id("req_")
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id})
    headers = (("request-id", request_id),) + ((("retry-after", "1"),) if status == 429 else ())
    return Reply(status, body, None, headers)


def _messages(call: Call) -> Reply:
    body = call.body
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("The request body is not valid JSON.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected("model: Field required")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise Rejected("max_tokens: Field required, an integer of at least 1")
    messages = _checked_messages(body.get("messages"))
    _check_system(body.get("system"))
    stops = _stop_sequences(body.get("stop_sequences"))
    thinking_on = _thinking_on(body.get("thinking"), max_tokens)
    _check_signatures(messages)
    if thinking_on:
        _check_tool_turn_starts_with_thinking(messages)
        if isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") in ("any", "tool"):
            raise Rejected("Thinking may not be enabled when tool_choice forces tool use.")
    answer_schema = _answer_schema(body.get("output_config"))
    last = messages[-1]
    results = _tool_results(last)
    uses = _tool_uses(call, body) if last["role"] == "user" and not results and answer_schema is None else []
    # `verbose`: thinking spends its whole budget (half of `max_tokens` when adaptive), the text the rest
    thought = ("" if not thinking_on else _verbose_thought(body["thinking"], max_tokens) if call.verbose
               else _thought(uses))
    thought_tokens = len(words(thought)) if call.verbose else estimate_tokens(thought) if thought else 0
    if uses:
        done = None
        content: list[dict[str, object]] = uses
        output_tokens = estimate_tokens([use["input"] for use in uses])
    else:
        said = tool_reply(call.name, model, results) if results else greeting(call.name, model, _user_text(messages))
        if answer_schema is not None:
            said = structured_answer(answer_schema, call.off_schema)
        elif call.verbose:
            said = verbose_text(max_tokens - thought_tokens)
        done = complete(said, stops, max_tokens - thought_tokens if call.verbose else max_tokens)
        content = [{"type": "text", "text": done.text}]
        output_tokens = done.tokens
    if thinking_on:
        content = [{"type": "thinking", "thinking": thought, "signature": thinking_signature(thought)}, *content]
        output_tokens += thought_tokens
    message: JsonObject = {
        "id": new_id("msg_"), "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": "tool_use" if done is None else _STOP_REASONS[done.reason],
        "stop_sequence": None if done is None else done.stop_sequence,
        "usage": {**_input_usage(body, messages), "output_tokens": output_tokens},
    }
    if body.get("stream") is True:
        return Reply(200, events=_events(message))
    return Reply(200, orjson.dumps(message))


def _events(message: JsonObject) -> tuple[bytes, ...]:
    """The Messages event sequence; text arrives word by word, tool input as several `input_json_delta`s."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    events = [_event("message_start", {"message": {**start, "usage": {**usage, "output_tokens": 1}}})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            first: JsonObject = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in words(block["text"])]
        elif block["type"] == "thinking":
            first = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in words(block["thinking"])]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        else:
            first = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": piece}
                      for piece in fragments(orjson.dumps(block["input"]).decode())]
        events.append(_event("content_block_start", {"index": index, "content_block": first}))
        if index == 0:
            events.append(_event("ping", {}))
        events += [_event("content_block_delta", {"index": index, "delta": delta}) for delta in deltas]
        events.append(_event("content_block_stop", {"index": index}))
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    events.append(_event("message_delta", {"delta": stop, "usage": usage}))
    events.append(_event("message_stop", {}))
    return tuple(events)


def _thinking_on(thinking: object, max_tokens: int) -> bool:
    if thinking is None:
        return False
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive", "disabled"):
        raise Rejected("thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'")
    kind = thinking["type"]
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not _is_int(budget) or budget < 1024:
            raise Rejected("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= max_tokens:
            raise Rejected("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                           "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking")
    return kind != "disabled"


def _check_signatures(messages: list[dict[str, object]]) -> None:
    """Every replayed thinking block must carry the signature this server gave its text."""
    for index, message in enumerate(messages):
        content = message["content"]
        if message["role"] != "assistant" or not isinstance(content, list):
            continue
        for position, block in enumerate(content):
            if block.get("type") != "thinking":
                continue
            thinking, signature = block.get("thinking"), block.get("signature")
            if not isinstance(thinking, str) or not isinstance(signature, str) \
                    or not hmac.compare_digest(signature, thinking_signature(thinking)):
                raise Rejected(f"messages.{index}.content.{position}: Invalid `signature` in `thinking` block")


def _check_tool_turn_starts_with_thinking(messages: list[dict[str, object]]) -> None:
    """With thinking on, the assistant turn whose tool calls the last user turn answers must start with thinking."""
    if len(messages) < 2 or not _tool_results(messages[-1]) or messages[-2]["role"] != "assistant":
        return
    content = messages[-2]["content"]
    first = content[0] if isinstance(content, list) and content else None
    found = first.get("type") if isinstance(first, dict) else "text"
    if found not in ("thinking", "redacted_thinking"):
        raise Rejected(_THINKING_RULE.format(index=len(messages) - 2, found=found))


def _answer_schema(output_config: object) -> dict[str, object] | None:
    """The JSON schema of `output_config.format`, which the answer must fit; None without one."""
    if output_config is None:
        return None
    if not isinstance(output_config, dict):
        raise Rejected("output_config: Input should be a valid dictionary")
    effort = output_config.get("effort")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        raise Rejected("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    fmt = output_config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise Rejected("output_config.format: Input should be {type: json_schema, schema: {...}}")
    schema: dict[str, object] = fmt["schema"]
    return schema


def _verbose_thought(thinking: dict[str, object], max_tokens: int) -> str:
    budget = thinking.get("budget_tokens")
    spent = budget if thinking.get("type") == "enabled" and _is_int(budget) else max_tokens // 2
    return complete(verbose_text(spent), [], spent).text


def _thought(uses: list[dict[str, object]]) -> str:
    if uses:
        return f"The user wants something only a tool can tell: calling {uses[0]['name']}."
    return "I can answer this directly."


def _tool_uses(call: Call, body: dict[str, object]) -> list[dict[str, object]]:
    """The tool_use blocks the fake answers with: the forced tool if named, else the first client tool."""
    tools = _client_tools(body.get("tools"))
    choice = body.get("tool_choice") or {"type": "auto"}
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise Rejected(f"tool_choice.type: Input should be one of {sorted(_TOOL_CHOICES)}")
    if not tools or choice["type"] == "none":
        return []
    chosen = tools
    if choice["type"] == "tool":
        chosen = [tool for tool in tools if tool["name"] == choice.get("name")]
        if not chosen:
            raise Rejected(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
    count = 1 if choice.get("disable_parallel_tool_use") is True else parallel_tool_count(call.headers)
    picked = [chosen[index % len(chosen)] for index in range(count)]
    return [
        {"type": "tool_use", "id": new_id("toolu_"), "name": tool["name"], "input": tool_input(tool["input_schema"])}
        for tool in picked
    ]


def _client_tools(value: object) -> list[dict[str, object]]:
    """Tools the client defines (with an `input_schema`); server tools (typed, e.g. web search) are never called."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Rejected("tools: Input should be a valid list")
    tools = []
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise Rejected(f"tools.{index}.name: Field required")
        if tool.get("type", "custom") == "custom":
            if not isinstance(tool.get("input_schema"), dict):
                raise Rejected(f"tools.{index}.custom.input_schema: Field required")
            tools.append(tool)
    return tools


def _checked_messages(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list) or not value:
        raise Rejected("messages: at least one message is required")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise Rejected(f"messages.{index}.role: Input should be 'user' or 'assistant' "
                           "(system prompts go in the top-level system field)")
        content = message.get("content")
        if isinstance(content, list):
            _check_blocks(content, f"messages.{index}.content")
        elif not isinstance(content, str):
            raise Rejected(f"messages.{index}.content: Input should be a valid string or list of content blocks")
    return value


def _check_blocks(blocks: list[object], where: str) -> None:
    for index, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
            raise Rejected(f"{where}.{index}.type: Input should be one of {sorted(_BLOCK_TYPES)}")
        kind = block["type"]
        required = {"text": ("text", str), "tool_use": ("name", str), "tool_result": ("tool_use_id", str),
                    "image": ("source", dict), "document": ("source", dict)}.get(kind)
        if required and not isinstance(block.get(required[0]), required[1]):
            raise Rejected(f"{where}.{index}.{kind}.{required[0]}: Field required")
        if kind == "tool_use" and not isinstance(block.get("input"), dict):
            raise Rejected(f"{where}.{index}.tool_use.input: Input should be a valid dictionary")


def _check_system(value: object) -> None:
    if isinstance(value, list):
        for index, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise Rejected(f"system.{index}: Input should be a text block")
    elif value is not None and not isinstance(value, str):
        raise Rejected("system: Input should be a valid string or list of text blocks")


def _stop_sequences(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(stop, str) and stop for stop in value):
        raise Rejected("stop_sequences: Input should be a list of non-empty strings")
    return value


def _tool_results(message: dict[str, object]) -> str:
    """The text of the tool results in a user message, "" when there are none."""
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return ""
    results = [block for block in content if block.get("type") == "tool_result"]
    return " ".join(text_of(block.get("content")) or "(empty)" for block in results)


def _user_text(messages: list[dict[str, object]]) -> str:
    return next((text_of(message["content"]) for message in reversed(messages) if message["role"] == "user"), "")


def _input_usage(body: dict[str, object], messages: list[dict[str, object]]) -> dict[str, int]:
    """Input token counts; with any `cache_control` about half the prompt counts as read from the cache."""
    total = estimate_tokens(body.get("system"), messages, body.get("tools"))
    cached = max(1, total // 2) if contains_key(body, "cache_control") else 0
    return {
        "input_tokens": max(1, total - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _api_key(headers: Mapping[str, str]) -> str | None:
    """The key from `x-api-key`, or from `authorization: Bearer` (how the 2.x SDK sends an api_key)."""
    key = headers.get("x-api-key")
    if key is None and headers.get("authorization", "").startswith("Bearer "):
        key = headers["authorization"].removeprefix("Bearer ")
    return key


def _event(kind: str, data: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
