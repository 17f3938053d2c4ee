"""Prompt templates through the admin API's methods and their stores: versions numbered by the store, labels, the
config's templates read-only, validation answered as INVALID_ARGUMENT, the file store beside the keys file (which it
touches so every server reloads), the Redis store (which bumps the keys' version every server polls), and a runtime
built after a change serving it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import redis
import yaml
from google.protobuf.struct_pb2 import Struct

from ext_proc.admin import admin_pb2 as pb
from ext_proc.admin.service import new_prompt_template
from ext_proc.config import prompt_syntax as syntax
from ext_proc.config.loading import load_config, parse_config
from ext_proc.config.models import RedisSettings
from ext_proc.config.prompt_syntax import prompts_file
from ext_proc.config.watch import file_signature, watched_files
from ext_proc.runtime.build import compile_runtime
from ext_proc.state.stored_keys import VERSION_FIELD, keys_hash_name
from ext_proc.templates.store import RedisPromptStore, TooManyVersions, read_stored_prompts
from ext_proc.transport.grpc import RpcError, Status

from ..redis_server import RedisServer
from .test_admin_service import CI_SECRET, OPS_SECRET, RESPONSES, Bench, config_text, run


@pytest.fixture(autouse=True)
def admin_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_ADMIN_OPS", OPS_SECRET)
    monkeypatch.setenv("BG_TEST_ADMIN_CI", CI_SECRET)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


FIXTURE = Path(__file__).parent.parent / "fixtures" / "prompts" / "support.yaml"
_prefixes = itertools.count()
RESPONSES.update({"CreatePromptVersion": pb.PromptVersion, "ListPrompts": pb.ListPromptsResponse,
                  "GetPrompt": pb.PromptVersion, "SetPromptLabel": pb.Prompt})
"""The bench decodes replies by method name: these methods' replies too."""




def struct(data: dict) -> Struct:
    message = Struct()
    message.update(data)
    return message


def support(**changes: object) -> Struct:
    data = yaml.safe_load(FIXTURE.read_text())
    data["model"] = "m"
    return struct({**data, **changes})


def create(bench: Bench, name: str, label: str = "", **changes: object) -> pb.PromptVersion:
    return run(bench.ok("CreatePromptVersion", pb.CreatePromptVersionRequest(  # type: ignore[return-value]
        name=name, template=support(**changes), label=label)))


def test_versions_are_numbered_labels_move_and_get_resolves_them(keys_file: Path) -> None:
    bench = Bench(parse_config(config_text(keys_file)))
    first = create(bench, "support", label="production")
    second = create(bench, "support", max_tokens=99)
    assert (first.version, list(first.labels), second.version) == (1, ["production"], 2)
    assert second.template.fields["max_tokens"].number_value == 99
    got = run(bench.ok("GetPrompt", pb.GetPromptRequest(name="support")))
    assert (got.version, list(got.labels)) == (1, ["production"])  # type: ignore[attr-defined]
    assert run(bench.ok("GetPrompt", pb.GetPromptRequest(name="support", ref="latest"))).version == 2  # type: ignore[attr-defined]
    moved = run(bench.ok("SetPromptLabel", pb.SetPromptLabelRequest(name="support", label="production", version=2)))
    assert dict(moved.labels) == {"production": 2} and moved.latest == 2  # type: ignore[attr-defined]
    listed = run(bench.ok("ListPrompts", pb.ListPromptsRequest()))
    assert [(p.name, p.latest, p.model) for p in listed.prompts] == [("support", 2, "m")]  # type: ignore[attr-defined]
    assert len(bench.changes) == 3


def test_the_file_store_sits_beside_the_keys_file_which_servers_watch(keys_file: Path) -> None:
    config = parse_config(config_text(keys_file))
    bench = Bench(config)
    stored = prompts_file(keys_file)
    assert stored in watched_files(config, keys_file.with_name("config.yaml"))  # servers reload when it changes
    before = file_signature(stored)
    create(bench, "support")
    assert stored == keys_file.with_name("keys.prompts.yaml") and stored.exists()
    assert file_signature(stored) != before
    runtime = compile_runtime(parse_config(config_text(keys_file)))
    assert runtime.prompts.resolve("inline", "t", "support", None, "model").messages[0]["role"] == "system"


@pytest.mark.parametrize(("request_message", "status", "text"), [
    (pb.CreatePromptVersionRequest(name="Bad", template=support()), Status.INVALID_ARGUMENT, "name"),
    (pb.CreatePromptVersionRequest(name="ok", template=struct({"messages": []})), Status.INVALID_ARGUMENT,
     "template.messages"),
    (pb.CreatePromptVersionRequest(name="ok", template=support(model="no-such-route")), Status.INVALID_ARGUMENT,
     "template.model"),
    (pb.CreatePromptVersionRequest(name="ok", template=support(version=3)), Status.INVALID_ARGUMENT,
     "template.version"),
    (pb.CreatePromptVersionRequest(name="ok", template=support(), label="latest"), Status.INVALID_ARGUMENT, "label"),
    (pb.CreatePromptVersionRequest(name="fixed", template=support()), Status.FAILED_PRECONDITION, "config file"),
    (pb.SetPromptLabelRequest(name="fixed", label="production", version=1), Status.FAILED_PRECONDITION,
     "config file"),
    (pb.SetPromptLabelRequest(name="none", label="production", version=1), Status.NOT_FOUND, "no version"),
    (pb.GetPromptRequest(name="none"), Status.NOT_FOUND, "does not exist"),
    (pb.GetPromptRequest(name="fixed", ref="7"), Status.NOT_FOUND, "no version 7"),
], ids=["name", "messages", "model", "version", "latest-label", "config-create", "config-label", "label-unknown",
        "get-unknown", "get-version"])
def test_refusals_say_why(keys_file: Path, request_message: object, status: Status, text: str) -> None:
    fixed = "prompts:\n  - {name: fixed, messages: [{role: user, content: hi}]}\n"
    bench = Bench(parse_config(config_text(keys_file, fixed)))
    method = {pb.CreatePromptVersionRequest: "CreatePromptVersion", pb.SetPromptLabelRequest: "SetPromptLabel",
              pb.GetPromptRequest: "GetPrompt"}[type(request_message)]
    answer = run(bench.call(method, request_message))  # type: ignore[arg-type]
    assert answer.status == status and text in answer.message, answer  # type: ignore[attr-defined]
    assert bench.changes == []


def test_whole_numbers_come_back_as_integers_from_a_struct() -> None:
    template = new_prompt_template("t", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5.0})
    assert template.max_tokens == 5 and template.created_at is not None
    with pytest.raises(RpcError):
        new_prompt_template("t", {"name": "other", "messages": [{"role": "user", "content": "x"}]})


def test_the_redis_store_numbers_labels_and_bumps_the_version_servers_poll(redis_server: RedisServer,
                                                                           keys_file: Path) -> None:
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgprompt{next(_prefixes)}:")
    template = new_prompt_template("support", {"messages": [{"role": "user", "content": "{{q}}"}]})
    client = redis.Redis.from_url(redis_server.url)

    async def scenario() -> tuple[int, int, bool, bool]:
        store = RedisPromptStore(settings)
        try:
            one = await store.create(template, "production")
            two = await store.create(template, None)
            return one, two, await store.set_label("support", "staging", 2), await store.set_label("support", "x", 9)
        finally:
            await store.close()

    assert run(scenario()) == (1, 2, True, False)
    assert int(client.hget(keys_hash_name(settings), VERSION_FIELD) or 0) == 3  # every change announced
    text = config_text(keys_file).replace("limits:\n", f"limits:\n  redis: {{url: '{redis_server.url}', "
                                                       f"key_prefix: '{settings.key_prefix}'}}\n")
    stored = read_stored_prompts(parse_config(text))
    assert stored is not None and [(t.name, t.version) for t in stored.templates] == [("support", 1), ("support", 2)]
    assert stored.labels == {"support": {"production": 1, "staging": 2}}
    client.close()


def test_a_name_keeps_at_most_max_versions(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ext_proc.templates.store.MAX_VERSIONS", 2)
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgprompt{next(_prefixes)}:")
    template = new_prompt_template("t", {"messages": [{"role": "user", "content": "x"}]})

    async def scenario() -> None:
        store = RedisPromptStore(settings)
        try:
            await store.create(template, None)
            await store.create(template, None)
            with pytest.raises(TooManyVersions):
                await store.create(template, None)
        finally:
            await store.close()

    run(scenario())
    assert syntax.MAX_VERSIONS == 256


def test_a_runtime_built_while_redis_is_down_keeps_the_templates_read_before(redis_server: RedisServer,
                                                                             keys_file: Path) -> None:
    settings = RedisSettings(url=redis_server.url, key_prefix=f"bgprompt{next(_prefixes)}:")

    async def store_one() -> None:
        store = RedisPromptStore(settings)
        try:
            await store.create(new_prompt_template("kept", {"messages": [{"role": "user", "content": "x"}]}), None)
        finally:
            await store.close()

    run(store_one())
    text = config_text(keys_file).replace("limits:\n", f"limits:\n  redis: {{url: '{redis_server.url}', "
                                                       f"key_prefix: '{settings.key_prefix}'}}\n")
    before = compile_runtime(parse_config(text))
    assert "kept" in before.prompts.entries
    down = text.replace(redis_server.url, "redis://127.0.0.1:1")
    after = compile_runtime(parse_config(down), previous=before)
    assert "kept" in after.prompts.entries


def test_a_key_created_over_the_api_carries_its_prompt_allow_list(keys_file: Path) -> None:
    bench = Bench(parse_config(config_text(keys_file)))
    created = run(bench.create("bot", prompts=["support*"]))
    assert list(created.key.prompts) == ["support*"]
    config_file = keys_file.with_name("config.yaml")
    config_file.write_text(config_text(keys_file))
    runtime = compile_runtime(load_config(config_file))
    assert runtime.prompts.key_globs["bot"] == ("support*",)
    assert not runtime.prompts.allowed("bot", None, "other")
    everything = run(bench.create("all-prompts"))
    assert list(everything.key.prompts) == []  # every template
    assert "prompts" not in yaml.safe_load(keys_file.read_text())[-1]  # stored as keys were before templates


@pytest.mark.parametrize(("name", "request_message"), [
    ("CreatePromptVersion", pb.CreatePromptVersionRequest(name="sneaky", template=support())),
    ("ListPrompts", pb.ListPromptsRequest()),
    ("GetPrompt", pb.GetPromptRequest(name="sneaky")),
    ("SetPromptLabel", pb.SetPromptLabelRequest(name="sneaky", label="production", version=1)),
])
@pytest.mark.parametrize("secret", [None, "bg-not-the-admin-credential"], ids=["no credential", "wrong credential"])
def test_template_calls_need_an_admin_credential_and_change_nothing_without_one(
        keys_file: Path, name: str, request_message: object, secret: str | None) -> None:
    bench = Bench(parse_config(config_text(keys_file)))
    answer = run(bench.call(name, request_message, secret=secret))  # type: ignore[arg-type]
    assert answer.status == Status.UNAUTHENTICATED and answer.reply is None
    assert bench.changes == [] and not prompts_file(keys_file).exists()
