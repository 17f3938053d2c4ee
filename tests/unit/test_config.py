"""Configuration: validation with errors that name the YAML path, secrets from env/files, compiled tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from ext_proc.auth.credentials import CredentialError
from ext_proc.config.loading import ConfigError, load_config, parse_config
from ext_proc.runtime.build import compile_runtime

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"

MINIMAL = """
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - model: m
    backends: [{backend: oa, model: x}]
"""


def test_valid_config_loads_with_durations_and_relative_secret_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_OPENAI_KEY", "sk-env-secret")
    config = load_config(FIXTURES / "valid.yaml")
    assert [b.timeout for b in config.backends] == [30.0, 120.0]
    assert config.backends[1].api_key.file == FIXTURES / "secrets" / "anthropic.key"
    runtime = compile_runtime(config)
    assert runtime.backends["oa"].credential.headers("POST", "", b"") == [("authorization", "Bearer sk-env-secret")]
    assert ("x-api-key", "sk-ant-file-secret") in runtime.backends["an"].credential.headers("POST", "", b"")
    assert runtime.routes["gpt4"] is runtime.routes["gpt-4o"]
    assert runtime.routes["gpt-4o"].backends == ("oa", "an")
    assert runtime.routes["gpt-4o"].backend_models == {"oa": "gpt-4o-2024-08-06", "an": "claude-sonnet-4-5"}


def test_invalid_value_is_reported_with_its_yaml_path_and_line() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(FIXTURES / "bad_url.yaml")
    message = str(raised.value)
    assert "backends[1].base_url (line 7)" in message
    assert "http:// or https://" in message


@pytest.mark.parametrize(("snippet", "expected"), [
    ("routes:\n  - model: m\n    backends: [{backend: nope, model: x}]\n", "unknown backend 'nope'"),
    ("routes:\n  - {model: m, backends: [{backend: oa, model: x}]}\n"
     "  - {model: m, backends: [{backend: oa, model: y}]}\n", "duplicate model name or alias 'm'"),
    ("routes:\n  - {model: m, backends: []}\n", "routes[0].backends"),
    ("routes:\n  - {model: m, backends: [{backend: oa, model: x}], colour: red}\n", "routes[0].colour"),
])
def test_inconsistent_configs_are_refused(snippet: str, expected: str) -> None:
    text = 'backends:\n  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}\n' + snippet
    with pytest.raises(ConfigError, match="invalid configuration") as raised:
        parse_config(text)
    assert expected in str(raised.value)


def test_unknown_schema_and_bad_duration_name_their_fields() -> None:
    text = MINIMAL.replace("schema: openai", "schema: cobol").replace('v1"}', 'v1", timeout: soon}')
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert "backends[0].schema" in str(raised.value)
    assert "backends[0].timeout" in str(raised.value)


def test_key_allowing_an_unknown_model_is_refused() -> None:
    text = MINIMAL + "virtual_keys:\n  - {id: k, hash: 'sha256:" + "0" * 64 + "', models: [other]}\n"
    with pytest.raises(ConfigError, match="allows unknown model 'other'"):
        parse_config(text)


def test_missing_secret_names_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BG_TEST_OPENAI_KEY", raising=False)
    config = load_config(FIXTURES / "valid.yaml")
    with pytest.raises(CredentialError, match=r"valid.yaml: backends\[0\].api_key \(line 6\): environment variable "
                                              "BG_TEST_OPENAI_KEY is not set"):
        compile_runtime(config)


def test_not_yaml_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("backends: [unclosed")


def test_keys_file_entries_join_the_inline_keys(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("- {id: bob, hash: 'sha256:" + "1" * 64 + "'}\n")
    (tmp_path / "config.yaml").write_text(MINIMAL + "keys_file: keys.yaml\nvirtual_keys:\n"
                                          "  - {id: alice, hash: 'sha256:" + "2" * 64 + "'}\n")
    config = load_config(tmp_path / "config.yaml")
    assert [k.id for k in config.virtual_keys] == ["alice", "bob"]


def test_invalid_keys_file_entry_names_file_and_path(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text("- {id: bob, hash: 'md5:abc'}\n")
    (tmp_path / "config.yaml").write_text(MINIMAL + "keys_file: keys.yaml\n")
    with pytest.raises(ConfigError, match=r"keys.yaml.*\n  \[0\].hash"):
        load_config(tmp_path / "config.yaml")


def test_drop_fields_remove_what_a_backend_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "sk")
    config = parse_config(
        "backends: [{id: an, schema: anthropic, api_key: {env: K}, drop_fields: [temperature, top_p]}]\n"
        "routes: [{model: m, backends: [{backend: an, model: claude-opus-5}]}]\n")
    backend = compile_runtime(config).backends["an"]
    sent = backend.chat_request({"model": "m", "temperature": 0.2, "top_p": 0.9, "max_tokens": 5,
                                 "messages": [{"role": "user", "content": "x"}]}, "claude-opus-5", 100)
    assert "temperature" not in sent and "top_p" not in sent and sent["max_tokens"] == 5
    assert backend.settings.base_url == "https://api.anthropic.com"  # the schema's default


def test_routes_are_lenient_unless_they_opt_into_strict_field_refusal() -> None:
    runtime = compile_runtime(parse_config(MINIMAL), load_secrets=False)
    assert runtime.routes["m"].strict is False
    strict = MINIMAL.replace("  - model: m\n", "  - model: m\n    fields: strict\n")
    assert compile_runtime(parse_config(strict), load_secrets=False).routes["m"].strict is True
    with pytest.raises(ConfigError, match=r"routes\[0\]\.fields"):
        parse_config(MINIMAL.replace("  - model: m\n", "  - model: m\n    fields: sometimes\n"))


def test_a_reasoning_style_is_compiled_onto_its_backend_model() -> None:
    config = MINIMAL.replace("{backend: oa, model: x}", "{backend: oa, model: x, reasoning: {style: adaptive}}")
    backend = compile_runtime(parse_config(config), load_secrets=False).backends["oa"]
    assert (backend.reasoning, backend.reasoning_style("x"), backend.reasoning_style("y")) == ({"x": "adaptive"},
                                                                                              "adaptive", None)
    with pytest.raises(ConfigError, match=r"reasoning\.style"):
        parse_config(config.replace("adaptive", "deep"))
