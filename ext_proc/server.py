"""The gRPC ext_proc service. One gRPC stream is one stage of one HTTP request; this module only dispatches.

Envoy opens a stream per request per filter: the route stage's stream (tagged with `x-babelgate-stage: route` in
the gRPC metadata), for each upstream attempt an attempt stage stream, and for a stream metered aside the stream
meter's copy (`x-babelgate-stage: meter`, never answered). All logic lives in `stages/`; the gRPC
server is Babelgate's own (`transport/`), because grpc.aio's per-message thread hops cost more than the stages do.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.message import DecodeError

from . import constants
from .admin.key_store import stored_keys_version, with_stored_keys
from .admin.service import MAX_MESSAGE_BYTES as ADMIN_MAX_MESSAGE_BYTES
from .admin.service import AdminCredentials, AdminService
from .auth.virtual_keys import bearer_token
from .config.loading import load_config
from .config.models import Config
from .errors import GatewayError, UpstreamError
from .limits.leases import Leases
from .limits.store import StoreUnavailable
from .runtime.build import Runtime
from .runtime.reload import ConfigReloader
from .stages import messages
from .stages.attempt import AttemptStage
from .stages.route import RouteStage
from .stages.stream_meter import StreamMeterStage
from .transport.grpc import Call, GrpcServer, MethodFactory, RpcError, RpcHandler, Status, unary
from .transport.health import NOT_SERVING, SERVING, HealthService
from .wire.external_processor_pb2 import ProcessingRequest, ProcessingResponse

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
PROCESS_METHOD = f"/{SERVICE_NAME}/Process"


class RuntimeHolder:
    """The current configuration snapshot; replaced as a whole on reload, read once per stream."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


Stage = RouteStage | AttemptStage | StreamMeterStage
_closing: set[asyncio.Task] = set()


class ProcessStream:
    """One ext_proc stream: each message through the stage, replies in order.

    A message is run by hand within the read that brought it, and answered there when nothing in the stage waits
    (no limiter, or a request admitted under a lease), no task created; a handler that does wait continues as a task.
    With a limiter whose store calls need a current task (`LimitStore.calls_need_a_task`: Redis Cluster's timeouts)
    every message runs as a task. Later messages of a stream queue behind a running one.
    """

    __slots__ = ("_call", "_closed", "_ending", "_in_task", "_queue", "_stage", "_task")

    def __init__(self, call: Call, stage: Stage, in_task: bool) -> None:
        self._call = call
        self._stage = stage
        self._in_task = in_task
        self._queue: deque[ProcessingRequest] = deque()
        self._task: asyncio.Task | None = None
        self._ending = False
        self._closed = False
        stage.push = self.push

    def push(self, reply: ProcessingResponse) -> None:
        """A message the stage sends on its own, not as an answer (a timer fired): dropped once the call is over."""
        if not self._call.done:
            self._call.send_message(reply.SerializeToString())

    def on_message(self, message: bytes) -> None:
        try:
            request = ProcessingRequest.FromString(message)
        except DecodeError:
            self._call.finish(Status.INVALID_ARGUMENT, "not a ProcessingRequest")
            return
        if self._task is not None:
            self._queue.append(request)
        else:
            self._run(request)

    def on_end(self) -> None:
        if self._task is not None:
            self._ending = True
        else:
            self._end()

    def on_cancel(self) -> None:
        # The client (Envoy) gave up on this request; settling still happens, as its own task.
        if self._task is not None:
            self._task.cancel()
        self._close()

    def _run(self, request: ProcessingRequest) -> None:
        coroutine = respond(self._stage, request)
        if self._in_task:
            self._task = asyncio.get_running_loop().create_task(coroutine)
        else:
            try:
                awaited = coroutine.send(None)
            except StopIteration as done:
                self._reply(done.value)
                return
            self._task = asyncio.get_running_loop().create_task(_resume(coroutine, awaited))
        self._task.add_done_callback(self._resumed)

    def _resumed(self, task: asyncio.Task) -> None:
        self._task = None
        if task.cancelled():
            return
        exception = task.exception()
        if exception is not None:  # respond() turns every Exception into a reply; this is a BaseException
            log.error("an ext_proc stream stopped: %r", exception)
            self._call.finish(Status.INTERNAL, "the gateway failed to process this request")
            return
        self._reply(task.result())
        while self._queue and self._task is None and not self._call.done:
            self._run(self._queue.popleft())
        if self._ending and self._task is None:
            self._end()

    def _reply(self, reply: ProcessingResponse | None) -> None:
        if reply is not None:
            self._call.send_message(reply.SerializeToString())

    def _end(self) -> None:
        self._call.finish()
        self._close()

    def _close(self) -> None:
        """The stage's end, once: a stream can be cancelled after it ended (or end after a cancel), and a second
        close would report the request twice."""
        if not self._closed:
            self._closed = True
            _keep_running(self._stage.close())


class _Resume:
    """Continues, inside a task, a coroutine that was started by hand and stopped at its first `await`."""

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, awaited = self._coroutine, self._first
        while True:
            try:
                sent = yield awaited
            except BaseException as exc:  # cancellation included: handed to the coroutine, as a task would
                try:
                    awaited = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    awaited = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


async def _resume(coroutine: Coroutine[Any, Any, Any], first: Any) -> Any:
    return await _Resume(coroutine, first)


def _keep_running(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def respond(stage: Stage, request: ProcessingRequest) -> ProcessingResponse | None:
    """Run one message through a stage; every failure becomes an OpenAI-style error reply, never a broken stream."""
    try:
        return await stage.handle(request)
    except GatewayError as error:
        return messages.error_reply(error, stage.error_style)
    except Exception:
        log.exception("unexpected failure while processing %s", request.WhichOneof("request"))
        return messages.error_reply(UpstreamError("The gateway failed to process this request.",
                                                  code="gateway_internal_error"), stage.error_style)


def build_server(holder: RuntimeHolder) -> tuple[GrpcServer, HealthService]:
    def process(call: Call, metadata: dict[str, str]) -> ProcessStream:
        runtime = holder.current
        stage = metadata.get(constants.STAGE_METADATA_KEY)
        return ProcessStream(call, AttemptStage(runtime) if stage == constants.STAGE_ATTEMPT
                             else StreamMeterStage(runtime) if stage == constants.STAGE_METER else RouteStage(runtime),
                             in_task=runtime.limiter is not None and runtime.limiter.store.calls_need_a_task)

    health = HealthService()
    server = GrpcServer({PROCESS_METHOD: process, USAGE_METHOD: _usage_method(holder), **health.methods()})
    return server, health


USAGE_SERVICE = "babelgate.limits.v1.Limits"
USAGE_METHOD = f"/{USAGE_SERVICE}/Usage"


def _usage_method(holder: RuntimeHolder) -> MethodFactory:
    """The in-memory limiter lives inside this process: `babelgate usage` reads it here (JSON over gRPC). Every
    key, team and user is in the answer, so it takes an admin credential, checked on the call's headers."""
    checked: list[AdminCredentials] = []

    async def usage(request: bytes) -> bytes:
        limiter = holder.current.limiter
        if limiter is None:
            return orjson.dumps({"prefix": "", "values": {}})
        try:
            values = await limiter.store.scan(limiter.prefix)
        except StoreUnavailable:
            raise RpcError(Status.UNAVAILABLE, "the limiter store is unavailable") from None
        return orjson.dumps({"prefix": limiter.prefix, "values": values})

    answer = unary(usage)

    def open_call(call: Call, metadata: dict[str, str]) -> RpcHandler:
        admin = holder.current.config.admin
        if admin is None:
            raise RpcError(Status.UNAUTHENTICATED, "usage is read with an admin credential: configure `admin`")
        if not checked or checked[0].settings is not admin:
            checked[:] = [AdminCredentials(admin)]
        if checked[0].holder_of(bearer_token(metadata.get("authorization"))) is None:
            raise RpcError(Status.UNAUTHENTICATED, "send a valid admin credential as `Authorization: Bearer <secret>`")
        return answer(call, metadata)

    return open_call


DRAIN_SECONDS = 10.0


async def serve(holder: RuntimeHolder, address: str, on_ready: Callable[[dict[str, int]], None] | None = None,
                config_path: Path | None = None, drain_seconds: float = DRAIN_SECONDS,
                admin_port: int | None = None, admin_host: str = "127.0.0.1",
                ssl_context: ssl.SSLContext | None = None, health_address: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: health turns NOT_SERVING, streams in flight get up to
    `drain_seconds` to finish, and settlements still running get the same again.

    With `config_path`, the configuration reloads on SIGHUP, whenever a watched file changes and whenever the keys
    stored in Redis change. With `admin_port`, this process also serves the admin API there, on `admin_host`.
    `ssl_context` (mutual TLS) applies to `host:port` addresses. With `health_address`, the health service alone
    is also served there, in plaintext (for probes). `on_ready` gets the ports listened on: `port`, and
    `admin_port` when serving it."""
    server, health = build_server(holder)
    port = await server.start(address, ssl_context=ssl_context)
    ports = {"port": port}
    probes: GrpcServer | None = None
    if health_address is not None:
        probes = GrpcServer(health.methods(), max_message_bytes=1024)
        ports["health_port"] = await probes.start(health_address)
    holder.current.health.cooldowns.start()
    holder.current.telemetry.extra_counters = lambda: limiter_counters(holder.current)
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task | None = None
    reloader: ConfigReloader | None = None
    if config_path is not None:
        reloader = ConfigReloader(holder, config_path, load_serving_config,
                                  changes=stored_keys_version(holder.current.config))
        watcher = loop.create_task(reloader.watch())
        loop.add_signal_handler(signal.SIGHUP, lambda: _keep_running(_reload(reloader)))
    admin: tuple[GrpcServer, AdminService] | None = None
    if admin_port is not None and holder.current.config.admin is not None:
        admin = await _start_admin(holder, admin_host, admin_port, reloader)
        ports["admin_port"] = admin[0].port
    _set_serving(health, SERVING)
    if on_ready is not None:
        on_ready(ports)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    _set_serving(health, NOT_SERVING)
    if admin is not None:
        await admin[0].stop(grace=1.0)
        await admin[1].close()
    if probes is not None:
        await probes.stop(grace=0.5)
    await server.stop(grace=drain_seconds)
    if _closing:
        await asyncio.wait(list(_closing), timeout=drain_seconds)
    if holder.current.limiter is not None:
        await holder.current.limiter.close()  # leases give back what they did not spend
    # every stream has reported by now: the request log writes what is queued before the process exits
    await asyncio.to_thread(holder.current.telemetry.close)


def load_serving_config(path: Path) -> Config:
    """The config file, its keys file, and the keys the admin API stored in Redis."""
    return with_stored_keys(load_config(path))


async def _start_admin(holder: RuntimeHolder, host: str, admin_port: int,
                       reloader: ConfigReloader | None) -> tuple[GrpcServer, AdminService]:
    async def changed(what: str) -> None:
        # this process answers with the change in force; the others see it within a poll
        if reloader is not None:
            await reloader.reload(what)

    service = AdminService(holder, on_change=changed)
    server = GrpcServer(service.methods(), max_message_bytes=ADMIN_MAX_MESSAGE_BYTES)
    await server.start(f"{host}:{admin_port}")
    log.info("admin API listening on %s:%d", host, server.port)
    return server, service


def limiter_counters(runtime: Runtime) -> dict[str, int]:
    limiter = runtime.limiter
    if limiter is None:
        return {}
    stats = limiter.stats
    return {"limiter_store_errors": stats.store_errors, "limiter_fail_open_admissions": stats.fail_open_admissions,
            "limiter_fail_closed_refusals": stats.fail_closed_refusals, "limiter_settle_errors": stats.settle_errors,
            "limiter_unsealed_refusals": stats.unsealed_refusals, "limiter_store_retries": stats.store_retries,
            **_lease_counters(limiter.leases)}


def _lease_counters(leases: Leases | None) -> dict[str, int]:
    if leases is None:
        return {}
    stats = leases.stats
    return {"limiter_leases_granted": stats.granted, "limiter_lease_admissions": stats.admitted,
            "limiter_lease_return_failures": stats.return_failures}


async def _reload(reloader: ConfigReloader) -> None:
    await reloader.reload("SIGHUP")


def _set_serving(health: HealthService, status: int) -> None:
    for service in ("", SERVICE_NAME):
        health.set(service, status)
