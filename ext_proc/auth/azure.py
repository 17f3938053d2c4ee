"""Azure OpenAI credentials: a static key in `api-key`, or Microsoft Entra ID (Azure AD) tokens from the OAuth 2.0
client-credentials flow, kept fresh by a background thread so that requests only ever read a cached token.

How the hot path stays off the network:

- The credential starts a daemon thread when it is built. The thread fetches a token at once, then sleeps until
  the token is due for renewal (the server's `refresh_in` if it sends one, otherwise halfway through the token's
  life or five minutes before expiry, whichever is later) and fetches the next one. A failed fetch is retried with
  a growing pause (1 s doubling up to 60 s); the old token keeps being used while it is still valid.
- `headers()` reads the cached token: an attribute read, no lock, no I/O. Only while the very first fetch is under
  way (the first moments after start-up) does it wait, at most `first_token_wait` seconds; if there is then no
  token, or the last one expired because every refresh failed, it raises `Unavailable` (503), which Envoy retries on
  the next backend of the chain.

Secrets never leave this module: the client secret is only put in the token request body, and errors name the
token endpoint's error code (`invalid_client`, ...) and description, never the secret or the token.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..config.models import Backend
from ..errors import Unavailable
from .credentials import Credential, StaticCredential, read_secret

log = logging.getLogger(__name__)

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
FETCH_TIMEOUT = 10.0
FIRST_TOKEN_WAIT = 1.0
EXPIRY_SKEW = 30.0
"""A token is no longer sent this many seconds (at most a tenth of its life) before it expires: it could expire
on the way."""
MIN_REFRESH_AHEAD = 300.0
MAX_RETRY_PAUSE = 60.0


class TokenError(Exception):
    """The token endpoint could not be reached or refused the credentials."""


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    usable_until: float
    """time.monotonic() after which the token is no longer sent (shortly before it expires)."""
    refresh_at: float
    """time.monotonic() at which the next token should be fetched."""


def make_credential(backend: Backend, secret: str | None) -> Credential:
    """An `api-key` for a static secret, or Entra ID bearer tokens when `azure.entra` is configured."""
    entra = backend.azure.entra if backend.azure is not None else None
    if entra is None:
        return StaticCredential((("api-key", secret),) if secret else ())
    client_secret = read_secret(entra.client_secret, f"backend {backend.id!r} azure.entra.client_secret")
    url = token_url(entra.authority, entra.tenant_id)
    client_id = entra.client_id
    return EntraCredential(lambda: fetch_token(url, client_id, client_secret), name=backend.id)


def token_url(authority: str, tenant_id: str) -> str:
    return f"{authority.rstrip('/')}/{urllib.parse.quote(tenant_id, safe='')}/oauth2/v2.0/token"


def fetch_token(url: str, client_id: str, client_secret: str, scope: str = COGNITIVE_SERVICES_SCOPE,
                timeout: float = FETCH_TIMEOUT, ssl_context: ssl.SSLContext | None = None,
                clock: Callable[[], float] = time.monotonic) -> Token:
    """One client-credentials token request (blocking: call it from the refresher thread, never a request)."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                   "client_secret": client_secret, "scope": scope}).encode()
    request = urllib.request.Request(url, data=form, method="POST", headers={
        "content-type": "application/x-www-form-urlencoded", "accept": "application/json"})
    started = clock()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise TokenError(f"the token endpoint answered HTTP {exc.code}: {_oauth_error(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TokenError(f"the token endpoint could not be reached: {reason}") from None
    return parse_token(body, started)


def parse_token(body: bytes, issued_at: float) -> Token:
    """`{"access_token", "expires_in", "refresh_in"?}` -> Token; `expires_in` may be a number or a string."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict) or not isinstance(payload.get("access_token"), str):
        raise TokenError("the token endpoint's answer has no access_token")
    lifetime = _seconds(payload.get("expires_in"))
    if lifetime is None or lifetime <= 0:
        raise TokenError("the token endpoint's answer has no usable expires_in")
    refresh_in = _seconds(payload.get("refresh_in"))
    if refresh_in is None or not 0 < refresh_in < lifetime:
        refresh_in = max(lifetime / 2, lifetime - MIN_REFRESH_AHEAD)
    usable_until = issued_at + lifetime - min(EXPIRY_SKEW, lifetime / 10)
    return Token(payload["access_token"], usable_until, min(issued_at + refresh_in, usable_until))


class EntraCredential:
    """Bearer tokens for `scope`, refreshed in the background; see the module docstring."""

    def __init__(self, fetch: Callable[[], Token], *, name: str = "azure",
                 first_token_wait: float = FIRST_TOKEN_WAIT, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._name = name
        self._first_token_wait = first_token_wait
        self._clock = clock
        self._token: Token | None = None
        self._last_error = "no token has been fetched yet"
        self._first_attempt_done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"entra-token-{name}", daemon=True)
        self._thread.start()

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]:
        token = self._token
        if token is None and self._first_attempt_done.wait(self._first_token_wait):
            token = self._token
        if token is None or self._clock() >= token.usable_until:
            raise Unavailable(f"No valid Entra ID token for backend {self._name!r} yet: {self._last_error}.",
                              code="upstream_credentials_unavailable")
        return [("authorization", "Bearer " + token.value)]

    def close(self) -> None:
        """Stop the refresher thread (tests, config reloads); a stopped credential keeps its last token."""
        self._stop.set()
        self._thread.join(timeout=FETCH_TIMEOUT + 1)

    def _run(self) -> None:
        pause = 1.0
        while not self._stop.is_set():
            try:
                token = self._fetch()
            except TokenError as exc:
                self._last_error = str(exc)
                log.warning("Entra ID token for backend %r: %s; retrying in %.0f s", self._name, exc, pause)
                wait, pause = pause, min(pause * 2, MAX_RETRY_PAUSE)
            else:
                self._token = token
                pause = 1.0
                wait = max(0.0, token.refresh_at - self._clock())
            self._first_attempt_done.set()
            self._stop.wait(wait)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _oauth_error(body: bytes) -> str:
    """`{"error": "invalid_client", "error_description": "AADSTS..."}` -> "invalid_client: AADSTS..." (first line)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "no OAuth error in the answer"
    if not isinstance(payload, dict):
        return "no OAuth error in the answer"
    error = payload.get("error")
    code = error if isinstance(error, str) else "error"
    description = payload.get("error_description")
    if isinstance(description, str) and description:
        return f"{code}: {description.splitlines()[0]}"
    return code
