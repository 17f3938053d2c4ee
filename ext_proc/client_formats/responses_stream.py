"""A streamed canonical answer (`chat.completion.chunk` dicts, and `{"error": ...}` dicts) -> the Responses API's
typed stream events, for clients of `POST /v1/responses` with `stream: true`.

The items, their ids and their order follow `responses_answer.from_openai`, whose docstring records the mapping
decisions; this module adds what only a stream has:

- `response.created` and `response.in_progress` go out with the first chunk (status in_progress, output []).
- Only one output item is open at a time: a new kind of content, or a new tool call index, closes the open one
  (`response.output_item.done`). A backend that interleaves the argument fragments of two parallel calls can't be
  carried (a closed item takes no more deltas): the stream fails rather than corrupt a call.
- Reasoning: `delta.reasoning_content` streams as summary text deltas only when the request asked for a summary;
  `delta.thinking_blocks` (Claude's signed blocks, sent when the backend's block ends) collect in the open reasoning
  item and go out in its `encrypted_content` at `output_item.done` (in the client's copy only when `include` lists
  it). A thinking block whose text did not stream before it counts as streamed text. Thinking after a tool call
  (Claude's interleaved thinking) opens a new reasoning item, so the items keep the order the model produced.
- A custom tool's input is the `input` string inside JSON arguments, so it can only be known whole: the arguments are
  buffered and one `response.custom_tool_call_input.delta` with the whole input precedes `.done`.
- End: the finish reason closes the open item; the usage chunk that follows (the gateway always asks for usage)
  sends `response.completed` or `response.incomplete`; without one, `finish()` sends it with usage null. An error
  chunk, or the stream ending before a finish reason, sends `response.failed` (with created/in_progress first when
  nothing went out yet). Nothing follows the end.
- Streamed chat logprobs go out on the text deltas; chat annotations have no streamed form here (chat backends that
  annotate are search models, which send them in whole answers).
"""

from __future__ import annotations

from ..json_types import JsonObject
from . import responses_common as common
from .responses_answer import (
    client_item,
    client_view,
    custom_input,
    finish_status,
    includes_encrypted_reasoning,
    output_logprobs,
    reasoning_item,
    response_envelope,
    response_error,
    summary_mode,
    thinking_blocks,
    tool_call_item,
    usage,
)

Event = tuple[str, JsonObject]

_CUT = "the backend's stream ended before its answer was complete"
_INTERLEAVED = "the backend interleaved the arguments of parallel tool calls, which a Responses stream can't carry"


class ResponsesStream:
    """Chat chunks in, Responses stream events out; `response` is the full final Response once the stream ended."""

    def __init__(self, request: JsonObject, *, response_id: str, created_at: int, model: str) -> None:
        self.finished = False
        self.response: JsonObject | None = None
        self._request = request
        self._envelope = response_envelope(request, response_id=response_id, created_at=created_at, model=model,
                                           status="in_progress")
        self._names = common.tool_names(request.get("tools"))
        self._summary = summary_mode(request) is not None
        self._include_encrypted = includes_encrypted_reasoning(request)
        self._sequence = 0
        self._started = False
        self._output: list[JsonObject] = []  # closed items, as stored
        self._open: tuple[str, object] | None = None  # ("reasoning" | "message" | "tool", tool call index or None)
        self._item: JsonObject = {}  # the open item as `output_item.added` sent it
        self._part: str | None = None  # the open message part's type (output_text | refusal)
        self._parts: list[JsonObject] = []  # the open message's closed parts
        self._pieces: list[str] = []  # the open part's text, summary text or tool arguments
        self._logprobs: list[JsonObject] = []
        self._blocks: list[JsonObject] = []  # the open reasoning item's signed blocks
        self._reasoning_streamed = False  # reasoning text since the last signed block
        self._tool_keys: set[object] = set()
        self._status: str | None = None
        self._incomplete: JsonObject | None = None
        self._usage: JsonObject | None = None

    def feed(self, chunk: JsonObject) -> list[Event]:
        """The events one chunk (or `{"error": ...}` dict) of the backend's stream makes."""
        if self.finished:
            return []
        events = [] if self._started else self._start()
        if isinstance(chunk.get("error"), dict):
            return events + self._fail(chunk["error"])
        choices = chunk.get("choices") or ()
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        if delta.get("reasoning_content"):
            events += self._reasoning_text(delta["reasoning_content"])
        if delta.get("thinking_blocks"):
            events += self._thinking(thinking_blocks(delta["thinking_blocks"]))
        if isinstance(delta.get("content"), str) and delta["content"]:
            events += self._text("output_text", delta["content"], choice.get("logprobs"))
        if isinstance(delta.get("refusal"), str) and delta["refusal"]:
            events += self._text("refusal", delta["refusal"], None)
        for fragment in delta.get("tool_calls") or ():
            events += self._tool_fragment(fragment)
            if self.finished:
                return events
        if choice.get("finish_reason") and self._status is None:
            self._status, self._incomplete = finish_status(choice["finish_reason"])
            events += self._close(self._status)
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage(chunk["usage"])
            if self._status is not None:
                events += self._end()
        return events

    def finish(self) -> list[Event]:
        """The backend's stream ended: complete the response; without a finish reason that is a failure."""
        if self.finished:
            return []
        events = [] if self._started else self._start()
        if self._status is None:
            return events + self._fail({"message": _CUT})
        return events + self._end()

    # --- events ----------------------------------------------------------------------------------------------------

    def _event(self, name: str, payload: JsonObject) -> Event:
        self._sequence += 1
        return name, {"type": name, "sequence_number": self._sequence - 1, **payload}

    def _item_event(self, name: str, payload: JsonObject) -> Event:
        """An event about the open item (its id and output index first)."""
        self._sequence += 1
        return name, {"type": name, "sequence_number": self._sequence - 1, "item_id": self._item["id"],
                      "output_index": len(self._output), **payload}

    def _start(self) -> list[Event]:
        self._started = True
        response = {**self._envelope, "output": [], "usage": None}
        return [self._event("response.created", {"response": response}),
                self._event("response.in_progress", {"response": response})]

    def _end(self) -> list[Event]:
        events = self._close(self._status or "completed")
        response = {**self._envelope, "status": self._status, "incomplete_details": self._incomplete,
                    "output": self._output, "usage": self._usage}
        self.response = response
        self.finished = True
        name = "response.completed" if self._status == "completed" else "response.incomplete"
        return [*events, self._event(name, {"response": client_view(response, self._request)})]

    def _fail(self, error: JsonObject) -> list[Event]:
        """End with `response.failed`: the open item closes as incomplete, the OpenAI `error` becomes the reason."""
        events = self._close("incomplete")
        response = {**self._envelope, "status": "failed", "error": response_error(error), "output": self._output,
                    "usage": self._usage}
        self.response = response
        self.finished = True
        return [*events, self._event("response.failed", {"response": client_view(response, self._request)})]

    # --- items -----------------------------------------------------------------------------------------------------

    def _open_item(self, kind: str, key: object, item: JsonObject) -> list[Event]:
        events = self._close()
        self._open, self._item = (kind, key), item
        self._pieces = []
        return [*events, self._event("response.output_item.added", {"output_index": len(self._output), "item": item})]

    def _close(self, status: str = "completed") -> list[Event]:
        """Close the open item: `completed`, or `incomplete` when the answer was cut in it."""
        if self._open is None:
            return []
        kind = self._open[0]
        if kind == "message":
            events = self._close_part()
            item: JsonObject = {**self._item, "status": status, "content": self._parts}
        elif kind == "reasoning":
            events, item = self._close_reasoning()
        else:
            events, item = self._close_tool(status)
        self._open = None
        self._output.append(item)
        done = client_item(item, self._include_encrypted)
        return [*events, self._event("response.output_item.done", {"output_index": len(self._output) - 1,
                                                                   "item": done})]

    def _reasoning_text(self, text: str) -> list[Event]:
        events = [] if self._open == ("reasoning", None) else self._open_reasoning()
        self._reasoning_streamed = True
        if not self._summary:
            return events
        if not self._pieces:
            events.append(self._item_event("response.reasoning_summary_part.added",
                                           {"summary_index": 0, "part": {"type": "summary_text", "text": ""}}))
        self._pieces.append(text)
        events.append(self._item_event("response.reasoning_summary_text.delta", {"summary_index": 0, "delta": text}))
        return events

    def _open_reasoning(self) -> list[Event]:
        self._blocks = []
        self._reasoning_streamed = False
        return self._open_item("reasoning", None, {"id": common.new_id("rs"), "type": "reasoning", "summary": []})

    def _thinking(self, blocks: list[JsonObject]) -> list[Event]:
        events: list[Event] = []
        for block in blocks:
            if block["type"] == "thinking" and block["thinking"] and (
                    self._open != ("reasoning", None) or not self._reasoning_streamed):
                events += self._reasoning_text(block["thinking"])
            elif self._open != ("reasoning", None):
                events += self._open_reasoning()
            self._blocks.append(block)
            self._reasoning_streamed = False
        return events

    def _close_reasoning(self) -> tuple[list[Event], JsonObject]:
        text = "".join(self._pieces)
        events = []
        if text:
            part = {"type": "summary_text", "text": text}
            events = [self._item_event("response.reasoning_summary_text.done", {"summary_index": 0, "text": text}),
                      self._item_event("response.reasoning_summary_part.done", {"summary_index": 0, "part": part})]
        return events, reasoning_item(self._item["id"], text, self._blocks)

    def _text(self, part_type: str, text: str, logprobs: object) -> list[Event]:
        events: list[Event] = []
        if self._open != ("message", None):
            events = self._open_item("message", None, {"id": common.new_id("msg"), "type": "message",
                                                       "status": "in_progress", "content": [], "role": "assistant"})
            self._parts, self._part = [], None
        if self._part != part_type:
            events += self._open_part(part_type)
        self._pieces.append(text)
        if part_type == "refusal":
            events.append(self._item_event("response.refusal.delta", {"content_index": len(self._parts),
                                                                      "delta": text}))
            return events
        mapped = output_logprobs(logprobs) if logprobs else []
        if mapped:
            self._logprobs += mapped
        events.append(self._item_event("response.output_text.delta", {"content_index": len(self._parts),
                                                                      "delta": text,
                                                                      "logprobs": _event_logprobs(mapped)}))
        return events

    def _open_part(self, part_type: str) -> list[Event]:
        events = self._close_part()
        self._part, self._pieces, self._logprobs = part_type, [], []
        part = ({"type": "refusal", "refusal": ""} if part_type == "refusal"
                else {"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        return [*events, self._item_event("response.content_part.added", {"content_index": len(self._parts),
                                                                           "part": part})]

    def _close_part(self) -> list[Event]:
        if self._part is None:
            return []
        text = "".join(self._pieces)
        index = len(self._parts)
        if self._part == "refusal":
            part: JsonObject = {"type": "refusal", "refusal": text}
            done = self._item_event("response.refusal.done", {"content_index": index, "refusal": text})
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self._logprobs}
            done = self._item_event("response.output_text.done", {"content_index": index, "text": text,
                                                                  "logprobs": _event_logprobs(self._logprobs)})
        self._part = None
        self._parts.append(part)
        return [done, self._item_event("response.content_part.done", {"content_index": index, "part": part})]

    def _tool_fragment(self, fragment: JsonObject) -> list[Event]:
        key = fragment.get("index", 0)
        function = fragment.get("function") or {}
        events: list[Event] = []
        if self._open != ("tool", key):
            if key in self._tool_keys:
                return self._fail({"message": _INTERLEAVED})
            self._tool_keys.add(key)
            item = tool_call_item(fragment.get("id"), function.get("name"), "", self._names, "in_progress")
            events = self._open_item("tool", key, item)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._pieces.append(arguments)
            if self._item["type"] == "function_call":
                events.append(self._item_event("response.function_call_arguments.delta", {"delta": arguments}))
        return events

    def _close_tool(self, status: str) -> tuple[list[Event], JsonObject]:
        arguments = "".join(self._pieces)
        if self._item["type"] == "function_call":
            return ([self._item_event("response.function_call_arguments.done", {"arguments": arguments})],
                    {**self._item, "status": status, "arguments": arguments})
        text = custom_input(arguments)
        return ([self._item_event("response.custom_tool_call_input.delta", {"delta": text}),
                 self._item_event("response.custom_tool_call_input.done", {"input": text})],
                {**self._item, "input": text})


def _event_logprobs(logprobs: list[JsonObject]) -> list[JsonObject]:
    """An `output_text` part's logprobs in the shape the text delta and done events carry (no bytes)."""
    return [{"token": entry["token"], "logprob": entry["logprob"],
             "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]} for top in entry["top_logprobs"]]}
            for entry in logprobs]
