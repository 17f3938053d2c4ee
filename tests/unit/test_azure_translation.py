"""OpenAI <-> Azure OpenAI, checked against fixture pairs in tests/fixtures/azure/.

Azure speaks OpenAI's format, so the checks are: deployment URLs with the api-version, every request validates
against the `openai` SDK's `CompletionCreateParams` (strictly: unknown keys refused), Azure's content-filter
annotations are kept without breaking the `chat.completion(.chunk)` models, the filter-only opening chunk never
reaches the client on its own, and Azure errors keep their codes.
"""

from __future__ import annotations

import collections.abc
import json
import types
import typing
from pathlib import Path

import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params
from typing_extensions import is_typeddict

from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import azure_openai, openai
from ext_proc.streaming.sse import SSEDecoder, SSEEvent

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "azure"
MODEL = "gpt-4o-2024-08-06"
CREATED = 1700000000
BASE_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
AZURE_EXTENSIONS = {"prompt_filter_results", "content_filter_results"}
"""Azure's keys on answers and chunks that the openai SDK models don't declare (clients ignore them)."""


def _load(name: str) -> typing.Any:
    return json.loads((FIXTURES / name).read_text())


def _events(name: str) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed((FIXTURES / name).read_bytes()) + decoder.finish()


def _run_stream(name: str, include_usage: bool) -> tuple[azure_openai.ChatStream, list[dict]]:
    stream = azure_openai.ChatStream(MODEL, CREATED, include_usage)
    out: list[dict] = []
    for event in _events(name):
        out.extend(stream.feed(event.event, event.data))
    out.extend(stream.finish())
    return stream, out


def _backend(**azure: object) -> Backend:
    settings = {"id": "aoai", "schema": "azure-openai", "base_url": "https://res.openai.azure.com"}
    return Backend.model_validate({**settings, "azure": azure} if azure else settings)


def _problems(value: object, hint: object, path: str) -> list[str]:
    """Where `value` departs from a TypedDict-based openai SDK type, unknown keys included. Empty means it fits."""
    origin = typing.get_origin(hint)
    if origin in (typing.Required, typing.NotRequired, typing.Annotated):
        return _problems(value, typing.get_args(hint)[0], path)
    if origin in (typing.Union, types.UnionType):
        tries = [_problems(value, member, path) for member in typing.get_args(hint)]
        return min(tries, key=lambda problems: (any(p.startswith(f"{path}: ") for p in problems), len(problems)))
    if origin is typing.Literal:
        return [] if value in typing.get_args(hint) else [f"{path}: {value!r} is not one of {typing.get_args(hint)}"]
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        hints = typing.get_type_hints(hint, include_extras=True)
        problems = [f"{path}.{key}: unknown key" for key in value if key not in hints]
        problems += [f"{path}.{key}: missing" for key in hint.__required_keys__ if key not in value]
        for key, item in value.items():
            if key in hints:
                problems += _problems(item, hints[key], f"{path}.{key}")
        return problems
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or (
            origin is not None and origin.__name__ == "SequenceNotStr"):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        return [problem for i, item in enumerate(value) for problem in _problems(item, typing.get_args(hint)[0],
                                                                                 f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping) or hint is object:
        return [] if hint is object or isinstance(value, dict) else [f"{path}: expected an object"]
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if hint is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else [f"{path}: expected number"]
    if hint in (str, int, bool):
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        return [] if ok else [f"{path}: expected {hint.__name__}"]
    return [f"{path}: {hint!r} never matches a request value"]


def _assert_valid_azure_request(request: dict) -> None:
    request = {key: value for key, value in request.items() if key not in azure_openai.EXTENSIONS}
    params = (completion_create_params.CompletionCreateParamsStreaming if request.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(request)
    assert _problems(request, params, "request") == []


def _assert_no_undeclared_keys(model: pydantic.BaseModel, path: str) -> None:
    extra = set(model.model_extra or ()) - AZURE_EXTENSIONS
    assert not extra, f"{path} has keys the openai SDK does not declare: {extra}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, pydantic.BaseModel):
                _assert_no_undeclared_keys(item, f"{path}.{name}[{i}]")


def _assert_error_envelope(error: dict) -> None:
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]


# --- paths and credentials -----------------------------------------------------------------------------------------


def test_chat_path_names_the_deployment_and_api_version() -> None:
    backend = _backend(deployment="gpt4o-prod", api_version="2024-10-21")
    assert azure_openai.chat_path(MODEL, True, backend) == (
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21")
    assert azure_openai.embeddings_path("emb", backend) == (
        "/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21")


def test_deployment_defaults_to_the_route_model_and_is_quoted() -> None:
    assert azure_openai.chat_path("my model/v2", False, _backend(api_version="2025-01-01-preview")) == (
        "/openai/deployments/my%20model%2Fv2/chat/completions?api-version=2025-01-01-preview")
    default = azure_openai.DEFAULT_API_VERSION
    expected = f"/openai/deployments/dep/chat/completions?api-version={default}"
    assert azure_openai.chat_path("dep", False, _backend()) == expected
    assert azure_openai.chat_path("dep", False) == azure_openai.chat_path("dep", False, _backend())


def test_static_key_goes_in_the_api_key_header() -> None:
    credential = azure_openai.make_credential(_backend(), "azure-key-1")
    assert credential.headers("POST", "https://res.openai.azure.com/x", b"{}") == [("api-key", "azure-key-1")]
    assert azure_openai.make_credential(_backend(), None).headers("POST", "https://x", b"") == []
    assert set(azure_openai.CREDENTIAL_HEADERS) == {"api-key", "authorization"}
    assert azure_openai.EMBEDDINGS is True


# --- requests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(p.name.split(".")[0] for p in FIXTURES.glob("request_*.client.json")))
def test_request_passes_through_with_model_and_usage_option(case: str) -> None:
    client = _load(f"{case}.client.json")
    upstream = azure_openai.chat_request(client, MODEL, default_max_tokens=4096)
    assert upstream == _load(f"{case}.azure.json")
    assert client == _load(f"{case}.client.json"), "the client's body must not be modified"
    _assert_valid_azure_request(upstream)


def test_streamed_request_always_asks_for_usage() -> None:
    upstream = azure_openai.chat_request({**BASE_BODY, "stream": True}, MODEL, default_max_tokens=1)
    assert upstream["stream_options"] == {"include_usage": True}


def test_every_openai_request_field_is_passed_to_azure() -> None:
    sdk_fields: set[str] = set()
    for params in (completion_create_params.CompletionCreateParamsNonStreaming,
                   completion_create_params.CompletionCreateParamsStreaming):
        sdk_fields |= set(params.__annotations__) | set(typing.get_type_hints(params))
    assert set(azure_openai.FIELDS) == sdk_fields
    assert set(azure_openai.FIELDS.values()) == {azure_openai.MAPPED}
    for field in sorted(sdk_fields - {"messages", "model", "stream", "stream_options"}):
        upstream = azure_openai.chat_request({**BASE_BODY, field: "value"}, MODEL, default_max_tokens=1)
        assert upstream[field] == "value", f"{field} must reach Azure, which validates it per api-version"


def test_unknown_field_is_refused_with_its_name() -> None:
    with pytest.raises(BadRequest) as refused:
        azure_openai.chat_request({**BASE_BODY, "frobnicate": True}, MODEL, default_max_tokens=1)
    assert refused.value.param == "frobnicate"


def test_schema_validator_catches_a_misplaced_key() -> None:
    request = azure_openai.chat_request(BASE_BODY, MODEL, default_max_tokens=1)
    request["messages"][0]["tool_plan"] = "x"
    with pytest.raises(AssertionError):
        _assert_valid_azure_request(request)


# --- responses -----------------------------------------------------------------------------------------------------


def test_response_keeps_content_filter_annotations() -> None:
    answer = _load("response_text.azure.json")
    translated = azure_openai.chat_response(answer, MODEL, CREATED)
    assert translated == _load("response_text.openai.json")
    assert translated["prompt_filter_results"][0]["prompt_index"] == 0
    _assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion")
    assert azure_openai.usage_of(answer) == answer["usage"]


def _stream_cases() -> list[tuple[str, bool]]:
    cases = []
    for path in sorted(FIXTURES.glob("stream_*.openai*.sse")):
        case, _, rest = path.name.removeprefix("stream_").partition(".openai")
        cases.append((case, rest == ".usage.sse"))
    return cases


@pytest.mark.parametrize(("case", "include_usage"), _stream_cases())
def test_stream_translates_to_golden_chunks(case: str, include_usage: bool) -> None:
    stream, chunks = _run_stream(f"stream_{case}.azure.sse", include_usage)
    suffix = ".openai.usage.sse" if include_usage else ".openai.sse"
    assert chunks == [json.loads(event.data) for event in _events(f"stream_{case}{suffix}")]
    assert stream.finished
    for chunk in chunks:
        _assert_no_undeclared_keys(ChatCompletionChunk.model_validate(chunk), "chunk")


@pytest.mark.parametrize("include_usage", [False, True])
def test_filter_only_chunk_is_folded_into_the_first_chunk(include_usage: bool) -> None:
    opening = json.loads(_events("stream_text.azure.sse")[0].data)
    assert opening["choices"] == [] and opening["object"] == ""
    _, chunks = _run_stream("stream_text.azure.sse", include_usage)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["prompt_filter_results"] == opening["prompt_filter_results"]
    assert sum("prompt_filter_results" in chunk for chunk in chunks) == 1
    empty = [chunk for chunk in chunks if not chunk["choices"]]
    assert empty == ([chunks[-1]] if include_usage else []), "the only choice-less chunk is the usage chunk"
    if include_usage:
        assert chunks[-1]["usage"]["total_tokens"] == 12


def test_usage_is_recorded_even_when_the_client_did_not_ask() -> None:
    stream, chunks = _run_stream("stream_tool_calls.azure.sse", include_usage=False)
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 9
    assert all("usage" not in chunk for chunk in chunks)


def test_content_filter_finish_reason_passes_through() -> None:
    _, chunks = _run_stream("stream_content_filtered.azure.sse", include_usage=True)
    finishing = [chunk for chunk in chunks if chunk["choices"] and chunk["choices"][0]["finish_reason"]]
    assert finishing[0]["choices"][0]["finish_reason"] == "content_filter"
    assert finishing[0]["choices"][0]["content_filter_results"]["violence"]["filtered"] is True


def test_stream_behaves_like_the_openai_stream_after_the_opening_chunk() -> None:
    events = _events("stream_tool_calls.azure.sse")[1:]
    azure_stream = azure_openai.ChatStream(MODEL, CREATED, True)
    openai_stream = openai.ChatStream(MODEL, CREATED, True)
    for event in events:
        assert azure_stream.feed(event.event, event.data) == openai_stream.feed(event.event, event.data)
    assert azure_stream.finished and openai_stream.finished


def test_mid_stream_error_is_reported() -> None:
    stream = azure_openai.ChatStream(MODEL, CREATED, False)
    chunks = stream.feed(None, b'{"error": {"code": "content_filter", "message": "filtered"}}')
    _assert_error_envelope(chunks[0])
    assert chunks[0]["error"]["code"] == "content_filter"
    assert not stream.finished


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_error_response_keeps_azure_codes(case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = azure_openai.error_response(case["status"], body)
    assert (status, error) == (case["expected_status"], case["expected"])
    _assert_error_envelope(error)
