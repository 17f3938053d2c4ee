"""Claude Code, the real CLI from npm (pinned in `claude_cli.py`), through `/anthropic` to a route of every backend
schema: `claude -p` with the Bash tool and thinking on (the CLI's default), several turns of one session, offline on
loopback. Each turn must complete a tool round trip — the model's tool_use, Bash running (it prints a marker the test
chose), the tool_result sent back, a final answer quoting it — and every request that reached a demo provider must
fit that provider's SDK request types (the demo providers enforce the API rules clients trip over, such as the signed
thinking block that must start a replayed tool-use turn).

"As shipped" means no environment variable that changes what the CLI sends: the route names are unknown to the CLI
(so it sends adaptive thinking, `output_config.effort`, `context_management`, experimental betas and mid-conversation
system messages), and Claude model names are aliases it knows (budgeted thinking, `display: omitted`). The issue's
baseline, the CLI's experimental betas switched off with `CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS=1`, runs too. Every
run offers only Bash (`--tools Bash`: the demo providers call the first tool offered) and fixes the demo's sampled
Bash arguments with a hook (`claude_cli.py` says why); neither touches the fields under test.

Decisions worth knowing before changing this file:
- On OpenAI and Azure routes the first turn only has to finish with the backend's answer: the demo OpenAI-format
  providers call a tool only when the conversation ends with a user message, and the CLI ends its first request with
  a system message (the session's environment, for model names it doesn't know). Later turns end with the user's
  prompt, so they call Bash on every backend.
- Tests marked xfail(strict) fail today for the reason the mark names (a gap of the gateway or of a demo provider,
  never of this harness). Once it is fixed the test passes, strict turns that into a failure, and the mark must go.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .claude_cli import TEST_TIMEOUT, ClaudeCode, Run, claude_code_binary, provider_requests
from .gateways import Gateway, GatewayBuilder

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)

PROMPTS = ("What is in this directory?", "Run it again, please.", "Once more, and tell me what it printed.")
BETAS_OFF = {"CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1"}
CLAUDE_SCHEMAS = ("anthropic", "bedrock-anthropic", "vertex-anthropic")


@dataclass(frozen=True)
class Route:
    """A route the CLI is pointed at, with one backend over a demo provider."""

    demo: str
    schema: str
    model: str
    aliases: tuple[str, ...] = ()
    """Claude model names the CLI knows, routed here too."""
    calls_tool_first: bool = True
    """Whether the demo provider calls Bash on the first turn (see the module docstring)."""
    fields: dict[str, Any] = field(default_factory=dict, hash=False)


ROUTES = {
    "cc-anthropic": Route("anthropic", "anthropic", "claude-sonnet-4-5-20250929", ("claude-sonnet-4-5",)),
    "cc-bedrock-anthropic": Route("bedrock", "bedrock-anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0",
                                  ("claude-opus-4-5",)),
    "cc-vertex-anthropic": Route("vertex", "vertex-anthropic", "claude-sonnet-4-5@20250929", ("claude-haiku-4-5",)),
    "cc-openai": Route("openai", "openai", "gpt-4o", calls_tool_first=False),
    "cc-gemini": Route("gemini", "gemini", "gemini-2.5-flash"),
    "cc-bedrock-converse": Route("bedrock", "bedrock-converse", "amazon.nova-pro-v1:0"),
    "cc-azure": Route("azure", "azure-openai", "gpt-4o-prod", calls_tool_first=False,
                      fields={"azure": {"api_version": "2024-10-21"}}),
    "cc-cohere": Route("cohere", "cohere", "command-a-03-2025"),
}
ALIASES = {alias: route for route, spec in ROUTES.items() for alias in spec.aliases}
GAPS_AS_SHIPPED: dict[str, str] = {}
"""Model name -> why `claude -p` as shipped fails on it today (none since deferred tools stay out of translated
requests: the CLI's DeferredToolPlaceholder reached them as an ordinary function, and the demos called it)."""


def _cases(names: list[str], gaps: dict[str, str]) -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=gaps[name])) if name in gaps else name
            for name in names]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("claude-code"), backend_defaults={"timeout": "30s"}) as build:
        demos = {spec.demo: build.demo(spec.demo, spec.demo, name=f"cc-{spec.demo}") for spec in ROUTES.values()}
        for route, spec in ROUTES.items():
            build.backend(route, demos[spec.demo], spec.schema, **spec.fields)
            build.route(route, (route, spec.model), **({"aliases": list(spec.aliases)} if spec.aliases else {}))
        build.key("claude-code")
        yield build.start()


@pytest.fixture(scope="module")
def binary() -> Path:
    return claude_code_binary()


@pytest.fixture
def claude(gateway: Gateway, binary: Path, tmp_path: Path) -> ClaudeCode:
    return ClaudeCode(binary, tmp_path, gateway.url + "/anthropic", gateway.key)


# -- the tool loop -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", _cases([*ROUTES, *ALIASES], GAPS_AS_SHIPPED))
def test_bash_round_trip_every_turn_as_shipped(gateway: Gateway, claude: ClaudeCode, model: str) -> None:
    _converse(gateway, claude, model, PROMPTS, env={}, as_shipped=True)


@pytest.mark.parametrize("model", list(ROUTES))
def test_bash_round_trip_every_turn_with_experimental_betas_off(gateway: Gateway, claude: ClaudeCode,
                                                                model: str) -> None:
    _converse(gateway, claude, model, PROMPTS[:2], env=BETAS_OFF, as_shipped=False)


def _converse(gateway: Gateway, claude: ClaudeCode, model: str, prompts: tuple[str, ...], env: dict[str, str],
              as_shipped: bool) -> None:
    """One session, a turn per prompt (`--resume`), each checked on the CLI's side and on the provider's."""
    route = ALIASES.get(model, model)
    spec = ROUTES[route]
    session, proven = None, []
    for turn, prompt in enumerate(prompts, 1):
        marker = f"bash-ran-{route}-{turn}-{secrets.token_hex(4)}"
        claude.set_marker(marker)
        gateway.clear_provider_requests(spec.demo)
        run = claude.run(prompt, model=model, resume=session, env=env)
        assert run.returncode == 0 and not run.result.get("is_error"), run.describe()
        assert f"cc-{spec.demo} ({spec.model})" in run.result["result"], run.describe()
        sent = provider_requests(gateway, spec.demo, spec.schema, spec.model)
        if turn > 1 or spec.calls_tool_first:
            _assert_bash_round_trip(run, marker)
            proven.append(marker)
            assert all(earlier in json.dumps(sent[-1]["body"]) for earlier in proven), "earlier turns not replayed"
        if spec.schema in CLAUDE_SCHEMAS:
            _assert_thinking_kept(sent[-1]["body"])
            if as_shipped:
                _assert_passed_through(sent[-1])
        session = run.session_id


def _assert_bash_round_trip(run: Run, marker: str) -> None:
    """tool_use(Bash) -> a tool_result carrying what Bash printed -> a final answer quoting it."""
    uses = [block for block in run.blocks("assistant", "tool_use") if block["name"] == "Bash"]
    assert uses, f"the model called no Bash tool: {run.describe()}"
    results = {block["tool_use_id"]: json.dumps(block.get("content")) for block in run.blocks("user", "tool_result")}
    assert marker in results.get(uses[-1]["id"], ""), f"Bash did not run or its output was not sent back: {results}"
    assert f"The tool returned: {marker}" in run.result["result"], run.describe()


def _assert_thinking_kept(body: dict[str, Any]) -> None:
    """Thinking on, and every replayed tool-use turn still starts with its signed thinking block."""
    assert (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"), body.get("thinking")
    for message in body["messages"]:
        content = message["content"]
        if message["role"] == "assistant" and isinstance(content, list) \
                and any(block.get("type") == "tool_use" for block in content):
            assert content[0]["type"] in ("thinking", "redacted_thinking") and content[0].get("signature"), content


def _assert_passed_through(request: dict[str, Any]) -> None:
    """An Anthropic-family backend gets the CLI's Messages fields and betas as sent (Bedrock: betas in the body)."""
    body = request["body"]
    betas = [*request["headers"].get("anthropic-beta", "").split(","), *(body.get("anthropic_beta") or [])]
    assert "context-management-2025-06-27" in betas, betas
    assert body.get("context_management", {}).get("edits"), sorted(body)


# -- the CLI's request, field by field ----------------------------------------------------------------------------


CLI_BETAS = ("claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
             "mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,effort-2025-11-24")
"""What 2.1.332 sends in `anthropic-beta` with `claude -p` and a model name it doesn't know."""


def _cli_request(model: str) -> dict[str, Any]:
    """The shape of 2.1.332's first request for a model name it doesn't know, cut down (recorded through a proxy)."""
    bash = {"name": "Bash", "description": "Executes a bash command", "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"command": {"type": "string"}}, "required": ["command"]}}
    placeholder = {"name": "DeferredToolPlaceholder", "description": "Reserved placeholder; never call this tool.",
                   "input_schema": {"type": "object", "properties": {}}, "defer_loading": True}
    return {
        "model": model, "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cc_entrypoint=sdk-cli;"},
                   {"type": "text", "text": "You are a Claude agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]},
                     {"role": "system", "content": "# Environment\nPrimary working directory: /tmp/project"}],
        "tools": [placeholder, bash], "metadata": {"user_id": json.dumps({"device_id": "e2e", "session_id": "e2e"})},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}}


@pytest.mark.parametrize("route", [route for route, spec in ROUTES.items() if spec.schema not in CLAUDE_SCHEMAS])
def test_translated_backend_drops_and_names_the_clis_steering_fields(gateway: Gateway, route: str) -> None:
    """To a backend that doesn't speak Messages, `context_management` only steers: dropped, and named in
    `x-babelgate-dropped-fields`; what reaches the provider fits its SDK's types."""
    spec = ROUTES[route]
    gateway.clear_provider_requests(spec.demo)
    answer = httpx.post(gateway.url + "/anthropic/v1/messages?beta=true", json=_cli_request(route), timeout=30,
                        headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01",
                                 "anthropic-beta": CLI_BETAS})
    assert answer.status_code == 200, answer.text
    assert "context_management" in answer.headers.get("x-babelgate-dropped-fields", "").split(","), answer.headers
    sent = provider_requests(gateway, spec.demo, spec.schema, spec.model)
    assert "clear_thinking" not in json.dumps(sent[-1]["body"])


# -- the CLI's other calls -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", list(ROUTES))
def test_count_tokens_as_the_cli_asks(gateway: Gateway, route: str) -> None:
    """The CLI counts tokens (interactive sessions, MCP tool results) with the SDK's beta `countTokens`: the beta
    path and header, a model, messages, and the session's system prompt and tools."""
    body = {"model": route, "system": [{"type": "text", "text": "You are a coding agent."}],
            "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {
                "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
            "messages": [{"role": "user", "content": "foo"}]}
    answer = httpx.post(gateway.url + "/anthropic/v1/messages/count_tokens?beta=true", json=body, timeout=30, headers={
        "x-api-key": gateway.key, "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,token-counting-2024-11-01"})
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["input_tokens"], int) and answer.json()["input_tokens"] > 0


@pytest.mark.parametrize("path", ["/anthropic", "/anthropic/api/hello"])
def test_head_probe_finds_the_api(gateway: Gateway, path: str) -> None:
    """2.1.332 warms its connection with an unauthenticated `HEAD <ANTHROPIC_BASE_URL>/api/hello` in interactive
    sessions (not with nonessential traffic off, as in the tests above) and ignores the answer; clients checking a
    base URL send `HEAD` to it."""
    answer = httpx.head(gateway.url + path, timeout=30)
    assert answer.status_code not in (404, 405) and answer.status_code < 500, answer.status_code
