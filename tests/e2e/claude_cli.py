"""Claude Code (npm `@anthropic-ai/claude-code`) for the end-to-end tests: installed on demand, run in print mode
against a gateway on loopback, on a machine of its own (a temporary HOME and project directory).

Decisions worth knowing before changing this file:
- The CLI is pinned and installed into `<repo>/.test-tools/claude-code` (gitignored) the first time a test needs it,
  with `npm install`: the package is a wrapper whose postinstall copies the native binary of this platform over
  `bin/claude.exe`, so Node is needed only to install. The package declares `engines: node >=22`; it installs and runs
  with Node 20 (the binary brings its own runtime). The install goes to a staging directory renamed into place, so an
  interrupted one is never mistaken for a finished one.
- Offline: the CLI sees only the environment built here (no proxy variables, no real Anthropic key from the
  caller's environment), with telemetry, auto-update, error reporting and other nonessential traffic off. Traced with
  strace, 2.1.332 then connects to nothing but the base URL.
- The demo providers answer a request that offers tools with a call to the first one, its arguments sampled from
  the schema: Bash gets `{"command": "demo", "timeout": 1, "run_in_background": true, ...}`. A 1 ms timeout kills the
  command and a background run re-invokes the model forever, so a PreToolUse hook (Claude Code's own mechanism, set
  with `--settings`) runs the call as `demo` in the foreground with a real timeout, and `demo` is a command on the
  CLI's PATH that prints the marker the test chose: the marker in a tool result proves Bash ran. What the model sent
  stays in the conversation as it was.
- What reached a demo provider is checked with the golden validators (`tests/unit/goldens.py`); a Messages request
  that carries betas is checked against the anthropic SDK's beta request types instead, since the CLI's beta fields
  (`context_management` ...) are valid there and nowhere else.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from anthropic.types.beta import message_create_params as beta_params

from tests.unit.goldens import (
    assert_valid_anthropic_request,
    assert_valid_azure_request,
    assert_valid_cohere_request,
    assert_valid_converse_request,
    assert_valid_gemini_request,
    assert_valid_invoke_body,
    assert_valid_openai_request,
    assert_valid_vertex_anthropic_request,
)
from tests.unit.provider_checks import typed_dict_problems

from .gateways import Gateway
from .npm_tools import INSTALL_TIMEOUT, TOOLS, pinned_binary

CLAUDE_CODE_VERSION = "2.1.332"
PACKAGE = "@anthropic-ai/claude-code"
INSTALL_DIR = TOOLS / "claude-code"
CLI_TIMEOUT = 120.0
"""Each `claude -p` run; a hung CLI fails its test instead of the whole session."""
TEST_TIMEOUT = INSTALL_TIMEOUT + 3 * CLI_TIMEOUT
"""pytest-timeout's backstop for these tests (the suite's default is 120 s): the first one may install the CLI, and
a test runs up to three turns. The runs take seconds; their own timeouts are what bound a hang."""
OFFLINE_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
BASH_COMMAND = "demo"
"""The command the demo providers put in every Bash call (a sampled string), provided on the CLI's PATH."""
BASH_TIMEOUT_MS = 60_000


def claude_code_binary() -> Path:
    """The pinned CLI, installed into `.test-tools/` unless it is there already."""
    return pinned_binary(PACKAGE, CLAUDE_CODE_VERSION, INSTALL_DIR, "claude", _version)


def _version(binary: Path) -> str | None:
    if not binary.exists():
        return None
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ.get("PATH", ""), "HOME": str(INSTALL_DIR), **OFFLINE_ENV})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout.strip() else None


@dataclass(frozen=True)
class Run:
    """One `claude -p --output-format stream-json` run: its exit status and the messages it printed."""

    returncode: int
    messages: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The closing `result` message (`is_error`, `result` text, `api_error_status` ...)."""
        results = [message for message in self.messages if message.get("type") == "result"]
        assert results, f"no result message (exit {self.returncode}); stderr:\n{self.stderr[-2000:]}"
        return results[-1]

    @property
    def session_id(self) -> str:
        return str(self.result["session_id"])

    def blocks(self, message_type: str, block_type: str) -> list[dict[str, Any]]:
        """Content blocks of one type in the assistant or user messages the CLI printed, in order."""
        return [block for message in self.messages if message.get("type") == message_type
                for block in message["message"].get("content") or [] if isinstance(block, dict)
                and block.get("type") == block_type]

    def describe(self) -> str:
        """What went wrong, for assertion messages: the API error the CLI saw, its last words, stderr's tail."""
        result: dict[str, Any] = next((message for message in reversed(self.messages)
                                       if message.get("type") == "result"), {})
        seen = {key: result.get(key) for key in ("is_error", "api_error_status", "api_error_type", "terminal_reason")}
        return f"exit {self.returncode}; {seen}; result: {str(result.get('result'))[:800]!r}; " \
               f"stderr: {self.stderr[-800:]!r}"


class ClaudeCode:
    """A user of Claude Code pointed at `base_url` (e.g. `http://127.0.0.1:<port>/anthropic`) with `api_key`, on a
    machine of its own under `workdir`: HOME, a project directory, a temp directory and a bin directory holding the
    `demo` command and the hook."""

    def __init__(self, binary: Path, workdir: Path, base_url: str, api_key: str) -> None:
        self.binary = binary
        self.base_url = base_url
        self.api_key = api_key
        self.home, self.project, self.tmp, self.bin = (workdir / name for name in ("home", "project", "tmp", "bin"))
        for directory in (self.home, self.project, self.tmp, self.bin):
            directory.mkdir(parents=True, exist_ok=True)
        self.settings = workdir / "settings.json"
        self._write_hook()
        self.set_marker("no marker set")

    def set_marker(self, marker: str) -> None:
        """What the next Bash calls print."""
        _write_script(self.bin / BASH_COMMAND, f"printf '%s\\n' '{marker}'\n")

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(self.home),
                "TMPDIR": str(self.tmp), "SHELL": "/bin/bash", "LANG": "C.UTF-8",
                "ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.api_key, **OFFLINE_ENV,
                **(extra or {})}

    def run(self, prompt: str, *, model: str, resume: str | None = None, env: dict[str, str] | None = None,
            args: tuple[str, ...] = ("--tools", "Bash", "--allowedTools", "Bash")) -> Run:
        """`claude -p <prompt>` (resuming session `resume`), its messages as stream-json."""
        argv = [str(self.binary), "-p", prompt, "--model", model, "--output-format", "stream-json", "--verbose",
                "--settings", str(self.settings), *args, *(("--resume", resume) if resume else ())]
        try:
            done = subprocess.run(argv, cwd=self.project, env=self.environment(env), capture_output=True, text=True,
                                  timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:  # killed: keep what it printed, for the assertion message
            return Run(-1, _json_lines(_text(exc.stdout)), f"{_text(exc.stderr)}\n(killed after {CLI_TIMEOUT:g} s)")
        return Run(done.returncode, _json_lines(done.stdout), done.stderr)

    def _write_hook(self) -> None:
        decision = {"hookSpecificOutput": {
            "hookEventName": "PreToolUse", "permissionDecision": "allow",
            "updatedInput": {"command": BASH_COMMAND, "description": "Print the e2e marker",
                             "timeout": BASH_TIMEOUT_MS}}}
        hook = self.bin / "pretooluse-hook"
        _write_script(hook, f"cat >/dev/null\nprintf '%s\\n' '{json.dumps(decision)}'\n")
        self.settings.write_text(json.dumps({"hooks": {"PreToolUse": [
            {"matcher": "Bash", "hooks": [{"type": "command", "command": str(hook)}]}]}}))


def fix_tool_input(claude: ClaudeCode, tool: str, tool_input: dict[str, Any]) -> None:
    """Run every call of `tool` (e.g. an MCP tool, `mcp__<server>__<name>`) with `tool_input` instead of the
    arguments the demo provider sampled, and allow it: a PreToolUse hook in `claude`'s settings, in place of the Bash
    one. What the model sent stays in the conversation as it was. Values must not contain a single quote."""
    decision = {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "allow",
                                       "updatedInput": tool_input}}
    hook = claude.bin / "pretooluse-tool-input-hook"
    _write_script(hook, f"cat >/dev/null\nprintf '%s\\n' '{json.dumps(decision)}'\n")
    claude.settings.write_text(json.dumps({"hooks": {"PreToolUse": [
        {"matcher": tool, "hooks": [{"type": "command", "command": str(hook)}]}]}}))


def _write_script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _json_lines(text: str) -> list[dict[str, Any]]:
    messages = []
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue  # the CLI prints warnings (unknown model ...) between messages
        if isinstance(message, dict):
            messages.append(message)
    return messages


# -- what reached the providers ------------------------------------------------------------------------------------


def provider_requests(gateway: Gateway, demo: str, schema: str, model: str) -> list[dict[str, Any]]:
    """The model requests demo provider `demo` received (not Vertex's token exchange), oldest first, each validated
    against the request types of `schema`'s SDK for backend model `model`."""
    requests = [request for request in gateway.provider_requests(demo)
                if request["method"] == "POST" and isinstance(request["body"], dict)]
    assert requests, f"nothing reached {demo}"
    for request in requests:
        assert_valid_provider_request(request, schema, model)
    return requests


def assert_valid_provider_request(request: dict[str, Any], schema: str, model: str) -> None:
    """One request a demo provider recorded, against the request types of `schema`'s SDK for backend `model`."""
    _VALIDATORS[schema](request, model)


def _valid_beta_messages(body: dict[str, Any], strip: tuple[str, ...], model: str) -> None:
    """A Messages request sent with betas (the `anthropic-beta` header, or Bedrock's `anthropic_beta` field) is
    checked against the SDK's beta request types, where fields such as `context_management` exist."""
    request = {key: value for key, value in body.items() if key not in strip} | {"model": model, "stream": True}
    params = beta_params.MessageCreateParamsStreaming
    pydantic.TypeAdapter(params).validate_python(request)
    assert typed_dict_problems(request, params, "request") == []


def _anthropic(request: dict[str, Any], model: str) -> None:
    if request["headers"].get("anthropic-beta"):
        _valid_beta_messages(request["body"], (), request["body"]["model"])
    else:
        assert_valid_anthropic_request(request["body"])


def _bedrock(request: dict[str, Any], model: str) -> None:
    if request["body"].get("anthropic_beta"):
        _valid_beta_messages(request["body"], ("anthropic_version", "anthropic_beta"), model)
    else:
        assert_valid_invoke_body(request["body"])


def _vertex(request: dict[str, Any], model: str) -> None:
    if request["headers"].get("anthropic-beta") or request["body"].get("anthropic_beta"):
        _valid_beta_messages(request["body"], ("anthropic_version", "anthropic_beta"), model)
    else:
        assert_valid_vertex_anthropic_request(request["body"])


def _converse(request: dict[str, Any], model: str) -> None:
    assert_valid_converse_request(request["body"], stream="converse-stream" in request["path"], model=model)


_VALIDATORS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "anthropic": _anthropic,
    "bedrock-anthropic": _bedrock,
    "bedrock-converse": _converse,
    "vertex-anthropic": _vertex,
    "openai": lambda request, _: assert_valid_openai_request(request["body"]),
    "azure-openai": lambda request, _: assert_valid_azure_request(request["body"]),
    "gemini": lambda request, _: assert_valid_gemini_request(request["body"]),
    "vertex-gemini": lambda request, _: assert_valid_gemini_request(request["body"]),
    "cohere": lambda request, _: assert_valid_cohere_request(request["body"]),
}
