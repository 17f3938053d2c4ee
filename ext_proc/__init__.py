"""Babelgate: an AI gateway inside Envoy (this package is its ext_proc server and the `babelgate` command).

The version is looked up when asked for (`version()`, `ext_proc.__version__`), not at import: every server process
imports this package, and only `babelgate --version` needs it.
"""

from __future__ import annotations

from pathlib import Path

_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version() -> str:
    """The installed distribution's version; from a source tree that was never installed, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("babelgate")
    except PackageNotFoundError:
        return _source_version(_PYPROJECT)


def _source_version(pyproject: Path) -> str:
    import tomllib

    try:
        with pyproject.open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
