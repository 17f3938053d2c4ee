"""Babelgate's own request fields across the translators: `provider_options` (per-schema fields merged into that
schema's request only) and the assistant keys only Anthropic-family translators read (`thinking_blocks`,
`reasoning_content`). The golden pairs `request_provider_options.*` show one merge per schema; here are the rules."""

from __future__ import annotations

import copy

import pytest

from ext_proc import providers
from ext_proc.errors import BadRequest
from ext_proc.providers import azure_openai, bedrock_converse, gemini, openai
from ext_proc.providers.common import DROPPED_ASSISTANT_FIELDS, OPTION_NAMESPACES, with_provider_options
from tests.unit.goldens import AZURE_OPENAI, BASE_BODY, BEDROCK_CONVERSE, COHERE, GEMINI, OPENAI, Golden

GOLDENS = [OPENAI, AZURE_OPENAI, BEDROCK_CONVERSE, COHERE, GEMINI]
"""The translators that merge `provider_options`; each reads the namespace named like its golden."""

RESERVED = {"openai": ("max_tokens", 5), "azure-openai": ("model", "other"),
            "bedrock-converse": ("inferenceConfig", {"maxTokens": 10_000}), "cohere": ("stream", True),
            "gemini": ("generationConfig", {"maxOutputTokens": 10_000})}
"""One key per translator that the gateway owns in that schema's body."""


def test_option_namespaces_are_the_backend_schemas() -> None:
    assert set(OPTION_NAMESPACES) == set(providers.SCHEMAS)


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
def test_own_namespace_is_merged_and_the_others_ignored(golden: Golden) -> None:
    others = {name: {"frobnicate": 1} for name in OPTION_NAMESPACES if name != golden.name
              and not (golden.name == "gemini" and name == "vertex-gemini")}
    plain = golden.translate(BASE_BODY)
    assert golden.translate({**BASE_BODY, "provider_options": others}) == plain
    merged = golden.translate({**BASE_BODY, "provider_options": {**others, golden.name: {"x_extra": [1]}}})
    assert merged == {**plain, "x_extra": [1]}


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
def test_own_namespace_merges_objects_and_null_removes(golden: Golden) -> None:
    plain = golden.translate({**BASE_BODY, "temperature": 0.5})
    nested = next(key for key, value in plain.items() if isinstance(value, list))  # messages / contents
    patch = {"outer": {"inner": {"a": 1, "gone": None}}, nested: None}
    merged = golden.translate({**BASE_BODY, "temperature": 0.5, "provider_options": {golden.name: patch}})
    assert merged == {**{key: value for key, value in plain.items() if key != nested},
                      "outer": {"inner": {"a": 1}}}


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
def test_keys_the_gateway_owns_are_refused(golden: Golden) -> None:
    key, value = RESERVED[golden.name]
    with pytest.raises(BadRequest) as refused:
        golden.translate({**BASE_BODY, "provider_options": {golden.name: {key: value}}})
    assert refused.value.param == "provider_options"
    assert "set by the gateway" in refused.value.message


@pytest.mark.parametrize("golden", GOLDENS, ids=str)
@pytest.mark.parametrize(("options", "message"), [
    ([], "must be an object"),
    ({"gemni": {}}, "provider_options.gemni names no backend schema"),
    ({"cohere": "STRICT"}, "provider_options.cohere must be an object"),
])
def test_malformed_provider_options_are_refused(golden: Golden, options: object, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        golden.translate({**BASE_BODY, "provider_options": options})
    assert refused.value.param == "provider_options"
    assert message in refused.value.message


def test_merging_does_not_modify_the_client_body_or_the_request() -> None:
    request = {"generationConfig": {"temperature": 1, "thinkingConfig": {"thinkingBudget": 0}}}
    body = {"provider_options": {"gemini": {"generationConfig": {"topK": 3, "thinkingConfig": None}}}}
    kept_request, kept_body = copy.deepcopy(request), copy.deepcopy(body)
    merged = with_provider_options(request, body, ("gemini",))
    assert merged == {"generationConfig": {"temperature": 1, "topK": 3}}
    assert (request, body) == (kept_request, kept_body)


def test_gemini_reads_both_of_its_schemas_namespaces() -> None:
    body = {**BASE_BODY, "provider_options": {"gemini": {"labels": {"a": "1"}, "cachedContent": "c/1"},
                                              "vertex-gemini": {"labels": {"b": "2"}}}}
    merged = gemini.chat_request(body, "gemini-2.5-flash", default_max_tokens=1)
    assert merged["labels"] == {"a": "1", "b": "2"} and merged["cachedContent"] == "c/1"


def test_openai_streams_keep_asking_for_usage() -> None:
    body = {**BASE_BODY, "stream": True, "provider_options": {"openai": {"stream_options": {"include_usage": False}}}}
    assert openai.chat_request(body, "m", default_max_tokens=1)["stream_options"] == {"include_usage": True}
    assert "provider_options" not in azure_openai.chat_request(body, "m", default_max_tokens=1)


# --- assistant keys only Claude backends read --------------------------------------------------------------------


THINKING = {"reasoning_content": "Greet them.",
            "thinking_blocks": [{"type": "thinking", "thinking": "Greet them.", "signature": "c2lnbmF0dXJl"},
                                {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"}]}


def _history(**assistant_keys: object) -> dict:
    return {**BASE_BODY, "messages": [{"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "Hello!", **assistant_keys},
                                      {"role": "user", "content": "bye"}]}


def test_the_dropped_assistant_keys_are_declared() -> None:
    assert set(DROPPED_ASSISTANT_FIELDS) == set(THINKING)


@pytest.mark.parametrize("golden", [COHERE, GEMINI], ids=str)
def test_thinking_of_past_turns_is_left_out(golden: Golden) -> None:
    assert golden.translate(_history(**THINKING)) == golden.translate(_history())


def test_converse_sends_claudes_signed_thinking_back_and_no_other_models() -> None:
    nova = "us.amazon.nova-2-lite-v1:0"
    translate = bedrock_converse.chat_request
    assert translate(_history(**THINKING), nova, default_max_tokens=1) == translate(_history(), nova,
                                                                                    default_max_tokens=1)
    claude = BEDROCK_CONVERSE.translate(_history(**THINKING))
    assert claude["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "Greet them.", "signature": "c2lnbmF0dXJl"}}},
        {"reasoningContent": {"redactedContent": "ZW5jcnlwdGVk"}},
        {"text": "Hello!"}]
    BEDROCK_CONVERSE.valid_request(claude, False)


def test_converse_refuses_malformed_thinking_blocks() -> None:
    with pytest.raises(BadRequest) as refused:
        BEDROCK_CONVERSE.translate(_history(thinking_blocks=[{"type": "thinking", "thinking": "x"}]))
    assert refused.value.param == "messages[1].thinking_blocks[0]"


@pytest.mark.parametrize("golden", [OPENAI, AZURE_OPENAI], ids=str)
def test_openai_format_backends_get_no_thinking_blocks(golden: Golden) -> None:
    translated = golden.translate(_history(**THINKING))
    assert translated == golden.translate(_history(reasoning_content=THINKING["reasoning_content"]))
    golden.valid_request({**translated, "messages": _history()["messages"]}, False)
