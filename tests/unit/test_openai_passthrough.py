"""The OpenAI passthrough, checked against fixture pairs in tests/fixtures/openai/.

`*.client.*` is what the client sends or receives, `*.upstream.*` what goes to or comes from the backend. Stream
outputs are `.client.sse` when the client did not ask for usage and `.client.usage.sse` when it did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ext_proc.providers import openai
from tests.unit.provider_checks import FixtureFolder, assert_error_envelope, feed_stream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"
MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1700000000


_fixtures = FixtureFolder(FIXTURES)
_load, _events = _fixtures.load, _fixtures.events


def _run_stream(case: str, include_usage: bool) -> tuple[openai.ChatStream, list[dict]]:
    stream = openai.ChatStream(MODEL, CREATED, include_usage)
    return stream, feed_stream(stream, _events(f"stream_{case}.upstream.sse"))


def _stream_cases() -> list[tuple[str, bool]]:
    cases = []
    for path in sorted(FIXTURES.glob("stream_*.client*.sse")):
        case, _, rest = path.name.removeprefix("stream_").partition(".client")
        cases.append((case, rest == ".usage.sse"))
    return cases


@pytest.mark.parametrize("case", sorted(p.name.split(".")[0] for p in FIXTURES.glob("request_*.client.json")))
def test_request_keeps_every_field_and_swaps_the_model(case: str) -> None:
    client = _load(f"{case}.client.json")
    upstream = openai.chat_request(client, MODEL, default_max_tokens=4096)
    assert upstream == _load(f"{case}.upstream.json")
    assert client == _load(f"{case}.client.json"), "the client's body must not be modified"


def test_streamed_request_always_asks_for_usage() -> None:
    upstream = openai.chat_request({"model": "m", "messages": [], "stream": True}, MODEL, default_max_tokens=1)
    assert upstream["stream_options"] == {"include_usage": True}
    plain = openai.chat_request({"model": "m", "messages": []}, MODEL, default_max_tokens=1)
    assert "stream_options" not in plain


def test_response_passes_through_and_usage_is_read() -> None:
    answer = _load("response_text.openai.json")
    assert openai.chat_response(answer, MODEL, CREATED) == _load("response_text.openai.json")
    ChatCompletion.model_validate(answer)
    assert openai.usage_of(answer) == answer["usage"]
    assert openai.usage_of({"choices": []}) is None


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases())
def test_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    _, chunks = _run_stream(case, include_usage)
    suffix = ".client.usage.sse" if include_usage else ".client.sse"
    assert chunks == [json.loads(event.data) for event in _events(f"stream_{case}{suffix}")]
    for chunk in chunks:
        if "error" in chunk:
            assert_error_envelope(chunk)
        else:
            ChatCompletionChunk.model_validate(chunk)


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_is_recorded_even_when_hidden_from_the_client(include_usage: bool) -> None:
    stream, chunks = _run_stream("text", include_usage)
    assert stream.finished
    assert stream.usage is not None and stream.usage["total_tokens"] == 23
    assert any(chunk.get("usage") for chunk in chunks) == include_usage
    assert all(("usage" in chunk) == include_usage for chunk in chunks)


def test_done_marker_finishes_the_stream_and_is_not_forwarded() -> None:
    stream = openai.ChatStream(MODEL, CREATED, include_usage=False)
    assert stream.feed(None, b"[DONE]") == []
    assert stream.finished
    assert stream.finish() == []


def test_stream_without_done_but_with_finish_reason_is_complete() -> None:
    stream, chunks = _run_stream("no_done", include_usage=False)
    assert stream.finished
    assert "error" not in chunks[-1]


def test_stream_cut_before_any_finish_reason_reports_an_error() -> None:
    stream, chunks = _run_stream("cut_early", include_usage=False)
    assert not stream.finished
    assert "ended before" in chunks[-1]["error"]["message"]


def test_mid_stream_error_stops_the_stream() -> None:
    stream, chunks = _run_stream("error_mid_stream", include_usage=True)
    assert chunks[-1]["error"]["type"] == "server_error"
    assert not stream.finished
    assert stream.feed(None, b"[DONE]") == []
    assert stream.finish() == []


def test_malformed_stream_event_is_an_error() -> None:
    stream = openai.ChatStream(MODEL, CREATED, include_usage=False)
    chunks = stream.feed(None, b"{truncated")
    assert_error_envelope(chunks[0])


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_error_response_keeps_status_and_openai_shape(case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = openai.error_response(case["status"], body)
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


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
