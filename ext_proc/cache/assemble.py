"""A streamed answer made whole again, from the bytes the client got, so a streamed miss can be cached like a whole
one (and replayed to a client that does not stream).

Built from what the client got, not from what the provider sent: a guardrail's redaction is what gets cached, and
an answer the client never got whole is never cached. An assembler says `complete` only for an answer that ended
as a finished answer ends: chat with `[DONE]` after a finish reason on every choice, Anthropic Messages with
`message_stop`; any error chunk or event, a stream cut short, or an answer past `max_bytes` (held no further) is not.
Responses streams need no assembler: the Response the stream ended with is the whole answer (`ResponsesTurn`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import orjson

from ..json_types import JsonObject
from ..streaming.sse import SSEDecoder, SSEError


class StreamAssembler(ABC):
    """Client stream bytes in; `answer()` is the whole answer once the stream ended complete, else None."""

    __slots__ = ("_broken", "_decoder", "_seen_bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._decoder = SSEDecoder(max_event_bytes=max_bytes)
        self._seen_bytes = 0
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken or not data:
            return
        self._seen_bytes += len(data)
        if self._seen_bytes > self.max_bytes:
            self._broken = True
            return
        try:
            for event in self._decoder.feed(data):
                if event.data == b"[DONE]":
                    self._done()
                    continue
                payload = orjson.loads(event.data)
                if not isinstance(payload, dict) or not self._take(event.event or "", payload):
                    self._broken = True
                    return
        except (SSEError, orjson.JSONDecodeError):
            self._broken = True

    def answer(self) -> JsonObject | None:
        return None if self._broken else self._whole()

    def _done(self) -> None:
        return None

    @abstractmethod
    def _take(self, name: str, payload: JsonObject) -> bool:
        """One event; False when it shows the answer can't be cached (an error)."""

    @abstractmethod
    def _whole(self) -> JsonObject | None:
        """The whole answer, when the stream ended as a finished answer ends."""


class ChatAssembler(StreamAssembler):
    """`chat.completion.chunk`s -> a `chat.completion`."""

    __slots__ = ("_choices", "_ended", "_head", "_usage")

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._head: JsonObject = {}
        self._choices: dict[int, JsonObject] = {}
        self._usage: object = None
        self._ended = False

    def _done(self) -> None:
        self._ended = True

    def _take(self, name: str, payload: JsonObject) -> bool:
        if "error" in payload:
            return False
        if not self._head:
            self._head = {field: payload[field] for field in ("id", "created", "model", "system_fingerprint",
                                                              "service_tier") if payload.get(field) is not None}
        if payload.get("usage") is not None:
            self._usage = payload["usage"]
        for choice in payload.get("choices") or ():
            self._take_choice(choice)
        return True

    def _take_choice(self, choice: JsonObject) -> None:
        index = choice.get("index", 0)
        built = self._choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None},
                                                 "finish_reason": None, "tools": {}})
        message = built["message"]
        delta = choice.get("delta") or {}
        for field in ("content", "reasoning_content", "refusal"):
            if isinstance(delta.get(field), str):
                message[field] = (message.get(field) or "") + delta[field]
        if isinstance(delta.get("thinking_blocks"), list):
            message.setdefault("thinking_blocks", []).extend(delta["thinking_blocks"])
        for fragment in delta.get("tool_calls") or ():
            call = built["tools"].setdefault(fragment.get("index", 0), {"id": None, "type": "function",
                                                                          "function": {"name": "", "arguments": ""}})
            call["id"] = fragment.get("id") or call["id"]
            function = fragment.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("logprobs") is not None:
            built.setdefault("logprobs", {"content": []})["content"].extend(
                (choice["logprobs"] or {}).get("content") or ())
        if choice.get("finish_reason"):
            built["finish_reason"] = choice["finish_reason"]

    def _whole(self) -> JsonObject | None:
        if not self._ended or not self._choices or any(c["finish_reason"] is None for c in self._choices.values()):
            return None
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            tools = choice.pop("tools")
            if tools:
                choice["message"]["tool_calls"] = [tools[position] for position in sorted(tools)]
            if choice["message"].get("content") == "" and tools:
                choice["message"]["content"] = None
            choice.setdefault("logprobs", None)
            choices.append(choice)
        return {"id": self._head.get("id", ""), "object": "chat.completion", "created": self._head.get("created", 0),
                "model": self._head.get("model", ""), "choices": choices, "usage": self._usage,
                **{f: self._head[f] for f in ("system_fingerprint", "service_tier") if f in self._head}}


class MessagesAssembler(StreamAssembler):
    """Anthropic Messages stream events -> a Message."""

    __slots__ = ("_blocks", "_json", "_message", "_stopped")

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._message: JsonObject | None = None
        self._blocks: dict[int, JsonObject] = {}
        self._json: dict[int, list[str]] = {}
        """Tool input JSON, streamed in fragments."""
        self._stopped = False

    def _take(self, name: str, payload: JsonObject) -> bool:
        kind = payload.get("type", name)
        if kind == "error":
            return False
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            self._message = dict(payload["message"])
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            self._blocks[payload.get("index", 0)] = dict(payload["content_block"])
        elif kind == "content_block_delta":
            return self._delta(payload.get("index", 0), payload.get("delta") or {})
        elif kind == "message_delta" and self._message is not None:
            self._message.update(payload.get("delta") or {})
            if isinstance(payload.get("usage"), dict):
                self._message["usage"] = {**(self._message.get("usage") or {}), **payload["usage"]}
        elif kind == "message_stop":
            self._stopped = True
        return True

    def _delta(self, index: int, delta: JsonObject) -> bool:
        block = self._blocks.get(index)
        if block is None:
            return False
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif kind == "input_json_delta":
            self._json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta.get("signature", "")
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))
        return True

    def _whole(self) -> JsonObject | None:
        message = self._message
        if message is None or not self._stopped:
            return None
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if index in self._json:
                text = "".join(self._json[index])
                try:
                    block["input"] = orjson.loads(text) if text else {}
                except orjson.JSONDecodeError:
                    return None
            content.append(block)
        return {**message, "content": content}
