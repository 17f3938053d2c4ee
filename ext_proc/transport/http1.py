"""A small asyncio HTTP/1.1 server for the demo providers and the MCP stdio bridge (`ext_proc/mcp_bridge.py`).

Just enough of RFC 9112 for fake upstreams behind Envoy and for SDK clients: keep-alive (and pipelining, since the
requests of a connection are served in order), request bodies framed by `content-length` or chunked transfer-encoding,
answers with a fixed length or chunked and flushed write by write (SSE), and optional TLS that records the SNI server
name the client sent. Malformed input is answered 400 and the connection closed; an oversized head 431, an oversized
body 413.

Runs on the default asyncio loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Above what real providers accept for one request (Anthropic 32 MB): the gateway's own limits are what tests probe."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_VERSIONS = ("HTTP/1.1", "HTTP/1.0")

_log = logging.getLogger(__name__)

Headers = Iterable[tuple[str, str]]


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    """Lower-cased names; a repeated header's values are joined with ", "."""
    body: bytes
    sni: str | None
    """The server name the client asked for in its TLS hello, None without TLS or SNI."""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


Handler = Callable[[Request, "Response"], Awaitable[None]]


class HttpError(Exception):
    """A request the server refuses before any handler sees it; answered as plain text, then the connection closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Response:
    """The answer to one request: either `send` once, or `start`, any number of `write`s and `end`; or `abort`."""

    def __init__(self, writer: asyncio.StreamWriter, keep_alive: bool, head_only: bool) -> None:
        self._writer = writer
        self._head_only = head_only
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False

    async def send(self, status: int, headers: Headers = (), body: bytes = b"") -> None:
        head = self._head(status, [*headers, ("content-length", str(len(body)))])
        self._writer.write(head if self._head_only else head + body)
        self.finished = True
        await self._writer.drain()

    async def start(self, status: int, headers: Headers = ()) -> None:
        """Send the head of a chunked answer; each `write` then goes out as one chunk, flushed."""
        self._writer.write(self._head(status, [*headers, ("transfer-encoding", "chunked")]))
        await self._writer.drain()

    async def write(self, data: bytes) -> None:
        if data and not self._head_only:
            self._writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            await self._writer.drain()

    async def end(self) -> None:
        if not self._head_only:
            self._writer.write(b"0\r\n\r\n")
        self.finished = True
        await self._writer.drain()

    def abort(self) -> None:
        """Drop the TCP connection at once (RST), whatever was or was not sent."""
        self.keep_alive = False
        self.finished = True
        self._writer.transport.abort()

    def _head(self, status: int, headers: Headers) -> bytes:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        for name, value in headers:
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} holds a line break")
            lines.append(f"{name}: {value}")
        if not self.keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Serves `handler` on one listening socket; `close` also ends every open connection."""

    def __init__(self, handler: Handler, *, max_head_bytes: int, max_body_bytes: int) -> None:
        self._handler = handler
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._sni: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        if ssl_context is not None:
            self._record_sni(ssl_context)
        self._server = await asyncio.start_server(
            self._connection, host, port, ssl=ssl_context, limit=self._max_head, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))
        await self._server.wait_closed()

    def _record_sni(self, context: ssl.SSLContext) -> None:
        """Wrap the context's SNI callback so each TLS connection's requested server name can be looked up."""
        previous = context.sni_callback
        names = self._sni

        def remember(ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> int | None:
            if server_name is not None:
                names[ssl_object] = server_name
            # typeshed's sni_callback takes a str name; ssl passes None when the client sends no SNI
            return previous(ssl_object, server_name, ctx) if previous is not None else None  # type: ignore[arg-type]

        context.sni_callback = remember

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        ssl_object = writer.get_extra_info("ssl_object")
        sni = self._sni.get(ssl_object) if ssl_object is not None else None
        try:
            await self._serve(reader, writer, sni)
        except HttpError as exc:
            await _refuse(writer, exc)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # `close` ended this connection; the task has nothing left to clean up
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sni: str | None) -> None:
        while True:
            head = await _read_head(reader)
            if head is None:
                return
            method, target, version, headers = _parse_head(head)
            body = await _read_body(reader, writer, version, headers, self._max_body)
            request = Request(method, target, version, headers, body, sni)
            response = Response(writer, _keep_alive(version, headers), head_only=method == "HEAD")
            try:
                await self._handler(request, response)
            except Exception:
                _log.exception("demo handler failed on %s %s", method, target)
                if not response.started:
                    response.keep_alive = False
                    await response.send(500, [("content-type", "text/plain")], b"internal error\n")
                return
            if not response.finished:
                response.keep_alive = False
                if not response.started:
                    await response.send(500, [("content-type", "text/plain")], b"handler sent no answer\n")
                return
            if not response.keep_alive:
                return


async def start_http_server(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_head_bytes: int = MAX_HEAD_BYTES,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> HttpServer:
    """Listen on host:port (0 picks a free port). With `ssl_context`, its `sni_callback` is wrapped to record SNI."""
    server = HttpServer(handler, max_head_bytes=max_head_bytes, max_body_bytes=max_body_bytes)
    await server.start(host, port, ssl_context)
    return server


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The request line and headers, or None when the client closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    # A client may send stray CRLFs between keep-alive requests (RFC 9112 section 2.2).
    return head.lstrip(b"\r\n")


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line")
    try:
        method, target, version = (part.decode("ascii") for part in parts)
    except UnicodeDecodeError:
        raise HttpError(400, "request line is not ASCII") from None
    if version not in _VERSIONS or not target.isprintable():
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return method, target, version, headers


async def _read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: str, headers: dict[str, str], limit: int
) -> bytes:
    encoding = headers.get("transfer-encoding")
    length_text = headers.get("content-length")
    if encoding is not None:
        if length_text is not None:
            raise HttpError(400, "both content-length and transfer-encoding")
        if encoding.lower() != "chunked":
            raise HttpError(501, f"unsupported transfer-encoding {encoding}")
        _send_continue(writer, version, headers)
        return await _read_chunked(reader, limit)
    if length_text is None:
        return b""
    if not (length_text.isascii() and length_text.isdigit()):
        raise HttpError(400, "malformed content-length")
    length = int(length_text)
    if length > limit:
        raise HttpError(413, "request body too large")
    if length:
        _send_continue(writer, version, headers)
    return await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_text = (await _read_line(reader)).split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise HttpError(400, "malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        total += size
        if total > limit:
            raise HttpError(413, "request body too large")
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")
    trailer_bytes = 0
    while (line := await _read_line(reader)) != b"\r\n":
        trailer_bytes += len(line)
        if trailer_bytes > limit:
            raise HttpError(431, "trailers too large")
    return b"".join(parts)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(400, "line too long in chunked body") from None


def _send_continue(writer: asyncio.StreamWriter, version: str, headers: dict[str, str]) -> None:
    if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
    if version == "HTTP/1.1":
        return "close" not in tokens
    return "keep-alive" in tokens


async def _refuse(writer: asyncio.StreamWriter, error: HttpError) -> None:
    body = (error.message + "\n").encode()
    head = (
        f"HTTP/1.1 {error.status} {_reason(error.status)}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
    except ConnectionError:
        pass


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Unknown"
