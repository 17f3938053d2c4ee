"""The MCP endpoint driven by the real npm clients, offline on loopback: the MCP Inspector CLI and Claude Code, both
pinned and installed into `.test-tools/` on first use. One gateway serves the module: an HTTP demo MCP server
(`tools`, with a bearer the gateway adds) and a stdio demo server behind the bridge (`local`), a route to the demo
Anthropic provider for Claude Code, and keys with and without tool allow-lists.

Decisions worth knowing before changing this file:
- The Inspector (`@modelcontextprotocol/inspector`, 2.x) declares `engines: node >=22.19`; its CLI mode runs on this
  machine's Node 20 (the web UI, which needs Vite, is never started). `--cli <url> --transport http` with
  `--header "Authorization: Bearer <key>"`, `--format json` (one JSON object: `result` or `error`). An ad-hoc URL
  speaks the handshake era (`initialize`, `Mcp-Session-Id`) unless `--protocol-era modern` (the stateless
  2026-07-28 revision: `server/discover`, version and capabilities in `_meta`). It has no telemetry: traced with
  strace, a run connects to nothing but the URL; its state goes under HOME (a temporary one here). `tools/call`
  exits 5 for a result with `isError`, and refuses a tool the list lacks itself (`tool_not_found`), before sending.
- Claude Code 2.1.332 speaks the stateless revision to an `http` MCP server (`server/discover`, then
  `subscriptions/listen`, `prompts/list`, `resources/list`, `tools/list`), sorts the MCP tools by name and offers
  them as `mcp__<server>__<tool>`. The demo providers call the first tool offered with sampled arguments (`text:
  "demo"`), so a key allowed a single tool decides which one the model calls, and a PreToolUse hook
  (`claude_cli.fix_tool_input`) sets the arguments to the marker the test chose. `--tools ""` offers no built-in
  tool; `--strict-mcp-config` ignores any other MCP configuration.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .claude_cli import TEST_TIMEOUT, ClaudeCode, Run, claude_code_binary, fix_tool_input, provider_requests
from .gateways import Demo, Gateway, GatewayBuilder
from .npm_tools import TOOLS, pinned_binary
from .support import wait_for_the_full_mcp_catalog

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)

INSPECTOR_VERSION = "2.12.0"
INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector"
INSPECTOR_DIR = TOOLS / "mcp-inspector"
INSPECTOR_TIMEOUT = 120.0
"""Each Inspector run (well under a second here); a hung CLI fails its test instead of the whole session."""
CONNECT_TIMEOUT_MS = 60_000
"""How long either CLI waits for the MCP handshake (the Inspector's default is 15 s, Claude Code's 30 s): generous,
for a busy machine."""
MCP_API_KEY = "demo-mcp-secret"
UPSTREAM = "mcp-tools"
"""The handle of the HTTP demo MCP server among the gateway's demos (its `/_demo/requests` records each call)."""
MODEL = "claude-sonnet-4-5"
BACKEND_MODEL = "claude-sonnet-4-5-20250929"
SERVER = "babelgate"
"""The MCP server's name in Claude Code's `--mcp-config`: its tools are `mcp__babelgate__<namespaced tool>`."""
TOOL_NAMES = {"tools__echo", "tools__add", "tools__slow_count", "tools__secret_lookup", "tools__fail",
              "tools__toggle_tool", "local__notes_add", "local__notes_list", "local__now", "local__countdown",
              "local__crash"}
PROMPT_NAMES = {"tools__greet", "tools__summarize", "local__daily_note"}
CLAUDE_ENV = {"MCP_TIMEOUT": str(CONNECT_TIMEOUT_MS)}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("mcp-clients"), backend_defaults={"timeout": "30s"}) as build:
        build.backend("anthropic", build.demo("anthropic", "anthropic"), "anthropic")
        build.route(MODEL, ("anthropic", BACKEND_MODEL))
        build.key("everything")
        build.key("echo-only", mcp_tools=["tools__echo"])
        build.key("notes-add-only", mcp_tools=["local__notes_add"])
        upstream = build.mcp_server("tools", api_key=MCP_API_KEY)
        build.mcp_stdio_server("local")
        gateway = build.start()
        port = urlsplit(upstream["url"]).port
        assert port is not None, upstream
        gateway.demos[UPSTREAM] = Demo(UPSTREAM, "tools", "mcp", port, MCP_API_KEY)
        # a cold ext_proc process answers its first lists with the servers that answered it in time
        wait_for_the_full_mcp_catalog(gateway.url, gateway.keys["everything"], TOOL_NAMES)
        yield gateway


# -- the MCP Inspector CLI -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inspector:
    """The Inspector's CLI mode against one MCP URL, with a HOME of its own."""

    binary: Path
    home: Path
    url: str

    def run(self, key: str, *args: str, era: str = "legacy") -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), "--cli", self.url, "--transport", "http", "--header", f"Authorization: Bearer {key}",
                "--connect-timeout", str(CONNECT_TIMEOUT_MS), "--protocol-era", era, "--format", "json", *args]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.home), "NO_COLOR": "1"}
        return subprocess.run(argv, cwd=self.home, env=env, capture_output=True, text=True, timeout=INSPECTOR_TIMEOUT,
                              stdin=subprocess.DEVNULL)

    def result(self, key: str, *args: str, era: str = "legacy") -> dict[str, Any]:
        """The `result` of a run that must succeed."""
        done = self.run(key, *args, era=era)
        assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\n" \
                                     f"stderr: {done.stderr[-2000:]}"
        return dict(json.loads(done.stdout)["result"])

    def tool_names(self, key: str, era: str = "legacy") -> list[str]:
        return [tool["name"] for tool in self.result(key, "--method", "tools/list", era=era)["tools"]]


def inspector_binary() -> Path:
    """The pinned Inspector, installed into `.test-tools/` unless it is there already."""
    return pinned_binary(INSPECTOR_PACKAGE, INSPECTOR_VERSION, INSPECTOR_DIR, "mcp-inspector", _inspector_version)


def _inspector_version(binary: Path) -> str | None:
    if not binary.exists():
        return None
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ.get("PATH", ""), "HOME": str(INSPECTOR_DIR)},
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


@pytest.fixture(scope="module")
def inspector(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Inspector:
    return Inspector(inspector_binary(), tmp_path_factory.mktemp("inspector-home"), f"{gateway.url}/mcp")


def _tool_calls(gateway: Gateway, tool: str) -> list[dict[str, Any]]:
    """The `tools/call` requests for upstream tool `tool` that reached the HTTP demo MCP server, oldest first."""
    return [request for request in gateway.provider_requests(UPSTREAM)
            if isinstance(request["body"], dict) and request["body"].get("method") == "tools/call"
            and request["body"]["params"]["name"] == tool]


def _arrived_with_the_gateways_credential(gateway: Gateway, tool: str, arguments: dict[str, Any]) -> None:
    calls = [call for call in _tool_calls(gateway, tool) if call["body"]["params"].get("arguments") == arguments]
    assert len(calls) == 1, f"{tool}{arguments} reached the upstream {len(calls)} times"
    assert calls[0]["headers"].get("authorization") == f"Bearer {MCP_API_KEY}", "not the gateway's credential"


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_lists_every_upstream_tool_namespaced(inspector: Inspector, gateway: Gateway, era: str) -> None:
    assert set(inspector.tool_names(gateway.keys["everything"], era)) == TOOL_NAMES


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_calls_a_namespaced_tool_on_the_upstream(inspector: Inspector, gateway: Gateway, era: str) -> None:
    text = f"hi-{era}-{secrets.token_hex(4)}"
    result = inspector.result(gateway.keys["everything"], "--method", "tools/call", "--tool-name", "tools__echo",
                              "--tool-arg", f"text={text}", era=era)
    assert result["content"] == [{"type": "text", "text": text}] and result["isError"] is False
    _arrived_with_the_gateways_credential(gateway, "echo", {"text": text})


def test_inspector_with_a_key_allowed_one_tool_sees_and_calls_only_that_one(inspector: Inspector,
                                                                            gateway: Gateway) -> None:
    key = gateway.keys["echo-only"]
    assert inspector.tool_names(key) == ["tools__echo"]
    assert inspector.result(key, "--method", "tools/call", "--tool-name", "tools__echo", "--tool-arg",
                            "text=allowed")["content"] == [{"type": "text", "text": "allowed"}]
    refused = inspector.run(key, "--method", "tools/call", "--tool-name", "tools__add", "--tool-arg", "a=1", "b=2")
    assert refused.returncode != 0 and "tools__add" in refused.stderr, refused
    assert _tool_calls(gateway, "add") == []


def test_inspector_with_an_unknown_key_gets_the_gateways_refusal(inspector: Inspector) -> None:
    """A 401 with `WWW-Authenticate: Bearer` and a JSON-RPC error; `--stored-auth-only` keeps the CLI from starting
    an interactive OAuth login instead of failing."""
    refused = inspector.run("bg-not-a-key", "--method", "tools/list", "--stored-auth-only")
    assert refused.returncode != 0, refused
    error = json.loads(refused.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "auth_required" and "Invalid API key." in error["message"], error


def test_inspector_reads_a_resource_and_renders_a_prompt(inspector: Inspector, gateway: Gateway) -> None:
    key = gateway.keys["everything"]
    contents = inspector.result(key, "--method", "resources/read", "--uri", "demo://readme")["contents"]
    assert contents[0]["uri"] == "demo://readme" and contents[0]["text"].startswith("# Demo MCP server")
    assert {prompt["name"] for prompt in inspector.result(key, "--method", "prompts/list")["prompts"]} == PROMPT_NAMES
    prompt = inspector.result(key, "--method", "prompts/get", "--prompt-name", "tools__greet", "--prompt-args",
                              "name=Ann", "style=pirate")
    assert prompt["messages"] == [{"role": "user", "content": {"type": "text", "text": "Greet Ann in a pirate way."}}]


# -- Claude Code ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude_binary() -> Path:
    return claude_code_binary()


def _claude(gateway: Gateway, binary: Path, workdir: Path, key_id: str,
            mcp_key: str | None = None) -> tuple[ClaudeCode, tuple[str, ...]]:
    """Claude Code on the gateway's Anthropic endpoint with key `key_id`, and the arguments that give it the
    gateway's `/mcp` as its only MCP server, with the same key (or `mcp_key`), and no built-in tools."""
    key = gateway.keys[key_id]
    claude = ClaudeCode(binary, workdir, f"{gateway.url}/anthropic", key)
    config = workdir / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {SERVER: {
        "type": "http", "url": f"{gateway.url}/mcp", "headers": {"Authorization": f"Bearer {mcp_key or key}"}}}}))
    return claude, ("--tools", "", "--mcp-config", str(config), "--strict-mcp-config")


def _init(run: Run) -> dict[str, Any]:
    """The CLI's `system/init` message: its tools and MCP servers as it sees them."""
    found = [message for message in run.messages
             if message.get("type") == "system" and message.get("subtype") == "init"]
    assert found, run.describe()
    return found[0]


def _round_trip(gateway: Gateway, claude: ClaudeCode, args: tuple[str, ...], tool: str,
                arguments: dict[str, Any]) -> tuple[Run, str]:
    """One `claude -p` turn in which the model calls MCP tool `tool` (the only one offered) with `arguments`: the
    run, and the text of the tool result that went back to the model (checked in the provider's next request). For a
    tool with an `outputSchema` the CLI sends the model the `structuredContent` as JSON text, not the content."""
    fix_tool_input(claude, tool, arguments)
    gateway.clear_provider_requests("anthropic")
    run = claude.run("Use the tool, please.", model=MODEL, args=(*args, "--allowedTools", tool), env=CLAUDE_ENV)
    assert run.returncode == 0 and not run.result.get("is_error"), run.describe()
    init = _init(run)
    assert init["tools"] == [tool], init["tools"]
    assert [(server["name"], server["status"]) for server in init["mcp_servers"]] == [(SERVER, "connected")]
    uses = [block for block in run.blocks("assistant", "tool_use") if block["name"] == tool]
    assert uses, f"the model called no {tool}: {run.describe()}"
    results = {block["tool_use_id"]: block for block in run.blocks("user", "tool_result")}
    result = results[uses[0]["id"]]
    assert not result.get("is_error"), result
    text = _text_of(result["content"])
    sent = provider_requests(gateway, "anthropic", "anthropic", BACKEND_MODEL)
    forwarded = [_text_of(block["content"]) for block in sent[-1]["body"]["messages"][-1]["content"]
                 if block.get("type") == "tool_result" and block["tool_use_id"] == uses[0]["id"]]
    assert text and len(forwarded) == 1 and text in forwarded[0], f"the tool result did not reach the model: {sent[-1]}"
    assert f"The tool returned: {text}" in run.result["result"], run.describe()
    return run, text


def _text_of(content: str | list[dict[str, Any]]) -> str:
    """The text of a tool_result's `content`: a string, or blocks."""
    if isinstance(content, str):
        return content
    return "".join(block["text"] for block in content if block.get("type") == "text")


def test_claude_code_calls_an_http_upstream_tool_through_the_gateway(gateway: Gateway, claude_binary: Path,
                                                                    tmp_path: Path) -> None:
    claude, args = _claude(gateway, claude_binary, tmp_path, "echo-only")
    marker = f"mcp-echo-{secrets.token_hex(6)}"
    _, text = _round_trip(gateway, claude, args, f"mcp__{SERVER}__tools__echo", {"text": marker})
    assert text == marker
    _arrived_with_the_gateways_credential(gateway, "echo", {"text": marker})


def test_claude_code_calls_a_stdio_upstream_tool_through_the_bridge(gateway: Gateway, claude_binary: Path,
                                                                   inspector: Inspector, tmp_path: Path) -> None:
    claude, args = _claude(gateway, claude_binary, tmp_path, "notes-add-only")
    marker = f"mcp-note-{secrets.token_hex(6)}"
    _, text = _round_trip(gateway, claude, args, f"mcp__{SERVER}__local__notes_add", {"text": marker})
    note = json.loads(text)["id"]
    notes = inspector.result(gateway.keys["everything"], "--method", "tools/call", "--tool-name", "local__notes_list")
    assert f"{note}. {marker}" in notes["content"][0]["text"], notes


def test_claude_code_sees_every_tool_and_prompt_of_an_unrestricted_key(gateway: Gateway, claude_binary: Path,
                                                                       tmp_path: Path) -> None:
    """All namespaced tools are offered as `mcp__babelgate__*` and the prompts become slash commands. The demo model
    calls the first tool (by name: `local__countdown`), which `--allowedTools` does not allow: refused by the CLI."""
    claude, args = _claude(gateway, claude_binary, tmp_path, "everything")
    run = claude.run("What can you do?", model=MODEL, args=(*args, "--allowedTools", f"mcp__{SERVER}__tools__echo"),
                     env=CLAUDE_ENV)
    assert run.returncode == 0 and not run.result.get("is_error"), run.describe()
    init = _init(run)
    assert [(server["name"], server["status"]) for server in init["mcp_servers"]] == [(SERVER, "connected")]
    assert set(init["tools"]) == {f"mcp__{SERVER}__{name}" for name in TOOL_NAMES}
    assert {f"mcp__{SERVER}__{name}" for name in PROMPT_NAMES} <= set(init["slash_commands"])
    assert [denial["tool_name"] for denial in run.result["permission_denials"]] == [f"mcp__{SERVER}__local__countdown"]


def test_claude_code_with_an_unknown_key_marks_the_server_failed(gateway: Gateway, claude_binary: Path,
                                                                 tmp_path: Path) -> None:
    """The gateway's 401 fails the MCP server (no OAuth fallback: the config sets `Authorization`); the session goes
    on without its tools, and the CLI's debug log names the gateway's reason."""
    claude, args = _claude(gateway, claude_binary, tmp_path, "everything", mcp_key="bg-not-a-key")
    debug = tmp_path / "debug.log"
    run = claude.run("Hello.", model=MODEL, env=CLAUDE_ENV, args=(*args, "--debug-file", str(debug)))
    assert run.returncode == 0 and not run.result.get("is_error"), run.describe()
    init = _init(run)
    assert [(server["name"], server["status"]) for server in init["mcp_servers"]] == [(SERVER, "failed")]
    assert init["tools"] == []
    assert "Invalid API key." in debug.read_text()
