"""The hostile-peer experiments of issue 14, against the ext_proc transport in a subprocess, with its RSS sampled:
run it on two checkouts to compare them (`PYTHONPATH=<other checkout> python load/transport_attacks.py`).

    python load/transport_attacks.py             # every attack, ~1 minute; prints one line per attack

Each attack runs on a fresh server: a header block of CONTINUATION frames (300 MiB offered), 100,000 streams opened
on one connection, 40 streams each holding a partial 5 MiB message, 500 connections that never send anything
(counted after 12 s), and 2 million PINGs from a peer that never reads. Reported: what the server did, its peak RSS
growth, and whether a well-behaved client is still served afterwards.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ext_proc.transport.http2 import PREFACE, frame  # noqa: E402  (both old and new transports have these)

HEADERS, PING, CONTINUATION, DATA, SETTINGS = 0x1, 0x6, 0x9, 0x0, 0x4
END_HEADERS, END_STREAM = 0x4, 0x1
SERVER = """
import asyncio, sys
from ext_proc.transport.grpc import GrpcServer, unary
from ext_proc.transport.health import HealthService

async def echo(request):
    return request

async def main():
    server = GrpcServer({"/t.T/Echo": unary(echo), **HealthService().methods()})
    print(await server.start("127.0.0.1:0"), flush=True)
    await asyncio.Event().wait()

import uvloop
uvloop.run(main())
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, cwd=REPO)
        self.port = int(self.process.stdout.readline())  # type: ignore[union-attr]
        self.start_rss = rss_mib(self.process.pid)
        self.peak = self.start_rss
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self._sampling:
            try:
                self.peak = max(self.peak, rss_mib(self.process.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    def serves(self) -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                return channel.unary_unary("/t.T/Echo")(b"still here", timeout=10) == b"still here"
            except grpc.RpcError:
                return False

    def stop(self) -> None:
        self._sampling = False
        self.process.kill()
        self.process.wait()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return sock


def _block(path: str = "/t.T/Echo") -> bytes:
    # literal header fields without indexing: valid on any connection
    fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "x"),
              ("content-type", "application/grpc")]
    out = b""
    for name, value in fields:
        out += b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()
    return out


def _send_until_closed(sock: socket.socket, chunks: Callable[[], bytes], total: int) -> tuple[int, str]:
    sent = 0
    sock.settimeout(10)
    try:
        while sent < total:
            data = chunks()
            sock.sendall(data)
            sent += len(data)
        return sent, "accepted all of it"
    except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError) as exc:
        return sent, f"connection closed after {sent >> 20} MiB ({type(exc).__name__})"


def continuation_flood(server: Server) -> str:
    sock = _connect(server.port)
    sock.sendall(frame(HEADERS, 0, 1, _block()))
    piece = frame(CONTINUATION, 0, 1, b"\x00" * 16384)
    _, outcome = _send_until_closed(sock, lambda: piece * 64, 300 << 20)
    sock.close()
    return outcome


def many_streams(server: Server) -> str:
    sock = _connect(server.port)
    block = _block()
    sock.settimeout(10)
    opened = 0
    try:
        for stream in range(1, 200_001, 2):
            sock.sendall(frame(HEADERS, END_HEADERS, stream, block))
            opened += 1
    except OSError:
        sock.close()
        return f"connection closed after {opened:,} of 100,000 streams"
    sock.settimeout(3)
    received = b""
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            received += data
    except (TimeoutError, OSError):
        pass
    refused = received.count(b"\x00\x00\x04\x03\x00")  # RST_STREAM frames
    sock.close()
    return f"100,000 streams offered; {refused} RST_STREAM frames back"


def partial_messages(server: Server) -> str:
    sock = _connect(server.port)
    outcome = "accepted all of it"
    try:
        sock.settimeout(10)
        for index in range(40):
            stream = 1 + 2 * index
            sock.sendall(frame(HEADERS, END_HEADERS, stream, _block()))
            payload = struct.pack(">BL", 0, 5 << 20) + b"\x00" * ((5 << 20) - 1 - 5)
            for start in range(0, len(payload), 16384):
                sock.sendall(frame(DATA, 0, stream, payload[start:start + 16384]))
    except OSError as exc:
        outcome = f"refused partway ({type(exc).__name__})"
    sock.settimeout(2)
    received = b""
    try:
        while data := sock.recv(1 << 20):
            received += data
    except OSError:
        pass
    sock.close()
    return f"{outcome}; {received.count(bytes((0, 0, 4, 3)))} streams reset"


def silent_connections(server: Server) -> str:
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(500)]
    time.sleep(12)
    still_open = 0
    for sock in socks:
        sock.settimeout(0.01)
        try:
            while sock.recv(1 << 16):  # the server's SETTINGS, then end of file once it closed the connection
                pass
        except TimeoutError:
            still_open += 1
        except OSError:
            pass
        sock.close()
    return f"{still_open} of 500 still open after 12 s"


def ping_flood(server: Server) -> str:
    sock = _connect(server.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pings = frame(PING, 0, 0, b"\x00" * 8) * 10_000
    sent, outcome = _send_until_closed(sock, lambda: pings, 2_000_000 * 17)
    sock.close()
    return f"{sent // 17:,} PINGs sent; {outcome}"


ATTACKS = {"CONTINUATION flood (300 MiB)": continuation_flood, "100,000 streams on one connection": many_streams,
           "40 x partial 5 MiB messages": partial_messages, "500 silent connections": silent_connections,
           "2M PINGs, peer never reads": ping_flood}


def main() -> int:
    rows = []
    for name, attack in ATTACKS.items():
        server = Server()
        try:
            outcome = attack(server)
            time.sleep(0.3)
            rows.append({"attack": name, "outcome": outcome, "rss_growth_mib": round(server.peak - server.start_rss, 1),
                         "still_serves": server.serves()})
        finally:
            server.stop()
        row = rows[-1]
        print(f"| {row['attack']} | {row['outcome']} | +{row['rss_growth_mib']} MiB | "
              f"{'yes' if row['still_serves'] else 'NO'} |", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
