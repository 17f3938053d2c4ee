"""Provider credentials: read from an environment variable or a file, never from the config text itself; and the
`Credential` that turns them into request headers (static keys, or per-request signatures and refreshed tokens)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Protocol

from ..config.models import Config, SecretRef, secret_refs


class CredentialError(Exception):
    pass


def check_environment(config: Config) -> None:
    """Every `{env: NAME}` in the config is set, or one error lists each that is not at its YAML path and line: a
    new setup learns every variable to export at once, not one per attempt."""
    origin = config.origin
    missing = [f"{origin.where(loc)}: environment variable {ref.env} is not set"
               for loc, ref in secret_refs(config) if ref.env is not None and not os.environ.get(ref.env)]
    if missing:
        raise CredentialError(f"{origin.source}: {'; '.join(missing)}")


def read_secret(ref: SecretRef, where: str) -> str:
    """`where` names the reference in messages: its YAML path, and the file and line when known."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise CredentialError(f"{where}: environment variable {ref.env} is not set")
        return value.strip()
    if ref.command is not None:
        return _from_command(ref.command, where)
    assert ref.file is not None
    try:
        value = ref.file.read_text().strip()
    except OSError as exc:
        raise CredentialError(f"{where}: can't read {ref.file}: {exc.strerror}") from None
    if not value:
        raise CredentialError(f"{where}: {ref.file} is empty")
    return value


def _from_command(argv: list[str], where: str) -> str:
    """A secret manager's CLI (vault, aws secretsmanager, gcloud secrets, op): its stdout is the secret. Its stderr
    is not repeated (it may echo what it was asked for); the exit status is."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialError(f"{where}: {argv[0]} could not be run: {type(exc).__name__}") from None
    if result.returncode != 0:
        raise CredentialError(f"{where}: {argv[0]} exited with status {result.returncode}")
    value = result.stdout.strip()
    if not value:
        raise CredentialError(f"{where}: {argv[0]} printed nothing")
    return value


COMMAND_TIMEOUT = 10.0


class Credential(Protocol):
    """Headers that authenticate one upstream request, computed over the final method, URL and body."""

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class StaticCredential:
    """An API key (or none): the same headers on every request."""

    values: tuple[tuple[str, str], ...] = ()

    def headers(self, method: str, url: str, body: bytes) -> list[tuple[str, str]]:
        return list(self.values)
