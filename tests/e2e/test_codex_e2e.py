"""Codex CLI (npm `@openai/codex`, tests/e2e/codex_cli.py) through the gateway: `codex exec` with the gateway as
its Responses API provider (`wire_api = "responses"`), offline, on OpenAI-, Anthropic- and Bedrock-backed routes.

Each run is a shell-tool task: the demo provider answers Codex's first request with a call of its first tool,
`exec_command` (`{"cmd": "demo", ...}`); Codex runs it (the harness's `demo` prints a marker), sends the output
back, and the provider's text answer ends the turn. The marker in Codex's own `command_execution` item proves the
command ran; exit 0 and a final message prove the turn completed through the gateway. What reached each provider is
checked against that provider's SDK types.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.goldens import (
    assert_valid_anthropic_request,
    assert_valid_converse_request,
    assert_valid_responses_request,
)

from .codex_cli import SHELL_TOOL, TEST_TIMEOUT, Codex, codex_binary
from .gateways import Gateway, GatewayBuilder

pytestmark = pytest.mark.timeout(TEST_TIMEOUT)

ROUTES = {  # route -> (demo handle, how the provider's request is checked)
    "codex-openai": ("openai", assert_valid_responses_request),
    "codex-claude": ("anthropic", assert_valid_anthropic_request),
    "codex-bedrock": ("bedrock", assert_valid_converse_request),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("codex"), backend_defaults={"timeout": "30s"}) as build:
        build.backend("oa", build.demo("openai", "openai"))
        build.backend("an", build.demo("anthropic", "anthropic"))
        build.backend("br", build.demo("bedrock", "bedrock"))
        build.route("codex-openai", ("oa", "gpt-4o"))
        build.route("codex-claude", ("an", "claude-sonnet-4-5-20250929"))
        build.route("codex-bedrock", ("br", "amazon.nova-pro-v1:0"))
        build.key("codex")
        yield build.start()


def _codex(gateway: Gateway, workdir: Path, route: str) -> Codex:
    return Codex(codex_binary(), workdir, gateway.url + "/v1", gateway.key, route)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_codex_runs_a_shell_command_and_finishes(gateway: Gateway, tmp_path: Path, route: str) -> None:
    handle, valid = ROUTES[route]
    gateway.clear_provider_requests(handle)
    codex = _codex(gateway, tmp_path, route)
    marker = f"codex-ran-{route}-{secrets.token_hex(4)}"
    codex.set_marker(marker)
    run = codex.run("Run the demo command and tell me what it printed.")
    assert run.returncode == 0 and not run.errors, run.describe()
    assert any(marker in (command.get("aggregated_output") or "") for command in run.commands), run.describe()
    assert run.final_message, run.describe()
    sent = gateway.provider_requests(handle)
    assert len(sent) == 2, [request["path"] for request in sent]  # the tool call, then the answer after it
    for request in sent:
        valid(request["body"])
    if handle == "openai":  # natively: Codex's own tools and items, its hosted web_search included
        first = sent[0]["body"]
        assert first["tools"][0]["name"] == SHELL_TOOL and {"type": "web_search"}.items() <= first["tools"][-1].items()
        assert first["store"] is False and "client_metadata" in first
    else:  # translated: the shell tool is a function; web_search was left out (the model can't use it)
        assert "web_search" not in str(sent[0]["body"]).replace("'name': 'web_search'", "")


def test_codex_resumes_a_thread_through_the_gateway(gateway: Gateway, tmp_path: Path) -> None:
    """A second turn on the same thread: Codex sends the whole history again (store false), reasoning and tool
    items included, and the translated backend takes it."""
    codex = _codex(gateway, tmp_path, "codex-claude")
    codex.set_marker("first-turn")
    first = codex.run("Run the demo command.")
    assert first.returncode == 0, first.describe()
    codex.set_marker("second-turn")
    second = codex.run("Run it again.", resume=first.thread_id)
    assert second.returncode == 0 and not second.errors, second.describe()
    assert any("second-turn" in (command.get("aggregated_output") or "") for command in second.commands)
    history = gateway.last_request("anthropic")["body"]["messages"]
    assert sum(1 for message in history if message["role"] == "assistant") >= 3
