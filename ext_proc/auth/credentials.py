"""Provider credentials: read from an environment variable or a file, never from the config text itself."""

from __future__ import annotations

import os

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
