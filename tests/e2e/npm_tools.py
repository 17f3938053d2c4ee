"""Command-line tools the end-to-end tests take from the npm registry (Claude Code, Codex), pinned and installed on
demand into `<repo>/.test-tools/<name>` (gitignored).

`pinned_binary` installs unless the binary there already reports the pinned version. The install goes into a
staging directory renamed into place, so an interrupted install is never mistaken for a finished one; optional
dependencies are kept (Codex ships its native binary as one).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".test-tools"
INSTALL_TIMEOUT = 900.0


def pinned_binary(package: str, version: str, install_dir: Path, binary_name: str,
                  version_of: Callable[[Path], str | None]) -> Path:
    """`node_modules/.bin/<binary_name>` of `package@version` under `install_dir`, installed unless `version_of`
    (the binary's own report) already says `version`."""
    binary = install_dir / "node_modules" / ".bin" / binary_name
    install_dir.parent.mkdir(parents=True, exist_ok=True)
    # one installer at a time (test workers run in parallel): a second one would replace the tool under the first
    with open(install_dir.with_name(install_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists() or version_of(binary) != version:
            _install(package, version, install_dir)
    found = version_of(binary)
    if found != version:
        raise RuntimeError(f"{binary} reports version {found!r} after installing {version}")
    return binary


def _install(package: str, version: str, install_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is needed to install {package}@{version} for the end-to-end tests")
    staging = install_dir.with_name(f"{install_dir.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    done = subprocess.run([npm, "install", "--prefix", str(staging), "--include=optional", "--no-audit", "--no-fund",
                           "--loglevel=error", f"{package}@{version}"], capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"npm install {package}@{version} failed:\n{done.stdout}\n{done.stderr}")
    shutil.rmtree(install_dir, ignore_errors=True)
    os.replace(staging, install_dir)
