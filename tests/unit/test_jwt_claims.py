"""Verified JWT claims -> identities (`auth/jwt_claims.py`), the route stage taking them from Envoy's metadata, and
the end user limits count (a verified one, or one named by a caller trusted to)."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.struct_pb2 import Struct

from ext_proc import constants
from ext_proc.auth.jwt_claims import compile_issuers, identify, identity, verified_identity
from ext_proc.auth.virtual_keys import hash_key
from ext_proc.config.loading import parse_config
from ext_proc.errors import Unauthorized
from ext_proc.limits.limiter import compile_tables
from ext_proc.stages.route import RouteStage
from ext_proc.wire.base_pb2 import Metadata
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import CLIENT_KEY, SERVICE_KEY, body, drive, headers, immediate, runtime

JWT = """
jwt:
  issuers:
    - name: corp
      issuer: https://id.corp.test/realms/corp
      audiences: [babelgate]
      jwks_uri: https://id.corp.test/realms/corp/protocol/openid-connect/certs
      claims: {team: groups_team, models: scope, user: email}
      models: [gpt-4o, claude]
      limits: [{window: hour, requests: 3}]
    - name: ci
      issuer: https://ci.example
      audiences: [babelgate]
      jwks_uri: https://ci.example/jwks
      team: builders
"""
CHAT = {":method": "POST", ":path": "/v1/chat/completions", "content-type": "application/json"}
HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _issuers(monkeypatch: pytest.MonkeyPatch, extra: str = "") -> tuple:
    return runtime(monkeypatch, JWT + extra).issuers


def _context(issuer: str, claims: dict) -> Metadata:
    payload = Struct()
    payload.update({constants.JWT_PAYLOAD_KEY_PREFIX + issuer: claims})
    context = Metadata()
    context.filter_metadata[constants.JWT_METADATA_NAMESPACE].CopyFrom(payload)
    return context


@pytest.mark.parametrize(("claims", "models"), [
    ({"scope": "openid gpt4 profile"}, {"gpt-4o"}),  # an alias names its route; other scopes are ignored
    ({"scope": ["claude", "embed"]}, {"claude"}),  # a list; `embed` is not among the issuer's models
    ({"scope": "*"}, {"gpt-4o", "claude"}),
    ({"scope": "openid profile"}, set()),
    ({}, set()),  # no claim: no model
])
def test_the_models_claim_narrows_the_issuers_models(monkeypatch: pytest.MonkeyPatch, claims: dict,
                                                     models: set[str]) -> None:
    corp = _issuers(monkeypatch)[0]
    info = identity(corp, {"sub": "alice", **claims})
    assert info.models == frozenset(models)


def test_claims_map_to_an_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    corp, ci = _issuers(monkeypatch)
    info = identity(corp, {"sub": "alice", "groups_team": "platform", "email": "alice@corp.test"})
    assert (info.id, info.team, info.user, info.asserts_users) == ("jwt:corp:alice", "platform", "alice@corp.test",
                                                                   False)
    info = identity(ci, {"sub": 12345})
    assert (info.id, info.team, info.user, info.models) == ("jwt:ci:12345", "builders", "12345", None)


@pytest.mark.parametrize("claims", [{}, {"sub": ""}, {"sub": ["a"]}, {"sub": "x" * 257}])
def test_a_token_without_a_usable_subject_is_a_401(monkeypatch: pytest.MonkeyPatch, claims: dict) -> None:
    with pytest.raises(Unauthorized):
        identity(_issuers(monkeypatch)[1], claims)


def test_the_payload_is_read_from_envoys_namespace_under_its_issuers_key(monkeypatch: pytest.MonkeyPatch) -> None:
    issuers = _issuers(monkeypatch)
    info = verified_identity(issuers, _context("ci", {"sub": "job-7", "iss": "https://ci.example"}))
    assert info is not None and info.id == "jwt:ci:job-7"
    assert verified_identity(issuers, _context("unknown", {"sub": "x"})) is None
    assert verified_identity(issuers, Metadata()) is None
    forged = Metadata()  # the same key in another filter's namespace is nobody's verified token
    forged.filter_metadata[constants.METADATA_NAMESPACE].update({"babelgate.ci": {"sub": "root"}})
    assert verified_identity(issuers, forged) is None


def test_a_token_and_a_virtual_key_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    current = runtime(monkeypatch, JWT)
    context = _context("ci", {"sub": "job-7"})
    assert identify(current.issuers, current.keys, {}, context).id == "jwt:ci:job-7"
    with pytest.raises(Unauthorized, match="send one of them"):
        identify(current.issuers, current.keys, {"x-api-key": CLIENT_KEY}, context)
    assert identify(current.issuers, current.keys, {"authorization": f"Bearer {CLIENT_KEY}"}, None).id == "all"


def test_the_route_stage_runs_a_request_as_the_tokens_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = RouteStage(runtime(monkeypatch, JWT))
    context = _context("corp", {"sub": "alice", "scope": "claude"})
    reply = drive(stage, ProcessingRequest(request_headers=headers(CHAT), metadata_context=context))
    assert reply is not None and reply.WhichOneof("response") == "request_headers"
    reply = drive(stage, ProcessingRequest(request_body=body(HELLO)))
    status, error, _ = immediate(reply)  # type: ignore[arg-type]
    assert status == 403 and "jwt:corp:alice" in error["error"]["message"]


def test_without_a_verified_token_a_bearer_jwt_is_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """Envoy verified nothing (say a filter chain without `jwt_authn`): the route stage believes no token text."""
    stage = RouteStage(runtime(monkeypatch, JWT))
    reply = drive(stage, ProcessingRequest(request_headers=headers({**CHAT, "authorization": "Bearer a.b.c"})))
    status, error, _ = immediate(reply)  # type: ignore[arg-type]
    assert (status, error["error"]["code"]) == (401, "invalid_api_key")


def _reserved_user(monkeypatch: pytest.MonkeyPatch, request_headers: dict, context: Metadata | None = None,
                   user: str | None = None) -> str | None:
    """The user scope a request's reservation counted in (None: none)."""
    current = runtime(monkeypatch, JWT + "limits: {per_user: [{window: day, requests: 50}]}\n")
    seen: list[str | None] = []
    original = current.limiter.scopes  # type: ignore[union-attr]

    def scopes(key_id: str, team: str | None, who: str | None, route: str, backend: str) -> list:
        seen.append(who)
        return original(key_id, team, who, route, backend)

    monkeypatch.setattr(current.limiter, "scopes", scopes)
    stage = RouteStage(current)
    request = ProcessingRequest(request_headers=headers({**CHAT, **request_headers}))
    if context is not None:
        request.metadata_context.CopyFrom(context)
    drive(stage, request)
    drive(stage, ProcessingRequest(request_body=body({**HELLO, **({"user": user} if user else {})})))
    return seen[0] if seen else None


def test_a_key_that_does_not_assert_users_names_none(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _reserved_user(monkeypatch, {"authorization": f"Bearer {CLIENT_KEY}", "x-user-id": "victim"},
                          user="victim") is None


@pytest.mark.parametrize(("named", "user", "expected"), [
    ({"x-user-id": "from-header"}, "from-body", "from-header"),
    ({}, "from-body", "from-body"),
])
def test_a_key_that_asserts_users_names_them(monkeypatch: pytest.MonkeyPatch, named: dict, user: str,
                                             expected: str) -> None:
    assert _reserved_user(monkeypatch, {"authorization": f"Bearer {SERVICE_KEY}", **named}, user=user) == expected


def test_a_tokens_user_claim_wins_over_what_the_client_says(monkeypatch: pytest.MonkeyPatch) -> None:
    context = _context("corp", {"sub": "alice", "email": "alice@corp.test", "scope": "gpt-4o"})
    assert _reserved_user(monkeypatch, {"x-user-id": "victim"}, context, user="victim") == "alice@corp.test"


def test_a_keys_own_user_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    owned = "bg-test-owned-key"
    # the key list ends the base config: one more entry goes after it
    current = runtime(monkeypatch, f"""  - {{id: owned, hash: "{hash_key(owned)}", user: kate}}
limits: {{per_user: [{{window: day, requests: 1}}]}}
""")
    for expected in (None, 429):
        stage = RouteStage(current)
        drive(stage, ProcessingRequest(request_headers=headers({**CHAT, "authorization": f"Bearer {owned}",
                                                                "x-user-id": "someone"})))
        reply = drive(stage, ProcessingRequest(request_body=body({**HELLO, "user": "other"})))
        if expected is None:
            assert reply is not None and reply.WhichOneof("response") == "request_body"
        else:
            status, error, _ = immediate(reply)  # type: ignore[arg-type]
            assert status == 429 and "user 'kate'" in error["error"]["message"]
    asyncio.run(current.limiter.store.close())  # type: ignore[union-attr]


def test_each_subject_gets_its_issuers_limits_else_the_per_key_default() -> None:
    config = parse_config("""
backends: [{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}]
routes: [{model: m, backends: [{backend: oa, model: x}]}]
limits: {per_key: [{window: hour, requests: 10}]}
jwt:
  issuers:
    - {name: a, issuer: "https://a", audiences: [x], jwks_uri: "https://a/jwks", limits: [{window: day, requests: 2}]}
    - {name: b, issuer: "https://b", audiences: [x], jwks_uri: "https://b/jwks"}
    - {name: c, issuer: "https://c", audiences: [x], jwks_uri: "https://c/jwks", limits: []}
""")
    tables = compile_tables(config)
    assert [(r.window, r.limit) for r in tables.key_scope_rules("jwt:a:alice")] == [("day", 2)]
    assert [(r.window, r.limit) for r in tables.key_scope_rules("jwt:b:bob")] == [("hour", 10)]
    assert tables.key_scope_rules("jwt:c:carl") == ()
    assert [(r.window, r.limit) for r in tables.key_scope_rules("some-key")] == [("hour", 10)]


@pytest.mark.parametrize(("issuer", "message"), [
    ('{name: a, issuer: "https://a", audiences: [x]}', "exactly one of `jwks_file` or `jwks_uri`"),
    ('{name: a, issuer: "https://a", audiences: [x], jwks_uri: "https://a/j", jwks_file: j.json}',
     "exactly one of"),
    ('{name: a, issuer: "https://a", audiences: [], jwks_uri: "https://a/j"}', "audiences"),
    ('{name: "a:b", issuer: "https://a", audiences: [x], jwks_uri: "https://a/j"}', "name"),
    ('{name: a, issuer: "https://a", audiences: [x], jwks_uri: "ftp://a/j"}', "https://"),
    ('{name: a, issuer: "https://a", audiences: [x], jwks_uri: "https://a/j", models: [nope]}', "unknown model"),
])
def test_issuer_settings_are_checked_at_load(issuer: str, message: str) -> None:
    from ext_proc.config.loading import ConfigError

    with pytest.raises((ConfigError, ValueError), match=message):
        parse_config(f"""
backends: [{{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}}]
routes: [{{model: m, backends: [{{backend: oa, model: x}}]}}]
jwt: {{issuers: [{issuer}]}}
""")


def test_a_virtual_key_id_can_not_pose_as_a_token_identity() -> None:
    from ext_proc.config.loading import ConfigError

    with pytest.raises((ConfigError, ValueError), match="JWT identities"):
        parse_config(f"""
backends: [{{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}}]
routes: [{{model: m, backends: [{{backend: oa, model: x}}]}}]
virtual_keys: [{{id: "jwt:corp:alice", hash: "{hash_key('bg-x')}"}}]
""")


def test_issuers_compile_once_with_the_route_names(monkeypatch: pytest.MonkeyPatch) -> None:
    corp = compile_issuers(runtime(monkeypatch, JWT).config)[0]
    assert corp.models == frozenset({"gpt-4o", "claude"})
    assert corp.model_names["gpt4"] == "gpt-4o"
