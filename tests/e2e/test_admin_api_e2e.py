"""The admin API through the real stack: gRPC on its own port and through Envoy, JSON through Envoy's gRPC-JSON
transcoder; keys stored hashed in a real Redis and honoured (or refused) by both ext_proc processes within about a
second (the time is printed; the tests allow PROPAGATION_BOUND)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import httpx
import openai
import pytest
import redis

from ext_proc import constants
from ext_proc.admin import admin_pb2 as pb
from ext_proc.launch.processes import free_port
from ext_proc.launch.stack import Stack

from ..eventually import eventually, rss_mib
from .gateways import GatewayBuilder
from .support import room_in_window

HELLO = [{"role": "user", "content": "hi"}]
ADMIN_SECRET = "bg-admin-e2e-credential-0123456789"
PROVIDER_SECRET = "sk-provider-admin-e2e-secret"
METHOD = "/babelgate.admin.v1.Admin/"


@dataclass
class AdminStack:
    stack: Stack
    admin_port: int
    redis_url: str
    workdir: Path

    def grpc(self, port: int | None = None) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{port or self.admin_port}")

    def json(self, method: str, path: str, body: dict | None = None,
             secret: str | None = ADMIN_SECRET) -> httpx.Response:
        headers = {"authorization": f"Bearer {secret}"} if secret else {}
        return httpx.request(method, self.stack.url + path, json=body, headers=headers, timeout=10)

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.stack.url + "/v1", api_key=key, max_retries=0, timeout=20)

    def ext_proc_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.workdir.glob("ext_proc-*.log"))


def call(channel: grpc.Channel, name: str, request: object, reply: type, secret: str | None = ADMIN_SECRET) -> object:
    metadata = [("authorization", f"Bearer {secret}"), ("x-babelgate-operator", "e2e")] if secret else []
    method = channel.unary_unary(METHOD + name, request_serializer=type(request).SerializeToString,
                                 response_deserializer=reply.FromString)
    return method(request, metadata=metadata, timeout=10)


def create(channel: grpc.Channel, key_id: str, **fields: object) -> pb.CreateKeyResponse:
    return call(channel, "CreateKey", pb.CreateKeyRequest(key=pb.Key(id=key_id, **fields)), pb.CreateKeyResponse)


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminStack]:
    workdir = tmp_path_factory.mktemp("admin")
    with GatewayBuilder(workdir, processes=2) as build:
        store = build.redis(key_prefix="bgadm:")
        build.backend("p", build.demo("p", api_key=PROVIDER_SECRET))
        build.route("m", ("p", "m"), aliases=["m-alias"])
        build.route("other", ("p", "other"))
        admin_port = build.admin(ADMIN_SECRET, via_envoy=True)
        gateway = build.start()
        assert gateway.stack is not None
        yield AdminStack(gateway.stack, admin_port, store.url, workdir)


PROPAGATION_BOUND = 10.0
"""Seconds a key change may take to reach every process in these tests. The servers poll every 0.25 s and the figures
printed are well under a second; the bound is loose so a busy CI machine never fails the suite."""
POLL_INTERVALS_TWICE = 0.6
"""More than two of the servers' 0.25 s polls of the key store: a process that had not seen a new key when one run of
requests succeeded has polled the store at least once since."""


def usable(admin: AdminStack, secret: str) -> openai.OpenAI:
    """A client with a new key, once every process knows the key. A run of 12 requests in a row (Envoy spreads them
    over both processes) must succeed twice, the second run starting more than two poll intervals after the first
    ended, with no refusal in between: a process that rebuilds its runtime slowly on a busy machine has caught up."""
    client = admin.openai(secret)
    first_success: list[float] = []

    def known_everywhere() -> bool:
        started = time.monotonic()
        try:
            for _ in range(12):
                client.models.list()
        except openai.AuthenticationError:
            first_success.clear()  # a process still refuses it: start over
            return False
        if not first_success:
            first_success.append(time.monotonic())
            return False
        return started - first_success[0] >= POLL_INTERVALS_TWICE

    eventually(known_everywhere, timeout=PROPAGATION_BOUND, what="every process knows the new key")
    return client


def _refused_within(client: openai.OpenAI, seconds: float = PROPAGATION_BOUND) -> float:
    """Seconds until every process refuses the key (several 401s in a row, so both processes answered)."""
    started = time.monotonic()
    while True:
        refusals = 0
        for _ in range(6):
            try:
                client.chat.completions.create(model="m", messages=HELLO)
            except openai.AuthenticationError:
                refusals += 1
        elapsed = time.monotonic() - started
        if refusals == 6:
            return elapsed
        assert elapsed < seconds, f"the key still works {elapsed:.2f} s later"


def test_a_key_created_over_grpc_works_through_envoy_and_is_stored_hashed(admin: AdminStack) -> None:
    created = create(admin.grpc(), "grpc-created", team="blue", models=["m"])
    assert created.secret.startswith("bg-") and created.key.created_at.seconds > 0
    answer = usable(admin, created.secret).chat.completions.create(model="m-alias", messages=HELLO)
    assert answer.choices
    stored = redis.Redis.from_url(admin.redis_url).hgetall("bgadm:keys")
    record = stored[b"grpc-created"].decode()
    assert created.secret not in record and '"hash":"sha256:' in record
    listed = call(admin.grpc(), "ListKeys", pb.ListKeysRequest(), pb.ListKeysResponse)
    assert created.secret not in str(listed) and "sha256" not in str(listed)
    assert [k.team for k in listed.keys if k.id == "grpc-created"] == ["blue"]


def test_a_model_limited_key_from_the_api_cannot_reach_another_model(admin: AdminStack) -> None:
    created = create(admin.grpc(), "only-m", models=["m"])
    client = usable(admin, created.secret)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="other", messages=HELLO,
                                       extra_headers={"x-babelgate-requested-model": "m"})


def test_revoking_over_grpc_refuses_the_key_everywhere_within_a_second(admin: AdminStack) -> None:
    created = create(admin.grpc(), "to-revoke")
    client = usable(admin, created.secret)
    assert client.chat.completions.create(model="m", messages=HELLO).choices
    call(admin.grpc(), "RevokeKey", pb.RevokeKeyRequest(id="to-revoke"), pb.RevokeKeyResponse)
    elapsed = _refused_within(client)
    print(f"\nrevoked key refused by every process {elapsed:.3f} s after RevokeKey returned")
    assert elapsed < PROPAGATION_BOUND


def test_rotating_refuses_the_old_secret_and_accepts_the_new(admin: AdminStack) -> None:
    created = create(admin.grpc(), "to-rotate", models=["m"])
    rotated = call(admin.grpc(), "RotateKey", pb.RotateKeyRequest(id="to-rotate"), pb.CreateKeyResponse)
    assert rotated.secret != created.secret and list(rotated.key.models) == ["m"]
    assert _refused_within(admin.openai(created.secret)) < PROPAGATION_BOUND
    assert usable(admin, rotated.secret).chat.completions.create(model="m", messages=HELLO).choices


def test_an_expiring_key_is_refused_once_it_expires(admin: AdminStack) -> None:
    expires = pb.Key(id="short-lived")
    # long enough for the key to reach every process and serve a chat first: propagation takes about a second even
    # on a busy machine (a 0.25 s poll, then a rebuild in a thread), and the test waits out the rest
    expires.expires_at.FromDatetime(datetime.now(UTC) + timedelta(seconds=7))
    created = call(admin.grpc(), "CreateKey", pb.CreateKeyRequest(key=expires), pb.CreateKeyResponse)
    client = usable(admin, created.secret)
    assert client.chat.completions.create(model="m", messages=HELLO).choices
    expiry = created.key.expires_at.ToDatetime(tzinfo=UTC).timestamp()
    eventually(lambda: time.time() >= expiry, timeout=PROPAGATION_BOUND + 35, interval=0.1, what="the key's expiry")
    with pytest.raises(openai.AuthenticationError, match="expired"):
        client.chat.completions.create(model="m", messages=HELLO)


def test_a_key_with_limits_from_the_api_is_limited(admin: AdminStack) -> None:
    created = create(admin.grpc(), "two-a-minute", limits=[pb.Limit(window="minute", requests=2)])
    client = usable(admin, created.secret)
    room_in_window("minute", needed=8)  # the two requests, the refusal and the usage read count in one minute
    for _ in range(2):
        client.chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m", messages=HELLO)
    usage = admin.json("GET", "/admin/v1/usage?scope=key").json()
    assert {"scope": "key", "id": "two-a-minute", "window": "minute", "metric": "requests", "used": 2.0,
            "limit": 2.0} in usage["rows"]


def test_json_through_envoy_creates_lists_rotates_and_revokes(admin: AdminStack) -> None:
    created = admin.json("POST", "/admin/v1/keys", {"key": {"id": "json-key", "team": "green", "models": ["m"]}})
    assert created.status_code == 200, created.text
    secret = created.json()["secret"]
    assert created.json()["key"]["id"] == "json-key"
    assert usable(admin, secret).chat.completions.create(model="m", messages=HELLO).choices

    listed = admin.json("GET", "/admin/v1/keys")
    assert listed.status_code == 200 and secret not in listed.text
    assert "json-key" in [k["id"] for k in listed.json()["keys"]]

    rotated = admin.json("POST", "/admin/v1/keys/json-key:rotate", {})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != secret

    revoked = admin.json("DELETE", "/admin/v1/keys/json-key")
    assert revoked.status_code == 200, revoked.text
    assert _refused_within(admin.openai(rotated.json()["secret"])) < PROPAGATION_BOUND
    again = admin.json("DELETE", "/admin/v1/keys/json-key")
    assert again.status_code == 404 and "json-key" in again.text


def test_json_errors_carry_the_right_status(admin: AdminStack) -> None:
    assert admin.json("GET", "/admin/v1/keys", secret=None).status_code == 401
    assert admin.json("GET", "/admin/v1/keys", secret="wrong").status_code == 401
    unknown_model = admin.json("POST", "/admin/v1/keys", {"key": {"id": "bad", "models": ["nope"]}})
    assert unknown_model.status_code == 400 and "nope" in unknown_model.text
    bad_id = admin.json("POST", "/admin/v1/keys", {"key": {"id": "has space"}})
    assert bad_id.status_code == 400
    admin.json("POST", "/admin/v1/keys", {"key": {"id": "twice"}})
    assert admin.json("POST", "/admin/v1/keys", {"key": {"id": "twice"}}).status_code == 409


def test_routes_and_backend_health_as_json(admin: AdminStack) -> None:
    routes = admin.json("GET", "/admin/v1/routes").json()
    assert [r["model"] for r in routes["routes"]] == ["m", "other"]
    assert routes["routes"][0]["aliases"] == ["m-alias"]
    assert routes["backends"][0]["id"] == "p" and routes["backends"][0]["cooling"] is False


def test_grpc_through_envoys_listener(admin: AdminStack) -> None:
    listed = call(admin.grpc(admin.stack.config.listener.port), "ListRoutes", pb.ListRoutesRequest(),
                  pb.ListRoutesResponse)
    assert [r.model for r in listed.routes] == ["m", "other"]


def test_no_admin_call_without_the_admin_credential(admin: AdminStack) -> None:
    virtual_key = create(admin.grpc(), "not-admin").secret
    for secret in (None, "wrong", virtual_key, ADMIN_SECRET + "x"):
        with pytest.raises(grpc.RpcError) as refused:
            call(admin.grpc(), "ListKeys", pb.ListKeysRequest(), pb.ListKeysResponse, secret=secret)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_admin_calls_are_audited_without_secrets(admin: AdminStack) -> None:
    created = create(admin.grpc(), "audited")
    call(admin.grpc(), "RevokeKey", pb.RevokeKeyRequest(id="audited"), pb.RevokeKeyResponse)
    with pytest.raises(grpc.RpcError):
        call(admin.grpc(), "ListKeys", pb.ListKeysRequest(), pb.ListKeysResponse, secret="wrong")
    eventually(lambda: "admin ListKeys refused" in admin.ext_proc_logs(), what="the refused call's audit line")
    logs = admin.ext_proc_logs()
    assert "admin CreateKey by ops (e2e) from 127.0.0.1: key 'audited'" in logs
    assert "admin RevokeKey by ops (e2e) from 127.0.0.1: key 'audited' revoked" in logs
    assert "admin ListKeys refused from 127.0.0.1: an invalid admin credential" in logs
    for secret in (created.secret, ADMIN_SECRET, PROVIDER_SECRET):
        assert secret not in logs


def _babelgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ext_proc", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_the_keys_command_goes_through_the_admin_api(admin: AdminStack) -> None:
    by_address = ("--admin", f"127.0.0.1:{admin.admin_port}")
    credential = {"BABELGATE_ADMIN_KEY": ADMIN_SECRET}
    created = _babelgate("keys", "create", "--id", "cli-key", "--models", "m", "--team", "cli",
                         "--limit", "day:requests=1000,usd=2.5", *by_address, env=credential)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert usable(admin, secret).chat.completions.create(model="m", messages=HELLO).choices

    # with the config, the address and the credential come from it (the credential's env var is set)
    by_config = ("-c", str(admin.workdir / "config.yaml"))
    listed = _babelgate("keys", "list", *by_config, env={"BG_E2E_ADMIN": ADMIN_SECRET})
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("cli-key"))
    assert "cli" in line and "day:requests=1000,usd=2.5" in line and secret not in listed.stdout

    rotated = _babelgate("keys", "rotate", "--id", "cli-key", *by_address, env=credential)
    assert rotated.returncode == 0, rotated.stderr
    assert _refused_within(admin.openai(secret)) < PROPAGATION_BOUND
    revoked = _babelgate("keys", "revoke", "--id", "cli-key", *by_address, env=credential)
    assert revoked.returncode == 0, revoked.stderr
    assert _refused_within(admin.openai(rotated.stdout.strip())) < PROPAGATION_BOUND
    assert "admin RevokeKey by ops (" in admin.ext_proc_logs()


def test_the_keys_command_says_why_the_admin_api_refused(admin: AdminStack) -> None:
    by_address = ("--admin", f"127.0.0.1:{admin.admin_port}")
    wrong = _babelgate("keys", "list", *by_address, env={"BABELGATE_ADMIN_KEY": "wrong"})
    assert wrong.returncode == 2 and "unauthenticated" in wrong.stderr
    missing = _babelgate("keys", "revoke", "--id", "nobody", *by_address, env={"BABELGATE_ADMIN_KEY": ADMIN_SECRET})
    assert missing.returncode == 2 and "no key with id 'nobody'" in missing.stderr
    closed = _babelgate("keys", "list", "--admin", f"127.0.0.1:{free_port()}",
                        env={"BABELGATE_ADMIN_KEY": ADMIN_SECRET})
    assert closed.returncode == 2 and "can't reach the admin API" in closed.stderr


def test_malformed_admin_json_is_a_clear_4xx(admin: AdminStack) -> None:
    headers = {"authorization": f"Bearer {ADMIN_SECRET}", "content-type": "application/json"}
    for body in (b"{not json", b'{"key": {"id": 5, "limits": "x"}}', b'{"key": {"unknown_field": 1}}', b"[]"):
        answer = httpx.post(admin.stack.url + "/admin/v1/keys", content=body, headers=headers, timeout=10)
        assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
        # JSON the transcoder can't read is Envoy's refusal (OpenAI-shaped by the local-reply mapper); what it can
        # read goes to the service, whose gRPC status comes back as the standard google.rpc.Status JSON
        error = answer.json()
        assert (error.get("error") or error)["message"], answer.text


def test_the_audited_client_is_the_one_envoy_saw_not_what_the_client_wrote(admin: AdminStack) -> None:
    spoofed = {"authorization": f"Bearer {ADMIN_SECRET}", "x-forwarded-for": "6.6.6.6",
               constants.ADMIN_CLIENT_ADDRESS_HEADER: "7.7.7.7", "x-babelgate-operator": "xff-test"}
    assert httpx.get(admin.stack.url + "/admin/v1/routes", headers=spoofed, timeout=10).status_code == 200
    line = eventually(lambda: next((line for line in admin.ext_proc_logs().splitlines()
                                    if "admin ListRoutes by ops (xff-test)" in line), ""), what="the audit line")
    assert line.endswith("from 127.0.0.1 (client 127.0.0.1 per Envoy)"), line
    assert "6.6.6.6" not in line and "7.7.7.7" not in line


def _admin_server_pid(admin: AdminStack) -> int:
    return next(child.process.pid for child in admin.stack.supervisor.children if child.name == "ext_proc-0")


def test_an_oversized_admin_call_is_refused_before_its_body_is_read(admin: AdminStack) -> None:
    """Three 64 MiB calls without a credential (refused on their headers) and one with (refused on its length
    prefix): the process serving the admin API, which also serves client traffic, does not grow by their size."""
    huge = b"\x00" * (64 << 20)
    method = admin.grpc().unary_unary(METHOD + "CreateKey")
    before = rss_mib(_admin_server_pid(admin))
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as refused:
            method(huge, timeout=60)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as refused:
        method(huge, metadata=[("authorization", f"Bearer {ADMIN_SECRET}")], timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    grown = rss_mib(_admin_server_pid(admin)) - before
    print(f"\nadmin server RSS after 4 x 64 MiB refused calls: {grown:+.1f} MiB")
    assert grown < 32
    # through Envoy, the admin route's own limit answers first
    through_envoy = httpx.post(admin.stack.url + "/admin/v1/keys", content=b'{"key": {"id": "' + b"x" * (2 << 20)
                               + b'"}}', headers={"authorization": f"Bearer {ADMIN_SECRET}",
                                                  "content-type": "application/json"}, timeout=30)
    assert through_envoy.status_code == 413, through_envoy.text[:300]


def test_usage_over_the_ext_proc_channel_needs_the_admin_credential(admin: AdminStack) -> None:
    from ext_proc.server import USAGE_METHOD

    socket = admin.stack.config.ext_proc.socket_path(0)
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary(USAGE_METHOD)(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = channel.unary_unary(USAGE_METHOD)(b"", timeout=10,
                                                   metadata=[("authorization", f"Bearer {ADMIN_SECRET}")])
    assert "values" in answer.decode()
