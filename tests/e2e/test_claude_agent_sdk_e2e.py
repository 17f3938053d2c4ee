"""The Claude Agent SDK (PyPI `claude-agent-sdk`) through `/anthropic`: an agent whose only tool runs in this process
(an SDK MCP server), driving the pinned Claude Code CLI (`cli_path`, not the binary the SDK bundles), offline on
loopback, to a Claude backend and to a translated one.

The demo providers call the first tool a request offers; the CLI's built-in tools are switched off (`tools=[]`), so
that is the in-process tool. Its result carries a marker this test chose: the marker in the final answer proves the
round trip model -> CLI -> this process -> CLI -> model. The SDK starts the CLI with this process's environment
under the one given (`ClaudeCode.environment`), so the base URL, key, HOME and offline switches are ours.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ResultMessage,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
    create_sdk_mcp_server,
    query,
    tool,
)

from .claude_cli import CLI_TIMEOUT, TEST_TIMEOUT, ClaudeCode, claude_code_binary, provider_requests
from .gateways import Gateway, GatewayBuilder

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)

ROUTES = {  # route -> (demo provider, schema, backend model)
    "sdk-anthropic": ("anthropic", "anthropic", "claude-sonnet-4-5-20250929"),
    "sdk-gemini": ("gemini", "gemini", "gemini-2.5-flash"),
}
TOOL_NAME = "mcp__e2e__lookup_marker"
BETAS_OFF = {"CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("agent-sdk"), backend_defaults={"timeout": "30s"}) as build:
        for route, (demo, schema, model) in ROUTES.items():
            build.backend(route, build.demo(demo, demo, name=f"sdk-{demo}"), schema)
            build.route(route, (route, model))
        build.key("agent-sdk")
        yield build.start()


@pytest.mark.parametrize(("route", "env"), [
    pytest.param("sdk-anthropic", {}, id="anthropic-as-shipped"),
    pytest.param("sdk-gemini", {}, id="gemini-as-shipped"),
    *(pytest.param(route, BETAS_OFF, id=f"{ROUTES[route][0]}-experimental-betas-off") for route in ROUTES)])
def test_in_process_tool_round_trip(gateway: Gateway, tmp_path: Path, route: str, env: dict[str, str]) -> None:
    demo, schema, model = ROUTES[route]
    marker = f"in-process-{secrets.token_hex(4)}"
    calls: list[dict[str, Any]] = []
    messages: list[Any] = []
    stderr: list[str] = []

    @tool("lookup_marker", "Look up the marker of this test", {"key": str})
    async def lookup_marker(arguments: dict[str, Any]) -> dict[str, Any]:
        calls.append(arguments)
        return {"content": [{"type": "text", "text": marker}]}

    claude = ClaudeCode(claude_code_binary(), tmp_path, gateway.url + "/anthropic", gateway.key)
    options = ClaudeAgentOptions(
        cli_path=claude.binary, cwd=claude.project, model=route, tools=[], allowed_tools=[TOOL_NAME],
        mcp_servers={"e2e": create_sdk_mcp_server("e2e", tools=[lookup_marker])}, setting_sources=[],
        env=claude.environment(env), max_turns=4, stderr=stderr.append)
    try:
        anyio.run(_collect, "Look up the marker, please.", options, messages)
    except TimeoutError:
        pytest.fail(f"no result within {CLI_TIMEOUT:g}s; messages: {messages}; CLI stderr: {stderr[-20:]}")

    result = messages[-1]
    assert isinstance(result, ResultMessage) and not result.is_error, result
    uses = [block for message in messages if isinstance(message, AssistantMessage)
            for block in message.content if isinstance(block, ToolUseBlock)]
    assert [use.name for use in uses] == [TOOL_NAME] and calls, messages
    results = [block for message in messages if isinstance(message, UserMessage) and isinstance(message.content, list)
               for block in message.content if isinstance(block, ToolResultBlock)]
    assert [block.tool_use_id for block in results] == [uses[0].id] and marker in str(results[0].content)
    assert f"The tool returned: {marker}" in (result.result or "")
    assert marker in str(provider_requests(gateway, demo, schema, model)[-1]["body"])


async def _collect(prompt: str, options: ClaudeAgentOptions, messages: list[Any]) -> None:
    with anyio.fail_after(CLI_TIMEOUT):
        async for message in query(prompt=prompt, options=options):
            messages.append(message)
