"""What watches a streamed answer while it flows: the route's response guardrails, and the backend's idle limit.

Both act on an answer the client already partly has, so neither can refuse it as a whole: a guardrail that blocks
ends the stream with an error chunk and drops whatever the model says next; a backend that stalls past its
`stream_idle_timeout` gets the stream ended for it, with an error event the SDKs raise (no other backend may take
over half an answer).

Holding back. Each streamed text (a choice's content, reasoning, refusal, each tool call's arguments; in an
Anthropic or Responses stream each content block's text, thinking or tool input) is a channel. The guard keeps the
last `WINDOW` characters of every channel (more for a longer deny word) unsent, and a find that reaches into them
whole, so an email or a card split over chunks is found and redacted before any of it goes out, and a phrase a
`block` guardrail looks for is caught before it is sent. What is held goes out when more text pushes it past the
window, when another channel of the same answer starts (reasoning, then text, then a tool call), and at the end of
the channel (a finish reason, a content block's stop, a Responses `.done` event) or of the stream. The cost is
latency on text, never on the stream's end: a token reaches the client at most `WINDOW + BATCH` characters (80, about
20 tokens) later than the model wrote it, and the last of it with the finish. A blocking guardrail also looks back over
`CONTEXT` characters already sent, so a pattern longer than the window is still caught (after part of it was sent).

Provider streams relayed untranslated (`PassthroughRelay`, `ResponsesPassthroughRelay`) are held the same way, on the
client's own events (`anthropic_event`, `responses_event`): a text delta event goes out carrying the text released
by it (or not at all while everything is held), and what is held goes out as one more delta event of the same
block just before the block's stop or `.done` event. Every other event is forwarded in order, redacted whole.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from ..errors import UpstreamTimeout
from ..guardrails.engine import Find, Guardrail, blocked_error, redact, report
from ..guardrails.engine import apply as apply_guardrails
from ..guardrails.normalize import Normalized, normalize
from ..json_types import JsonObject
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages

WINDOW = 64
"""Characters of each streamed text held back (normalised): the longest card, IBAN or phone number with separators,
and all but the longest emails, fit in it."""
BATCH = 16
"""Characters a channel takes beyond the window before it is scanned and released down to the window: text is
scanned about once per `BATCH` characters, not once per chunk (a chunk is often a token of a few characters)."""
CONTEXT = 256
"""Characters already sent that a blocking guardrail looks back over, with the held ones."""
_CHAT_FIELDS = ("reasoning_content", "content", "refusal")
"""A chat chunk delta's text fields, in the order the client formats read them."""
_ANTHROPIC_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
_RESPONSES_TEXT = frozenset({"response.output_text", "response.refusal", "response.function_call_arguments",
                             "response.reasoning_summary_text", "response.reasoning_text",
                             "response.custom_tool_call_input", "response.mcp_call_arguments",
                             "response.code_interpreter_call_code"})
"""Responses stream events whose `.delta` events carry text (and whose `.done` event ends it)."""
Event = tuple[str, JsonObject]
Key = tuple[object, ...]


class StreamGuard:
    """The route's answer guardrails over one stream: each channel's text held back by the window, redacted and
    checked as it is released."""

    __slots__ = ("_blocking", "_deltas", "_guardrails", "_held", "_key_id", "_last", "_route", "_seen", "_template",
                 "_window", "blocked")

    def __init__(self, guardrails: tuple[Guardrail, ...], route: str, key_id: str = "") -> None:
        self._guardrails = guardrails
        self._blocking = any(g.mode == "block" for g in guardrails)
        self._route = route
        self._key_id = key_id
        self._window = max(WINDOW, max((g.longest_deny_word for g in guardrails), default=0) + 1)
        self._held: dict[Key, str] = {}
        """Per channel, text not sent yet (the client's own characters)."""
        self._seen: dict[Key, str] = {}
        """Per channel, the last `CONTEXT` normalised characters sent (for blocking guardrails only)."""
        self._last: dict[object, Key] = {}
        """Per choice (or content block owner), the channel that last got text."""
        self._template: JsonObject = {}
        """The identifying fields of the last chat chunk, for a chunk that only carries what was held."""
        self._deltas: dict[Key, JsonObject] = {}
        """Per Responses channel, its last `.delta` event, for the one that carries what was held."""
        self.blocked = False
        """A guardrail blocked the answer: nothing the model says next goes out."""

    # -- channels -------------------------------------------------------------------------------------------------

    def feed(self, key: Key, text: str) -> str:
        """Take the next piece of a channel's text; what of the channel may go out now, redacted. Raises
        `GuardrailBlocked` when a blocking guardrail finds something in what is held (or was just sent)."""
        held = self._held.get(key, "") + text
        if len(held) < self._window + BATCH:
            self._held[key] = held
            return ""
        copy = normalize(held)
        found = self._finds(key, copy.text)
        cut = len(copy.text) - self._window
        for _, (_, (start, end)) in reversed(found):  # a find reaching into the window is held whole (and one
            if start < cut < end:                       # overlapping that find, from another guardrail)
                cut = start
        if cut <= 0:
            self._held[key] = held
            return ""
        at = copy.offset(cut, len(held))
        self._held[key] = held[at:]
        if self._blocking:
            self._seen[key] = (self._seen.get(key, "") + copy.text[:cut])[-CONTEXT:]
        released = [item for item in found if item[1][1][1] <= cut]
        return self._release(held[:at], copy, released) if released else held[:at]

    def flush(self, key: Key) -> str:
        """All a channel holds, redacted: its text ended (or another began)."""
        held = self._held.pop(key, "")
        if not held:
            return ""
        copy = normalize(held)
        found = self._finds(key, copy.text)
        return self._release(held, copy, found) if found else held

    def _finds(self, key: Key, text: str) -> list[tuple[int, Find]]:
        """(guardrail index, find) for the redacting and logging guardrails' finds in `text`, in text order; raises
        for a blocking guardrail's find in it or in the channel's last sent characters before it."""
        found: list[tuple[int, Find]] = []
        for index, guardrail in enumerate(self._guardrails):
            if guardrail.mode == "block":
                hits = guardrail.finds(self._seen.get(key, "") + text)
                if hits:
                    self._raise(index, hits)
            else:
                found.extend((index, find) for find in guardrail.finds(text))
        found.sort(key=lambda item: item[1][1][0])
        return found

    def _release(self, text: str, copy: Normalized, found: list[tuple[int, Find]]) -> str:
        """`text` redacted for the finds in it; each find audited as it goes out."""
        counts: list[Counter[str]] = [Counter() for _ in self._guardrails]
        for index, (kind, _) in found:
            counts[index][kind] += 1
        report(self._guardrails, counts, phase="response", route=self._route, key_id=self._key_id)
        spans = [find for index, find in found if self._guardrails[index].mode == "redact"]
        return redact(text, copy, spans) if spans else text

    def _raise(self, index: int, hits: list[Find]) -> None:
        counts: list[Counter[str]] = [Counter() for _ in self._guardrails]
        counts[index].update(kind for kind, _ in hits)
        report(self._guardrails, counts, phase="response", route=self._route, key_id=self._key_id)
        raise blocked_error(self._guardrails[index], counts[index], "response")

    def _switch(self, owner: object, key: Key) -> Key | None:
        """`key` now gets text: the channel of the same owner that had it before, if another."""
        previous = self._last.get(owner)
        self._last[owner] = key
        return previous if previous is not None and previous != key and previous in self._held else None

    def holding(self) -> bool:
        return any(self._held.values())

    def redact(self, document: object) -> bool:
        """Redact and check any whole document in place (an event that carries no streamed text); True if
        anything changed."""
        return apply_guardrails(self._guardrails, document, phase="response", route=self._route,
                                key_id=self._key_id)

    # -- OpenAI chat chunks ---------------------------------------------------------------------------------------

    def check(self, chunk: JsonObject) -> None:
        """Hold back and redact a chat chunk's texts in place (what was held goes out with a finish reason); raises
        `GuardrailBlocked` when the answer so far must not go on."""
        for name in ("id", "object", "created", "model"):
            if name in chunk:
                self._template[name] = chunk[name]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            index = choice.get("index", 0)
            out: dict[Key, list[str]] = {}
            """Per channel, what of its text this chunk carries, in order."""
            if isinstance(delta, dict):
                self._check_delta(index, delta, out)
            if choice.get("finish_reason"):
                for key in [key for key in self._held if key[0] == index]:
                    out.setdefault(key, []).append(self.flush(key))
            if out:
                _write(choice.setdefault("delta", {}) if not isinstance(delta, dict) else delta, out)

    def _check_delta(self, index: object, delta: JsonObject, out: dict[Key, list[str]]) -> None:
        for field in _CHAT_FIELDS:
            value = delta.get(field)
            if isinstance(value, str) and value:
                self._to_channel(index, (index, field), value, out)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            arguments = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(arguments, str) and arguments:
                self._to_channel(index, (index, "tool", call.get("index", 0)), arguments, out)
        if delta.get("thinking_blocks"):  # whole signed blocks, their text streamed as reasoning: all of it first
            key = (index, "reasoning_content")
            if key in self._held:
                out.setdefault(key, []).append(self.flush(key))
            self.redact({"thinking_blocks": delta["thinking_blocks"]})

    def _to_channel(self, index: object, key: Key, text: str, out: dict[Key, list[str]]) -> None:
        previous = self._switch(index, key)
        if previous is not None:
            out.setdefault(previous, []).append(self.flush(previous))
        out.setdefault(key, []).append(self.feed(key, text))

    def leftover(self) -> JsonObject | None:
        """A chunk with everything still held (a stream that ended without a finish reason), or None."""
        if not self.holding():
            return None
        choices: dict[object, dict[Key, list[str]]] = {}
        for key in list(self._held):
            choices.setdefault(key[0], {})[key] = [self.flush(key)]
        deltas: dict[object, JsonObject] = {index: {} for index in choices}
        for index, out in choices.items():
            _write(deltas[index], out)
        return {**self._template, "choices": [{"index": index, "delta": delta, "finish_reason": None}
                                              for index, delta in deltas.items()]}

    # -- client events relayed untranslated -----------------------------------------------------------------------

    def anthropic_event(self, name: str, event: JsonObject) -> list[Event]:
        """The Anthropic Messages events to send for one the provider sent: a text delta carrying what is released
        (none while all is held); before a block's stop, or the message's end, a delta with what the block held."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            field = _ANTHROPIC_DELTAS.get(str(delta.get("type"))) if isinstance(delta, dict) else None
            if field is not None and isinstance(delta, dict) and isinstance(delta.get(field), str):
                key: Key = (event.get("index"), delta["type"])
                out = self._anthropic_switch(key)
                delta[field] = self.feed(key, delta[field])
                return [*out, (name, event)] if delta[field] else out
            if isinstance(delta, dict) and delta.get("type") == "signature_delta":
                return [*self._anthropic_flush(lambda key: key[0] == event.get("index")), (name, event)]
        elif kind == "content_block_stop":
            return [*self._anthropic_flush(lambda key: key[0] == event.get("index")), (name, event)]
        elif kind in ("message_delta", "message_stop"):
            return [*self._anthropic_flush(lambda key: True), (name, event)]
        self.redact(event)
        return [(name, event)]

    def anthropic_leftover(self) -> list[Event]:
        """Delta events with everything still held (a stream that ended before its blocks' stops)."""
        return self._anthropic_flush(lambda key: True)

    def _anthropic_switch(self, key: Key) -> list[Event]:
        previous = self._switch("message", key)
        return self._anthropic_flush(lambda held: held == previous) if previous is not None else []

    def _anthropic_flush(self, which: Callable[[Key], bool]) -> list[Event]:
        out: list[Event] = []
        for key in [key for key in self._held if which(key)]:
            text = self.flush(key)
            if text:
                kind = str(key[1])
                out.append(("content_block_delta", {"type": "content_block_delta", "index": key[0],
                                                    "delta": {"type": kind, _ANTHROPIC_DELTAS[kind]: text}}))
        return out

    def responses_event(self, name: str, event: JsonObject) -> list[Event]:
        """The Responses events to send for one the provider sent: a `.delta` event carrying what is released (none
        while all is held); before its `.done` event, a `.delta` event with what was held. Others redacted whole."""
        kind = event.get("type")
        if not isinstance(kind, str):
            self.redact(event)
            return [(name, event)]
        family, _, end = kind.rpartition(".")
        if family in _RESPONSES_TEXT and end == "delta" and isinstance(event.get("delta"), str):
            key = _responses_key(family, event)
            out = self._responses_switch(key)
            event["delta"] = self.feed(key, event["delta"])
            self._deltas[key] = event
            return [*out, (name, event)] if event["delta"] else out
        if family in _RESPONSES_TEXT and end == "done":
            out = self._responses_flush(lambda key: key == _responses_key(family, event))
        elif family == "response" or kind.startswith("response.output_item."):
            out = self._responses_flush(lambda key: True)
        else:
            out = []
        self.redact(event)
        return [*out, (name, event)]

    def responses_leftover(self) -> list[Event]:
        """Delta events with everything still held (a stream that ended before its `.done` events)."""
        return self._responses_flush(lambda key: True)

    def _responses_switch(self, key: Key) -> list[Event]:
        previous = self._switch("response", key)
        return self._responses_flush(lambda held: held == previous) if previous is not None else []

    def _responses_flush(self, which: Callable[[Key], bool]) -> list[Event]:
        out: list[Event] = []
        for key in [key for key in self._held if which(key)]:
            text = self.flush(key)
            last = self._deltas.pop(key, None)
            if text and isinstance(last, dict):
                out.append((str(last["type"]), {**last, "delta": text}))
        return out


def _responses_key(family: str, event: JsonObject) -> Key:
    return (family, event.get("item_id"), event.get("output_index"), event.get("content_index"),
            event.get("summary_index"))


def _write(delta: JsonObject, out: dict[Key, list[str]]) -> None:
    """Put each channel's text for this chunk into its delta: a text field, or a tool call's arguments (a call
    the chunk does not name gets an entry of its own, before the calls it does)."""
    for key, parts in out.items():
        text = "".join(parts)
        if key[1] != "tool":
            delta[str(key[1])] = text
            continue
        calls = delta.setdefault("tool_calls", [])
        call = next((call for call in calls if isinstance(call, dict) and call.get("index", 0) == key[2]
                     and isinstance(call.get("function"), dict)), None)
        if call is not None:
            call["function"]["arguments"] = text
        elif text:
            calls.insert(0, {"index": key[2], "function": {"arguments": text}})


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
