"""OpenAI <-> Azure OpenAI: what only Azure does.

The golden pairs in tests/fixtures/azure/ (requests validated strictly against the `openai` SDK's
`CompletionCreateParams`, answers and streams with Azure's content-filter annotations kept without breaking the
`chat.completion(.chunk)` models, errors keeping Azure's codes) are checked by tests/unit/test_goldens.py. Here:
deployment URLs with the api-version, the API key header, every OpenAI field passed on, and the filter-only opening
chunk that never reaches the client on its own.
"""

from __future__ import annotations

import json

import pytest

from ext_proc.auth.backend_credentials import credential_for
from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import azure_openai, openai
from tests.unit.goldens import AZURE_OPENAI, BASE_BODY, CREATED
from tests.unit.provider_checks import assert_error_envelope, openai_chat_fields

MODEL = AZURE_OPENAI.model
_load, _events = AZURE_OPENAI.fixtures.load, AZURE_OPENAI.fixtures.events


def _backend(**azure: object) -> Backend:
    settings = {"id": "aoai", "schema": "azure-openai", "base_url": "https://res.openai.azure.com"}
    return Backend.model_validate({**settings, "azure": azure} if azure else settings)


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


def test_streamed_request_always_asks_for_usage() -> None:
    upstream = azure_openai.chat_request({**BASE_BODY, "stream": True}, MODEL, default_max_tokens=1)
    assert upstream["stream_options"] == {"include_usage": True}


def test_every_openai_request_field_is_passed_to_azure() -> None:
    sdk_fields = openai_chat_fields()
    assert set(azure_openai.FIELDS) == sdk_fields | {"provider_options"}
    assert set(azure_openai.FIELDS.values()) == {azure_openai.MAPPED}
    for field in sorted(sdk_fields - {"messages", "model", "stream", "stream_options"}):
        upstream = azure_openai.chat_request({**BASE_BODY, field: "value"}, MODEL, default_max_tokens=1)
        assert upstream[field] == "value", f"{field} must reach Azure, which validates it per api-version"


def test_unknown_field_is_refused_with_its_name() -> None:
    with pytest.raises(BadRequest) as refused:
        azure_openai.chat_request({**BASE_BODY, "frobnicate": True}, MODEL, default_max_tokens=1)
    assert refused.value.param == "frobnicate"


# --- responses and streams -----------------------------------------------------------------------------------------


def test_response_keeps_content_filter_annotations() -> None:
    answer = _load("response_text.azure.json")
    translated = azure_openai.chat_response(answer, MODEL, CREATED)
    assert translated["prompt_filter_results"][0]["prompt_index"] == 0
    assert "content_filter_results" in translated["choices"][0]
    assert azure_openai.usage_of(answer) == answer["usage"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_filter_only_chunk_is_folded_into_the_first_chunk(include_usage: bool) -> None:
    opening = json.loads(_events("stream_text.azure.sse")[0].data)
    assert opening["choices"] == [] and opening["object"] == ""
    _, chunks = AZURE_OPENAI.run_stream("text", include_usage)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["prompt_filter_results"] == opening["prompt_filter_results"]
    assert sum("prompt_filter_results" in chunk for chunk in chunks) == 1
    empty = [chunk for chunk in chunks if not chunk["choices"]]
    assert empty == ([chunks[-1]] if include_usage else []), "the only choice-less chunk is the usage chunk"
    if include_usage:
        assert chunks[-1]["usage"]["total_tokens"] == 12


def test_content_filter_finish_reason_passes_through() -> None:
    _, chunks = AZURE_OPENAI.run_stream("content_filtered", include_usage=True)
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
