"""The demo providers speak the real OpenAI and Anthropic wire formats: the official SDKs parse every answer.

Each provider runs on its own event loop in a background thread so the synchronous SDK clients can call it.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import anthropic
import httpx
import openai
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ext_proc.demo import bedrock_server, cohere_server, gemini_server, openai_server
from ext_proc.demo.answers import VERBOSE_WORDS, Call
from ext_proc.demo.faults import FAULT_HEADER, Faults, FaultSpecError, parse_faults
from ext_proc.demo.server import DemoProvider, start_demo_provider

T = TypeVar("T")
KEY = "sk-demo-test"
REPO = Path(__file__).resolve().parents[2]
WEATHER_TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "detailed": {"type": "boolean"},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}},
        },
        "place": {"$ref": "#/$defs/Place"},
    },
    "required": ["city"],
    "$defs": {"Place": {"type": "object", "properties": {"zip": {"type": ["string", "null"]}}}},
}
WEATHER_ARGUMENTS = {
    "city": "demo", "unit": "celsius", "days": 1, "detailed": True, "where": {"lat": 1, "tags": ["demo"]},
    "place": {"zip": "demo"},
}
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "input_schema": WEATHER_TOOL_SCHEMA},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
]
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


class _ProviderThread:
    """A demo provider on its own event loop in a daemon thread."""

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop], **kwargs: object) -> None:
        self._loop = loop_factory()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.provider: DemoProvider = self.run(start_demo_provider(**kwargs))

    def run(self, coroutine: Coroutine[object, object, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def close(self) -> None:
        self.run(self.provider.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def demo_start() -> Iterator[Callable[..., DemoProvider]]:
    started: list[_ProviderThread] = []

    def start(kind: str, name: str, loop: str = "asyncio", **kwargs: object) -> DemoProvider:
        factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
        started.append(_ProviderThread(factory, kind=kind, name=name, **kwargs))
        return started[-1].provider

    yield start
    for running in started:
        running.close()


@pytest.fixture
def demo_openai(demo_start: Callable[..., DemoProvider]) -> DemoProvider:
    return demo_start("openai", "openai-a", api_key=KEY)


@pytest.fixture
def demo_anthropic(demo_start: Callable[..., DemoProvider]) -> DemoProvider:
    return demo_start("anthropic", "anthropic-b", api_key=KEY)


@pytest.fixture
def demo_openai_client(demo_openai: DemoProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{demo_openai.url}/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def demo_anthropic_client(demo_anthropic: DemoProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=demo_anthropic.url, api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


def _user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


# --- OpenAI ---------------------------------------------------------------------------------------------------------


def test_chat_completion_echoes_the_last_user_message(demo_openai_client: openai.OpenAI) -> None:
    raw = demo_openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "be brief"}, *_user("hi there")]
    )
    completion = raw.parse()
    assert raw.headers["x-demo-provider"] == "openai-a"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello from openai-a (gpt-4o-mini)! You said: hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8


def test_chat_stream_says_the_same_in_word_chunks_and_ends_with_usage(demo_openai_client: openai.OpenAI) -> None:
    chunks = list(demo_openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=_user("hi there"), stream=True, stream_options={"include_usage": True}
    ))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello from openai-a (gpt-4o-mini)! You said: hi there"
    assert len(chunks) > 5
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_chat_stream_ends_with_done_and_omits_usage_unless_asked(demo_openai: DemoProvider) -> None:
    response = httpx.post(
        f"{demo_openai.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
        json={"model": "m", "messages": _user("hi"), "stream": True},
    )
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.endswith("data: [DONE]\n\n")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert all("usage" not in event for event in events)


def test_max_completion_tokens_truncates_with_length(demo_openai_client: openai.OpenAI) -> None:
    completion = demo_openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=_user("hi there"), max_completion_tokens=3
    )
    assert completion.choices[0].message.content == "Hello from openai-a "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_stop_sequence_cuts_the_answer(demo_openai_client: openai.OpenAI) -> None:
    completion = demo_openai_client.chat.completions.create(model="m", messages=_user("hi"), stop=["!", "zzz"])
    assert completion.choices[0].message.content == "Hello from openai-a (m)"
    assert completion.choices[0].finish_reason == "stop"


def test_tool_call_arguments_follow_the_schema(demo_openai_client: openai.OpenAI) -> None:
    completion = demo_openai_client.chat.completions.create(
        model="m", messages=_user("weather?"), tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS


def test_tool_call_arguments_stream_in_fragments(demo_openai_client: openai.OpenAI) -> None:
    chunks = list(demo_openai_client.chat.completions.create(
        model="m", messages=_user("weather?"), tools=OPENAI_TOOLS, stream=True
    ))
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    pieces = [delta.function.arguments for delta in deltas[1:] if delta.function and delta.function.arguments]
    assert len(pieces) >= 3
    assert all(delta.index == 0 and delta.id is None for delta in deltas[1:])
    assert json.loads("".join(pieces)) == WEATHER_ARGUMENTS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parallel_tools_header_calls_several_tools(demo_openai_client: openai.OpenAI) -> None:
    completion = demo_openai_client.chat.completions.create(
        model="m", messages=_user("both"), tools=OPENAI_TOOLS, extra_headers={"x-demo-parallel-tools": "2"}
    )
    calls = completion.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {}


def test_tool_choice_none_answers_with_text(demo_openai_client: openai.OpenAI) -> None:
    completion = demo_openai_client.chat.completions.create(
        model="m", messages=_user("hi"), tools=OPENAI_TOOLS, tool_choice="none"
    )
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content == "Hello from openai-a (m)! You said: hi"


def test_tool_result_is_mentioned_in_the_answer(demo_openai_client: openai.OpenAI) -> None:
    messages = [
        *_user("weather?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    ]
    completion = demo_openai_client.chat.completions.create(model="m", messages=messages, tools=OPENAI_TOOLS)
    assert completion.choices[0].message.content == "Hello from openai-a (m)! The tool returned: sunny, 21C"


def test_embeddings_are_deterministic_in_float_and_base64(demo_openai_client: openai.OpenAI) -> None:
    as_base64 = demo_openai_client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    as_float = demo_openai_client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    vectors = [item.embedding for item in as_base64.data]
    assert vectors == [item.embedding for item in as_float.data]
    assert len(vectors[0]) == 8 and vectors[0] != vectors[1]
    assert abs(sum(value * value for value in vectors[0]) - 1) < 1e-5
    assert as_base64.usage.prompt_tokens == 2
    wide = demo_openai_client.embeddings.create(model="m", input="a", dimensions=16, encoding_format="float")
    assert len(wide.data[0].embedding) == 16


def test_models_are_listed(demo_openai_client: openai.OpenAI) -> None:
    models = demo_openai_client.models.list()
    assert "gpt-4o-mini" in [model.id for model in models]
    assert {model.owned_by for model in models} == {"openai-a"}


def test_wrong_openai_key_is_rejected(demo_openai: DemoProvider) -> None:
    with openai.OpenAI(base_url=f"{demo_openai.url}/v1", api_key="wrong", max_retries=0) as client, \
            pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": _user("hi")}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": _user("hi"), "max_tokens": 0}, "max_tokens"),
])
def test_invalid_chat_body_is_an_openai_400(demo_openai: DemoProvider, body: dict[str, object], param: str) -> None:
    response = httpx.post(
        f"{demo_openai.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, json=body
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


# --- Anthropic ------------------------------------------------------------------------------------------------------


def test_message_create_parses_with_sdk(demo_anthropic_client: anthropic.Anthropic) -> None:
    raw = demo_anthropic_client.messages.with_raw_response.create(
        model="claude-demo", max_tokens=100, system="be brief", messages=_user("hi there")
    )
    message = raw.parse()
    assert raw.headers["x-demo-provider"] == "anthropic-b"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from anthropic-b (claude-demo)! You said: hi there"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.output_tokens == 8
    assert message.usage.input_tokens > 0
    assert message.usage.cache_read_input_tokens == 0


def test_message_stream_has_the_real_event_sequence(demo_anthropic: DemoProvider) -> None:
    response = httpx.post(
        f"{demo_anthropic.url}/v1/messages", headers=ANTHROPIC_HEADERS,
        json={"model": "c", "max_tokens": 100, "messages": _user("hi"), "stream": True},
    )
    blocks = [block.split("\n") for block in response.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in blocks]
    payloads = [json.loads(lines[1].removeprefix("data: ")) for lines in blocks]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert [payload["type"] for payload in payloads] == names
    assert payloads[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert payloads[-2]["usage"]["output_tokens"] == 7


def test_message_stream_parses_with_sdk(demo_anthropic_client: anthropic.Anthropic) -> None:
    with demo_anthropic_client.messages.stream(model="c", max_tokens=100, messages=_user("hi there")) as stream:
        texts = list(stream.text_stream)
        message = stream.get_final_message()
    assert len(texts) == 8
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(texts) == "Hello from anthropic-b (c)! You said: hi there"
    assert message.usage.output_tokens == 8


def test_max_tokens_and_stop_sequences_set_the_stop_reason(demo_anthropic_client: anthropic.Anthropic) -> None:
    cut = demo_anthropic_client.messages.create(model="c", max_tokens=2, messages=_user("hi"))
    assert cut.stop_reason == "max_tokens"
    assert cut.content[0].type == "text" and cut.content[0].text == "Hello from "
    stopped = demo_anthropic_client.messages.create(
        model="c", max_tokens=99, messages=_user("hi"), stop_sequences=["!"]
    )
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "!"


def test_tool_use_input_follows_the_schema(demo_anthropic_client: anthropic.Anthropic) -> None:
    message = demo_anthropic_client.messages.create(
        model="c", max_tokens=100, messages=_user("weather?"), tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather"
    assert block.input == WEATHER_ARGUMENTS


def test_tool_use_input_streams_in_fragments(demo_anthropic_client: anthropic.Anthropic) -> None:
    with demo_anthropic_client.messages.stream(
        model="c", max_tokens=100, messages=_user("weather?"), tools=ANTHROPIC_TOOLS,
        extra_headers={"x-demo-parallel-tools": "2"},
    ) as stream:
        events = list(stream)
        message = stream.get_final_message()
    first_tool_deltas = [
        event for event in events
        if event.type == "content_block_delta" and event.delta.type == "input_json_delta" and event.index == 0
    ]
    assert len(first_tool_deltas) >= 3
    assert [block.type for block in message.content] == ["tool_use", "tool_use"]
    assert message.content[0].input == WEATHER_ARGUMENTS
    assert message.content[1].name == "get_time"
    assert message.stop_reason == "tool_use"


def test_tool_choice_none_and_tool_results_answer_with_text(demo_anthropic_client: anthropic.Anthropic) -> None:
    plain = demo_anthropic_client.messages.create(
        model="c", max_tokens=100, messages=_user("hi"), tools=ANTHROPIC_TOOLS, tool_choice={"type": "none"}
    )
    assert plain.content[0].type == "text"
    messages = [
        *_user("weather?"),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    answered = demo_anthropic_client.messages.create(
        model="c", max_tokens=100, messages=messages, tools=ANTHROPIC_TOOLS
    )
    assert answered.content[0].type == "text"
    assert answered.content[0].text == "Hello from anthropic-b (c)! The tool returned: sunny"


def test_cache_control_reports_cache_read_tokens(demo_anthropic_client: anthropic.Anthropic) -> None:
    message = demo_anthropic_client.messages.create(
        model="c", max_tokens=100, messages=_user("hi"),
        system=[{"type": "text", "text": "a long system prompt " * 20, "cache_control": {"type": "ephemeral"}}],
    )
    assert message.usage.cache_read_input_tokens and message.usage.cache_read_input_tokens > 0


def test_wrong_anthropic_key_is_rejected(demo_anthropic: DemoProvider) -> None:
    with anthropic.Anthropic(base_url=demo_anthropic.url, api_key="wrong", max_retries=0) as client, \
            pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(model="c", max_tokens=10, messages=_user("hi"))
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize(("headers", "body"), [
    ({"x-api-key": KEY}, {"model": "c", "max_tokens": 10, "messages": _user("hi")}),
    (ANTHROPIC_HEADERS, {"model": "c", "messages": _user("hi")}),
    (ANTHROPIC_HEADERS, {"model": "c", "max_tokens": 10, "messages": []}),
    (ANTHROPIC_HEADERS, {"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "x"}]}]}),
    (ANTHROPIC_HEADERS, {"model": "c", "max_tokens": 10, "messages": [{"role": "system", "content": "hi"}]}),
])
def test_invalid_message_request_is_an_anthropic_400(
    demo_anthropic: DemoProvider, headers: dict[str, str], body: dict[str, object]
) -> None:
    response = httpx.post(f"{demo_anthropic.url}/v1/messages", headers=headers, json=body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- Faults ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("", Faults()),
    ("openai-a:500", Faults(status=500)),
    ("*:stall=20, openai-a:reset", Faults(stall_ms=20, reset=True)),
    ("other:500,openai-a:midstream=3,openai-a:slow=5", Faults(midstream=3, slow_ms=5)),
    ("openai-a:429,openai-a:503", Faults(status=503)),
    ("*:verbose,other:500", Faults(verbose=True)),
])
def test_fault_spec_applies_only_items_for_this_provider(spec: str, expected: Faults) -> None:
    assert parse_faults(spec, "openai-a") == expected


@pytest.mark.parametrize("spec", ["openai-a", "openai-a:explode", "*:200", "*:stall=soon", "other:stall", ":500",
                                  "*:verbose=1", "other:verbosely"])
def test_malformed_fault_spec_is_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(spec, "openai-a")


def test_status_fault_answers_in_the_openai_error_format(demo_openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        demo_openai_client.models.list(extra_headers={"x-demo-fault": "openai-a:503"})
    assert caught.value.status_code == 503
    assert caught.value.type == "server_error"
    with pytest.raises(openai.RateLimitError) as limited:
        demo_openai_client.models.list(extra_headers={"x-demo-fault": "*:429"})
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.code == "rate_limit_exceeded"


def test_status_fault_answers_in_the_anthropic_error_format(demo_anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        demo_anthropic_client.messages.create(
            model="c", max_tokens=10, messages=_user("hi"), extra_headers={"x-demo-fault": "anthropic-b:529"}
        )
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        demo_anthropic_client.messages.create(
            model="c", max_tokens=10, messages=_user("hi"), extra_headers={"x-demo-fault": "anthropic-b:429"}
        )
    assert limited.value.response.headers["retry-after"] == "1"


def test_fault_for_another_provider_is_ignored(demo_openai_client: openai.OpenAI) -> None:
    models = demo_openai_client.models.list(extra_headers={"x-demo-fault": "anthropic-b:500"})
    assert models.data


def test_unknown_fault_action_is_a_400(demo_openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        demo_openai_client.models.list(extra_headers={"x-demo-fault": "openai-a:explode"})
    assert "unknown action 'explode'" in caught.value.message


def test_reset_fault_drops_the_connection(demo_openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        demo_openai_client.chat.completions.create(
            model="m", messages=_user("hi"), extra_headers={"x-demo-fault": "openai-a:reset"}
        )


def test_stall_fault_delays_the_answer(demo_openai_client: openai.OpenAI) -> None:
    started = time.monotonic()
    demo_openai_client.models.list(extra_headers={"x-demo-fault": "*:stall=300"})
    assert time.monotonic() - started >= 0.3


def test_midstream_fault_aborts_the_stream(demo_openai_client: openai.OpenAI) -> None:
    stream = demo_openai_client.chat.completions.create(
        model="m", messages=_user("hi"), stream=True, extra_headers={"x-demo-fault": "openai-a:midstream=2"}
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(stream)
    assert len(received) == 2


def test_slow_fault_spaces_the_events_each_flushed_on_its_own(demo_anthropic: DemoProvider) -> None:
    arrivals = []
    asked = time.monotonic()
    with httpx.stream(
        "POST", f"{demo_anthropic.url}/v1/messages", headers={**ANTHROPIC_HEADERS, "x-demo-fault": "*:slow=100"},
        json={"model": "c", "max_tokens": 3, "messages": _user("hi"), "stream": True},
    ) as response:
        arrivals = [time.monotonic() for line in response.iter_lines() if line.startswith("event: ")]
    assert len(arrivals) == 9
    # The server pauses 100 ms before each event after the first, so the last can never arrive before 8 pauses have
    # passed since the request was sent, however late it is read (less 50 ms: a loop's timer may fire a millisecond
    # early).
    assert arrivals[-1] - asked >= 8 * 0.1 - 0.05
    # Each flushed on its own: the events come apart, not in one piece at the end. A read held up on a busy machine
    # bunches the events that came meanwhile, so the median gap, against half a pause: only a stall over about half
    # the stream brings it down.
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] >= 0.05, f"gaps between events: {[round(gap, 3) for gap in gaps]}"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_reset_and_midstream_faults_drop_raw_connections(demo_start: Callable[..., DemoProvider], loop: str) -> None:
    provider = demo_start("openai", "openai-a", loop=loop)
    body = json.dumps({"model": "m", "messages": _user("hi"), "stream": True}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\nx-demo-fault: " % len(body)
    assert _exchange(provider.port, head + b"*:reset\r\n\r\n" + body) == b""
    received = _exchange(provider.port, head + b"*:midstream=3\r\n\r\n" + body)
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert received.count(b"data: ") == 3
    assert not received.endswith(b"0\r\n\r\n")


def test_close_ends_idle_and_stalled_connections() -> None:
    async def scenario() -> float:
        provider = await start_demo_provider("openai", "openai-a")
        _, idle = await asyncio.open_connection("127.0.0.1", provider.port)
        reader, stalled = await asyncio.open_connection("127.0.0.1", provider.port)
        stalled.write(b"GET /v1/models HTTP/1.1\r\nx-demo-fault: *:stall=30000\r\n\r\n")
        deadline = time.monotonic() + 30
        while not provider.requests:  # the stall is under way (the request is recorded before it)
            assert time.monotonic() < deadline, "the stalled request never reached the provider"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await provider.close()
        assert await reader.read() == b""
        idle.close()
        stalled.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 10  # far below the 30 s stall it cut short


def test_server_wide_faults_apply_to_every_request(demo_start: Callable[..., DemoProvider]) -> None:
    provider = demo_start("anthropic", "anthropic-c", faults="anthropic-c:500")
    response = httpx.post(f"{provider.url}/v1/messages", headers=ANTHROPIC_HEADERS, json={})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"


# --- The verbose fault: answers that use all the output a request allows -------------------------------------------


def _answered(module: ModuleType, path: str, body: dict[str, object], headers: dict[str, str] | None = None) -> dict:
    """A provider module's JSON answer to a `verbose` request (the modules are pure functions of the call)."""
    reply = module.answer(Call("demo", "POST", path, {"authorization": "Bearer k", **(headers or {})}, body, None,
                               verbose=True))
    assert reply.status == 200, reply.body
    return json.loads(reply.body)


def fault(spec: str) -> dict[str, str]:
    return {FAULT_HEADER: spec}


def _word_count(text: str) -> int:
    return len(text.split())


def test_openai_n_gives_n_choices_and_usage_counts_them_all(demo_openai_client: openai.OpenAI) -> None:
    answer = demo_openai_client.chat.completions.create(model="m", messages=_user("hi"), n=3)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in answer.choices}) == 1
    one = demo_openai_client.chat.completions.create(model="m", messages=_user("hi"))
    assert answer.usage is not None and one.usage is not None
    assert answer.usage.completion_tokens == 3 * one.usage.completion_tokens


def test_verbose_openai_choices_each_run_to_the_limit(demo_openai_client: openai.OpenAI) -> None:
    answer = demo_openai_client.chat.completions.create(model="m", messages=_user("hi"), n=4,
                                                        max_completion_tokens=25, extra_headers=fault("*:verbose"))
    assert [_word_count(choice.message.content or "") for choice in answer.choices] == [25] * 4
    assert {choice.finish_reason for choice in answer.choices} == {"length"}
    assert answer.usage is not None and answer.usage.completion_tokens == 100


def test_verbose_openai_stream_streams_every_choice_and_sums_the_usage(demo_openai_client: openai.OpenAI) -> None:
    chunks = list(demo_openai_client.chat.completions.create(
        model="m", messages=_user("hi"), n=2, max_tokens=10, stream=True, stream_options={"include_usage": True},
        extra_headers=fault("openai-a:verbose")))
    texts = ["".join(chunk.choices[0].delta.content or "" for chunk in chunks
                     if chunk.choices and chunk.choices[0].index == index) for index in (0, 1)]
    assert [_word_count(text) for text in texts] == [10, 10]
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason] \
        == ["length", "length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_verbose_answer_without_a_limit_runs_to_the_models_maximum(demo_start: Callable[..., DemoProvider]) -> None:
    provider = demo_start("openai", "openai-v", faults="*:verbose")  # server-wide
    with openai.OpenAI(base_url=f"{provider.url}/v1", api_key=KEY, max_retries=0, timeout=30) as client:
        answer = client.chat.completions.create(model="m", messages=_user("hi"))
    assert answer.usage is not None and answer.usage.completion_tokens == VERBOSE_WORDS
    assert _word_count(answer.choices[0].message.content or "") == VERBOSE_WORDS


def test_without_the_fault_answers_stay_short(demo_openai_client: openai.OpenAI) -> None:
    answer = demo_openai_client.chat.completions.create(model="m", messages=_user("hi"), max_tokens=500)
    assert answer.choices[0].finish_reason == "stop" and answer.usage is not None
    assert answer.usage.completion_tokens < 20


@pytest.mark.parametrize("n", [0, 129, "2", True])
def test_invalid_n_is_an_openai_400(demo_openai: DemoProvider, n: object) -> None:
    response = httpx.post(f"{demo_openai.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                          json={"model": "m", "messages": _user("hi"), "n": n})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def test_verbose_claude_thinks_its_budget_and_writes_the_rest(demo_anthropic_client: anthropic.Anthropic) -> None:
    message = demo_anthropic_client.messages.create(
        model="c", max_tokens=1100, messages=_user("hi"), thinking={"type": "enabled", "budget_tokens": 1024},
        extra_headers=fault("anthropic-b:verbose"))
    thinking, text = message.content
    assert thinking.type == "thinking" and _word_count(thinking.thinking) == 1024
    assert text.type == "text" and _word_count(text.text) == 76
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 1100


def test_verbose_claude_stream_reports_the_whole_limit(demo_anthropic_client: anthropic.Anthropic) -> None:
    with demo_anthropic_client.messages.stream(model="c", max_tokens=40, messages=_user("hi"),
                                               extra_headers=fault("*:verbose")) as stream:
        message = stream.get_final_message()
    assert _word_count(message.content[0].text) == 40 and message.usage.output_tokens == 40


def test_verbose_gemini_candidates_each_run_to_max_output_tokens() -> None:
    answer = _answered(gemini_server, "/v1beta/models/gemini-2.5-flash:generateContent",
                       {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                        "generationConfig": {"candidateCount": 3, "maxOutputTokens": 12}}, {"x-goog-api-key": "k"})
    assert [_word_count(c["content"]["parts"][0]["text"]) for c in answer["candidates"]] == [12, 12, 12]
    assert {c["finishReason"] for c in answer["candidates"]} == {"MAX_TOKENS"}
    assert answer["usageMetadata"]["candidatesTokenCount"] == 36


def test_verbose_converse_runs_to_max_tokens() -> None:
    answer = _answered(bedrock_server, "/model/us.amazon.nova-pro-v1:0/converse",
                       {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                        "inferenceConfig": {"maxTokens": 30}})
    assert _word_count(answer["output"]["message"]["content"][0]["text"]) == 30
    assert (answer["stopReason"], answer["usage"]["outputTokens"]) == ("max_tokens", 30)


def test_verbose_cohere_runs_to_max_tokens() -> None:
    answer = _answered(cohere_server, "/v2/chat", {"model": "command-a", "max_tokens": 30,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert answer["usage"]["billed_units"]["output_tokens"] == 30 and answer["finish_reason"] == "MAX_TOKENS"


def test_verbose_responses_answer_spends_max_output_tokens_with_its_reasoning() -> None:
    answer = _answered(openai_server, "/v1/responses", {"model": "o4-mini", "input": "hi", "max_output_tokens": 50,
                                                        "reasoning": {"effort": "low"}})
    message = next(item for item in answer["output"] if item["type"] == "message")
    assert _word_count(message["content"][0]["text"]) == 50 - 8  # the low effort's reasoning tokens come first
    assert answer["usage"]["output_tokens"] == 50 and answer["status"] == "incomplete"


# --- HTTP and the control endpoint ----------------------------------------------------------------------------------


def test_recorded_requests_can_be_listed_and_cleared(demo_openai: DemoProvider) -> None:
    with httpx.Client(base_url=demo_openai.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        client.post("/v1/embeddings?x=1", json={"model": "m", "input": "hello"})
        client.get("/v1/models")
        recorded = client.get("/_demo/requests").json()
        assert [(item["method"], item["path"]) for item in recorded] == [
            ("POST", "/v1/embeddings?x=1"), ("GET", "/v1/models"),
        ]
        assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"
        assert recorded[0]["body"] == {"model": "m", "input": "hello"}
        assert recorded[1]["body"] is None
        assert client.delete("/_demo/requests").status_code == 200
        assert client.get("/_demo/requests").json() == []


def test_chunked_request_body_is_read(demo_openai: DemoProvider) -> None:
    body = json.dumps({"model": "m", "messages": _user("chunked " * 50)}).encode()
    pieces = (body[start : start + 100] for start in range(0, len(body), 100))
    response = httpx.post(
        f"{demo_openai.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, content=pieces
    )
    assert response.status_code == 200
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello from openai-a (m)! You said: chunked")


def _exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_pipelined_keep_alive_requests_are_answered_in_order(demo_start: Callable[..., DemoProvider]) -> None:
    provider = demo_start("openai", "openai-a")
    request = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"
    received = _exchange(provider.port, request * 2 + b"GET /v1/nope HTTP/1.1\r\nconnection: close\r\n\r\n")
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert received.count(b"HTTP/1.1 404 Not Found") == 1


@pytest.mark.parametrize(("data", "status"), [
    (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", b"400"),
    (b"POST /v1/models HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n", b"400"),
    (b"POST /v1/models HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    (b"POST /v1/models HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n", b"413"),
])
def test_bad_input_is_refused_and_the_connection_closed(
    demo_openai: DemoProvider, data: bytes, status: bytes
) -> None:
    received = _exchange(demo_openai.port, data)
    assert received.startswith(b"HTTP/1.1 " + status)
    assert b"connection: close" in received


def _self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return cert_path, key_path


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_answer_reports_the_sni_the_client_sent(
    demo_start: Callable[..., DemoProvider], tmp_path: Path, loop: str
) -> None:
    cert, key = _self_signed(tmp_path, "api.demo.test")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    provider = demo_start("openai", "openai-tls", loop=loop, ssl_context=server_context)
    client_context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=client_context) as client:
        responses = [
            client.post(
                f"https://127.0.0.1:{provider.port}/v1/chat/completions", extensions={"sni_hostname": "api.demo.test"},
                json={"model": "m", "messages": _user("hi"), "stream": stream},
            )
            for stream in (False, True)
        ]
    for response in responses:
        assert response.status_code == 200
        assert response.headers["x-demo-provider"] == "openai-tls"
        assert response.headers["x-demo-sni"] == "api.demo.test"
    assert responses[1].text.endswith("data: [DONE]\n\n")


def test_module_prints_its_port_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "ext_proc.demo", "--kind", "anthropic", "--name", "cli-demo", "--api-key", KEY]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)}
    ) as process:
        try:
            assert process.stdout is not None
            announced = json.loads(process.stdout.readline())
            assert announced["name"] == "cli-demo" and announced["kind"] == "anthropic"
            response = httpx.post(
                f"http://127.0.0.1:{announced['port']}/v1/messages", headers=ANTHROPIC_HEADERS,
                json={"model": "c", "max_tokens": 10, "messages": _user("hi")},
            )
            assert response.headers["x-demo-provider"] == "cli-demo"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
