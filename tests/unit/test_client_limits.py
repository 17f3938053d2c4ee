"""Ceilings on what a client controls, hop-by-hop headers, and the secret-manager hook."""

from __future__ import annotations

import sys

import pytest

from ext_proc.auth.credentials import CredentialError, read_secret
from ext_proc.config.loading import parse_config
from ext_proc.config.models import SecretRef
from ext_proc.runtime.build import compile_runtime
from ext_proc.stages.attempt import forwarded_never
from ext_proc.stages.route import RouteStage
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import CLIENT_KEY, CONFIG, body, drive, headers, immediate, runtime

CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}"}


def _refusal(monkeypatch: pytest.MonkeyPatch, payload: object) -> tuple[int, dict]:
    runtime(monkeypatch)  # sets the provider secrets the config names
    stage = RouteStage(compile_runtime(parse_config(CONFIG.replace("max_body_bytes: 2048", "max_body_bytes: 1048576"))))
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    status, error, _ = immediate(drive(stage, ProcessingRequest(request_body=body(payload))))  # type: ignore[arg-type]
    return status, error["error"]


def test_json_nested_past_the_limit_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    nested: object = "x"
    for _ in range(70):
        nested = [nested]
    status, error = _refusal(monkeypatch, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                           "metadata": nested})
    assert (status, error["code"]) == (400, "json_too_deep")


def test_tool_schemas_of_ordinary_depth_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    schema: dict = {"type": "string"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"inner": schema}}
    stage = RouteStage(runtime(monkeypatch))
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    reply = drive(stage, ProcessingRequest(request_body=body({
        "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]})))
    assert reply is not None and reply.WhichOneof("response") == "request_body"


def test_too_many_tools_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": {}}} for i in range(513)]
    status, error = _refusal(monkeypatch, {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
                                           "tools": tools})
    assert (status, error["code"], error["param"]) == (400, "too_many_tools", "tools")


@pytest.mark.parametrize("name", ["connection", "keep-alive", "proxy-authorization", "te", "upgrade", "trailer",
                                  "authorization", "x-babelgate-tags", "x-envoy-max-retries"])
def test_hop_by_hop_and_client_headers_never_reach_a_provider(name: str) -> None:
    assert forwarded_never(name)


def test_ordinary_headers_do_reach_it() -> None:
    assert not forwarded_never("x-request-id") and not forwarded_never("traceparent")


def test_secret_from_a_command() -> None:
    ref = SecretRef(command=[sys.executable, "-c", "print('sk-from-vault')"])
    assert read_secret(ref, "backends[0].api_key") == "sk-from-vault"


@pytest.mark.parametrize(("argv", "message"), [
    ([sys.executable, "-c", "import sys; print('leaked?', file=sys.stderr); sys.exit(3)"], "exited with status 3"),
    ([sys.executable, "-c", "pass"], "printed nothing"),
    (["/nonexistent/vault"], "could not be run"),
])
def test_secret_command_failures_are_clear_and_leak_nothing(argv: list[str], message: str) -> None:
    with pytest.raises(CredentialError, match=message) as raised:
        read_secret(SecretRef(command=argv), "backends[0].api_key")
    assert "leaked" not in str(raised.value)


def test_a_secret_has_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef(env="X", command=["true"])
