"""The files a configuration is read from (the config itself, its keys file, secret files), and a cheap signature
of each: whoever hot-reloads a configuration watches these."""

from __future__ import annotations

import os
from pathlib import Path

from .models import Config


def watched_files(config: Config, config_path: Path) -> list[Path]:
    """Files whose change means a new configuration: the config itself, the keys file and every secret file."""
    files = [config_path]
    if config.keys_file is not None:
        files.append(config.keys_file)
    for backend in config.backends:
        if backend.api_key is not None and backend.api_key.file is not None:
            files.append(backend.api_key.file)
        entra = backend.azure.entra if backend.azure is not None else None
        if entra is not None and entra.client_secret.file is not None:
            files.append(entra.client_secret.file)
    redis = config.limits.redis
    if redis is not None and redis.password is not None and redis.password.file is not None:
        files.append(redis.password.file)
    return files


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """Changes when the file is rewritten in place or replaced (a Kubernetes ConfigMap swaps a symlink)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
