"""The MCP protocol core: JSON-RPC parsing and building, namespacing, the merged catalog, protocol versions, and the
`mcp:` config section."""

from __future__ import annotations

import base64

import mcp.types as types
import orjson
import pytest
from mcp.shared.inbound import classify_inbound_request
from mcp.types import version as sdk_versions
from pydantic import ValidationError

from ext_proc.config.models import Config, McpSettings, Team, VirtualKey
from ext_proc.mcp import jsonrpc, protocol
from ext_proc.mcp.catalog import Allow, Catalog
from ext_proc.mcp.jsonrpc import RpcError, parse_body
from ext_proc.mcp.names import Namespace, NamespaceError, template_pattern

# -- JSON-RPC -----------------------------------------------------------------------------------------------------


def _one(body: bytes | str, *, allow_batch: bool = False) -> jsonrpc.Message:
    parsed = parse_body(body.encode() if isinstance(body, str) else body, allow_batch=allow_batch, max_bytes=1 << 20)
    assert not parsed.batch and isinstance(parsed.items[0], jsonrpc.Message)
    return parsed.items[0]


def _refused(body: bytes | str, **options: object) -> RpcError:
    options = {"allow_batch": False, "max_bytes": 1 << 20, **options}
    with pytest.raises(RpcError) as caught:
        parse_body(body.encode() if isinstance(body, str) else body, **options)  # type: ignore[arg-type]
    return caught.value


def test_request_notification_and_response_are_told_apart() -> None:
    request = _one('{"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"cursor":"x"}}')
    assert (request.kind, request.id, request.method, request.params) == ("request", 7, "tools/list", {"cursor": "x"})
    note = _one('{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert (note.kind, note.id, note.params) == ("notification", None, None)
    answer = _one('{"jsonrpc":"2.0","id":"a","result":{}}')
    assert (answer.kind, answer.id) == ("response", "a")
    assert _one('{"jsonrpc":"2.0","id":"b","error":{"code":-1,"message":"no"}}').kind == "response"


@pytest.mark.parametrize(("body", "code"), [
    ("{not json", jsonrpc.PARSE_ERROR),
    ("", jsonrpc.PARSE_ERROR),
    ('"text"', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"1.0","id":1,"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"id":1,"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":null,"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1.5,"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":true,"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":9007199254740992,"method":"ping"}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"method":""}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"method":5}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"method":"ping","params":[1,2]}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","result":{}}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"x"}}', jsonrpc.INVALID_REQUEST),
    ('{"jsonrpc":"2.0","id":1,"result":[]}', jsonrpc.INVALID_REQUEST),
])
def test_malformed_messages_are_refused_with_the_standard_code(body: str, code: int) -> None:
    assert _refused(body).code == code


def test_a_refusal_keeps_a_readable_id_and_drops_an_unreadable_one() -> None:
    assert _refused('{"jsonrpc":"1.0","id":"k","method":"ping"}').id == "k"
    assert _refused('{"jsonrpc":"2.0","id":' + "9" * 30 + ',"method":"ping"}').id is None
    error = orjson.loads(_refused('{"jsonrpc":"2.0","id":1,"method":"ping","params":3}').encode())
    assert error == {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "params must be an object"}}


def test_huge_ids_and_bodies_are_bounded() -> None:
    assert _one('{"jsonrpc":"2.0","id":"' + "x" * 256 + '","method":"ping"}').id == "x" * 256
    assert "longer" in _refused('{"jsonrpc":"2.0","id":"' + "x" * 257 + '","method":"ping"}').message
    assert _one('{"jsonrpc":"2.0","id":-9007199254740991,"method":"ping"}').id == -(2**53 - 1)
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"' + b"x" * 2000 + b'"}}'
    big = _refused(body, max_bytes=1024)
    assert big.code == jsonrpc.INVALID_REQUEST and big.data == {"max_bytes": 1024, "bytes": len(body)}


def test_batches_only_where_the_revision_has_them() -> None:
    batch = '[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},{"id":3}]'
    refused = _refused(batch)
    assert refused.code == jsonrpc.INVALID_REQUEST and "batches" in refused.message
    assert protocol.allows_batches("2025-03-26") and not protocol.allows_batches("2025-06-18")
    parsed = parse_body(batch.encode(), allow_batch=protocol.allows_batches("2025-03-26"), max_bytes=1 << 20)
    assert parsed.batch
    first, second, third = parsed.items
    assert isinstance(first, jsonrpc.Message) and first.kind == "request"
    assert isinstance(second, jsonrpc.Message) and second.kind == "notification"
    assert isinstance(third, RpcError) and third.code == jsonrpc.INVALID_REQUEST
    assert "empty" in _refused("[]", allow_batch=True).message
    too_long = "[" + ",".join(['{"jsonrpc":"2.0","method":"n"}'] * 65) + "]"
    assert "too long" in _refused(too_long, allow_batch=True).message


def test_answers_are_json_rpc_the_sdk_accepts() -> None:
    ok = orjson.loads(jsonrpc.result(3, {"tools": []}))
    types.JSONRPCResponse.model_validate(ok)
    refusal = orjson.loads(jsonrpc.error("a", jsonrpc.FORBIDDEN, "tool not allowed", {"tool": "gh__x"}))
    assert types.JSONRPCError.model_validate(refusal).error.data == {"tool": "gh__x"}
    types.JSONRPCNotification.model_validate(orjson.loads(jsonrpc.notification("notifications/tools/list_changed")))
    types.JSONRPCRequest.model_validate(orjson.loads(jsonrpc.request(1, "ping")))


def test_gateway_error_codes_stay_clear_of_the_codes_mcp_uses() -> None:
    sdk_codes = {value for name, value in vars(types.jsonrpc).items() if name.isupper() and isinstance(value, int)}
    ours = {jsonrpc.FORBIDDEN, jsonrpc.RATE_LIMITED, jsonrpc.TOO_LARGE, jsonrpc.UPSTREAM_UNAVAILABLE,
            jsonrpc.UPSTREAM_TIMEOUT, jsonrpc.SESSION_UNKNOWN, jsonrpc.BLOCKED}
    assert not ours & sdk_codes and all(-32089 <= code <= -32080 for code in ours)
    assert {jsonrpc.PARSE_ERROR, jsonrpc.INVALID_PARAMS, jsonrpc.HEADER_MISMATCH,
            jsonrpc.UNSUPPORTED_PROTOCOL_VERSION} <= sdk_codes


# -- protocol versions --------------------------------------------------------------------------------------------


def test_protocol_revisions_match_the_pinned_sdk() -> None:
    assert protocol.HANDSHAKE_VERSIONS == sdk_versions.HANDSHAKE_PROTOCOL_VERSIONS
    assert protocol.STATELESS_VERSIONS == sdk_versions.MODERN_PROTOCOL_VERSIONS
    assert protocol.LATEST_VERSION == types.LATEST_PROTOCOL_VERSION
    assert protocol.META_PROTOCOL_VERSION == types.PROTOCOL_VERSION_META_KEY
    assert protocol.META_CLIENT_CAPABILITIES == types.CLIENT_CAPABILITIES_META_KEY


@pytest.mark.parametrize(("asked", "answered"), [
    ("2025-06-18", "2025-06-18"), ("2024-11-05", "2024-11-05"), ("2099-01-01", "2025-11-25"),
    ("2026-07-28", "2025-11-25"), (None, "2025-11-25"), (20250618, "2025-11-25")])
def test_initialize_answers_the_clients_version_or_the_latest_handshake_one(asked: object, answered: str) -> None:
    assert protocol.negotiate(asked) == answered


_META = {protocol.META_PROTOCOL_VERSION: "2026-07-28", protocol.META_CLIENT_CAPABILITIES: {},
         protocol.META_CLIENT_INFO: {"name": "c", "version": "1"}}
_HEADERS = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "gh__x"}


@pytest.mark.parametrize(("params", "headers", "code"), [
    ({"name": "gh__x", "_meta": _META}, _HEADERS, None),
    ({"name": "gh__x"}, _HEADERS, jsonrpc.INVALID_PARAMS),
    ({"name": "gh__x", "_meta": {protocol.META_PROTOCOL_VERSION: "2026-07-28"}}, _HEADERS, jsonrpc.INVALID_PARAMS),
    ({"name": "gh__x", "_meta": _META}, {**_HEADERS, "mcp-name": "gh__y"}, jsonrpc.HEADER_MISMATCH),
    ({"name": "gh__x", "_meta": _META}, {**_HEADERS, "mcp-method": "tools/list"}, jsonrpc.HEADER_MISMATCH),
    ({"name": "gh__x", "_meta": _META}, {"mcp-method": "tools/call", "mcp-name": "gh__x"}, jsonrpc.HEADER_MISMATCH),
    ({"name": "gh__x", "_meta": {**_META, protocol.META_PROTOCOL_VERSION: "2025-11-25"}},
     {**_HEADERS, "mcp-protocol-version": "2025-11-25"}, jsonrpc.UNSUPPORTED_PROTOCOL_VERSION),
    ({"name": "gh__x", "_meta": {**_META, protocol.META_PROTOCOL_VERSION: "2025-11-25"}}, _HEADERS,
     jsonrpc.HEADER_MISMATCH),
    ({"name": "héllo", "_meta": _META}, {**_HEADERS, "mcp-name": protocol.header_value("héllo")}, None),
    ({"name": "héllo", "_meta": _META}, {**_HEADERS, "mcp-name": "=?base64?!!?="}, jsonrpc.HEADER_MISMATCH),
])
def test_stateless_envelopes_are_checked_as_the_sdk_checks_them(params: dict, headers: dict, code: int | None) -> None:
    sdk = classify_inbound_request({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
                                   headers=headers)
    assert getattr(sdk, "code", None) == code
    if code is None:
        envelope = protocol.read_envelope("tools/call", params, headers)
        assert (envelope.version, envelope.capabilities, envelope.client_info) == (
            "2026-07-28", {}, {"name": "c", "version": "1"})
        return
    with pytest.raises(RpcError) as caught:
        protocol.read_envelope("tools/call", params, headers)
    assert caught.value.code == code
    if code == jsonrpc.UNSUPPORTED_PROTOCOL_VERSION:
        assert caught.value.data == sdk.data  # type: ignore[union-attr]


def test_name_headers_survive_any_name() -> None:
    assert protocol.header_value("gh__create_issue") == "gh__create_issue"
    encoded = protocol.header_value("résumé ")
    assert base64.b64decode(encoded[len("=?base64?"):-2]).decode() == "résumé "


# -- namespacing --------------------------------------------------------------------------------------------------


def test_names_round_trip_whatever_the_upstream_name_holds() -> None:
    names = Namespace([("github", "github"), ("fs", "files")], "__")
    for server, original in [("github", "create_issue"), ("github", "x__y"), ("fs", "__read"), ("fs", "a-b.c")]:
        assert names.split(names.name(server, original)) == (server, original)
    assert names.name("fs", "read") == "files__read"
    assert names.split("github__") is None and names.split("nobody__x") is None and names.split("plain") is None
    assert names.split("__x") is None


@pytest.mark.parametrize(("servers", "separator", "problem"), [
    ([("a", "a__b")], "__", "separator"),
    ([("a", "a_")], "__", "separator"),
    ([("a", "x"), ("b", "x")], "__", "prefix 'x'"),
    ([("a", "a"), ("a", "b")], "__", "twice"),
    ([("a", "")], "__", "separator"),
    ([("a", "ab")], "b", "separator"),
])
def test_configs_that_could_collide_are_refused(servers: list, separator: str, problem: str) -> None:
    with pytest.raises(NamespaceError, match=problem):
        Namespace(servers, separator)


def test_prefixes_that_run_into_the_separator_are_refused_because_names_would_collide() -> None:
    """`a_` + `__` + `x` and `a` + `__` + `_x` are the same string: such a pair must never be accepted."""
    assert "a_" + "__" + "x" == "a" + "__" + "_x"
    with pytest.raises(NamespaceError):
        Namespace([("a", "a"), ("b", "a_")], "__")


def test_uri_templates_match_the_uris_they_expand_to() -> None:
    simple = template_pattern("file:///{dir}/{name}.txt")
    assert simple is not None and simple.fullmatch("file:///docs/a.txt")
    assert not simple.fullmatch("file:///docs/deep/a.txt")
    reserved = template_pattern("repo://{owner}/files{+path}")
    assert reserved is not None and reserved.fullmatch("repo://me/files/a/b/c")
    assert template_pattern("bad://{x") is None


# -- catalog ------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _tools(*names: str) -> list[dict]:
    return [{"name": name, "description": name, "inputSchema": {"type": "object"}} for name in names]


def _catalog(page_size: int = 3, clock: Clock | None = None, key: bytes = b"k" * 32) -> Catalog:
    catalog = Catalog(Namespace([("github", "gh"), ("files", "files")]), page_size=page_size, ttl=60,
                      cursor_key=key, clock=clock or Clock())
    catalog.update("github", "tools", _tools("create_issue", "list_issues", "close_issue"))
    catalog.update("files", "tools", _tools("read", "write"))
    catalog.update("github", "resources", [{"uri": "gh://repo/readme", "name": "readme"},
                                           {"uri": "shared://x", "name": "x"}])
    catalog.update("files", "resources", [{"uri": "file:///etc/motd", "name": "motd"},
                                          {"uri": "shared://x", "name": "x too"}])
    catalog.update("files", "resourceTemplates", [{"uriTemplate": "file:///{dir}/{name}", "name": "file"}])
    catalog.update("github", "prompts", [{"name": "triage"}])
    return catalog


def _everything(catalog: Catalog, method: str, allow: Allow | None = None) -> list[dict]:
    items, cursor, key = [], None, protocol.LIST_METHODS[method]
    while True:
        page = catalog.page(method, allow or Allow(), cursor)
        items += page[key]
        cursor = page.get("nextCursor")
        if cursor is None:
            return items


def test_lists_merge_in_server_order_namespaced_and_paginated() -> None:
    catalog = _catalog(page_size=2)
    first = catalog.page("tools/list")
    assert [t["name"] for t in first["tools"]] == ["gh__create_issue", "gh__list_issues"]
    assert [t["name"] for t in _everything(catalog, "tools/list")] == [
        "gh__create_issue", "gh__list_issues", "gh__close_issue", "files__read", "files__write"]
    for page in (first, catalog.page("tools/list", cursor=first["nextCursor"])):
        types.ListToolsResult.model_validate(page)
    types.ListResourcesResult.model_validate(catalog.page("resources/list"))
    types.ListResourceTemplatesResult.model_validate(catalog.page("resources/templates/list"))
    types.ListPromptsResult.model_validate(catalog.page("prompts/list"))
    assert catalog.page("prompts/list") == {"prompts": [{"name": "gh__triage"}]}


def test_calls_route_to_the_server_with_the_name_restored() -> None:
    catalog = _catalog()
    assert catalog.route_tool("gh__close_issue") == ("github", "close_issue")
    assert catalog.route_tool("files__read") == ("files", "read")
    assert catalog.route_tool("gh__nope") is None and catalog.explain_tool("gh__nope") == "unknown"
    assert catalog.route_prompt("gh__triage") == ("github", "triage")


def test_resources_keep_their_uris_and_map_to_the_first_server_listing_them() -> None:
    catalog = _catalog()
    uris = [(r["uri"], r["name"]) for r in _everything(catalog, "resources/list")]
    assert uris == [("gh://repo/readme", "readme"), ("shared://x", "x"), ("file:///etc/motd", "motd")]
    assert catalog.route_uri("shared://x") == "github"
    assert [(r.server, r.name) for r in catalog.shadowed] == [("files", "shared://x")]
    assert catalog.route_uri("file:///etc/motd") == "files"
    assert catalog.route_uri("file:///tmp/notes") == "files"  # by the template
    assert catalog.route_uri("nowhere://x") is None


def test_allow_lists_hide_and_refuse_what_a_caller_may_not_use() -> None:
    catalog = _catalog()
    allow = Allow(server_globs=[["github", "files"], ["git*"]], tool_globs=[["gh__*_issue"], ["*"]])
    assert [t["name"] for t in _everything(catalog, "tools/list", allow)] == ["gh__create_issue", "gh__close_issue"]
    assert catalog.route_tool("gh__list_issues", allow) is None
    assert catalog.explain_tool("gh__list_issues") == "forbidden"
    assert catalog.route_tool("files__read", allow) is None
    assert catalog.route_uri("file:///etc/motd", allow) is None
    assert [r["uri"] for r in _everything(catalog, "resources/list", allow)] == ["gh://repo/readme", "shared://x"]
    assert _everything(catalog, "tools/list", Allow(server_globs=[[]])) == []
    assert catalog.route_tool("GH__CREATE_ISSUE", Allow(tool_globs=[["gh__*"]])) is None  # names are case-sensitive


@pytest.mark.parametrize("tamper", [
    lambda c: c[:-2] + ("AA" if c[-2:] != "AA" else "BB"),
    lambda c: "x" + c,
    lambda c: "",
    lambda c: "!!!not base64!!!",
    lambda c: c * 20,
    lambda c: base64.urlsafe_b64encode(b"[0,1]" + b"\0" * 24).decode().rstrip("="),
])
def test_tampered_cursors_are_invalid_params(tamper) -> None:
    catalog = _catalog(page_size=2)
    cursor = catalog.page("tools/list")["nextCursor"]
    with pytest.raises(RpcError) as caught:
        catalog.page("tools/list", cursor=tamper(cursor))
    assert caught.value.code == jsonrpc.INVALID_PARAMS


def test_a_cursor_works_only_for_its_own_listing_and_gateway_key() -> None:
    catalog = _catalog(page_size=2)
    cursor = catalog.page("tools/list")["nextCursor"]
    for method, allow in [("prompts/list", Allow()), ("tools/list", Allow(tool_globs=[["gh__*"]]))]:
        with pytest.raises(RpcError, match="invalid cursor"):
            catalog.page(method, allow, cursor)
    with pytest.raises(RpcError):
        _catalog(page_size=2, key=b"other" * 8).page("tools/list", cursor=cursor)
    assert _catalog(page_size=2).page("tools/list", cursor=cursor)["tools"][0]["name"] == "gh__close_issue"
    with pytest.raises(RpcError):
        catalog.page("tools/list", cursor=123)


def test_a_cursor_past_a_shrunken_list_is_invalid() -> None:
    catalog = _catalog(page_size=1)
    cursor = _cursor_at(catalog, 4)
    catalog.update("files", "tools", [])
    with pytest.raises(RpcError, match="invalid cursor"):
        catalog.page("tools/list", cursor=cursor)


def _cursor_at(catalog: Catalog, pages: int) -> str:
    cursor = None
    for _ in range(pages):
        cursor = catalog.page("tools/list", cursor=cursor)["nextCursor"]
    assert cursor is not None
    return cursor


def test_lists_go_stale_on_ttl_and_on_list_changed_per_server() -> None:
    clock = Clock()
    fresh = Catalog(Namespace([("github", "gh"), ("files", "files")]), page_size=10, ttl=60, clock=clock)
    assert len(fresh.stale()) == 8  # never fetched: everything
    catalog = _catalog(clock=clock)
    catalog.update("files", "prompts", [])
    catalog.update("github", "resourceTemplates", [])
    assert catalog.stale() == []
    assert catalog.notified("github", "notifications/tools/list_changed")
    assert not catalog.notified("github", "notifications/progress")
    assert catalog.stale() == [("github", "tools")]
    assert _everything(catalog, "tools/list")[0]["name"] == "gh__create_issue"  # the last good list is still served
    catalog.update("github", "tools", _tools("only"))
    assert [t["name"] for t in _everything(catalog, "tools/list")] == ["gh__only", "files__read", "files__write"]
    assert catalog.route_tool("gh__create_issue") is None
    catalog.notified("files", "notifications/resources/list_changed")
    assert catalog.stale() == [("files", "resources"), ("files", "resourceTemplates")]
    clock.now += 60
    assert len(catalog.stale()) == 8


def test_upstream_names_that_cannot_be_namespaced_are_left_out_with_a_reason() -> None:
    catalog = _catalog()
    catalog.update("github", "tools", [*_tools("ok", "ok", "x" * 130, "a b", "new\nline", "bell\x07"), {"name": 5},
                                       "junk", {"description": "?"}])
    assert [t["name"] for t in catalog.page("tools/list")["tools"]] == ["gh__ok", "files__read", "files__write"]
    reasons = sorted(r.reason for r in catalog.refused if r.kind == "tools")
    assert len(reasons) == 8 and "listed twice by the same server" in reasons
    assert reasons.count("the name holds whitespace or control characters") == 3
    catalog.update("github", "tools", _tools("ok"))
    assert [r for r in catalog.refused if r.kind == "tools"] == []


# -- config -------------------------------------------------------------------------------------------------------

_BASE = {"backends": [{"id": "b", "schema": "openai", "base_url": "http://127.0.0.1:1/v1"}],
         "routes": [{"model": "m", "backends": [{"backend": "b", "model": "m"}]}]}


def test_mcp_config_section_with_servers_and_allow_lists() -> None:
    config = Config.model_validate({**_BASE, "mcp": {"list_ttl": "5m", "servers": [
        {"name": "github", "url": "https://api.example/mcp", "bearer": {"env": "GH"},
         "headers": {"X-Key": {"env": "K"}}},
        {"name": "fs", "command": ["npx"], "args": ["server-fs"], "prefix": "files", "env": {"T": {"env": "T"}}}]},
        "virtual_keys": [{"id": "k", "hash": "sha256:" + "0" * 64, "mcp_tools": ["github__*"]}],
        "teams": [{"id": "t", "mcp_servers": ["fs"]}]})
    assert config.mcp is not None and config.mcp.list_ttl == 300 and config.mcp.path == "/mcp"
    assert [s.name_prefix for s in config.mcp.servers] == ["github", "files"]
    assert config.mcp.servers[0].headers == {"x-key": config.mcp.servers[0].headers["x-key"]}
    assert config.virtual_keys[0].mcp_servers == ["*"] and config.virtual_keys[0].mcp_tools == ["github__*"]
    assert config.teams[0].mcp_servers == ["fs"] and Team(id="u").mcp_tools == ["*"]
    assert Config.model_validate(_BASE).mcp is None
    assert VirtualKey(id="k", hash="sha256:" + "0" * 64).mcp_servers == ["*"]


@pytest.mark.parametrize(("servers", "extra", "problem"), [
    ([{"name": "a b", "url": "http://x/mcp"}], {}, "letters"),
    ([{"name": "a", "url": "http://x/mcp", "command": ["x"]}], {}, "exactly one"),
    ([{"name": "a"}], {}, "exactly one"),
    ([{"name": "a", "url": "ftp://x/mcp"}], {}, "http"),
    ([{"name": "a", "url": "http://x/mcp", "args": ["x"]}], {}, "args"),
    ([{"name": "a", "url": "http://x/mcp"}, {"name": "a", "url": "http://y/mcp"}], {}, "name must be unique"),
    ([{"name": "a", "url": "http://x/mcp"}, {"name": "b", "url": "http://y/mcp", "prefix": "a"}], {}, "prefix"),
    ([{"name": "a__b", "url": "http://x/mcp"}], {}, "separator"),
    ([{"name": "a", "url": "http://x/mcp", "prefix": "a-"}], {"separator": "-"}, "separator"),
    ([{"name": "a", "url": "http://x/mcp", "bearer": "sk-inline"}], {}, "never written"),
    ([], {}, "at least 1"),
])
def test_mcp_config_mistakes_are_refused(servers: list, extra: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        McpSettings.model_validate({"servers": servers, **extra})


def test_keys_that_allow_every_mcp_tool_are_stored_as_before() -> None:
    """Keys files and Redis key records written before MCP existed and after look the same when nothing is narrowed."""
    plain = VirtualKey(id="k", hash="sha256:" + "0" * 64)
    assert "mcp_servers" not in plain.model_dump() and "mcp_tools" not in plain.model_dump(mode="json")
    narrowed = VirtualKey(id="k", hash="sha256:" + "0" * 64, mcp_tools=["gh__read_*"])
    dumped = narrowed.model_dump(mode="json", exclude_none=True)
    assert dumped["mcp_tools"] == ["gh__read_*"] and "mcp_servers" not in dumped
    assert VirtualKey.model_validate(dumped) == narrowed
