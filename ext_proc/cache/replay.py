"""A cached answer replayed to a client that asked for a stream, in its own format, as a live stream of the same
answer would have carried it (a hit has nothing to wait for, so each replay is one body):

- chat completions: role, content, tool-call arguments, finish reason, then the usage chunk when the client asked
  for usage (`stream_options.include_usage`), then `[DONE]`;
- Anthropic Messages: `message_start`, each content block's start, delta(s) and stop, `message_delta` with the stop
  reason and usage, `message_stop`;
- Responses: `response.created` and `.in_progress`, each output item added, its content streamed and done, then
  `response.completed` (or `.incomplete`), numbered from 0.
"""

from __future__ import annotations

import orjson

from ..json_types import JsonObject
from ..streaming.sse import encode_data, encode_event

DONE = b"data: [DONE]\n\n"


def chat_stream(answer: JsonObject, include_usage: bool) -> bytes:
    """The whole replay, one SSE body (a hit has nothing to wait for)."""
    base = {"id": answer.get("id", ""), "object": "chat.completion.chunk", "created": answer.get("created", 0),
            "model": answer.get("model", "")}
    if answer.get("system_fingerprint") is not None:
        base["system_fingerprint"] = answer["system_fingerprint"]
    parts: list[bytes] = []
    for choice in answer.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        for delta in _deltas(message):
            parts.append(encode_data({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}))
        parts.append(encode_data({**base, "choices": [{"index": index, "delta": {},
                                                       "finish_reason": choice.get("finish_reason")}]}))
    if include_usage and answer.get("usage") is not None:
        parts.append(encode_data({**base, "choices": [], "usage": answer["usage"]}))
    parts.append(DONE)
    return b"".join(parts)


def _deltas(message: JsonObject) -> list[JsonObject]:
    """The deltas that rebuild `message`: the role first, then its text (or refusal), then each tool call whole."""
    deltas: list[JsonObject] = [{"role": message.get("role", "assistant"), "content": ""}]
    for field in ("reasoning_content", "content", "refusal"):
        if isinstance(message.get(field), str) and message[field]:
            deltas.append({field: message[field]})
    if message.get("thinking_blocks"):
        deltas.append({"thinking_blocks": message["thinking_blocks"]})
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        deltas.append({"tool_calls": [{"index": position, "id": call.get("id"), "type": call.get("type", "function"),
                                       "function": {"name": function.get("name"),
                                                    "arguments": function.get("arguments", "")}}]})
    return deltas


def messages_stream(message: JsonObject) -> bytes:
    """An Anthropic Message as the events of its stream."""
    usage = message.get("usage") or {}
    opening = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {**usage, "output_tokens": 0}}
    parts = [encode_event("message_start", {"type": "message_start", "message": opening})]
    for index, block in enumerate(message.get("content") or ()):
        start, deltas = _block_stream(block)
        parts.append(encode_event("content_block_start", {"type": "content_block_start", "index": index,
                                                          "content_block": start}))
        parts.extend(encode_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                          "delta": delta}) for delta in deltas)
        parts.append(encode_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    parts.append(encode_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": message.get("stop_reason"),
                                           "stop_sequence": message.get("stop_sequence")},
        "usage": usage}))
    parts.append(encode_event("message_stop", {"type": "message_stop"}))
    return b"".join(parts)


def _block_stream(block: JsonObject) -> tuple[JsonObject, list[JsonObject]]:
    """A content block's opening form and the deltas that fill it; a block with no streamed form (redacted
    thinking, server tool results) opens whole."""
    kind = block.get("type")
    if kind == "text":
        deltas: list[JsonObject] = [{"type": "text_delta", "text": block.get("text", "")}]
        deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or ()]
        return {"type": "text", "text": ""}, deltas
    if kind in ("tool_use", "server_tool_use"):
        arguments = orjson.dumps(block.get("input") or {}).decode()
        return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": arguments}]
    if kind == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": block.get("thinking", "")}]
        if block.get("signature"):
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return {"type": "thinking", "thinking": "", "signature": ""}, deltas
    return block, []


def responses_stream(response: JsonObject) -> bytes:
    """A Response (as the client sees it) as the events of its stream."""
    events = _ResponseEvents()
    opening = {**response, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    events.add("response.created", {"response": opening})
    events.add("response.in_progress", {"response": opening})
    for position, item in enumerate(response.get("output") or ()):
        events.item(position, item)
    events.add("response.incomplete" if response.get("status") == "incomplete" else "response.completed",
               {"response": response})
    return b"".join(events.parts)


class _ResponseEvents:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, name: str, payload: JsonObject) -> None:
        self.parts.append(encode_event(name, {"type": name, "sequence_number": len(self.parts), **payload}))

    def item(self, position: int, item: JsonObject) -> None:
        kind = item.get("type")
        about = {"item_id": item.get("id"), "output_index": position}
        if kind == "message":
            self.add("response.output_item.added", {"output_index": position,
                                                    "item": {**item, "status": "in_progress", "content": []}})
            for index, part in enumerate(item.get("content") or ()):
                self._part(about, index, part)
        elif kind == "function_call":
            self.add("response.output_item.added", {"output_index": position,
                                                    "item": {**item, "status": "in_progress", "arguments": ""}})
            arguments = item.get("arguments", "")
            self.add("response.function_call_arguments.delta", {**about, "delta": arguments})
            self.add("response.function_call_arguments.done", {**about, "arguments": arguments})
        elif kind == "reasoning":
            self.add("response.output_item.added", {"output_index": position, "item": {**item, "summary": []}})
            for index, summary in enumerate(item.get("summary") or ()):
                text = summary.get("text", "")
                self.add("response.reasoning_summary_part.added",
                         {**about, "summary_index": index, "part": {"type": "summary_text", "text": ""}})
                self.add("response.reasoning_summary_text.delta", {**about, "summary_index": index, "delta": text})
                self.add("response.reasoning_summary_text.done", {**about, "summary_index": index, "text": text})
                self.add("response.reasoning_summary_part.done", {**about, "summary_index": index, "part": summary})
        elif kind == "custom_tool_call":
            self.add("response.output_item.added", {"output_index": position, "item": {**item, "input": ""}})
            self.add("response.custom_tool_call_input.delta", {**about, "delta": item.get("input", "")})
            self.add("response.custom_tool_call_input.done", {**about, "input": item.get("input", "")})
        else:
            self.add("response.output_item.added", {"output_index": position, "item": item})
        self.add("response.output_item.done", {"output_index": position, "item": item})

    def _part(self, about: JsonObject, index: int, part: JsonObject) -> None:
        if part.get("type") == "refusal":
            text = part.get("refusal", "")
            self.add("response.content_part.added", {**about, "content_index": index,
                                                     "part": {"type": "refusal", "refusal": ""}})
            self.add("response.refusal.delta", {**about, "content_index": index, "delta": text})
            self.add("response.refusal.done", {**about, "content_index": index, "refusal": text})
        else:
            text = part.get("text", "")
            self.add("response.content_part.added", {**about, "content_index": index,
                                                     "part": {**part, "text": "", "annotations": [], "logprobs": []}})
            self.add("response.output_text.delta", {**about, "content_index": index, "delta": text, "logprobs": []})
            self.add("response.output_text.done", {**about, "content_index": index, "text": text, "logprobs": []})
        self.add("response.content_part.done", {**about, "content_index": index, "part": part})
