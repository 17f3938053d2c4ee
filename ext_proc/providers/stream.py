"""What every provider's stream translation shares: the state the attempt stage reads, and the OpenAI chunks.

A `ChatStream` turns one provider stream event at a time into OpenAI `chat.completion.chunk` dicts. The attempt
stage calls `feed(event, data)` for each event (SSE event name or AWS `:event-type`, and the payload bytes) and
`finish()` once when the connection ends, and reads `usage` (the OpenAI usage dict, once known) to settle limits.

The rules every subclass keeps:

- Once `finished` (the provider said everything) or failed (an error chunk went out), `feed` and `finish` return
  nothing more: a provider that keeps talking after its end, or after an error, is not the client's problem.
- A stream that ends before the provider's end marker is an error chunk, not a silent truncation: `finish` says so
  unless `_last_chunks` knows the answer is complete anyway (providers without a reliable end marker).
- Chunks carry `"usage": null` when the client asked for usage (`stream_options.include_usage`), and the usage
  chunk (no choices) comes last, as OpenAI sends them.

`feed` stays in each subclass, guard included, so a chunk costs what it did before the base existed: no extra call
per event. What is here runs once per stream or builds a chunk with no call of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..json_types import JsonObject
from .common import gateway_error


class ChatStream(ABC):
    provider = ""
    """The backend's name in error messages ("anthropic", "bedrock", ...)."""
    end_marker = ""
    """What a complete stream ends with, in the error for one that was cut ("message_stop", ...)."""

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self.usage: JsonObject | None = None
        self.finished = False
        self._failed = False
        self._id = ""
        self._model = model
        self._created = created
        self._include_usage = include_usage

    @property
    def failed(self) -> bool:
        """The stream ended with an error chunk of the gateway's making (a malformed stream, an answer that broke a
        rule): whatever the provider says after it, the client did not get a whole answer."""
        return self._failed

    @abstractmethod
    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        """One provider event -> the OpenAI chunks it makes (often none, sometimes several)."""

    def finish(self) -> list[JsonObject]:
        """The connection ended: what the client is still owed, or the error for a stream cut short."""
        if self.finished or self._failed:
            return []
        last = self._last_chunks()
        if last is None:
            return self._fail(gateway_error(f"the {self.provider} stream ended before {self.end_marker}"))
        self.finished = True
        return last

    def _last_chunks(self) -> list[JsonObject] | None:
        """For a stream that ended without its end marker: the chunks still to send when the answer is complete
        nonetheless, None when it was cut short."""
        return None

    def _fail(self, error: JsonObject) -> list[JsonObject]:
        self._failed = True
        return [error]

    def _malformed(self) -> list[JsonObject]:
        return self._fail(gateway_error(f"the {self.provider} backend sent a malformed stream event"))

    def _chunk(self, delta: JsonObject, finish_reason: str | None = None, index: int = 0) -> JsonObject:
        """A `chat.completion.chunk` with one choice."""
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                 "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _usage_chunks(self) -> list[JsonObject]:
        """The closing usage chunk, when the client asked for usage and the provider reported it."""
        if not self._include_usage or self.usage is None:
            return []
        return [{"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model,
                 "choices": [], "usage": self.usage}]
