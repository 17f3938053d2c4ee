"""What a new user reads when the config is wrong (issue 16): each problem at its own YAML path and line, every
missing environment variable at once, and an inline secret refused without repeating it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ext_proc.auth.credentials import CredentialError
from ext_proc.config.loading import ConfigError, load_config, parse_config
from ext_proc.runtime.build import compile_runtime

HASH_A = "sha256:" + "a" * 64
HASH_B = "sha256:" + "b" * 64
BACKEND = '{id: a, schema: openai, base_url: "http://127.0.0.1:9/v1"}'
ROUTE = "{model: m, aliases: [m2], backends: [{backend: a, model: x}]}"


@pytest.mark.parametrize(("text", "expected"), [
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\n  - model: n\n    backends:\n      - {{backend: x, model: y}}\n",
     "routes[1].backends[0].backend (line 7): unknown backend 'x'"),
    (f"backends:\n  - {BACKEND}\n  - {BACKEND.replace('id: a', 'id: b')}\n  - {BACKEND}\nroutes:\n  - {ROUTE}\n",
     "backends[2].id (line 4): duplicate backend id 'a'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\n  - model: n\n    aliases: [o, m2]\n"
     "    backends: [{backend: a, model: y}]\n",
     "routes[1].aliases[1] (line 6): duplicate model name or alias 'm2'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nvirtual_keys:\n  - {{id: k, hash: '{HASH_A}'}}\n"
     f"  - {{id: k, hash: '{HASH_B}'}}\n",
     "virtual_keys[1].id (line 7): duplicate virtual key id 'k'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nvirtual_keys:\n  - {{id: k, hash: '{HASH_A}'}}\n"
     f"  - {{id: l, hash: '{HASH_A}'}}\n",
     f"virtual_keys[1].hash (line 7): duplicate virtual key hash '{HASH_A}'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nteams:\n  - {{id: t}}\n  - {{id: t}}\n",
     "teams[1].id (line 7): duplicate team id 't'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nprices:\n  - {{backend: z, model: x, input: 1, output: 2}}\n",
     "prices[0].backend (line 6): unknown backend 'z'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nprices:\n  - {{backend: a, model: x, input: 1, output: 2}}\n"
     "  - {backend: a, model: x, input: 3, output: 4}\n",
     "prices[1] (line 7): duplicate price entry 'a/x'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nvirtual_keys:\n  - id: k\n    hash: '{HASH_A}'\n"
     "    models: [m, nope]\n",
     "virtual_keys[0].models[1] (line 8): key 'k' allows unknown model 'nope'"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nkeys_file: keys.yaml\nadmin:\n  credentials:\n"
     "    - {name: ops, secret: {env: X}}\n    - {name: ops, secret: {env: Y}}\n",
     "admin.credentials[1].name (line 9): duplicate admin credential name 'ops'"),
], ids=["unknown-backend", "duplicate-backend-id", "duplicate-alias", "duplicate-key-id", "duplicate-key-hash",
        "duplicate-team-id", "price-of-unknown-backend", "duplicate-price", "key-allows-unknown-model",
        "duplicate-admin-credential-name"])
def test_config_wide_problems_are_reported_at_their_own_path_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, source="babelgate.yaml")
    message = str(raised.value)
    assert message.startswith("babelgate.yaml: invalid configuration")
    assert expected in message
    assert "(top level)" not in message


def test_every_config_wide_problem_is_reported_at_once() -> None:
    text = (f"backends:\n  - {BACKEND}\n  - {BACKEND}\nroutes:\n  - model: m\n"
            "    backends: [{backend: x, model: y}]\n")
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert str(raised.value).splitlines()[1:] == [
        "  backends[1].id (line 3): duplicate backend id 'a'",
        "  routes[0].backends[0].backend (line 6): unknown backend 'x'",
    ]


def test_a_problem_with_a_key_from_the_keys_file_is_reported_in_that_file(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(f"- {{id: ok, hash: '{HASH_B}', models: [m]}}\n"
                                        f"- id: stale\n  hash: '{HASH_A}'\n  models: [gone]\n")
    config = tmp_path / "babelgate.yaml"
    config.write_text(f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nkeys_file: keys.yaml\n")
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert f"{tmp_path / 'keys.yaml'}: [1].models[0] (line 4): key 'stale' allows unknown model 'gone'" in \
        str(raised.value)


def test_a_key_may_allow_a_route_by_its_alias_and_holds_the_routes_model_name() -> None:
    text = (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\n"
            f"virtual_keys:\n  - {{id: k, hash: '{HASH_A}', models: [m2, m]}}\n")
    config = parse_config(text)
    assert config.virtual_keys[0].models == ["m"]
    assert compile_runtime(config, load_secrets=False).keys[HASH_A].models == frozenset({"m"})


@pytest.mark.parametrize(("secret", "where"), [
    (f"backends:\n  - id: a\n    schema: openai\n    base_url: http://127.0.0.1:9/v1\n    api_key: sk-live-123\n"
     f"routes:\n  - {ROUTE}\n", "backends[0].api_key (line 5)"),
    (f"backends:\n  - {BACKEND}\nroutes:\n  - {ROUTE}\nlimits:\n  redis:\n    url: redis://127.0.0.1:6379\n"
     "    password: 'sk-live-123'\n", "limits.redis.password (line 8)"),
], ids=["backend-api-key", "redis-password"])
def test_an_inline_secret_says_what_to_write_instead_and_never_repeats_it(secret: str, where: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(secret)
    message = str(raised.value)
    assert (f"{where}: a secret is never written in the config: use {{env: NAME}}, {{file: PATH}} or "
            "{command: [...]}") in message
    assert "sk-live-123" not in message and "valid dictionary" not in message


def test_every_missing_environment_variable_is_reported_at_once_with_file_and_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BG_MSG_OPENAI", "BG_MSG_ANTHROPIC", "BG_MSG_ADMIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BG_MSG_SET", "sk-set")
    path = tmp_path / "babelgate.yaml"
    path.write_text(
        "backends:\n"
        "  - {id: oa, schema: openai, base_url: 'http://127.0.0.1:9/v1', api_key: {env: BG_MSG_OPENAI}}\n"
        "  - {id: ob, schema: openai, base_url: 'http://127.0.0.1:9/v1', api_key: {env: BG_MSG_SET}}\n"
        "  - id: an\n"
        "    schema: anthropic\n"
        "    api_key: {env: BG_MSG_ANTHROPIC}\n"
        "routes:\n"
        "  - {model: m, backends: [{backend: oa, model: x}]}\n"
        "keys_file: keys.yaml\n"
        "admin:\n"
        "  credentials: [{name: ops, secret: {env: BG_MSG_ADMIN}}]\n")
    config = load_config(path)
    with pytest.raises(CredentialError) as raised:
        compile_runtime(config)
    assert str(raised.value) == (
        f"{path}: backends[0].api_key (line 2): environment variable BG_MSG_OPENAI is not set; "
        "backends[2].api_key (line 6): environment variable BG_MSG_ANTHROPIC is not set; "
        "admin.credentials[0].secret (line 11): environment variable BG_MSG_ADMIN is not set")


def test_an_unreadable_secret_file_names_the_config_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "babelgate.yaml"
    path.write_text("backends:\n  - id: oa\n    schema: openai\n    base_url: http://127.0.0.1:9/v1\n"
                    "    api_key: {file: missing.key}\nroutes:\n  - {model: m, backends: [{backend: oa, model: x}]}\n")
    with pytest.raises(CredentialError) as raised:
        compile_runtime(load_config(path))
    assert str(raised.value).startswith(f"{path}: backends[0].api_key (line 5): can't read {tmp_path / 'missing.key'}")
