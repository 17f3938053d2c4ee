"""The OpenAI Agents SDK (PyPI `openai-agents`, tests/e2e/agents_sdk.py) in its default Responses mode through the
gateway: an agent's function-tool loop, streamed and not, on every kind of model the demo serves.

The demo provider answers the agent's first request with a call of its one tool (`report_marker`), the SDK runs it
and sends the output back (the whole history again: no `previous_response_id`, stored by default), and the provider
answers with text quoting it. The marker in the final output proves the round trip went through the gateway and
back, whatever the backend's wire format.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from .agents_sdk import TOOL_NAME, run_agent
from .gateways import Gateway, GatewayBuilder, every_backend_kind

MODELS = ("gpt-4o-mini", "azure-gpt-4o", "claude-sonnet-4-5", "bedrock-claude", "nova-pro", "gemini-2.5-flash",
          "vertex-gemini-pro", "vertex-claude", "command-a")
"""The demo's chat models (`babelgate up --demo`), each on its own kind of backend."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("agents-sdk"), backend_defaults={"timeout": "30s"}) as build:
        every_backend_kind(build)
        build.route("gpt-4o-mini", ("oa", "gpt-4o-mini"))
        build.route("azure-gpt-4o", ("az", "gpt-4o"))
        build.route("claude-sonnet-4-5", ("an", "claude-sonnet-4-5"))
        build.route("bedrock-claude", ("brc", "anthropic.claude-sonnet-4-5-20250929-v1:0"))
        build.route("nova-pro", ("br", "amazon.nova-pro-v1:0"))
        build.route("gemini-2.5-flash", ("gm", "gemini-2.5-flash"))
        build.route("vertex-gemini-pro", ("vg", "gemini-2.5-pro"))
        build.route("vertex-claude", ("vc", "claude-sonnet-4-5@20250929"))
        build.route("command-a", ("co", "command-a-03-2025"))
        build.key("agents")
        yield build.start()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("model", MODELS)
def test_agent_runs_its_tool_loop(gateway: Gateway, model: str, stream: bool) -> None:
    marker = f"agent-{model}-{secrets.token_hex(4)}"
    run = run_agent(gateway.url + "/v1", gateway.key, model, "What is the marker for testing?", stream=stream,
                    marker=marker)
    assert [call.name for call in run.tool_calls] == [TOOL_NAME]
    assert run.tool_calls[0].output is not None and marker in run.tool_calls[0].output
    assert marker in str(run.final_output)
    assert run.usage["requests"] == 2 and run.usage["output_tokens"] > 0
    if stream:
        assert "raw_response_event:response.completed" in run.stream_events
        assert "run_item_stream_event:tool_output" in run.stream_events
