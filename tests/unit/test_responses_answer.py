"""Whole answers for Responses API clients: `responses_answer.from_openai` turns the gateway's `chat.completion` into
a Response, checked against golden files and against the openai SDK's own `Response` model.

Fixtures (tests/fixtures/responses_client/): `answer_<case>.request.json` (the client's Responses request) and
`answer_<case>.openai.json` (the canonical answer) -> `answer_<case>.responses.json` (the full Response the gateway
stores). Ids are fixed: the response id and time are arguments, item ids come from `fixed_ids`. The helpers above
the tests are shared with test_responses_stream.py.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import typing_extensions
from openai.types.responses import Response
from openai.types.responses.response_error import ResponseError

from ext_proc.client_formats import responses_common, responses_request
from ext_proc.client_formats.responses_answer import (
    client_view,
    custom_input,
    failed_response,
    finish_status,
    from_openai,
    response_envelope,
)
from tests.unit.provider_checks import FixtureFolder, assert_no_undeclared_keys

FIXTURES = FixtureFolder(Path(__file__).resolve().parent.parent / "fixtures" / "responses_client")
RESPONSE_ID = "resp_test"
CREATED = 1700000000
RESPONSE_EXTENSIONS = frozenset({"store"})
"""Keys OpenAI's API returns that the openai SDK's models no longer declare."""


@pytest.fixture(autouse=True)
def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    count_ids_afresh(monkeypatch)


def count_ids_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item ids counted per prefix from 1 (`msg_1`, `fc_1`, `fc_2` ...), in the order the code asks for them."""
    counts: collections.Counter[str] = collections.Counter()

    def new_id(prefix: str) -> str:
        counts[prefix] += 1
        return f"{prefix}_{counts[prefix]}"

    monkeypatch.setattr(responses_common, "new_id", new_id)


def answer(completion: dict, request: dict) -> dict:
    return from_openai(completion, request, response_id=RESPONSE_ID, created_at=CREATED, model=request["model"])


def assert_valid_response(response: dict) -> Response:
    """An openai SDK `Response`, with no key the SDK does not declare (its models accept any)."""
    model = Response.model_validate(response)
    assert_no_undeclared_keys(model, "response", RESPONSE_EXTENSIONS)
    return model


def sdk_view(response: Response) -> dict:
    """What compares between the SDK's parsed objects and ours: declared fields, the SDK's parse-only ones left out."""
    dumped = response.model_dump(mode="json", exclude={"output_parsed"})
    for item in dumped["output"]:
        item.pop("parsed_arguments", None)
        for part in item.get("content") or ():
            part.pop("parsed", None)
    return dumped


@contextlib.contextmanager
def sdk(reply: Callable[[dict], httpx2.Response]) -> Iterator[openai.OpenAI]:
    """An `openai.OpenAI` client whose `/v1/responses` requests are answered by `reply` (given the request body)."""
    def handle(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/responses"
        return reply(json.loads(request.content))

    with httpx2.Client(transport=httpx2.MockTransport(handle)) as http:
        yield openai.OpenAI(api_key="sk-gateway-key", base_url="http://gateway/v1", http_client=http, max_retries=0)


def sdk_params(request: dict) -> dict:
    """The request as SDK keyword arguments."""
    return {key: value for key, value in request.items() if key != "stream"}


# --- golden answers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", FIXTURES.cases("answer_", ".openai.json"))
def test_answer_translates_to_golden_response(case: str) -> None:
    request = FIXTURES.load(f"answer_{case}.request.json")
    response = answer(FIXTURES.load(f"answer_{case}.openai.json"), request)
    assert response == FIXTURES.load(f"answer_{case}.responses.json")
    assert_valid_response(response)
    assert_valid_response(client_view(response, request))


def test_every_answer_case_has_its_request_and_golden() -> None:
    cases = FIXTURES.cases("answer_", ".openai.json")
    assert cases
    assert cases == FIXTURES.cases("answer_", ".request.json") == FIXTURES.cases("answer_", ".responses.json")


@pytest.mark.parametrize("case", FIXTURES.cases("answer_", ".openai.json"))
def test_sdk_parses_the_client_view(case: str) -> None:
    request = FIXTURES.load(f"answer_{case}.request.json")
    view = client_view(answer(FIXTURES.load(f"answer_{case}.openai.json"), request), request)
    with sdk(lambda _: httpx2.Response(200, json=view)) as client:
        parsed = client.responses.create(**sdk_params(request))
    assert parsed.model_dump(mode="json") == Response.model_validate(view).model_dump(mode="json")


def test_validator_catches_an_undeclared_key() -> None:
    request = FIXTURES.load("answer_text.request.json")
    response = answer(FIXTURES.load("answer_text.openai.json"), request)
    response["output"][0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    with pytest.raises(AssertionError):
        assert_valid_response(response)


# --- mapping rules -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("finish_reason", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None), ("function_call", "completed", None),
    (None, "completed", None), ("length", "incomplete", "max_output_tokens"),
    ("content_filter", "incomplete", "content_filter")])
def test_finish_reason_maps_to_status(finish_reason: str | None, status: str, reason: str | None) -> None:
    assert finish_status(finish_reason) == (status, {"reason": reason} if reason else None)


def test_the_item_an_answer_was_cut_in_is_incomplete() -> None:
    response = answer(FIXTURES.load("answer_length.openai.json"), FIXTURES.load("answer_length.request.json"))
    assert (response["status"], response["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert [item["status"] for item in response["output"]] == ["incomplete"]


def test_envelope_echoes_openai_defaults_for_a_bare_request() -> None:
    envelope = response_envelope({"model": "m", "input": "hi"}, response_id="resp_1", created_at=1, model="m",
                                 status="in_progress")
    assert {key: envelope[key] for key in ("tool_choice", "parallel_tool_calls", "metadata", "store", "text",
                                           "truncation", "tools", "background", "reasoning")} == {
        "tool_choice": "auto", "parallel_tool_calls": True, "metadata": {}, "store": True,
        "text": {"format": {"type": "text"}}, "truncation": "disabled", "tools": [], "background": False,
        "reasoning": {"effort": None, "summary": None}}


def test_envelope_names_the_model_the_client_asked_for() -> None:
    request = FIXTURES.load("answer_text.request.json")
    response = from_openai(FIXTURES.load("answer_text.openai.json"), request, response_id=RESPONSE_ID,
                           created_at=CREATED, model="my-route")
    assert response["model"] == "my-route"


def test_text_config_without_a_format_gets_the_text_format() -> None:
    envelope = response_envelope({"model": "m", "text": {"verbosity": "low"}}, response_id="r", created_at=1,
                                 model="m", status="completed")
    assert envelope["text"] == {"verbosity": "low", "format": {"type": "text"}}


@pytest.mark.parametrize(("arguments", "text"), [
    ('{"input": "*** Begin Patch"}', "*** Begin Patch"), ("not json", "not json"), ('{"other": 1}', '{"other": 1}'),
    ('"a string"', '"a string"'), ("", "")])
def test_custom_tool_input_is_the_input_string_or_the_raw_arguments(arguments: str, text: str) -> None:
    assert custom_input(arguments) == text


def test_tool_calls_go_back_as_the_client_declared_them() -> None:
    response = answer(FIXTURES.load("answer_tool_calls.openai.json"), FIXTURES.load("answer_tool_calls.request.json"))
    calls = [(item["type"], item.get("namespace"), item["name"], item["call_id"]) for item in response["output"][1:]]
    assert calls == [("function_call", None, "get_weather", "call_w"), ("function_call", "crm", "lookup", "call_c"),
                     ("custom_tool_call", None, "apply_patch", "call_p")]


def test_a_call_to_an_undeclared_tool_keeps_its_chat_name() -> None:
    completion = FIXTURES.load("answer_tool_calls.openai.json")
    response = answer(completion, {"model": "m", "input": "hi"})
    assert [item["name"] for item in response["output"][1:]] == ["get_weather", "crm__lookup", "apply_patch"]
    assert {item["type"] for item in response["output"][1:]} == {"function_call"}


def test_signed_thinking_travels_in_encrypted_content() -> None:
    completion = FIXTURES.load("answer_thinking_no_summary.openai.json")
    response = answer(completion, FIXTURES.load("answer_thinking_no_summary.request.json"))
    reasoning = response["output"][0]
    assert reasoning["summary"] == []
    assert responses_common.decode_thinking(reasoning["encrypted_content"]) == (
        completion["choices"][0]["message"]["thinking_blocks"])


@pytest.mark.parametrize(("include", "kept"), [(None, False), ([], False), (["message.output_text.logprobs"], False),
                                               (["reasoning.encrypted_content"], True)])
def test_client_view_keeps_encrypted_content_only_when_included(include: list[str] | None, kept: bool) -> None:
    request = FIXTURES.load("answer_thinking_no_summary.request.json") | {"include": include}
    response = answer(FIXTURES.load("answer_thinking_no_summary.openai.json"), request)
    stored = copy.deepcopy(response)
    view = client_view(response, request)
    assert ("encrypted_content" in view["output"][0]) is kept
    assert response == stored  # the stored response keeps it either way


def test_reasoning_text_is_a_summary_only_when_asked_for() -> None:
    summaries = {case: answer(FIXTURES.load(f"answer_{case}.openai.json"),
                              FIXTURES.load(f"answer_{case}.request.json"))["output"][0]["summary"]
                 for case in ("reasoning_text", "reasoning_text_no_summary", "thinking_legacy_generate_summary")}
    assert summaries == {"reasoning_text": [{"type": "summary_text", "text": "97 is odd; not divisible by 3, 5 or 7."}],
                         "reasoning_text_no_summary": [],
                         "thinking_legacy_generate_summary": [{"type": "summary_text", "text": "Short."}]}


def test_usage_maps_cached_and_reasoning_tokens() -> None:
    response = answer(FIXTURES.load("answer_usage_cached_reasoning.openai.json"),
                      FIXTURES.load("answer_usage_cached_reasoning.request.json"))
    assert response["usage"] == {"input_tokens": 1500,
                                 "input_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 100},
                                 "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 256},
                                 "total_tokens": 1800}


@pytest.mark.parametrize(("error", "code"), [
    ({"message": "Overloaded", "type": "service_unavailable", "code": None}, "server_error"),
    ({"message": "Slow down", "type": "rate_limit_error", "code": "429"}, "rate_limit_exceeded"),
    ({"message": "Slow down", "type": "requests", "code": "rate_limit_exceeded"}, "rate_limit_exceeded"),
    ({"message": "Flagged", "type": "invalid_request_error", "code": "invalid_prompt"}, "invalid_prompt"),
    ({}, "server_error")])
def test_failed_response_carries_a_response_error_code(error: dict, code: str) -> None:
    response = failed_response({"model": "m"}, error, response_id=RESPONSE_ID, created_at=CREATED, model="m")
    assert response["status"] == "failed" and response["error"]["code"] == code
    assert response["error"]["message"] == (error.get("message") or "The upstream request failed.")
    assert code in typing_extensions.get_args(ResponseError.model_fields["code"].annotation)
    assert_valid_response(response)


# --- the client hands the output back ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [case for case in FIXTURES.cases("answer_", ".openai.json")
                                  if case != "custom_tool_raw_arguments"])  # raw text comes back as `input` JSON
def test_output_handed_back_gives_the_backend_its_turn_again(case: str) -> None:
    """A stateless client sends the output back as input (with encrypted reasoning, as Codex asks): the chat form's
    assistant turn has the answer's signed thinking, text and calls again (`responses_request` reads them)."""
    request = FIXTURES.load(f"answer_{case}.request.json")
    completion = FIXTURES.load(f"answer_{case}.openai.json")
    response = answer(completion, request)
    body = {"model": "m", "tools": request.get("tools") or [],
            "input": [{"role": "user", "content": "hi"}, *response["output"]]}
    messages = responses_request.to_openai(body)["messages"]
    if not response["output"]:
        assert len(messages) == 1
        return
    turn, original = messages[-1], completion["choices"][0]["message"]
    assert turn.get("thinking_blocks", []) == (original.get("thinking_blocks") or [])
    assert "".join(part["text"] for part in turn.get("content") or ()) == (original.get("content") or "")
    assert turn.get("refusal") == original.get("refusal")
    assert [(call["id"], call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in turn.get("tool_calls") or ()] == [
        (call["id"], call["function"]["name"], json.loads(call["function"]["arguments"]))
        for call in original.get("tool_calls") or ()]
