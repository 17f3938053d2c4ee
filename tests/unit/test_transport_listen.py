"""Who may talk to the server at all: Unix sockets (mode 0600, peers checked by uid before a byte is read), mutual
TLS (a failed handshake never reaches HTTP/2), and method factories that refuse a call before reading its message."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from ext_proc.transport import http2
from ext_proc.transport.frames import DATA, PING, frame
from tests.eventually import eventually

from .transport_peers import Hold, RawPeer, make_pki, message, resets_of, started_servers

serve = pytest.fixture(started_servers)


# -- Unix sockets -----------------------------------------------------------------------------------------------------

def test_a_unix_socket_is_0600_whatever_the_umask_and_serves_its_owner(serve: Callable, tmp_path: Path) -> None:
    path = tmp_path / "grpc.sock"
    previous = os.umask(0)
    try:
        server = serve(address=f"unix:{path}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with grpc.insecure_channel(f"unix:{path}") as channel:
        assert channel.unary_unary("/t.T/Peer")(b"", timeout=10) == f"unix:uid={os.getuid()}".encode()
    server.stop()
    assert not path.exists()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_unix_peer_whose_uid_is_not_allowed_is_closed_before_a_byte(serve: Callable, tmp_path: Path,
                                                                      loop: str) -> None:
    path = tmp_path / "grpc.sock"
    serve(address=f"unix:{path}", allowed_uids=[os.getuid() + 12345], loop=loop)
    peer = RawPeer(unix_path=str(path))
    peer.wait_closed()
    assert peer.frames == []


def test_a_stale_socket_file_is_replaced_but_another_file_is_not(serve: Callable, tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as leftover:
        leftover.bind(str(stale))
    serve(address=f"unix:{stale}")
    with grpc.insecure_channel(f"unix:{stale}") as channel:
        assert channel.unary_unary("/t.T/Length")(b"abc", timeout=10) == b"3"
    other = tmp_path / "config.yaml"
    other.write_text("not a socket")
    with pytest.raises(FileExistsError):
        serve(address=f"unix:{other}")
    assert other.read_text() == "not a socket"
    with pytest.raises(OSError, match="another server"):
        serve(address=f"unix:{stale}")


# -- mutual TLS -------------------------------------------------------------------------------------------------------

def _server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, Any]:
    pki = make_pki(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context, pki


def _tls_client(port: int, ca: Path, cert: Path | None, key: Path | None) -> list[bytes]:
    """Handshake, send the HTTP/2 preface, and return what came back before the connection ended."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(cert, key)
    received: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(http2.PREFACE + frame(http2.SETTINGS, 0, 0))
                while chunk := tls.recv(65536):
                    received.append(chunk)
                    if len(b"".join(received)) >= 9:
                        break
        except (ssl.SSLError, ConnectionError):
            pass
    return received


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(serve: Callable, tmp_path: Path,
                                                                   loop: str) -> None:
    context, pki = _server_tls(tmp_path)
    server = serve(ssl_context=context, loop=loop)
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(),
                                               pki.client_cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel:
        assert channel.unary_unary("/t.T/Length")(b"abcd", timeout=10) == b"4"
    assert _tls_client(server.port, pki.ca, pki.client_cert, pki.client_key)[0][3] == http2.SETTINGS


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("client", ["no certificate", "another CA"])
def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(serve: Callable, tmp_path: Path,
                                                                       client: str, loop: str) -> None:
    context, pki = _server_tls(tmp_path)
    server = serve(ssl_context=context, loop=loop)
    cert, key = (None, None) if client == "no certificate" else (pki.stranger_cert, pki.stranger_key)
    assert _tls_client(server.port, pki.ca, cert, key) == []  # not even the server's SETTINGS
    assert server.server.open_connections == 0
    if cert is not None:
        credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials) as channel, \
                pytest.raises(grpc.RpcError) as failure:
            channel.unary_unary("/t.T/Length")(b"abcd", timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


# -- method factories --------------------------------------------------------------------------------------------------

def test_a_refusing_method_factory_answers_before_the_message_which_is_then_dropped_unread(serve: Callable) -> None:
    server = serve()
    Hold.opened = Hold.messages = 0
    peer = RawPeer(server.port)
    peer.send(peer.headers(1, "/t.T/Guarded", extra=[("authorization", "Bearer wrong")]))
    trailers = peer.wait_for(lambda frames: peer.trailers(1))
    assert trailers["grpc-status"] == "16" and trailers["grpc-message"] == "no valid credential"
    assert peer.wait_for(lambda frames: resets_of(frames)) == {1: http2.NO_ERROR}
    big = message(b"m" * (4 << 20))
    peer.send(*[frame(DATA, 0, 1, big[start:start + 16384]) for start in range(0, 1 << 20, 16384)])
    peer.send(frame(PING, 0, 0, b"dropped?"))
    peer.wait_for(lambda frames: (PING, http2.ACK, 0, b"dropped?") in frames)
    assert [c.partial_bytes for c in server.connections()] == [0]
    assert Hold.opened == 0 and Hold.messages == 0
    peer.send(peer.headers(3, "/t.T/Guarded", extra=[("authorization", "Bearer right")]),
              frame(DATA, 0, 3, message(b"welcome")))
    eventually(lambda: Hold.messages == 1, what="the authenticated call's message")


def test_a_refused_grpcio_call_gets_the_factorys_status(serve: Callable) -> None:
    server = serve()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.RpcError) as failure:
            channel.unary_unary("/t.T/Guarded")(b"x" * (8 << 20), timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert [c.partial_bytes for c in server.connections()] == [0]


def test_a_method_factory_that_fails_is_internal_and_logged(serve: Callable, caplog: pytest.LogCaptureFixture) -> None:
    server = serve()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as failure:
        channel.unary_unary("/t.T/Broken")(b"x", timeout=10)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert any(record.exc_info and "a bug in a method factory" in str(record.exc_info[1]) for record in caplog.records)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert channel.unary_unary("/t.T/Length")(b"ok", timeout=10) == b"2"


def test_the_message_size_limit_is_per_server(serve: Callable) -> None:
    server = serve(max_message_bytes=1024)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        method = channel.unary_unary("/t.T/Length")
        assert method(b"x" * 1024, timeout=10) == b"1024"
        with pytest.raises(grpc.RpcError) as failure:
            method(b"x" * 1025, timeout=10)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_refused_call_the_client_had_already_ended_gets_no_reset(serve: Callable) -> None:
    server = serve()
    peer = RawPeer(server.port)
    peer.send(peer.headers(1, "/t.T/Guarded", end_stream=True))
    assert peer.wait_for(lambda frames: peer.trailers(1))["grpc-status"] == "16"
    peer.send(frame(PING, 0, 0, b"anyrst??"))
    peer.wait_for(lambda frames: (PING, http2.ACK, 0, b"anyrst??") in frames)
    assert not resets_of(peer.frames)
