"""AWS credentials for Bedrock: SigV4 signatures computed by botocore, or a Bedrock API key sent as a bearer token.

Where the credentials come from (`backend.aws`, resolved once when the configuration is loaded):

- `web_identity_token_file` + `role_arn`: AssumeRoleWithWebIdentity through STS (`sts_endpoint` if set, else the
  regional STS endpoint), as on EKS (IRSA) or any OIDC federation. The token file is read again on every refresh.
- otherwise botocore's own default chain, on a botocore session of this backend's own: the explicit `profile`,
  `credentials_file` and `config_file` when given (an explicit profile wins over environment keys, as in the AWS
  CLI), environment variables (`AWS_ACCESS_KEY_ID`, ... and `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), the
  shared files, assume-role profiles, SSO, container and instance metadata. `sts_endpoint` applies to every STS
  call that chain makes too.
- a backend with `api_key` uses it as a Bedrock API key (`Authorization: Bearer ...`) and signs nothing.

The hot path never waits for the network. botocore refreshes temporary credentials *inside*
`get_frozen_credentials()` once they are within 15 minutes of expiry, synchronously, on whichever call comes first;
here that call only ever runs on a background thread. `headers()` reads the last frozen credentials (a plain
attribute), asks botocore whether a refresh is due (a clock comparison), and if so starts at most one background
refresh, never more often than every `retry_interval` seconds, so credentials that STS hands out for less than the
refresh window, or an STS that keeps failing, cost one STS call per interval rather than one per request. The only
wait is for the very first credentials of a backend that needs the network for them (at most `first_fetch_wait`
seconds, once per process; `prefetch()` at startup avoids even that); past it the request fails with 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import (
    AssumeRoleWithWebIdentityCredentialFetcher,
    Credentials,
    DeferredRefreshableCredentials,
    FileWebIdentityTokenLoader,
    ReadOnlyCredentials,
    RefreshableCredentials,
)

from ..config.models import AwsSettings, Backend
from ..errors import Unavailable
from .credentials import Credential, CredentialError, StaticCredential

log = logging.getLogger(__name__)

SIGNING_NAME = "bedrock"
"""SigV4 service name of bedrock-runtime (its endpoint prefix differs)."""

FIRST_FETCH_WAIT = 2.0
RETRY_INTERVAL = 10.0

_SIGNED_OUTPUT = {"authorization", "x-amz-date", "x-amz-security-token"}


def make_credential(backend: Backend, secret: str | None) -> Credential:
    """The credential of a Bedrock backend: its API key as a bearer token, else SigV4 from `backend.aws`."""
    if secret:
        return StaticCredential((("authorization", "Bearer " + secret),))
    settings = backend.aws
    if settings is None:
        raise CredentialError(f"backend {backend.id!r}: bedrock backends need `aws: {{region: ...}}`")
    return SigV4Credential(resolve_credentials(settings, f"backend {backend.id!r}"), settings.region)


def resolve_credentials(settings: AwsSettings, where: str) -> Credentials:
    """botocore credentials for `settings`; nothing is fetched over the network for web identity or assumed roles
    until they are first used. Raises `CredentialError` naming `where` when no source is configured."""
    session = _Session(settings.sts_endpoint)
    session.set_config_variable("region", settings.region)
    if settings.profile is not None:
        session.set_config_variable("profile", settings.profile)
    if settings.credentials_file is not None:
        session.set_config_variable("credentials_file", str(settings.credentials_file))
    if settings.config_file is not None:
        session.set_config_variable("config_file", str(settings.config_file))

    if settings.web_identity_token_file is not None or settings.role_arn is not None:
        if settings.web_identity_token_file is None or settings.role_arn is None:
            raise CredentialError(f"{where}.aws: web identity needs both `web_identity_token_file` and `role_arn`")
        fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
            client_creator=_client_creator(session, settings.region),
            web_identity_token_loader=FileWebIdentityTokenLoader(str(settings.web_identity_token_file)),
            role_arn=settings.role_arn,
        )
        return DeferredRefreshableCredentials(fetcher.fetch_credentials, "assume-role-with-web-identity")

    try:
        credentials = session.get_credentials()
    except Exception as exc:  # botocore raises a dozen types for broken profiles and files
        raise CredentialError(f"{where}.aws: can't load AWS credentials: {exc}") from None
    if credentials is None:
        raise CredentialError(f"{where}.aws: no AWS credentials found (environment, shared files, profile, web "
                              "identity, container or instance metadata); set them, or give the backend an api_key "
                              "(a Bedrock API key)")
    return credentials


class SigV4Credential:
    """Signs every request with SigV4 (`host` and `x-amz-*` headers signed, as botocore does) over the final
    method, URL and body. See the module docstring for how refreshing stays off the hot path."""

    def __init__(self, credentials: Credentials, region: str, *, service: str = SIGNING_NAME,
                 first_fetch_wait: float = FIRST_FETCH_WAIT, retry_interval: float = RETRY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = credentials
        self._region = region
        self._service = service
        self._first_fetch_wait = first_fetch_wait
        self._retry_interval = retry_interval
        self._clock = clock
        self._refreshable = isinstance(credentials, RefreshableCredentials)
        self._lock = threading.Lock()
        self._running: threading.Event | None = None
        self._last_attempt: float | None = None
        self._last_error = ""
        self._frozen: ReadOnlyCredentials | None = None
        if not isinstance(credentials, DeferredRefreshableCredentials):
            self._frozen = credentials.get_frozen_credentials()

    @property
    def method(self) -> str:
        """Where botocore found the credentials (`env`, `shared-credentials-file`, `assume-role-with-web-identity`,
        ...), for logs; never the credentials themselves."""
        return str(getattr(self._credentials, "method", "unknown"))

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]:
        request = AWSRequest(method=method, url=url, data=body)
        SigV4Auth(self._current(), self._service, self._region).add_auth(request)
        return [(name.lower(), value) for name, value in request.headers.items() if name.lower() in _SIGNED_OUTPUT]

    def prefetch(self) -> None:
        """Start fetching credentials that need the network now (e.g. at startup), without waiting for them."""
        if self._frozen is None or (self._refreshable and self._credentials.refresh_needed()):
            self._start_refresh()

    def _current(self) -> ReadOnlyCredentials:
        if self._refreshable and self._credentials.refresh_needed():  # a clock comparison, no I/O
            self._start_refresh()
        frozen = self._frozen
        if frozen is None:
            running = self._running
            if running is not None:
                running.wait(self._first_fetch_wait)
            frozen = self._frozen
        if frozen is None:
            reason = f": {self._last_error}" if self._last_error else " yet"
            raise Unavailable(f"AWS credentials for this backend are not available{reason}",
                              code="credentials_unavailable")
        return frozen

    def _start_refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if self._running is not None or (
                    self._last_attempt is not None and now - self._last_attempt < self._retry_interval):
                return
            self._last_attempt = now
            done = self._running = threading.Event()
        threading.Thread(target=self._refresh, args=(done,), name="aws-credentials", daemon=True).start()

    def _refresh(self, done: threading.Event) -> None:
        """On a background thread: botocore refreshes (calling STS, ...) inside `get_frozen_credentials`."""
        try:
            frozen = self._credentials.get_frozen_credentials()
            if frozen is None or not frozen.access_key:
                raise CredentialError("the credential source returned no access key")
            self._frozen = frozen
            self._last_error = ""
        except Exception as exc:
            # botocore's messages name the source and the failure, never a secret.
            self._last_error = f"{type(exc).__name__}: {exc}"
            log.warning("refreshing AWS credentials (%s) failed: %s", self.method, self._last_error)
        finally:
            with self._lock:
                self._running = None
            done.set()


class _Session(botocore.session.Session):
    """A botocore session whose STS clients use `sts_endpoint` (a private endpoint, or a fake one in tests)."""

    def __init__(self, sts_endpoint: str | None) -> None:
        super().__init__()
        self._sts_endpoint = sts_endpoint

    def create_client(self, service_name: str, *args: object, **kwargs: object) -> object:
        if service_name == "sts" and self._sts_endpoint and kwargs.get("endpoint_url") is None:
            kwargs["endpoint_url"] = self._sts_endpoint
        return super().create_client(service_name, *args, **kwargs)


def _client_creator(session: botocore.session.Session, region: str) -> Callable[..., object]:
    def create(service_name: str, **kwargs: object) -> object:
        return session.create_client(service_name, **{"region_name": region, **kwargs})
    return create
