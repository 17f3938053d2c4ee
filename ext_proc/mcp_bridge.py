"""Serve a stdio MCP server over Streamable HTTP, so the gateway reaches it like any HTTP upstream.

    python -m ext_proc.mcp_bridge [--port 0] [--child-log FILE] -- <command> [args...]

Starts `command` as a child speaking the MCP stdio transport (one JSON-RPC message a line) and serves `/mcp` on
127.0.0.1. Prints `{"name": ..., "kind": "mcp-bridge", "port": ..., "pid": <child pid>}` on stdout once listening,
like the demo providers. How HTTP maps onto the child:

- POST of a request: written to the child's stdin under an id of the bridge's own (so two clients' ids can't clash),
  answered with the child's response under the client's id. The answer is JSON, or SSE when the child sends a
  progress notification for the request (matched by its `progressToken`) before the response. A request the child
  doesn't answer within `--request-timeout` gets a JSON-RPC error (-32001), and the child a
  `notifications/cancelled`; should its answer come later it is dropped (a response never goes on the GET stream).
- POST of a notification or a response: written to the child, answered 202 (a client's `notifications/cancelled` has
  its request id translated).
- GET: the stream of everything else the child sends (list_changed, server-initiated requests).
- Session: one child, one session. `initialize` is answered with the bridge's `Mcp-Session-Id`; every later request
  needs it (400 without, 404 with another). A second `initialize` is forwarded too and gets the same session id
  (the gateway opens one upstream session per bridge). DELETE is refused 405: the session lives as long as the child.

Decisions:
- The child dying ends the bridge with status 1, after answering the requests in flight with an error. A supervisor
  restarts the pair; restarting the child here would hand the client a fresh, uninitialized server under the same
  session id. A restarted bridge has a new session id, so the client gets 404 (or a refused connection) and
  re-initializes, as the spec asks.
- Bounds: a POST body over `--max-message-bytes` is refused 413; a child line over it ends the child (its framing
  is lost) and so the bridge. The child's stderr is copied, unparsed, to `--child-log` or the bridge's stderr.
- The HTTP server and the Streamable HTTP helpers are shared with the demo providers (`ext_proc.transport.http1`,
  `ext_proc.mcp.streamable_http`); they are small, dependency-free and tested against the official SDK client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from typing import BinaryIO

import orjson

from ext_proc.mcp.server_protocol import (
    INVALID_REQUEST,
    Emit,
    Message,
    RpcError,
    error_response,
    kind_of,
    notification,
)
from ext_proc.mcp.streamable_http import (
    MCP_PATH,
    SESSION_HEADER,
    Outbox,
    Refusal,
    answer_request,
    check_headers,
    parse_message,
    send_json,
    send_refusal,
    stream_events,
)
from ext_proc.transport.http1 import HttpServer, Request, Response, start_http_server

DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
REQUEST_TIMEOUT_CODE = -32001
CHILD_GONE_CODE = -32000
OUTBOX_SIZE = 1000
STOP_GRACE_SECONDS = 5.0
CHILD_EXITED = 1
"""The bridge's exit status when its child ends (or breaks the framing) on its own."""

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    """A client request the child has not answered yet."""

    client_id: object
    emit: Emit
    answer: asyncio.Future[Message]
    progress_token: object = None


class Bridge:
    """One child process and the single MCP session served over it."""

    def __init__(self, command: list[str], request_timeout: float, max_message_bytes: int,
                 child_log: BinaryIO | None = None) -> None:
        self.session_id = secrets.token_urlsafe(24)
        self.ended = asyncio.Event()
        """Set when the child is gone; `main` then exits."""
        self._command = command
        self._timeout = request_timeout
        self._max_bytes = max_message_bytes
        self._child_log = child_log
        self._child: asyncio.subprocess.Process | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._outbox = Outbox(OUTBOX_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self._initialized = False
        self._stopping = False
        self._posts = 0
        self._no_posts = asyncio.Event()
        self._no_posts.set()
        self.api_key: str | None = None
        """When set, every request must carry it as a bearer token (the gateway's, see `--api-key-env`)."""

    async def drained(self) -> None:
        """Wait until no POST is being answered."""
        await self._no_posts.wait()

    @property
    def child_pid(self) -> int:
        assert self._child is not None
        return self._child.pid

    async def start(self) -> None:
        self._child = await asyncio.create_subprocess_exec(
            *self._command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=self._max_bytes)
        self._tasks = [asyncio.create_task(self._read_child()), asyncio.create_task(self._copy_stderr())]

    def stopping(self) -> None:
        """The bridge is being stopped: the child's exit from now on is no failure."""
        self._stopping = True

    async def stop(self) -> None:
        """End the child: close its stdin, then terminate, then kill, each after a grace period."""
        self._stopping = True
        child = self._child
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            for action in (None, child.terminate, child.kill):
                if action is not None:
                    with contextlib.suppress(ProcessLookupError):
                        action()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.wait(), STOP_GRACE_SECONDS)
                    break
        for task in self._tasks:
            task.cancel()
        self._outbox.close()

    async def handle(self, request: Request, response: Response) -> None:
        if self.api_key is not None and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), f"Bearer {self.api_key}".encode()):
            await send_refusal(response, Refusal(401, INVALID_REQUEST, "missing or wrong bearer token"),
                               [("www-authenticate", "Bearer")])
            return
        if request.path != MCP_PATH:
            await send_refusal(response, Refusal(404, INVALID_REQUEST, f"the MCP endpoint is {MCP_PATH}"))
            return
        try:
            check_headers(request)
            if request.method == "POST":
                await self._counted_post(request, response)
            elif request.method == "GET":
                self._check_session(request)
                await stream_events(response, self._outbox)
            else:
                allow = [("allow", "POST, GET")]
                await send_refusal(response, Refusal(405, INVALID_REQUEST, "use POST or GET"), allow)
        except Refusal as refusal:
            await send_refusal(response, refusal)

    async def _counted_post(self, request: Request, response: Response) -> None:
        self._posts += 1
        self._no_posts.clear()
        try:
            await self._post(request, response)
        finally:
            self._posts -= 1
            if not self._posts:
                self._no_posts.set()

    async def _post(self, request: Request, response: Response) -> None:
        message = parse_message(request.body)
        try:
            kind = kind_of(message)
        except RpcError as exc:
            raise Refusal(400, exc.code, exc.message) from None
        if kind == "request" and message["method"] == "initialize":
            answer = await self._forward(message, _drop)
            self._initialized = self._initialized or "result" in answer
            await send_json(response, 200, answer, [(SESSION_HEADER, self.session_id)])
            return
        self._check_session(request)
        if kind == "request":
            await answer_request(response, lambda emit: self._forward(message, emit))
            return
        await self._write(self._translate_cancel(message))
        await response.send(202)

    def _check_session(self, request: Request) -> None:
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None or not self._initialized:
            raise Refusal(400, INVALID_REQUEST, "missing Mcp-Session-Id header; send initialize first")
        if session_id != self.session_id:
            raise Refusal(404, INVALID_REQUEST, "unknown session; send initialize without a session id")

    async def _forward(self, message: Message, emit: Emit) -> Message:
        """Send a request to the child and wait for its answer, passing on the progress that comes first."""
        if self.ended.is_set():
            return error_response(message["id"], CHILD_GONE_CODE, "the stdio server has exited")
        child_id = next(self._ids)
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        pending = _Pending(message["id"], emit, asyncio.get_running_loop().create_future(), token)
        self._pending[child_id] = pending
        try:
            await self._write({**message, "id": child_id})
            answer = await asyncio.wait_for(pending.answer, self._timeout)
        except TimeoutError:
            await self._write(notification("notifications/cancelled", {"requestId": child_id,
                                                                        "reason": "timed out at the bridge"}))
            return error_response(message["id"], REQUEST_TIMEOUT_CODE,
                                  f"the stdio server did not answer {message['method']} within {self._timeout:g}s")
        finally:
            self._pending.pop(child_id, None)
        return {**answer, "id": pending.client_id}

    def _translate_cancel(self, message: Message) -> Message:
        params = message.get("params")
        if message.get("method") != "notifications/cancelled" or not isinstance(params, dict):
            return message
        for child_id, pending in self._pending.items():
            if pending.client_id == params.get("requestId"):
                return {**message, "params": {**params, "requestId": child_id}}
        return message

    async def _write(self, message: Message) -> None:
        child = self._child
        if child is None or child.stdin is None or self.ended.is_set():
            return
        with contextlib.suppress(ConnectionError):
            child.stdin.write(orjson.dumps(message) + b"\n")
            await child.stdin.drain()

    async def _read_child(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        stdout = self._child.stdout
        try:
            while line := await stdout.readline():
                if line.strip():
                    await self._route(line)
        except ValueError:
            _log.error("the stdio server wrote a line over %d bytes; stopping it", self._max_bytes)
            self._child.kill()
        status = await self._child.wait()
        _log.log(logging.INFO if self._stopping else logging.ERROR, "the stdio server exited with status %s", status)
        self._fail_pending(f"the stdio server exited with status {status}")
        self.ended.set()

    async def _route(self, line: bytes) -> None:
        """Hand one message from the child to the request it belongs to, or to the GET stream."""
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            _log.warning("the stdio server wrote a line that is not JSON: %.200r", line)
            return
        if not isinstance(message, dict):
            _log.warning("the stdio server wrote a message that is not an object: %.200r", line)
            return
        if "method" not in message:
            pending = self._pending.get(message.get("id"))  # type: ignore[arg-type]
            if pending is None:
                _log.warning("dropping the stdio server's answer to %r: no request waits for it", message.get("id"))
            elif not pending.answer.done():
                pending.answer.set_result(message)
            return
        target = self._progress_target(message)
        if target is not None:
            await target.emit(message)
        else:
            self._outbox.offer(message)

    def _progress_target(self, message: Message) -> _Pending | None:
        params = message.get("params")
        if message.get("method") != "notifications/progress" or not isinstance(params, dict):
            return None
        token = params.get("progressToken")
        return next((pending for pending in self._pending.values()
                     if token is not None and pending.progress_token == token), None)

    def _fail_pending(self, reason: str) -> None:
        for pending in self._pending.values():
            if not pending.answer.done():
                pending.answer.set_result(error_response(None, CHILD_GONE_CODE, reason))

    async def _copy_stderr(self) -> None:
        assert self._child is not None and self._child.stderr is not None
        target = self._child_log or sys.stderr.buffer
        while chunk := await self._child.stderr.read(65536):
            target.write(chunk)
            target.flush()


async def _drop(message: Message) -> None:
    return None


async def serve(args: argparse.Namespace) -> int:
    child_log = open(args.child_log, "ab") if args.child_log else None  # noqa: SIM115 - closed below
    bridge = Bridge(args.command, args.request_timeout, args.max_message_bytes, child_log)
    if args.api_key_env:
        bridge.api_key = os.environ.get(args.api_key_env) or None
        if bridge.api_key is None:
            raise OSError(f"--api-key-env names {args.api_key_env}, which is not set")
    server: HttpServer | None = None
    try:
        await bridge.start()
        server = await start_http_server(bridge.handle, args.host, args.port, max_body_bytes=args.max_message_bytes)
        return await _run(bridge, server, args.name)
    finally:
        await bridge.stop()
        if server is not None:
            await server.close()
        if child_log is not None:
            child_log.close()


async def _run(bridge: Bridge, server: HttpServer, name: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    def stopping() -> None:
        bridge.stopping()  # the signal often reaches the child too (a process group): its exit is expected
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # a reload of the stack it belongs to: nothing to do
    ready = {"name": name, "kind": "mcp-bridge", "port": server.port, "pid": bridge.child_pid}
    sys.stdout.buffer.write(orjson.dumps(ready) + b"\n")
    sys.stdout.flush()
    stopped = asyncio.create_task(stop.wait())
    ended = asyncio.create_task(bridge.ended.wait())
    await asyncio.wait((stopped, ended), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    ended.cancel()
    if stop.is_set():
        return 0
    with contextlib.suppress(TimeoutError):  # let the answers to the requests in flight reach their clients
        await asyncio.wait_for(bridge.drained(), STOP_GRACE_SECONDS)
    return CHILD_EXITED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        _parser().error("give the stdio server's command after --")
    logging.basicConfig(level=logging.INFO, format=f"mcp-bridge {args.name} %(levelname)s %(message)s")
    try:
        return asyncio.run(serve(args))
    except OSError as exc:
        print(f"mcp bridge {args.name}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ext_proc.mcp_bridge",
                                     description="Serve a stdio MCP server over Streamable HTTP.")
    parser.add_argument("--name", default="mcp-bridge", help="echoed in the ready line")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT,
                        help="seconds the child has to answer one request")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                        help="largest POST body and largest line from the child")
    parser.add_argument("--api-key-env", help="the environment variable holding the bearer token every request "
                                              "must carry (the key stays out of the process list)")
    parser.add_argument("--child-log", help="append the child's stderr here (default: the bridge's stderr)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the stdio server's command and arguments")
    return parser


if __name__ == "__main__":
    sys.exit(main())
