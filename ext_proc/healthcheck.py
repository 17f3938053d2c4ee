"""`python -m ext_proc.healthcheck [host:port] [--service NAME] [--timeout S]`: one `grpc.health.v1.Health/Check`.

Exits 0 only when the server answers SERVING, 1 otherwise (refused, timed out, NOT_SERVING, unknown service). The
Docker image's HEALTHCHECK runs it; Kubernetes uses its native `grpc:` probe against the same service instead.
Nothing here loads the Babelgate config or the CLI, so a check costs little more than the gRPC import.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

CHECK_METHOD = "/grpc.health.v1.Health/Check"
DEFAULT_TARGET = "127.0.0.1:50051"


def check(target: str, service: str = "", timeout: float = 2.0) -> tuple[bool, str]:
    """(serving?, what was seen) for one Check call; never raises for a server that is down or unhealthy."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(CHECK_METHOD, request_serializer=HealthCheckRequest.SerializeToString,
                                   response_deserializer=HealthCheckResponse.FromString)
        try:
            reply = call(HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    status = HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ext_proc.healthcheck",
                                     description="Exit 0 if the gRPC health service answers SERVING.")
    parser.add_argument("target", nargs="?", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})")
    parser.add_argument("--service", default="", help="service name to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    serving, seen = check(args.target, args.service, args.timeout)
    print(f"{args.target}: {seen}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
