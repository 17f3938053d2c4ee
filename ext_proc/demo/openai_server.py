"""The fake OpenAI provider: `POST /v1/chat/completions` (JSON or SSE), `POST /v1/responses` (JSON or typed SSE
events, in `responses_api.py`), `POST /v1/embeddings`, `GET /v1/models`.

Pure functions from a `Call` to a `Reply`; the HTTP server, faults and request recording live in `server.py`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import Callable
from typing import TypeGuard

import orjson

from ext_proc.demo import responses_api
from ext_proc.demo.answers import (
    NOT_JSON,
    Call,
    Completion,
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
from ext_proc.demo.faults import FAULT_HEADER, FaultSpecError, parse_faults
from ext_proc.errors import error_body

MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 4096
MAX_EMBEDDING_INPUTS = 2048
WORDS_MODEL_MARK = "words"
"""A model whose name holds this embeds text as a bag of hashed words: similar texts get similar vectors (what a
semantic cache needs to be tested), where other models' vectors are a hash of the whole input."""
WORDS_DIMENSIONS = 256
_WORD = re.compile(r"[a-z0-9]+")
MAX_CHOICES = 128
"""OpenAI's most for `n`."""

_MODELS_CREATED = 1_700_000_000
_FINGERPRINT = "fp_demo"
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


KIND = "openai"


def answer(call: Call) -> Reply:
    route = _route(call.path)
    if route is None:
        return error(404, f"Invalid URL ({call.method} {call.path})")
    methods, handle = route
    if call.method not in methods:
        return error(405, f"Method {call.method} not allowed on {call.path}; use {' or '.join(methods)}")
    if call.api_key is not None and call.headers.get("authorization") != f"Bearer {call.api_key}":
        return error(401, "Incorrect API key provided.", code="invalid_api_key")
    if _echo_key(call):
        presented = call.headers.get("authorization", "").removeprefix("Bearer ")
        return error(401, f"Incorrect API key provided: {presented}. You can find your API key at "
                          "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
    try:
        return handle(call)
    except Rejected as exc:
        return error(exc.status, exc.message, param=exc.param, code=exc.code)


def error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Reply:
    """An answer in OpenAI's error format; a 429 also tells the client to retry after a second."""
    if status == 429:
        return Reply(status, error_body(message, "requests", code or "rate_limit_exceeded", param), None,
                     (("retry-after", "1"),))
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return Reply(status, error_body(message, kind, code, param))


def _echo_key(call: Call) -> bool:
    """The request's `echo-key` fault: a careless provider quoting the key it refused (see `faults.py`)."""
    try:
        return parse_faults(call.headers.get(FAULT_HEADER), call.name).echo_key
    except FaultSpecError:
        return False


def _chat_completions(call: Call) -> Reply:
    body = _body(call)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Rejected("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    _check_messages(messages)
    max_tokens = _max_tokens(body)
    choices = _choices(body.get("n"))
    stops = _stops(body.get("stop"))
    tools = _function_tools(body.get("tools"))
    last = messages[-1]
    calls = _tool_calls(call, body, tools) if last.get("role") == "user" else []
    if calls:
        done = None
        completion_tokens = estimate_tokens([arguments for _, _, arguments in calls])
    else:
        schema = _answer_schema(body.get("response_format"))
        said = (structured_answer(schema, call.off_schema) if schema is not None and last.get("role") != "tool"
                else verbose_text(max_tokens) if call.verbose else _answer_text(call.name, model, messages))
        done = complete(said, stops, max_tokens)
        completion_tokens = done.tokens
    prompt_tokens = estimate_tokens(messages, body.get("tools"))
    usage = _usage(prompt_tokens, completion_tokens * choices)  # every choice is generated
    finish = "tool_calls" if calls else "length" if done and done.reason == "length" else "stop"
    head = {"id": new_id("chatcmpl-"), "created": int(time.time()), "model": model}
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return Reply(200, events=_chunks(head, done, calls, finish, usage if include_usage else None, choices))
    return Reply(200, _completion(head, done, calls, finish, usage, choices))


def _completion(
    head: dict[str, object], done: Completion | None, calls: list[tuple[str, str, str]], finish: str,
    usage: dict[str, object], choices: int,
) -> bytes:
    """`choices` alike choices (the request's `n`): the fake's answers are a function of the request."""
    message: dict[str, object] = {
        "role": "assistant", "content": done.text if done else None, "refusal": None, "annotations": [],
    }
    if calls:
        message["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in calls
        ]
    return orjson.dumps({
        **head, "object": "chat.completion",
        "choices": [{"index": index, "message": message, "logprobs": None, "finish_reason": finish}
                    for index in range(choices)],
        "usage": usage, "service_tier": "default", "system_fingerprint": _FINGERPRINT,
    })


def _chunks(
    head: dict[str, object], done: Completion | None, calls: list[tuple[str, str, str]], finish: str,
    usage: dict[str, object] | None, choices: int,
) -> tuple[bytes, ...]:
    """The chunk stream: for each choice in turn, role, then word-sized content or tool calls (id and name first,
    arguments in fragments), then its finish reason; the usage of all of them last."""
    base = {**head, "object": "chat.completion.chunk", "service_tier": "default", "system_fingerprint": _FINGERPRINT}
    if usage is not None:
        base["usage"] = None
    events = [event for index in range(choices) for event in _choice_chunks(base, index, done, calls, finish)]
    if usage is not None:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return tuple(events)


def _choice_chunks(base: dict[str, object], choice_index: int, done: Completion | None,
                   calls: list[tuple[str, str, str]], finish: str) -> list[bytes]:
    def chunk(delta: dict[str, object], finish_reason: str | None = None) -> bytes:
        choice = {"index": choice_index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": "" if done else None, "refusal": None})]
    if done:
        events += [chunk({"content": piece}) for piece in words(done.text)]
    for index, (call_id, name, arguments) in enumerate(calls):
        events.append(chunk({"tool_calls": [{
            "index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""},
        }]}))
        events += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                   for piece in fragments(arguments)]
    events.append(chunk({}, finish))
    return events


def _tool_calls(call: Call, body: dict[str, object], tools: list[dict[str, object]]) -> list[tuple[str, str, str]]:
    """(id, name, arguments JSON) of each tool the fake decides to call: the forced one if named, else the first."""
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none" or choice is None:
        return []
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        chosen = [tool for tool in tools if tool["name"] == name]
        if not chosen:
            raise Rejected(f"tool_choice names a function that is not in tools: {name!r}", param="tool_choice")
    elif choice in ("auto", "required"):
        chosen = tools
    else:
        raise Rejected(f"Invalid value for 'tool_choice': {choice!r}", param="tool_choice")
    count = parallel_tool_count(call.headers) if body.get("parallel_tool_calls") is not False else 1
    picked = [chosen[index % len(chosen)] for index in range(count)]
    return [(new_id("call_"), str(tool["name"]), orjson.dumps(tool_input(tool.get("parameters"))).decode())
            for tool in picked]


def _embeddings(call: Call) -> Reply:
    body = _body(call)
    model = _model(body)
    inputs = _embedding_inputs(body.get("input"))
    words_model = WORDS_MODEL_MARK in model
    dimensions = body.get("dimensions", WORDS_DIMENSIONS if words_model else EMBEDDING_DIMENSIONS)
    if not _is_int(dimensions) or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise Rejected(f"'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}", param="dimensions")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise Rejected("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector = _words_vector(item, dimensions) if words_model and isinstance(item, str) else _vector(item, dimensions)
        encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if encoding == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(item) if isinstance(item, list) else estimate_tokens(item) for item in inputs)
    return Reply(200, orjson.dumps({
        "object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))


def _embedding_inputs(value: object) -> list[str | list[int]]:
    """The inputs as a list: one string, a list of strings, one token array, or a list of token arrays."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(_is_int(item) for item in value)):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise Rejected("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if not items or len(items) > MAX_EMBEDDING_INPUTS:
        raise Rejected(f"'input' must hold 1 to {MAX_EMBEDDING_INPUTS} items", param="input")
    checked: list[str | list[int]] = []
    for item in items:
        if not ((isinstance(item, str) and item)
                or (isinstance(item, list) and item and all(_is_int(token) for token in item))):
            raise Rejected("'input' items must be non-empty strings or token arrays", param="input")
        checked.append(item)
    return checked


def _vector(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector derived from a hash of the input, rounded to float32 so float and base64 answers agree."""
    seed = orjson.dumps(item)
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw += [value / 2**31 - 1.0 for value in struct.unpack("<8I", digest)]
        counter += 1
    norm = math.sqrt(sum(value * value for value in raw[:dimensions])) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in raw[:dimensions]))))


def _words_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector counting the text's lowercase words, each hashed to one dimension and a sign."""
    raw = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        raw[int.from_bytes(digest[:4], "little") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in raw))
    if not norm:
        return _vector(text, dimensions)
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in raw))))


def _models(call: Call) -> Reply:
    data = [{"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": call.name} for model in MODELS]
    return Reply(200, orjson.dumps({"object": "list", "data": data}))


def _body(call: Call) -> dict[str, object]:
    if call.body is NOT_JSON or not isinstance(call.body, dict):
        raise Rejected("We could not parse the JSON body of your request. The body must be a JSON object.")
    return call.body


def _model(body: dict[str, object]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    return model


def _check_messages(messages: list[object]) -> None:
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise Rejected(f"Invalid message at messages[{index}]: needs a role of {sorted(_ROLES)}",
                           param=f"messages.[{index}].role")
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise Rejected(f"Missing required parameter: 'messages.[{index}].tool_call_id'.",
                           param=f"messages.[{index}].tool_call_id", code="missing_required_parameter")


def _answer_schema(response_format: object) -> object | None:
    """What a structured answer must fit: the json_schema's schema, or any object for json_object; None for text."""
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(spec, dict):
        return spec.get("schema") or {"type": "object"}
    return None


def _answer_text(name: str, model: str, messages: list[dict[str, object]]) -> str:
    """Mention the tool result when the conversation ends with one, else echo the last user text."""
    last = messages[-1]
    if last.get("role") == "tool":
        return tool_reply(name, model, text_of(last.get("content")))
    user_texts = (text_of(message.get("content")) for message in reversed(messages) if message.get("role") == "user")
    return greeting(name, model, next(user_texts, ""))


def _max_tokens(body: dict[str, object]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise Rejected(f"Invalid '{key}': must be an integer of at least 1.", param=key)
        return value
    return None


def _choices(value: object) -> int:
    if value is None:
        return 1
    if not _is_int(value) or not 1 <= value <= MAX_CHOICES:
        raise Rejected(f"Invalid 'n': must be an integer from 1 to {MAX_CHOICES}.", param="n")
    return value


def _stops(value: object) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(stop, str) and stop for stop in stops):
        raise Rejected("Invalid 'stop': a string or a list of up to 4 non-empty strings.", param="stop")
    return stops


def _function_tools(value: object) -> list[dict[str, object]]:
    """The `function` objects of function tools; other tool types are accepted and never called."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Rejected("Invalid 'tools': expected an array.", param="tools")
    functions = []
    for index, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Rejected(f"Missing required parameter: 'tools[{index}].function.name'.",
                           param=f"tools[{index}].function.name", code="missing_required_parameter")
        functions.append(function)
    return functions


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


def _sse(data: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _route(path: str) -> tuple[tuple[str, ...], Callable[[Call], Reply]] | None:
    """(allowed methods, handler) of `path`; a stored response's paths are all one handler (the demo keeps none)."""
    route = _ROUTES.get(path)
    if route is None and path.startswith(_RESPONSES_PREFIX) and path != _RESPONSES_PREFIX:
        return ("POST",) if path.endswith("/cancel") else ("GET", "DELETE"), responses_api.stored
    return route


_RESPONSES_PREFIX = "/v1/responses/"
_ROUTES: dict[str, tuple[tuple[str, ...], Callable[[Call], Reply]]] = {
    "/v1/chat/completions": (("POST",), _chat_completions),
    "/v1/responses": (("POST",), responses_api.create),
    "/v1/embeddings": (("POST",), _embeddings),
    "/v1/models": (("GET",), _models),
}
