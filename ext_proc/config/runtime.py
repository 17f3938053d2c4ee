"""The configuration compiled into the plain tables the hot path reads.

Built once per (re)load and swapped as a whole, so a request sees one consistent snapshot from start to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType

from .. import providers
from ..auth.credentials import Credential, StaticCredential, read_secret
from ..auth.virtual_keys import KeyInfo
from ..limits.limiter import Limiter
from ..limits.setup import build_limiter
from ..providers import presets
from .chains import chain_id
from .models import Backend, Config


@dataclass(frozen=True, slots=True)
class BackendInfo:
    id: str
    schema: str
    provider: ModuleType
    authority: str
    origin: str
    """scheme://authority, for URLs that credentials sign."""
    base_path: str
    credential: Credential
    settings: Backend

    def chat_request(self, body: dict, model: str, default_max_tokens: int) -> dict:
        """The provider's translation, then the quirks of an OpenAI-compatible preset (Mistral, Groq, ...)."""
        upstream = self.provider.chat_request(body, model, default_max_tokens=default_max_tokens)
        if self.settings.preset is not None:
            upstream = presets.adapt_request(self.settings.preset, upstream, model)
        for name in self.settings.drop_fields:
            upstream.pop(name, None)
        return upstream


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    chain: tuple[str, ...]
    chain_id: str
    backend_models: dict[str, str]
    translations: tuple[tuple[BackendInfo, str], ...]
    """One (backend, backend model) per distinct schema and preset in the chain: the route stage translates the
    request once per kind up front, so a field some backend refuses is a 400 before anything is sent anywhere."""
    embeddings: bool
    """Every backend of the chain serves /v1/embeddings."""

    @property
    def direct(self) -> bool:
        """A single-backend route has nothing to fail over to: the route stage translates it itself and Envoy
        sends it straight to the backend's cluster, one gRPC stream per request instead of two."""
        return len(self.chain) == 1


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    limiter: Limiter | None
    """None when no limit is configured: requests skip limiting entirely."""
    keys: dict[str, KeyInfo]
    routes: dict[str, RouteInfo]
    """Public model name or alias -> route."""
    backends: dict[str, BackendInfo]
    public_models: tuple[str, ...]
    max_body_bytes: int
    default_max_tokens: int
    user_header: str
    chars_per_token: float


def compile_runtime(config: Config, *, load_secrets: bool = True, announce: bool = False) -> Runtime:
    backends: dict[str, BackendInfo] = {}
    for index, backend in enumerate(config.backends):
        provider = providers.for_schema(backend.schema_)
        credential: Credential = StaticCredential()
        if load_secrets:
            secret = read_secret(backend.api_key, f"backends[{index}].api_key") if backend.api_key else None
            credential = providers.credential_for(provider, backend, secret)
        backends[backend.id] = BackendInfo(
            id=backend.id, schema=backend.schema_, provider=provider, authority=backend.authority,
            origin=f"{backend.scheme}://{backend.authority}", base_path=backend.base_path, credential=credential,
            settings=backend)

    routes: dict[str, RouteInfo] = {}
    for route in config.routes:
        chain = tuple(entry.backend for entry in route.backends)
        translations: dict[tuple[str, str | None], tuple[BackendInfo, str]] = {}
        for entry in route.backends:
            backend = backends[entry.backend]
            translations.setdefault((backend.schema, backend.settings.preset), (backend, entry.model))
        info = RouteInfo(name=route.model, chain=chain, chain_id=chain_id(chain),
                         backend_models={entry.backend: entry.model for entry in route.backends},
                         translations=tuple(translations.values()),
                         embeddings=all(providers.serves_embeddings(backends[b].provider) for b in chain))
        for name in (route.model, *route.aliases):
            routes[name] = info

    keys = {
        key.hash: KeyInfo(
            id=key.id, team=key.team,
            models=None if "*" in key.models else frozenset(key.models),
            expires_at=_utc(key.expires_at).timestamp() if key.expires_at else None)
        for key in config.virtual_keys
    }
    return Runtime(config=config, limiter=build_limiter(config, announce=announce) if load_secrets else None,
                   keys=keys, routes=routes, backends=backends,
                   public_models=tuple(r.model for r in config.routes),
                   max_body_bytes=config.requests.max_body_bytes,
                   default_max_tokens=config.requests.default_max_tokens,
                   user_header=config.limits.user_header,
                   chars_per_token=config.limits.chars_per_token)


def _utc(moment: datetime) -> datetime:
    """An expiry without a zone means UTC, whatever the server's local zone is."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
