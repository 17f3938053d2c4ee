"""The gateway's canonical answer (an OpenAI `chat.completion`) -> a Responses API `Response` for clients of
`POST /v1/responses`; `responses_stream.py` does the same for streamed answers and shares this module's pieces.

Decisions worth knowing before changing this file:

- The envelope echoes the client's request as OpenAI does (`tools`, `tool_choice`, `reasoning`, `text`, ...) with
  OpenAI's defaults for what the client left out; `model` is the name the client asked for, not the backend's.
  `temperature` and `top_p` stay null when not sent: the backend's default applied, whichever it is. `store` is
  echoed although the openai SDK's `Response` model no longer declares it: OpenAI's API still returns it.
- Output order: one `reasoning` item, the `message` item, then one item per tool call. The chat form has no place
  for text after a tool call in one turn, so this order loses nothing it had.
- Reasoning: Claude's signed `thinking_blocks` go in the reasoning item's `encrypted_content`
  (`responses_common.encode_thinking`), so a stateless client hands them back; the text (`reasoning_content`, from
  Claude or any other backend) becomes the item's one `summary_text` only when the request asked for a summary
  (`reasoning.summary`, or the deprecated `generate_summary`), as OpenAI gives no reasoning text otherwise. The
  gateway stores the full Response; `client_view` takes `encrypted_content` out unless the request's `include` lists
  `reasoning.encrypted_content`, as OpenAI does.
- Tool calls go back as the client declared the tool (`responses_common.tool_names`): a `function_call` (with its
  `namespace`) or a `custom_tool_call`, whose `input` is the `input` string of the chat call's JSON arguments (raw
  arguments that are not such JSON are passed on as they are rather than failing the answer). `call_id` is the chat
  tool call's id.
- Status: finish_reason length -> `incomplete` (`max_output_tokens`), content_filter -> `incomplete`
  (`content_filter`), anything else -> `completed`; the item the answer was cut in (the last) is marked
  `incomplete` when its type has a status (a custom tool call has none).
- Usage: `prompt_tokens` includes cache reads, as Responses `input_tokens` does; `cache_write_tokens` (the gateway's
  extension, from Claude) fills the SDK's required `input_tokens_details.cache_write_tokens`, 0 when unknown.
- A `failed` Response carries `error: {code, message}` with a code from OpenAI's `ResponseError` enum:
  rate limits keep theirs, everything else is `server_error`; the message is the upstream's.
"""

from __future__ import annotations

import orjson

from ..json_types import JsonObject
from . import responses_common as common

ENCRYPTED_REASONING = "reasoning.encrypted_content"

# (field, what OpenAI reports when the request left it out)
_ECHOED: tuple[tuple[str, object], ...] = (
    ("instructions", None), ("max_output_tokens", None), ("max_tool_calls", None), ("parallel_tool_calls", True),
    ("previous_response_id", None), ("prompt_cache_key", None), ("prompt_cache_retention", None),
    ("safety_identifier", None), ("service_tier", None), ("store", True), ("temperature", None),
    ("tool_choice", "auto"), ("top_logprobs", None), ("top_p", None), ("truncation", "disabled"), ("user", None),
)

_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}
_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})
_THINKING_KEYS = {"thinking": ("type", "thinking", "signature"), "redacted_thinking": ("type", "data")}


def response_envelope(request: JsonObject, *, response_id: str, created_at: int, model: str,
                      status: str) -> JsonObject:
    """The Response's fields other than `output` and `usage`, echoing the client's request."""
    envelope: JsonObject = {"id": response_id, "object": "response", "created_at": created_at, "status": status,
                            "background": False, "error": None, "incomplete_details": None}
    envelope.update({field: request[field] if request.get(field) is not None else default
                     for field, default in _ECHOED})
    envelope["model"] = model
    envelope["reasoning"] = {"effort": _reasoning(request).get("effort"), "summary": summary_mode(request)}
    envelope["text"] = _text_config(request.get("text"))
    envelope["tools"] = request.get("tools") or []
    envelope["metadata"] = request.get("metadata") or {}
    return envelope


def _reasoning(request: JsonObject) -> JsonObject:
    reasoning = request.get("reasoning")
    return reasoning if isinstance(reasoning, dict) else {}


def _text_config(text: object) -> JsonObject:
    if not isinstance(text, dict):
        return {"format": {"type": "text"}}
    return text if text.get("format") is not None else {**text, "format": {"type": "text"}}


def summary_mode(request: JsonObject) -> str | None:
    """The reasoning summary the request asked for (`summary`, or the deprecated `generate_summary`), or None."""
    reasoning = _reasoning(request)
    return reasoning.get("summary") or reasoning.get("generate_summary")


def includes_encrypted_reasoning(request: JsonObject) -> bool:
    include = request.get("include")
    return isinstance(include, list) and ENCRYPTED_REASONING in include


# --- the whole answer ----------------------------------------------------------------------------------------------


def from_openai(completion: JsonObject, request: JsonObject, *, response_id: str, created_at: int,
                model: str) -> JsonObject:
    """Translate an OpenAI `chat.completion` into the full Response (encrypted reasoning included)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output = []
    reasoning = message.get("reasoning_content")
    text = reasoning if isinstance(reasoning, str) else ""
    blocks = thinking_blocks(message.get("thinking_blocks"))
    if text or blocks:
        output.append(reasoning_item(common.new_id("rs"), text if summary_mode(request) else "", blocks))
    content = _message_content(message, choice.get("logprobs"))
    if content:
        output.append({"id": common.new_id("msg"), "type": "message", "status": "completed", "role": "assistant",
                       "content": content})
    names = common.tool_names(request.get("tools"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(tool_call_item(call.get("id"), function.get("name"), function.get("arguments"), names))
    status, incomplete = finish_status(choice.get("finish_reason"))
    if incomplete is not None and output and "status" in output[-1]:
        output[-1]["status"] = "incomplete"
    response = response_envelope(request, response_id=response_id, created_at=created_at, model=model,
                                 status=status)
    response["incomplete_details"] = incomplete
    response["output"] = output
    response["usage"] = usage(completion.get("usage"))
    return response


def client_view(response: JsonObject, request: JsonObject) -> JsonObject:
    """What the client gets: the stored Response without `encrypted_content`, unless the request included it."""
    output = response.get("output")
    if includes_encrypted_reasoning(request) or not isinstance(output, list) or not any(
            isinstance(item, dict) and "encrypted_content" in item for item in output):
        return response
    return {**response, "output": [client_item(item, False) for item in output]}


def client_item(item: JsonObject, include_encrypted: bool) -> JsonObject:
    """One output item as the client sees it."""
    if include_encrypted or "encrypted_content" not in item:
        return item
    return {key: value for key, value in item.items() if key != "encrypted_content"}


def failed_response(request: JsonObject, error: JsonObject, *, response_id: str, created_at: int, model: str,
                    output: list[JsonObject] | None = None) -> JsonObject:
    """A `failed` Response for an OpenAI error object (`{"message", "type", "code", ...}`), with what was produced."""
    response = response_envelope(request, response_id=response_id, created_at=created_at, model=model,
                                 status="failed")
    response["error"] = response_error(error)
    response["output"] = output or []
    response["usage"] = None
    return response


def response_error(error: JsonObject) -> JsonObject:
    """An OpenAI error object -> a Response's `error`: a `ResponseError` code, and the upstream's message."""
    code = error.get("code")
    if not (isinstance(code, str) and code in _ERROR_CODES):
        code = "rate_limit_exceeded" if error.get("type") == "rate_limit_error" else "server_error"
    return {"code": code, "message": str(error.get("message") or "The upstream request failed.")}


def finish_status(finish_reason: object) -> tuple[str, JsonObject | None]:
    """(Response status, incomplete_details) for a chat finish_reason."""
    reason = _INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


# --- output items --------------------------------------------------------------------------------------------------


def thinking_blocks(value: object) -> list[JsonObject]:
    """An answer's `thinking_blocks` with their known keys only (unknown kinds left out)."""
    if not isinstance(value, list):
        return []
    return [{key: block.get(key) or "" for key in _THINKING_KEYS[block["type"]]} for block in value
            if isinstance(block, dict) and block.get("type") in _THINKING_KEYS]


def reasoning_item(item_id: str, summary: str, blocks: list[JsonObject]) -> JsonObject:
    """A reasoning item: the summary text ("" for none) and the signed blocks in `encrypted_content`."""
    item: JsonObject = {"id": item_id, "type": "reasoning",
                        "summary": [{"type": "summary_text", "text": summary}] if summary else []}
    if blocks:
        item["encrypted_content"] = common.encode_thinking(blocks)
    return item


def _message_content(message: JsonObject, logprobs: object) -> list[JsonObject]:
    content = []
    text = _text_of(message.get("content"))
    if text:
        content.append({"type": "output_text", "text": text, "annotations": _annotations(message.get("annotations")),
                        "logprobs": output_logprobs(logprobs)})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return content


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some OpenAI-compatible servers answer with parts
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return ""


def _annotations(annotations: object) -> list[JsonObject]:
    """Chat `url_citation` annotations (search models) in the Responses shape; other kinds have no Responses form."""
    if not isinstance(annotations, list):
        return []
    return [{"type": "url_citation", **annotation["url_citation"]} for annotation in annotations
            if isinstance(annotation, dict) and annotation.get("type") == "url_citation"
            and isinstance(annotation.get("url_citation"), dict)]


def output_logprobs(logprobs: object) -> list[JsonObject]:
    """Chat `choice.logprobs` -> an `output_text` part's logprobs."""
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(entries, list):
        return []
    return [{"token": entry.get("token") or "", "bytes": entry.get("bytes") or [], "logprob": entry.get("logprob", 0),
             "top_logprobs": [{"token": top.get("token") or "", "bytes": top.get("bytes") or [],
                               "logprob": top.get("logprob", 0)} for top in entry.get("top_logprobs") or ()]}
            for entry in entries if isinstance(entry, dict)]


def tool_call_item(call_id: object, name: object, arguments: object, names: dict[str, common.ToolName],
                   status: str = "completed") -> JsonObject:
    """A chat tool call as the item the client declared: `function_call` or `custom_tool_call`."""
    chat_name = name if isinstance(name, str) else ""
    declared = names.get(chat_name)
    call_id = call_id if isinstance(call_id, str) and call_id else common.new_id("call")
    arguments = arguments if isinstance(arguments, str) else ""
    if declared is not None and declared.kind == "custom":
        item: JsonObject = {"id": common.new_id("ctc"), "type": "custom_tool_call", "call_id": call_id,
                            "name": declared.name, "input": custom_input(arguments)}
    else:
        item = {"id": common.new_id("fc"), "type": "function_call", "status": status, "call_id": call_id,
                "name": declared.name if declared else chat_name, "arguments": arguments}
    if declared is not None and declared.namespace:
        item["namespace"] = declared.namespace
    return item


def custom_input(arguments: str) -> str:
    """A custom tool's free-form input: the `input` string of the chat call's JSON arguments, else the raw text."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    value = parsed.get(common.CUSTOM_TOOL_PARAMETER) if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else arguments


def usage(value: object) -> JsonObject | None:
    """Chat usage -> Responses usage; None when the backend reported none."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens_details") or {}
    completion = value.get("completion_tokens_details") or {}
    input_tokens = value.get("prompt_tokens") or 0
    output_tokens = value.get("completion_tokens") or 0
    return {"input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": prompt.get("cached_tokens") or 0,
                                     "cache_write_tokens": prompt.get("cache_write_tokens") or 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": completion.get("reasoning_tokens") or 0},
            "total_tokens": value.get("total_tokens") or input_tokens + output_tokens}
