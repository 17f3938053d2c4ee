"""The credential of each backend, by schema: how its API key is sent, or which signature or refreshed token
replaces it.

Built once per backend when the configuration is (re)loaded; the attempt stage only calls `headers()` on the result.
A backend without a key gets no headers at all (a local OpenAI-compatible server, say), except where the schema
authenticates another way (AWS signatures, Google and Entra ID tokens).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.models import Backend
from ..providers.anthropic import API_VERSION as ANTHROPIC_VERSION
from . import azure, gcp
from .credentials import Credential, StaticCredential

AWS_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})
"""Every header an AWS credential (`aws.py`) sets: a bearer key or a SigV4 signature share `authorization`."""
CREDENTIAL_HEADERS: frozenset[str] = frozenset(
    {"authorization", "x-api-key", "anthropic-version", "api-key", "x-goog-api-key"}) | AWS_HEADERS
"""Every header a backend credential can set. The attempt stage removes them all before each attempt: on a retry
Envoy shows it the previous attempt's headers, which may belong to another schema."""


def _bearer_key(backend: Backend, secret: str | None) -> Credential:
    return StaticCredential((("authorization", "Bearer " + secret),) if secret else ())


def _anthropic_key(backend: Backend, secret: str | None) -> Credential:
    """Anthropic wants `anthropic-version` next to the key; it rides on the credential, which is what sets a backend's
    headers."""
    return StaticCredential((("x-api-key", secret), ("anthropic-version", ANTHROPIC_VERSION)) if secret else ())


def _aws_credential(backend: Backend, secret: str | None) -> Credential:
    # botocore (~18 MiB of RSS) loads with the first Bedrock backend, not in every gateway process
    from . import aws

    return aws.make_credential(backend, secret)


_BY_SCHEMA: dict[str, Callable[[Backend, str | None], Credential]] = {
    "openai": _bearer_key,
    "cohere": _bearer_key,
    "anthropic": _anthropic_key,
    "azure-openai": azure.make_credential,
    "bedrock-converse": _aws_credential,
    "bedrock-anthropic": _aws_credential,
    "gemini": gcp.make_credential,
    "vertex-gemini": gcp.make_credential,
    "vertex-anthropic": gcp.make_credential,
}


def credential_for(backend: Backend, secret: str | None) -> Credential:
    """`secret` is the backend's `api_key`, already read (None without one). Raises `CredentialError` for settings
    that can't authenticate (a Bedrock backend without `aws`, an unreadable service-account file, ...)."""
    return _BY_SCHEMA[backend.schema_](backend, secret)
