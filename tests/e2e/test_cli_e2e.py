"""The `babelgate` command as users run it: `up --demo`, `keys create`, `check`, `render`."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import hash_key
from ext_proc.launch.processes import free_port

from .gateways import GatewayBuilder

ROOT = Path(__file__).resolve().parents[2]


def babelgate(*args: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ext_proc", *args], capture_output=True, text=True, timeout=60,
                          **kwargs)  # type: ignore[call-overload]


def _lines(stream: object, out: queue.Queue) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)


def _closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_demo_serves_then_stops_everything(stop_signal: int) -> None:
    port, admin, ext_proc, admin_api = free_port(), free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ext_proc", "up", "--demo", "--port", str(port), "--admin-port", str(admin),
         "--ext-proc-port", str(ext_proc), "--admin-api-port", str(admin_api)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    output = ""
    try:
        deadline = time.monotonic() + 60
        while "babelgate keys create" not in output and time.monotonic() < deadline:
            try:
                output += lines.get(timeout=1)
            except queue.Empty:
                assert process.poll() is None, output
        assert f"http://127.0.0.1:{port}" in output, output
        key = re.search(r"api_key=\"(bg-[^\"]+)\"", output).group(1)
        assert f"curl http://127.0.0.1:{port}/v1/chat/completions" in output
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=20)
        assert "Models: gpt-4o-mini, claude-sonnet-4-5, nova-pro" in output
        for model in ("gpt-4o-mini", "claude-sonnet-4-5", "nova-pro", "bedrock-claude", "gemini-2.5-flash",
                      "vertex-gemini-pro", "vertex-claude", "azure-gpt-4o", "command-a"):
            answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            assert "demo-" in answer.choices[0].message.content, model
        # the banner's Responses example, on a native (OpenAI) and a translated (Anthropic) demo model
        assert f"curl http://127.0.0.1:{port}/v1/responses" in output and "client.responses.create(" in output
        for model in ("gpt-4o-mini", "claude-sonnet-4-5"):
            assert "demo-" in client.responses.create(model=model, input="Hello!").output_text, model
        for model in ("text-embedding-3-small", "gemini-embedding"):
            assert client.embeddings.create(model=model, input=["a", "b"]).data[1].embedding
        assert client.embeddings.create(model="titan-embed", input="a").data[0].embedding
        failover = client.chat.completions.with_raw_response.create(
            model="demo", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-demo-fault": "demo-openai:503"})
        assert failover.headers["x-babelgate-backend"] == "demo-anthropic"
        # the banner's cache example: the same temperature-0 request twice is a miss, then a hit
        while "asyncio.run(main())" not in output and time.monotonic() < deadline:  # the banner's last line
            with contextlib.suppress(queue.Empty):
                output += lines.get(timeout=1)
        assert "Response cache on gpt-4o-mini" in output and "x-babelgate-cache" in output, output
        seen = [client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": "cache me"}],
        ).headers["x-babelgate-cache"] for _ in range(2)]
        assert seen == ["miss", "hit"]
        # the banner's prompt template, in both request forms
        assert "Prompt template 'summarize'" in output and '"model": "prompt:summarize"' in output
        variables = {"text": "Babelgate is an AI gateway inside Envoy."}
        summary = client.chat.completions.create(model="prompt:summarize", messages=[],
                                                 extra_body={"prompt_variables": variables})
        assert "demo-" in summary.choices[0].message.content
        assert "demo-" in client.responses.create(prompt={"id": "summarize", "variables": variables}).output_text
        # the admin API, with the credential the banner shows: a new key works at once
        admin_key = re.search(r"credential (bg-admin-\S+)", output).group(1)
        assert f"--admin 127.0.0.1:{admin_api}" in output
        created = httpx.post(f"http://127.0.0.1:{port}/admin/v1/keys", json={"key": {"id": "alice"}},
                             headers={"authorization": f"Bearer {admin_key}"}, timeout=10)
        assert created.status_code == 200, created.text
        alice = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=created.json()["secret"], max_retries=0)
        assert alice.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}]).choices
    finally:
        os.killpg(process.pid, stop_signal) if process.poll() is None else None
        assert process.wait(20) == 0
    for closed_port in (port, admin, ext_proc, admin_api):
        assert _closed(closed_port), f"port {closed_port} still open after stop"


def test_up_with_a_config_file_serves_its_routes(tmp_path: Path) -> None:
    """`babelgate up -c` runs Envoy and the servers for a user's config (no demo providers of its own)."""
    with GatewayBuilder(tmp_path, processes=2, config_name="babelgate.yaml") as build:
        build.backend("mine", build.demo("mine", "anthropic", api_key="sk-mine"), api_key={"file": "provider.key"})
        build.route("house-model", ("mine", "claude-house"))
        key = build.key("me", "bg-user-config-key")
        (tmp_path / "provider.key").write_text("sk-mine\n")
        config = build.write()
        port, ext_proc = build.config["listener"]["port"], build.config["ext_proc"]["port"]
        process = subprocess.Popen([sys.executable, "-m", "ext_proc", "up", "-c", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
        output, deadline = "", time.monotonic() + 60
        try:
            while "Babelgate is up" not in output and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    output += lines.get(timeout=1)
                assert process.poll() is None, output
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=20)
            answers = {client.chat.completions.create(model="house-model", messages=[{"role": "user", "content": "hi"}])
                       .model for _ in range(4)}
            assert answers == {"claude-house"}
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            assert process.wait(20) == 0
        assert _closed(ext_proc) and _closed(ext_proc + 1) and _closed(port)


def test_keys_create_stores_only_a_hash_that_authenticates(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "gpt-4o", "backends": [{"backend": "oa", "model": "gpt-4o"}]}],
        "keys_file": "keys.yaml"}))
    result = babelgate("keys", "create", "--id", "alice", "--models", "gpt-4o", "--expires", "30d", "-c", str(config))
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("bg-") and len(key) > 40
    stored = (tmp_path / "keys.yaml").read_text()
    assert key not in stored
    entry = yaml.safe_load(stored)[0]
    assert entry["hash"] == hash_key(key) and entry["models"] == ["gpt-4o"] and entry["expires_at"]
    again = babelgate("keys", "create", "--id", "alice", "-c", str(config))
    assert again.returncode == 2 and "already exists" in again.stderr
    unknown = babelgate("keys", "create", "--id", "bob", "--models", "gpt-9", "-c", str(config))
    assert unknown.returncode == 2 and "gpt-9" in unknown.stderr
    check = babelgate("check", "-c", str(config))
    assert check.returncode == 0 and "1 keys" in check.stdout, check.stderr


def test_check_reports_a_bad_config_by_yaml_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backends:\n  - {id: oa, schema: openai, base_url: nope}\nroutes: []\n")
    result = babelgate("check", "-c", str(config))
    assert result.returncode == 2
    assert "backends[0].base_url (line 2)" in result.stderr
    assert "routes" in result.stderr


def test_check_reports_a_missing_secret_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("backends:\n  - {id: oa, schema: openai, base_url: 'http://127.0.0.1:9/v1', "
                      "api_key: {env: BG_TEST_UNSET_SECRET}}\n"
                      "routes: [{model: m, backends: [{backend: oa, model: m}]}]\n")
    result = babelgate("check", "-c", str(config), env={k: v for k, v in os.environ.items()
                                                         if k != "BG_TEST_UNSET_SECRET"})
    assert result.returncode == 2
    assert "BG_TEST_UNSET_SECRET is not set" in result.stderr and "Traceback" not in result.stderr


def test_render_prints_the_committed_example() -> None:
    result = babelgate("render", "-c", str(ROOT / "envoy" / "babelgate.example.yaml"))
    assert result.returncode == 0
    assert result.stdout == (ROOT / "envoy" / "envoy.yaml").read_text()
