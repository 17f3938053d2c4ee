"""Google credentials: the Vertex bearer token is fetched off the request path and renewed before it expires.

A fake OAuth token endpoint on 127.0.0.1 answers the JWT-bearer grant google-auth makes for a service account, and
checks the signed assertion against the public half of an RSA key generated for the test's service-account file.
"""

from __future__ import annotations

import base64
import gc
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ext_proc.auth import gcp
from ext_proc.auth.credentials import CredentialError, StaticCredential
from ext_proc.config.models import Backend
from ext_proc.errors import Unavailable

from ..eventually import eventually

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_EMAIL = "babelgate-test@demo-project.iam.gserviceaccount.com"
FAST = 2.0
"""Seconds within which a request that must not wait for the token endpoint returns. Where a test holds a fetch
(`TokenServer.held`), a request that waited for it would take `HELD_WAIT`; a busy CI machine can stall a request
that waits for nothing for a good part of a second."""
HELD_WAIT = 30.0
"""`first_token_wait` in tests that hold a fetch: far beyond FAST, so a request that waits is told from one that
does not."""


@dataclass
class TokenServer:
    """Issues `token-1`, `token-2`, ... after checking each grant; `fail` the next N requests. While `held` is clear,
    each grant, once checked and counted in `grants`, waits for it to be set before it is answered (a fetch that
    takes as long as the test wants)."""

    public_key: rsa.RSAPublicKey
    url: str = ""
    expires_in: int = 3600
    fail: int = 0
    grants: list[dict] = field(default_factory=list)
    issued: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.held.set()

    def answer(self, form: dict[str, str]) -> tuple[int, dict]:
        with self.lock:
            if form.get("grant_type") != JWT_BEARER:
                return 400, {"error": "unsupported_grant_type"}
            claims = _verified_claims(form.get("assertion", ""), self.public_key)
            self.grants.append(claims)
        self.held.wait(30)
        with self.lock:
            if self.fail:
                self.fail -= 1
                return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            self.issued += 1
            return 200, {"access_token": f"token-{self.issued}", "expires_in": self.expires_in,
                         "token_type": "Bearer"}


def _verified_claims(assertion: str, public_key: rsa.RSAPublicKey) -> dict:
    header, payload, signature = assertion.split(".")
    public_key.verify(_unb64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert json.loads(_unb64(header))["alg"] == "RS256"
    return json.loads(_unb64(payload))


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def token_server(private_key: rsa.RSAPrivateKey) -> Iterator[TokenServer]:
    server_state = TokenServer(private_key.public_key())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            status, body = server_state.answer(form)
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server_state.url = f"http://127.0.0.1:{httpd.server_address[1]}/token"
    yield server_state
    server_state.held.set()  # a fetch still held by the test ends now
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def account_file(tmp_path: Path, private_key: rsa.RSAPrivateKey, token_server: TokenServer) -> Path:
    pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "demo-project", "private_key_id": "0123456789abcdef",
        "private_key": pem, "client_email": CLIENT_EMAIL, "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_server.url,
    }))
    return path


@pytest.fixture
def credentials() -> Iterator[Callable[..., gcp.GoogleBearerCredential]]:
    """Build bearer credentials from a service-account file; every one is closed (its thread stopped) at the end."""
    made: list[gcp.GoogleBearerCredential] = []

    def make(path: Path, **options: object) -> gcp.GoogleBearerCredential:
        loaded = gcp.service_account_credentials(path, "test")
        made.append(gcp.GoogleBearerCredential(lambda: loaded, f"test-{len(made)}", **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for credential in made:
        credential.close()


def _vertex_backend(**gcp_settings: object) -> Backend:
    return Backend.model_validate({"id": "vertex-a", "schema": "vertex-gemini",
                                   "gcp": {"project": "demo-project", "location": "us-central1", **gcp_settings}})


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def _bearer(credential: gcp.GoogleBearerCredential) -> str:
    (header,) = credential.headers("POST", "https://us-central1-aiplatform.googleapis.com/v1/x", b"{}")
    assert header[0] == "authorization"
    return header[1]




def test_service_account_grant_is_signed_and_the_token_sent_as_bearer(
        account_file: Path, token_server: TokenServer) -> None:
    credential = gcp.make_credential(_vertex_backend(service_account_file=str(account_file)), None)
    try:
        assert isinstance(credential, gcp.GoogleBearerCredential)
        assert _bearer(credential) == "Bearer token-1"
    finally:
        credential.close()
    (claims,) = token_server.grants
    assert claims["iss"] == CLIENT_EMAIL
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"


def test_first_token_is_fetched_when_the_credential_is_made(
        account_file: Path, token_server: TokenServer, credentials: Callable[..., gcp.GoogleBearerCredential]) -> None:
    credential = credentials(account_file)
    eventually(lambda: credential.refreshes == 1)  # before any request asked for it
    assert token_server.issued == 1
    token_server.held.clear()  # from here, a request that fetched, or waited for a fetch, would hang
    token, elapsed = _timed(lambda: _bearer(credential))
    assert token == "Bearer token-1"
    assert elapsed < FAST
    assert len(token_server.grants) == 1, "a request with a token at hand must not touch the network"


def test_first_request_waits_for_a_fetch_under_way(
        account_file: Path, token_server: TokenServer, credentials: Callable[..., gcp.GoogleBearerCredential]) -> None:
    token_server.held.clear()  # the first fetch is not answered until released below
    credential = credentials(account_file, first_token_wait=HELD_WAIT)
    tokens: list[str] = []
    request = threading.Thread(target=lambda: tokens.append(_bearer(credential)))
    request.start()
    eventually(lambda: len(token_server.grants) == 1, what="the first fetch reaches the token endpoint")
    assert not tokens  # no token to be had while the fetch is held
    token_server.held.set()
    request.join(timeout=30)
    assert tokens == ["Bearer token-1"], "the request asked while the fetch was under way gets its token"
    time.sleep(0.4)  # the time a second fetch, wrongly caused by the waiting request, would need to show
    assert len(token_server.grants) == 1, "waiting for the first token must not cause a second fetch"


def test_token_is_renewed_in_the_background_before_it_expires(
        account_file: Path, token_server: TokenServer, credentials: Callable[..., gcp.GoogleBearerCredential]) -> None:
    """A token that can be sent for 8 s (it lives 8 s beyond the skew) is renewed halfway, 4 s in, and a renewal the
    token endpoint holds never makes a request wait meanwhile (the 4 s token 1 has left are a busy machine's margin)."""
    token_server.expires_in = int(gcp.EXPIRY_SKEW) + 8
    credential = credentials(account_file, first_token_wait=HELD_WAIT)
    eventually(lambda: credential.refreshes == 1)
    assert _bearer(credential) == "Bearer token-1"
    token_server.held.clear()  # the renewal is not answered until released below
    eventually(lambda: len(token_server.grants) == 2, what="the renewal reaches the token endpoint")
    tokens: list[str] = []
    requests = threading.Thread(target=lambda: tokens.extend(_bearer(credential) for _ in range(50)))
    requests.start()
    requests.join(timeout=20)  # had a request waited for the renewal, it would still be waiting
    stalled = requests.is_alive()
    assert len(token_server.grants) == 2, "one renewal under way, not one per request"
    token_server.held.set()
    requests.join(timeout=30)
    assert not stalled, "a request waited for the held renewal"
    assert tokens == ["Bearer token-1"] * 50  # the current token, while its renewal is still on its way
    eventually(lambda: _bearer(credential) == "Bearer token-2", what="the renewed token is served")
    time.sleep(0.4)  # the time a third fetch, wrongly asked for by the requests made during the renewal, would need
    assert credential.refreshes == 2 and len(token_server.grants) == 2, "one renewal, whatever asked meanwhile"


def test_refresh_is_scheduled_by_margin_or_half_life(
        account_file: Path, token_server: TokenServer, credentials: Callable[..., gcp.GoogleBearerCredential]) -> None:
    token_server.expires_in = 3600
    credential = credentials(account_file)
    eventually(lambda: credential.refreshes == 1)
    _token, expires_at, refresh_at = credential._keeper._current  # type: ignore[misc]
    assert expires_at - refresh_at == pytest.approx(gcp.REFRESH_MARGIN, abs=1)


def test_failing_token_endpoint_answers_503_at_once_and_keeps_retrying(
        account_file: Path, token_server: TokenServer, credentials: Callable[..., gcp.GoogleBearerCredential]) -> None:
    token_server.fail = 10**6  # until told otherwise below
    credential = credentials(account_file, retry_delays=(0.2,), first_token_wait=HELD_WAIT)
    with pytest.raises(Unavailable) as unavailable:
        _bearer(credential)  # waits for the first fetch, which fails
    assert "invalid_grant" in unavailable.value.message
    assert "PRIVATE KEY" not in unavailable.value.message
    eventually(lambda: len(token_server.grants) >= 3, what="failed fetches are retried")
    token_server.held.clear()  # the next retry is not answered until released below
    start = time.perf_counter()
    with pytest.raises(Unavailable):
        _bearer(credential)
    assert time.perf_counter() - start < FAST, "while the endpoint fails, requests must not wait for a retry"
    token_server.fail = 0
    token_server.held.set()
    eventually(lambda: credential.refreshes == 1)
    assert _bearer(credential) == "Bearer token-1"


def test_a_token_is_not_sent_once_it_is_about_to_expire(
        account_file: Path, token_server: TokenServer, credentials: Callable[..., gcp.GoogleBearerCredential]) -> None:
    token_server.expires_in = int(gcp.EXPIRY_SKEW) + 4  # can be sent for 4 s (its renewal would be due 2 s in)
    # A short wait: only the requests after the token went out of use wait, for a token that never comes.
    credential = credentials(account_file, first_token_wait=0.2)
    eventually(lambda: credential.refreshes == 1)
    token_server.held.clear()  # no renewal can land, even one that starts before the close
    credential.close()  # no more renewals
    assert _bearer(credential) == "Bearer token-1"

    def refused() -> bool:
        try:
            _bearer(credential)
        except Unavailable:
            return True
        return False

    eventually(refused, what="the token is no longer sent, 10 s before it expires")
    _token, expires_at, _refresh_at = credential._keeper._current  # type: ignore[misc]
    assert time.time() < expires_at, "refused while the token was still valid, not only once it had expired"


def test_refresher_thread_stops_when_the_credential_is_dropped(
        account_file: Path, token_server: TokenServer) -> None:
    loaded = gcp.service_account_credentials(account_file, "test")
    credential = gcp.GoogleBearerCredential(lambda: loaded, "dropped-one")
    eventually(lambda: token_server.issued == 1)
    (thread,) = [t for t in threading.enumerate() if t.name == "gcp-token-dropped-one"]
    del credential
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_application_default_credentials_are_used_without_a_file(
        account_file: Path, token_server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(account_file))
    credential = gcp.make_credential(_vertex_backend(), None)
    try:
        assert _bearer(credential) == "Bearer token-1"  # type: ignore[arg-type]
    finally:
        credential.close()  # type: ignore[attr-defined]
    assert token_server.grants[0]["iss"] == CLIENT_EMAIL


@pytest.mark.parametrize(("content", "reason"), [(None, "can't read"), ("{not json", "not a service-account key"),
                                                 ('{"type": "service_account"}', "not a service-account key")])
def test_bad_service_account_file_is_a_configuration_error(tmp_path: Path, content: str | None, reason: str) -> None:
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CredentialError) as refused:
        gcp.make_credential(_vertex_backend(service_account_file=str(path)), None)
    assert reason in str(refused.value)
    assert str(path) in str(refused.value)


def test_vertex_backend_refuses_an_api_key() -> None:
    with pytest.raises(CredentialError, match="remove api_key"):
        gcp.make_credential(_vertex_backend(), "AIza-not-for-vertex")


def test_ai_studio_key_goes_in_x_goog_api_key() -> None:
    backend = Backend.model_validate({"id": "studio", "schema": "gemini"})
    credential = gcp.make_credential(backend, "AIza-test-key")
    assert isinstance(credential, StaticCredential)
    assert credential.headers("POST", "https://generativelanguage.googleapis.com/v1beta/x", b"") == [
        ("x-goog-api-key", "AIza-test-key")]
    assert gcp.make_credential(backend, None).headers("POST", "https://x", b"") == []
