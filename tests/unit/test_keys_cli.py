"""`babelgate keys create` / `revoke` on a keys file, with an audit line naming who did it and never the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from ext_proc.auth.virtual_keys import hash_key


def _keys(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ext_proc", "keys", *args], capture_output=True, text=True)


def test_create_then_revoke(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    created = _keys("create", "--id", "alice", "--team", "research", "--keys-file", str(keys_file))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    stored = yaml.safe_load(keys_file.read_text())
    created_at = stored[0].pop("created_at")
    assert stored == [{"id": "alice", "hash": hash_key(key), "models": ["*"], "team": "research"}] and created_at
    assert "virtual key 'alice' created by" in created.stderr and key not in created.stderr
    _keys("create", "--id", "bob", "--keys-file", str(keys_file))
    revoked = _keys("revoke", "--id", "alice", "--keys-file", str(keys_file))
    assert revoked.returncode == 0, revoked.stderr
    assert [k["id"] for k in yaml.safe_load(keys_file.read_text())] == ["bob"]
    assert "virtual key 'alice' revoked by" in revoked.stderr


def test_create_gives_a_key_its_end_user_or_lets_it_name_them(tmp_path: Path) -> None:
    """Per-user limits count a verified user: the key's own (`--user`), or, for a service trusted to name the end
    user of each request, the header or body's (`--asserts-users`)."""
    keys_file = tmp_path / "keys.yaml"
    assert _keys("create", "--id", "alice", "--user", "alice@example.com",
                 "--keys-file", str(keys_file)).returncode == 0
    assert _keys("create", "--id", "chatbot", "--asserts-users", "--keys-file", str(keys_file)).returncode == 0
    alice, chatbot = yaml.safe_load(keys_file.read_text())
    assert alice["user"] == "alice@example.com" and "asserts_users" not in alice
    assert chatbot["asserts_users"] is True and "user" not in chatbot
    listed = _keys("list", "--json", "--keys-file", str(keys_file))
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows["alice"]["user"] == "alice@example.com" and rows["chatbot"]["asserts_users"] is True


def test_revoking_an_unknown_key_says_so(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    _keys("create", "--id", "bob", "--keys-file", str(keys_file))
    result = _keys("revoke", "--id", "nobody", "--keys-file", str(keys_file))
    assert result.returncode == 2 and "no key with id 'nobody'" in result.stderr
    assert [k["id"] for k in yaml.safe_load(keys_file.read_text())] == ["bob"]


def test_create_accepts_a_routes_alias_and_stores_the_routes_model_name(tmp_path: Path) -> None:
    config = tmp_path / "babelgate.yaml"
    config.write_text("backends:\n  - {id: oa, schema: openai, base_url: 'http://127.0.0.1:9/v1'}\n"
                      "routes:\n  - {model: gpt-4o, aliases: [gpt4], backends: [{backend: oa, model: x}]}\n"
                      "keys_file: keys.yaml\n")
    created = _keys("create", "--id", "carol", "--models", "gpt4", "-c", str(config))
    assert created.returncode == 0, created.stderr
    assert yaml.safe_load((tmp_path / "keys.yaml").read_text())[0]["models"] == ["gpt-4o"]
    refused = _keys("create", "--id", "dave", "--models", "gpt-5", "-c", str(config))
    assert refused.returncode == 2 and "unknown model 'gpt-5' (give a route's model name or alias" in refused.stderr


def test_create_limits_a_key_to_some_prompt_templates(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    assert _keys("create", "--id", "bot", "--prompts", "support*, faq", "--keys-file", str(keys_file)).returncode == 0
    assert _keys("create", "--id", "any", "--keys-file", str(keys_file)).returncode == 0
    bot, anyone = yaml.safe_load(keys_file.read_text())
    assert bot["prompts"] == ["support*", "faq"] and "prompts" not in anyone  # every template: the default, unwritten
