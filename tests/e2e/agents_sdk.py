"""The OpenAI Agents SDK (PyPI `openai-agents`) for the end-to-end tests of `POST /v1/responses`: an Agent with one
function tool, run in the SDK's default Responses mode against a base URL on loopback, streamed or not.

Decisions worth knowing before changing this file:
- Written and checked against openai-agents 0.22.3 (pinned in constraints.txt; every release that accepts openai
  3.x requires `websockets<17`, so websockets is pinned 16.1.1: only google-genai needs it, `>=13,<18`).
- The model is the SDK's Responses model over HTTP (`OpenAIProvider(use_responses=True,
  use_responses_websocket=False)`, the defaults, set explicitly so a process-wide default changed elsewhere cannot
  switch a test to Chat Completions or to the websocket transport). Its `AsyncOpenAI` client is built here: the
  key and base URL given, no retries (a failure is one request), a timeout, and `trust_env=False` so proxy
  variables in the caller's environment cannot route loopback traffic elsewhere.
- Offline: tracing is off for the run (`RunConfig(tracing_disabled=True)`: per run, not the process-wide
  `set_tracing_disabled`), so the trace exporter never posts to api.openai.com. Traced with strace, a run connects
  to nothing but the base URL.
- The tool is `report_marker(topic: str)` returning `"<marker> (<topic>)"`. The demo providers call the first tool
  offered with arguments sampled from its schema (`{"topic": "demo"}`) and answer the next request, which ends
  with the tool's output, with text quoting it: the marker in `final_output` proves the tool ran and its output
  went back (checked, streamed and not, against the demo OpenAI provider's own `/v1/responses`).
- What the SDK sends (0.22.3; first request of a run, fixtures
  `tests/fixtures/responses_client/captured_agents_sdk_request*.json`, captured against `ResponsesRecorder`):
  `model`, `input` as `[{"role": "user", "content": "<prompt>"}]` (an easy input message: no `type`),
  `instructions` (a string), `tools` (one `function`, `strict: true`, its schema with `additionalProperties: false`
  and pydantic `title`s), `include: []`, `stream: true` when streamed; no `store` (so the API's default, true), no
  `previous_response_id`, no `reasoning`, no `tool_choice`. The second request sends the whole history again: the
  `function_call` item as received (`id`, `status`) and a `function_call_output` with a string `output`. Headers:
  the openai SDK's (`authorization: Bearer`, `x-stainless-*`, `x-stainless-raw-response: stream` when streamed)
  with `user-agent: Agents/Python <version>`. Only `POST <base_url>/responses` is called.
- A run is bounded by `timeout` (asyncio's, around the whole run) and `max_turns`; the SDK's own errors
  (`MaxTurnsExceeded`, `openai.APIStatusError` ...) propagate to the test.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import openai
from agents import Agent, FunctionTool, RunConfig, Runner, RunResult, RunResultStreaming, function_tool
from agents.items import ToolCallItem, ToolCallOutputItem
from agents.models.openai_provider import OpenAIProvider

AGENT_TIMEOUT = 60.0
"""One whole run; a hung run fails its test instead of the whole session."""
MAX_TURNS = 4
TOOL_NAME = "report_marker"
INSTRUCTIONS = "You are a test agent. Call report_marker once, then say what it returned."


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made and what the tool returned for it."""

    name: str
    arguments: str
    call_id: str
    output: str | None


@dataclass(frozen=True)
class AgentRun:
    """What one run did: its final output, the tool calls made, the items it produced, and (streamed) the events."""

    final_output: Any
    tool_calls: list[ToolCall]
    item_types: list[str]
    """`message_output_item`, `tool_call_item`, `tool_call_output_item` ... in order."""
    usage: dict[str, int]
    """Summed over the run: `requests`, `input_tokens`, `output_tokens`, `total_tokens`."""
    stream_events: list[str] = field(default_factory=list)
    """Streamed runs: each event as `<type>:<raw event type, item event name or agent name>`, e.g.
    `raw_response_event:response.completed`, `run_item_stream_event:tool_called`."""


def run_agent(base_url: str, api_key: str, model: str, prompt: str, *, stream: bool = False,
              marker: str = "no marker set", timeout: float = AGENT_TIMEOUT, max_turns: int = MAX_TURNS) -> AgentRun:
    """`run_agent_async` in an event loop of its own (for synchronous tests)."""
    return asyncio.run(run_agent_async(base_url, api_key, model, prompt, stream=stream, marker=marker,
                                       timeout=timeout, max_turns=max_turns))


async def run_agent_async(base_url: str, api_key: str, model: str, prompt: str, *, stream: bool = False,
                          marker: str = "no marker set", timeout: float = AGENT_TIMEOUT,
                          max_turns: int = MAX_TURNS) -> AgentRun:
    """Run an Agent offering `report_marker` (which returns `marker`) on `prompt` against `base_url` (the
    Responses API's base, e.g. `http://127.0.0.1:<port>/v1`), streamed or not, within `timeout` seconds."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout,
                                http_client=openai.DefaultAsyncHttpxClient(trust_env=False))
    try:
        config = RunConfig(model_provider=OpenAIProvider(openai_client=client, use_responses=True,
                                                         use_responses_websocket=False), tracing_disabled=True)
        agent = Agent(name="Babelgate e2e", instructions=INSTRUCTIONS, tools=[marker_tool(marker)], model=model)
        runner = _streamed(agent, prompt, config, max_turns) if stream else _plain(agent, prompt, config, max_turns)
        return await asyncio.wait_for(runner, timeout)
    finally:
        await client.close()


def marker_tool(marker: str) -> FunctionTool:
    """The agent's one tool: returns `marker` and the topic it was asked about."""

    @function_tool(name_override=TOOL_NAME)
    def report_marker(topic: str) -> str:
        """Report the marker for a topic.

        Args:
            topic: What the marker is wanted for.
        """
        return f"{marker} ({topic})"

    return report_marker


async def _plain(agent: Agent[Any], prompt: str, config: RunConfig, max_turns: int) -> AgentRun:
    result = await Runner.run(agent, prompt, run_config=config, max_turns=max_turns)
    return _summary(result, [])


async def _streamed(agent: Agent[Any], prompt: str, config: RunConfig, max_turns: int) -> AgentRun:
    result = Runner.run_streamed(agent, prompt, run_config=config, max_turns=max_turns)
    events = [f"{event.type}:{_event_name(event)}" async for event in result.stream_events()]
    return _summary(result, events)


def _event_name(event: Any) -> str:
    if event.type == "raw_response_event":
        return str(event.data.type)
    if event.type == "agent_updated_stream_event":
        return str(event.new_agent.name)
    return str(event.name)


def _summary(result: RunResult | RunResultStreaming, events: list[str]) -> AgentRun:
    outputs = {_call_id(item.raw_item): str(item.output) for item in result.new_items
               if isinstance(item, ToolCallOutputItem)}
    calls = [ToolCall(str(getattr(item.raw_item, "name", "")), str(getattr(item.raw_item, "arguments", "")),
                      _call_id(item.raw_item), outputs.get(_call_id(item.raw_item)))
             for item in result.new_items if isinstance(item, ToolCallItem)]
    usage = result.context_wrapper.usage
    totals = {"requests": usage.requests, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
              "total_tokens": usage.total_tokens}
    return AgentRun(result.final_output, calls, [item.type for item in result.new_items], totals, events)


def _call_id(raw_item: Any) -> str:
    value = raw_item.get("call_id") if isinstance(raw_item, dict) else getattr(raw_item, "call_id", "")
    return str(value or "")
