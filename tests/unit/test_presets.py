"""OpenAI-compatible presets: per provider, every OpenAI chat field is passed, dropped, renamed or refused on purpose.

`adapt_request` runs on the body the OpenAI passthrough built, so the inputs here already carry the backend model
and, for streams, `stream_options.include_usage`.
"""

from __future__ import annotations

import pytest

from ext_proc.config.models import PRESETS as CONFIG_PRESETS
from ext_proc.errors import BadRequest
from ext_proc.providers import openai, presets
from tests.unit.provider_checks import openai_chat_fields

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
NAMES = sorted(presets.PRESETS)

SAMPLES: dict[str, object] = {
    "audio": {"voice": "alloy", "format": "wav"}, "frequency_penalty": 0.5, "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}], "logit_bias": {"50256": -100}, "logprobs": True,
    "max_completion_tokens": 128, "max_tokens": 64, "metadata": {"k": "v"}, "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"}, "n": 2, "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "x"}, "presence_penalty": 0.5, "prompt_cache_key": "k",
    "prompt_cache_options": {"mode": "explicit"}, "prompt_cache_retention": "24h", "reasoning_effort": "low",
    "response_format": {"type": "json_object"}, "safety_identifier": "h", "seed": 7, "service_tier": "flex",
    "stop": ["END"], "store": True, "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.5,
    "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}], "top_logprobs": 2,
    "top_p": 0.9, "user": "u", "verbosity": "low", "web_search_options": {},
}
"""A value for every field that is not OpenAI's default, so a refused field is refused."""


def _cases(rule: str) -> list[tuple[str, str]]:
    return [(name, field) for name in NAMES for field, found in presets.rules(name).items() if found == rule]


def test_presets_are_the_configurable_ones() -> None:
    assert set(presets.PRESETS) == set(CONFIG_PRESETS)


def test_the_field_list_is_the_openai_sdks() -> None:
    assert set(presets.OPENAI_CHAT_FIELDS) == openai_chat_fields()
    assert set(SAMPLES) == openai_chat_fields() - {"messages", "model"}


@pytest.mark.parametrize("name", NAMES)
def test_every_field_has_a_rule_for_every_preset(name: str) -> None:
    table = presets.rules(name)
    assert set(table) == openai_chat_fields()
    assert set(table.values()) <= {presets.PASSED, presets.DROPPED, presets.RENAMED, presets.REFUSED}
    assert table["messages"] == table["model"] == table["stream"] == presets.PASSED
    spec = presets.PRESETS[name]
    for field in (*spec.dropped, *spec.refused, *spec.renamed, *spec.passed):
        assert field in table, f"{name} names {field!r}, which is not an OpenAI chat field"
    for field, rule in table.items():
        if rule in (presets.DROPPED, presets.REFUSED):
            assert spec.reason(field), f"{name}: {field} is {rule} without a reason"


@pytest.mark.parametrize(("name", "field"), _cases(presets.REFUSED))
def test_refused_field_is_named_in_the_bad_request(name: str, field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        presets.adapt_request(name, {**BASE, field: SAMPLES[field]}, "m")
    assert refused.value.param == field
    assert field in refused.value.message and name in refused.value.message


@pytest.mark.parametrize(("name", "field"), _cases(presets.DROPPED))
def test_dropped_field_is_left_out(name: str, field: str) -> None:
    assert presets.adapt_request(name, {**BASE, field: SAMPLES[field]}, "m") == presets.adapt_request(name, BASE, "m")


@pytest.mark.parametrize(("name", "field"), _cases(presets.RENAMED))
def test_renamed_field_moves_to_the_provider_name(name: str, field: str) -> None:
    adapted = presets.adapt_request(name, {**BASE, field: SAMPLES[field]}, "m")
    target = presets.PRESETS[name].renamed[field]
    assert field not in adapted and adapted[target] == SAMPLES[field]


@pytest.mark.parametrize(("name", "field"), _cases(presets.PASSED))
def test_passed_field_reaches_the_provider(name: str, field: str) -> None:
    if field in ("messages", "model"):
        return
    body = {**BASE, field: SAMPLES[field]}
    adapted = presets.adapt_request(name, body, "deepseek-chat" if name == "deepseek" else "m")
    if name == "openrouter" and field == "reasoning_effort":
        assert adapted["reasoning"] == {"effort": "low"}
    else:
        assert adapted[field] == SAMPLES[field]


@pytest.mark.parametrize("name", NAMES)
def test_openai_defaults_of_refused_fields_are_dropped_not_refused(name: str) -> None:
    defaults = {"n": 1, "logprobs": False, "logit_bias": {}, "modalities": ["text"], "verbosity": "medium",
                "parallel_tool_calls": True, "tool_choice": "auto", "top_logprobs": 0}
    adapted = presets.adapt_request(name, {**BASE, **defaults}, "deepseek-chat")
    for field, value in defaults.items():
        if presets.rules(name)[field] == presets.REFUSED:
            assert field not in adapted
        elif presets.rules(name)[field] == presets.PASSED and not (name == "deepseek" and field == "top_logprobs"):
            assert adapted[field] == value


@pytest.mark.parametrize("name", NAMES)
def test_adapting_does_not_modify_the_input(name: str) -> None:
    body = {**BASE, "max_completion_tokens": 5, "user": "u", "store": True,
            "messages": [{"role": "user", "name": "ana", "content": "hi"}]}
    snapshot = {**body, "messages": [dict(body["messages"][0])]}
    presets.adapt_request(name, body, "m")
    assert body == snapshot


def test_adapts_the_openai_passthrough_output() -> None:
    upstream = openai.chat_request({**BASE, "stream": True, "max_completion_tokens": 9, "seed": 3}, "mistral-large",
                                   default_max_tokens=1)
    assert presets.adapt_request("mistral", upstream, "mistral-large") == {
        "model": "mistral-large", "messages": BASE["messages"], "stream": True, "max_tokens": 9, "random_seed": 3}


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    adapted = presets.adapt_request("ollama", {**BASE, "max_tokens": 10, "max_completion_tokens": 20}, "m")
    assert adapted["max_tokens"] == 20 and "max_completion_tokens" not in adapted


def test_groq_leaves_out_message_names() -> None:
    adapted = presets.adapt_request("groq", {**BASE, "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "name": "ana", "content": "hi"}]}, "llama-3.3-70b")
    assert adapted["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
def test_deepseek_refuses_sampling_settings_the_thinking_model_ignores(field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        presets.adapt_request("deepseek", {**BASE, field: 0.3}, "deepseek-reasoner")
    assert refused.value.param == field
    defaults = {"temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}
    assert presets.adapt_request("deepseek", {**BASE, field: defaults[field]}, "deepseek-reasoner")[field] == \
        defaults[field]
    assert presets.adapt_request("deepseek", {**BASE, field: 0.3}, "deepseek-chat")[field] == 0.3
    off = presets.adapt_request("deepseek", {**BASE, field: 0.3, "reasoning_effort": "none"}, "deepseek-v4-pro")
    assert off[field] == 0.3 and off["thinking"] == {"type": "disabled"} and "reasoning_effort" not in off


def test_deepseek_thinking_refuses_logprobs_and_json_schema() -> None:
    with pytest.raises(BadRequest) as refused:
        presets.adapt_request("deepseek", {**BASE, "logprobs": True}, "deepseek-reasoner")
    assert refused.value.param == "logprobs"
    assert presets.adapt_request("deepseek", {**BASE, "logprobs": True, "top_logprobs": 2}, "deepseek-chat")[
        "top_logprobs"] == 2
    with pytest.raises(BadRequest) as refused:
        presets.adapt_request("deepseek", {**BASE, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}}}, "deepseek-chat")
    assert refused.value.param == "response_format"


def test_deepseek_keeps_reasoning_content_of_earlier_turns() -> None:
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": None, "reasoning_content": "think",
                 "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}]
    assert presets.adapt_request("deepseek", {**BASE, "messages": messages}, "deepseek-v4-pro")["messages"] == messages


def test_openrouter_requires_providers_that_honour_every_parameter() -> None:
    adapted = presets.adapt_request("openrouter", {**BASE, "logit_bias": {"1": 5}, "reasoning_effort": "high"}, "m")
    assert adapted["provider"] == {"require_parameters": True}
    assert adapted["reasoning"] == {"effort": "high"} and "reasoning_effort" not in adapted
    own = presets.adapt_request("openrouter", {**BASE, "provider": {"order": ["groq"]}}, "m")
    assert own["provider"] == {"order": ["groq"]}


def test_ollama_takes_data_url_images_only() -> None:
    def image(url: str) -> dict:
        return {**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"},
                                                                 {"type": "image_url", "image_url": {"url": url}}]}]}

    assert presets.adapt_request("ollama", image("data:image/png;base64,AAAA"), "llava") == image(
        "data:image/png;base64,AAAA")
    with pytest.raises(BadRequest) as refused:
        presets.adapt_request("ollama", image("https://example.com/cat.png"), "llava")
    assert refused.value.param == "messages[0].content[1]"


def test_mistral_keeps_required_tool_choice() -> None:
    """Mistral's tool_choice enum has auto, none, any and required: no renaming needed."""
    adapted = presets.adapt_request("mistral", {**BASE, "tools": SAMPLES["tools"], "tool_choice": "required"}, "m")
    assert adapted["tool_choice"] == "required"
