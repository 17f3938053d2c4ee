"""Responses API requests -> the canonical OpenAI chat request, checked against fixtures in
tests/fixtures/responses_client/ (`request_*`, `bad_requests.json`, `dropped_fields.json`, `refused_fields.json`).

Every Responses fixture is a request the openai SDK's `ResponseCreateParams` types allow (unknown keys refused);
every chat request produced fits the SDK's chat `completion_create_params` (unknown keys refused but the gateway's
`thinking_blocks`), passes the route stage's `check_chat_shape`, and is taken by the translators of the providers
(or refused by one for a feature it lacks, as `UNSERVED` lists).
"""

from __future__ import annotations

import copy
import functools
import json
import typing
from pathlib import Path

import jsonschema
import pydantic
import pytest
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params, response_input_param
from openai.types.responses.custom_tool_param import CustomToolParam
from openai.types.responses.function_tool_param import FunctionToolParam
from openai.types.responses.namespace_tool_param import NamespaceToolParam
from openai.types.responses.response_input_file_param import ResponseInputFileParam
from openai.types.responses.response_input_image_param import ResponseInputImageParam
from openai.types.responses.response_input_text_param import ResponseInputTextParam
from openai.types.responses.response_output_refusal_param import ResponseOutputRefusalParam
from openai.types.responses.response_output_text_param import ResponseOutputTextParam

from ext_proc.client_formats import responses_request
from ext_proc.client_formats.openai_chat import check_chat_shape
from ext_proc.client_formats.responses_common import encode_thinking, tool_names
from ext_proc.client_formats.responses_request import FIELDS, dropped_fields, rough_form, to_openai
from ext_proc.errors import BadRequest
from ext_proc.limits.estimate import estimate_prompt_tokens
from ext_proc.providers import for_schema
from tests.unit.provider_checks import FixtureFolder, sdk_fields, typed_dict_problems

FIXTURES = FixtureFolder(Path(__file__).resolve().parent.parent / "fixtures" / "responses_client")
CASES = FIXTURES.cases("request_", ".responses.json")
BASE_BODY = {"model": "gpt-4.1", "input": "hi"}
RESPONSES_PARAMS = (response_create_params.ResponseCreateParamsNonStreaming,
                    response_create_params.ResponseCreateParamsStreaming)
CHAT_EXTENSION_KEYS = {"thinking_blocks"}
"""Keys the conversion adds to chat messages that the openai SDK doesn't declare (the gateway's documented
extension)."""

TRANSLATOR_MODELS = {
    "anthropic": "claude-sonnet-4-5-20250929",
    "bedrock-converse": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "gemini": "gemini-2.5-pro",
    "cohere": "command-a-reasoning-08-2025",
    "openai": "gpt-4o",
}
UNSERVED = {
    ("logprobs_verbosity_moderation", "anthropic"): "moderation",
    ("logprobs_verbosity_moderation", "bedrock-converse"): "moderation",
    ("logprobs_verbosity_moderation", "gemini"): "moderation",
    ("logprobs_verbosity_moderation", "cohere"): "moderation",
    ("multi_turn_images_and_pdf", "bedrock-converse"): "messages[1].content[1]",  # Bedrock fetches no image URLs
    ("multi_turn_images_and_pdf", "cohere"): "messages[3].content[0]",  # Cohere's chat reads no files
}
"""(case, provider schema) -> the param the provider's translator refuses: a feature that provider lacks."""

DROPPED_BY_CASE = {
    "allowed_tools_hosted_and_deferred": ["truncation", "max_tool_calls", "tools[].defer_loading",
                                          "tools[].web_search", "tools[].file_search"],
    "codex_like": ["tools[].format", "tools[].web_search"],
    "json_object_and_request_options": ["prompt_cache_options.ttl"],
}
"""What `dropped_fields` names for each golden case; a case not listed names nothing."""


# --- validators ----------------------------------------------------------------------------------------------------


@functools.cache
def _adapter(hint: typing.Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(hint)


def _assert_valid_responses_request(body: dict) -> None:
    params = RESPONSES_PARAMS[1] if body.get("stream") else RESPONSES_PARAMS[0]
    _adapter(params).validate_python(body)
    assert typed_dict_problems(body, params, "request") == []


def _assert_valid_chat_request(request: dict) -> None:
    """The openai SDK's chat request type, unknown keys refused (but `thinking_blocks`); the route stage's shape
    check; every tool's parameters a JSON schema."""
    check_chat_shape(request)
    for tool in request.get("tools") or ():
        jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
    params = (completion_create_params.CompletionCreateParamsStreaming if request.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    _adapter(params).validate_python(request)
    problems = [problem for problem in typed_dict_problems(request, params, "request")
                if not any(problem.endswith(f".{key}: unknown key") for key in CHAT_EXTENSION_KEYS)]
    assert problems == []


def test_chat_validator_catches_a_misplaced_key() -> None:
    request = to_openai(BASE_BODY)
    request["messages"][0]["tool_call_id"] = "call_1"  # belongs on tool messages only
    with pytest.raises(AssertionError):
        _assert_valid_chat_request(request)


def test_responses_validator_catches_an_unknown_key() -> None:
    with pytest.raises(AssertionError):
        _assert_valid_responses_request({**BASE_BODY, "input": [{"role": "user", "content": "x", "name": "bob"}]})


# --- goldens -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_request_translates_to_golden_chat_request(case: str) -> None:
    body = FIXTURES.load(f"request_{case}.responses.json")
    _assert_valid_responses_request(body)  # the fixture is a request the SDK could send
    translated = to_openai(body)
    assert translated == FIXTURES.load(f"request_{case}.openai.json")
    _assert_valid_chat_request(translated)


@pytest.mark.parametrize("case", CASES)
def test_golden_names_exactly_what_it_leaves_out(case: str) -> None:
    assert dropped_fields(FIXTURES.load(f"request_{case}.responses.json")) == DROPPED_BY_CASE.get(case, [])


@pytest.mark.parametrize("schema", sorted(TRANSLATOR_MODELS))
@pytest.mark.parametrize("case", CASES)
def test_provider_translators_take_the_chat_request(case: str, schema: str) -> None:
    translated = to_openai(FIXTURES.load(f"request_{case}.responses.json"))
    translator = for_schema(schema)
    expected = UNSERVED.get((case, schema))
    if expected is None:
        translator.chat_request(copy.deepcopy(translated), TRANSLATOR_MODELS[schema], default_max_tokens=1024)
        return
    with pytest.raises(BadRequest) as refused:
        translator.chat_request(copy.deepcopy(translated), TRANSLATOR_MODELS[schema], default_max_tokens=1024)
    assert refused.value.param == expected


def test_unserved_cases_are_real() -> None:
    assert {case for case, _ in UNSERVED} | set(DROPPED_BY_CASE) <= set(CASES)


def test_request_translation_does_not_modify_the_client_body() -> None:
    for case in CASES:
        body = FIXTURES.load(f"request_{case}.responses.json")
        to_openai(body)
        assert body == FIXTURES.load(f"request_{case}.responses.json"), case


@pytest.mark.parametrize("case", ["namespace_and_custom_tools", "codex_like"])
def test_every_chat_tool_name_maps_back_to_the_clients_tool(case: str) -> None:
    """The answer side reads chat names back through `responses_common.tool_names`: every name sent must be there,
    and every call handed back must name a tool that exists."""
    body = FIXTURES.load(f"request_{case}.responses.json")
    translated = to_openai(body)
    names = tool_names(body["tools"])
    sent = {tool["function"]["name"] for tool in translated["tools"]}
    assert sent <= set(names)
    called = {call["function"]["name"] for message in translated["messages"] for call in message.get("tool_calls", ())}
    assert called <= sent


# --- fields --------------------------------------------------------------------------------------------------------

REFUSED_SAMPLES = FIXTURES.load("refused_fields.json")
DROPPED_SAMPLES = FIXTURES.load("dropped_fields.json")
GATEWAY_SAMPLES = {"store": False, "metadata": {"app": "notes"}, "include": ["reasoning.encrypted_content"],
                   "stream_options": {"include_obfuscation": False}}
"""`previous_response_id`, the fifth gateway field, is resolved before conversion: one still here is refused."""


CLIENT_FIELDS = {"client_metadata"}
"""Sent by OpenAI's own clients (Codex) and accepted by OpenAI, though the SDK's types don't declare them."""


def test_every_responses_field_has_a_rule() -> None:
    assert set(FIELDS) == sdk_fields(*RESPONSES_PARAMS) | CLIENT_FIELDS
    assert set(FIELDS.values()) == {responses_request.MAPPED, responses_request.DROPPED, responses_request.REFUSED,
                                    responses_request.GATEWAY}


def _fields_with(rule: str) -> set[str]:
    return {name for name, found in FIELDS.items() if found == rule}


def test_every_mapped_field_is_used_by_a_golden() -> None:
    used = {name for case in CASES for name in FIXTURES.load(f"request_{case}.responses.json")}
    assert _fields_with(responses_request.MAPPED) <= used


def test_every_refused_dropped_and_gateway_field_has_a_sample() -> None:
    assert set(REFUSED_SAMPLES) == _fields_with(responses_request.REFUSED) | {"previous_response_id"}
    assert set(DROPPED_SAMPLES) == _fields_with(responses_request.DROPPED)
    assert set(GATEWAY_SAMPLES) | {"previous_response_id"} == _fields_with(responses_request.GATEWAY)


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_refused_field_is_named_in_the_bad_request(field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        to_openai({**BASE_BODY, field: REFUSED_SAMPLES[field]})
    assert refused.value.param == field
    assert field in refused.value.message


@pytest.mark.parametrize("field", sorted(REFUSED_SAMPLES))
def test_null_refused_field_counts_as_absent(field: str) -> None:
    assert to_openai({**BASE_BODY, field: None}) == to_openai(BASE_BODY)


def test_background_false_is_no_background() -> None:
    assert to_openai({**BASE_BODY, "background": False}) == to_openai(BASE_BODY)


@pytest.mark.parametrize("field", sorted(DROPPED_SAMPLES))
def test_dropped_field_is_named_and_leaves_the_chat_request_unchanged(field: str) -> None:
    body = {**BASE_BODY, field: DROPPED_SAMPLES[field]}
    assert to_openai(body) == to_openai(BASE_BODY)
    assert dropped_fields(body) == [field]


@pytest.mark.parametrize("field", sorted(GATEWAY_SAMPLES))
def test_gateway_field_is_neither_sent_nor_named(field: str) -> None:
    body = {**BASE_BODY, field: GATEWAY_SAMPLES[field]}
    assert to_openai(body) == to_openai(BASE_BODY)
    assert dropped_fields(body) == []


@pytest.mark.parametrize("value", ["disabled", None])
def test_truncation_other_than_auto_is_not_named(value: str | None) -> None:
    assert dropped_fields({**BASE_BODY, "truncation": value}) == []


def test_unknown_field_is_refused_with_its_name() -> None:
    with pytest.raises(BadRequest) as refused:
        to_openai({**BASE_BODY, "frobnicate": True})
    assert refused.value.param == "frobnicate"


@pytest.mark.parametrize("case", FIXTURES.load("bad_requests.json"), ids=lambda case: case["name"])
def test_malformed_request_is_refused_with_its_param(case: dict) -> None:
    with pytest.raises(BadRequest) as refused:
        to_openai({**BASE_BODY, **case["body"]})
    assert refused.value.param == case["param"]
    assert case["message"] in refused.value.message


def test_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(BadRequest):
        to_openai([BASE_BODY])  # type: ignore[arg-type]


def _typed_dict_keys(hint: typing.Any) -> frozenset[str]:
    return frozenset(typing.get_type_hints(hint))


def _input_items(kind: str) -> frozenset[str]:
    """The keys of the SDK's input item types whose `type` literal is `kind` (two for `message`)."""
    members = [member for member in typing.get_args(response_input_param.ResponseInputItemParam)
               if f"'{kind}'" in str(typing.get_type_hints(member).get("type"))]
    assert members, kind
    return frozenset().union(*(_typed_dict_keys(member) for member in members))


SDK_KEYS: dict[str, typing.Callable[[], frozenset[str]]] = {
    "_MESSAGE_KEYS": lambda: _input_items("message"),
    "_FUNCTION_CALL_KEYS": lambda: _input_items("function_call"),
    "_CUSTOM_CALL_KEYS": lambda: _input_items("custom_tool_call"),
    "_FUNCTION_OUTPUT_KEYS": lambda: _input_items("function_call_output"),
    "_CUSTOM_OUTPUT_KEYS": lambda: _input_items("custom_tool_call_output"),
    "_REASONING_KEYS": lambda: _input_items("reasoning"),
    "_FUNCTION_TOOL_KEYS": lambda: _typed_dict_keys(FunctionToolParam),
    "_CUSTOM_TOOL_KEYS": lambda: _typed_dict_keys(CustomToolParam),
    "_NAMESPACE_KEYS": lambda: _typed_dict_keys(NamespaceToolParam),
}
SDK_PART_TYPES = {"input_text": ResponseInputTextParam, "input_image": ResponseInputImageParam,
                  "input_file": ResponseInputFileParam, "output_text": ResponseOutputTextParam,
                  "refusal": ResponseOutputRefusalParam}


@pytest.mark.parametrize("name", sorted(SDK_KEYS))
def test_accepted_keys_are_the_sdk_types_keys(name: str) -> None:
    """Each key set the conversion accepts is the SDK type's: a new SDK field is a decision, not an accident."""
    accepted = getattr(responses_request, name)
    assert accepted == SDK_KEYS[name]()


def test_accepted_content_part_keys_are_the_sdk_types_keys() -> None:
    accepted = responses_request._PART_KEYS
    assert accepted == {kind: _typed_dict_keys(hint) for kind, hint in SDK_PART_TYPES.items()}


# --- items ---------------------------------------------------------------------------------------------------------


def _messages(*items: dict) -> list[dict]:
    return to_openai({**BASE_BODY, "input": list(items)})["messages"]


CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "ok"}


def test_assistant_text_and_the_calls_after_it_become_one_message() -> None:
    text = {"role": "assistant", "content": "Looking."}
    second = {**CALL, "call_id": "call_2"}
    assert _messages({"role": "user", "content": "go"}, text, CALL, second) == [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


def test_text_after_a_call_starts_a_new_assistant_message() -> None:
    messages = _messages({"role": "user", "content": "go"}, CALL, {"role": "assistant", "content": "Done."})
    assert [(m["role"], m.get("content"), len(m.get("tool_calls", ()))) for m in messages] == [
        ("user", "go", 0), ("assistant", None, 1), ("assistant", "Done.", 0)]


def test_custom_tool_call_arguments_hold_its_input() -> None:
    call = {"type": "custom_tool_call", "call_id": "c", "name": "patch", "input": 'a "quoted"\nline'}
    arguments = _messages({"role": "user", "content": "go"}, call)[1]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"input": 'a "quoted"\nline'}


def test_gateway_reasoning_blocks_go_to_the_next_assistant_message() -> None:
    blocks = [{"type": "thinking", "thinking": "t", "signature": "s"}]
    reasoning = {"type": "reasoning", "summary": [], "encrypted_content": encode_thinking(blocks)}
    messages = _messages({"role": "user", "content": "go"}, reasoning, CALL, OUTPUT)
    assert messages[1]["thinking_blocks"] == blocks and messages[1]["tool_calls"][0]["id"] == "call_1"


def test_reasoning_starts_a_new_assistant_message() -> None:
    reasoning = {"type": "reasoning", "summary": [],
                 "encrypted_content": encode_thinking([{"type": "thinking", "thinking": "t", "signature": "s"}])}
    messages = _messages({"role": "user", "content": "go"}, CALL, reasoning, {**CALL, "call_id": "call_2"})
    assert [len(m.get("tool_calls", ())) for m in messages] == [0, 1, 1]
    assert "thinking_blocks" in messages[2] and "thinking_blocks" not in messages[1]


@pytest.mark.parametrize("encrypted", [None, "gAAAAABopaque", "bgw1.!!!not-base64", encode_thinking([])])
def test_unreadable_reasoning_is_left_out_without_a_name(encrypted: str | None) -> None:
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}],
                 "encrypted_content": encrypted}
    body = {**BASE_BODY, "input": [{"role": "user", "content": "go"}, reasoning,
                                   {"role": "assistant", "content": "ok"}]}
    assert to_openai(body)["messages"] == [{"role": "user", "content": "go"}, {"role": "assistant", "content": "ok"}]
    assert dropped_fields(body) == []


def test_reasoning_without_an_assistant_message_after_it_is_left_out() -> None:
    reasoning = {"type": "reasoning", "summary": [],
                 "encrypted_content": encode_thinking([{"type": "thinking", "thinking": "t", "signature": "s"}])}
    messages = _messages({"role": "user", "content": "go"}, reasoning, {"role": "user", "content": "again"})
    assert all("thinking_blocks" not in message for message in messages)


def test_thinking_blocks_reach_anthropic_first_in_their_turn() -> None:
    translated = to_openai(FIXTURES.load("request_reasoning_gateway_envelope.responses.json"))
    sent = for_schema("anthropic").chat_request(translated, TRANSLATOR_MODELS["anthropic"], default_max_tokens=1024)
    assistant_turns = [message["content"] for message in sent["messages"] if message["role"] == "assistant"]
    assert [[block["type"] for block in turn] for turn in assistant_turns] == [
        ["thinking", "tool_use", "tool_use"], ["thinking", "redacted_thinking", "text"]]


def test_developer_messages_are_system_messages() -> None:
    assert _messages({"role": "developer", "content": "rules"}, {"role": "user", "content": "go"})[0] == {
        "role": "system", "content": "rules"}


def test_assistant_refusal_part_becomes_the_message_refusal() -> None:
    item = {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}]}
    assert _messages({"role": "user", "content": "x"}, item)[1] == {
        "role": "assistant", "content": None, "refusal": "I can't help with that."}


def test_bare_base64_file_data_takes_its_type_from_the_filename() -> None:
    part = {"type": "input_file", "filename": "report.pdf", "file_data": "JVBERi0x"}
    content = _messages({"role": "user", "content": [part]})[0]["content"]
    assert content == [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x",
                                                  "filename": "report.pdf"}}]


def test_file_detail_is_named_when_dropped() -> None:
    part = {"type": "input_file", "filename": "a.pdf", "file_data": "JVBERi0x", "detail": "high"}
    body = {**BASE_BODY, "input": [{"role": "user", "content": [part]}]}
    assert "detail" not in json.dumps(to_openai(body))
    assert dropped_fields(body) == ["input[].content[].detail"]


def test_prompt_cache_breakpoint_travels_on_the_chat_part() -> None:
    part = {"type": "input_text", "text": "long prefix", "prompt_cache_breakpoint": {"mode": "explicit"}}
    body = {**BASE_BODY, "input": [{"role": "user", "content": [part]}]}
    _assert_valid_responses_request(body)
    translated = to_openai(body)
    assert translated["messages"][0]["content"] == [{"type": "text", "text": "long prefix",
                                                     "prompt_cache_breakpoint": {"mode": "explicit"}}]
    _assert_valid_chat_request(translated)
    sent = for_schema("anthropic").chat_request(translated, TRANSLATOR_MODELS["anthropic"], default_max_tokens=64)
    assert sent["messages"][0]["content"][0]["cache_control"]["type"] == "ephemeral"


# --- tools ---------------------------------------------------------------------------------------------------------

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}},
           "strict": None}


def _tools(tools: list[dict], **fields: typing.Any) -> dict:
    return to_openai({**BASE_BODY, "tools": tools, **fields})


def test_function_without_parameters_takes_an_empty_object() -> None:
    tool = {"type": "function", "name": "ping", "parameters": None, "strict": None}
    assert _tools([tool])["tools"] == [{"type": "function", "function": {
        "name": "ping", "parameters": {"type": "object", "properties": {}}}}]


def test_custom_tool_grammar_is_dropped_and_named() -> None:
    tool = {"type": "custom", "name": "patch", "format": {"type": "grammar", "syntax": "lark", "definition": "x"}}
    body = {**BASE_BODY, "tools": [tool]}
    assert to_openai(body)["tools"][0]["function"]["parameters"]["required"] == ["input"]
    assert dropped_fields(body) == ["tools[].format"]


def test_custom_tool_schemas_are_not_shared_between_requests() -> None:
    body = {**BASE_BODY, "tools": [{"type": "custom", "name": "patch"}]}
    to_openai(body)["tools"][0]["function"]["parameters"]["properties"].clear()
    assert to_openai(body)["tools"][0]["function"]["parameters"]["properties"]


def test_tools_mapping_to_one_chat_name_are_refused() -> None:
    namespace = {"type": "namespace", "name": "crm", "description": "d", "tools": [{**WEATHER, "name": "find"}]}
    with pytest.raises(BadRequest) as refused:
        _tools([namespace, {**WEATHER, "name": "crm__find"}])
    assert refused.value.param == "tools[1].name"


@pytest.mark.parametrize("tool", [{"type": "web_search"}, {"type": "mcp", "server_label": "s"},
                                  {"type": "code_interpreter", "container": "auto"}, {"type": "local_shell"},
                                  {"type": "some_future_tool"}])
def test_hosted_tools_are_left_out_and_named(tool: dict) -> None:
    body = {**BASE_BODY, "tools": [tool, WEATHER]}
    assert [t["function"]["name"] for t in to_openai(body)["tools"]] == ["get_weather"]
    assert dropped_fields(body) == [f"tools[].{tool['type']}"]


def test_hosted_tools_alone_send_no_tools_and_no_tool_choice() -> None:
    translated = _tools([{"type": "web_search"}], tool_choice="auto", parallel_tool_calls=False)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(translated)


@pytest.mark.parametrize("choice", [{"type": "web_search_preview"}, {"type": "mcp", "server_label": "s"},
                                    {"type": "shell"}, {"type": "apply_patch"}, "required"])
def test_tool_choice_forcing_a_hosted_tool_is_refused(choice: typing.Any) -> None:
    with pytest.raises(BadRequest) as refused:
        _tools([{"type": "web_search"}], tool_choice=choice)
    assert refused.value.param == "tool_choice"


def test_tool_choice_naming_a_deferred_tool_is_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        _tools([{**WEATHER, "defer_loading": True}, {**WEATHER, "name": "other"}],
               tool_choice={"type": "function", "name": "get_weather"})
    assert refused.value.param == "tool_choice.name"
    assert "defer_loading" in refused.value.message


def test_tool_only_programs_may_call_is_left_out_and_named() -> None:
    body = {**BASE_BODY, "tools": [{**WEATHER, "allowed_callers": ["programmatic"]}, {**WEATHER, "name": "x"}]}
    assert [t["function"]["name"] for t in to_openai(body)["tools"]] == ["x"]
    assert dropped_fields(body) == ["tools[].allowed_callers"]


def test_allowed_tools_of_a_namespace_keep_its_functions() -> None:
    namespace = {"type": "namespace", "name": "crm", "description": "d", "tools": [{**WEATHER, "name": "find"}]}
    translated = _tools([namespace, WEATHER], tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "namespace", "name": "crm"}]})
    assert [t["function"]["name"] for t in translated["tools"]] == ["crm__find"]
    assert translated["tool_choice"] == "auto"


@pytest.mark.parametrize(("reasoning", "named"), [
    ({"effort": "low", "summary": "auto", "generate_summary": "concise"}, []),
    ({"effort": "low", "mode": "standard", "context": "auto"}, []),
    ({"effort": "low", "mode": "pro"}, ["reasoning.mode"]),
    ({"context": "all_turns"}, ["reasoning.context"])])
def test_reasoning_settings_a_translated_backend_lacks_are_named(reasoning: dict, named: list[str]) -> None:
    body = {**BASE_BODY, "reasoning": reasoning}
    _assert_valid_responses_request(body)
    assert to_openai(body).get("reasoning_effort") == reasoning.get("effort")
    assert dropped_fields(body) == named


@pytest.mark.parametrize(("key", "value"), [("output_schema", {"type": "object"}), ("async", True)])
def test_function_tool_notes_are_dropped_and_named(key: str, value: typing.Any) -> None:
    body = {**BASE_BODY, "tools": [{**WEATHER, key: value}]}
    _assert_valid_responses_request(body)
    assert to_openai(body)["tools"] == to_openai({**BASE_BODY, "tools": [WEATHER]})["tools"]
    assert dropped_fields(body) == [f"tools[].{key}"]


def test_prompt_cache_options_keep_what_the_chat_api_has() -> None:
    body = {**BASE_BODY, "prompt_cache_options": {"mode": "explicit", "ttl": "30m", "comparison_response_id": "r"}}
    _assert_valid_responses_request(body)
    assert to_openai(body)["prompt_cache_options"] == {"mode": "explicit", "ttl": "30m"}
    assert dropped_fields(body) == ["prompt_cache_options.comparison_response_id"]


def test_prompt_cache_prewarm_is_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        to_openai({**BASE_BODY, "prompt_cache_options": {"prewarm": True}})
    assert refused.value.param == "prompt_cache_options.prewarm"


# --- hostile input ------------------------------------------------------------------------------------------------

WRONG_VALUES: tuple[typing.Any, ...] = (None, 7, -1, 2.5, True, "x", "", [], [None], {}, {"type": 3})


def _paths(value: typing.Any, path: tuple = ()) -> typing.Iterator[tuple]:
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*path, key))


def _replaced(body: typing.Any, path: tuple, value: typing.Any) -> typing.Any:
    body = copy.deepcopy(body)
    holder = body
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return body


@pytest.mark.parametrize("case", CASES)
def test_any_value_anywhere_gives_a_chat_request_or_a_bad_request(case: str) -> None:
    """Each value of a golden replaced by each wrong kind of JSON value: `to_openai` answers a valid chat request or
    a BadRequest with a param (never another exception); `dropped_fields` and `rough_form` never raise."""
    body = FIXTURES.load(f"request_{case}.responses.json")
    for path in list(_paths(body))[1:]:
        for value in WRONG_VALUES:
            mutated = _replaced(body, path, value)
            try:
                translated = to_openai(mutated)
            except BadRequest as refused:
                assert refused.param, (path, value, refused.message)
            else:
                check_chat_shape(translated)
                dropped_fields(mutated)
            check_chat_shape(rough_form(mutated))


# --- rough form ----------------------------------------------------------------------------------------------------

ODD_BODIES: list[typing.Any] = [{}, {"input": 7}, {"input": [None, 3, "x", {"type": "computer_call_output",
                                                                            "output": {"image_url": "data:..."}}]},
                                {"model": 1, "tools": "no", "max_output_tokens": True}, [], None]


@pytest.mark.parametrize("case", CASES)
def test_rough_form_of_a_golden_counts_like_its_chat_request(case: str) -> None:
    body = FIXTURES.load(f"request_{case}.responses.json")
    rough = estimate_prompt_tokens(rough_form(body), 4.0)
    exact = estimate_prompt_tokens(to_openai(body), 4.0)
    assert exact * 0.7 <= rough <= exact * 2.5 + 50  # more where tools are filtered or thinking counted


def test_rough_form_never_raises() -> None:
    bodies = [*ODD_BODIES, *({**BASE_BODY, **case["body"]} for case in FIXTURES.load("bad_requests.json"))]
    for body in bodies:
        form = rough_form(body)
        check_chat_shape(form)
        assert estimate_prompt_tokens(form, 4.0) >= 0


def test_rough_form_keeps_the_text_of_items_the_conversion_refuses() -> None:
    body = {**BASE_BODY, "input": [{"type": "web_search_call", "id": "ws_1", "status": "completed",
                                    "action": {"type": "search", "query": "weather in Paris"}},
                                   {"type": "item_reference", "id": "msg_9"}]}
    with pytest.raises(BadRequest):
        to_openai(body)
    assert "weather in Paris" in json.dumps(rough_form(body))
