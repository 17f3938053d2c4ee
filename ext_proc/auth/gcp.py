"""Google credentials: AI Studio's static API key, and the OAuth bearer token Vertex AI wants, kept fresh off the
request path.

How a Vertex token stays fresh without making requests wait on the network:

- `make_credential` reads the service-account file when the configuration is loaded (a missing or broken file is a
  configuration error, like a missing API key), then starts one daemon thread for the credential. That thread
  fetches a token at once, sleeps until `REFRESH_MARGIN` (5 minutes) before expiry (a token too short-lived for
  that: halfway through the time it can be sent), and fetches the next one; failures are retried with backoff
  while the current token stays in use. Application Default Credentials discovery (which may probe the GCE
  metadata server) also runs in that thread.
- `headers()` reads the current `(token, expiry, refresh time)`, which the thread replaces as a whole: no lock, no
  I/O. Only without a usable token does a request wait: for the first fetch (at most `first_token_wait` seconds,
  once, right after start-up). While fetches fail and no token is left it answers 503 at once with the reason,
  rather than hold the event loop.
- The thread holds no reference to the credential object: when a configuration reload drops the credential, a
  finalizer stops its thread. In a forked child the thread does not exist; it is started again on first use.

Token requests go through the standard library (`urllib`), so `google-auth` needs no HTTP library of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.models import Backend
from ..errors import Unavailable
from .credentials import Credential, CredentialError, StaticCredential

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN = 300.0
"""Seconds before expiry at which the next token is fetched."""
FIRST_TOKEN_WAIT = 5.0
"""How long a request waits when no token was ever fetched (or the last one expired)."""
EXPIRY_SKEW = 10.0
"""A token this close to its expiry is not sent: it could expire on the way."""
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds between failed fetches; the last value repeats."""
TOKEN_FETCH_TIMEOUT = 30.0

log = logging.getLogger(__name__)

GoogleCredentials = Any
"""A `google.auth.credentials.Credentials` (imported lazily: only GCP backends need google-auth)."""


def make_credential(backend: Backend, secret: str | None) -> Credential:
    """Vertex schemas: a refreshed OAuth bearer; AI Studio (`gemini`): the API key in `x-goog-api-key`."""
    if not backend.schema_.startswith("vertex"):
        return StaticCredential((("x-goog-api-key", secret),) if secret else ())
    if secret:
        raise CredentialError(f"backend {backend.id!r}: vertex backends authenticate with gcp.service_account_file "
                              "or Application Default Credentials; remove api_key")
    account_file = backend.gcp.service_account_file if backend.gcp else None
    if account_file is not None:
        loaded = service_account_credentials(account_file, f"backend {backend.id!r} gcp.service_account_file")
        return GoogleBearerCredential(lambda: loaded, backend.id)
    return GoogleBearerCredential(application_default_credentials, backend.id)


def service_account_credentials(path: Path, where: str) -> GoogleCredentials:
    """Parse a service-account JSON key (no network); its `token_uri` is where tokens will be fetched."""
    from google.auth.exceptions import GoogleAuthError
    from google.oauth2 import service_account

    try:
        return service_account.Credentials.from_service_account_file(str(path), scopes=list(SCOPES))
    except OSError as exc:
        raise CredentialError(f"{where}: can't read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, GoogleAuthError) as exc:
        raise CredentialError(f"{where}: {path} is not a service-account key file ({type(exc).__name__})") from None


def application_default_credentials() -> GoogleCredentials:
    """Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or the metadata server."""
    import google.auth

    credentials, _project = google.auth.default(scopes=list(SCOPES), request=UrllibRequest())
    return credentials


class GoogleBearerCredential:
    """`authorization: Bearer <token>` from Google credentials, refreshed in the background (see the module doc)."""

    def __init__(self, load: Callable[[], GoogleCredentials], label: str, *, refresh_margin: float = REFRESH_MARGIN,
                 first_token_wait: float = FIRST_TOKEN_WAIT, retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self._keeper = _TokenKeeper(load, label, refresh_margin, retry_delays)
        self._first_token_wait = first_token_wait
        weakref.finalize(self, self._keeper.stop)
        self._keeper.start()

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]:
        return [("authorization", "Bearer " + self._keeper.token(self._first_token_wait))]

    def close(self) -> None:
        """Stop the refresher thread (it also stops when the credential is garbage collected)."""
        self._keeper.stop()

    @property
    def refreshes(self) -> int:
        """Tokens fetched so far (for tests and diagnostics)."""
        return self._keeper.refreshes


class _TokenKeeper:
    """The token and the thread that renews it. The credential owns this object; the thread only refers to it."""

    def __init__(self, load: Callable[[], GoogleCredentials], label: str, margin: float,
                 retry_delays: tuple[float, ...]) -> None:
        self._load = load
        self._label = label
        self._margin = margin
        self._retry_delays = retry_delays
        self._current: tuple[str, float, float] | None = None
        """(token, expires_at, refresh_at) in `time.time()` seconds, replaced as a whole by the thread."""
        self._error = "no token was fetched yet"
        self._failing = False
        self._ready = threading.Condition()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.refreshes = 0

    def start(self) -> None:
        with self._ready:
            if self._stopped or (self._thread is not None and self._pid == os.getpid()):
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=f"gcp-token-{self._label}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def token(self, wait: float) -> str:
        if self._pid != os.getpid():
            self.start()  # forked: the parent's thread did not come along
        current = self._current
        now = time.time()
        if current is not None and now < current[1] - EXPIRY_SKEW:
            if now >= current[2] and not self._failing:
                self._wake.set()  # the thread overslept (a suspended machine): refresh now, keep using this one
            return current[0]
        # No usable token. Wait for a fetch under way (start-up), but not through a failing one: a request must not
        # hold the event loop while the token server is down, nor cut the retry backoff short.
        deadline = time.monotonic() + wait
        with self._ready:
            while True:
                current = self._current
                if current is not None and time.time() < current[1] - EXPIRY_SKEW:
                    return current[0]
                left = deadline - time.monotonic()
                if self._failing or left <= 0:
                    raise Unavailable(f"Google credentials for backend {self._label!r} have no valid token: "
                                      f"{self._error}", code="upstream_credentials_unavailable")
                if current is not None:
                    self._wake.set()  # it expired while the thread slept (a suspended machine); else it is fetching
                self._ready.wait(left)

    def _run(self) -> None:
        transport = UrllibRequest()
        credentials = None
        failures = 0
        while not self._stopped:
            self._wake.clear()  # a request that asked for a token while none was there gets this fetch
            try:
                if credentials is None:
                    credentials = self._load()
                credentials.refresh(transport)
                delay = self._store(credentials.token, credentials.expiry)
                # requests that saw the renewal due while it was under way asked for this very fetch
                self._wake.clear()
                failures = 0
            except Exception as exc:  # every failure is retried; the reason is kept for the 503 message
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                failures += 1
                with self._ready:
                    self._failing = True
                    self._error = _describe(exc)
                    self._ready.notify_all()
                log.warning("backend %s: fetching a Google access token failed (%s); retrying in %.0fs",
                            self._label, self._error, delay)
            self._wake.wait(delay)

    def _store(self, token: object, expiry: datetime | None) -> float:
        """Publish a fresh token; return the seconds until the next refresh."""
        if not isinstance(token, str) or not token:
            raise ValueError("the token endpoint answered without an access token")
        now = time.time()
        expires_at = _timestamp(expiry) if expiry is not None else now + 3600.0
        # Renew `margin` before expiry; a token too short-lived for that, halfway through the time it can be sent.
        refresh_at = max(expires_at - self._margin, now + (expires_at - EXPIRY_SKEW - now) / 2)
        with self._ready:
            self._current = (token, expires_at, refresh_at)
            self._failing = False
            self._error = ""
            self.refreshes += 1
            self._ready.notify_all()
        return max(refresh_at - now, 1.0)


def _timestamp(moment: datetime) -> float:
    """google-auth keeps expiries as naive UTC datetimes."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _describe(exc: Exception) -> str:
    """A short reason for logs and the 503 message. google-auth messages quote the token server's error answer,
    never the signed assertion or a token."""
    detail = str(exc.args[0]) if exc.args else ""
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


class _Response:
    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data


if TYPE_CHECKING:
    from google.auth.transport import Request as _TransportRequest
else:  # google-auth is imported only when a GCP backend needs it; the interface is an ABC with no behaviour of its own
    _TransportRequest = object


class UrllibRequest(_TransportRequest):
    """google-auth's transport interface (`google.auth.transport.Request`) on `urllib.request`."""

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float | None = None, **kwargs: object) -> _Response:
        from google.auth.exceptions import TransportError

        request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or TOKEN_FETCH_TIMEOUT) as response:
                return _Response(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return _Response(exc.code, dict(exc.headers), exc.read())
        except (urllib.error.URLError, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc
