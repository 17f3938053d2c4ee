"""Entra ID client-credentials tokens for Azure OpenAI, against a fake token endpoint on 127.0.0.1.

The endpoint hands out short-lived tokens (six seconds: renewed 3 s in, no longer sent 5.4 s in), so
refresh-before-expiry is observable in real time without slowing the suite much, and a busy machine has seconds, not
fractions of one, between those moments.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from ext_proc.auth import azure as entra
from ext_proc.auth.backend_credentials import credential_for
from ext_proc.config.models import Backend
from ext_proc.errors import Unavailable

from ..eventually import eventually

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "app-client-id"
SECRET = "s3cr3t-client-value"


class FakeTokenEndpoint:
    """`POST /{tenant}/oauth2/v2.0/token`: answers `token-<n>` valid for `lifetime` seconds, or `failure`."""

    def __init__(self, lifetime: float = 6.0) -> None:
        self.lifetime = lifetime
        self.failure: tuple[int, dict] | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                endpoint.requests.append((self.path, form))
                if endpoint.failure is not None:
                    status, payload = endpoint.failure
                else:
                    status, payload = 200, {"token_type": "Bearer", "access_token": f"token-{len(endpoint.requests)}",
                                            "expires_in": endpoint.lifetime, "ext_expires_in": endpoint.lifetime}
                body = orjson.dumps(payload)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def authority(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return entra.token_url(self.authority, TENANT)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    server = FakeTokenEndpoint()
    yield server
    server.close()


@pytest.fixture
def credentials() -> Iterator[list[entra.EntraCredential]]:
    made: list[entra.EntraCredential] = []
    yield made
    for credential in made:
        credential.close()


def _credential(endpoint: FakeTokenEndpoint, made: list[entra.EntraCredential]) -> entra.EntraCredential:
    credential = entra.EntraCredential(lambda: entra.fetch_token(endpoint.url, CLIENT_ID, SECRET), name="aoai",
                                       first_token_wait=5.0)
    made.append(credential)
    return credential




def test_token_request_is_a_client_credentials_grant_for_cognitive_services(
        endpoint: FakeTokenEndpoint, credentials: list[entra.EntraCredential]) -> None:
    credential = _credential(endpoint, credentials)
    assert credential.headers("POST", "https://res.openai.azure.com/x", b"{}") == [("authorization",
                                                                                     "Bearer token-1")]
    path, form = endpoint.requests[0]
    assert path == f"/{TENANT}/oauth2/v2.0/token"
    assert form == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET,
                    "scope": "https://cognitiveservices.azure.com/.default"}


def test_token_is_cached_between_requests(endpoint: FakeTokenEndpoint,
                                          credentials: list[entra.EntraCredential]) -> None:
    endpoint.lifetime = 3600
    credential = _credential(endpoint, credentials)
    headers = [credential.headers("POST", "https://x", b"") for _ in range(1000)]
    assert {tuple(h) for h in headers} == {(("authorization", "Bearer token-1"),)}
    assert len(endpoint.requests) == 1  # reading a cached token never touches the network


def test_token_is_refreshed_in_the_background_before_it_expires(
        endpoint: FakeTokenEndpoint, credentials: list[entra.EntraCredential]) -> None:
    credential = _credential(endpoint, credentials)
    first_fetch = time.monotonic()
    assert credential.headers("POST", "https://x", b"") == [("authorization", "Bearer token-1")]
    eventually(lambda: len(endpoint.requests) >= 2)
    refreshed_after = time.monotonic() - first_fetch
    assert refreshed_after < endpoint.lifetime, "the next token is fetched before the first one expires"  # due 3 s in
    eventually(lambda: credential.headers("POST", "https://x", b"") == [("authorization", "Bearer token-2")])


def test_refresh_failure_keeps_the_valid_token_then_reports_unavailable(
        endpoint: FakeTokenEndpoint, credentials: list[entra.EntraCredential]) -> None:
    credential = _credential(endpoint, credentials)
    assert credential.headers("POST", "https://x", b"") == [("authorization", "Bearer token-1")]
    endpoint.failure = (401, {"error": "invalid_client",
                              "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"})
    eventually(lambda: len(endpoint.requests) >= 2)
    assert credential.headers("POST", "https://x", b"") == [("authorization", "Bearer token-1")]
    def refused() -> Unavailable | None:
        try:
            credential.headers("POST", "https://x", b"")
        except Unavailable as exc:
            return exc
        return None

    unavailable = eventually(refused, what="the expired token is refused")
    assert "invalid_client: AADSTS7000215" in unavailable.message
    assert SECRET not in unavailable.message


def test_no_token_at_start_is_a_503_naming_the_cause(credentials: list[entra.EntraCredential]) -> None:
    unreachable = entra.token_url("http://127.0.0.1:9", TENANT)  # the discard port: nothing listens
    credential = entra.EntraCredential(lambda: entra.fetch_token(unreachable, CLIENT_ID, SECRET, timeout=2),
                                       name="aoai", first_token_wait=5.0)
    credentials.append(credential)
    with pytest.raises(Unavailable) as unavailable:
        credential.headers("POST", "https://x", b"")
    assert unavailable.value.status == 503
    assert "could not be reached" in unavailable.value.message


@pytest.mark.parametrize(("payload", "lifetime", "refresh_in"), [
    ({"access_token": "a", "expires_in": 3600}, 3600, 3300),
    ({"access_token": "a", "expires_in": "3599"}, 3599, 3299),
    ({"access_token": "a", "expires_in": 600}, 600, 300),
    ({"access_token": "a", "expires_in": 86400, "refresh_in": 43200}, 86400, 43200),
])
def test_refresh_is_scheduled_from_the_token_lifetime(payload: dict, lifetime: float, refresh_in: float) -> None:
    token = entra.parse_token(orjson.dumps(payload), issued_at=1000.0)
    assert token.refresh_at == 1000.0 + refresh_in
    assert token.refresh_at < token.usable_until < 1000.0 + lifetime


@pytest.mark.parametrize("body", [b"not json", b'{"expires_in": 10}', b'{"access_token": "a"}',
                                  b'{"access_token": "a", "expires_in": 0}'])
def test_unusable_token_answers_are_errors(body: bytes) -> None:
    with pytest.raises(entra.TokenError):
        entra.parse_token(body, issued_at=0.0)


def test_backend_with_entra_settings_gets_bearer_tokens(endpoint: FakeTokenEndpoint,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AOAI_CLIENT_SECRET", SECRET)
    backend = Backend.model_validate({
        "id": "aoai", "schema": "azure-openai", "base_url": "https://res.openai.azure.com",
        "azure": {"deployment": "gpt4o", "entra": {"tenant_id": TENANT, "client_id": CLIENT_ID,
                                                   "client_secret": {"env": "AOAI_CLIENT_SECRET"},
                                                   "authority": endpoint.authority}}})
    credential = credential_for(backend, None)
    assert isinstance(credential, entra.EntraCredential)
    try:
        # Awaited: built from the configuration, it waits at most the product's one second for the first token,
        # which a busy machine can take to fetch.
        eventually(lambda: credential.headers(
            "POST", "https://res.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
            b"{}") == [("authorization", "Bearer token-1")], what="the first token is sent")
    finally:
        credential.close()
    assert endpoint.requests[0][1]["client_secret"] == SECRET
