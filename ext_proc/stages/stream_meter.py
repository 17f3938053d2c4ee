"""Stream meter stage: settles a stream that Envoy relays to the client without waiting for ext_proc.

A direct route's stream from an OpenAI backend, whose client asked for its usage and that nothing but the limits
reads, needs nothing changed on its way: the attempt logic in the route stage lets its chunks pass (response body
mode NONE) and names the route's twin (`envoy_config/stream_meter.py`), where a second ext_proc filter in Envoy's
observability mode sends this stage a copy of the answer's headers and of each chunk, and never waits for a reply.
This stage reads the copies as the route stage would have (the backend's `ChatStream`, the `UsageMeter`) and
settles the reservation the route stage sealed into the metadata, with the usage the stream reported. It replies to
nothing: Envoy would ignore it.

A stream cut before its end is charged with what was streamed, as an attempt charges it; a copy that never arrives
(this process unreachable) leaves the reservation, the most the request could use, as the charge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .. import constants
from ..runtime.build import Runtime
from ..wire.external_processor_pb2 import ProcessingRequest, ProcessingResponse
from . import messages
from .stream_relay import SSE_CONTENT_TYPE, StreamRelay
from .usage_meter import UsageMeter


def settled_aside(status: int, content_type: str) -> bool:
    """The answer the stream meter settles, whichever side looks (this stage, or the attempt that hands it over):
    a successful SSE stream. Anything else the attempt reads and settles in the stream's path."""
    return 200 <= status < 300 and content_type.startswith(SSE_CONTENT_TYPE)


class StreamMeterStage:
    __slots__ = ("_backend", "_meter", "_model", "_relay", "_runtime", "_sealed", "_settling", "error_style", "push")

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.error_style = "openai"
        self.push: Callable[[ProcessingResponse], None] | None = None
        self._relay: StreamRelay | None = None
        self._meter: UsageMeter | None = None
        self._sealed = self._backend = self._model = ""
        self._settling: asyncio.Future[None] | None = None

    async def handle(self, request: ProcessingRequest) -> ProcessingResponse | None:
        kind = request.WhichOneof("request")
        if kind == "response_headers":
            self._start(request)
        elif kind == "response_body" and self._relay is not None:
            body = request.response_body
            self._relay.relay(body.body, body.end_of_stream)
            if body.end_of_stream:
                limiter = self._runtime.limiter
                if limiter is not None and limiter.store.settles_in_order:
                    self._settling = asyncio.ensure_future(self._settle())
                else:
                    await self._settle()
        return None

    def _start(self, request: ProcessingRequest) -> None:
        headers = messages.header_dict(request.response_headers)
        if not settled_aside(int(headers.get(":status", "0") or 0), headers.get("content-type", "")):
            return
        decision = messages.babelgate_metadata(request.metadata_context)
        backend = self._runtime.backends.get(decision.get(constants.METADATA_METER_BACKEND_KEY, ""))
        sealed = decision.get(constants.METADATA_RESERVATION_KEY)
        estimate = decision.get(constants.METADATA_METER_ESTIMATE_KEY, "")
        if backend is None or not sealed or not estimate.isdigit() or self._runtime.limiter is None:
            return
        self._sealed, self._backend = sealed, backend.id
        self._model = decision.get(constants.METADATA_METER_MODEL_KEY, "")
        meter = self._meter = UsageMeter(int(estimate), self._runtime.chars_per_token, keep_text=False)
        stream = meter.stream = backend.translator.chat_stream(self._model, 0, True)
        self._relay = StreamRelay(SSE_CONTENT_TYPE, stream, None, None, meter)

    async def _settle(self) -> None:
        limiter, meter = self._runtime.limiter, self._meter
        if limiter is not None and meter is not None:
            await meter.settle(limiter, self._sealed, self._backend, self._model)

    async def close(self) -> None:
        """The copy's stream ended: settled already, or (cut before its end) charged with what was streamed."""
        if self._settling is not None:
            await self._settling
        await self._settle()
