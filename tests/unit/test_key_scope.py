"""Key scope with wildcard routes: a key allowed `openai/*` reaches any name under it and nothing else."""

from __future__ import annotations

import pytest

from ext_proc.auth.virtual_keys import hash_key
from ext_proc.config.loading import parse_config
from ext_proc.runtime.build import compile_runtime
from ext_proc.stages.route import RouteStage
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import body, drive, headers

KEY = "bg-wildcard-scope-key"
CONFIG = f"""
backends:
  - {{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1", api_key: {{env: BG_SCOPE_KEY}}}}
  - {{id: an, schema: anthropic, base_url: "http://127.0.0.1:9", api_key: {{env: BG_SCOPE_KEY}}}}
routes:
  - {{model: "openai/*", backends: [{{backend: oa, model: "*"}}]}}
  - {{model: "anthropic/*", backends: [{{backend: an, model: "*"}}]}}
  - {{model: plain, aliases: [plain-alias], backends: [{{backend: an, model: claude-x}}]}}
virtual_keys:
  - {{id: openai-only, hash: "{hash_key(KEY)}", models: ["openai/*"]}}
"""


def _status(monkeypatch: pytest.MonkeyPatch, model: str) -> int:
    monkeypatch.setenv("BG_SCOPE_KEY", "sk-scope")
    stage = RouteStage(compile_runtime(parse_config(CONFIG)))
    drive(stage, ProcessingRequest(request_headers=headers(
        {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {KEY}"})))
    reply = drive(stage, ProcessingRequest(request_body=body(
        {"model": model, "messages": [{"role": "user", "content": "hi"}]})))
    assert reply is not None
    if reply.WhichOneof("response") == "immediate_response":
        return reply.immediate_response.status.code
    return 200


@pytest.mark.parametrize(("model", "status"), [
    ("openai/gpt-4o", 200),
    ("openai/anything-else", 200),
    ("anthropic/claude-x", 403),
    ("plain", 403),
    ("plain-alias", 403),
    ("openai", 404),
    ("openai/", 404),
    ("OPENAI/gpt-4o", 404),
    ("anthropic/../openai/gpt", 403),
])
def test_a_wildcard_scope_reaches_its_names_only(monkeypatch: pytest.MonkeyPatch, model: str, status: int) -> None:
    assert _status(monkeypatch, model) == status
