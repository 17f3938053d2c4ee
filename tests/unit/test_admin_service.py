"""The admin API's methods, driven through the method table the gRPC server registers (`AdminService.methods()`):
the admin credential, the audit log, key validation and the status each refusal answers with, rotation, usage."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from google.protobuf.message import Message

from ext_proc.admin import admin_pb2 as pb
from ext_proc.admin.key_store import RedisKeyStore, read_keys_file, with_stored_keys
from ext_proc.admin.service import (
    CLIENT_ADDRESS_HEADER,
    OPERATOR_METADATA_KEY,
    SERVICE_NAME,
    AdminService,
    key_message,
)
from ext_proc.auth.virtual_keys import hash_key
from ext_proc.config.loading import parse_config
from ext_proc.config.models import Config, LimitRule, RedisSettings, VirtualKey
from ext_proc.limits.limiter import Demand
from ext_proc.runtime.build import Runtime, compile_runtime
from ext_proc.transport.grpc import PEER_METADATA_KEY, RpcError, Status

from ..redis_server import RedisServer, free_ports

OPS_SECRET = "bg-admin-ops-credential-0123456789"
CI_SECRET = "bg-admin-ci-credential-9876543210"
INLINE_SECRET = "bg-inline-virtual-key-secret"
PEER = "10.1.2.3:40000"

CONFIG = """
admin:
  credentials:
    - {name: ops, secret: {env: BG_TEST_ADMIN_OPS}}
    - {name: ci, secret: {env: BG_TEST_ADMIN_CI}}
keys_file: KEYS_FILE
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}
  - {id: ob, schema: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - {model: m, aliases: [m-alias], backends: [{backend: oa, model: x}, {backend: ob, model: y}]}
  - {model: other, backends: [{backend: ob, model: y}]}
virtual_keys:
  - {id: inline, hash: "INLINE_HASH", team: t}
teams: [{id: t, limits: [{window: day, usd: 1.0}]}]
prices: [{backend: oa, model: x, input: 1000, output: 2000}]
limits:
  per_key: [{window: hour, requests: 10}]
"""

RESPONSES: dict[str, type[Message]] = {
    "CreateKey": pb.CreateKeyResponse, "ListKeys": pb.ListKeysResponse, "RevokeKey": pb.RevokeKeyResponse,
    "RotateKey": pb.CreateKeyResponse, "ListRoutes": pb.ListRoutesResponse, "GetUsage": pb.GetUsageResponse,
}


@dataclass
class Holder:
    current: Runtime


class FakeCall:
    """What the gRPC transport gives a method factory: the reply and the final status are recorded."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.status: Status | None = None
        self.message = ""
        self.finished = asyncio.Event()

    def send_message(self, message: bytes) -> None:
        self.messages.append(message)

    def finish(self, status: Status = Status.OK, message: str = "") -> None:
        self.status, self.message = status, message
        self.finished.set()


@dataclass
class Answer:
    status: Status
    message: str
    reply: Message | None


class Bench:
    def __init__(self, config: Config) -> None:
        self.holder = Holder(compile_runtime(config))
        self.changes: list[str] = []

        async def on_change(what: str) -> None:
            self.changes.append(what)

        self.service = AdminService(self.holder, on_change=on_change)
        self.methods = self.service.methods()

    async def raw(self, name: str, data: bytes, metadata: dict[str, str]) -> Answer:
        call = FakeCall()
        try:
            handler = self.methods[f"/{SERVICE_NAME}/{name}"](call, metadata)  # type: ignore[arg-type]
        except RpcError as refused:  # on the headers: the transport answers before reading the message
            return Answer(refused.status, refused.message, None)
        handler.on_message(data)
        handler.on_end()
        await asyncio.wait_for(call.finished.wait(), 10)
        reply = RESPONSES[name].FromString(call.messages[0]) if call.messages else None
        assert call.status is not None
        return Answer(call.status, call.message, reply)

    async def call(self, name: str, request: Message, secret: str | None = OPS_SECRET, operator: str | None = "alice",
                   **headers: str) -> Answer:
        metadata = {PEER_METADATA_KEY: PEER, **headers}
        if secret is not None:
            metadata["authorization"] = f"Bearer {secret}"
        if operator is not None:
            metadata[OPERATOR_METADATA_KEY] = operator
        return await self.raw(name, request.SerializeToString(), metadata)

    async def ok(self, name: str, request: Message, **kwargs: object) -> Message:
        answer = await self.call(name, request, **kwargs)  # type: ignore[arg-type]
        assert answer.status == Status.OK, (answer.status, answer.message)
        assert answer.reply is not None
        return answer.reply

    async def create(self, key_id: str, **fields: object) -> pb.CreateKeyResponse:
        return await self.ok("CreateKey", pb.CreateKeyRequest(key=pb.Key(id=key_id, **fields)))  # type: ignore[return-value]


def config_text(keys_file: Path, extra: str = "") -> str:
    return CONFIG.replace("KEYS_FILE", str(keys_file)).replace("INLINE_HASH", hash_key(INLINE_SECRET)) + extra


@pytest.fixture(autouse=True)
def admin_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_ADMIN_OPS", OPS_SECRET)
    monkeypatch.setenv("BG_TEST_ADMIN_CI", CI_SECRET)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


@pytest.fixture
def bench(keys_file: Path) -> Bench:
    return Bench(parse_config(config_text(keys_file)))


@pytest.fixture
def audit_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="babelgate.audit")
    return caplog


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "babelgate.audit"]


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


# -- the admin credential and the audit log -----------------------------------------------------------------------

@pytest.mark.parametrize(("secret", "why"), [
    (None, "no admin credential"),
    ("bg-not-the-credential", "an invalid admin credential"),
    (INLINE_SECRET, "an invalid admin credential"),  # a virtual key is no admin credential
    ("", "no admin credential"),
])
def test_calls_without_a_valid_admin_credential_are_refused_and_audited(
        bench: Bench, audit_log: pytest.LogCaptureFixture, secret: str | None, why: str) -> None:
    answer = run(bench.call("ListKeys", pb.ListKeysRequest(), secret=secret))
    assert answer.status == Status.UNAUTHENTICATED and answer.reply is None
    assert "Authorization: Bearer" in answer.message
    lines = audit_lines(audit_log)
    assert lines == [f"admin ListKeys refused from {PEER}: {why}"]
    assert [r.levelno for r in audit_log.records if r.name == "babelgate.audit"] == [logging.WARNING]


def test_another_scheme_than_bearer_is_refused(bench: Bench) -> None:
    answer = run(bench.raw("ListKeys", b"", {"authorization": f"Basic {OPS_SECRET}"}))
    assert answer.status == Status.UNAUTHENTICATED


def test_each_credential_is_audited_under_its_own_name(bench: Bench, audit_log: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        await bench.ok("ListRoutes", pb.ListRoutesRequest(), secret=OPS_SECRET, operator="alice")
        await bench.ok("ListRoutes", pb.ListRoutesRequest(), secret=CI_SECRET, operator=None)

    run(scenario())
    assert audit_lines(audit_log) == [f"admin ListRoutes by ops (alice) from {PEER}",
                                      f"admin ListRoutes by ci from {PEER}"]


def test_a_caller_without_a_peer_address_is_audited_as_a_local_socket(
        bench: Bench, audit_log: pytest.LogCaptureFixture) -> None:
    run(bench.raw("ListRoutes", b"", {"authorization": f"Bearer {CI_SECRET}"}))
    assert audit_lines(audit_log) == ["admin ListRoutes by ci from a local socket"]


def test_operator_and_client_address_cannot_forge_audit_lines(bench: Bench,
                                                             audit_log: pytest.LogCaptureFixture) -> None:
    forged = "eve\nINFO babelgate.audit: admin RevokeKey by ops\r\x1b[2J"
    run(bench.ok("ListRoutes", pb.ListRoutesRequest(), operator=forged + "x" * 100,
                 **{CLIENT_ADDRESS_HEADER: "1.2.3.4\nforged line"}))
    run(bench.call("ListRoutes", pb.ListRoutesRequest(), secret="wrong", **{CLIENT_ADDRESS_HEADER: "5.6.7.8\rfake"}))
    lines = audit_lines(audit_log)
    assert len(lines) == 2
    assert all(line.isprintable() for line in lines), lines
    shown = "eve?INFO babelgate.audit: admin RevokeKey by ops??[2J"
    assert f"by ops ({shown}{'x' * (64 - len(shown))}) from" in lines[0]  # cut at 64 characters
    assert f"from {PEER} (client 1.2.3.4?forged line per Envoy)" in lines[0]
    assert "(client 5.6.7.8?fake per Envoy)" in lines[1]


def test_a_clients_own_x_forwarded_for_is_not_the_audited_address(bench: Bench,
                                                                 audit_log: pytest.LogCaptureFixture) -> None:
    run(bench.ok("ListRoutes", pb.ListRoutesRequest(), **{"x-forwarded-for": "6.6.6.6"}))
    (line,) = audit_lines(audit_log)
    assert "6.6.6.6" not in line
    assert line.endswith(f"from {PEER}")


def test_a_caller_without_the_credential_is_refused_on_its_headers(bench: Bench) -> None:
    call = FakeCall()
    with pytest.raises(RpcError) as refused:
        bench.methods[f"/{SERVICE_NAME}/CreateKey"](call, {"authorization": "Bearer wrong"})  # type: ignore[arg-type]
    assert refused.value.status == Status.UNAUTHENTICATED
    assert call.messages == []


def test_a_team_name_cannot_forge_audit_lines(bench: Bench, audit_log: pytest.LogCaptureFixture) -> None:
    """The team is the caller's text too: refused, or written without control characters."""
    forged = pb.Key(id="teamed", team="blue\nWARNING babelgate.audit: admin RevokeKey by root")
    answer = run(bench.call("CreateKey", pb.CreateKeyRequest(key=forged)))
    assert answer.status in (Status.OK, Status.INVALID_ARGUMENT), answer
    lines = audit_lines(audit_log)
    assert all(line.isprintable() for line in lines), lines


def test_audit_lines_never_carry_a_secret_or_a_key_hash(bench: Bench, audit_log: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        created = await bench.create("audited", team="blue", models=["m"])
        rotated = await bench.ok("RotateKey", pb.RotateKeyRequest(id="audited"))
        await bench.ok("ListKeys", pb.ListKeysRequest())
        await bench.ok("RevokeKey", pb.RevokeKeyRequest(id="audited"))
        await bench.call("ListKeys", pb.ListKeysRequest(), secret="bg-wrong-guess-of-the-credential")
        return [created.secret, rotated.secret]  # type: ignore[attr-defined]

    key_secrets = run(scenario())
    text = "\n".join(audit_lines(audit_log))
    assert "admin CreateKey by ops (alice)" in text and "key 'audited'" in text and "team blue" in text
    assert "admin RevokeKey by ops (alice)" in text and "admin RotateKey by ops (alice)" in text
    for secret in [*key_secrets, OPS_SECRET, CI_SECRET, INLINE_SECRET, "bg-wrong-guess-of-the-credential"]:
        assert secret not in text
        assert hash_key(secret) not in text
        assert hash_key(secret).removeprefix("sha256:") not in text
    assert "sha256" not in text


def test_credentials_are_read_again_when_a_reload_changes_them(
        keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = Bench(parse_config(config_text(keys_file)))
    assert run(bench.call("ListRoutes", pb.ListRoutesRequest())).status == Status.OK
    monkeypatch.setenv("BG_TEST_ADMIN_OPS", "bg-rotated-ops-credential")
    bench.holder.current = compile_runtime(parse_config(config_text(keys_file)))
    assert run(bench.call("ListRoutes", pb.ListRoutesRequest())).status == Status.UNAUTHENTICATED
    assert run(bench.call("ListRoutes", pb.ListRoutesRequest(), secret="bg-rotated-ops-credential")).status == Status.OK


def test_without_an_admin_section_every_call_is_unavailable(keys_file: Path) -> None:
    text = config_text(keys_file)
    text = text[text.index("keys_file"):]  # drops `admin:`
    bench = Bench(parse_config(text))
    answer = run(bench.call("ListKeys", pb.ListKeysRequest()))
    assert answer.status == Status.UNAVAILABLE and "not configured" in answer.message


# -- creating keys ------------------------------------------------------------------------------------------------

def test_create_stores_only_the_hash_and_answers_the_secret_once(bench: Bench, keys_file: Path) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    request = pb.Key(id="alice@example.com", team="blue", models=["m"],
                     limits=[pb.Limit(window="day", usd=2.5, requests=100)])
    request.expires_at.FromDatetime(expires)
    before = datetime.now(UTC).replace(microsecond=0)
    created = run(bench.ok("CreateKey", pb.CreateKeyRequest(key=request)))
    assert created.secret.startswith("bg-")  # type: ignore[attr-defined]
    [stored] = read_keys_file(keys_file)
    assert stored.hash == hash_key(created.secret)  # type: ignore[attr-defined]
    assert created.secret not in keys_file.read_text()  # type: ignore[attr-defined]
    assert (stored.id, stored.team, stored.models, stored.expires_at) == ("alice@example.com", "blue", ["m"], expires)
    assert stored.limits == [LimitRule(window="day", usd=2.5, requests=100)]
    assert stored.created_at is not None and before <= stored.created_at <= datetime.now(UTC)
    assert created.key == key_message(stored)  # type: ignore[attr-defined]
    listed = run(bench.ok("ListKeys", pb.ListKeysRequest()))
    assert [k.id for k in listed.keys] == ["alice@example.com", "inline"]  # type: ignore[attr-defined]
    assert created.secret not in str(listed) and "sha256" not in str(listed)  # type: ignore[attr-defined]


def test_a_key_without_models_may_use_every_model(bench: Bench, keys_file: Path) -> None:
    created = run(bench.create("everything"))
    assert read_keys_file(keys_file)[0].models == ["*"]
    assert list(created.key.models) == []  # type: ignore[attr-defined]


def test_a_key_may_name_a_route_by_its_alias_and_is_stored_with_the_route_model(bench: Bench,
                                                                              keys_file: Path) -> None:
    created = run(bench.ok("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="aliased", models=["m-alias", "m"]))))
    assert read_keys_file(keys_file)[0].models == ["m"]
    assert list(created.key.models) == ["m"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("key_id", ["has space", "", "x" * 129, ".leading-dot", "team:key", "-dash", "tab\there",
                                    "ünïcode"])
def test_bad_key_ids_are_invalid_arguments(bench: Bench, keys_file: Path, key_id: str) -> None:
    answer = run(bench.call("CreateKey", pb.CreateKeyRequest(key=pb.Key(id=key_id))))
    assert answer.status == Status.INVALID_ARGUMENT
    assert answer.message.startswith("key.id:")
    assert not keys_file.exists() and bench.changes == []


def test_the_longest_allowed_id_and_every_allowed_character_are_accepted(bench: Bench, keys_file: Path) -> None:
    async def scenario() -> None:
        await bench.create("a" * 128)
        await bench.create("A0._@-z")

    run(scenario())
    assert sorted(k.id for k in read_keys_file(keys_file)) == ["A0._@-z", "a" * 128]


def past(**delta: float) -> pb.Key:
    key = pb.Key(id="late")
    key.expires_at.FromDatetime(datetime.now(UTC) - timedelta(**delta))
    return key


@pytest.mark.parametrize(("key", "field", "detail"), [
    (pb.Key(id="k", models=["m", "nope"]), "key.models", "'nope'"),
    (past(seconds=5), "key.expires_at", "future"),
    (past(days=400), "key.expires_at", "future"),
    (pb.Key(id="k", limits=[pb.Limit(window="week", requests=5)]), "key.limits", "window"),
    (pb.Key(id="k", limits=[pb.Limit(window="hour", requests=-1)]), "key.limits", "requests"),
    (pb.Key(id="k", limits=[pb.Limit(window="hour", usd=-0.5)]), "key.limits", "usd"),
    (pb.Key(id="k", limits=[pb.Limit(window="hour")]), "key.limits", "at least one"),
])
def test_invalid_keys_are_refused_naming_the_field(bench: Bench, keys_file: Path, key: pb.Key, field: str,
                                                   detail: str) -> None:
    answer = run(bench.call("CreateKey", pb.CreateKeyRequest(key=key)))
    assert answer.status == Status.INVALID_ARGUMENT, answer
    assert answer.message.startswith(field + ":") and detail in answer.message, answer.message
    assert not keys_file.exists() and bench.changes == []


def test_a_duplicate_id_already_exists_whether_stored_or_in_the_config_file(bench: Bench, keys_file: Path) -> None:
    async def scenario() -> list[Answer]:
        first = await bench.create("dup", team="first")
        again = await bench.call("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="dup", team="second")))
        inline = await bench.call("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="inline")))
        assert first.key.team == "first"
        return [again, inline]

    again, inline = run(scenario())
    assert (again.status, inline.status) == (Status.ALREADY_EXISTS, Status.ALREADY_EXISTS)
    assert "'dup'" in again.message and "'inline'" in inline.message
    assert [(k.id, k.team) for k in read_keys_file(keys_file)] == [("dup", "first")]
    assert bench.changes == ["key 'dup' created"]


# -- revoking and rotating ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["RevokeKey", "RotateKey"])
def test_keys_in_the_config_file_cannot_be_changed_and_unknown_ids_are_not_found(bench: Bench, method: str) -> None:
    request = pb.RevokeKeyRequest if method == "RevokeKey" else pb.RotateKeyRequest
    inline = run(bench.call(method, request(id="inline")))
    assert inline.status == Status.FAILED_PRECONDITION and "config file" in inline.message
    missing = run(bench.call(method, request(id="nobody")))
    assert missing.status == Status.NOT_FOUND and "'nobody'" in missing.message
    assert bench.changes == []


def test_revoke_removes_the_stored_key(bench: Bench, keys_file: Path) -> None:
    async def scenario() -> Answer:
        await bench.create("gone")
        await bench.create("kept")
        await bench.ok("RevokeKey", pb.RevokeKeyRequest(id="gone"))
        return await bench.call("RevokeKey", pb.RevokeKeyRequest(id="gone"))

    again = run(scenario())
    assert again.status == Status.NOT_FOUND
    assert [k.id for k in read_keys_file(keys_file)] == ["kept"]


def test_rotate_keeps_everything_but_the_hash(bench: Bench, keys_file: Path) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    request = pb.Key(id="rotating", team="blue", models=["m", "other"],
                     limits=[pb.Limit(window="month", usd=12.5), pb.Limit(window="minute", requests=3)])
    request.expires_at.FromDatetime(expires)

    async def scenario() -> tuple[pb.CreateKeyResponse, VirtualKey, pb.CreateKeyResponse]:
        created = await bench.ok("CreateKey", pb.CreateKeyRequest(key=request))
        [before] = read_keys_file(keys_file)
        rotated = await bench.ok("RotateKey", pb.RotateKeyRequest(id="rotating"))
        return created, before, rotated  # type: ignore[return-value]

    created, before, rotated = run(scenario())
    [after] = read_keys_file(keys_file)
    assert rotated.secret != created.secret and rotated.secret.startswith("bg-")
    assert before.hash == hash_key(created.secret) and after.hash == hash_key(rotated.secret)
    assert after.model_dump(exclude={"hash"}) == before.model_dump(exclude={"hash"})
    assert rotated.key == created.key
    assert bench.changes == ["key 'rotating' created", "key 'rotating' rotated"]


def test_on_change_is_awaited_once_per_change_and_never_for_reads(bench: Bench) -> None:
    async def scenario() -> None:
        await bench.create("a")
        await bench.ok("ListKeys", pb.ListKeysRequest())
        await bench.ok("ListRoutes", pb.ListRoutesRequest())
        await bench.ok("GetUsage", pb.GetUsageRequest())
        await bench.ok("RotateKey", pb.RotateKeyRequest(id="a"))
        await bench.ok("RevokeKey", pb.RevokeKeyRequest(id="a"))
        await bench.call("RevokeKey", pb.RevokeKeyRequest(id="a"))  # refused: no change
        await bench.call("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="bad id")))

    run(scenario())
    assert bench.changes == ["key 'a' created", "key 'a' rotated", "key 'a' revoked"]


def test_a_change_made_after_a_reload_lands_in_the_new_keys_file(bench: Bench, tmp_path: Path) -> None:
    run(bench.create("before"))
    moved = tmp_path / "moved.yaml"
    bench.holder.current = compile_runtime(parse_config(config_text(moved)))
    run(bench.create("after"))
    assert [k.id for k in read_keys_file(moved)] == ["after"]
    assert [k.id for k in read_keys_file(tmp_path / "keys.yaml")] == ["before"]


# -- failures -----------------------------------------------------------------------------------------------------

def test_a_key_store_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    bench = Bench(parse_config(config_text(tmp_path / "no-such-dir" / "keys.yaml")))
    answer = run(bench.call("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="k"))))
    assert answer.status == Status.UNAVAILABLE and "keys.yaml" in answer.message
    assert bench.changes == []


@pytest.mark.parametrize(("name", "request_message"), [
    ("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="k"))),
    ("RevokeKey", pb.RevokeKeyRequest(id="k")),
    ("ListKeys", pb.ListKeysRequest()),
    ("RotateKey", pb.RotateKeyRequest(id="k")),
])
def test_a_keys_file_that_cannot_be_read_is_unavailable_not_internal(tmp_path: Path, name: str,
                                                                     request_message: Message) -> None:
    unreadable = tmp_path / "keys.yaml"
    unreadable.mkdir()  # exists, but reading it fails (EISDIR)
    bench = Bench(parse_config(config_text(unreadable)))
    answer = run(bench.call(name, request_message))
    assert answer.status == Status.UNAVAILABLE, answer


def test_redis_down_is_unavailable(tmp_path: Path) -> None:
    closed = free_ports(1)[0]
    text = config_text(tmp_path / "keys.yaml").replace(
        "limits:\n", f"limits:\n  redis: {{url: 'redis://127.0.0.1:{closed}'}}\n")
    bench = Bench(parse_config(text))
    calls = (("ListKeys", pb.ListKeysRequest()), ("CreateKey", pb.CreateKeyRequest(key=pb.Key(id="k"))),
             ("RevokeKey", pb.RevokeKeyRequest(id="k")), ("RotateKey", pb.RotateKeyRequest(id="k")))

    async def scenario() -> list[Answer]:
        try:
            return [await bench.call(name, request) for name, request in calls]
        finally:
            await bench.service.close()

    for (name, _), answer in zip(calls, run(scenario()), strict=True):
        assert answer.status == Status.UNAVAILABLE, (name, answer)
        assert "Redis" in answer.message
    assert bench.changes == []


def test_a_garbage_request_body_is_an_invalid_argument_after_authentication(bench: Bench) -> None:
    authorized = {"authorization": f"Bearer {OPS_SECRET}"}
    answer = run(bench.raw("CreateKey", b"\xff\xff\xff\xff", authorized))
    assert answer.status == Status.INVALID_ARGUMENT and "CreateKeyRequest" in answer.message
    assert run(bench.raw("CreateKey", b"\xff\xff\xff\xff", {})).status == Status.UNAUTHENTICATED
    assert bench.changes == []


def test_list_keys_shows_the_key_in_force_when_the_config_file_and_the_store_share_an_id(tmp_path: Path) -> None:
    """A key created over the API, then written into the config file under the same id: servers honour the config
    file's (`with_stored_keys`), so that is the one ListKeys must describe."""
    with RedisServer(tmp_path / "redis") as server:
        settings = RedisSettings(url=server.url)

        async def store_shadowed_key() -> None:
            store = RedisKeyStore(settings)
            try:
                assert await store.create(VirtualKey(id="inline", hash=hash_key("bg-stored"), team="from-redis"))
            finally:
                await store.close()

        run(store_shadowed_key())
        text = config_text(tmp_path / "keys.yaml").replace("limits:\n", f"limits:\n  redis: {{url: '{server.url}'}}\n")
        config = with_stored_keys(parse_config(text))
        assert [(k.id, k.team) for k in config.virtual_keys] == [("inline", "t")]
        bench = Bench(config)

        async def list_keys() -> pb.ListKeysResponse:
            try:
                return await bench.ok("ListKeys", pb.ListKeysRequest())  # type: ignore[return-value]
            finally:
                await bench.service.close()

        listed = run(list_keys())
        assert [(k.id, k.team) for k in listed.keys] == [("inline", "t")]  # type: ignore[attr-defined]


# -- conversions --------------------------------------------------------------------------------------------------

def test_key_message_omits_the_wildcard_and_keeps_limits_and_times() -> None:
    expires = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    created = datetime(2030, 1, 1, tzinfo=UTC)
    key = VirtualKey(id="k", hash=hash_key("s"), models=["*"], team="t", expires_at=expires, created_at=created,
                     limits=[LimitRule(window="day", usd=0.75), LimitRule(window="hour", requests=5, total_tokens=9)])
    message = key_message(key)
    assert list(message.models) == [] and message.team == "t" and message.id == "k"
    day, hour = message.limits
    assert day.window == "day" and day.usd == 0.75 and not day.HasField("requests")
    assert hour.requests == 5 and hour.total_tokens == 9 and not hour.HasField("usd")
    assert message.expires_at.ToDatetime(tzinfo=UTC) == expires
    assert message.created_at.ToDatetime(tzinfo=UTC) == created
    assert "sha256" not in str(message)
    plain = key_message(VirtualKey(id="p", hash=hash_key("s"), models=["m", "other"]))
    assert list(plain.models) == ["m", "other"] and plain.team == ""
    assert not plain.HasField("expires_at") and not plain.HasField("created_at") and not plain.limits


# -- routes and usage ---------------------------------------------------------------------------------------------

def test_list_routes_names_routes_and_backends(bench: Bench) -> None:
    reply = run(bench.ok("ListRoutes", pb.ListRoutesRequest()))
    routes = {r.model: r for r in reply.routes}  # type: ignore[attr-defined]
    assert list(routes["m"].aliases) == ["m-alias"] and list(routes["m"].backends) == ["oa", "ob"]
    assert [(b.id, b.schema, b.cooling) for b in reply.backends] == [("oa", "openai", False),  # type: ignore[attr-defined]
                                                                     ("ob", "openai", False)]


def test_get_usage_reports_current_counts_with_usd_in_dollars(bench: Bench) -> None:
    limiter = bench.holder.current.limiter
    assert limiter is not None

    async def scenario() -> tuple[pb.GetUsageResponse, pb.GetUsageResponse]:
        scopes = limiter.scopes("inline", "t", None, "m", "oa")
        await limiter.reserve(scopes, Demand(100, 50, 250_000), "oa")
        everything = await bench.ok("GetUsage", pb.GetUsageRequest())
        teams = await bench.ok("GetUsage", pb.GetUsageRequest(scope="team"))
        return everything, teams  # type: ignore[return-value]

    everything, teams = run(scenario())
    rows = {(r.scope, r.id, r.metric, r.window): (r.used, r.limit) for r in everything.rows}
    assert rows == {("key", "inline", "requests", "hour"): (1.0, 10.0),
                    ("team", "t", "usd", "day"): (0.25, 1.0)}
    assert [(r.scope, r.id, r.used, r.limit) for r in teams.rows] == [("team", "t", 0.25, 1.0)]


def test_get_usage_without_any_limit_is_empty(keys_file: Path) -> None:
    data = yaml.safe_load(config_text(keys_file))
    del data["limits"], data["teams"]
    bench = Bench(parse_config(yaml.safe_dump(data)))
    assert bench.holder.current.limiter is None
    assert list(run(bench.ok("GetUsage", pb.GetUsageRequest())).rows) == []  # type: ignore[attr-defined]


def test_the_server_does_not_load_grpcio_for_the_admin_client() -> None:
    """grpcio's native library costs each server process ~9 MiB of RSS; only `babelgate keys` needs it."""
    import subprocess
    import sys

    probe = ("import sys; from ext_proc.cli import _parser; _parser(); import ext_proc.server; "
             "import ext_proc.admin.keys_command; print('grpc' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "False"
