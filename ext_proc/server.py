"""The gRPC ext_proc service. One gRPC stream is one stage of one HTTP request; this module only dispatches.

Envoy opens a stream per request per filter: the route stage's stream (tagged with `x-babelgate-stage: route` in
the gRPC metadata) and, for each upstream attempt, an attempt stage stream. All logic lives in `stages/`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
import orjson
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import constants
from .config.runtime import Runtime
from .errors import GatewayError, UpstreamError
from .limits.store import StoreUnavailable
from .stages import messages
from .stages.attempt import AttemptStage
from .stages.route import RouteStage

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


class RuntimeHolder:
    """The current configuration snapshot; replaced as a whole on reload, read once per stream."""

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


async def process(requests: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext,
                  holder: RuntimeHolder) -> AsyncIterator[ProcessingResponse]:
    runtime = holder.current
    stage: Stage = AttemptStage(runtime) if _is_attempt(context) else RouteStage(runtime)
    try:
        async for request in requests:
            reply = await respond(stage, request)
            if reply is not None:
                yield reply
    finally:
        # Runs on normal ends and on cancellation (client gone, upstream reset); settling must not be cut short
        # by that cancellation, so it continues as its own task.
        _keep_running(stage.close())


Stage = RouteStage | AttemptStage
_closing: set[asyncio.Task] = set()


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


def _is_attempt(context: grpc.aio.ServicerContext) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == constants.STAGE_METADATA_KEY:
            return value == constants.STAGE_ATTEMPT
    return False


def build_server(holder: RuntimeHolder, address: str) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ])

    async def process_stream(requests: AsyncIterator[ProcessingRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[ProcessingResponse]:
        async for reply in process(requests, context, holder):
            yield reply

    handler = grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Process": grpc.stream_stream_rpc_method_handler(
            process_stream,
            request_deserializer=ProcessingRequest.FromString,
            response_serializer=ProcessingResponse.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler, _usage_handler(holder)))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    return server, port, health_servicer


USAGE_SERVICE = "babelgate.limits.v1.Limits"
USAGE_METHOD = f"/{USAGE_SERVICE}/Usage"


def _usage_handler(holder: RuntimeHolder) -> grpc.GenericRpcHandler:
    """The in-memory limiter lives inside this process: `babelgate usage` reads it here (JSON over gRPC)."""

    async def usage(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        limiter = holder.current.limiter
        if limiter is None:
            return orjson.dumps({"prefix": "", "values": {}})
        try:
            values = await limiter.store.scan(limiter.prefix)
        except StoreUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the limiter store is unavailable")
        return orjson.dumps({"prefix": limiter.prefix, "values": values})

    return grpc.method_handlers_generic_handler(USAGE_SERVICE, {
        "Usage": grpc.unary_unary_rpc_method_handler(usage)})


async def serve(holder: RuntimeHolder, address: str, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight streams for a few seconds."""
    server, port, health_servicer = build_server(holder, address)
    await server.start()
    await _set_serving(health_servicer, health_pb2.HealthCheckResponse.SERVING)
    if on_ready is not None:
        on_ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await _set_serving(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=5)


async def _set_serving(servicer: health.aio.HealthServicer, status: int) -> None:
    for service in ("", SERVICE_NAME):
        await servicer.set(service, status)
