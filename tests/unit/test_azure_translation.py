"""OpenAI <-> Azure OpenAI, checked against fixture pairs in tests/fixtures/azure/.

Azure speaks OpenAI's format, so the checks are: deployment URLs with the api-version, every request validates
against the `openai` SDK's `CompletionCreateParams` (strictly: unknown keys refused), Azure's content-filter
annotations are kept without breaking the `chat.completion(.chunk)` models, the filter-only opening chunk never
reaches the client on its own, and Azure errors keep their codes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pydantic
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params

from ext_proc.auth.backend_credentials import credential_for
from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import azure_openai, openai
from tests.unit.provider_checks import (
    FixtureFolder,
    assert_error_envelope,
    assert_no_undeclared_keys,
    feed_stream,
    openai_chat_fields,
    typed_dict_problems,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "azure"
MODEL = "gpt-4o-2024-08-06"
CREATED = 1700000000
BASE_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
AZURE_EXTENSIONS = {"prompt_filter_results", "content_filter_results"}
"""Azure's keys on answers and chunks that the openai SDK models don't declare (clients ignore them)."""


_fixtures = FixtureFolder(FIXTURES)
_load, _events = _fixtures.load, _fixtures.events


def _run_stream(name: str, include_usage: bool) -> tuple[azure_openai.ChatStream, list[dict]]:
    stream = azure_openai.ChatStream(MODEL, CREATED, include_usage)
    return stream, feed_stream(stream, _events(name))


def _backend(**azure: object) -> Backend:
    settings = {"id": "aoai", "schema": "azure-openai", "base_url": "https://res.openai.azure.com"}
    return Backend.model_validate({**settings, "azure": azure} if azure else settings)


def _assert_valid_azure_request(request: dict) -> None:
    request = {key: value for key, value in request.items() if key not in azure_openai.EXTENSIONS}
    params = (completion_create_params.CompletionCreateParamsStreaming if request.get("stream")
              else completion_create_params.CompletionCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(request)
    assert typed_dict_problems(request, params, "request") == []


_assert_no_undeclared_keys = functools.partial(assert_no_undeclared_keys, extensions=AZURE_EXTENSIONS)
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
    credential = credential_for(_backend(), "azure-key-1")
    assert credential.headers("POST", "https://res.openai.azure.com/x", b"{}") == [("api-key", "azure-key-1")]
    assert credential_for(_backend(), None).headers("POST", "https://x", b"") == []
    assert azure_openai.AzureOpenAITranslator.serves_embeddings


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
    sdk_fields = openai_chat_fields()
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
    assert_error_envelope(chunks[0])
    assert chunks[0]["error"]["code"] == "content_filter"
    assert not stream.finished


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_error_response_keeps_azure_codes(case: dict) -> None:
    body = case["raw_body"].encode() if "raw_body" in case else json.dumps(case["body"]).encode()
    status, error = azure_openai.error_response(case["status"], body)
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)
