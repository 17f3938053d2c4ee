"""The standard gRPC health service (`grpc.health.v1.Health`: Check and Watch) for `GrpcServer`.

Kubernetes gRPC probes, `grpc_health_probe` and Envoy's gRPC health checks all speak it.
"""

from __future__ import annotations

from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from .grpc import Call, MethodFactory, RpcError, Status, unary

SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = HealthCheckResponse.SERVICE_UNKNOWN
MAX_WATCHERS = 10_000


class HealthService:
    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set[Call]] = {}
        self._watching = 0

    def set(self, service: str, status: int) -> None:
        self._status[service] = status
        for call in list(self._watchers.get(service, ())):
            call.send_message(_reply(status))

    def methods(self) -> dict[str, MethodFactory]:
        return {"/grpc.health.v1.Health/Check": unary(self._check),
                "/grpc.health.v1.Health/Watch": self._watch}

    async def _check(self, request: bytes) -> bytes:
        service = HealthCheckRequest.FromString(request).service
        status = self._status.get(service)
        if status is None:
            raise RpcError(Status.NOT_FOUND, f"unknown service {service!r}")
        return _reply(status)

    def _watch(self, call: Call, metadata: dict[str, str]) -> _Watch:
        return _Watch(self, call)

    def _subscribe(self, service: str, call: Call) -> None:
        """Only services this server names are watched (their set is fixed once it serves): a name a caller makes
        up gets SERVICE_UNKNOWN and holds nothing here. Watchers are bounded too (the health port may be open to
        anyone, for probes)."""
        status = self._status.get(service)
        if status is not None:
            if self._watching >= MAX_WATCHERS:
                call.finish(Status.RESOURCE_EXHAUSTED, "too many health watchers")
                return
            self._watchers.setdefault(service, set()).add(call)
            self._watching += 1
        call.send_message(_reply(SERVICE_UNKNOWN if status is None else status))

    def _unsubscribe(self, service: str, call: Call) -> None:
        watchers = self._watchers.get(service)
        if watchers is not None and call in watchers:
            watchers.discard(call)
            self._watching -= 1


class _Watch:
    """A server-streaming call: the current status now, then every change, until the client leaves."""

    __slots__ = ("_call", "_health", "_service")

    def __init__(self, health: HealthService, call: Call) -> None:
        self._health = health
        self._call = call
        self._service: str | None = None

    def on_message(self, message: bytes) -> None:
        self._service = HealthCheckRequest.FromString(message).service
        self._health._subscribe(self._service, self._call)

    def on_end(self) -> None:
        pass

    def on_cancel(self) -> None:
        if self._service is not None:
            self._health._unsubscribe(self._service, self._call)


def _reply(status: int) -> bytes:
    return HealthCheckResponse(status=status).SerializeToString()
