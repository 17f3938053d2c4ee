"""A streamed answer through the relay on its own: provider SSE in, client SSE out, with the stream guard and the
usage meter watching, and the stall timer that ends a stream whose backend went quiet."""

from __future__ import annotations

import asyncio

import orjson

from ext_proc import providers
from ext_proc.config.models import GuardrailSettings
from ext_proc.errors import UpstreamError
from ext_proc.guardrails.engine import Guardrail
from ext_proc.stages.stream_guard import StallTimer, StreamGuard
from ext_proc.stages.stream_relay import StreamRelay
from ext_proc.stages.usage_meter import UsageMeter
from ext_proc.streaming.sse import DONE, SSEDecoder
from ext_proc.wire.external_processor_pb2 import ProcessingResponse

BLOCK = Guardrail.of(GuardrailSettings(name="no-launch-codes", deny_words=["launch code"], mode="block",
                                       apply_to=["response"]))


def _provider_chunk(text: str) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _relay(guard: StreamGuard | None = None, meter: UsageMeter | None = None) -> StreamRelay:
    stream = providers.for_schema("openai").chat_stream("m", 1, False)
    return StreamRelay("text/event-stream", stream, None, guard, meter)


def _texts(out: bytes) -> list[str]:
    """What the client reads: each chunk's text, or the error's code."""
    texts = []
    for event in SSEDecoder().feed(out):
        if event.data == b"[DONE]":
            texts.append("[DONE]")
            continue
        chunk = orjson.loads(event.data)
        texts.append(chunk["error"]["code"] if "error" in chunk else chunk["choices"][0]["delta"]["content"])
    return texts


def test_a_blocked_phrase_split_across_chunks_ends_the_answer_before_any_of_it_goes_out() -> None:
    relay = _relay(guard=StreamGuard((BLOCK,), "r"))
    assert _texts(relay.relay(_provider_chunk("the launch"), False)) == [""]  # held back: the window
    assert _texts(relay.relay(_provider_chunk(" code is" + " ..." * 20), False)) == ["guardrail_blocked"]
    end = _provider_chunk(" 1234") + b"data: [DONE]\n\n"
    assert _texts(relay.relay(end, True)) == ["[DONE]"]  # nothing the model says next


def test_the_meter_counts_what_the_client_was_sent() -> None:
    meter = UsageMeter(prompt_estimate=7, chars_per_token=4.0, keep_text=True)
    relay = _relay(meter=meter)
    relay.relay(_provider_chunk("hello ") + _provider_chunk("world"), False)
    assert meter.streamed_chars == len("hello world") and meter.completion == ["hello ", "world"]
    assert tuple(meter.final()) == (7, 3, 0)  # no usage reported: the estimate, and 11 characters at 4 a token


def test_a_malformed_stream_becomes_an_error_chunk_then_the_end() -> None:
    relay = _relay()
    assert _texts(relay.relay(b"data: {not json\n\n", True))[-1] == "[DONE]"
    assert relay.abort(UpstreamError("cut")).endswith(DONE)


def test_the_stall_timer_ends_the_stream_once_with_an_error_event() -> None:
    pushed: list[ProcessingResponse] = []
    relay = _relay()

    async def run() -> None:
        stall = StallTimer("b1", 0.05, pushed.append, relay.abort)
        stall.arm()
        stall.arm()  # a chunk arrived: the wait starts again, the first timer is gone
        for _ in range(3000):  # up to 30 s on a busy machine
            if stall.fired:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # room for a second push, were there one

    asyncio.run(run())
    assert len(pushed) == 1
    streamed = pushed[0].response_body.response.body_mutation.streamed_response
    assert streamed.end_of_stream
    assert _texts(streamed.body) == ["stream_idle_timeout", "[DONE]"]
