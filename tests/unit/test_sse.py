"""The incremental SSE decoder: events split anywhere, every line-ending style, and a bounded buffer."""

from __future__ import annotations

import pytest

from ext_proc.streaming.sse import SSEDecoder, SSEError, SSEEvent, encode_data, encode_event

STREAM = (b"event: message_start\ndata: {\"a\":1}\n\n"
          b": keep-alive comment\n\n"
          b"data: line one\ndata: line two\n\n"
          b"event: ping\ndata: {}\n\n")
EXPECTED = [SSEEvent("message_start", b'{"a":1}'), SSEEvent(None, b"line one\nline two"), SSEEvent("ping", b"{}")]


def test_events_split_at_every_byte_boundary_decode_the_same() -> None:
    for cut in range(1, len(STREAM)):
        decoder = SSEDecoder()
        events = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) + decoder.finish()
        assert events == EXPECTED, cut


def test_crlf_and_lone_cr_line_endings() -> None:
    for newline in (b"\r\n", b"\r"):
        decoder = SSEDecoder()
        stream = STREAM.replace(b"\n", newline)
        events = []
        for index in range(len(stream)):  # one byte at a time splits CRLF pairs too
            events += decoder.feed(stream[index:index + 1])
        assert events + decoder.finish() == EXPECTED


def test_last_event_without_blank_line_is_flushed_at_finish() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.finish() == [SSEEvent(None, b"[DONE]")]


def test_an_event_larger_than_the_limit_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    with pytest.raises(SSEError, match="exceeded 64 bytes"):
        decoder.feed(b"data: " + b"x" * 100)


def test_many_small_events_do_not_count_against_the_limit() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    events = decoder.feed(b"data: 0123456789\n\n" * 100)
    assert len(events) == 100


def test_encoders_write_openai_and_anthropic_framing() -> None:
    assert encode_data({"a": 1}) == b'data: {"a":1}\n\n'
    assert encode_event("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
