"""Provider credentials: read from an environment variable or a file, never from the config text itself; and the
`Credential` that turns them into request headers (static keys, or per-request signatures and refreshed tokens)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from ..config.models import SecretRef


class CredentialError(Exception):
    pass


def read_secret(ref: SecretRef, where: str) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise CredentialError(f"{where}.env: environment variable {ref.env} is not set")
        return value.strip()
    assert ref.file is not None
    try:
        value = ref.file.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"{where}.file: can't read {ref.file}: {exc.strerror}") from None
    if not value:
        raise CredentialError(f"{where}.file: {ref.file} is empty")
    return value


class Credential(Protocol):
    """Headers that authenticate one upstream request, computed over the final method, URL and body."""

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class StaticCredential:
    """An API key (or none): the same headers on every request."""

    values: tuple[tuple[str, str], ...] = ()

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]:
        return list(self.values)
