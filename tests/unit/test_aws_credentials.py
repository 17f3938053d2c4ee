"""AWS credentials for Bedrock: where they come from, that the SigV4 signature is right, and that refreshing them
never waits on the network in the request path.

Signatures are checked twice: recomputed by botocore's own SigV4 code for the same request and timestamp, and
recomputed independently from the published algorithm. Web identity runs against a fake STS on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from ext_proc.auth import aws
from ext_proc.auth.backend_credentials import AWS_HEADERS, credential_for
from ext_proc.auth.credentials import CredentialError, StaticCredential
from ext_proc.config.models import Backend
from ext_proc.errors import Unavailable

from ..eventually import eventually

REGION = "eu-west-3"
URL = "https://bedrock-runtime.eu-west-3.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
ARN_URL = ("https://bedrock-runtime.eu-west-3.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A123456789012%3A"
           "inference-profile%2Feu.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream")
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
AUTHORIZATION = re.compile(r"^AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
                           r"bedrock/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
                           r"Signature=(?P<sig>[0-9a-f]{64})$")
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-gateway"
_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_STS", "AWS_BEARER_TOKEN_BEDROCK")


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from the machine running the tests: empty shared files, no instance metadata."""
    for name in _AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _backend(schema: str = "bedrock-converse", **aws_settings: object) -> Backend:
    return Backend.model_validate({"id": "bedrock-eu", "schema": schema, "aws": {"region": REGION, **aws_settings}})


def _credential(**aws_settings: object) -> aws.SigV4Credential:
    credential = aws.make_credential(_backend(**aws_settings), None)
    assert isinstance(credential, aws.SigV4Credential)
    return credential


def _signed(credential: object, url: str = URL, body: bytes = BODY) -> dict[str, str]:
    headers = dict(credential.headers("POST", url, body))  # type: ignore[attr-defined]
    assert set(headers) <= AWS_HEADERS
    return headers


def _key_of(headers: dict[str, str]) -> str:
    match = AUTHORIZATION.match(headers["authorization"])
    assert match is not None, headers["authorization"]
    return match["key"]


# --- signatures ---------------------------------------------------------------------------------------------------


def _botocore_signature(url: str, body: bytes, headers: dict[str, str], secret: str, access_key: str) -> str:
    """botocore's own SigV4 over the same request, at the timestamp the signature claims."""
    request = AWSRequest(method="POST", url=url, data=body)
    request.headers["X-Amz-Date"] = headers["x-amz-date"]
    if "x-amz-security-token" in headers:
        request.headers["X-Amz-Security-Token"] = headers["x-amz-security-token"]
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(ReadOnlyCredentials(access_key, secret, headers.get("x-amz-security-token")), "bedrock", REGION)
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


def _spec_signature(url: str, body: bytes, headers: dict[str, str], secret: str, signed: list[str]) -> str:
    """SigV4 from the published algorithm, without botocore: path segments encoded a second time (non-S3)."""
    parts = urlsplit(url)
    values = {"host": parts.netloc, **headers}
    canonical = "\n".join([
        "POST", quote(parts.path, safe="/~"), "",
        "".join(f"{name}:{values[name].strip()}\n" for name in signed), ";".join(signed),
        hashlib.sha256(body).hexdigest()])
    amz_date = headers["x-amz-date"]
    scope = f"{amz_date[:8]}/{REGION}/bedrock/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], REGION, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("url", [URL, ARN_URL], ids=["model_id", "inference_profile_arn"])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBYaDH+session/token=="], ids=["keys", "session"])
def test_signature_matches_botocore_and_the_published_algorithm(
        monkeypatch: pytest.MonkeyPatch, url: str, token: str | None) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    headers = _signed(_credential(), url)
    match = AUTHORIZATION.match(headers["authorization"])
    assert match is not None
    assert match["key"] == "AKIAIOSFODNN7EXAMPLE" and match["region"] == REGION
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["x-amz-date"]) and match["date"] == headers["x-amz-date"][:8]
    signed = match["signed"].split(";")
    assert signed == (["host", "x-amz-date", "x-amz-security-token"] if token else ["host", "x-amz-date"])
    assert headers.get("x-amz-security-token") == token
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert match["sig"] == _botocore_signature(url, BODY, headers, secret, "AKIAIOSFODNN7EXAMPLE")
    assert match["sig"] == _spec_signature(url, BODY, headers, secret, signed)


def test_signature_covers_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    headers = _signed(_credential())
    signature = AUTHORIZATION.match(headers["authorization"])["sig"]  # type: ignore[index]
    assert signature != _spec_signature(URL, BODY + b" ", headers, "secret", ["host", "x-amz-date"])


# --- sources ------------------------------------------------------------------------------------------------------


def test_api_key_becomes_a_bearer_token_in_both_schemas() -> None:
    for schema in ("bedrock-converse", "bedrock-anthropic"):
        credential = credential_for(_backend(schema), "bedrock-api-key-ABSKexample")
        assert isinstance(credential, StaticCredential)
        assert credential.headers("POST", URL, BODY) == [("authorization", "Bearer bedrock-api-key-ABSKexample")]


def test_both_schemas_sign_with_sigv4_without_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    for schema in ("bedrock-converse", "bedrock-anthropic"):
        credential = credential_for(_backend(schema), None)
        assert _key_of(_signed(credential)) == "AKIAENVKEY"
        assert credential.method == "env"


def test_explicit_profile_in_a_credentials_file_wins_over_environment_keys(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n\n"
                           "[team]\naws_access_key_id = AKIATEAM\naws_secret_access_key = s2\n"
                           "aws_session_token = team-token\n")
    headers = _signed(_credential(profile="team", credentials_file=str(credentials)))
    assert _key_of(headers) == "AKIATEAM"
    assert headers["x-amz-security-token"] == "team-token"


def test_credentials_file_default_profile(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n")
    assert _key_of(_signed(_credential(credentials_file=str(credentials)))) == "AKIADEFAULT"


def test_profile_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile ops]\naws_access_key_id = AKIAOPS\naws_secret_access_key = s3\nregion = us-east-1\n")
    assert _key_of(_signed(_credential(profile="ops", config_file=str(config)))) == "AKIAOPS"


def test_no_credentials_anywhere_fails_at_load_with_a_clear_message() -> None:
    with pytest.raises(CredentialError, match=r"backend 'bedrock-eu'\.aws: no AWS credentials found"):
        _credential()


def test_unknown_profile_fails_at_load(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n")
    with pytest.raises(CredentialError, match="missing"):
        _credential(profile="missing", credentials_file=str(credentials))


def test_web_identity_needs_both_token_file_and_role(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="both `web_identity_token_file` and `role_arn`"):
        _credential(role_arn=ROLE_ARN)


# --- web identity against a fake STS ------------------------------------------------------------------------------


class FakeSts:
    """AssumeRoleWithWebIdentity on 127.0.0.1: each call hands out new keys, valid for `lifetime` seconds."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.lifetime = 3600.0
        self.delay = 0.0
        self.fail = False
        self.held = threading.Event()
        """Cleared: every answer waits until it is set again (a refresh that takes as long as the test wants)."""
        self.held.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["content-length"])).decode())
                sts.calls.append({key: values[0] for key, values in form.items()})
                time.sleep(sts.delay)
                sts.held.wait(30)
                if sts.fail:
                    self._reply(400, "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>"
                                     "<Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Incorrect token "
                                     "audience</Message></Error><RequestId>r-1</RequestId></ErrorResponse>")
                    return
                number = len(sts.calls)
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=sts.lifetime)
                self._reply(200, f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIAFAKE{number:04d}</AccessKeyId>
      <SecretAccessKey>fake-secret-{number}</SecretAccessKey>
      <SessionToken>fake-session-{number}</SessionToken>
      <Expiration>{expires.strftime("%Y-%m-%dT%H:%M:%SZ")}</Expiration>
    </Credentials>
    <SubjectFromWebIdentityToken>system:serviceaccount:ai:gateway</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <AssumedRoleId>AROAFAKE:gateway</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/bedrock-gateway/gateway</Arn>
    </AssumedRoleUser>
    <Audience>sts.amazonaws.com</Audience>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>r-{number}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>""")

            def _reply(self, status: int, xml: str) -> None:
                body = xml.encode()
                self.send_response(status)
                self.send_header("content-type", "text/xml")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def sts() -> Iterator[FakeSts]:
    server = FakeSts()
    yield server
    server.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("eyJhbGciOiJSUzI1NiJ9.first-token.sig")
    return path


def _web_identity(sts: FakeSts, token_file: Path, **options: object) -> aws.SigV4Credential:
    settings = _backend(web_identity_token_file=str(token_file), role_arn=ROLE_ARN, sts_endpoint=sts.url).aws
    assert settings is not None
    credentials = aws.resolve_credentials(settings, "backend 'bedrock-eu'")
    return aws.SigV4Credential(credentials, REGION, **options)  # type: ignore[arg-type]


def test_web_identity_assumes_the_role_with_the_token_file(sts: FakeSts, token_file: Path) -> None:
    credential = _credential(web_identity_token_file=str(token_file), role_arn=ROLE_ARN, sts_endpoint=sts.url)
    assert sts.calls == []  # nothing fetched at load
    headers = _signed(credential)
    assert _key_of(headers) == "ASIAFAKE0001"
    assert headers["x-amz-security-token"] == "fake-session-1"
    (call,) = sts.calls
    assert call["Action"] == "AssumeRoleWithWebIdentity"
    assert call["RoleArn"] == ROLE_ARN
    assert call["WebIdentityToken"] == "eyJhbGciOiJSUzI1NiJ9.first-token.sig"
    assert credential.method == "assume-role-with-web-identity"
    signature = AUTHORIZATION.match(headers["authorization"])["sig"]  # type: ignore[index]
    assert signature == _spec_signature(URL, BODY, headers, "fake-secret-1",
                                        ["host", "x-amz-date", "x-amz-security-token"])


def test_web_identity_from_environment_variables_uses_the_sts_endpoint(
        monkeypatch: pytest.MonkeyPatch, sts: FakeSts, token_file: Path) -> None:
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    credential = _credential(sts_endpoint=sts.url)
    assert _key_of(_signed(credential)) == "ASIAFAKE0001"
    assert sts.calls[0]["RoleArn"] == ROLE_ARN


def test_valid_credentials_are_reused_without_calling_sts_again(sts: FakeSts, token_file: Path) -> None:
    credential = _web_identity(sts, token_file, retry_interval=0.0)
    keys = {_key_of(_signed(credential)) for _ in range(200)}
    assert keys == {"ASIAFAKE0001"}
    assert len(sts.calls) == 1


def test_short_lived_credentials_refresh_at_most_once_per_interval(sts: FakeSts, token_file: Path) -> None:
    """STS credentials inside botocore's refresh window would make botocore call STS on every request; here one
    background refresh per `retry_interval` at most."""
    sts.lifetime = 300  # inside the 15-minute refresh window from the start
    now = [1000.0]
    credential = _web_identity(sts, token_file, retry_interval=30.0, clock=lambda: now[0])
    assert _key_of(_signed(credential)) == "ASIAFAKE0001"
    for _ in range(300):
        _signed(credential)
    assert len(sts.calls) == 1
    now[0] += 31
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.rotated-token.sig")
    _signed(credential)  # starts one background refresh
    eventually(lambda: _key_of(_signed(credential)) == "ASIAFAKE0002")
    for _ in range(300):
        _signed(credential)
    assert len(sts.calls) == 2
    assert sts.calls[1]["WebIdentityToken"] == "eyJhbGciOiJSUzI1NiJ9.rotated-token.sig"  # the token file is re-read


def test_a_slow_refresh_never_blocks_a_request(sts: FakeSts, token_file: Path) -> None:
    sts.lifetime = 300
    credential = _web_identity(sts, token_file, retry_interval=0.0)
    assert _key_of(_signed(credential)) == "ASIAFAKE0001"
    sts.held.clear()  # the refresh STS is asked for now does not answer until released below
    keys: list[str] = []
    signing = threading.Thread(target=lambda: keys.extend(_key_of(_signed(credential)) for _ in range(50)))
    signing.start()
    signing.join(timeout=20)  # had a request waited for the refresh, it would still be waiting
    stalled = signing.is_alive()
    sts.held.set()
    signing.join(timeout=20)
    assert not stalled, "a request waited for the credential refresh"
    assert set(keys) == {"ASIAFAKE0001"}  # the current credentials, while the refresh is still on its way
    eventually(lambda: len(sts.calls) == 2, timeout=10)  # one refresh in flight, not one per request
    assert len(sts.calls) == 2
    eventually(lambda: _key_of(_signed(credential)) == "ASIAFAKE0002", timeout=10)


def test_first_fetch_failure_is_a_503_then_recovers(sts: FakeSts, token_file: Path) -> None:
    sts.fail = True
    now = [0.0]
    credential = _web_identity(sts, token_file, retry_interval=10.0, clock=lambda: now[0])
    with pytest.raises(Unavailable) as unavailable:
        _signed(credential)
    assert unavailable.value.status == 503
    assert "InvalidIdentityToken" in unavailable.value.message
    assert "first-token" not in unavailable.value.message
    with pytest.raises(Unavailable):
        _signed(credential)  # within the retry interval: fails fast, no new STS call
    assert len(sts.calls) == 1
    sts.fail = False
    now[0] += 11
    assert _key_of(_signed(credential)) == "ASIAFAKE0002"


def test_prefetch_fetches_before_the_first_request(sts: FakeSts, token_file: Path) -> None:
    credential = _web_identity(sts, token_file)
    credential.prefetch()
    eventually(lambda: len(sts.calls) == 1)
    assert _key_of(_signed(credential)) == "ASIAFAKE0001"
    assert len(sts.calls) == 1


