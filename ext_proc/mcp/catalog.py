"""The merged view of every upstream server's lists (tools, resources, resource templates, prompts), answered
page by page from memory.

Decisions worth knowing before changing this file:
- Items are stored already namespaced (`names.py`), as plain dicts, in config order of servers then upstream order:
  a page is a filter and a slice, no copying per request beyond the page itself.
- Freshness is per (server, kind): `stale()` says what to fetch again (never fetched, older than the TTL, or
  invalidated by the upstream's `notifications/*/list_changed`); the caller fetches (`upstream_client.py`) and
  calls `update()`. A server that could not be listed keeps its last good lists (the refresh is retried) rather than
  vanishing from the catalog for a blip.
- The caller's allow-list (`Allow`) filters servers for every kind and, for tools, the namespaced tool name too;
  a key's and its team's lists both apply (a name must pass each). A filtered-out item is invisible: it is neither
  listed nor routed (`route_tool` takes the same `Allow`).
- Cursors are the gateway's own, opaque: `base64url(kind, offset, allow fingerprint) + HMAC-SHA256` truncated to 16
  bytes, under a key given at construction (share it across processes so any of them continues another's listing).
  A cursor that does not verify, was minted for another kind or another caller's allow-list, or points past the end
  is `INVALID_PARAMS`. The position is an offset: a list that changes between two pages may repeat or skip an item,
  as with any offset pagination; MCP clients re-list on `list_changed`.
- Upstream cursors never reach the client: the upstream client follows every upstream page to the end.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from ..json_types import JsonObject
from .jsonrpc import INVALID_PARAMS, RpcError
from .names import Namespace, template_pattern
from .protocol import LIST_CHANGED, LIST_METHODS

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("tools", "resources", "resourceTemplates", "prompts")
NAMED_KINDS = frozenset({"tools", "prompts"})
"""Kinds whose items are namespaced by `name`; the others keep their URIs."""
MAX_CURSOR_CHARS = 512
MAX_VISIBLE_CACHED = 4096
_TAG_BYTES = 16


def _compile(globs: Iterable[str]) -> re.Pattern[str]:
    """One pattern for a list of fnmatch globs (case-sensitive, whatever the platform); no globs admit nothing."""
    parts = [fnmatch.translate(glob) for glob in globs]
    return re.compile("|".join(f"(?:{part})" for part in parts) if parts else "(?!)")


class Allow:
    """What one caller may see and call: every glob list given must admit a server (by name) and a tool (by its
    namespaced name). Built once per key (cache it with the key), not per request."""

    def __init__(self, server_globs: Iterable[Iterable[str]] = (("*",),),
                 tool_globs: Iterable[Iterable[str]] = (("*",),)) -> None:
        self._servers = tuple(_compile(globs) for globs in server_globs)
        self._tools = tuple(_compile(globs) for globs in tool_globs)
        source = orjson.dumps([[p.pattern for p in self._servers], [p.pattern for p in self._tools]])
        self.fingerprint = hashlib.sha256(source).digest()[:8]

    def server(self, server: str) -> bool:
        return all(pattern.match(server) for pattern in self._servers)

    def tool(self, server: str, namespaced: str) -> bool:
        return self.server(server) and all(pattern.match(namespaced) for pattern in self._tools)

    def item(self, kind: str, server: str, item: JsonObject) -> bool:
        return self.tool(server, item["name"]) if kind == "tools" else self.server(server)


EVERYTHING = Allow()


@dataclass
class _Lists:
    items: list[JsonObject] = field(default_factory=list)
    fetched_at: float | None = None
    invalid: bool = True


@dataclass(frozen=True, slots=True)
class Refused:
    """An upstream item left out of the catalog, and why (for `ListRoutes`/admin and the logs)."""

    server: str
    kind: str
    name: str
    reason: str


class Catalog:
    def __init__(self, namespace: Namespace, *, page_size: int, ttl: float, cursor_key: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.namespace = namespace
        self.page_size = page_size
        self.ttl = ttl
        self._key = cursor_key or secrets.token_bytes(32)
        self._clock = clock
        self._lists = {(server, kind): _Lists() for server in namespace.servers for kind in KINDS}
        self._merged: dict[str, list[tuple[str, JsonObject]]] = {kind: [] for kind in KINDS}
        self._tools: dict[str, tuple[str, str]] = {}
        self._prompts: dict[str, tuple[str, str]] = {}
        self._uris: dict[str, str] = {}
        self._templates: list[tuple[re.Pattern[str], str]] = []
        self.refused: list[Refused] = []
        """Items an upstream listed that the catalog left out (bad or clashing names), with why."""
        self.shadowed: list[Refused] = []
        """Resources left out because an earlier server (config order) lists the same URI."""
        self._visible: dict[tuple[str, bytes], list[JsonObject]] = {}

    # -- freshness ---------------------------------------------------------------------------------------------

    def stale(self) -> list[tuple[str, str]]:
        """(server, kind) pairs to fetch again: never fetched, invalidated, or older than the TTL."""
        now = self._clock()
        return [key for key, lists in self._lists.items()
                if lists.invalid or lists.fetched_at is None or now - lists.fetched_at >= self.ttl]

    def invalidate(self, server: str, kinds: Iterable[str] = KINDS) -> None:
        for kind in kinds:
            self._lists[(server, kind)].invalid = True

    def notified(self, server: str, method: str) -> bool:
        """Handle an upstream notification; True when it was a `list_changed` (the server's lists are now stale)."""
        kinds = LIST_CHANGED.get(method)
        if kinds is None:
            return False
        self.invalidate(server, kinds)
        return True

    def update(self, server: str, kind: str, items: list[JsonObject]) -> None:
        """The full upstream list of `kind` from `server`, as the upstream sent it (not namespaced yet)."""
        lists = self._lists[(server, kind)]
        self.refused = [r for r in self.refused if (r.server, r.kind) != (server, kind)]
        lists.items = self._accept(server, kind, items)
        lists.fetched_at = self._clock()
        lists.invalid = False
        self._rebuild()

    def _accept(self, server: str, kind: str, items: list[JsonObject]) -> list[JsonObject]:
        accepted: list[JsonObject] = []
        seen: set[str] = set()
        key = "name" if kind in NAMED_KINDS else ("uriTemplate" if kind == "resourceTemplates" else "uri")
        for item in items:
            value = item.get(key) if isinstance(item, dict) else None
            reason = self._refusal(server, kind, value, seen)
            if reason is not None or not isinstance(value, str):
                self._refuse(server, kind, str(value)[:200], reason or "not a string")
                continue
            seen.add(value)
            accepted.append({**item, "name": self.namespace.name(server, value)} if kind in NAMED_KINDS else item)
        return accepted

    def _refusal(self, server: str, kind: str, value: object, seen: set[str]) -> str | None:
        if kind in NAMED_KINDS:
            reason = self.namespace.refusal(server, value)
            if reason is not None:
                return reason
        elif not isinstance(value, str) or not value:
            return "no URI"
        elif kind == "resourceTemplates" and template_pattern(value) is None:
            return "the URI template is malformed"
        return "listed twice by the same server" if value in seen else None

    def _refuse(self, server: str, kind: str, name: str, reason: str) -> None:
        log.warning("MCP server %s: %s %r left out: %s", server, kind, name, reason)
        self.refused.append(Refused(server, kind, name, reason))

    def _rebuild(self) -> None:
        merged: dict[str, list[tuple[str, JsonObject]]] = {kind: [] for kind in KINDS}
        tools: dict[str, tuple[str, str]] = {}
        prompts: dict[str, tuple[str, str]] = {}
        uris: dict[str, str] = {}
        templates: list[tuple[re.Pattern[str], str]] = []
        shadowed: list[Refused] = []
        for server in self.namespace.servers:
            for kind in KINDS:
                for item in self._lists[(server, kind)].items:
                    if kind == "resources" and uris.setdefault(item["uri"], server) != server:
                        # another server listed it first: its entry wins (see `names.py`)
                        shadowed.append(Refused(server, kind, item["uri"][:200],
                                                f"server {uris[item['uri']]!r} lists the same URI"))
                        continue
                    merged[kind].append((server, item))
                    target = self.namespace.split(item["name"]) if kind in NAMED_KINDS else None
                    if target is not None:
                        (tools if kind == "tools" else prompts)[item["name"]] = target
                    pattern = template_pattern(item["uriTemplate"]) if kind == "resourceTemplates" else None
                    if pattern is not None:
                        templates.append((pattern, server))
        for entry in set(shadowed) - set(self.shadowed):
            log.warning("MCP server %s: resource %r left out: %s", entry.server, entry.name, entry.reason)
        self._merged, self._tools, self._prompts, self._uris, self._templates, self.shadowed = (
            merged, tools, prompts, uris, templates, shadowed)
        self._visible.clear()

    def merged(self, kind: str) -> list[tuple[str, JsonObject]]:
        """Every (server, item) of `kind`, before any allow-list."""
        return self._merged[kind]

    # -- answers -----------------------------------------------------------------------------------------------

    def page(self, method: str, allow: Allow = EVERYTHING, cursor: object = None) -> JsonObject:
        """The result of a list method (`tools/list`, ...) for a caller: one page and, when more follow, its
        `nextCursor`. Raises `RpcError(INVALID_PARAMS)` for a cursor this catalog did not mint for this list."""
        kind = LIST_METHODS[method]
        visible = self._visible_to(kind, allow)
        start = 0 if cursor is None else self._position(cursor, kind, allow)
        if start > len(visible):
            raise RpcError(INVALID_PARAMS, "invalid cursor", {"reason": "past the end of the list"})
        end = start + self.page_size
        answer: JsonObject = {kind: visible[start:end]}
        if end < len(visible):
            answer["nextCursor"] = self._cursor(kind, end, allow)
        return answer

    def _visible_to(self, kind: str, allow: Allow) -> list[JsonObject]:
        """The items of `kind` `allow` admits; remembered per allow-list until the lists change (allow-lists come
        from config and keys, not from request text, so the table stays small; bounded all the same)."""
        cache_key = (kind, allow.fingerprint)
        visible = self._visible.get(cache_key)
        if visible is None:
            visible = [item for server, item in self._merged[kind] if allow.item(kind, server, item)]
            if len(self._visible) >= MAX_VISIBLE_CACHED:
                self._visible.clear()
            self._visible[cache_key] = visible
        return visible

    def route_tool(self, namespaced: str, allow: Allow = EVERYTHING) -> tuple[str, str] | None:
        """(server, upstream tool name) for a tool this caller may call, else None (unknown and forbidden look
        alike in the catalog; the caller decides which error to give, see `explain_tool`)."""
        target = self._tools.get(namespaced)
        return target if target is not None and allow.tool(target[0], namespaced) else None

    def explain_tool(self, namespaced: str) -> str:
        """Why `route_tool` found nothing: 'unknown' (no server lists it) or 'forbidden' (the caller's allow-list)."""
        return "forbidden" if namespaced in self._tools else "unknown"

    def route_prompt(self, namespaced: str, allow: Allow = EVERYTHING) -> tuple[str, str] | None:
        target = self._prompts.get(namespaced)
        return target if target is not None and allow.server(target[0]) else None

    def route_uri(self, uri: str, allow: Allow = EVERYTHING) -> str | None:
        """The server that serves `uri`: the one that listed it, else the first whose template matches it."""
        server = self._uris.get(uri)
        if server is None:
            server = next((owner for pattern, owner in self._templates if pattern.fullmatch(uri)), None)
        return server if server is not None and allow.server(server) else None

    # -- cursors -----------------------------------------------------------------------------------------------

    def _cursor(self, kind: str, offset: int, allow: Allow) -> str:
        body = orjson.dumps([KINDS.index(kind), offset]) + allow.fingerprint
        tag = hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG_BYTES]
        return base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode()

    def _position(self, cursor: object, kind: str, allow: Allow) -> int:
        if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_CHARS:
            raise RpcError(INVALID_PARAMS, "invalid cursor", {"reason": "not a cursor this gateway gave"})
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except ValueError:
            raw = b""
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()[:_TAG_BYTES]
        if len(raw) <= _TAG_BYTES + 8 or not hmac.compare_digest(tag, expected):
            raise RpcError(INVALID_PARAMS, "invalid cursor", {"reason": "not a cursor this gateway gave"})
        kind_index, offset = orjson.loads(body[:-8])
        if KINDS[kind_index] != kind or body[-8:] != allow.fingerprint:
            raise RpcError(INVALID_PARAMS, "invalid cursor", {"reason": "the cursor belongs to another listing"})
        return int(offset)
