"""OpenAI chat completions <-> Cohere Chat v2 (`POST /v2/chat`, bearer key) and embeddings <-> `POST /v2/embed`.

Every top-level field of an OpenAI chat request is listed in `FIELDS` with what this translator does with it, and a
field that is not listed is refused. For a `refused` field the values in `_HARMLESS` (OpenAI's own defaults, such as
`n: 1`) mean "not asked for" and are accepted. Wire facts come from the `cohere` SDK (7.x) types used by
`client.v2.chat` / `chat_stream` / `embed` and from docs.cohere.com (streaming, tool use, structured outputs).

Things worth knowing before changing this file:

- System and developer messages are joined into one leading `system` message (Cohere wants the system turn first).
- Cohere refuses a message with empty content, so an empty user message (or empty text parts) and an empty
  assistant turn are left out: they say nothing. A conversation with nothing left is refused. `reasoning_content`
  and `thinking_blocks` on past assistant messages are left out too (`common.DROPPED_ASSISTANT_FIELDS`).
- `file` parts (PDFs and other documents) are refused: Cohere's chat reads text and images only, and its `documents`
  field takes text snippets for grounded answers with citations, a different request from "read this file".
- `tool_choice` takes only `REQUIRED` and `NONE` on Cohere. A named function (or OpenAI's `allowed_tools`) is kept
  by sending only the named tools with `REQUIRED`: the model must call one of them and can call no other, which is
  what the client asked for. Cohere has no way to forbid parallel calls, so `parallel_tool_calls: false` is refused.
- An assistant turn that calls tools carries its text as Cohere's `tool_plan`, and a `tool_plan` in an answer (or a
  `tool-plan-delta` in a stream) comes back as the assistant's `content`, so a tool loop round-trips unchanged.
- `top_p` becomes `p`, which Cohere accepts from 0.01 to 0.99: values outside are clamped (1.0, OpenAI's "off", is
  as close to off as Cohere allows). Penalties are 0..1 on Cohere and -2..2 on OpenAI: values above 1 are clamped,
  negative ones (which ask for *more* repetition) are refused.
- `reasoning_effort` becomes `thinking` (Command A Reasoning and later): `none` disables it, `minimal`/`low`/
  `medium` set a `token_budget`, `high` (and `xhigh`/`max`, which only steer further) enable it without a
  budget. Thinking blocks come back as `reasoning_content`; `reasoning_content` sent back on earlier assistant turns
  is not forwarded.
- Usage: Cohere reports `billed_units` (what is charged) and `tokens` (what the model processed, including the
  prompt template Cohere adds). OpenAI's `prompt_tokens`/`completion_tokens` are what the client is billed for, so
  `billed_units` is used, and `tokens` only when billed units are missing. `cached_tokens` are prompt tokens served
  from Cohere's cache.
- `provider_options["cohere"]` is merged into the request after translation (`common.with_provider_options`;
  e.g. `safety_mode`, `documents`, `citation_options`, `k`); `model`, `stream` and `max_tokens` stay the gateway's.
- `finish_reason` ERROR or TIMEOUT means the model stopped early: it becomes `length` in a JSON answer; in a stream a
  `message-end` that carries an `error` text ends the stream with an error instead.
"""

from __future__ import annotations

import orjson

from ..errors import BadRequest, UpstreamError, status_error_type
from ..json_types import JsonObject
from .common import (
    DROPPED,
    MAPPED,
    REFUSED,
    error_dict,
    function_tools,
    refuse_unsupported,
    requested_max_tokens,
    with_provider_options,
)
from .stream import ChatStream as BaseChatStream
from .translator import Translator

SCHEMA = "cohere"

FIELDS: dict[str, str] = {
    "messages": MAPPED,  # system/developer -> one leading system message; user/assistant/tool as Cohere messages;
    # empty messages and an assistant's reasoning_content / thinking_blocks are dropped
    "model": MAPPED,  # replaced by the backend's model name
    "max_completion_tokens": MAPPED,  # -> max_tokens (preferred over max_tokens)
    "max_tokens": MAPPED,  # -> max_tokens
    "temperature": MAPPED,
    "top_p": MAPPED,  # -> p, clamped to 0.01..0.99
    "stop": MAPPED,  # -> stop_sequences
    "stream": MAPPED,
    "seed": MAPPED,
    "presence_penalty": MAPPED,  # clamped to <= 1; negative refused
    "frequency_penalty": MAPPED,
    "tools": MAPPED,  # function tools -> ToolV2; any strict tool -> strict_tools
    "tool_choice": MAPPED,  # required -> REQUIRED, none -> NONE, named -> that tool alone + REQUIRED
    "response_format": MAPPED,  # json_object / json_schema -> {type: json_object, json_schema?}
    "reasoning_effort": MAPPED,  # -> thinking
    "provider_options": MAPPED,  # its "cohere" object is merged into the request
    "stream_options": DROPPED,  # include_usage is honoured by ChatStream; message-end always carries usage
    "user": DROPPED,  # Cohere v2 has no end-user field; it only tags the request
    "safety_identifier": DROPPED,
    "store": DROPPED,  # OpenAI-side storage of the completion
    "metadata": DROPPED,  # OpenAI-side tags of stored completions
    "service_tier": DROPPED,  # OpenAI's tiers have no Cohere counterpart
    "prediction": DROPPED,  # a latency optimisation; the answer is the same without it
    "prompt_cache_key": DROPPED,  # OpenAI cache routing hints; Cohere caches on its own
    "prompt_cache_retention": DROPPED,
    "prompt_cache_options": DROPPED,
    "parallel_tool_calls": REFUSED,  # true is Cohere's behaviour; false can't be enforced
    "n": REFUSED,  # one choice only
    "logprobs": REFUSED,  # Cohere's logprobs are per text chunk, not OpenAI's per token with alternatives
    "top_logprobs": REFUSED,
    "logit_bias": REFUSED,
    "audio": REFUSED,
    "modalities": REFUSED,  # text only
    "web_search_options": REFUSED,
    "functions": REFUSED,  # deprecated: use tools
    "function_call": REFUSED,  # deprecated: use tool_choice
    "verbosity": REFUSED,  # no Cohere equivalent, and it changes the answer
    "moderation": REFUSED,  # OpenAI-side moderation can't run on a Cohere backend
}

_HARMLESS: dict[str, tuple[object, ...]] = {
    "parallel_tool_calls": (True,),
    "n": (1,),
    "logprobs": (False,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "verbosity": ("medium",),
}

_REFUSAL_REASONS = {
    "parallel_tool_calls": "'parallel_tool_calls: false' is not supported on cohere backends: Cohere can't be told "
                           "to call at most one tool",
    "functions": "'functions' is deprecated and not supported on cohere backends; use 'tools'",
    "function_call": "'function_call' is deprecated and not supported on cohere backends; use 'tool_choice'",
}

# token_budget per reasoning_effort; "high" lets the model think as long as it needs.
_THINKING_BUDGETS: dict[str, int | None] = {"minimal": 1024, "low": 2048, "medium": 8192, "high": None,
                                            "xhigh": None, "max": None}
_RESERVED_OPTIONS = ("model", "stream", "max_tokens")

_P_RANGE = (0.01, 0.99)

_FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR": "length",
    "TIMEOUT": "length",
}

_EMBEDDING_FIELDS = frozenset({"model", "input", "dimensions", "encoding_format", "user", "input_type"})
_EMBEDDING_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
DEFAULT_EMBEDDING_INPUT_TYPE = "search_document"
"""Cohere's embed v3+ models need an input type; OpenAI has none. Clients may send Cohere's own `input_type`."""


def chat_path(model: str, stream: bool, backend: object = None) -> str:
    return "/v2/chat"


def embeddings_path(model: str, backend: object = None) -> str:
    return "/v2/embed"


# --- request -------------------------------------------------------------------------------------------------------


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """Translate an OpenAI chat request into a Cohere v2 chat request for `model`.

    Without the client's output limit, `max_tokens` is `default_max_tokens`: Cohere would default to the model's
    output limit, more than the limiter reserved.
    """
    refuse_unsupported(body, FIELDS, _HARMLESS, _REFUSAL_REASONS, SCHEMA)
    request: JsonObject = {"model": model, "messages": _messages(body.get("messages"))}

    tools = _tools(body.get("tools"))
    if tools:
        tools, tool_choice = _tool_choice(body.get("tool_choice"), tools)
        request["tools"] = tools
        if any((tool.get("function") or {}).get("strict") for tool in body["tools"]):
            request["strict_tools"] = True
        if tool_choice is not None:
            request["tool_choice"] = tool_choice

    response_format = _response_format(body.get("response_format"))
    if response_format is not None:
        request["response_format"] = response_format
    max_tokens, _ = requested_max_tokens(body)
    request["max_tokens"] = max_tokens if max_tokens is not None else default_max_tokens
    stop = body.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = _number(body, "temperature")
    if temperature is not None:
        request["temperature"] = temperature
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BadRequest("'seed' must be an integer", param="seed")
        request["seed"] = seed
    for field in ("frequency_penalty", "presence_penalty"):
        penalty = _number(body, field)
        if penalty is not None:
            if penalty < 0:
                raise BadRequest(f"'{field}' must be 0 or more on cohere backends (Cohere can't encourage "
                                 "repetition)", param=field)
            request[field] = min(penalty, 1.0)
    top_p = _number(body, "top_p")
    if top_p is not None:
        request["p"] = min(max(top_p, _P_RANGE[0]), _P_RANGE[1])
    thinking = _thinking(body.get("reasoning_effort"))
    if thinking is not None:
        request["thinking"] = thinking
    if body.get("stream"):
        request["stream"] = True
    return with_provider_options(request, body, (SCHEMA,), _RESERVED_OPTIONS)


def _number(body: JsonObject, field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequest(f"'{field}' must be a number", param=field)
    return value


def _thinking(effort: object) -> JsonObject | None:
    if effort is None:
        return None
    if effort == "none":
        return {"type": "disabled"}
    if not isinstance(effort, str) or effort not in _THINKING_BUDGETS:
        raise BadRequest(f"reasoning_effort {effort!r} is not supported on cohere backends; "
                         "use none, minimal, low, medium, high, xhigh or max", param="reasoning_effort")
    budget = _THINKING_BUDGETS[effort]
    return {"type": "enabled"} if budget is None else {"type": "enabled", "token_budget": budget}


def _response_format(value: object) -> JsonObject | None:
    if value is None:
        return None
    given: JsonObject = value if isinstance(value, dict) else {}
    kind = given.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = given.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            return {"type": "json_object"}
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be an object", param="response_format")
        return {"type": "json_object", "json_schema": schema}
    raise BadRequest("response_format must be text, json_object or json_schema on cohere backends",
                     param="response_format")


def _messages(messages: object) -> list[JsonObject]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    system: list[str] = []
    turns: list[JsonObject] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(message.get("content"), where))
        elif role == "user":
            content = _user_content(message.get("content"), where)
            if content:
                turns.append({"role": "user", "content": content})  # Cohere refuses empty messages
        elif role == "assistant":
            turn = _assistant(message, where)
            if turn is not None:
                turns.append(turn)
        elif role == "tool":
            turns.append(_tool_result(message, where))
        elif role == "function":
            raise BadRequest(f"{where}: 'function' messages are deprecated and not supported on cohere backends; "
                             "use tool messages", param=where)
        else:
            raise BadRequest(f"{where} has an unknown role {role!r}", param=f"{where}.role")
    if not turns:
        raise BadRequest("'messages' holds no non-empty user, assistant or tool message for cohere backends",
                         param="messages")
    if system:
        turns.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return turns


def _texts(content: object, where: str) -> list[str]:
    """The text pieces of a string or an array of text (or past `refusal`) parts; other parts are refused."""
    if content is None or isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal"):
            raise BadRequest(f"{here}: content part type {kind!r} is not supported here on cohere backends",
                             param=here)
        text = part.get(kind)
        if not isinstance(text, str):
            raise BadRequest(f"{here}.{kind} must be a string", param=f"{here}.{kind}")
        if text:
            texts.append(text)
    return texts


def _user_content(content: object, where: str) -> str | list[JsonObject]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    parts: list[JsonObject] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise BadRequest(f"{here}.text must be a string", param=f"{here}.text")
            if part["text"]:
                parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            parts.append({"type": "image_url", "image_url": _image_url(part.get("image_url"), here)})
        elif kind == "file":
            raise BadRequest(f"{here}: cohere backends can't read files (PDFs or other documents): Cohere's chat "
                             "takes text and images only; send the document's text as a text part", param=here)
        else:
            raise BadRequest(f"{here}: content part type {kind!r} is not supported on cohere backends; "
                             "use text and image_url parts", param=here)
    return parts


def _image_url(image: object, where: str) -> JsonObject:
    """Cohere takes a base64 data URI or a web URL, with OpenAI's `detail` values."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith(("data:image/", "https://", "http://")):
        raise BadRequest(f"{where}: image_url.url must be a data:image/... URL or an http(s) URL", param=where)
    converted = {"url": url}
    detail = image.get("detail") if isinstance(image, dict) else None
    if detail is not None:
        if detail not in ("auto", "low", "high"):
            raise BadRequest(f"{where}: image_url.detail must be auto, low or high", param=where)
        converted["detail"] = detail
    return converted


def _assistant(message: JsonObject, where: str) -> JsonObject | None:
    texts = _texts(message.get("content"), where)
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest(f"{where}.tool_calls must be an array", param=f"{where}.tool_calls")
    if calls:
        turn: JsonObject = {"role": "assistant", "tool_calls": [_tool_call(call, f"{where}.tool_calls[{k}]")
                                                          for k, call in enumerate(calls)]}
        if texts:
            turn["tool_plan"] = "".join(texts)
        return turn
    if not texts:
        return None  # an empty turn says nothing, and Cohere refuses empty messages
    return {"role": "assistant", "content": "".join(texts)}


def _tool_call(call: object, where: str) -> JsonObject:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise BadRequest(f"{where}: only function tool calls are supported on cohere backends", param=where)
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    if not call.get("id") or not function.get("name"):
        raise BadRequest(f"{where} needs an id and a function name", param=where)
    arguments = function.get("arguments") or "{}"
    if not isinstance(arguments, str):
        raise BadRequest(f"{where}.function.arguments must be a JSON string", param=f"{where}.function.arguments")
    return {"id": call["id"], "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _tool_result(message: JsonObject, where: str) -> JsonObject:
    tool_call_id = message.get("tool_call_id")
    if not tool_call_id:
        raise BadRequest(f"{where}: a tool message needs a tool_call_id", param=f"{where}.tool_call_id")
    content = message.get("content")
    if isinstance(content, list):
        converted: str | list[JsonObject] = [{"type": "text", "text": text} for text in _texts(content, where)]
    else:
        converted = content if isinstance(content, str) else ""
    return {"role": "tool", "tool_call_id": tool_call_id, "content": converted}


def _tools(tools: object) -> list[JsonObject]:
    result = []
    for _, _, function in function_tools(tools, "cohere"):
        converted: JsonObject = {"name": function["name"]}
        if function.get("description"):
            converted["description"] = function["description"]
        converted["parameters"] = function.get("parameters") or {"type": "object", "properties": {}}
        result.append({"type": "function", "function": converted})
    return result


def _tool_choice(choice: object, tools: list[JsonObject]) -> tuple[list[JsonObject], str | None]:
    names = [tool["function"]["name"] for tool in tools]
    if choice is None or choice == "auto":
        return tools, None
    if choice == "required":
        return tools, "REQUIRED"
    if choice == "none":
        return tools, "NONE"
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
        return [tool for tool in tools if tool["function"]["name"] == name], "REQUIRED"
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        wanted = set()
        for entry in allowed.get("tools") or ():
            if not isinstance(entry, dict) or entry.get("type") != "function":
                raise BadRequest("tool_choice.allowed_tools may only name function tools on cohere backends",
                                 param="tool_choice")
            wanted.add((entry.get("function") or {}).get("name"))
        narrowed = [tool for tool in tools if tool["function"]["name"] in wanted]
        if not narrowed:
            raise BadRequest("tool_choice.allowed_tools names none of the tools in 'tools'", param="tool_choice")
        return narrowed, "REQUIRED" if allowed.get("mode") == "required" else None
    raise BadRequest("tool_choice must be 'auto', 'required', 'none', a function or allowed_tools on cohere "
                     "backends", param="tool_choice")


# --- response ------------------------------------------------------------------------------------------------------


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    """Translate a Cohere v2 chat answer into an OpenAI `chat.completion`."""
    message = body.get("message") or {}
    text: list[str] = []
    reasoning: list[str] = []
    for item in message.get("content") or ():
        if item.get("type") == "text":
            text.append(item.get("text") or "")
        elif item.get("type") == "thinking":
            reasoning.append(item.get("thinking") or "")
    tool_calls = [_openai_tool_call(call) for call in message.get("tool_calls") or ()]
    if not text and tool_calls and message.get("tool_plan"):
        text.append(message["tool_plan"])
    content = "".join(text) if text or not tool_calls else None
    out: JsonObject = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        out["tool_calls"] = tool_calls
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    completion = {
        "id": body.get("id") or "",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": out, "finish_reason": _finish_reason(body.get("finish_reason")),
                     "logprobs": None}],
    }
    usage = usage_of(body)
    if usage is not None:
        completion["usage"] = usage
    return completion


def _openai_tool_call(call: JsonObject) -> JsonObject:
    function = call.get("function") or {}
    return {"id": call.get("id") or "", "type": "function",
            "function": {"name": function.get("name") or "", "arguments": function.get("arguments") or "{}"}}


def usage_of(response: JsonObject) -> JsonObject | None:
    usage = response.get("usage")
    return _openai_usage(usage) if isinstance(usage, dict) else None


def _openai_usage(usage: JsonObject) -> JsonObject:
    billed = usage.get("billed_units")
    if not isinstance(billed, dict):
        billed = {}
    tokens = usage.get("tokens")
    if not isinstance(tokens, dict):
        tokens = {}
    prompt = _count(billed.get("input_tokens"), tokens.get("input_tokens"))
    completion = _count(billed.get("output_tokens"), tokens.get("output_tokens"))
    result: JsonObject = {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}
    cached = usage.get("cached_tokens")
    if isinstance(cached, int | float) and not isinstance(cached, bool):
        result["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    return result


def _count(*values: object) -> int:
    """The first of `values` that is a number (Cohere sends token counts as floats such as 37.0), else 0."""
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return 0


def _finish_reason(reason: object) -> str:
    return _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


# --- streaming -----------------------------------------------------------------------------------------------------


class ChatStream(BaseChatStream):
    """Cohere v2 stream events -> OpenAI `chat.completion.chunk` dicts, one event at a time.

    `finished` turns true on `message-end`; a `message-end` with an `error` ends the stream without finishing it.
    """

    provider = "cohere"
    end_marker = "message-end"

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self._tool_index: dict[int, int] = {}  # Cohere tool call index -> OpenAI tool call index
        self._silent_tools: set[int] = set()  # tool calls that have not streamed any arguments yet

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed or data.strip() == b"[DONE]":
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self._malformed()
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        message = delta.get("message")
        if not isinstance(message, dict):
            message = {}
        index = payload.get("index")
        if not isinstance(index, int):
            index = 0
        match payload.get("type") or event:
            case "message-start":
                self._id = payload.get("id") or ""
                return [self._chunk({"role": "assistant", "content": ""})]
            case "content-start" | "content-delta":
                return self._content(message.get("content"))
            case "tool-plan-delta":
                plan = message.get("tool_plan")
                return [self._chunk({"content": plan})] if isinstance(plan, str) and plan else []
            case "tool-call-start":
                return self._tool_call_start(index, message.get("tool_calls"))
            case "tool-call-delta":
                return self._tool_call_delta(index, message.get("tool_calls"))
            case "tool-call-end":
                return self._tool_call_end(index)
            case "message-end":
                return self._message_end(delta)
            case _:
                return []  # content-end, citation-start/-end, debug, and event types added after this was written

    def _content(self, content: object) -> list[JsonObject]:
        if not isinstance(content, dict):
            return []
        if content.get("text"):
            return [self._chunk({"content": content["text"]})]
        if content.get("thinking"):
            return [self._chunk({"reasoning_content": content["thinking"]})]
        return []

    def _tool_call_start(self, index: int, call: object) -> list[JsonObject]:
        call = call if isinstance(call, dict) else {}
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        position = self._tool_index[index] = len(self._tool_index)
        arguments = function.get("arguments") or ""
        if not arguments:
            self._silent_tools.add(index)
        return [self._chunk({"tool_calls": [{"index": position, "id": call.get("id") or "", "type": "function",
                                             "function": {"name": function.get("name") or "",
                                                          "arguments": arguments}}]})]

    def _tool_call_delta(self, index: int, call: object) -> list[JsonObject]:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            function = {}
        arguments = function.get("arguments")
        if not arguments or index not in self._tool_index:
            return []
        self._silent_tools.discard(index)
        return [self._chunk({"tool_calls": [{"index": self._tool_index[index],
                                             "function": {"arguments": arguments}}]})]

    def _tool_call_end(self, index: int) -> list[JsonObject]:
        if index not in self._silent_tools:
            return []
        # OpenAI clients parse the joined fragments: a call without arguments streams "{}".
        self._silent_tools.discard(index)
        return [self._chunk({"tool_calls": [{"index": self._tool_index[index], "function": {"arguments": "{}"}}]})]

    def _message_end(self, delta: JsonObject) -> list[JsonObject]:
        if isinstance(delta.get("usage"), dict):
            self.usage = _openai_usage(delta["usage"])
        error = delta.get("error")
        if isinstance(error, str) and error:
            return self._fail(error_dict(error, UpstreamError.type, str(delta.get("finish_reason") or "ERROR")))
        self.finished = True
        return [self._chunk({}, _finish_reason(delta.get("finish_reason"))), *self._usage_chunks()]


# --- embeddings ----------------------------------------------------------------------------------------------------


def embeddings_request(body: JsonObject, model: str, backend: object = None) -> JsonObject:
    """OpenAI embeddings request -> `POST /v2/embed`. base64 output is asked of Cohere directly (the float32 bytes,
    as OpenAI's base64 is), so the answer needs no knowledge of the request."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for field in body:
        if field not in _EMBEDDING_FIELDS:
            raise BadRequest(f"'{field}' is not an embeddings field the cohere translator knows", param=field)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        raise BadRequest("'input' must be a non-empty string or array of non-empty strings on cohere backends "
                         "(token arrays are not supported)", param="input")
    input_type = body.get("input_type", DEFAULT_EMBEDDING_INPUT_TYPE)
    if input_type not in _EMBEDDING_INPUT_TYPES:
        raise BadRequest(f"'input_type' must be one of {sorted(_EMBEDDING_INPUT_TYPES)}", param="input_type")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    request: JsonObject = {"model": model, "texts": texts, "input_type": input_type, "embedding_types": [encoding]}
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise BadRequest("'dimensions' must be a positive integer", param="dimensions")
        request["output_dimension"] = dimensions
    return request


def embeddings_response(body: JsonObject, model: str) -> JsonObject:
    embeddings = body.get("embeddings") or {}
    vectors = embeddings.get("float")
    if vectors is None:
        vectors = embeddings.get("base64") or []
    data = [{"object": "embedding", "index": index, "embedding": vector} for index, vector in enumerate(vectors)]
    meta = body.get("meta") or {}
    billed = meta.get("billed_units")
    if not isinstance(billed, dict):
        billed = {}
    tokens = meta.get("tokens")
    if not isinstance(tokens, dict):
        tokens = {}
    used = _count(billed.get("input_tokens"), tokens.get("input_tokens"))
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": used, "total_tokens": used}}


# --- errors --------------------------------------------------------------------------------------------------------

_CLIENT_STATUS = {422: 400, 498: 401, 499: 502}


def error_response(status: int, body: bytes, headers: object = None) -> tuple[int, JsonObject]:
    """A Cohere error (`{"id"?, "message"}`) -> (status for the client, OpenAI error).

    498 (invalid token) becomes 401, 422 becomes 400, 499 (request cancelled on Cohere's side) and unusual 5xx
    become 502 so Envoy retries them on the next backend.
    """
    client_status = _CLIENT_STATUS.get(status, status)
    if client_status >= 500 and client_status not in (500, 502, 503, 504):
        client_status = 502
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, str) or not message:
        message = f"the cohere backend answered HTTP {status} with a body that is not a Cohere error"
    return client_status, error_dict(message, status_error_type(client_status), None)


class CohereTranslator(Translator):
    schemas = (SCHEMA,)
    fields = FIELDS
    serves_embeddings = True
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
    embeddings_path = staticmethod(embeddings_path)
    embeddings_request = staticmethod(embeddings_request)
    embeddings_response = staticmethod(embeddings_response)
