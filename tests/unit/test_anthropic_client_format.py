"""Anthropic Messages clients <-> the canonical OpenAI format, checked against fixtures in
tests/fixtures/anthropic_client/.

Every OpenAI request the translator produces is validated against the `openai` SDK's request types (unknown keys
refused, except the documented `cache_control` extension), every Message against `anthropic.types.Message`, every
stream event against `RawMessageStreamEvent`, and the streams are also consumed by the `anthropic` SDK's own stream
accumulator through a mock transport. Round trips through `providers/anthropic.py` check that nothing a client asked
for is lost on the way to an Anthropic backend.
"""

from __future__ import annotations

import contextlib
import functools
import json
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import anthropic.types as anthropic_types
import httpx2
import jsonschema
import pydantic
import pytest
from anthropic.types import message_create_params
from openai.types.chat import completion_create_params
from openai.types.chat.chat_completion import Choice

from ext_proc.client_formats import anthropic_messages
from ext_proc.client_formats.anthropic_messages import MessagesStream, from_openai, to_openai
from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic as anthropic_provider
from ext_proc.streaming.sse import SSEDecoder, SSEEvent, encode_event
from tests.unit.provider_checks import sdk_fields, typed_dict_problems

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic_client"
PROVIDER_FIXTURES = FIXTURES.parent / "anthropic"
MODEL = "gpt-4o"
CLAUDE = "claude-sonnet-4-5-20250929"
ROUTE = "claude-via-gateway"
"""What SDK calls name: a gateway route (a real, deprecated model name would make the SDK warn)."""
BASE_BODY = {"model": CLAUDE, "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}

LEGACY_FIELDS = {"temperature", "top_p", "top_k"}
"""Accepted by the Messages API for older models but no longer declared by the 2.x SDK's types."""
BETA_FIELDS = {"context_management"}
"""Declared only by the SDK's beta Messages types; Claude Code sends them (with `anthropic-beta`)."""

OPENAI_EXTENSION_KEYS = {"cache_control", "thinking_blocks"}
"""Keys the translator adds to OpenAI messages, parts and tools that the openai SDK doesn't declare."""


def _load(name: str) -> typing.Any:
    return json.loads((FIXTURES / name).read_text())


def _cases(prefix: str, suffix: str) -> list[str]:
    return sorted(path.name[len(prefix):-len(suffix)] for path in FIXTURES.glob(f"{prefix}*{suffix}"))


def _events(path: Path) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(path.read_bytes()) + decoder.finish()


def _run_stream(chunks: list[dict], input_tokens: int = 0) -> list[tuple[str, dict]]:
    stream = MessagesStream(MODEL, input_tokens=input_tokens)
    events = [event for chunk in chunks for event in stream.feed(chunk)]
    return events + stream.finish()


def _openai_chunks(case: str) -> list[dict]:
    return [json.loads(event.data) for event in _events(FIXTURES / f"stream_{case}.openai.sse")]


def _encode(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(encode_event(name, payload) for name, payload in events)


# --- validators ----------------------------------------------------------------------------------------------------


@functools.cache
def _adapter(hint: typing.Any) -> pydantic.TypeAdapter:
    """Building an adapter for the SDKs' large request types takes a tenth of a second: build each once."""
    return pydantic.TypeAdapter(hint)


def _assert_valid_openai_request(request: dict) -> None:
    """The openai SDK's request type; every tool is a function tool, whose parameters are a JSON schema."""
    for tool in request.get("tools") or ():
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
    request = {**request, "messages": [_without_anthropic_parts(message) for message in request["messages"]]}
    params = (completion_create_params.CompletionCreateParamsStreaming if request.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    _adapter(params).validate_python(request)
    problems = [problem for problem in typed_dict_problems(request, params, "request")
                if not any(problem.endswith(f".{key}: unknown key") for key in OPENAI_EXTENSION_KEYS)]
    assert problems == []


def _without_anthropic_parts(message: dict) -> dict:
    """The message without content parts of the gateway's `anthropic` type, each checked as an Anthropic document."""
    content = message.get("content")
    if not isinstance(content, list) or not any(part["type"] == "anthropic" for part in content):
        return message
    for part in content:
        if part["type"] == "anthropic":
            assert part.keys() == {"type", "anthropic"}
            _adapter(anthropic_types.DocumentBlockParam).validate_python(part["anthropic"])
            assert typed_dict_problems(part["anthropic"], anthropic_types.DocumentBlockParam, "part") == []
    return {**message, "content": [part for part in content if part["type"] != "anthropic"]}


def _assert_valid_anthropic_request(request: dict) -> None:
    request = {key: value for key, value in request.items() if key not in LEGACY_FIELDS}
    params = (message_create_params.MessageCreateParamsStreaming if request.get("stream")
              else message_create_params.MessageCreateParamsNonStreaming)
    _adapter(params).validate_python(request)
    assert typed_dict_problems(request, params, "request") == []


def _assert_valid_events(events: list[tuple[str, dict]]) -> None:
    adapter = _adapter(anthropic_types.RawMessageStreamEvent)
    for name, payload in events:
        assert payload["type"] == name
        if name == "error":
            anthropic_types.ErrorResponse.model_validate(payload)
        else:
            adapter.validate_python(payload)


def test_openai_validator_catches_a_misplaced_key() -> None:
    request = to_openai(BASE_BODY)
    request["messages"][0]["tool_call_id"] = "call_1"  # belongs on tool messages only
    with pytest.raises(AssertionError):
        _assert_valid_openai_request(request)


# --- the Anthropic SDK against a mock transport --------------------------------------------------------------------


@contextlib.contextmanager
def _sdk(reply: Callable[[dict], httpx2.Response]) -> Iterator[tuple[anthropic.Anthropic, list[dict]]]:
    """An `anthropic.Anthropic` client whose requests (bodies recorded) are answered by `reply`."""
    sent: list[dict] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/anthropic/v1/messages"
        sent.append(json.loads(request.content))
        return reply(sent[-1])

    with httpx2.Client(transport=httpx2.MockTransport(handle)) as http:
        yield anthropic.Anthropic(api_key="sk-gateway-key", base_url="http://gateway/anthropic", http_client=http,
                                  max_retries=0), sent


def _event_stream(events: list[tuple[str, dict]]) -> Callable[[dict], httpx2.Response]:
    return lambda _: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=_encode(events))


def _sdk_final_message(events: list[tuple[str, dict]]) -> anthropic_types.Message:
    with _sdk(_event_stream(events)) as (client, _), client.messages.stream(
            model=ROUTE, max_tokens=1024, messages=[{"role": "user", "content": "hi"}]) as stream:
        return stream.get_final_message()


# --- requests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("request_", ".anthropic.json"))
def test_request_translates_to_golden_openai_request(case: str) -> None:
    body = _load(f"request_{case}.anthropic.json")
    _assert_valid_anthropic_request(body)  # the fixture is a request the SDK could send
    translated = to_openai(body)
    assert translated == _load(f"request_{case}.openai.json")
    _assert_valid_openai_request(translated)


def test_every_messages_field_has_a_rule() -> None:
    fields = sdk_fields(message_create_params.MessageCreateParamsNonStreaming,
                        message_create_params.MessageCreateParamsStreaming)
    assert fields | LEGACY_FIELDS | BETA_FIELDS == set(anthropic_messages.FIELDS)
    assert set(anthropic_messages.FIELDS.values()) <= {anthropic_messages.MAPPED, anthropic_messages.DROPPED,
                                                       anthropic_messages.REFUSED}


REFUSED_SAMPLES = _load("refused_fields.json")
DROPPED_SAMPLES = _load("dropped_fields.json")


def test_every_refused_and_dropped_field_has_a_sample() -> None:
    rules = anthropic_messages.FIELDS
    assert set(REFUSED_SAMPLES) == {field for field, rule in rules.items() if rule == anthropic_messages.REFUSED}
    assert set(DROPPED_SAMPLES) == {field for field, rule in rules.items() if rule == anthropic_messages.DROPPED}


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_refused_field_is_named_in_the_bad_request(field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        to_openai({**BASE_BODY, field: REFUSED_SAMPLES[field]})
    assert refused.value.param == field
    assert field in refused.value.message


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_null_refused_field_counts_as_absent(field: str) -> None:
    assert to_openai({**BASE_BODY, field: None}) == to_openai(BASE_BODY)


@pytest.mark.parametrize("field", sorted(DROPPED_SAMPLES))
def test_dropped_field_leaves_the_openai_request_unchanged(field: str) -> None:
    assert to_openai({**BASE_BODY, field: DROPPED_SAMPLES[field]}) == to_openai(BASE_BODY)


@pytest.mark.parametrize("case", _load("bad_requests.json"), ids=lambda case: case["name"])
def test_untranslatable_request_is_refused_with_its_param(case: dict) -> None:
    with pytest.raises(BadRequest) as refused:
        to_openai({**BASE_BODY, **case["body"]})
    assert refused.value.param == case["param"]
    assert case["message"] in refused.value.message


@pytest.mark.parametrize("case", _load("tool_choice_cases.json"), ids=lambda case: case["name"])
def test_tool_choice_variants(case: dict) -> None:
    body = {**BASE_BODY, "tools": [WEATHER, TIME]}
    if "tool_choice" in case:
        body["tool_choice"] = case["tool_choice"]
    translated = to_openai(body)
    assert translated.get("tool_choice") == case["expected_tool_choice"]
    assert translated.get("parallel_tool_calls") == case.get("expected_parallel_tool_calls")
    _assert_valid_openai_request(translated)


@pytest.mark.parametrize("choice", [{"type": "auto"}, {"type": "none"}, {"type": "auto",
                                                                         "disable_parallel_tool_use": True}])
def test_tool_choice_is_left_out_without_tools(choice: dict) -> None:
    translated = to_openai({**BASE_BODY, "tool_choice": choice})
    assert "tool_choice" not in translated and "parallel_tool_calls" not in translated


@pytest.mark.parametrize(("budget", "effort"), [(1024, "low"), (4095, "low"), (4096, "medium"), (8192, "medium"),
                                                (16383, "medium"), (16384, "high"), (24576, "high"),
                                                (60000, "high")])
def test_thinking_budget_maps_to_an_effort_bucket(budget: int, effort: str) -> None:
    body = {**BASE_BODY, "max_tokens": 64000, "thinking": {"type": "enabled", "budget_tokens": budget}}
    assert to_openai(body)["reasoning_effort"] == effort


@pytest.mark.parametrize(("thinking", "effort", "expected"), [
    ({"type": "enabled", "budget_tokens": 2048}, "high", "high"),  # an explicit effort wins over a budget
    ({"type": "adaptive"}, None, "high"),  # Anthropic's default effort
    ({"type": "adaptive"}, "max", "max"),
    (None, "medium", "medium"),  # effort without thinking shapes the whole answer
    (None, None, None),
])
def test_thinking_and_effort_combine_into_one_reasoning_effort(thinking: dict | None, effort: str | None,
                                                               expected: str | None) -> None:
    body = {**BASE_BODY, "max_tokens": 8192}
    if thinking is not None:
        body["thinking"] = thinking
    if effort is not None:
        body["output_config"] = {"effort": effort}
    assert to_openai(body).get("reasoning_effort") == expected


def test_tool_results_come_before_the_rest_of_their_turn_in_order() -> None:
    translated = to_openai(_load("request_tool_use_round_trip.anthropic.json"))
    roles = [(message["role"], message.get("tool_call_id")) for message in translated["messages"]]
    assert roles == [("user", None), ("assistant", None), ("tool", "toolu_paris"), ("tool", "toolu_oslo"),
                     ("tool", "toolu_time"), ("user", None)]


def test_request_translation_does_not_modify_the_client_body() -> None:
    for case in _cases("request_", ".anthropic.json"):
        body = _load(f"request_{case}.anthropic.json")
        to_openai(body)
        assert body == _load(f"request_{case}.anthropic.json"), case


def test_what_the_sdk_sends_translates() -> None:
    """Requests built by the anthropic SDK itself (create and stream helpers) reach the translator intact."""
    answer = _load("response_text.anthropic.json")
    with _sdk(lambda _: httpx2.Response(200, json=answer)) as (client, sent):
        client.messages.create(
            model=ROUTE, max_tokens=2048, system=[{"type": "text", "text": "Be brief.",
                                                     "cache_control": {"type": "ephemeral"}}],
            messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            thinking={"type": "enabled", "budget_tokens": 1024}, stop_sequences=["END"],
            metadata={"user_id": "u-1"}, service_tier="auto")
    with _sdk(_event_stream(_run_stream(_openai_chunks("text")))) as (client, streamed), client.messages.stream(
            model=ROUTE, max_tokens=64, messages=[{"role": "user", "content": "hi"}],
            output_config={"effort": "low"}) as stream:
        stream.get_final_message()
    for body in (*sent, *streamed):
        translated = to_openai(body)
        _assert_valid_openai_request(translated)
    assert to_openai(sent[0])["reasoning_effort"] == "low"
    assert to_openai(streamed[0])["stream"] is True


# --- round trips through the anthropic provider --------------------------------------------------------------------

NOT_ROUND_TRIPPABLE = {
    "automatic_cache_control": "the top-level marker lands on the last block, which is where it applies",
    "documents": "text documents travel as text parts, and a PDF's missing title becomes 'document.pdf'",
    "inline_system_message": "the anthropic provider hoists system messages into the top-level prompt",
    "thinking_adaptive_effort": "an effort becomes a thinking budget on the way back",
    "tool_errors": "is_error travels as an 'Error: ' prefix",
    "typed_client_tools": "typed client tools become function tools (Anthropic-family backends get the body as sent)",
}


def _budget_of(effort: str) -> int:
    return anthropic_provider.chat_request({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                            "reasoning_effort": effort}, CLAUDE,
                                           default_max_tokens=64000)["thinking"]["budget_tokens"]


def _normalised(request: dict) -> dict:
    """What must survive a round trip: the same request up to spellings Anthropic treats as identical."""
    request = json.loads(json.dumps(request))
    system = request.get("system")
    if isinstance(system, list) and not any("cache_control" in block for block in system):
        request["system"] = "\n\n".join(block["text"] for block in system)
    for message in request["messages"]:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        message["content"] = [{key: value for key, value in block.items() if value is not None} for block in content]
    thinking = request.get("thinking")
    if thinking and thinking["type"] == "enabled":
        effort = to_openai({**BASE_BODY, "max_tokens": request["max_tokens"], "thinking": thinking})
        thinking["budget_tokens"] = _budget_of(effort["reasoning_effort"])
    return request


@pytest.mark.parametrize("case", [case for case in _cases("request_", ".anthropic.json")
                                  if case not in NOT_ROUND_TRIPPABLE])
def test_request_survives_a_round_trip_through_the_anthropic_provider(case: str) -> None:
    original = _load(f"request_{case}.anthropic.json")
    back = anthropic_provider.chat_request(to_openai(original), original["model"], default_max_tokens=1)
    assert _normalised(back) == _normalised(original)


def test_round_trip_exclusions_are_real_cases() -> None:
    assert set(NOT_ROUND_TRIPPABLE) <= set(_cases("request_", ".anthropic.json"))


# --- typed client tools --------------------------------------------------------------------------------------------

CLIENT_TOOL_CALLS = {
    "bash_20250124": [{"command": "ls -la"}, {"restart": True}],
    "text_editor_20250124": [{"command": "undo_edit", "path": "/repo/a.py"},
                             {"command": "insert", "path": "/repo/a.py", "insert_line": 0, "new_str": "import os"}],
    "text_editor_20250728": [{"command": "view", "path": "/repo/a.py", "view_range": [1, -1]},
                             {"command": "create", "path": "/repo/b.py", "file_text": "x = 1\n"},
                             {"command": "str_replace", "path": "/repo/a.py", "old_str": "x", "new_str": "y"},
                             {"command": "insert", "path": "/repo/a.py", "insert_line": 2, "insert_text": "z"}],
    "memory_20250818": [{"command": "view", "path": "/memories"},
                        {"command": "insert", "path": "/memories/a.md", "insert_line": 1, "insert_text": "done"},
                        {"command": "rename", "old_path": "/memories/a.md", "new_path": "/memories/b.md"}],
}
"""Calls Claude makes with each tool, in the shape Anthropic documents (the memory ones are the SDK's own types)."""


def test_every_client_tool_is_an_anthropic_tool_type_under_its_required_name() -> None:
    for kind, (name, _, _) in anthropic_messages.CLIENT_TOOLS.items():
        tool = {"type": kind, "name": name}
        _adapter(anthropic_types.beta.BetaToolUnionParam).validate_python(tool)
        assert typed_dict_problems(tool, anthropic_types.beta.BetaToolUnionParam, "tool") == [], kind


@pytest.mark.parametrize("kind", sorted(CLIENT_TOOL_CALLS))
def test_client_tool_schema_takes_the_documented_calls(kind: str) -> None:
    name = anthropic_messages.CLIENT_TOOLS[kind][0]
    function = to_openai({**BASE_BODY, "tools": [{"type": kind, "name": name}]})["tools"][0]["function"]
    assert function["name"] == name and function["description"]
    for call in CLIENT_TOOL_CALLS[kind]:
        jsonschema.validate(call, function["parameters"])
        if kind.startswith("memory_"):
            _adapter(anthropic_types.beta.BetaMemoryTool20250818Command).validate_python(call)


def test_newer_text_editors_have_no_undo_edit() -> None:
    function = to_openai({**BASE_BODY, "tools": [{"type": "text_editor_20250728",
                                                  "name": "str_replace_based_edit_tool"}]})["tools"][0]["function"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"command": "undo_edit", "path": "/a"}, function["parameters"])


def test_client_tool_schemas_are_not_shared_between_requests() -> None:
    body = {**BASE_BODY, "tools": [{"type": "bash_20250124", "name": "bash"}]}
    to_openai(body)["tools"][0]["function"]["parameters"]["properties"].clear()
    assert to_openai(body)["tools"][0]["function"]["parameters"]["properties"]


def test_typed_client_tool_call_comes_back_as_a_tool_use_of_that_name() -> None:
    """The backend calls the function `bash`; the client gets the tool_use it would get from Claude, and sends its
    result back."""
    call = {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}
    completion = {"id": "chatcmpl-1", "model": MODEL, "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None,
                                                                "tool_calls": [call]}}]}
    message = from_openai(completion, MODEL)
    anthropic_types.Message.model_validate(message)
    assert message["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in message["content"]] == [("tool_use", "bash", {"command": "ls"})]
    follow_up = to_openai({**BASE_BODY, "tools": [{"type": "bash_20250124", "name": "bash"}], "messages": [
        *BASE_BODY["messages"], {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "a.txt"}]}]})
    assert follow_up["messages"][1]["tool_calls"][0]["function"]["name"] == "bash"
    assert follow_up["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}


def test_sdk_agent_loop_keeps_tool_ids_and_inputs() -> None:
    """Stream a tool call to the SDK, send its final message back with results: the ids and inputs come through."""
    final = _sdk_final_message(_run_stream(_openai_chunks("tool_calls")))
    calls = [block for block in final.content if block.type == "tool_use"]
    results = [{"type": "tool_result", "tool_use_id": call.id, "content": "ok"} for call in calls]
    with _sdk(lambda _: httpx2.Response(200, json=_load("response_text.anthropic.json"))) as (client, sent):
        client.messages.create(model=ROUTE, max_tokens=256, tools=[WEATHER, TIME], messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {"role": "assistant", "content": final.content},
            {"role": "user", "content": results}])
    translated = to_openai(sent[0])
    _assert_valid_openai_request(translated)
    assistant = translated["messages"][1]
    assert assistant["content"] == [{"type": "text", "text": "Checking both."}]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in assistant["tool_calls"]] == [("call_paris", "get_weather", {"city": "Paris", "unit": "c"}),
                                                   ("call_oslo", "get_weather", {"city": "Oslo"}),
                                                   ("call_time", "get_time", {})]
    assert [m["tool_call_id"] for m in translated["messages"][2:]] == ["call_paris", "call_oslo", "call_time"]


# --- responses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("response_", ".openai.json"))
def test_response_translates_to_golden_message(case: str) -> None:
    completion = _load(f"response_{case}.openai.json")
    translated = from_openai(completion, MODEL)
    assert translated == _load(f"response_{case}.anthropic.json")
    anthropic_types.Message.model_validate(translated)


@pytest.mark.parametrize(("finish_reason", "stop_reason"), sorted(_load("stop_reasons.json").items()))
def test_finish_reason_maps_to_stop_reason(finish_reason: str, stop_reason: str) -> None:
    completion = _load("response_text.openai.json")
    completion["choices"][0]["finish_reason"] = finish_reason
    assert from_openai(completion, MODEL)["stop_reason"] == stop_reason


def test_every_openai_finish_reason_is_mapped() -> None:
    finish_reasons = set(typing.get_args(Choice.model_fields["finish_reason"].annotation))
    assert finish_reasons == set(_load("stop_reasons.json"))
    assert set(_load("stop_reasons.json").values()) <= set(typing.get_args(anthropic_types.StopReason))


def test_usage_counts_cached_tokens_apart_from_input_tokens() -> None:
    usage = from_openai(_load("response_text.openai.json"), MODEL)["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == 1225
    assert usage["cache_read_input_tokens"] == 1024


def test_odd_completions_still_give_a_valid_message() -> None:
    for completion in ({}, {"choices": []}, {"id": "", "choices": [{"message": {"content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, "finish_reason": None}]}):
        message = from_openai(completion, MODEL)
        anthropic_types.Message.model_validate(message)
        assert message["id"].startswith("msg_") and message["model"] == MODEL
    assert message["content"] == [{"type": "text", "text": "ab"}]


def test_sdk_parses_a_translated_message() -> None:
    answer = from_openai(_load("response_tool_calls_only.openai.json"), MODEL)
    with _sdk(lambda _: httpx2.Response(200, json=answer)) as (client, _):
        message = client.messages.create(model=ROUTE, max_tokens=64, messages=[{"role": "user", "content": "x"}])
    assert message.stop_reason == "tool_use"
    assert [block.input for block in message.content if block.type == "tool_use"] == [
        {"city": "Paris", "unit": "c"}, {"city": "Oslo"}, {}]


def _essentials(message: dict) -> dict:
    """A Message up to what the OpenAI format can't carry: which stop sequence matched, block boundaries between
    adjacent text blocks, and usage fields beyond the token counts. Signed thinking blocks must survive as they are."""
    content: list[dict] = []
    for block in message["content"]:
        block = {key: value for key, value in block.items() if value is not None}
        if content and block["type"] == "text" and content[-1]["type"] == block["type"]:
            content[-1][block["type"]] += block[block["type"]]
        else:
            content.append(block)
    usage = message["usage"]
    return {"id": message["id"], "model": message["model"], "content": content,
            "stop_reason": {"stop_sequence": "end_turn", "pause_turn": "end_turn"}.get(
                message["stop_reason"], message["stop_reason"]),
            "usage": {key: usage.get(key) or 0 for key in ("input_tokens", "output_tokens",
                                                            "cache_read_input_tokens",
                                                            "cache_creation_input_tokens")}}


ANSWER_TOOL_CASES = {"response_answer_tool.anthropic.json", "stream_answer_tool.anthropic.sse"}
"""The provider's forced-tool structured answer: it reaches the client as text, by design."""


@pytest.mark.parametrize("path", sorted(path for path in PROVIDER_FIXTURES.glob("response_*.anthropic.json")
                                        if path.name not in ANSWER_TOOL_CASES), ids=lambda p: p.name)
def test_anthropic_answer_survives_a_round_trip_through_the_anthropic_provider(path: Path) -> None:
    original = json.loads(path.read_text())
    back = from_openai(anthropic_provider.chat_response(original, CLAUDE, 1700000000), MODEL)
    anthropic_types.Message.model_validate(back)
    assert _essentials(back) == _essentials(original)


# --- streams -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("stream_", ".openai.sse"))
def test_stream_translates_to_golden_events(case: str) -> None:
    events = _run_stream(_openai_chunks(case))
    expected = [(event.event, json.loads(event.data)) for event in _events(FIXTURES / f"stream_{case}.anthropic.sse")]
    assert events == expected
    _assert_valid_events(events)


SDK_FINAL_MESSAGES = {
    "text": ("Hello, world!", [], "end_turn", (25, 6, 1200)),
    "tool_calls": ("Checking both.", [{"city": "Paris", "unit": "c"}, {"city": "Oslo"}, {}], "tool_use", (472, 89, 0)),
    "reasoning": ("Yes, 97 is prime.", [], "end_turn", (20, 40, 0)),
    "usage_with_finish_reason": ("Once upon a", [], "max_tokens", (12, 3, 0)),
    "no_usage": ("Hi", [], "end_turn", (7, 0, 0)),  # the input estimate from message_start stands
    "refusal": ("I can't help with that.", [], "refusal", (40, 7, 0)),
}


@pytest.mark.parametrize("case", sorted(SDK_FINAL_MESSAGES))
def test_sdk_accumulates_the_translated_stream(case: str) -> None:
    text, tool_inputs, stop_reason, (input_tokens, output_tokens, cached) = SDK_FINAL_MESSAGES[case]
    final = _sdk_final_message(_run_stream(_openai_chunks(case), input_tokens=7))
    assert "".join(block.text for block in final.content if block.type == "text") == text
    assert [block.input for block in final.content if block.type == "tool_use"] == tool_inputs
    assert final.stop_reason == stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_input_tokens) == (
        input_tokens, output_tokens, cached)


def test_every_stream_fixture_with_a_finish_is_checked_by_the_sdk() -> None:
    failing = {"cut_early", "error_mid_stream", "error_before_start"}
    assert set(SDK_FINAL_MESSAGES) | failing == set(_cases("stream_", ".openai.sse"))


@pytest.mark.parametrize(("case", "error_type"), [("cut_early", "api_error"), ("error_mid_stream", "overloaded_error"),
                                                  ("error_before_start", "rate_limit_error")])
def test_sdk_raises_on_a_failed_stream(case: str, error_type: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as failed:
        _sdk_final_message(_run_stream(_openai_chunks(case)))
    assert failed.value.body["error"]["type"] == error_type


def test_reasoning_streams_as_a_thinking_block() -> None:
    final = _sdk_final_message(_run_stream(_openai_chunks("reasoning")))
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "97 is odd; not divisible by 3, 5 or 7."


def test_message_start_carries_the_input_estimate() -> None:
    events = _run_stream(_openai_chunks("text"), input_tokens=1234)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 1234


@pytest.mark.parametrize(("case", "finished"), [("text", True), ("error_mid_stream", False)])
def test_nothing_follows_message_stop_or_an_error(case: str, finished: bool) -> None:
    stream = MessagesStream(MODEL)
    chunks = _openai_chunks(case)
    for chunk in chunks:
        stream.feed(chunk)
    assert stream.finished is finished
    assert stream.feed(chunks[0]) == [] and stream.finish() == []


def test_empty_stream_is_an_error() -> None:
    events = MessagesStream(MODEL).finish()
    assert [name for name, _ in events] == ["error"]
    _assert_valid_events(events)


def test_interleaved_tool_call_fragments_are_an_error_not_a_corruption() -> None:
    def fragment(index: int, arguments: str, call_id: str | None = None) -> dict:
        call = {"index": index, "function": {"arguments": arguments}}
        if call_id:
            call |= {"id": call_id, "type": "function", "function": {"name": "f", "arguments": arguments}}
        return {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}

    events = _run_stream([fragment(0, "{", "call_a"), fragment(1, "{", "call_b"), fragment(0, "}")])
    assert events[-1][0] == "error"
    _assert_valid_events(events)


def test_repeated_tool_call_ids_in_fragments_do_not_open_new_blocks() -> None:
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": None}]}
    events = _run_stream([chunk, chunk, {"id": "c", "choices": [{"index": 0, "delta": {},
                                                                 "finish_reason": "tool_calls"}]}])
    assert [name for name, _ in events].count("content_block_start") == 1


@pytest.mark.parametrize("path", sorted(path for path in PROVIDER_FIXTURES.glob("stream_*.anthropic.sse")
                                        if path.name not in ANSWER_TOOL_CASES), ids=lambda p: p.name)
def test_anthropic_stream_survives_the_provider_and_back(path: Path) -> None:
    """Anthropic backend events -> provider ChatStream -> MessagesStream: what the SDK accumulates is the same."""
    upstream = _events(path)
    provider = anthropic_provider.ChatStream(CLAUDE, 1700000000, include_usage=True)
    client = MessagesStream(CLAUDE)
    events: list[tuple[str, dict]] = []
    for event in upstream:
        for chunk in provider.feed(event.event, event.data):
            events += client.feed(chunk)
    for chunk in provider.finish():
        events += client.feed(chunk)
    events += client.finish()
    _assert_valid_events(events)
    if not provider.finished:
        with pytest.raises(anthropic.APIStatusError):
            _sdk_final_message(events)
        return
    original = _sdk_final_message([(event.event or "", json.loads(event.data)) for event in upstream
                                   if event.event != "ping"])
    assert _essentials(_sdk_final_message(events).to_dict()) == _essentials(original.to_dict())


def test_structured_answer_from_the_answer_tool_is_text_json() -> None:
    answer = json.loads((PROVIDER_FIXTURES / "response_answer_tool.anthropic.json").read_text())
    back = from_openai(anthropic_provider.chat_response(answer, CLAUDE, 1700000000), MODEL)
    assert [block["type"] for block in back["content"]] == ["text"]
    assert json.loads(back["content"][0]["text"]) == answer["content"][0]["input"]
    assert back["stop_reason"] == "end_turn"


def test_reasoning_without_signed_blocks_is_an_unsigned_thinking_block() -> None:
    """An OpenAI-format backend's reasoning has no signature to give."""
    completion = {"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "ok", "reasoning_content": "thought"}}]}
    assert from_openai(completion, MODEL)["content"][0] == {"type": "thinking", "thinking": "thought", "signature": ""}


def test_signed_thinking_block_whose_text_did_not_stream_goes_out_whole() -> None:
    block = {"type": "thinking", "thinking": "all at once", "signature": "c2ln"}
    events = _run_stream([{"id": "c", "choices": [{"index": 0, "delta": {"thinking_blocks": [block]}}]},
                          {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}])
    _assert_valid_events(events)
    assert _sdk_final_message(events).to_dict()["content"][0] == block


def test_thinking_and_tools_survive_a_second_tool_turn_to_the_anthropic_provider() -> None:
    """The agent loop with thinking on: the signed blocks of the tool-use turn reach the provider request first."""
    events = _events(PROVIDER_FIXTURES / "stream_thinking_before_tool_call.anthropic.sse")
    provider = anthropic_provider.ChatStream(CLAUDE, 1700000000, include_usage=True)
    client = MessagesStream(CLAUDE)
    out = [event for upstream in events for chunk in provider.feed(upstream.event, upstream.data)
           for event in client.feed(chunk)]
    final = _sdk_final_message(out + client.finish()).to_dict()
    follow_up = {**BASE_BODY, "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 2048},
                 "tools": [WEATHER], "messages": [
                     {"role": "user", "content": "Weather in Paris?"},
                     {"role": "assistant", "content": final["content"]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01Paris",
                                                   "content": "18C"}]}]}
    _assert_valid_anthropic_request(follow_up)
    sent = anthropic_provider.chat_request(to_openai(follow_up), CLAUDE, default_max_tokens=1)
    assert sent["messages"][1]["content"] == final["content"]
    assert [block["type"] for block in sent["messages"][1]["content"]] == [
        "redacted_thinking", "thinking", "tool_use"]


def test_steering_settings_are_dropped_and_named_not_refused() -> None:
    """What Claude Code sends to any model: context editing, thinking without its text, tools loaded on demand.
    A translated backend answers all the same without them; the client is told which were left out."""
    body = {"model": "m", "max_tokens": 64000, "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "adaptive", "display": "omitted"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "service_tier": "auto",
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}, "defer_loading": True},
                      {"name": "g", "input_schema": {"type": "object", "properties": {}}}]}
    converted = anthropic_messages.to_openai(body)
    assert "context_management" not in converted and converted["reasoning_effort"] == "high"
    assert [tool["function"]["name"] for tool in converted["tools"]] == ["g"]  # f waits for a tool search
    assert anthropic_messages.dropped_fields(body) == ["context_management", "service_tier", "thinking.display",
                                                       "tools[].defer_loading"]
    assert anthropic_messages.dropped_fields({"model": "m", "max_tokens": 1, "messages": []}) == []
