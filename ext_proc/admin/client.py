"""A client of the admin API for the command line (grpcio: not the hot path, and it does TLS should one need it).
grpcio is imported when a client is made: every `babelgate` command builds the parser that names this module, and the
servers must not carry grpcio's native library for it."""

from __future__ import annotations

import getpass
import os
from typing import TypeVar

from google.protobuf.message import Message

from .service import OPERATOR_METADATA_KEY, SERVICE_NAME

TIMEOUT_SECONDS = 10.0

M = TypeVar("M", bound=Message)


class AdminError(Exception):
    """The call failed: the message says why, as the server put it."""


def operator() -> str:
    """Who runs the command, for the server's audit log."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


class AdminClient:
    def __init__(self, address: str, credential: str) -> None:
        import grpc

        self.address = address
        self._channel = grpc.insecure_channel(address)
        self._metadata = (("authorization", f"Bearer {credential}"), (OPERATOR_METADATA_KEY, operator()))

    def call(self, method: str, request: Message, reply: type[M]) -> M:
        import grpc

        stub = self._channel.unary_unary(f"/{SERVICE_NAME}/{method}",
                                         request_serializer=type(request).SerializeToString,
                                         response_deserializer=reply.FromString)
        try:
            return stub(request, metadata=self._metadata, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
                raise AdminError(f"can't reach the admin API at {self.address}") from None
            raise AdminError(f"{code.name.lower()}: {error.details()}") from None

    def close(self) -> None:
        self._channel.close()
