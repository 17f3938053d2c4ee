"""MCP protocol revisions, their negotiation, and the HTTP and `_meta` names they use.

Two eras share one endpoint, told apart per request:
- handshake revisions (2024-11-05 .. 2025-11-25): `initialize` negotiates a version once; Streamable HTTP then
  carries `Mcp-Session-Id` (the gateway's own session, see `sessions.py`) and `MCP-Protocol-Version` on every request.
- stateless revisions (2026-07-28, the current one): no `initialize` and no session; every request carries its
  version and client capabilities in `params._meta` (mirrored by the `MCP-Protocol-Version`, `Mcp-Method` and
  `Mcp-Name` headers), and `server/discover` says what the server speaks.
The sets below mirror `mcp_types.version` of the pinned SDK (the unit tests compare them), so a new revision is a
deliberate change here, not an SDK upgrade's side effect.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..json_types import JsonObject
from .jsonrpc import HEADER_MISMATCH, INVALID_PARAMS, UNSUPPORTED_PROTOCOL_VERSION, RpcError

HANDSHAKE_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
STATELESS_VERSIONS: tuple[str, ...] = ("2026-07-28",)
LATEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[-1]
LATEST_VERSION = STATELESS_VERSIONS[-1]
BATCH_VERSIONS = frozenset({"2025-03-26"})
DEFAULT_HTTP_VERSION = "2025-03-26"
"""What a handshake-era request without `MCP-Protocol-Version` is taken to speak (the Streamable HTTP rule)."""

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"

LIST_METHODS: dict[str, str] = {
    "tools/list": "tools",
    "resources/list": "resources",
    "resources/templates/list": "resourceTemplates",
    "prompts/list": "prompts",
}
"""A list method -> the key of its result's array (also the catalog's kind)."""
LIST_CHANGED: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools",),
    "notifications/resources/list_changed": ("resources", "resourceTemplates"),
    "notifications/prompts/list_changed": ("prompts",),
}
"""An upstream's change notification -> the catalog kinds it makes stale."""


def negotiate(requested: object) -> str:
    """The version the gateway answers an `initialize` asking for `requested`: the same when it speaks it, else its
    latest handshake revision (the client then decides whether it can go on)."""
    return requested if isinstance(requested, str) and requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION


def allows_batches(version: str) -> bool:
    return version in BATCH_VERSIONS


def is_stateless(version: str) -> bool:
    return version in STATELESS_VERSIONS


NAME_BEARING: dict[str, str] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Stateless revision: a method -> the param mirrored as the `Mcp-Name` header."""
_HEADER_SAFE = re.compile(r"[\x20-\x7E]*")
_B64_SENTINEL = re.compile(r"=\?base64\?.*\?=")


def header_value(value: str) -> str:
    """`value` as an `Mcp-Name` header: verbatim when printable ASCII without edge spaces, else the revision's
    `=?base64?...?=` form (so any tool name or URI survives the trip)."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _B64_SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def _decoded_header(value: str | None) -> str | None:
    """Inverse of `header_value`; None for a malformed `=?base64?...?=` (so it never matches by accident)."""
    if value is None or not _B64_SENTINEL.fullmatch(value):
        return value
    payload = value[len("=?base64?"):-2]
    try:
        decoded = base64.b64decode(payload, validate=True)
        return decoded.decode() if base64.b64encode(decoded).decode() == payload else None
    except (binascii.Error, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a stateless-revision request says about its client, read from `params._meta`."""

    version: str
    capabilities: JsonObject
    client_info: JsonObject | None


def read_envelope(method: str, params: JsonObject | None, headers: Mapping[str, str]) -> Envelope:
    """Check a stateless-revision request as the revision requires, in the SDK's order (first failure wins): the
    `_meta` envelope is there (INVALID_PARAMS), the routing headers agree with the body (HEADER_MISMATCH), the
    version is one the gateway speaks (UNSUPPORTED_PROTOCOL_VERSION, `data` naming the supported ones). `headers`
    are keyed by lowercase name."""
    meta = (params or {}).get("_meta")
    if not isinstance(meta, dict) or META_PROTOCOL_VERSION not in meta or META_CLIENT_CAPABILITIES not in meta:
        raise RpcError(INVALID_PARAMS, f"params._meta must carry {META_PROTOCOL_VERSION!r} and "
                                       f"{META_CLIENT_CAPABILITIES!r}")
    version = meta[META_PROTOCOL_VERSION]
    _check_headers(method, params or {}, version, headers)
    if not isinstance(version, str):
        raise RpcError(INVALID_PARAMS, "the protocol version is not a string")
    if version not in STATELESS_VERSIONS:
        raise RpcError(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                       {"supported": list(STATELESS_VERSIONS), "requested": version})
    capabilities = meta[META_CLIENT_CAPABILITIES]
    if not isinstance(capabilities, dict):
        raise RpcError(INVALID_PARAMS, "the client capabilities are not an object")
    info = meta.get(META_CLIENT_INFO)
    return Envelope(version, capabilities, info if isinstance(info, dict) else None)


def _check_headers(method: str, params: JsonObject, version: object, headers: Mapping[str, str]) -> None:
    if headers.get(VERSION_HEADER) != version:
        raise RpcError(HEADER_MISMATCH, f"the {VERSION_HEADER} header does not match params._meta's version")
    if headers.get(METHOD_HEADER) != method:
        raise RpcError(HEADER_MISMATCH, f"the {METHOD_HEADER} header does not match the method")
    named = NAME_BEARING.get(method)
    if named is not None and params.get(named) is not None and _decoded_header(headers.get(NAME_HEADER)) != (
            params[named]):
        raise RpcError(HEADER_MISMATCH, f"the {NAME_HEADER} header does not match params.{named}")
