"""Prompt templates: validation, rendering (values stay literal), resolution by version, label and latest, key and
team allow-lists, and both request forms (chat `model: prompt:<name>`, Responses `prompt`) through the route stage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import yaml
from pydantic import ValidationError

from ext_proc.auth.virtual_keys import KeyInfo, hash_key
from ext_proc.config.loading import ConfigError, parse_config
from ext_proc.config.models import PromptTemplate
from ext_proc.errors import GatewayError
from ext_proc.runtime.build import compile_runtime
from ext_proc.stages import messages
from ext_proc.stages.prompt_templates import expand_chat, expand_responses
from ext_proc.stages.route import RouteStage
from ext_proc.templates.registry import PromptRegistry, build_registry
from ext_proc.templates.render import check_variables, render_messages, responses_text_format
from ext_proc.templates.store import StoredPrompts
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import CLIENT_KEY, CONFIG, LIMITED_KEY, body, drive, headers, immediate, set_headers

FIXTURE = Path(__file__).parent.parent / "fixtures" / "prompts" / "support.yaml"
SUPPORT = yaml.safe_load(FIXTURE.read_text())
KEY = KeyInfo(id="all", team=None, models=None, expires_at=None)
NARROW_KEY = "bg-test-narrow-prompts"
TEAM_KEY = "bg-test-team-prompts"
PROMPTS = f"""
prompts:
  - {orjson.dumps({"name": "support", **SUPPORT}).decode()}
  - {orjson.dumps({"name": "support", **SUPPORT, "messages": [{"role": "system", "content": "v2 {{product}}"}],
                   "variables": None, "labels": ["production"]}).decode()}
  - {{name: bare, messages: [{{role: user, content: "Say {{{{word}}}}"}}]}}
teams:
  - {{id: writers, prompts: ["bare"]}}
"""
KEYS = f"""
  - {{id: narrow, hash: "{hash_key(NARROW_KEY)}", prompts: ["other-*"]}}
  - {{id: writer, hash: "{hash_key(TEAM_KEY)}", team: writers}}
"""


def template(**fields: object) -> PromptTemplate:
    return PromptTemplate.model_validate({"name": "t", "messages": [{"role": "user", "content": "hi"}], **fields})


def registry() -> PromptRegistry:
    return build_registry(parse_config(CONFIG + KEYS + PROMPTS), None)


def refused(call: object, *args: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# -- validation ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "problem"), [
    ({"name": "Upper"}, "lowercase"),
    ({"messages": []}, "at least 1"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "`role` must be one of"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "unknown field 'tool_calls'"),
    ({"messages": [{"role": "user", "content": "{{a}} {{b}}"}], "variables": ["a"]}, "{{b}} is not among"),
    ({"max_tokens": 5, "max_completion_tokens": 5}, "not both"),
    ({"response_format": {"type": "xml"}}, "`type` must be one of"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "json_schema.name"),
    ({"labels": ["latest"]}, "implicit"),
    ({"messages": [{"role": "user", "content": "x" * (65 * 1024)}]}, "64 KiB"),
], ids=["name", "no-messages", "role", "image-part", "extra-field", "undeclared", "two-limits", "format",
        "schema-name", "latest-label", "too-large"])
def test_a_template_that_is_not_one_is_refused_with_the_reason(fields: dict, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        template(**fields)
    assert problem in str(caught.value)


def test_config_versions_are_numbered_per_name_and_a_repeat_is_named_at_its_path() -> None:
    config = parse_config(CONFIG + PROMPTS)
    assert [(t.name, t.version) for t in config.prompts] == [("support", 1), ("support", 2), ("bare", 1)]
    repeated = CONFIG + "prompts:\n  - {name: a, version: 2, messages: [{role: user, content: x}]}\n" \
                        "  - {name: a, version: 2, messages: [{role: user, content: y}]}\n"
    with pytest.raises(ConfigError, match=r"prompts\[1\]\.version.*duplicate version 2"):
        parse_config(repeated)


# -- rendering ------------------------------------------------------------------------------------------------------

def test_placeholders_are_filled_with_whitespace_inside_the_braces_allowed() -> None:
    filled = render_messages(template(messages=[{"role": "user", "content": "A {{ x }} B {{y}} C {{x}}"}]),
                             {"x": "1", "y": "2"})
    assert filled == [{"role": "user", "content": "A 1 B 2 C 1"}]


def test_a_value_holding_a_placeholder_stays_literal() -> None:
    """Injection: a value is never scanned again, so it can't pull in another variable's value."""
    used = template(messages=[{"role": "system", "content": "secret={{secret}}"},
                              {"role": "user", "content": "{{question}}"}])
    filled = render_messages(used, {"secret": "s3cr3t", "question": "print {{secret}} and {{ question }}"})
    assert filled[1]["content"] == "print {{secret}} and {{ question }}"


def test_missing_and_unknown_variables_are_400s_naming_them() -> None:
    used = template(messages=[{"role": "user", "content": "{{a}}"}])
    missing = refused(check_variables, used, {}, "prompt_variables")
    assert (missing.status, missing.code, missing.param) == (400, "missing_prompt_variable", "prompt_variables")
    assert "'a'" in missing.message
    unknown = refused(check_variables, used, {"a": "1", "b": "2"}, "prompt.variables")
    assert (unknown.code, unknown.param) == ("unknown_prompt_variable", "prompt.variables.b")


def test_a_chat_response_format_becomes_the_responses_text_format() -> None:
    assert responses_text_format(SUPPORT["response_format"]) == {
        "type": "json_schema", "name": "answer", "strict": True, "schema": SUPPORT["response_format"]["json_schema"]
        ["schema"]}
    assert responses_text_format({"type": "json_object"}) == {"type": "json_object"}


# -- resolution and allow-lists ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "version"), [(None, 2), ("1", 1), ("2", 2), ("production", 2), ("latest", 2)])
def test_a_reference_resolves_a_version_a_label_or_production_else_latest(ref: str | None, version: int) -> None:
    assert registry().resolve("all", None, "support", ref, "model").version == version


def test_without_a_production_label_a_bare_name_is_the_latest_version() -> None:
    stored = StoredPrompts([template(name="s", version=1), template(name="s", version=2)], {"s": {"staging": 1}})
    found = build_registry(parse_config(CONFIG), stored)
    assert found.resolve("all", None, "s", None, "model").version == 2
    assert found.resolve("all", None, "s", "staging", "model").version == 1


@pytest.mark.parametrize(("name", "ref", "status", "code"), [
    ("nope", None, 404, "prompt_not_found"), ("support", "9", 400, "prompt_version_not_found"),
    ("support", "staging", 400, "prompt_version_not_found"), ("Bad Name", None, 400, "invalid_prompt")])
def test_an_unknown_template_version_or_label_is_refused(name: str, ref: str | None, status: int, code: str) -> None:
    error = refused(registry().resolve, "all", None, name, ref, "model")
    assert (error.status, error.code, error.param) == (status, code, "model")


def test_a_stored_template_never_shadows_the_configs() -> None:
    stored = StoredPrompts([template(name="support", version=1, messages=[{"role": "user", "content": "stored"}])])
    found = build_registry(parse_config(CONFIG + PROMPTS), stored)
    assert found.entries["support"].from_config and found.lookup("support", "1").messages[0]["role"] == "system"


def test_key_and_team_allow_lists_refuse_other_templates_with_403() -> None:
    found = registry()
    error = refused(found.resolve, "narrow", None, "support", None, "model")
    assert (error.status, error.code) == (403, "prompt_not_allowed")
    assert refused(found.resolve, "narrow", None, "nope", None, "model").status == 403  # nothing learned
    assert found.resolve("writer", "writers", "bare", None, "model").name == "bare"
    assert refused(found.resolve, "writer", "writers", "support", None, "model").status == 403


# -- the two request forms --------------------------------------------------------------------------------------------

CHAT = {"model": "prompt:support@1", "prompt_variables": {"product": "Babelgate", "question": "Why?"},
        "messages": [{"role": "user", "content": "and more"}], "temperature": 0.9}


def test_chat_form_becomes_the_templates_request_with_the_requests_messages_after() -> None:
    use = expand_chat(registry(), KEY, CHAT)
    assert use is not None and (use.name, use.version) == ("support", 1)
    assert use.body == {
        "model": "gpt-4o", "temperature": 0.9, "max_tokens": 300, "response_format": SUPPORT["response_format"],
        "messages": [{"role": "system", "content": "You support users of Babelgate. Answer in two sentences."},
                     {"role": "user", "content": [{"type": "text", "text": "Question: Why?"}]},
                     {"role": "user", "content": "and more"}]}


def test_chat_form_request_settings_win_and_a_template_without_a_model_is_a_400() -> None:
    use = expand_chat(registry(), KEY, {**CHAT, "max_completion_tokens": 7, "response_format": {"type": "text"}})
    assert use is not None and "max_tokens" not in use.body and use.body["response_format"] == {"type": "text"}
    error = refused(expand_chat, registry(), KEY, {"model": "prompt:bare", "prompt_variables": {"word": "x"}})
    assert (error.status, error.code) == (400, "prompt_has_no_model")


@pytest.mark.parametrize(("variables", "param"), [
    ({"product": 3, "question": "q"}, "prompt_variables.product"), ("text", "prompt_variables"),
    ({"product": {"type": "input_text", "text": "x"}, "question": "q"}, "prompt_variables.product")])
def test_chat_variables_are_strings(variables: object, param: str) -> None:
    error = refused(expand_chat, registry(), KEY, {**CHAT, "prompt_variables": variables})
    assert (error.status, error.param) == (400, param)


def test_prompt_variables_without_a_template_is_a_400_and_other_requests_pass_untouched() -> None:
    error = refused(expand_chat, registry(), KEY, {"model": "gpt-4o", "prompt_variables": {}})
    assert error.code == "unexpected_prompt_variables"
    assert expand_chat(registry(), KEY, {"model": "gpt-4o", "messages": []}) is None


def test_responses_form_puts_the_template_first_in_input() -> None:
    request = {"prompt": {"id": "support", "version": "1", "variables": {
        "product": {"type": "input_text", "text": "Babelgate"}, "question": "Why?"}}, "input": "hello"}
    use = expand_responses(registry(), KEY, request)
    assert use is not None and use.version == 1
    assert use.body == {
        "model": "gpt-4o", "temperature": 0.2, "max_output_tokens": 300,
        "text": {"format": responses_text_format(SUPPORT["response_format"])},
        "input": [{"type": "message", "role": "system",
                   "content": "You support users of Babelgate. Answer in two sentences."},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Question: Why?"}]},
                  {"type": "message", "role": "user", "content": "hello"}]}


def test_responses_form_takes_the_requests_model_and_refuses_non_text_variables() -> None:
    use = expand_responses(registry(), KEY, {"model": "claude", "prompt": {"id": "bare", "version": 1,
                                                                           "variables": {"word": "x"}}})
    assert use is not None and use.body["model"] == "claude" and use.body["input"][0]["content"] == "Say x"
    image = {"type": "input_image", "image_url": "https://x/y.png"}
    error = refused(expand_responses, registry(), KEY, {"prompt": {"id": "bare", "variables": {"word": image}}})
    assert (error.status, error.code, error.param) == (400, "unsupported_prompt_variable", "prompt.variables.word")
    error = refused(expand_responses, registry(), KEY, {"prompt": {"id": "bare", "variables": {"word": "x"}}})
    assert (error.code, error.param) == ("missing_model", "model")
    error = refused(expand_responses, registry(), KEY, {"prompt": {"id": "support", "version": "beta"}})
    assert (error.code, error.param) == ("prompt_version_not_found", "prompt.version")


# -- through the route stage ----------------------------------------------------------------------------------------

def _stage(monkeypatch: pytest.MonkeyPatch) -> RouteStage:
    monkeypatch.setenv("BG_UNIT_OPENAI", "sk-unit-openai")
    monkeypatch.setenv("BG_UNIT_ANTHROPIC", "sk-unit-anthropic")
    return RouteStage(compile_runtime(parse_config(CONFIG + KEYS + PROMPTS)))


def _chat_headers(key: str = CLIENT_KEY) -> dict[str, str]:
    return {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {key}",
            "content-type": "application/json"}


def test_a_chain_route_sends_the_expanded_request_on(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _stage(monkeypatch)
    drive(stage, ProcessingRequest(request_headers=headers(_chat_headers())))
    reply = drive(stage, ProcessingRequest(request_body=body(CHAT)))
    assert reply is not None
    sent = reply.request_body.response
    expanded = orjson.loads(sent.body_mutation.body)
    assert expanded["model"] == "gpt-4o" and expanded["messages"][0]["content"].startswith("You support users of B")
    assert "prompt_variables" not in expanded
    assert set_headers(sent)["content-length"] == str(len(sent.body_mutation.body))


def _refusal(monkeypatch: pytest.MonkeyPatch, key: str, payload: dict) -> tuple[int, dict]:
    stage = _stage(monkeypatch)
    stage.on_request_headers(headers(_chat_headers(key)))
    try:
        asyncio.run(stage.on_request_body(body(payload)))
    except GatewayError as error:
        status, answer, _ = immediate(messages.error_reply(error))
        return status, answer["error"]
    pytest.fail("expected a refusal")


def test_a_key_whose_allow_list_excludes_the_template_gets_403(monkeypatch: pytest.MonkeyPatch) -> None:
    status, error = _refusal(monkeypatch, NARROW_KEY, CHAT)
    assert (status, error["code"], error["type"]) == (403, "prompt_not_allowed", "permission_error")


def test_the_templates_model_must_be_one_the_key_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    status, error = _refusal(monkeypatch, LIMITED_KEY, CHAT)  # `limited` may use `claude` only
    assert (status, error["code"]) == (403, "model_not_allowed")


def test_a_missing_variable_through_the_stage_is_an_openai_style_400(monkeypatch: pytest.MonkeyPatch) -> None:
    status, error = _refusal(monkeypatch, CLIENT_KEY, {**CHAT, "prompt_variables": {"product": "x"}})
    assert (status, error["code"], error["param"]) == (400, "missing_prompt_variable", "prompt_variables")
    assert set(error) == {"message", "type", "param", "code"}


def test_a_config_template_must_name_a_model_a_route_serves() -> None:
    base = {"backends": [{"id": "a", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "routes": [{"model": "m", "aliases": ["alias"], "backends": [{"backend": "a", "model": "x"}]},
                       {"model": "open/*", "backends": [{"backend": "a", "model": "*"}]}]}

    def template(model: str) -> dict:
        return {**base, "prompts": [{"name": "t", "model": model, "messages": [{"role": "user", "content": "hi"}]}]}
    for served in ("m", "alias", "open/llama"):
        assert parse_config(yaml.safe_dump(template(served))).prompts[0].model == served
    with pytest.raises(ConfigError, match="template 't' names unknown model 'nope'"):
        parse_config(yaml.safe_dump(template("nope")))
