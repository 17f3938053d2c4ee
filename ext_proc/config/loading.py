"""Read a YAML config file into a validated `Config`, with errors that name the YAML path and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .models import Config, VirtualKey


class ConfigError(Exception):
    """The configuration can't be used; the message names where and why."""


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: can't read the config file: {exc.strerror}") from None
    config = parse_config(text, source=str(path), base_dir=path.parent)
    if config.keys_file is not None and config.keys_file.exists():
        extra = load_keys_file(config.keys_file)
        data = config.model_dump(by_alias=True)
        data["virtual_keys"] = [*data["virtual_keys"], *(k.model_dump() for k in extra)]
        config = _validate(data, source=str(path), root=None)
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
        _resolve_paths(data, base_dir)
    return _validate(data, source=source, root=root)


def load_keys_file(path: Path) -> list[VirtualKey]:
    text = path.read_text()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    data = yaml.safe_load(text) or []
    try:
        return TypeAdapter(list[VirtualKey]).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path), root)) from None


def _validate(data: dict[str, Any], *, source: str, root: yaml.Node | None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, root)) from None


def _describe(exc: ValidationError, source: str, root: yaml.Node | None) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        loc = [part for part in error["loc"] if not (isinstance(part, str) and "[" in part)]
        where = _dotted(loc) or "(top level)"
        line = _line_of(root, loc)
        at = f" (line {line})" if line else ""
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}{at}: {message}")
    return "\n".join(lines)


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """The 1-based line of the deepest YAML node along `loc` that exists."""
    found = node
    for part in loc:
        if isinstance(found, yaml.MappingNode):
            child = next((v for k, v in found.value if k.value == part), None)
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            child = found.value[part]
        else:
            child = None
        if child is None:
            break
        found = child
    return found.start_mark.line + 1 if found is not None else None


def _resolve_paths(data: dict[str, Any], base_dir: Path) -> None:
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
