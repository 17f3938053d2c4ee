"""MCP policy pieces outside the route stage: call limits in the limiter, the `mcp:` config's refusals, and the
JSON-RPC shape of the gateway's own errors on the MCP endpoint."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ext_proc.config.loading import ConfigError, parse_config
from ext_proc.errors import RateLimited, Unauthorized
from ext_proc.limits.limiter import Demand, Limiter, compile_tables
from ext_proc.limits.memory_store import MemoryStore
from ext_proc.mcp.sessions import MemorySessionStore, SealedSessionStore
from ext_proc.runtime.build import compile_runtime
from ext_proc.stages.messages import error_reply

BASE = """
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - model: m
    backends: [{backend: oa, model: x}]
"""
MCP = BASE + """
teams:
  - {id: ops, mcp_servers: [tools]}
virtual_keys:
  - {id: own, hash: "sha256:{zeros}", mcp_limits: [{window: day, calls: 5}]}
  - {id: plain, hash: "sha256:{ones}", team: ops}
mcp:
  servers: [{name: tools, url: "http://127.0.0.1:9/mcp"}]
  limits:
    per_key: [{window: minute, calls: 2}]
    per_team: [{window: hour, calls: 10}]
    per_tool:
      - {tool: "tools__add", window: minute, calls: 1}
      - {tool: "tools__*", window: minute, calls: 50}
""".replace("{zeros}", "0" * 64).replace("{ones}", "1" * 64)
ONE_CALL = Demand(0, 0, 0)


def limiter() -> Limiter:
    return Limiter(MemoryStore(), compile_tables(parse_config(MCP)))  # type: ignore[arg-type]


def test_call_scopes_are_the_keys_own_or_every_keys_its_team_and_the_first_matching_tool_rule() -> None:
    scopes = limiter().call_scopes("plain", "ops", "tools__add")
    assert [(kind, scope, [(r.window, r.metric, r.limit) for r in rules]) for kind, scope, rules in scopes] == [
        ("mcp_key", "plain", [("minute", "calls", 2)]),
        ("mcp_team", "ops", [("hour", "calls", 10)]),
        ("mcp_tool", "plain tools__add", [("minute", "calls", 1)])]
    own = limiter().call_scopes("own", None, "tools__echo")
    assert [(kind, rules[0].limit) for kind, _, rules in own] == [("mcp_key", 5), ("mcp_tool", 50)]


def test_a_call_past_the_keys_limit_is_refused_naming_it() -> None:
    calls = limiter()
    scopes = calls.call_scopes("plain", None, "tools__echo")

    async def three() -> RateLimited:
        await calls.reserve(scopes, ONE_CALL, "")
        await calls.reserve(scopes, ONE_CALL, "")
        with pytest.raises(RateLimited) as refused:
            await calls.reserve(scopes, ONE_CALL, "")
        return refused.value

    refusal = asyncio.run(three())
    assert "mcp_key 'plain': calls per minute" in refusal.message and refusal.scope == "mcp_key"


def test_call_limits_alone_make_limits_configured() -> None:
    assert parse_config(MCP).limits_configured
    assert not compile_tables(parse_config(MCP)).calls.empty


@pytest.mark.parametrize(("change", "message"), [
    ("servers: [{name: t, url: 'http://h/mcp', port: 9}]", "`port` goes with `command`"),
    ("servers: [{name: t, url: 'http://h/mcp', env: {A: {env: B}}}]", "`env` goes with `command`"),
    ("servers: [{name: t}]", "exactly one of `url`"),
    ("servers: [{name: t, url: 'ftp://h/mcp'}]", "http:// or https://"),
    ("servers: [{name: a, url: 'http://h/mcp'}, {name: b, prefix: a, url: 'http://i/mcp'}]", "prefix must be unique"),
])
def test_mcp_config_mistakes_are_refused(change: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE + "mcp:\n  " + change + "\n")


def test_several_processes_without_redis_share_sessions_by_sealed_ids() -> None:
    text = BASE + "ext_proc: {processes: 2}\nmcp:\n  servers: [{name: t, url: 'http://h/mcp'}]\n"
    runtime = compile_runtime(parse_config(text))
    assert runtime.mcp is not None and isinstance(runtime.mcp.sessions, SealedSessionStore)
    single = compile_runtime(parse_config(text.replace("processes: 2", "processes: 1")))
    assert single.mcp is not None and isinstance(single.mcp.sessions, MemorySessionStore)


def test_the_gateways_own_errors_on_the_mcp_endpoint_are_json_rpc() -> None:
    reply = error_reply(Unauthorized("Invalid API key."), "mcp").immediate_response
    body = orjson.loads(reply.body)
    assert reply.status.code == 401 and body["jsonrpc"] == "2.0" and body["id"] is None
    assert body["error"]["code"] == -32080 and body["error"]["message"] == "Invalid API key."
    headers = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
    assert headers["www-authenticate"].startswith("Bearer")
