"""Verified identities through the real Envoy: its `jwt_authn` filter verifies tokens of a test issuer (JWKS served on
127.0.0.1 and fetched by Envoy, or read from a file), the route stage maps their claims to team, models and limits,
side by side with virtual keys; per-user limits count a verified user, never one the client names unless its key is
trusted to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from ..jwt_issuer import TokenIssuer
from .gateways import Gateway, GatewayBuilder

AUDIENCE = "babelgate"
HELLO = [{"role": "user", "content": "hi"}]


@dataclass
class Setup:
    gateway: Gateway
    corp: TokenIssuer
    """Served JWKS (`jwks_uri`): team and models from claims, 3 requests per hour per subject."""
    files: TokenIssuer
    """JWKS file: every model, the issuer's team."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("jwt")
    corp = TokenIssuer("https://id.corp.test/realms/corp")
    files = TokenIssuer("https://login.files.test/", kid="files-1")
    with GatewayBuilder(workdir) as build:
        jwks_uri = corp.serve()
        build.on_stop(corp.stop)
        build.backend("oa", build.demo("jwt-openai-a"))
        build.backend("ob", build.demo("jwt-openai-b"))
        build.route("m", ("oa", "gpt-4o-mini"), ("ob", "gpt-4o-mini"), aliases=["mm"],
                    rules=[{"when": {"team": "platform"}, "backends": ["ob"]}])
        build.route("other", ("oa", "gpt-4o"))
        build.key("plain")
        build.key("owned", user="kate")
        build.key("service", asserts_users=True)
        build.set(
            teams=[{"id": "small", "limits": [{"window": "hour", "requests": 2}]}],
            limits={"per_user": [{"window": "hour", "requests": 4}]},
            jwt={"issuers": [
                {"name": "corp", "issuer": corp.issuer, "audiences": [AUDIENCE, "other-app"], "jwks_uri": jwks_uri,
                 "cache_duration": "5m", "claims": {"team": "team", "models": "scope"},
                 "limits": [{"window": "hour", "requests": 3}]},
                {"name": "files", "issuer": files.issuer, "audiences": [AUDIENCE],
                 "jwks_file": str(files.write_jwks(workdir / "files-jwks.json")), "team": "file-team"},
            ]})
        yield Setup(build.start(), corp, files)


def _client(setup: Setup, token: str) -> openai.OpenAI:
    return setup.gateway.client(api_key=token)


def _corp(setup: Setup, subject: str, scope: str = "openid m other", **claims: object) -> str:
    return setup.corp.token(setup.corp.claims(AUDIENCE, subject, scope=scope, **claims))


def test_a_valid_token_is_admitted_with_its_team(setup: Setup) -> None:
    raw = _client(setup, _corp(setup, "dora", team="platform")).chat.completions.with_raw_response.create(
        model="m", messages=HELLO)
    assert raw.headers["x-babelgate-backend"] == "ob"  # the team's routing rule: the team claim was believed
    raw = _client(setup, _corp(setup, "erin")).chat.completions.with_raw_response.create(model="m", messages=HELLO)
    assert raw.headers["x-babelgate-backend"] == "oa"
    assert setup.corp.fetches >= 1  # Envoy fetched the issuer's JWKS itself


def test_a_token_from_a_jwks_file_is_admitted(setup: Setup) -> None:
    token = setup.files.token(setup.files.claims(AUDIENCE, "frank"))
    assert _client(setup, token).chat.completions.create(model="other", messages=HELLO).choices


def test_each_subject_has_the_issuers_limits(setup: Setup) -> None:
    client = _client(setup, _corp(setup, "carol"))
    for _ in range(3):
        client.chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="m", messages=HELLO)
    assert "key 'jwt:corp:carol'" in raised.value.body["message"]
    assert _client(setup, _corp(setup, "carol-2")).chat.completions.create(model="m", messages=HELLO).choices


def test_a_team_claim_shares_the_teams_limits(setup: Setup) -> None:
    _client(setup, _corp(setup, "gil", team="small")).chat.completions.create(model="m", messages=HELLO)
    _client(setup, _corp(setup, "hal", team="small")).chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as raised:
        _client(setup, _corp(setup, "ivy", team="small")).chat.completions.create(model="m", messages=HELLO)
    assert "team 'small'" in raised.value.body["message"]


@pytest.mark.parametrize("kind", ["expired", "wrong audience", "wrong issuer", "unsigned", "tampered",
                                  "unknown key", "no expiry"])
def test_an_invalid_token_is_a_401(setup: Setup, kind: str) -> None:
    corp = setup.corp
    good = corp.claims(AUDIENCE, "mallory", scope="m")
    stranger = TokenIssuer("https://evil.test/")
    token = {
        "expired": lambda: corp.token(corp.claims(AUDIENCE, "mallory", lifetime=-600, scope="m")),
        "wrong audience": lambda: corp.token(corp.claims("someone-else", "mallory", scope="m")),
        "wrong issuer": lambda: stranger.token(stranger.claims(AUDIENCE, "mallory", scope="m")),
        "unsigned": lambda: corp.unsigned(good),
        "tampered": lambda: corp.tampered(good, sub="admin", team="platform"),
        "unknown key": lambda: TokenIssuer(corp.issuer, kid=corp.kid).token(good),
        "no expiry": lambda: corp.token({k: v for k, v in good.items() if k != "exp"}),
    }[kind]()
    with pytest.raises(openai.AuthenticationError) as raised:
        _client(setup, token).chat.completions.create(model="m", messages=HELLO)
    assert raised.value.body["code"] == "invalid_token"
    assert raised.value.body["type"] == "authentication_error"


def test_a_token_whose_claim_names_no_allowed_model_is_a_403(setup: Setup) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        _client(setup, _corp(setup, "nina", scope="openid profile")).chat.completions.create(model="m",
                                                                                             messages=HELLO)
    narrow = _client(setup, _corp(setup, "otto", scope="openid mm"))  # an alias names its route
    assert narrow.chat.completions.create(model="m", messages=HELLO).choices
    with pytest.raises(openai.PermissionDeniedError):
        narrow.chat.completions.create(model="other", messages=HELLO)
    assert [model.id for model in narrow.models.list()] == ["m"]


def test_no_token_and_no_key_is_a_401(setup: Setup) -> None:
    response = httpx.post(setup.gateway.url + "/v1/chat/completions", json={"model": "m", "messages": HELLO})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_virtual_keys_work_beside_tokens(setup: Setup) -> None:
    assert setup.gateway.client("plain").chat.completions.create(model="m", messages=HELLO).choices
    with pytest.raises(openai.AuthenticationError):  # an unknown key is still the route stage's 401
        setup.gateway.client(api_key="bg-not-a-key").chat.completions.create(model="m", messages=HELLO)


def test_a_token_and_a_key_together_are_refused(setup: Setup) -> None:
    response = httpx.post(setup.gateway.url + "/v1/chat/completions", json={"model": "m", "messages": HELLO},
                          headers={"authorization": f"Bearer {_corp(setup, 'pat')}",
                                   "x-api-key": setup.gateway.keys["plain"]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ambiguous_credentials"


def test_a_client_can_not_name_its_user_unless_its_key_asserts_users(setup: Setup) -> None:
    plain = setup.gateway.client("plain")
    for _ in range(6):  # over the per-user limit: no user is counted, whatever the client says
        plain.chat.completions.create(model="m", messages=HELLO, user="victim",
                                      extra_headers={"x-user-id": "victim"})
    owned = setup.gateway.client("owned")
    for index in range(4):  # the key's own user, however the client renames itself
        owned.chat.completions.create(model="m", messages=HELLO, user=f"u-{index}",
                                      extra_headers={"x-user-id": f"rotated-{index}"})
    with pytest.raises(openai.RateLimitError) as raised:
        owned.chat.completions.create(model="m", messages=HELLO, extra_headers={"x-user-id": "fresh"})
    assert "user 'kate'" in raised.value.body["message"]
    service = setup.gateway.client("service")
    for _ in range(4):
        service.chat.completions.create(model="m", messages=HELLO, extra_headers={"x-user-id": "victim"})
    with pytest.raises(openai.RateLimitError) as raised:  # a trusted service names its users
        service.chat.completions.create(model="m", messages=HELLO, user="victim")
    assert "user 'victim'" in raised.value.body["message"]


def test_a_tokens_user_is_its_subject_whatever_the_client_says(setup: Setup) -> None:
    token = setup.files.token(setup.files.claims(AUDIENCE, "quinn"))
    client = _client(setup, token)
    for index in range(4):
        client.chat.completions.create(model="other", messages=HELLO, extra_headers={"x-user-id": f"r-{index}"})
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="other", messages=HELLO, user="someone-else")
    assert "user 'quinn'" in raised.value.body["message"]
