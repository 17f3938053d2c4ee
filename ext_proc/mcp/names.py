"""Namespacing: how one virtual server shows many servers' tools, prompts and resources without mixing them up.

- Tools and prompts: `<prefix><separator><name>`, e.g. `github__create_issue` (prefix: the server's name unless
  configured). A namespaced name splits at the FIRST separator. That is exact because config refuses a prefix in which
  the separator occurs anywhere but right after it (`a__b`, and `a_` with `__`, which would make `a___x` read as
  `a` + `_x`), and prefixes are unique: so `(prefix, name) -> namespaced` is one-to-one, whatever the upstream names
  hold (`x__y` upstream is `github__x__y`, and splits back to `x__y`).
- Resources keep their URIs: a URI is data a model may have seen elsewhere, and rewriting it (a gateway scheme
  wrapper) would break `file://`/`https://` meanings clients rely on. Each URI is mapped to the server that listed
  it (a table built from the lists, see `catalog.py`); a URI two servers list goes to the first in config order and
  the other's entry is dropped with a logged reason. URIs no list names are matched against the servers' URI
  templates (`{var}` matches one path segment, `{+var}`/`{/var}`... match anything), again first server first.
- An upstream name that can't be namespaced (the result over MCP's 128-character tool-name limit, whitespace or
  control characters in it, or a name listed twice by one server) is refused: left out of the catalog, with a
  reason the catalog records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_NAME_CHARS = 128
"""MCP's limit on a tool name; prompts get the same bound."""
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Refused in upstream names: MCP says names SHOULD be `[A-Za-z0-9._-]`; the gateway lets other characters through
but not these, which would break logs, headers (`Mcp-Name`) and the look of a tool list."""


class NamespaceError(ValueError):
    """A configuration that would make namespaced names ambiguous."""


class Namespace:
    """Server names <-> prefixes, and namespaced names <-> (server, upstream name)."""

    def __init__(self, servers: Iterable[tuple[str, str]], separator: str = "__") -> None:
        """`servers`: (server name, prefix) in config order."""
        if not separator:
            raise NamespaceError("the separator is empty")
        self.separator = separator
        self._prefix_of: dict[str, str] = {}
        self._server_of: dict[str, str] = {}
        for server, prefix in servers:
            self._add(server, prefix)

    def _add(self, server: str, prefix: str) -> None:
        if not prefix or (prefix + self.separator).find(self.separator) != len(prefix):
            raise NamespaceError(f"prefix {prefix!r} of server {server!r} contains or runs into the separator "
                                 f"{self.separator!r}")
        if server in self._prefix_of:
            raise NamespaceError(f"server {server!r} is named twice")
        if prefix in self._server_of:
            raise NamespaceError(f"prefix {prefix!r} is used by {self._server_of[prefix]!r} and {server!r}")
        self._prefix_of[server] = prefix
        self._server_of[prefix] = server

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(self._prefix_of)

    def name(self, server: str, original: str) -> str:
        """The namespaced name of `original` on `server` (KeyError for an unknown server)."""
        return self._prefix_of[server] + self.separator + original

    def split(self, namespaced: str) -> tuple[str, str] | None:
        """(server, upstream name), or None when the name belongs to no configured server."""
        at = namespaced.find(self.separator)
        if at <= 0:
            return None
        server = self._server_of.get(namespaced[:at])
        original = namespaced[at + len(self.separator):]
        return (server, original) if server is not None and original else None

    def refusal(self, server: str, original: object) -> str | None:
        """Why an upstream name can't be shown namespaced, or None when it can."""
        if not isinstance(original, str) or not original:
            return "the name is not a non-empty string"
        if _UNSAFE.search(original):
            return "the name holds whitespace or control characters"
        if len(self.name(server, original)) > MAX_NAME_CHARS:
            return f"the namespaced name would be longer than {MAX_NAME_CHARS} characters"
        return None


_TEMPLATE_PART = re.compile(r"\{([+#./;?&]?)[^{}]*\}")


def template_pattern(template: str) -> re.Pattern[str] | None:
    """A regular expression for the URIs an RFC 6570 URI template can produce (roughly: simple `{var}` stays within
    a path segment, operator expansions match anything); None for a template with unbalanced braces."""
    pieces: list[str] = []
    last = 0
    for match in _TEMPLATE_PART.finditer(template):
        pieces.append(re.escape(template[last:match.start()]))
        pieces.append("[^/?#]*" if match.group(1) == "" else ".*")
        last = match.end()
    rest = template[last:]
    if "{" in rest or "}" in rest:
        return None
    pieces.append(re.escape(rest))
    return re.compile("".join(pieces), re.DOTALL)
