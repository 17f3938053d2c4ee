"""What watches a streamed answer while it flows: the route's response guardrails, and the backend's idle limit.

Both act on an answer the client already partly has, so neither can refuse it as a whole: a guardrail that blocks
ends the stream with an error chunk and drops whatever the model says next; a backend that stalls past its
`stream_idle_timeout` gets the stream ended for it, with an error event the SDKs raise (no other backend may take
over half an answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import UpstreamTimeout
from ..guardrails.engine import Guardrail
from ..guardrails.engine import apply as apply_guardrails
from ..json_types import JsonObject
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages

WINDOW = 512
"""Characters of a streamed answer a blocking guardrail looks back over (a phrase split across chunks)."""


class StreamGuard:
    """Redaction works chunk by chunk (what was sent is sent); a `block` looks at the last stretch of the whole
    answer, so a phrase the model streams over several chunks is still found."""

    __slots__ = ("_blocking", "_redacting", "_route", "_tail", "blocked")

    def __init__(self, guardrails: tuple[Guardrail, ...], route: str) -> None:
        self._redacting = tuple(g for g in guardrails if g.mode != "block")
        self._blocking = tuple(g for g in guardrails if g.mode == "block")
        self._route = route
        self._tail = ""
        self.blocked = False
        """A guardrail blocked the answer: nothing the model says next goes out."""

    def check(self, chunk: JsonObject, redact: bool = True) -> None:
        """Redact `chunk` in place (unless the caller redacts what it sends itself: `redact`); raises
        `GuardrailBlocked` when the answer so far must not go on."""
        if redact:
            apply_guardrails(self._redacting, chunk, phase="response", route=self._route)
        if self._blocking:
            text = "".join((choice.get("delta") or {}).get("content") or "" for choice in chunk.get("choices") or ())
            if text:
                self._tail = (self._tail + text)[-WINDOW:]
                apply_guardrails(self._blocking, {"content": self._tail}, phase="response", route=self._route)


    def redact(self, document: object) -> bool:
        """Redact any document in place (an untranslated provider event); True if anything changed."""
        return bool(self._redacting) and apply_guardrails(self._redacting, document, phase="response",
                                                          route=self._route)


class StallTimer:
    """Ends a FULL_DUPLEX_STREAMED answer whose backend sent nothing for `timeout` seconds. Re-armed at every
    chunk; `abort` makes the bytes that close the stream with an error (`StreamRelay.abort`)."""

    __slots__ = ("_abort", "_backend", "_handle", "_push", "_timeout", "fired")

    def __init__(self, backend: str, timeout: float, push: Callable[[ProcessingResponse], None],
                 abort: Callable[[UpstreamTimeout], bytes]) -> None:
        self._backend = backend
        self._timeout = timeout
        self._push = push
        self._abort = abort
        self._handle: asyncio.TimerHandle | None = None
        self.fired = False
        """The stream was ended here: Envoy's later chunks are answered with nothing."""

    def arm(self) -> None:
        self.disarm()
        self._handle = asyncio.get_running_loop().call_later(self._timeout, self._stalled)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _stalled(self) -> None:
        self._handle = None
        error = UpstreamTimeout(f"Backend {self._backend!r} sent nothing for {self._timeout:g}s in the middle of the "
                                "stream; the stream was ended.", code="stream_idle_timeout")
        self.fired = True
        self._push(messages.streamed_body_reply(self._abort(error), True))
