"""A cached chat completion replayed to a client that asked for a stream: the chunks a live stream of the same
answer would have carried (role, content, tool-call arguments, finish reason), then the usage chunk when the client
asked for usage (`stream_options.include_usage`), then `[DONE]`, as OpenAI's SSE framing has them."""

from __future__ import annotations

from ..json_types import JsonObject
from ..streaming.sse import encode_data

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
    for position, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        deltas.append({"tool_calls": [{"index": position, "id": call.get("id"), "type": call.get("type", "function"),
                                       "function": {"name": function.get("name"),
                                                    "arguments": function.get("arguments", "")}}]})
    return deltas
