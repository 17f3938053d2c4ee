"""A scripted OpenAI Responses server on loopback that records what real clients send (Codex CLI, the Agents SDK).

It stands where the gateway will stand, so the harnesses (`codex_cli.py`, `agents_sdk.py`) can be checked against
the clients themselves, and the request bodies they send can be captured as fixtures
(`tests/fixtures/responses_client/captured_*.json`).

Decisions worth knowing before changing this file:
- Every request is recorded (method, path, headers, JSON body) before it is answered, whatever its path. A
  `POST .../responses` takes the next turn of the script; any other path gets an OpenAI-style 404, so a client that
  calls e.g. `GET /v1/models` shows up in `requests` without being fed a made-up answer.
- A turn is a list of output items (`message`, `function_call`, `custom_tool_call`, `reasoning`, built by the helpers
  below). A streamed request (`"stream": true`) gets the event sequence the real API sends: `response.created`,
  `response.in_progress`, per item `response.output_item.added` ... (content part and text deltas, argument or
  custom input deltas, reasoning summary parts) ... `response.output_item.done`, and `response.completed` carrying
  the whole response with `usage`. Each event
  is validated against the installed openai SDK's `ResponseStreamEvent` union before it is sent, so a shape the SDK
  does not know fails here, not as a puzzling client error.
- A request past the end of the script gets a 400 (`script_exhausted`): clients do not retry 4xx, so a loop that
  asks for more turns than the test planned ends at once and visibly.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pydantic
from openai.types.responses import Response, ResponseStreamEvent

Item = dict[str, Any]
Turn = Sequence[Item]

_EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
_USAGE = {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
          "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 132}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived (the body is not decompressed: Codex and the openai SDK send plain JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: Any
    """The parsed JSON body; the raw text if it was not JSON; None if there was none."""


# -- output items ----------------------------------------------------------------------------------------------------


def message_item(text: str) -> Item:
    """An assistant message with one `output_text` part."""
    return {"type": "message", "id": _id("msg_"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_call_item(name: str, arguments: dict[str, Any] | str, *, call_id: str | None = None,
                       namespace: str | None = None) -> Item:
    """A call to function tool `name` (in `namespace`, for tools sent inside a `namespace` tool)."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    item = {"type": "function_call", "id": _id("fc_"), "call_id": call_id or _id("call_"), "name": name,
            "arguments": text, "status": "completed"}
    return item | ({"namespace": namespace} if namespace else {})


def custom_tool_call_item(name: str, text: str, *, call_id: str | None = None) -> Item:
    """A call to `custom` (free-form) tool `name` with input `text`, e.g. Codex's `apply_patch`."""
    return {"type": "custom_tool_call", "id": _id("ctc_"), "call_id": call_id or _id("call_"), "name": name,
            "input": text}


def reasoning_item(summary: str = "", *, encrypted_content: str | None = None) -> Item:
    """A reasoning item, with a summary and (as `include: ["reasoning.encrypted_content"]` asks) opaque content."""
    item: Item = {"type": "reasoning", "id": _id("rs_"),
                  "summary": [{"type": "summary_text", "text": summary}] if summary else []}
    return item | ({"encrypted_content": encrypted_content} if encrypted_content is not None else {})


# -- responses and their event streams -------------------------------------------------------------------------------


def response_object(request: dict[str, Any], items: Turn, *, status: str = "completed",
                    response_id: str | None = None) -> dict[str, Any]:
    """The `response` object answering `request` with `items`, validated against the SDK's `Response`."""
    done = status == "completed"
    body = {"id": response_id or _id("resp_"), "object": "response", "created_at": int(time.time()),
            "status": status, "model": request.get("model") or "unknown", "output": list(items) if done else [],
            "parallel_tool_calls": bool(request.get("parallel_tool_calls", True)),
            "tool_choice": request.get("tool_choice") or "auto", "tools": request.get("tools") or [],
            "usage": _USAGE if done else None, "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"), "metadata": {}, "temperature": None, "top_p": None,
            "store": request.get("store", True), "previous_response_id": request.get("previous_response_id"),
            "reasoning": request.get("reasoning"), "prompt_cache_key": request.get("prompt_cache_key")}
    Response.model_validate(body)
    return body


def stream_events(request: dict[str, Any], items: Turn) -> list[dict[str, Any]]:
    """The events of a streamed response producing `items`, in the order the API sends them, numbered."""
    response_id = _id("resp_")
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response_object(request, items, status="in_progress",
                                                                 response_id=response_id)},
        {"type": "response.in_progress", "response": response_object(request, items, status="in_progress",
                                                                     response_id=response_id)}]
    for index, item in enumerate(items):
        events.extend(_item_events(index, item))
    events.append({"type": "response.completed", "response": response_object(request, items,
                                                                              response_id=response_id)})
    numbered = [event | {"sequence_number": number} for number, event in enumerate(events)]
    for event in numbered:
        _EVENTS.validate_python(event)
    return numbered


def _item_events(index: int, item: Item) -> Iterator[dict[str, Any]]:
    where = {"output_index": index}
    yield {"type": "response.output_item.added", **where, "item": _in_progress(item)}
    if item["type"] == "message":
        yield from _text_events(where | {"item_id": item["id"]}, item["content"][0])
    elif item["type"] == "function_call":
        for piece in _fragments(item["arguments"]):
            yield {"type": "response.function_call_arguments.delta", **where, "item_id": item["id"], "delta": piece}
        yield {"type": "response.function_call_arguments.done", **where, "item_id": item["id"],
               "arguments": item["arguments"]}
    elif item["type"] == "custom_tool_call":
        for piece in _fragments(item["input"]):
            yield {"type": "response.custom_tool_call_input.delta", **where, "item_id": item["id"], "delta": piece}
        yield {"type": "response.custom_tool_call_input.done", **where, "item_id": item["id"], "input": item["input"]}
    elif item["type"] == "reasoning":
        for summary_index, part in enumerate(item["summary"]):
            yield from _summary_events(where | {"item_id": item["id"], "summary_index": summary_index}, part)
    yield {"type": "response.output_item.done", **where, "item": item}


def _text_events(where: dict[str, Any], part: dict[str, Any]) -> Iterator[dict[str, Any]]:
    at = where | {"content_index": 0}
    yield {"type": "response.content_part.added", **at, "part": part | {"text": ""}}
    for piece in _fragments(part["text"]):
        yield {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
    yield {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []}
    yield {"type": "response.content_part.done", **at, "part": part}


def _summary_events(where: dict[str, Any], part: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield {"type": "response.reasoning_summary_part.added", **where, "part": part | {"text": ""}}
    yield {"type": "response.reasoning_summary_text.delta", **where, "delta": part["text"]}
    yield {"type": "response.reasoning_summary_text.done", **where, "text": part["text"]}
    yield {"type": "response.reasoning_summary_part.done", **where, "part": part}


def _in_progress(item: Item) -> Item:
    if item["type"] == "message":
        return item | {"status": "in_progress", "content": []}
    if item["type"] == "function_call":
        return item | {"status": "in_progress", "arguments": ""}
    if item["type"] == "custom_tool_call":
        return item | {"input": ""}
    if item["type"] == "reasoning":
        return item | {"summary": []}
    return item


def _fragments(text: str, count: int = 3) -> list[str]:
    size = max(1, -(-len(text) // count))
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# -- the server ------------------------------------------------------------------------------------------------------


class ResponsesRecorder:
    """A Responses endpoint at `base_url` (`http://127.0.0.1:<port>/v1`) answering `POST /v1/responses` from
    `script`, one turn per request, and recording every request in `requests`. Use as a context manager."""

    def __init__(self, script: Sequence[Turn]) -> None:
        self.script = list(script)
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """The `POST .../responses` requests, oldest first."""
        return [request for request in self.requests if _is_model_request(request)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> ResponsesRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, request: RecordedRequest) -> tuple[bool, Turn | None]:
        """Keep `request`: is it a model request, and the turn that answers it if the script has one left."""
        with self._lock:
            self.requests.append(request)
            if not _is_model_request(request):
                return False, None
            answered = len(self.model_requests) - 1
            return True, self.script[answered] if answered < len(self.script) else None


def _handler(recorder: ResponsesRecorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            request = RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                      _parse(self.rfile.read(int(self.headers.get("content-length") or 0))))
            is_model, turn = recorder._record(request)
            if not is_model:
                self._json(404, _error(f"no route for {self.command} {self.path}", "not_found"))
            elif turn is None or not isinstance(request.body, dict):
                self._json(400, _error("the recorder's script has no turn left for this request",
                                       "script_exhausted"))
            else:
                self._turn(request.body, turn)

        def _turn(self, body: dict[str, Any], turn: Turn) -> None:
            try:
                events = stream_events(body, turn) if body.get("stream") else None
                answer = response_object(body, turn)
            except pydantic.ValidationError as exc:  # a bad script: a 400, which clients do not retry
                self._json(400, _error(f"the recorder built an invalid answer: {exc}", "recorder_error"))
            else:
                self._sse(events) if events is not None else self._json(200, answer)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _sse(self, events: list[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            for event in events:
                self.wfile.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _is_model_request(request: RecordedRequest) -> bool:
    return request.method == "POST" and request.path.split("?")[0].endswith("/responses")


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
