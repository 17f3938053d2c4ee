"""Prompt templates through the real stack: versions created over the admin API (JSON through Envoy, gRPC, the CLI),
stored in a real Redis and served by both ext_proc processes; the official openai SDK's chat (`model:
"prompt:<name>"`) and Responses (`prompt={...}`) forms reach the provider as the rendered messages; a label moved is
seen everywhere within a poll; the request log names template and version; allow-lists answer 403. A second gateway,
without Redis, serves a config-defined template and stores new versions beside its keys file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pyarrow.dataset as ds
import pytest
import yaml

from ext_proc.admin import admin_pb2 as pb

from ..eventually import eventually
from .gateways import Demo, Gateway, GatewayBuilder

ADMIN_SECRET = "bg-admin-prompts-e2e-credential-0123"
METHOD = "/babelgate.admin.v1.Admin/"
V1 = {"model": "chain", "variables": ["product", "question"], "temperature": 0.3,
      "messages": [{"role": "system", "content": "v1: you support {{ product }}."},
                   {"role": "user", "content": "{{question}}"}]}
V2 = {"model": "chain", "messages": [{"role": "system", "content": "v2: you support {{product}}."},
                                     {"role": "user", "content": "{{question}}"}]}
VARIABLES = {"product": "Babelgate", "question": "What is {{product}}?"}
"""The question holds a placeholder: it must reach the provider as written."""
GREETING = {"name": "greeting", "model": "m", "labels": ["production"],
            "messages": [{"role": "system", "content": "Greet {{who}} warmly."}]}


@dataclass
class Stack:
    gateway: Gateway
    demo: Demo
    admin_port: int
    workdir: Path

    def json(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        return httpx.request(method, self.gateway.url + path, json=body, timeout=10,
                             headers={"authorization": f"Bearer {ADMIN_SECRET}"})

    def grpc_call(self, name: str, request: object, reply: type) -> object:
        with grpc.insecure_channel(f"127.0.0.1:{self.admin_port}") as channel:
            method = channel.unary_unary(METHOD + name, request_serializer=type(request).SerializeToString,
                                         response_deserializer=reply.FromString)
            return method(request, metadata=[("authorization", f"Bearer {ADMIN_SECRET}")], timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ext_proc", "prompts", *args, "--admin",
                               f"127.0.0.1:{self.admin_port}"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "BABELGATE_ADMIN_KEY": ADMIN_SECRET})

    def sent_messages(self) -> list[dict]:
        """What the provider got last, as chat messages (a Responses request's input items likewise)."""
        body = self.demo.last_request()["body"]
        return body.get("messages") or body.get("input")


def _build(build: GatewayBuilder, *, redis: bool) -> tuple[Demo, int]:
    demo = build.demo("p")
    build.backend("p", demo, outlier_detection=None)
    build.backend("p2", demo, outlier_detection=None)
    build.route("m", ("p", "m-upstream"))
    build.route("chain", ("p", "chain-upstream"), ("p2", "chain-fallback"))
    build.key("main")
    build.key("narrow", prompts=["other-*"])
    build.set(prompts=[GREETING])
    if redis:
        build.redis(key_prefix="bgprompts:")
    else:
        build.set(keys_file=str(build.workdir / "keys.yaml"))
    build.set(telemetry={"request_log": {"destination": str(build.workdir / "requests"), "flush_seconds": "200ms"}})
    return demo, build.admin(ADMIN_SECRET, via_envoy=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prompts")
    with GatewayBuilder(workdir, processes=2) as build:
        demo, admin_port = _build(build, redis=True)
        yield Stack(build.start(), demo, admin_port, workdir)


@pytest.fixture(scope="module")
def file_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prompts-file")
    with GatewayBuilder(workdir, processes=2) as build:
        demo, admin_port = _build(build, redis=False)
        yield Stack(build.start(), demo, admin_port, workdir)


def _chat(stack: Stack, model: str, variables: dict, key: str = "main", **fields: object) -> object:
    return stack.gateway.client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "and one more thing"}],
        extra_body={"prompt_variables": variables}, **fields)


def _everywhere(check: object, what: str, in_a_row: int = 8) -> None:
    """`check` holds for several requests in a row (Envoy spreads them over both processes)."""
    eventually(lambda: all(check() for _ in range(in_a_row)), timeout=20, what=what)  # type: ignore[operator]


def _create_versions(stack: Stack) -> None:
    created = stack.json("POST", "/admin/v1/prompts/support/versions", {"template": V1})
    assert created.status_code == 200, created.text
    assert created.json()["version"] == 1
    template_file = stack.workdir / "support-v2.yaml"
    template_file.write_text(yaml.safe_dump(V2))
    result = stack.cli("create", "support", "--file", str(template_file), "--label", "production")
    assert result.returncode == 0, result.stderr
    assert "prompt support version 2 created (production)" in result.stdout


@pytest.fixture(scope="module")
def versions(stack: Stack) -> Stack:
    _create_versions(stack)
    return stack


def _served(stack: Stack, model: str, first: str) -> bool:
    try:
        _chat(stack, model, VARIABLES)
    except openai.NotFoundError:  # a process that has not reloaded yet
        return False
    return stack.sent_messages()[0]["content"] == first


def test_chat_form_resolves_by_version_and_label_and_renders_values_literally(versions: Stack) -> None:
    _everywhere(lambda: _served(versions, "prompt:support@1", "v1: you support Babelgate."), "version 1 served")
    sent = versions.demo.last_request()["body"]
    assert sent["model"] == "chain-upstream" and sent["temperature"] == 0.3
    assert sent["messages"][1:] == [{"role": "user", "content": "What is {{product}}?"},
                                    {"role": "user", "content": "and one more thing"}]
    assert "prompt_variables" not in sent
    _everywhere(lambda: _served(versions, "prompt:support", "v2: you support Babelgate."), "production -> v2")
    _everywhere(lambda: _served(versions, "prompt:support@latest", "v2: you support Babelgate."), "latest")


def test_responses_prompt_parameter_leads_the_input(versions: Stack) -> None:
    client = versions.gateway.client("main")

    def served() -> bool:
        try:
            client.responses.create(prompt={"id": "support", "version": "1", "variables": {
                "product": {"type": "input_text", "text": "Babelgate"}, "question": "Why?"}}, input="thanks")
        except openai.NotFoundError:
            return False
        return True

    eventually(served, timeout=20, what="the Responses form served")
    texts = [str(item.get("content")) for item in versions.sent_messages()]
    assert "v1: you support Babelgate." in texts[0] and "Why?" in texts[1] and "thanks" in texts[2]
    assert "prompt" not in versions.demo.last_request()["body"]


def test_a_missing_variable_is_a_400_naming_it(versions: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(versions, "prompt:support@1", {"product": "Babelgate"})
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "missing_prompt_variable"
    assert error["param"] == "prompt_variables" and "question" in error["message"]
    with pytest.raises(openai.NotFoundError):
        _chat(versions, "prompt:no-such-template", {})


def test_a_label_moved_is_seen_by_both_processes(versions: Stack) -> None:
    moved = versions.grpc_call("SetPromptLabel", pb.SetPromptLabelRequest(name="support", label="production",
                                                                           version=1), pb.Prompt)
    assert dict(moved.labels) == {"production": 1}  # type: ignore[attr-defined]
    _everywhere(lambda: _served(versions, "prompt:support", "v1: you support Babelgate."), "production -> v1")
    back = versions.json("PUT", "/admin/v1/prompts/support/labels/production", {"version": 2})
    assert back.status_code == 200, back.text
    _everywhere(lambda: _served(versions, "prompt:support", "v2: you support Babelgate."), "production -> v2 again")


def test_listing_and_getting_over_json_and_the_cli(versions: Stack) -> None:
    listed = versions.json("GET", "/admin/v1/prompts").json()["prompts"]
    by_name = {p["name"]: p for p in listed}
    assert by_name["greeting"]["from_config"] and by_name["support"]["latest"] == 2
    got = versions.json("GET", "/admin/v1/prompts/support?ref=1").json()
    assert got["version"] == 1 and got["template"]["messages"][0]["content"] == "v1: you support {{ product }}."
    shown = versions.cli("get", "support@1")
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["template"]["temperature"] == 0.3
    table = versions.cli("list")
    assert table.returncode == 0 and "greeting" in table.stdout and "config" in table.stdout
    refused = versions.json("POST", "/admin/v1/prompts/greeting/versions", {"template": V2})
    assert refused.status_code == 400 and "config file" in refused.text  # FAILED_PRECONDITION


def test_a_key_whose_allow_list_excludes_the_template_gets_403(versions: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _chat(versions, "prompt:support@1", VARIABLES, key="narrow")
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "prompt_not_allowed"


def test_the_request_log_names_template_and_version(versions: Stack) -> None:
    """On a direct route (the route stage reports the answer) and on a chain (its attempt stage does, from the route
    stage's metadata)."""
    _chat(versions, "prompt:greeting@1", {"who": "Ada"})
    _chat(versions, "prompt:support@1", VARIABLES)

    def logged(name: str) -> list[dict]:
        rows = ds.dataset(versions.workdir / "requests", format="parquet", partitioning="hive").to_table().to_pylist()
        return [r for r in rows if r.get("prompt_template") == name and r.get("prompt_version") == "1"]

    row = eventually(lambda: logged("greeting"), timeout=30, what="a request-log row naming greeting version 1")[0]
    assert row["route"] == "m" and row["status"] == 200
    row = eventually(lambda: logged("support"), timeout=30, what="a request-log row naming support version 1")[0]
    assert row["route"] == "chain" and row["status"] == 200 and row["backend"] == "p"


def test_without_redis_a_config_template_is_served_and_new_versions_go_beside_the_keys_file(file_stack: Stack) -> None:
    greeted = _chat(file_stack, "prompt:greeting", {"who": "Ada"})
    assert greeted.choices  # type: ignore[attr-defined]
    assert file_stack.sent_messages()[0] == {"role": "system", "content": "Greet Ada warmly."}
    _create_versions(file_stack)
    assert (file_stack.workdir / "keys.prompts.yaml").exists()
    _everywhere(lambda: _served(file_stack, "prompt:support", "v2: you support Babelgate."), "file store served")


def test_a_virtual_key_cant_manage_templates_through_envoy(stack: Stack) -> None:
    """The JSON admin routes on the client listener answer only to an admin credential: a client's own key (valid
    for models) gets 401 and the template is not created."""
    for secret in (stack.gateway.keys["main"], None):
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        refused = httpx.post(stack.gateway.url + "/admin/v1/prompts/sneaky/versions", json={"template": V1},
                             headers=headers, timeout=10)
        assert refused.status_code == 401, refused.text
    assert stack.json("GET", "/admin/v1/prompts/sneaky").status_code == 404
