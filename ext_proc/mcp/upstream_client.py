"""A small client for one upstream Streamable HTTP MCP server, for the gateway's cold path: filling the catalog
(every list, every upstream page) and opening upstream sessions. Tool calls themselves go through Envoy, like model
attempts; this client is not on that path.

Decisions worth knowing before changing this file:
- Both protocol eras: a handshake revision (`2025-11-25` by default) sends `initialize`, keeps the server's
  `Mcp-Session-Id` (if it gives one) and confirms with `notifications/initialized`; the stateless revision
  (`2026-07-28`) sends no handshake, and puts the version and the gateway's (empty) client capabilities into each
  request's `params._meta`, mirrored by the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers.
- An answer may be `application/json` or `text/event-stream`; on a stream, notifications before the response are
  handed to `on_notification` (a `list_changed` seen there invalidates the catalog) and the response with our id
  ends the read. Anything else is `UpstreamError`.
- Bounded: the whole answer at most `max_bytes`, every upstream list at most `MAX_PAGES` pages and `MAX_ITEMS` items,
  and a cursor the server repeats ends the loop with an error (a server can't keep the gateway listing forever).
- Credentials come only from `headers` (built by the caller from the server's SecretRefs); nothing the client of the
  gateway sent is forwarded here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx
import orjson

from ..config.models import McpServer, SecretRef
from ..json_types import JsonObject
from ..streaming.sse import SSEDecoder, SSEError
from . import jsonrpc
from .protocol import (
    LATEST_HANDSHAKE_VERSION,
    LIST_METHODS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    METHOD_HEADER,
    NAME_BEARING,
    NAME_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    header_value,
    is_stateless,
)

MAX_PAGES = 1000
MAX_ITEMS = 100_000
CLIENT_INFO: JsonObject = {"name": "babelgate", "version": "1"}


class UpstreamError(Exception):
    """The upstream could not be reached, timed out, or answered something that is not an MCP answer."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class UpstreamRpcError(UpstreamError):
    """The upstream answered with a JSON-RPC error (passed to the client as it is)."""

    def __init__(self, error: JsonObject) -> None:
        super().__init__(f"upstream error {error.get('code')}: {error.get('message')}")
        self.error = error


@dataclass
class UpstreamSession:
    """What `open()` established: the version spoken, the upstream's session id (None: stateless, or a server that
    keeps no sessions), and its `initialize` answer (capabilities, serverInfo, instructions)."""

    version: str
    session_id: str | None = None
    server: JsonObject = field(default_factory=dict)


Notify = Callable[[JsonObject], None]


def credential_headers(server: McpServer, read: Callable[[SecretRef, str], str], where: str) -> dict[str, str]:
    """The headers the gateway adds for `server`, secrets read with `read` (`auth.credentials.read_secret` in the
    gateway; `where` is the server's YAML path, for messages): its `headers`, then `bearer` as `Authorization`."""
    headers = {name: read(ref, f"{where}.headers.{name}") for name, ref in server.headers.items()}
    if server.bearer is not None:
        headers["authorization"] = "Bearer " + read(server.bearer, f"{where}.bearer")
    return headers


class UpstreamClient:
    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 version: str = LATEST_HANDSHAKE_VERSION, max_bytes: int = 16 << 20,
                 client: httpx.AsyncClient | None = None, on_notification: Notify | None = None) -> None:
        self.url = url
        self.version = version
        self._headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
                         **{name.lower(): value for name, value in (headers or {}).items()}}
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self._on_notification = on_notification
        self._ids = itertools.count(1)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def open(self) -> UpstreamSession:
        """Start talking to the server: the handshake for a handshake revision, nothing for the stateless one."""
        if is_stateless(self.version):
            return UpstreamSession(self.version)
        params = {"protocolVersion": self.version, "capabilities": {}, "clientInfo": CLIENT_INFO}
        message_id = next(self._ids)
        response = await self._post(jsonrpc.request(message_id, "initialize", params), None, None)
        answer = await self._answer(response, message_id)
        version = answer.get("protocolVersion")
        if not isinstance(version, str):
            raise UpstreamError("the upstream's initialize answer names no protocolVersion")
        session = UpstreamSession(version, response.headers.get(SESSION_HEADER), answer)
        await self.notify(session, "notifications/initialized")
        return session

    async def close(self, session: UpstreamSession) -> None:
        """End an upstream session (`DELETE`); a server that does not allow it (405) or is gone is fine."""
        if session.session_id is None:
            return
        try:
            await self._client.delete(self.url, headers=self._session_headers(session))
        except httpx.HTTPError:
            return

    async def notify(self, session: UpstreamSession, method: str, params: JsonObject | None = None) -> None:
        response = await self._post(jsonrpc.notification(method, params), session, method)
        await response.aclose()
        if response.status_code not in (200, 202, 204):
            raise UpstreamError(f"the upstream refused {method}: HTTP {response.status_code}")

    async def request(self, session: UpstreamSession, method: str, params: JsonObject | None = None) -> JsonObject:
        """The `result` of one request; `UpstreamRpcError` when the server answers an error."""
        body = dict(params or {})
        if is_stateless(session.version):
            body["_meta"] = {**body.get("_meta", {}), META_PROTOCOL_VERSION: session.version,
                             META_CLIENT_CAPABILITIES: {}, META_CLIENT_INFO: CLIENT_INFO}
        message_id = next(self._ids)
        response = await self._post(jsonrpc.request(message_id, method, body), session, method, body)
        return await self._answer(response, message_id)

    async def list_all(self, session: UpstreamSession, method: str) -> list[JsonObject]:
        """Every item of a list method (`tools/list`, ...), following the upstream's cursors to the end."""
        key = LIST_METHODS[method]
        items: list[JsonObject] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = await self.request(session, method, {"cursor": cursor} if cursor is not None else None)
            found = page.get(key)
            if not isinstance(found, list):
                raise UpstreamError(f"the upstream's {method} answer has no {key!r} list")
            items += [item for item in found if isinstance(item, dict)]
            cursor = page.get("nextCursor")
            if cursor is None or cursor == "":
                return items
            if not isinstance(cursor, str) or cursor in seen or len(items) > MAX_ITEMS:
                raise UpstreamError(f"the upstream's {method} pagination does not end")
            seen.add(cursor)
        raise UpstreamError(f"the upstream's {method} has more than {MAX_PAGES} pages")

    async def listen(self, session: UpstreamSession) -> bool:
        """Read the server's own stream of messages (`GET`, a handshake revision's session) until it ends, handing
        notifications to `on_notification`. False when the server offers no such stream (405, or no session to
        listen on), True when a stream ran and ended (the caller listens again). `UpstreamError` when the server
        can't be reached. Idle waits are not bounded: the stream is quiet until something changes."""
        if is_stateless(session.version) or session.session_id is None:
            return False
        headers = {**self._session_headers(session), "accept": "text/event-stream"}
        request = self._client.build_request("GET", self.url, headers=headers,
                                             timeout=httpx.Timeout(self._timeout, read=None))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.url} could not be reached: {type(exc).__name__}") from None
        try:
            if response.status_code == 405:
                return False
            if response.status_code != 200:
                raise UpstreamError(f"the upstream's stream answered HTTP {response.status_code}")
            decoder = SSEDecoder(self._max_bytes)
            async for chunk in response.aiter_bytes():
                for event in decoder.feed(chunk):
                    self._notification(event.data)
            return True
        except (httpx.HTTPError, SSEError) as exc:
            raise UpstreamError(f"the upstream's stream broke: {type(exc).__name__}") from None
        finally:
            await response.aclose()

    # -- transport ---------------------------------------------------------------------------------------------

    def _session_headers(self, session: UpstreamSession | None) -> dict[str, str]:
        headers = dict(self._headers)
        if session is not None:
            headers[VERSION_HEADER] = session.version
            if session.session_id is not None:
                headers[SESSION_HEADER] = session.session_id
        return headers

    async def _post(self, body: bytes, session: UpstreamSession | None, method: str | None,
                    params: JsonObject | None = None) -> httpx.Response:
        headers = self._session_headers(session)
        if session is not None and method is not None and is_stateless(session.version):
            headers[METHOD_HEADER] = method
            named = NAME_BEARING.get(method)
            if named is not None and isinstance((params or {}).get(named), str):
                headers[NAME_HEADER] = header_value(params[named])  # type: ignore[index]
        request = self._client.build_request("POST", self.url, content=body, headers=headers)
        try:
            return await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamError(f"no answer from {self.url} within {self._timeout}s", timeout=True) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.url} could not be reached: {type(exc).__name__}") from None

    async def _answer(self, response: httpx.Response, message_id: int | None = None) -> JsonObject:
        """The result of the response to `message_id` (the only request in this exchange when None)."""
        try:
            if response.status_code != 200:
                raise UpstreamError(f"the upstream answered HTTP {response.status_code}")
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "text/event-stream":
                return await self._from_stream(response, message_id)
            if kind == "application/json":
                return _result(await self._read(response), message_id)
            raise UpstreamError(f"the upstream answered {kind or 'no content type'}, not JSON or SSE")
        except httpx.TimeoutException:
            raise UpstreamError(f"no answer from {self.url} within {self._timeout}s", timeout=True) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"reading {self.url}'s answer failed: {type(exc).__name__}") from None
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise UpstreamError(f"the upstream's answer is larger than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _from_stream(self, response: httpx.Response, message_id: int | None) -> JsonObject:
        decoder = SSEDecoder(self._max_bytes)
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_bytes:
                    raise UpstreamError(f"the upstream's answer is larger than {self._max_bytes} bytes")
                for event in decoder.feed(chunk):
                    answer = self._event(event.data, message_id)
                    if answer is not None:
                        return answer
            for event in decoder.finish():
                answer = self._event(event.data, message_id)
                if answer is not None:
                    return answer
        except SSEError as exc:
            raise UpstreamError(f"the upstream's event stream is malformed: {exc}") from None
        raise UpstreamError("the upstream's event stream ended without an answer")

    def _notification(self, data: bytes) -> None:
        """An event of the server's own stream: notifications go to `on_notification`, anything else is ignored."""
        try:
            message = orjson.loads(data) if data.strip() else None
        except orjson.JSONDecodeError:
            return
        if isinstance(message, dict) and "method" in message and "id" not in message and self._on_notification:
            self._on_notification(message)

    def _event(self, data: bytes, message_id: int | None) -> JsonObject | None:
        """The result when this event is our response; a notification goes to `on_notification`."""
        if not data.strip():
            return None  # a priming event (an id for resumption) or keep-alive
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the upstream's event stream carries an event that is not JSON") from None
        if isinstance(message, dict) and "method" in message and "id" not in message:
            if self._on_notification is not None:
                self._on_notification(message)
            return None
        if isinstance(message, dict) and "method" in message:
            return None  # a server-to-client request: the gateway offers no client capabilities, so ignored
        return _result(message, message_id)


def _result(document: object, message_id: int | None) -> JsonObject:
    if isinstance(document, bytes):
        try:
            document = orjson.loads(document)
        except orjson.JSONDecodeError:
            raise UpstreamError("the upstream's answer is not JSON") from None
    if not isinstance(document, dict) or document.get("jsonrpc") != "2.0":
        raise UpstreamError("the upstream's answer is not a JSON-RPC response")
    if message_id is not None and document.get("id") != message_id:
        raise UpstreamError("the upstream answered another request's id")
    if "error" in document and isinstance(document["error"], dict):
        raise UpstreamRpcError(document["error"])
    answer = document.get("result")
    if not isinstance(answer, dict):
        raise UpstreamError("the upstream's response has no result object")
    return answer
