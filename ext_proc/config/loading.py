"""Read a YAML config file into a validated `Config`, with errors that name the YAML path and line.

The `Config` returned records where it was read (`Config.origin`: the file and the line of every node), so that
problems found later, such as an unset environment variable at `compile_runtime`, name their line too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .models import Config, ConfigProblems, VirtualKey
from .origin import Origin, node_lines
from .watch import file_signature


class ConfigError(Exception):
    """The configuration can't be used; the message names where and why."""


def load_config(path: str | Path) -> Config:
    path = Path(path)
    read = {path: file_signature(path)}
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: can't read the config file: {exc.strerror}") from None
    config = parse_config(text, source=str(path), base_dir=path.parent)
    if config.keys_file is not None and config.keys_file.exists():
        read[config.keys_file] = file_signature(config.keys_file)
        extra, keys_origin = _read_keys_file(config.keys_file)
        data = config.model_dump(by_alias=True)
        data["virtual_keys"] = [*data["virtual_keys"], *(k.model_dump() for k in extra)]
        config = _validate(data, config.origin, keys_file=(keys_origin, len(config.virtual_keys)))
    config.origin.read.update(read)
    return config


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    if base_dir is not None:
        resolve_paths(data, base_dir)
    return _validate(data, Origin(source, node_lines(root)))


def load_keys_file(path: Path) -> list[VirtualKey]:
    return _read_keys_file(path)[0]


def _read_keys_file(path: Path) -> tuple[list[VirtualKey], Origin]:
    text = path.read_text()
    try:
        origin = Origin(str(path), node_lines(yaml.compose(text, Loader=yaml.SafeLoader)))
        data = yaml.safe_load(text) or []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return TypeAdapter(list[VirtualKey]).validate_python(data), origin
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def _validate(data: dict[str, Any], origin: Origin, keys_file: tuple[Origin, int] | None = None) -> Config:
    """`keys_file`: where the virtual keys past the given count were read, when the config's were extended."""
    try:
        return Config.model_validate(data).located(origin)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, keys_file)) from None


def _describe(exc: ValidationError, origin: Origin, keys_file: tuple[Origin, int] | None = None) -> str:
    lines = [f"{origin.source}: invalid configuration"]
    for loc, message in _problems(exc):
        file, loc = _file_of(loc, origin, keys_file)
        named = f"{file.source}: " if file is not origin else ""
        lines.append(f"  {named}{file.where(loc)}: {message}")
    return "\n".join(lines)


def _problems(exc: ValidationError) -> Iterator[tuple[list[str | int], str]]:
    """(path, message) of each problem; the config-wide check's problems each at their own path."""
    for error in exc.errors():
        found = error.get("ctx", {}).get("error")
        if isinstance(found, ConfigProblems):
            for loc, message in found.problems:
                yield [*_plain(error["loc"]), *loc], message
        else:
            yield _plain(error["loc"]), error["msg"].removeprefix("Value error, ")


def _plain(loc: tuple[str | int, ...]) -> list[str | int]:
    """Without pydantic's union-member tags (`function-after[...]`), which name no YAML node."""
    return [part for part in loc if not (isinstance(part, str) and "[" in part)]


def _file_of(loc: list[str | int], origin: Origin,
             keys_file: tuple[Origin, int] | None) -> tuple[Origin, list[str | int]]:
    """A key read from the keys file is reported there, at its place in that file's list."""
    if keys_file is not None and loc[:1] == ["virtual_keys"] and len(loc) > 1 and isinstance(loc[1], int):
        keys_origin, first = keys_file
        if loc[1] >= first:
            return keys_origin, [loc[1] - first, *loc[2:]]
    return origin, loc


def resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Relative file paths in the config are relative to the config file, not the working directory."""

    def fix(holder: dict[str, Any], key: str) -> None:
        value = holder.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            holder[key] = str(base_dir / value)

    fix(data, "keys_file")
    listener = data.get("listener")
    if isinstance(listener, dict) and isinstance(listener.get("tls"), dict):
        fix(listener["tls"], "cert_file")
        fix(listener["tls"], "key_file")
    ext_proc = data.get("ext_proc")
    if isinstance(ext_proc, dict):
        fix(ext_proc, "socket_dir")
        if isinstance(ext_proc.get("tls"), dict):
            for key in ("ca_file", "cert_file", "key_file", "client_cert_file", "client_key_file"):
                fix(ext_proc["tls"], key)
    redis = (data.get("limits") or {}).get("redis") if isinstance(data.get("limits"), dict) else None
    if isinstance(redis, dict):
        fix(redis, "ca_file")
        if isinstance(redis.get("password"), dict):
            fix(redis["password"], "file")
    jwt = data.get("jwt")
    for issuer in (jwt.get("issuers") or []) if isinstance(jwt, dict) else []:
        if isinstance(issuer, dict):
            fix(issuer, "jwks_file")
            fix(issuer, "jwks_ca_file")
    for backend in data.get("backends") or []:
        if isinstance(backend, dict):
            fix(backend, "ca_file")
            for section, keys in (("aws", ("credentials_file", "config_file", "web_identity_token_file")),
                                  ("gcp", ("service_account_file",))):
                if isinstance(backend.get(section), dict):
                    for key in keys:
                        fix(backend[section], key)
            azure = backend.get("azure")
            if isinstance(azure, dict) and isinstance(azure.get("entra"), dict) and \
                    isinstance(azure["entra"].get("client_secret"), dict):
                fix(azure["entra"]["client_secret"], "file")
            if isinstance(backend.get("api_key"), dict):
                fix(backend["api_key"], "file")
    mcp = data.get("mcp")
    for server in (mcp.get("servers") or []) if isinstance(mcp, dict) else []:
        if isinstance(server, dict):
            fix(server, "ca_file")
            references = [server.get("bearer"), *_values(server.get("headers")), *_values(server.get("env"))]
            for reference in references:
                if isinstance(reference, dict):
                    fix(reference, "file")


def _values(mapping: object) -> list[object]:
    return list(mapping.values()) if isinstance(mapping, dict) else []
