"""Graceful shutdown: SIGTERM lets streams in flight finish (bounded), then the processes exit."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Supervisor, free_port
from ext_proc.launch.stack import start_stack

from .support import fault, start_demo

HELLO = [{"role": "user", "content": "hi"}]


def _config(provider_port: int, key: str) -> dict:
    return {"listener": {"port": free_port(), "admin_port": free_port()}, "ext_proc": {"port": free_port()},
            "backends": [{"id": "p", "schema": "openai", "base_url": f"http://127.0.0.1:{provider_port}/v1",
                          "api_key": {"env": "SHUTDOWN_KEY"}}],
            "routes": [{"model": "m", "backends": [{"backend": "p", "model": "m"}]}],
            "virtual_keys": [{"id": "k", "hash": hash_key(key)}]}


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
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        port = start_demo(supervisor, "p", "openai", "sk-shutdown")
        key = generate_key()
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(_config(port, key)))
        stack = start_stack(load_config(path), path, tmp_path, supervisor, env={"SHUTDOWN_KEY": "sk-shutdown"})
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=30)
        received: queue.Queue = queue.Queue()
        threading.Thread(target=_slow_stream, args=(client, received), daemon=True).start()
        first = received.get(timeout=10)
        assert not isinstance(first, Exception), first
        server = next(c for c in supervisor.children if c.name.startswith("ext_proc")).process
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        items = [first]
        while items[-1] != "done" and not isinstance(items[-1], Exception):
            items.append(received.get(timeout=15))
        assert items[-1] == "done", items[-1]  # the stream ran to its end, ~2 s after SIGTERM
        assert "".join(c.choices[0].delta.content or "" for c in items[:-1] if c.choices)
        assert server.wait(15) == 0
        assert time.monotonic() - stopped < 12  # the drain is bounded
    finally:
        supervisor.stop_all()


def test_up_drains_envoy_before_stopping(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path)
    try:
        port = start_demo(supervisor, "p", "openai", "sk-shutdown")
        key = generate_key()
        config = _config(port, key)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        up = subprocess.Popen([sys.executable, "-m", "ext_proc", "up", "-c", str(path)], start_new_session=True,
                              env={**os.environ, "SHUTDOWN_KEY": "sk-shutdown"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{config['listener']['port']}/v1", api_key=key,
                                   max_retries=0, timeout=30)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.models.list()
                    break
                except openai.APIConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            received: queue.Queue = queue.Queue()
            threading.Thread(target=_slow_stream, args=(client, received), daemon=True).start()
            first = received.get(timeout=10)
            assert not isinstance(first, Exception), first
            up.send_signal(signal.SIGTERM)
            items = [first]
            while items[-1] != "done" and not isinstance(items[-1], Exception):
                items.append(received.get(timeout=15))
            assert items[-1] == "done", items[-1]
            assert up.wait(20) == 0
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
    finally:
        supervisor.stop_all()
