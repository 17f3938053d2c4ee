"""The demo OpenAI and Azure providers serve the Responses API natively: every answer is an `openai` SDK `Response`,
every streamed event a `ResponseStreamEvent`, the SDK's own stream helper assembles the same answer the JSON
endpoint gives, and bad input gets OpenAI's error status and `param`.

Most tests call the provider modules' `answer` directly (a `Call` in, a `Reply` out); the SDK tests reach them through
an `httpx2.MockTransport` (the SDK's HTTP client), and the fault tests through a running demo provider.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import openai
import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from ext_proc.demo import azure_server, openai_server, responses_api
from ext_proc.demo.answers import NOT_JSON, PARALLEL_TOOLS_HEADER, Call, Reply, estimate_tokens, greeting
from ext_proc.demo.server import DemoProvider, start_demo_provider

NAME = "openai-r"
KEY = "sk-demo-responses"
MODEL = "gpt-4o-mini"
AZURE_VERSION = "2025-04-01-preview"
EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER_ARGUMENTS = {"city": "demo", "unit": "celsius", "days": 1}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER}
LONG_TEXT = " ".join(f"word{index}" for index in range(40))

CASES: dict[str, dict[str, Any]] = {
    "text": {"input": "hello there"},
    "function tool": {"input": "weather?", "tools": [{"type": "web_search"}, WEATHER_TOOL]},
    "custom tool in a namespace": {"input": "look up", "tools": [
        {"type": "namespace", "name": "crm", "description": "CRM", "tools": [{"type": "custom", "name": "lookup"}]}]},
    "structured": {"input": "json please", "text": {"format": {"type": "json_schema", "name": "weather",
                                                               "schema": WEATHER, "strict": True}}},
    "reasoning": {"input": "think", "reasoning": {"effort": "low", "summary": "auto"},
                  "include": ["reasoning.encrypted_content"]},
    "truncated": {"input": LONG_TEXT, "max_output_tokens": 16},
}


def _call(body: object, *, path: str = "/v1/responses", method: str = "POST",
          headers: dict[str, str] | None = None) -> Reply:
    return openai_server.answer(Call(NAME, method, path, headers or {}, body, None))


def _json(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A JSON answer of the demo, checked to be an SDK `Response`."""
    reply = _call({"model": MODEL, **body}, **kwargs)
    assert reply.status == 200, reply.body
    assert reply.events is None
    answer: dict[str, Any] = orjson.loads(reply.body)
    Response.model_validate(answer)
    return answer


def _events(body: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    """A streamed answer's events, each checked to be an SDK `ResponseStreamEvent` named as its `type`, numbered
    from 0 without gaps."""
    reply = _call({"model": MODEL, **body, "stream": True}, **kwargs)
    assert reply.status == 200, reply.body
    assert reply.events is not None
    events = []
    for number, frame in enumerate(reply.events):
        name, data = frame.decode().removesuffix("\n\n").split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        EVENT.validate_python(event)
        assert name == f"event: {event['type']}"
        assert event["sequence_number"] == number
        events.append(event)
    return events


def _error(reply: Reply) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(reply.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _without_ids(value: object) -> object:
    """`value` with ids and timestamps blanked, which differ between two answers to one request (and without the
    SDK stream helper's `parsed` and `parsed_arguments`, which its plain answers lack)."""
    if isinstance(value, dict):
        return {key: None if key in ("id", "call_id", "created_at", "completed_at", "encrypted_content")
                else _without_ids(item) for key, item in value.items() if not key.startswith("parsed")}
    if isinstance(value, list):
        return [_without_ids(item) for item in value]
    return value


# --- JSON answers ------------------------------------------------------------------------------------------------

def test_text_answer_greets_and_counts_tokens_like_chat() -> None:
    answer = _json({"input": "hello there", "instructions": "be brief"})
    said = greeting(NAME, MODEL, "hello there")
    assert Response.model_validate(answer).output_text == said
    assert answer["status"] == "completed"
    assert answer["output"][0]["role"] == "assistant"
    items = [{"type": "message", "role": "user", "content": "hello there"}]
    assert answer["usage"]["input_tokens"] == estimate_tokens("be brief", items, None)
    assert answer["usage"]["output_tokens"] == len(said.split())
    assert answer["usage"]["total_tokens"] == answer["usage"]["input_tokens"] + answer["usage"]["output_tokens"]
    assert answer["instructions"] == "be brief"


def test_last_user_message_is_echoed_from_content_parts() -> None:
    answer = _json({"input": [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look at"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            {"type": "input_file", "file_id": "file-1"},
            {"type": "input_text", "text": "this"}]}]})
    assert Response.model_validate(answer).output_text == greeting(NAME, MODEL, "look at this")


def test_function_tool_is_called_with_arguments_from_its_schema() -> None:
    answer = _json({"input": "weather?", "tools": [{"type": "web_search"}, WEATHER_TOOL]})
    (call,) = answer["output"]
    assert call["type"] == "function_call"
    assert call["name"] == "get_weather"
    assert call["call_id"].startswith("call_")
    assert orjson.loads(call["arguments"]) == WEATHER_ARGUMENTS
    assert answer["tools"][1]["strict"] is True  # echoed with OpenAI's defaults


def test_parallel_tools_header_makes_several_calls_unless_parallel_calls_are_off() -> None:
    body = {"input": "weather?", "tools": [WEATHER_TOOL]}
    assert len(_json(body, headers={PARALLEL_TOOLS_HEADER: "3"})["output"]) == 3
    assert len(_json({**body, "parallel_tool_calls": False}, headers={PARALLEL_TOOLS_HEADER: "3"})["output"]) == 1


def test_namespace_and_custom_tools_are_called_as_declared() -> None:
    answer = _json({"input": "look up", "tools": [{"type": "namespace", "name": "crm", "description": "CRM", "tools": [
        {"type": "function", "name": "find", "parameters": WEATHER}, {"type": "custom", "name": "lookup"}]}]},
        headers={PARALLEL_TOOLS_HEADER: "2"})
    found, lookup = answer["output"]
    assert (found["type"], found["name"], found["namespace"]) == ("function_call", "find", "crm")
    assert (lookup["type"], lookup["name"], lookup["namespace"]) == ("custom_tool_call", "lookup", "crm")
    assert lookup["input"] == responses_api.CUSTOM_TOOL_INPUT


@pytest.mark.parametrize(("choice", "expected"), [
    ("none", []),
    ({"type": "web_search_preview"}, []),
    ({"type": "function", "name": "get_time"}, ["get_time"]),
    ({"type": "custom", "name": "shell"}, ["shell"]),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}, ["get_time"]),
])
def test_tool_choice_picks_the_tool_or_none(choice: object, expected: list[str]) -> None:
    tools = [WEATHER_TOOL, {"type": "function", "name": "get_time", "parameters": {"type": "object"}},
             {"type": "custom", "name": "shell"}, {"type": "web_search_preview"}]
    answer = _json({"input": "go", "tools": tools, "tool_choice": choice})
    assert [item.get("name") for item in answer["output"] if item["type"] != "message"] == expected


def test_tool_output_is_mentioned_in_the_answer() -> None:
    answer = _json({"input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "sunny"}]},
    ], "tools": [WEATHER_TOOL]})
    assert Response.model_validate(answer).output_text.endswith("The tool returned: sunny")


def test_custom_tool_output_is_mentioned_in_the_answer() -> None:
    answer = _json({"input": [
        {"role": "user", "content": "run it"},
        {"type": "custom_tool_call", "call_id": "call_2", "name": "shell", "input": "ls"},
        {"type": "custom_tool_call_output", "call_id": "call_2", "output": "a.txt"},
    ]})
    assert Response.model_validate(answer).output_text.endswith("The tool returned: a.txt")


@pytest.mark.parametrize("form", [
    {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True},
    {"type": "json_object"},
])
def test_text_format_gets_a_structured_answer(form: dict[str, Any]) -> None:
    answer = _json({"input": "json please", "text": {"format": form}})
    text = Response.model_validate(answer).output_text
    assert orjson.loads(text) == (WEATHER_ARGUMENTS if form["type"] == "json_schema" else {})
    assert answer["text"]["format"] == form


def test_max_output_tokens_cuts_the_answer_to_an_incomplete_response() -> None:
    answer = _json({"input": LONG_TEXT, "max_output_tokens": 16})
    assert answer["status"] == "incomplete"
    assert answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["output"][0]["status"] == "incomplete"
    assert len(Response.model_validate(answer).output_text.split()) == 16
    assert answer["usage"]["output_tokens"] == 16


def test_reasoning_item_has_a_summary_and_encrypted_content_when_asked() -> None:
    answer = _json(CASES["reasoning"])
    reasoning, message = answer["output"]
    assert reasoning["type"] == "reasoning"
    assert "Planning the reply" in reasoning["summary"][0]["text"]
    assert reasoning["encrypted_content"].startswith(responses_api.ENCRYPTED_PREFIX)
    assert message["type"] == "message"
    low = responses_api.EFFORT_TOKENS["low"]
    assert answer["usage"]["output_tokens_details"]["reasoning_tokens"] == low
    assert answer["usage"]["output_tokens"] == low + len(Response.model_validate(answer).output_text.split())
    assert answer["reasoning"] == {"effort": "low", "summary": "auto"}


def test_reasoning_without_summary_or_include_is_an_empty_item() -> None:
    (reasoning, _) = _json({"input": "think", "reasoning": {"effort": "medium"}})["output"]
    assert reasoning["summary"] == []
    assert "encrypted_content" not in reasoning


def test_no_reasoning_item_for_effort_none() -> None:
    answer = _json({"input": "think", "reasoning": {"effort": "none", "summary": "auto"}})
    assert [item["type"] for item in answer["output"]] == ["message"]
    assert answer["usage"]["output_tokens_details"]["reasoning_tokens"] == 0


def test_reasoning_can_spend_the_whole_output_budget() -> None:
    answer = _json({"input": "think", "reasoning": {"effort": "high"}, "max_output_tokens": 20})
    assert answer["status"] == "incomplete"
    assert [item["type"] for item in answer["output"]] == ["reasoning"]
    assert answer["usage"]["output_tokens"] == responses_api.EFFORT_TOKENS["high"]


def test_every_documented_input_item_is_accepted() -> None:
    answer = _json({"input": [
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "rules"}]},
        {"role": "user", "content": "first"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "content": [
            {"type": "output_text", "text": "ok", "annotations": []}, {"type": "refusal", "refusal": "no"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}],
         "encrypted_content": responses_api.ENCRYPTED_PREFIX + "opaque"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "shell", "input": "ls"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "a.txt"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
        {"role": "user", "content": [{"type": "input_file", "file_data": "data:application/pdf;base64,AAAA",
                                      "filename": "a.pdf"}, {"type": "input_text", "text": "second"}]},
    ], "store": False})
    assert Response.model_validate(answer).output_text == greeting(NAME, MODEL, "second")
    assert answer["store"] is False


def test_a_demo_answer_can_be_handed_back_as_input() -> None:
    """A stateless client's next turn: the reasoning item (with the demo's encrypted content) and the call go back."""
    tools = [WEATHER_TOOL]
    first = _json({"input": "weather?", "tools": tools, "reasoning": {"effort": "low"},
                   "include": ["reasoning.encrypted_content"], "store": False})
    call = first["output"][-1]
    turn = [{"role": "user", "content": "weather?"}, *first["output"],
            {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]
    second = _json({"input": turn, "tools": tools, "store": False})
    assert Response.model_validate(second).output_text.endswith("The tool returned: sunny")


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"input": "hi"}, 400, "model", "missing_required_parameter"),
    ({"model": MODEL, "input": "hi", "messages": []}, 400, "messages", "unknown_parameter"),
    ({"model": MODEL, "input": 3}, 400, "input", "invalid_type"),
    ({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role", "invalid_value"),
    ({"model": MODEL, "input": [{"role": "user"}]}, 400, "input[0].content", "missing_required_parameter"),
    ({"model": MODEL, "input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]}, 400,
     "input[0].content[0].type", "invalid_value"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]}, 400,
     "input[0].content[0].image_url", "missing_required_parameter"),
    ({"model": MODEL, "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, 400,
     "input[0].call_id", "missing_required_parameter"),
    ({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]}, 400, "input",
     None),
    ({"model": MODEL, "input": [{"type": "telepathy"}]}, 400, "input[0].type", "invalid_value"),
    ({"model": MODEL, "input": [{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB"}]},
     400, "input[0].encrypted_content", "invalid_encrypted_content"),
    ({"model": MODEL, "input": [{"type": "reasoning", "id": "rs_1", "summary": [],
                                 "encrypted_content": "bgw1.W10"}]},
     400, "input[0].encrypted_content", "invalid_encrypted_content"),
    ({"model": MODEL, "input": [{"type": "reasoning", "id": "rs_1"}]}, 400, "input[0].summary",
     "missing_required_parameter"),
    ({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]}, 404, "input[0]", None),
    ({"model": MODEL, "input": "hi", "previous_response_id": "resp_1"}, 404, "previous_response_id",
     "previous_response_not_found"),
    ({"model": MODEL, "input": "hi", "conversation": "conv_1"}, 404, "conversation", None),
    ({"model": MODEL, "input": "hi", "background": True}, 400, "background", None),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function"}]}, 400, "tools[0].name",
     "missing_required_parameter"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "bad name"}]}, 400, "tools[0].name",
     "invalid_value"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "teleport"}]}, 400, "tools[0].type", "invalid_value"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "namespace", "name": "ns", "tools": [
        {"type": "web_search"}]}]}, 400, "tools[0].tools[0].type", "invalid_value"),
    ({"model": MODEL, "input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}},
     400, "tool_choice", None),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "schema": WEATHER}}}, 400,
     "text.format.name", "missing_required_parameter"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 5}, 400, "max_output_tokens", "integer_below_min_value"),
    ({"model": MODEL, "input": "hi", "reasoning": {"effort": "extreme"}}, 400, "reasoning.effort", "invalid_value"),
    ({"model": MODEL, "input": "hi", "include": ["everything"]}, 400, "include[0]", "invalid_value"),
    ({"model": MODEL, "input": "hi", "stream": "yes"}, 400, "stream", "invalid_type"),
])
def test_bad_input_gets_openai_status_and_param(body: dict[str, Any], status: int, param: str,
                                               code: str | None) -> None:
    reply = _call(body)
    error = _error(reply)
    assert (reply.status, error["param"], error["code"]) == (status, param, code)
    assert error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_a_400() -> None:
    reply = _call(NOT_JSON)
    assert reply.status == 400
    assert "could not parse the JSON body" in _error(reply)["message"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/responses/resp_1", 404),
    ("DELETE", "/v1/responses/resp_1", 404),
    ("GET", "/v1/responses/resp_1/input_items", 404),
    ("POST", "/v1/responses/resp_1/cancel", 404),
    ("PUT", "/v1/responses/resp_1", 405),
    ("GET", "/v1/responses", 405),
])
def test_stored_responses_do_not_exist(method: str, path: str, status: int) -> None:
    reply = _call(None, method=method, path=path)
    assert reply.status == status
    if status == 404:
        assert _error(reply)["message"] == "Response with id 'resp_1' not found."


def test_echo_key_fault_quotes_the_key_on_responses_too() -> None:
    reply = openai_server.answer(Call(NAME, "POST", "/v1/responses", {
        "authorization": f"Bearer {KEY}", "x-demo-fault": f"{NAME}:echo-key"}, {"model": MODEL, "input": "x"}, KEY))
    assert reply.status == 401
    assert KEY in _error(reply)["message"]


# --- streamed answers ---------------------------------------------------------------------------------------------

def test_stream_is_the_typed_event_sequence_openai_sends() -> None:
    events = _events({"input": "hello there"})
    said = greeting(NAME, MODEL, "hello there")
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    kinds = [event["type"] for event in events if event["type"] != "response.output_text.delta"]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert "".join(deltas) == said
    assert len(deltas) == len(said.split())
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == said


@pytest.mark.parametrize("case", sorted(CASES))
def test_stream_ends_with_the_response_the_json_endpoint_gives(case: str) -> None:
    events = _events(CASES[case])
    answer = _json(CASES[case])
    assert _without_ids(events[-1]["response"]) == _without_ids(answer)
    assert events[-1]["type"] == ("response.incomplete" if case == "truncated" else "response.completed")
    items = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert items == events[-1]["response"]["output"]


def test_stream_sends_tool_calls_in_argument_fragments() -> None:
    events = _events({"input": "go", "tools": [WEATHER_TOOL, {"type": "custom", "name": "shell"}]},
                     headers={PARALLEL_TOOLS_HEADER: "2"})
    arguments = [event["delta"] for event in events if event["type"] == "response.function_call_arguments.delta"]
    custom = [event["delta"] for event in events if event["type"] == "response.custom_tool_call_input.delta"]
    assert len(arguments) > 1
    assert orjson.loads("".join(arguments)) == WEATHER_ARGUMENTS
    assert "".join(custom) == responses_api.CUSTOM_TOOL_INPUT
    added = [event["item"] for event in events if event["type"] == "response.output_item.added"]
    assert [(item["type"], item.get("arguments", item.get("input"))) for item in added] == [
        ("function_call", ""), ("custom_tool_call", "")]


def test_stream_sends_the_reasoning_summary_in_deltas() -> None:
    events = _events(CASES["reasoning"])
    kinds = [event["type"] for event in events]
    assert kinds[2:4] == ["response.output_item.added", "response.reasoning_summary_part.added"]
    summary = "".join(event["delta"] for event in events if event["type"] == "response.reasoning_summary_text.delta")
    assert summary == events[-1]["response"]["output"][0]["summary"][0]["text"]
    assert "encrypted_content" not in events[2]["item"]


# --- the openai SDK ---------------------------------------------------------------------------------------------

def _transport(module: Callable[[Call], Reply], api_key: str | None) -> httpx2.MockTransport:
    """The demo provider `module` behind the SDK's HTTP client, without a server."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        try:
            body: object = orjson.loads(request.content) if request.content else None
        except orjson.JSONDecodeError:
            body = NOT_JSON
        call = Call(NAME, request.method, request.url.path, dict(request.headers), body, api_key,
                    request.url.query.decode() if isinstance(request.url.query, bytes) else str(request.url.query))
        reply = module(call)
        kind = "text/event-stream" if reply.events is not None else "application/json"
        content = b"".join(reply.events) if reply.events is not None else reply.body
        return httpx2.Response(reply.status, headers=[("content-type", kind), *reply.headers], content=content)

    return httpx2.MockTransport(handle)


@pytest.fixture
def sdk() -> Iterator[openai.OpenAI]:
    with httpx2.Client(transport=_transport(openai_server.answer, KEY)) as http, openai.OpenAI(
            api_key=KEY, base_url="http://demo.test/v1", http_client=http, max_retries=0) as client:
        yield client


@pytest.mark.parametrize("case", sorted(set(CASES) - {"truncated"}))
def test_sdk_stream_helper_assembles_the_json_answer(sdk: openai.OpenAI, case: str) -> None:
    body = {"model": MODEL, **CASES[case]}
    with sdk.responses.stream(**body) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        streamed = stream.get_final_response()
    whole = sdk.responses.create(**body)
    assert streamed.output_text == whole.output_text == "".join(texts)
    assert _without_ids(streamed.to_dict()) == _without_ids(whole.to_dict())


def test_sdk_reads_a_truncated_stream_as_incomplete(sdk: openai.OpenAI) -> None:
    with sdk.responses.create(model=MODEL, input=LONG_TEXT, max_output_tokens=16, stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details is not None
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_sdk_sees_openai_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=MODEL, input="hi", max_output_tokens=1)
    assert refused.value.param == "max_output_tokens"
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve("resp_missing")
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model=MODEL, input="hi", previous_response_id="resp_missing")


# --- Azure ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def azure_sdk() -> Iterator[openai.AzureOpenAI]:
    with httpx2.Client(transport=_transport(azure_server.answer, KEY)) as http, openai.AzureOpenAI(
            azure_endpoint="https://demo.openai.azure.test", api_key=KEY, api_version=AZURE_VERSION, http_client=http,
            max_retries=0) as client:
        yield client


def test_azure_serves_responses_for_the_deployment_in_model(azure_sdk: openai.AzureOpenAI) -> None:
    answer = azure_sdk.responses.create(model="my-deployment", input="hello")
    assert answer.model == "my-deployment"
    assert answer.output_text == greeting(NAME, "my-deployment", "hello")
    with azure_sdk.responses.stream(model="my-deployment", input="hello", tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "function_call"


def _azure(body: object, *, version: str = AZURE_VERSION, key: str = KEY, method: str = "POST",
           path: str = "/openai/responses") -> Reply:
    return azure_server.answer(Call("azure-r", method, path, {"api-key": key}, body, KEY, f"api-version={version}"))


def test_azure_refuses_responses_before_its_api_version() -> None:
    reply = _azure({"model": "d", "input": "hi"}, version="2024-10-21")
    assert reply.status == 400
    assert orjson.loads(reply.body)["error"]["code"] == "BadRequest"


def test_azure_answers_in_its_own_error_format() -> None:
    assert _azure({"model": "d", "input": "hi"}, key="wrong").status == 401
    reply = _azure({"model": "d", "input": "hi", "max_output_tokens": 1})
    assert reply.status == 400
    assert orjson.loads(reply.body) == {"error": {
        "code": "integer_below_min_value", "param": "max_output_tokens",
        "message": "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got 1 "
                   "instead."}}
    missing = _azure(None, method="GET", path="/openai/responses/resp_1")
    assert missing.status == 404
    assert set(orjson.loads(missing.body)["error"]) == {"code", "message"}


def test_azure_filters_a_responses_prompt() -> None:
    reply = _azure({"model": "d", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": f"please {azure_server.CONTENT_FILTER_TRIGGER}"}]}]})
    assert reply.status == 400
    assert orjson.loads(reply.body)["error"]["code"] == "content_filter"


# --- faults, through a running provider -------------------------------------------------------------------------

@pytest.fixture
def running() -> Iterator[DemoProvider]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    provider = asyncio.run_coroutine_threadsafe(start_demo_provider("openai", NAME, api_key=KEY), loop).result(10)
    yield provider
    asyncio.run_coroutine_threadsafe(provider.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def _post(provider: DemoProvider, body: dict[str, Any], fault: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}", "x-demo-fault": fault}
    return httpx.post(f"{provider.url}/v1/responses", json=body, headers=headers, timeout=10)


def test_status_fault_answers_an_openai_error(running: DemoProvider) -> None:
    reply = _post(running, {"model": MODEL, "input": "hi"}, f"{NAME}:429")
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["error"]["code"] == "rate_limit_exceeded"


def test_midstream_fault_cuts_the_event_stream(running: DemoProvider) -> None:
    headers = {"authorization": f"Bearer {KEY}", "x-demo-fault": f"{NAME}:midstream=3"}
    received = b""
    with pytest.raises(httpx.HTTPError), httpx.stream(
            "POST", f"{running.url}/v1/responses", json={"model": MODEL, "input": "hi", "stream": True},
            headers=headers, timeout=10) as reply:
        for piece in reply.iter_bytes():
            received += piece
    assert received.count(b"event: ") == 3
    assert b"response.completed" not in received
