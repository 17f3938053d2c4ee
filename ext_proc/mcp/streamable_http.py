"""The Streamable HTTP transport of MCP (revisions 2025-03-26 .. 2025-11-25), server side, over
`ext_proc.transport.http1`: shared by the demo MCP server (`demo/mcp_tools.py`) and the stdio bridge
(`ext_proc/mcp_bridge.py`).

What the spec asks and this does:
- POST carries one JSON-RPC message. A notification or a response is answered 202 with no body. A request is answered
  `application/json` when nothing precedes its response, or `text/event-stream` once a message related to it (a
  progress notification) comes first: then each message is one SSE event, the response last, and the stream ends.
- GET opens the session's stream of server-initiated messages (list_changed); a comment every `KEEPALIVE_SECONDS`
  finds dead connections. A session has one stream: a new GET ends the previous one (see `Outbox`), so no message
  goes out twice and none is lost to a connection that died unnoticed.
- Refusals carry a JSON-RPC error with `id: null`: a foreign `Origin` 403, a body that is not `application/json` 415,
  an `Accept` that can't take the answer 406, an unsupported `MCP-Protocol-Version` 400, a missing session 400, an
  unknown one 404. JSON-RPC batches (removed in 2025-06-18) are refused 400.
- No resumability: SSE events carry no ids, so a client never tries `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson

from ext_proc.mcp.server_protocol import INVALID_REQUEST, PARSE_ERROR, SUPPORTED_VERSIONS, Emit, Message, error_response
from ext_proc.transport.http1 import Headers, Request, Response

MCP_PATH = "/mcp"
SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
KEEPALIVE_SECONDS = 15.0
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))


class Refusal(Exception):
    """An HTTP-level refusal: `status` with a JSON-RPC error body (`code`, `message`, id null)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def sse_event(message: Message) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


async def send_json(response: Response, status: int, body: Message, headers: Headers = ()) -> None:
    await response.send(status, [("content-type", "application/json"), *headers], orjson.dumps(body))


async def send_refusal(response: Response, refusal: Refusal, headers: Headers = ()) -> None:
    await send_json(response, refusal.status, error_response(None, refusal.code, refusal.message), headers)


def check_headers(request: Request) -> None:
    """Raise Refusal for an `Origin`, `MCP-Protocol-Version`, `Content-Type` or `Accept` this endpoint can't serve."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).hostname not in _LOCAL_HOSTS:
        raise Refusal(403, INVALID_REQUEST, f"origin {origin} is not allowed")
    version = request.headers.get(VERSION_HEADER)
    if version is not None and version not in SUPPORTED_VERSIONS:
        raise Refusal(400, INVALID_REQUEST, f"unsupported MCP-Protocol-Version {version}; "
                                            f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    accept = request.headers.get("accept", "*/*")
    wanted = ("application/json", "text/event-stream") if request.method == "POST" else ("text/event-stream",)
    if "*/*" not in accept and not all(kind in accept for kind in wanted):
        raise Refusal(406, INVALID_REQUEST, f"Accept must list {' and '.join(wanted)}")
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            raise Refusal(415, INVALID_REQUEST, "Content-Type must be application/json")


def parse_message(body: bytes) -> Message:
    """The one JSON-RPC message of a POST body (its shape is checked later, by `kind_of`)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, PARSE_ERROR, f"parse error: {exc}") from None
    if isinstance(message, list):
        raise Refusal(400, INVALID_REQUEST, "JSON-RPC batches are not supported: send one message a POST")
    if not isinstance(message, dict):
        raise Refusal(400, INVALID_REQUEST, "the body must be one JSON-RPC message (an object)")
    return message


async def answer_request(response: Response, run: Callable[[Emit], Awaitable[Message]], headers: Headers = ()) -> None:
    """Answer a request with what `run(emit)` returns: JSON, or an SSE stream when `run` emits before returning."""
    related: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(run(related.put))
    try:
        await _answer(response, task, related, headers)
    except ConnectionError:
        response.abort()  # the client went away; the request is abandoned with it
    finally:
        task.cancel()


async def _answer(
    response: Response, task: asyncio.Future[Message], related: asyncio.Queue[Message], headers: Headers
) -> None:
    first = await _next_related(task, related)
    if first is None:
        await send_json(response, 200, task.result(), headers)
        return
    await response.start(200, [*_SSE_HEADERS, *headers])
    await response.write(sse_event(first))
    while (message := await _next_related(task, related)) is not None:
        await response.write(sse_event(message))
    await response.write(sse_event(task.result()))
    await response.end()


async def _next_related(task: asyncio.Future[Message], related: asyncio.Queue[Message]) -> Message | None:
    """The next emitted message, or None once `task` has finished and everything it emitted was taken."""
    while True:
        if not related.empty():
            return related.get_nowait()
        if task.done():
            return None
        getter = asyncio.ensure_future(related.get())
        try:
            await asyncio.wait((getter, task), return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
        finally:
            getter.cancel()


class Outbox:
    """The server-initiated messages of one session, waiting for its GET stream.

    A new GET stream replaces the previous one, which ends: a client that reconnects must not lose messages to a
    stream whose connection died without the server noticing (nothing is read from it). Messages that arrive while
    no stream is open wait, the newest `size` of them.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._backlog: deque[Message] = deque(maxlen=size)
        self._stream: asyncio.Queue[Message | None] | None = None

    def offer(self, message: Message) -> None:
        if self._stream is None:
            self._backlog.append(message)
        else:
            _put(self._stream, message)

    def close(self) -> None:
        """End the open stream, if any (the session is over)."""
        if self._stream is not None:
            _put(self._stream, None)
            self._stream = None

    def listen(self) -> asyncio.Queue[Message | None]:
        """A new stream; the previous one gives up what it has not sent yet and ends."""
        previous = self._stream
        if previous is not None:
            self.release(previous)
            _put(previous, None)
        stream: asyncio.Queue[Message | None] = asyncio.Queue(self._size)
        while self._backlog:
            stream.put_nowait(self._backlog.popleft())
        self._stream = stream
        return stream

    def release(self, stream: asyncio.Queue[Message | None]) -> None:
        """A stream ended: what it did not send waits for the next one."""
        if self._stream is stream:
            self._stream = None
            while not stream.empty():
                message = stream.get_nowait()
                if message is not None:
                    self._backlog.append(message)


async def stream_events(response: Response, outbox: Outbox, headers: Headers = ()) -> None:
    """The GET stream: each message of `outbox` as an SSE event until the session ends or another stream opens."""
    stream = outbox.listen()
    try:
        await _stream(response, stream, headers)
    except ConnectionError:
        response.abort()
    finally:
        outbox.release(stream)


async def _stream(response: Response, stream: asyncio.Queue[Message | None], headers: Headers) -> None:
    await response.start(200, [*_SSE_HEADERS, *headers])
    while True:
        try:
            message = await asyncio.wait_for(stream.get(), KEEPALIVE_SECONDS)
        except TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        if message is None:
            break
        await response.write(sse_event(message))
    await response.end()


def _put(stream: asyncio.Queue[Message | None], message: Message | None) -> None:
    """Queue a message; when a client doesn't read its stream, the oldest are dropped."""
    if stream.full():
        stream.get_nowait()
    stream.put_nowait(message)
