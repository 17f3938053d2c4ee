"""Virtual keys: generation, hashing and the per-request check.

Keys are 256-bit random strings, so a plain SHA-256 is a safe storage form (nothing to brute-force) and costs ~1 µs
per request. The lookup compares digests through a dict: the client controls the key, not the digest, so timing
reveals nothing useful about stored keys.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from ..constants import JWT_ID_PREFIX
from ..errors import Forbidden, Unauthorized

KEY_PREFIX = "bg-"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    team: str | None
    models: frozenset[str] | None
    """Public model names the key may use; None means every model."""
    expires_at: float | None
    user: str | None = None
    """The end user `limits.per_user` counts this identity's requests as (a key's `user`, a token's user claim)."""
    asserts_users: bool = False
    """The caller may name each request's end user (`limits.user_header`, else the body's `user`)."""
    mcp_servers: tuple[str, ...] = ("*",)
    """MCP servers (globs) the key may use."""
    mcp_tools: tuple[str, ...] = ("*",)
    """MCP tools (namespaced-name globs) the key may use."""


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def authenticate(keys: dict[str, KeyInfo], presented: str | None, now: float | None = None) -> KeyInfo:
    if not presented:
        raise Unauthorized("Missing API key: send `Authorization: Bearer <key>` (or `x-api-key`).",
                           code="missing_api_key")
    info = keys.get(hash_key(presented))
    if info is None:
        raise Unauthorized("Invalid API key.")
    if info.expires_at is not None and (now if now is not None else time.time()) >= info.expires_at:
        raise Unauthorized(f"API key {info.id!r} has expired.", code="expired_api_key")
    return info


def authorize(info: KeyInfo, model: str) -> None:
    if info.models is not None and model not in info.models:
        who = "The token of" if info.id.startswith(JWT_ID_PREFIX) else "API key"
        raise Forbidden(f"{who} {info.id!r} is not allowed to use model {model!r}.")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
