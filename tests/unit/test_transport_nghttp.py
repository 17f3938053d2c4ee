"""The server against nghttp2's own clients (Debian's nghttp2-client): `nghttp` sees the limits we advertise, `h2load`
runs thousands of gRPC calls over few connections and is held to the advertised stream limit."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.transport.frames import TransportLimits
from ext_proc.transport.grpc import Call

from .transport_peers import Echo, ServerThread, message

STREAM_LIMIT = 20


class CountingEcho(Echo):
    """Echo that records the most streams its connection ever had open at once."""

    peak = 0

    def __init__(self, call: Call, metadata: dict[str, str]) -> None:
        super().__init__(call, metadata)
        CountingEcho.peak = max(CountingEcho.peak, call._connection.open_streams)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    CountingEcho.peak = 0
    running = ServerThread(methods={"/t.T/Echo": CountingEcho},
                           limits=TransportLimits(max_concurrent_streams=STREAM_LIMIT))
    yield running
    running.stop()


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "message.bin"
    path.write_bytes(message(b"hello"))
    return path


def _h2load(server: ServerThread, body: Path, concurrent: int) -> dict[str, int]:
    result = subprocess.run(
        ["h2load", "-n", "2000", "-c", "2", "-m", str(concurrent), "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://127.0.0.1:{server.port}/t.T/Echo"],
        capture_output=True, text=True, timeout=120, check=True)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                       result.stdout)
    assert counts is not None, result.stdout
    return dict(zip(("total", "done", "succeeded", "failed", "errored"), map(int, counts.groups()), strict=True))


def test_h2load_calls_within_the_stream_limit_all_succeed(server: ServerThread, body: Path) -> None:
    counts = _h2load(server, body, STREAM_LIMIT // 2)
    assert counts["succeeded"] == 2000
    assert CountingEcho.peak <= STREAM_LIMIT


def test_h2load_is_held_to_the_advertised_stream_limit(server: ServerThread, body: Path) -> None:
    """h2load opens 100 streams per connection before it has read our SETTINGS: those over the limit are refused
    (REFUSED_STREAM, safe to retry); after that it keeps to the limit, and every other call succeeds."""
    counts = _h2load(server, body, 100)
    assert counts["done"] == 2000
    assert counts["errored"] <= 2 * (100 - STREAM_LIMIT)
    assert counts["succeeded"] >= 2000 - 2 * (100 - STREAM_LIMIT)
    assert CountingEcho.peak <= STREAM_LIMIT


def test_nghttp_sees_the_advertised_limits_and_gets_its_answer(body: Path) -> None:
    running = ServerThread()
    try:
        result = subprocess.run(
            ["nghttp", "-v", "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
             f"http://127.0.0.1:{running.port}/t.T/Echo"], capture_output=True, text=True, timeout=60, check=True)
    finally:
        running.stop()
    for line in ("[SETTINGS_MAX_CONCURRENT_STREAMS(0x03):1000]", "[SETTINGS_INITIAL_WINDOW_SIZE(0x04):1048576]",
                 "[SETTINGS_MAX_HEADER_LIST_SIZE(0x06):65536]", f"(window_size_increment={(16 << 20) - 65535})",
                 "grpc-status: 0"):
        assert line in result.stdout
    assert "GOAWAY" not in result.stdout.split("grpc-status: 0")[0]
