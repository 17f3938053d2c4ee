"""The OpenAI passthrough: what only it does.

The fixture pairs in tests/fixtures/openai/ (`*.client.*` is what the client sends or receives, `*.upstream.*` what
goes to or comes from the backend; stream outputs are `.client.sse` without and `.client.usage.sse` with
`include_usage`) are checked by tests/unit/test_goldens.py. Here: the usage option it adds, `[DONE]` and the
finish_reason as ends of a stream, the Anthropic `cache_control` marks it strips, and the usage option taken back
for a stream relayed as the backend sent it.
"""

from __future__ import annotations

import pytest

from ext_proc.providers import openai
from ext_proc.providers.openai import passthrough_request
from ext_proc.stages.upstream_request import without_gateway_usage
from tests.unit.goldens import CREATED, OPENAI

MODEL = OPENAI.model


def test_streamed_request_always_asks_for_usage() -> None:
    upstream = openai.chat_request({"model": "m", "messages": [], "stream": True}, MODEL, default_max_tokens=1)
    assert upstream["stream_options"] == {"include_usage": True}
    plain = openai.chat_request({"model": "m", "messages": []}, MODEL, default_max_tokens=1)
    assert "stream_options" not in plain


def test_answer_without_usage_has_none() -> None:
    assert openai.usage_of({"choices": []}) is None


def test_done_marker_finishes_the_stream_and_is_not_forwarded() -> None:
    stream = openai.ChatStream(MODEL, CREATED, include_usage=False)
    assert stream.feed(None, b"[DONE]") == []
    assert stream.finished
    assert stream.finish() == []


def test_stream_without_done_but_with_finish_reason_is_complete() -> None:
    stream, chunks = OPENAI.run_stream("no_done", include_usage=False)
    assert stream.finished
    assert "error" not in chunks[-1]


def test_wire_constants() -> None:
    assert openai.SCHEMA == "openai"
    assert openai.chat_path(MODEL, True) == openai.chat_path(MODEL, False) == "/chat/completions"
    translator = openai.OpenAITranslator()
    assert translator.identity_responses and translator.serves_embeddings


def test_anthropic_cache_control_marks_are_removed_for_openai_backends() -> None:
    body = {"model": "m", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "big prompt", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": {"type": "ephemeral"}}]}
    sent = openai.chat_request(body, "gpt-4o", default_max_tokens=10)
    assert "cache_control" not in str(sent)
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "big prompt"}]
    assert "cache_control" in str(body)  # the client's body is not mutated


def test_body_without_cache_control_is_not_copied_deeply() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert openai.chat_request({"model": "m", "messages": messages}, "x", default_max_tokens=1)["messages"] is messages


@pytest.mark.parametrize(("asked", "sent"), [
    (None, None),
    ({}, {}),
    ({"include_usage": False}, {"include_usage": False}),
    ({"include_obfuscation": False}, {"include_obfuscation": False}),
    ({"include_usage": True}, {"include_usage": True}),
])
def test_a_stream_relayed_as_sent_asks_for_what_the_client_asked(asked: object, sent: object) -> None:
    """What the gateway added for its own meter is taken back; the client's own options stay."""
    client = {"model": "m", "stream": True, "messages": [], **({"stream_options": asked} if asked is not None else {})}
    upstream = passthrough_request(client, "m", "openai", 100)
    assert upstream["stream_options"]["include_usage"] is True
    relayed = without_gateway_usage(upstream, asked)
    assert relayed.get("stream_options") == sent
    assert upstream["stream_options"]["include_usage"] is True  # not changed in place
