"""The fake Cohere provider: `POST /v2/chat` (JSON, or the v2 SSE event stream) and `POST /v2/embed`.

Follows the shared script in `answers.py` (greeting, tool reply, stop/max-token cutting, tool arguments from the
tool's JSON schema, parallel tool count); embeddings come from the fake OpenAI provider's deterministic vectors.
Requests are checked like Cohere checks them (unknown fields, roles, tool choice values, p/k/penalty ranges) and
refused in Cohere's error format, `{"id", "message"}`. Auth is `Authorization: Bearer <key>`.

With `thinking: {"type": "enabled"}` the answer opens with a thinking block, as Cohere's reasoning models do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

import orjson

from ext_proc.demo import openai_server
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
    text_of,
    tool_input,
    tool_reply,
    verbose_text,
    words,
)
from ext_proc.json_types import JsonObject

KIND = "cohere"
MAX_EMBED_TEXTS = 96
PROMPT_TEMPLATE_TOKENS = 100
"""What Cohere's own prompt template adds to `usage.tokens.input_tokens` (not billed)."""

_CHAT_FIELDS = frozenset({
    "model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format", "safety_mode",
    "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty", "presence_penalty", "k", "p",
    "logprobs", "tool_choice", "thinking", "priority", "stream",
})
_EMBED_FIELDS = frozenset({"model", "input_type", "texts", "images", "inputs", "max_tokens", "output_dimension",
                           "embedding_types", "truncate", "priority"})
_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering", "image"})
_EMBEDDING_TYPES = {"float": "float", "base64": "base64"}
_FINISH = {"end": "COMPLETE", "stop": "STOP_SEQUENCE", "length": "MAX_TOKENS"}


def answer(call: Call) -> Reply:
    route = _ROUTES.get(call.path)
    if route is None:
        return error(404, f"path {call.path} not found")
    if call.method != "POST":
        return error(405, f"method {call.method} not allowed on {call.path}")
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return error(401, "no api key supplied")
    if call.api_key is not None and token != call.api_key:
        return error(401, "invalid api token")
    try:
        return route(call)
    except Rejected as exc:
        return error(exc.status, exc.message)


def error(status: int, message: str) -> Reply:
    """An answer in Cohere's error format."""
    return Reply(status, orjson.dumps({"id": new_id(""), "message": message}))


# --- chat ----------------------------------------------------------------------------------------------------------


def _chat(call: Call) -> Reply:
    body = _body(call, _CHAT_FIELDS)
    model = _model(body)
    messages = _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if choice is not None and (choice not in ("REQUIRED", "NONE") or not tools):
        raise Rejected("invalid request: tool_choice must be REQUIRED or NONE, and requires tools")
    _check_options(body)
    last = messages[-1]
    calls = _tool_calls(call, tools) if last["role"] == "user" and tools and choice != "NONE" else []
    thinking = body.get("thinking")
    reasoning = (f"The user said something; I will answer as {call.name}."
                 if isinstance(thinking, dict) and thinking.get("type") == "enabled" else "")
    if calls:
        done = None
        output_tokens = estimate_tokens([arguments for _, _, arguments in calls])
    else:
        response_format = body.get("response_format")
        if not isinstance(response_format, dict) or response_format.get("type") != "json_object":
            response_format = None
        said = (verbose_text(body.get("max_tokens")) if call.verbose
                else tool_reply(call.name, model, text_of(last.get("content"))) if last["role"] == "tool"
                else structured_answer(response_format.get("json_schema") or {"type": "object"}) if response_format
                else greeting(call.name, model, _last_user_text(messages)))
        done = complete(said, body.get("stop_sequences") or [], body.get("max_tokens"))
        output_tokens = done.tokens
    billed_in = estimate_tokens(messages, body.get("tools"))
    usage = {"billed_units": {"input_tokens": billed_in, "output_tokens": output_tokens},
             "tokens": {"input_tokens": billed_in + PROMPT_TEMPLATE_TOKENS, "output_tokens": output_tokens}}
    finish = "TOOL_CALL" if calls else _FINISH[done.reason] if done else "COMPLETE"
    answer_id = new_id("")
    plan = f"I will call {', '.join(sorted({name for _, name, _ in calls}))}." if calls else ""
    if body.get("stream") is True:
        return Reply(200, events=_events(answer_id, reasoning, done.text if done else "", plan, calls, finish, usage))
    message: dict[str, object] = {"role": "assistant"}
    if calls:
        message["tool_plan"] = plan
        message["tool_calls"] = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                                 for call_id, name, args in calls]
    else:
        content = [{"type": "thinking", "thinking": reasoning}] if reasoning else []
        message["content"] = [*content, {"type": "text", "text": done.text if done else ""}]
    return Reply(200, orjson.dumps({"id": answer_id, "message": message, "finish_reason": finish, "usage": usage}))


def _events(answer_id: str, reasoning: str, text: str, plan: str, calls: list[tuple[str, str, str]], finish: str,
            usage: JsonObject) -> tuple[bytes, ...]:
    """Cohere's v2 stream: message-start, content or tool-plan/tool-call events, message-end, then `[DONE]`."""
    start = {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
    events = [_event("message-start", {"id": answer_id, "delta": {"message": start}})]
    blocks = [("thinking", reasoning)] if reasoning else []
    if not calls:
        blocks.append(("text", text))
    for index, (kind, value) in enumerate(blocks):
        events.append(_event("content-start", {"index": index, "delta": {"message": {"content": {
            "type": kind, kind: ""}}}}))
        events += [_event("content-delta", {"index": index, "delta": {"message": {"content": {kind: piece}}}})
                   for piece in words(value)]
        events.append(_event("content-end", {"index": index}))
    if calls:
        events += [_event("tool-plan-delta", {"delta": {"message": {"tool_plan": piece}}}) for piece in words(plan)]
    for index, (call_id, name, arguments) in enumerate(calls):
        started = {"id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        events.append(_event("tool-call-start", {"index": index, "delta": {"message": {"tool_calls": started}}}))
        events += [_event("tool-call-delta", {"index": index, "delta": {"message": {"tool_calls": {
            "function": {"arguments": piece}}}}}) for piece in fragments(arguments)]
        events.append(_event("tool-call-end", {"index": index}))
    events.append(_event("message-end", {"delta": {"finish_reason": finish, "usage": usage}}))
    events.append(b"data: [DONE]\n\n")
    return tuple(events)


def _event(kind: str, data: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _tool_calls(call: Call, tools: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    """(id, name, arguments JSON) of each call: the tools in order, as many as `x-demo-parallel-tools` asks."""
    count = parallel_tool_count(call.headers)
    picked = [tools[index % len(tools)] for index in range(count)]
    return [(f"{tool['name']}_{new_id('')[:12]}", str(tool["name"]),
             orjson.dumps(tool_input(tool.get("parameters"))).decode()) for tool in picked]


def _messages(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list) or not value:
        raise Rejected("invalid request: messages must not be empty")
    for index, message in enumerate(value):
        role = message.get("role") if isinstance(message, dict) else None
        where = f"invalid request: messages[{index}]"
        if role not in ("system", "user", "assistant", "tool"):
            raise Rejected(f"{where}: role must be one of system, user, assistant, tool")
        content = message.get("content")
        if role == "user":
            _check_user_content(content, where)
        elif role == "system" and not (isinstance(content, str) or _text_items(content)):
            raise Rejected(f"{where}: system content must be a string or text items")
        elif role == "assistant" and not (content or message.get("tool_calls")):
            raise Rejected(f"{where}: an assistant message needs content or tool_calls")
        elif role == "tool" and (not isinstance(message.get("tool_call_id"), str)
                                 or not isinstance(content, str | list)):
            raise Rejected(f"{where}: a tool message needs a tool_call_id and content")
    return value


def _check_user_content(content: object, where: str) -> None:
    if isinstance(content, str):
        if not content:
            raise Rejected(f"{where}: message content must not be empty")
        return
    if not isinstance(content, list) or not content:
        raise Rejected(f"{where}: user content must be a string or a non-empty list")
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text" and isinstance(item.get("text"), str):
            continue
        image = item.get("image_url") if kind == "image_url" else None
        if isinstance(image, dict) and isinstance(image.get("url"), str):
            continue
        raise Rejected(f"{where}: content items must be text or image_url")


def _text_items(content: object) -> bool:
    return isinstance(content, list) and all(isinstance(item, dict) and item.get("type") == "text"
                                             and isinstance(item.get("text"), str) for item in content)


def _tools(value: object) -> list[dict[str, object]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Rejected("invalid request: tools must be a list")
    functions = []
    for index, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (tool.get("type", "function") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not isinstance(function.get("parameters"), dict)):
            raise Rejected(f"invalid request: tools[{index}] must be a function with a name and parameters")
        functions.append(function)
    return functions


def _check_options(body: dict[str, object]) -> None:
    checks: dict[str, Callable[[object], bool]] = {
        "max_tokens": lambda v: _is_int(v) and v >= 1,
        "stop_sequences": lambda v: isinstance(v, list) and len(v) <= 5 and all(isinstance(s, str) for s in v),
        "temperature": lambda v: _is_number(v) and v >= 0,
        "p": lambda v: _is_number(v) and 0.01 <= v <= 0.99,
        "k": lambda v: _is_int(v) and 0 <= v <= 500,
        "frequency_penalty": lambda v: _is_number(v) and 0 <= v <= 1,
        "presence_penalty": lambda v: _is_number(v) and 0 <= v <= 1,
        "seed": _is_int,
        "response_format": lambda v: isinstance(v, dict) and v.get("type") in ("text", "json_object"),
        "thinking": lambda v: isinstance(v, dict) and v.get("type") in ("enabled", "disabled")
        and (v.get("token_budget") is None or (_is_int(v["token_budget"]) and v["token_budget"] > 0)),
    }
    for field, valid in checks.items():
        if body.get(field) is not None and not valid(body[field]):
            raise Rejected(f"invalid request: invalid value for {field}")


def _last_user_text(messages: list[dict[str, object]]) -> str:
    texts = (text_of(message.get("content")) for message in reversed(messages) if message["role"] == "user")
    return next(texts, "")


# --- embed ---------------------------------------------------------------------------------------------------------


def _embed(call: Call) -> Reply:
    body = _body(call, _EMBED_FIELDS)
    model = _model(body)
    if body.get("input_type") not in _INPUT_TYPES:
        raise Rejected("invalid request: valid input_type must be provided with the provided model")
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or len(texts) > MAX_EMBED_TEXTS \
            or not all(isinstance(text, str) and text for text in texts):
        raise Rejected(f"invalid request: texts must hold 1 to {MAX_EMBED_TEXTS} non-empty strings")
    kinds = body.get("embedding_types") or ["float"]
    if not isinstance(kinds, list) or not all(kind in _EMBEDDING_TYPES for kind in kinds):
        raise Rejected(f"invalid request: embedding_types must be among {sorted(_EMBEDDING_TYPES)} here")
    embeddings: dict[str, object] = {}
    for kind in kinds:
        request: JsonObject = {"model": model, "input": texts, "encoding_format": _EMBEDDING_TYPES[kind]}
        if body.get("output_dimension") is not None:
            request["dimensions"] = body["output_dimension"]
        reply = openai_server.answer(Call(call.name, "POST", "/v1/embeddings", {}, request, None))
        if reply.status != 200:
            raise Rejected("invalid request: " + orjson.loads(reply.body)["error"]["message"])
        embeddings[kind] = [item["embedding"] for item in orjson.loads(reply.body)["data"]]
    tokens = sum(estimate_tokens(text) for text in texts)
    return Reply(200, orjson.dumps({
        "id": new_id(""), "texts": texts, "embeddings": embeddings, "response_type": "embeddings_by_type",
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
    }))


# --- shared --------------------------------------------------------------------------------------------------------


def _body(call: Call, known: frozenset[str]) -> JsonObject:
    if call.body is NOT_JSON or not isinstance(call.body, dict):
        raise Rejected("invalid request: the body must be a JSON object")
    unknown = sorted(set(call.body) - known)
    if unknown:
        raise Rejected(f"invalid request: unknown field: {unknown[0]}")
    return call.body


def _model(body: dict[str, object]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected("invalid request: model must be specified")
    return model


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


_ROUTES: dict[str, Callable[[Call], Reply]] = {"/v2/chat": _chat, "/v2/embed": _embed}
