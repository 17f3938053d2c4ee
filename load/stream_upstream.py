"""A streaming upstream for the benchmarks: answers every POST with a token-by-token SSE stream, one event every
`--gap-ms`, as a model would send it, and stamps each token with the moment it was sent.

    python load/stream_upstream.py --port 0 --events 100 --gap-ms 10     # prints {"port": N} when ready

`POST .../messages` gets Anthropic Messages events, anything else OpenAI chat chunks. Each text delta is
`t<CLOCK_MONOTONIC ns> ` (a token of ~20 characters): CLOCK_MONOTONIC is one clock for every process of the machine,
so a client reading the stream through any proxy knows how long each token took to reach it (one-way delay), and
the stamp survives any translation that keeps the text. The answer is HTTP/1.1 chunked, one chunk per event, each
written as its own `transport.write` (a real provider's events leave one by one). Plain asyncio on uvloop with a
hand-written HTTP/1.1 parser: its CPU is the upstream's, counted apart from the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import orjson
import uvloop

ANTHROPIC_HEAD = [
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_stream", "type": "message", "role": "assistant", "model": "claude-stream", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 0}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
]


def anthropic_event(name: str, payload: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def openai_event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Stream:
    """The events of one answer, in order; `token` makes the next text event, stamped as it is written."""

    def __init__(self, anthropic: bool, events: int) -> None:
        self.anthropic = anthropic
        self.left = events

    def opening(self) -> bytes:
        if self.anthropic:
            return b"".join(anthropic_event(name, payload) for name, payload in ANTHROPIC_HEAD)
        return openai_event({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
                             "model": "gpt-stream",
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})

    def token(self) -> bytes:
        self.left -= 1
        text = f"t{time.monotonic_ns()} "
        if self.anthropic:
            return anthropic_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                           "delta": {"type": "text_delta", "text": text}})
        return openai_event({"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1,
                             "model": "gpt-stream",
                             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})

    def closing(self, tokens: int) -> bytes:
        if self.anthropic:
            return (anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0})
                    + anthropic_event("message_delta", {"type": "message_delta",
                                                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                                        "usage": {"output_tokens": tokens}})
                    + anthropic_event("message_stop", {"type": "message_stop"}))
        base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1, "model": "gpt-stream"}
        return (openai_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                + openai_event({**base, "choices": [],
                                "usage": {"prompt_tokens": 12, "completion_tokens": tokens,
                                          "total_tokens": 12 + tokens}})
                + b"data: [DONE]\n\n")


class Upstream(asyncio.Protocol):
    events = 100
    gap = 0.01

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answering: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCP transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length:]
        path = head.split(" ", 2)[1]
        self.answering = asyncio.ensure_future(self.answer(Stream(path.rstrip("/").endswith("messages"),
                                                                  self.events)))

    async def answer(self, stream: Stream) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                        + chunked(stream.opening()))
        tokens = 0
        next_at = time.monotonic()
        while stream.left > 0:
            next_at += self.gap
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if transport.is_closing():
                return
            transport.write(chunked(stream.token()))
            tokens += 1
        transport.write(chunked(stream.closing(tokens)) + b"0\r\n\r\n")


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=int, default=100, help="text events per answer")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="between two text events")
    args = parser.parse_args(argv)
    Upstream.events, Upstream.gap = args.events, args.gap_ms / 1000
    uvloop.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
