"""The relay of an upstream MCP answer (`stages/mcp_relay.py`), chunk by chunk as Envoy hands it over."""

from __future__ import annotations

import orjson
import pytest

from ext_proc.config.models import GuardrailSettings
from ext_proc.guardrails.engine import Guardrail
from ext_proc.stages.mcp_relay import CallFacts, Relay, decorate_stateless

REDACT_EMAIL = Guardrail.of(GuardrailSettings(name="pii", pii=["email"], mode="redact", apply_to=["response"]))
BLOCK_WORD = Guardrail.of(GuardrailSettings(name="words", deny_words=["forbidden"], apply_to=["response"]))


def relay(*, streaming: bool, guardrails: tuple[Guardrail, ...] = (), stateless: bool = False,
          max_bytes: int = 1 << 20, seen: list | None = None, keep: bool = False) -> Relay:
    facts = CallFacts(7, "tools/call", "tools", stateless, guardrails, "mcp:tools", "k", 60_000)
    changed = seen if seen is not None else []
    return Relay(facts, max_bytes, lambda server, method: changed.append((server, method)), streaming,
                 keep_result=keep)


def result(value: dict, message_id: object = 7) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": message_id, "result": value})


def event(message: bytes) -> bytes:
    return b"event: message\nid: 12\ndata: " + message + b"\n\n"


def messages(sse: bytes) -> list[dict]:
    return [orjson.loads(line[6:]) for line in sse.split(b"\n") if line.startswith(b"data: ")]


def test_a_json_answer_is_held_until_its_end_then_passed_whole() -> None:
    answer = result({"content": [{"type": "text", "text": "hello"}]})
    r = relay(streaming=False)
    assert r.chunk(answer[:10], False) == b""
    out = r.chunk(answer[10:], True)
    assert orjson.loads(out) == orjson.loads(answer) and r.bytes_out == len(out)


def test_sse_events_pass_as_they_complete_reframed_without_upstream_ids() -> None:
    r = relay(streaming=True)
    progress = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                             "params": {"progressToken": "t", "progress": 1}})
    first = r.chunk(event(progress)[:20], False)
    second = r.chunk(event(progress)[20:], False)
    assert first == b"" and messages(second)[0]["method"] == "notifications/progress" and b"id: 12" not in second
    last = r.chunk(event(result({"content": []})), True)
    assert messages(last)[0]["id"] == 7


def test_list_changed_marks_the_catalog_stale_and_reaches_the_client() -> None:
    seen: list = []
    r = relay(streaming=True, seen=seen)
    out = r.chunk(event(b'{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}'), False)
    assert seen == [("tools", "notifications/tools/list_changed")] and messages(out)


def test_server_requests_and_other_ids_are_dropped() -> None:
    r = relay(streaming=True)
    out = r.chunk(event(b'{"jsonrpc": "2.0", "id": 1, "method": "sampling/createMessage", "params": {}}')
                  + event(result({"content": []}, message_id=99)), False)
    assert out == b""


def test_a_guardrail_redacts_the_result() -> None:
    r = relay(streaming=False, guardrails=(REDACT_EMAIL,))
    out = r.chunk(result({"content": [{"type": "text", "text": "mail bob@example.com"}],
                          "structuredContent": {"contact": "bob@example.com"}}), True)
    assert b"bob@example.com" not in out and r.redacted


def test_a_blocking_guardrail_replaces_the_result_with_an_error() -> None:
    r = relay(streaming=True, guardrails=(BLOCK_WORD,))
    out = r.chunk(event(result({"content": [{"type": "text", "text": "a forbidden word"}]})), True)
    [message] = messages(out)
    assert message["error"]["code"] == -32087 and message["id"] == 7 and r.error == "-32087"


def test_an_answer_past_the_limit_becomes_one_error_and_the_rest_is_dropped() -> None:
    r = relay(streaming=True, max_bytes=100)
    out = r.chunk(event(result({"content": [{"type": "text", "text": "x" * 200}]})), False)
    assert messages(out)[0]["error"]["code"] == -32083
    assert r.chunk(b"more", True) == b""


@pytest.mark.parametrize("body", [b"not json", b'{"jsonrpc": "2.0", "id": 7}'])
def test_a_broken_json_answer_is_an_upstream_error(body: bytes) -> None:
    r = relay(streaming=False)
    assert orjson.loads(r.chunk(body, True))["error"]["code"] == -32084


def test_an_upstream_error_passes_as_it_is() -> None:
    r = relay(streaming=False)
    error = orjson.dumps({"jsonrpc": "2.0", "id": 7, "error": {"code": -32602, "message": "bad"}})
    assert orjson.loads(r.chunk(error, True)) == orjson.loads(error) and r.error == "-32602"


def test_a_stateless_client_gets_the_fields_its_revision_requires() -> None:
    r = relay(streaming=False, stateless=True, keep=True)
    out = orjson.loads(r.chunk(result({"content": []}), True))
    assert out["result"]["resultType"] == "complete" and r.result_text is not None
    read = decorate_stateless("resources/read", {"contents": []}, 5000)
    assert read == {"contents": [], "resultType": "complete", "cacheScope": "private", "ttlMs": 5000}
