"""How a forwarded MCP request is rewritten for its upstream: which server and name it goes to (the catalog and
the caller's allow-list decide), the name restored, `_meta` fitted to the upstream's protocol revision, and the
headers it carries there. Pure functions over plain dicts; `mcp_stage.py` calls them."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from .. import constants
from ..json_types import JsonObject
from ..mcp import jsonrpc
from ..mcp.catalog import Allow, Catalog
from ..mcp.jsonrpc import RpcError
from ..mcp.protocol import (
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    METHOD_HEADER,
    NAME_BEARING,
    NAME_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    header_value,
    is_stateless,
)
from ..mcp.upstream_client import UpstreamSession
from . import messages
from .mcp_relay import SSE_CONTENT_TYPE

SERVER_INFO: JsonObject = {"name": "babelgate", "title": "Babelgate MCP gateway", "version": "1"}
_CLIENT_META = (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES, META_CLIENT_INFO)


def target(method: str, params: JsonObject, catalog: Catalog, allow: Allow,
           refused: Callable[[str, str], None]) -> tuple[str, str]:
    """(server, upstream name or URI) a forwarded request goes to, or the JSON-RPC refusal (`refused` hears of a
    name the caller may not reach, for the audit log)."""
    if method == "tools/call" or method == "prompts/get":
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise RpcError(jsonrpc.INVALID_PARAMS, "params.name must be a non-empty string")
        target = (catalog.route_tool(name, allow) if method == "tools/call"
                  else catalog.route_prompt(name, allow))
        if target is None:
            refused(method, name)
            kind = "tool" if method == "tools/call" else "prompt"
            raise RpcError(jsonrpc.INVALID_PARAMS, f"Unknown {kind}: {name}", {"name": name})
        return target
    if method == "resources/read":
        uri = params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise RpcError(jsonrpc.INVALID_PARAMS, "params.uri must be a non-empty string")
        server = catalog.route_uri(uri, allow)
        if server is None:
            refused(method, uri)
            raise RpcError(jsonrpc.RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri})
        return server, uri
    ref = params.get("ref")
    if not isinstance(ref, dict):
        raise RpcError(jsonrpc.INVALID_PARAMS, "params.ref must be an object")
    if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
        target = catalog.route_prompt(ref["name"], allow)
    elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
        owner = catalog.route_uri(ref["uri"], allow)
        target = (owner, ref["uri"]) if owner is not None else None
    else:
        raise RpcError(jsonrpc.INVALID_PARAMS, "params.ref must be a ref/prompt with a name or a ref/resource "
                                               "with a uri")
    if target is None:
        raise RpcError(jsonrpc.INVALID_PARAMS, "Unknown completion reference", {"ref": ref})
    return target


def rename(method: str, params: JsonObject, upstream_name: str) -> None:
    """The upstream's own name back in place of the namespaced one."""
    if method in ("tools/call", "prompts/get"):
        params["name"] = upstream_name
    elif method == "completion/complete" and params["ref"].get("type") == "ref/prompt":
        params["ref"] = {**params["ref"], "name": upstream_name}

def fit_meta(params: JsonObject, upstream_version: str) -> None:
    """The client's `_meta` as the upstream's revision wants it: its progress token and own keys kept, the
    stateless envelope the gateway's for a stateless upstream and absent for a handshake one."""
    meta = params.get("_meta")
    kept = {k: v for k, v in meta.items() if k not in _CLIENT_META} if isinstance(meta, dict) else {}
    if is_stateless(upstream_version):
        kept.update({META_PROTOCOL_VERSION: upstream_version, META_CLIENT_CAPABILITIES: {},
                     META_CLIENT_INFO: SERVER_INFO})
    if kept:
        params["_meta"] = kept
    else:
        params.pop("_meta", None)

def upstream_headers(server: str, url: str, credentials: dict[str, str], upstream: UpstreamSession, method: str,
                     params: JsonObject, length: int) -> list[tuple[str, str]]:
    """What a forwarded request carries upstream: the route to the server, its path, the upstream session and
    revision (with the stateless revision's routing headers), and the gateway's credentials for that server."""
    headers = [(constants.HEADER_MCP, server), (":path", _path_of(url)),
               ("content-type", messages.JSON_CONTENT_TYPE), ("content-length", str(length)),
               ("accept", f"{messages.JSON_CONTENT_TYPE}, {SSE_CONTENT_TYPE}"), (VERSION_HEADER, upstream.version)]
    if upstream.session_id:
        headers.append((SESSION_HEADER, upstream.session_id))
    if is_stateless(upstream.version):
        headers.append((METHOD_HEADER, method))
        named = NAME_BEARING.get(method)
        if named is not None and isinstance(params.get(named), str):
            headers.append((NAME_HEADER, header_value(params[named])))
    headers.extend(credentials.items())
    return headers


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
