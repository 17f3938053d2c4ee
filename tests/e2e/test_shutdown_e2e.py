"""Graceful shutdown: SIGTERM lets streams in flight finish (bounded), then the processes exit."""

from __future__ import annotations

import queue
import signal
import threading
import time
from pathlib import Path

import openai

from .gateways import GatewayBuilder
from .support import fault

HELLO = [{"role": "user", "content": "hi"}]


def _gateway(build: GatewayBuilder) -> None:
    build.backend("p", build.demo("p"))
    build.route("m", ("p", "m"))
    build.key("k")


def _slow_stream(client: openai.OpenAI, received: queue.Queue) -> None:
    try:
        stream = client.chat.completions.create(model="m", messages=HELLO, stream=True,
                                                extra_headers=fault("p:slow=250"))
        for chunk in stream:
            received.put(chunk)
        received.put("done")
    except Exception as exc:  # the finding the test reports
        received.put(exc)


def test_ext_proc_server_finishes_streams_in_flight_on_sigterm(tmp_path: Path) -> None:
    with GatewayBuilder(tmp_path) as build:
        _gateway(build)
        gateway = build.start()
        received: queue.Queue = queue.Queue()
        threading.Thread(target=_slow_stream, args=(gateway.client(), received), daemon=True).start()
        first = received.get(timeout=10)
        assert not isinstance(first, Exception), first
        server = next(c for c in gateway.supervisor.children if c.name.startswith("ext_proc")).process
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        items = [first]
        while items[-1] != "done" and not isinstance(items[-1], Exception):
            items.append(received.get(timeout=15))
        assert items[-1] == "done", items[-1]  # the stream ran to its end, ~2 s after SIGTERM
        assert "".join(c.choices[0].delta.content or "" for c in items[:-1] if c.choices)
        assert server.wait(15) == 0
        assert time.monotonic() - stopped < 12  # the drain is bounded


def test_up_drains_envoy_before_stopping(tmp_path: Path) -> None:
    with GatewayBuilder(tmp_path) as build:
        _gateway(build)
        gateway = build.up()
        assert gateway.up is not None
        received: queue.Queue = queue.Queue()
        threading.Thread(target=_slow_stream, args=(gateway.client(), received), daemon=True).start()
        first = received.get(timeout=10)
        assert not isinstance(first, Exception), first
        up = gateway.up.process
        up.send_signal(signal.SIGTERM)
        items = [first]
        while items[-1] != "done" and not isinstance(items[-1], Exception):
            items.append(received.get(timeout=15))
        assert items[-1] == "done", items[-1]
        assert up.wait(20) == 0
