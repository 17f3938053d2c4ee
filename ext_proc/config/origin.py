"""Where a configuration came from: its file, and the line of each YAML node by path.

The loader records this once, on the `Config` it returns, so that problems found after validation (a secret's
environment variable not set, at `compile_runtime`) are reported at their YAML path and line like validation errors
are, without reading the file again (it may have changed since).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

Loc = tuple[str | int, ...]
"""A path into the config as pydantic reports it: `("routes", 1, "backends", 0, "backend")`."""


@dataclass(frozen=True, slots=True)
class Origin:
    source: str = "<config>"
    lines: dict[Loc, int] = field(default_factory=dict)
    """1-based line of every node (mapping value or sequence item) of the YAML document, by path."""
    read: dict[Path, tuple[int, int, int] | None] = field(default_factory=dict)
    """The files the config was read from (itself, its keys file), each as it was just before it was read: a
    reloader starts from these, so an edit landing while the config was read or the stack started is not taken
    for one already seen (`config/watch.py`)."""

    def line(self, loc: Sequence[str | int]) -> int | None:
        """The line of the deepest node along `loc` that the file has (a missing field: its parent's line)."""
        path = tuple(loc)
        while path:
            found = self.lines.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return self.lines.get(())

    def where(self, loc: Sequence[str | int]) -> str:
        """`routes[1].backends[0].backend (line 14)`: the path, and its line when the file has one."""
        line = self.line(loc)
        return f"{dotted(loc) or '(top level)'}{f' (line {line})' if line else ''}"

    def at(self, loc: Sequence[str | int]) -> str:
        """`babelgate.yaml: backends[1].api_key (line 12)`: `where`, after the file's name."""
        return f"{self.source}: {self.where(loc)}"


def dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def node_lines(root: yaml.Node | None) -> dict[Loc, int]:
    """Every node's line by path, walked without recursion (a deep document can't exhaust the stack). A node that
    YAML aliases (`*name`) is walked once, under its first path: aliases can make a document recursive."""
    lines: dict[Loc, int] = {}
    stack: list[tuple[Loc, yaml.Node]] = [((), root)] if root is not None else []
    seen: set[int] = set()
    while stack:
        path, node = stack.pop()
        lines[path] = node.start_mark.line + 1
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(((*path, key.value), value) for key, value in node.value
                         if isinstance(key, yaml.ScalarNode))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(((*path, index), item) for index, item in enumerate(node.value))
    return lines
