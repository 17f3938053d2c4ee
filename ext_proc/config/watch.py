"""The files a configuration is read from (the config itself, its keys file, secret files), and a cheap signature
of each: whoever hot-reloads a configuration watches these."""

from __future__ import annotations

import os
from pathlib import Path

from .models import Config, secret_refs
from .prompt_syntax import prompts_file


def watched_files(config: Config, config_path: Path) -> list[Path]:
    """Files whose change means a new configuration: the config itself, the keys file, the stored prompt templates
    beside it, and every secret file."""
    files = [config_path]
    if config.keys_file is not None:
        files += [config.keys_file, prompts_file(config.keys_file)]
    # every SecretRef read from a file: provider keys, Entra secrets, Redis's password, MCP servers' credentials ...
    files.extend(dict.fromkeys(ref.file for _, ref in secret_refs(config) if ref.file is not None))
    return files


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """Changes when the file is rewritten in place or replaced (a Kubernetes ConfigMap swaps a symlink)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


Signatures = dict[Path, tuple[int, int, int] | None]


def seen_after_reload(before: Signatures, files: list[Path]) -> Signatures:
    """What a reload has seen of `files` (the new configuration's): each file as it was *before* the reload read it,
    so a change made while it was reading (an editor saving again, a test editing right after a SIGHUP) still differs
    at the next poll and triggers another reload; a file only the new configuration names, as it is now."""
    return {path: before[path] if path in before else file_signature(path) for path in files}
