"""OpenAI's Codex CLI (npm `@openai/codex`) for the end-to-end tests of `POST /v1/responses`: installed on demand,
run as `codex exec --json` against a Responses endpoint on loopback, on a machine of its own (a temporary HOME,
CODEX_HOME and project directory).

Decisions worth knowing before changing this file:
- The CLI is pinned and installed into `<repo>/.test-tools/codex` (gitignored) the first time a test needs it, with
  `npm install` into a staging directory renamed into place. The package has no install script: `bin/codex.js` is
  a Node launcher, and the native binary (musl, static) comes in the platform package npm picks among its optional
  dependencies (`@openai/codex-linux-x64` = `@openai/codex@<version>-linux-x64`, ~420 MB unpacked, with `rg` and
  `bwrap`). So npm must not omit optional dependencies, and after the install nothing is downloaded again. The
  install takes about 5 s on this machine; `codex --version` prints `codex-cli 0.171.0`. Node 20 has no
  `process.execve`, so the launcher stays as the binary's parent: runs are in a process group of their own, killed
  whole on timeout.
- Configuration is one `config.toml` in CODEX_HOME, loaded with `--strict-config` (an unknown key fails the run
  instead of being ignored): a model provider `babelgate` with `wire_api = "responses"`, the key read from
  `BABELGATE_API_KEY` (the caller's environment is not passed on: no OPENAI_API_KEY, no proxies), no retries
  (`request_max_retries = 0`, `stream_max_retries = 0`) so a failure shows up as exactly one request,
  `approval_policy = "never"` and `sandbox_mode = "danger-full-access"` (the turn metadata says `sandbox: none`;
  read-only and workspace-write also ran a command in this container, as `sandbox: seccomp`, but restrict writes).
  `--skip-git-repo-check` is required: outside a git repository (or a trusted directory) `codex exec` refuses to
  start.
- Offline: traced with `strace -f -e trace=connect,sendto,execve`, 0.171.0 as shipped runs
  `git ls-remote https://github.com/openai/plugins.git` and resolves api.github.com and chatgpt.com at startup;
  `features.plugins = false` stops all three. Then it connects to nothing but the base URL. Analytics, feedback,
  OpenTelemetry and the update check are off in the config too. `features.unbounded_connection_retries` (on by
  default) retries a refused connection forever: a run against a gateway that is down never ends, so it is off,
  and then a refused connection fails the run at once ("Connection failed: error sending request", exit 1).
- What Codex sends (0.171.0, first turn; fixtures `tests/fixtures/responses_client/captured_codex_request*.json`):
  `POST <base_url>/responses` only (no `/models`, nothing else), `stream: true`, `store: false`,
  `include: ["reasoning.encrypted_content"]`, `prompt_cache_key` (the thread id), `tool_choice: "auto"`,
  `parallel_tool_calls: true`, `client_metadata` (thread, turn and installation ids, strings), and no
  `instructions`: the system prompt is the first `developer` message of `input`, then a `developer` message (skills),
  a `user` message (`<environment_context>`: cwd, shell, date) and the prompt. For a model name it does not know:
  `reasoning: {summary: "auto"}`, and tools `exec_command`, `write_stdin`, `request_user_input`, `view_image`
  (functions, `strict: false`), a `namespace` tool `multi_agent_v1` (functions `close_agent` ... `wait_agent`),
  `get_goal`, `create_goal`, `update_goal` and a hosted `web_search` (`external_web_access: true`). For a model in
  its catalog (`gpt-5.5` ...): `reasoning: {effort: ...}`, `text: {verbosity: "low"}`, a `custom` tool `apply_patch`
  (a Lark grammar) and a `tool_search` tool (`execution: "client"`) instead of the namespace, and `web_search` with
  `search_content_types`. Headers: `authorization: Bearer`, `accept: text/event-stream`, `originator: codex_exec`,
  `user-agent: codex_exec/0.171.0 ...`, `session-id`, `thread-id`, `x-client-request-id`, `x-codex-window-id`,
  `x-codex-turn-metadata` (JSON), `x-codex-beta-features`, `accept-encoding: zstd,gzip`; the body is plain JSON.
  Outside the openai SDK's request types: `client_metadata`, an `id` on every input message (developer and user
  too), `content: null` on reasoning items handed back, `search_content_types`.
- The fixtures were captured with `Codex.run` against `responses_recorder.ResponsesRecorder` (turn 1: a reasoning
  item with made-up OpenAI-style `encrypted_content` and an `exec_command` call; turn 2: text), the temporary
  directory replaced with `/home/dev`. The demo OpenAI provider refuses that reasoning item as not its own.
- Later turns send the whole history again (stateless), the old input a prefix of the new: reasoning items with
  their `encrypted_content`, assistant messages and `function_call`s with their `id` and `status`,
  `function_call_output` (with an `id`, `fco_...`) whose `output` is a string, `custom_tool_call` /
  `custom_tool_call_output` for `apply_patch`.
- What Codex needs back: output items from `response.output_item.done` (it ignores `response.completed`'s
  `output`), then `response.completed`; without it the turn fails ("stream closed before response.completed").
  `usage` may be missing (the turn reports zeros). `response.failed` fails the turn with the error's message.
- The shell tool is `exec_command` (`{"cmd": ...}`, run as `<shell> -lc <cmd>`, in a PTY when `tty`), and it is
  Codex's FIRST tool whatever the model. The demo providers answer a request that offers tools with a call to the
  first one, arguments sampled from its schema: `{"cmd": "demo", "shell": "demo", "login": true, "tty": true,
  "workdir": "demo", "yield_time_ms": 1, "max_output_tokens": 1, "sandbox_permissions": "use_default",
  "justification": "demo", "prefix_rule": ["demo"]}`. Codex runs that as `/bin/sh -lc demo` (an unknown shell name
  falls back to sh) in `<project>/demo`; a login shell reads /etc/profile, which resets PATH, so `demo` on the PATH
  alone is not found (exit 127). Hence: `~/.profile` puts the bin directory first again, `demo` there prints the
  marker the test chose, and `<project>/demo` exists (without it the command ran in HOME). A 1 ms yield is raised to
  Codex's minimum (250 ms), enough for `demo`. `max_output_tokens: 1` truncates what goes back to the model
  (`"ma…2 tokens truncated…"`), so the marker is checked in the CLI's own `command_execution` item
  (`aggregated_output`), not in the provider's next request nor in the final answer. That request ends with the
  `function_call_output`, so a demo provider answers with text and the run ends (exit 0). Checked against the demo
  OpenAI provider's own `/v1/responses` (with `client_metadata` taken out, which it refuses as unknown).
- `--json` prints JSONL events: `thread.started` (`thread_id`, usable with `codex exec resume`), `turn.started`,
  `item.started`/`item.completed` (`agent_message`, `reasoning`, `command_execution`, `error` ...),
  `turn.completed` (`usage`) or `turn.failed` and `error`. For a model name outside its catalog Codex first emits an
  `error` item ("Model metadata for ... not found"): a warning, not a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .npm_tools import INSTALL_TIMEOUT, TOOLS, pinned_binary

CODEX_VERSION = "0.171.0"
PACKAGE = "@openai/codex"
INSTALL_DIR = TOOLS / "codex"
CLI_TIMEOUT = 120.0
"""Each `codex exec` run; a hung CLI fails its test instead of the whole session."""
TEST_TIMEOUT = INSTALL_TIMEOUT + 3 * CLI_TIMEOUT
"""pytest-timeout's backstop for tests that run the CLI (the suite's default is 120 s): the first one may install
it. The runs take seconds; their own timeouts are what bound a hang."""
PROVIDER_ID = "babelgate"
API_KEY_ENV = "BABELGATE_API_KEY"
SHELL_TOOL = "exec_command"
"""Codex's shell tool, the first tool of every request it sends."""
DEMO_COMMAND = "demo"
"""The command (and shell, and workdir) the demo providers put in an `exec_command` call; provided by the harness."""
OFFLINE_FEATURES: dict[str, object] = {"plugins": False, "unbounded_connection_retries": False}
"""`[features]` that keep a run on loopback and finite (see the module docstring)."""


def codex_binary() -> Path:
    """The pinned CLI, installed into `.test-tools/` unless it is there already."""
    return pinned_binary(PACKAGE, CODEX_VERSION, INSTALL_DIR, "codex", _version)


def _version(binary: Path) -> str | None:
    if not binary.exists():
        return None
    with tempfile.TemporaryDirectory(prefix="codex-version-") as home:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "CODEX_HOME": home, "TMPDIR": home}
        try:
            done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60, env=env,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
    words = done.stdout.split()  # "codex-cli 0.171.0"
    return words[-1] if done.returncode == 0 and words else None


@dataclass(frozen=True)
class CodexRun:
    """One `codex exec --json` run: what was run, its exit status and the events it printed."""

    argv: tuple[str, ...]
    returncode: int
    """-1 when the run was killed at its timeout."""
    events: list[dict[str, Any]]
    stdout: str
    stderr: str

    @property
    def thread_id(self) -> str:
        started = [event for event in self.events if event.get("type") == "thread.started"]
        assert started, f"no thread.started event; {self.describe()}"
        return str(started[0]["thread_id"])

    def items(self, item_type: str) -> list[dict[str, Any]]:
        """The completed items of one type (`agent_message`, `command_execution`, `reasoning`, `error` ...)."""
        return [event["item"] for event in self.events if event.get("type") == "item.completed"
                and event.get("item", {}).get("type") == item_type]

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The shell commands Codex ran: `command`, `aggregated_output`, `exit_code`, `status`."""
        return self.items("command_execution")

    @property
    def final_message(self) -> str | None:
        messages = self.items("agent_message")
        return str(messages[-1]["text"]) if messages else None

    @property
    def usage(self) -> dict[str, Any] | None:
        """The last `turn.completed` event's token counts."""
        done = [event for event in self.events if event.get("type") == "turn.completed"]
        return done[-1].get("usage") if done else None

    @property
    def errors(self) -> list[str]:
        """The messages of `error` and `turn.failed` events (not the `error` items, which are warnings)."""
        return [str(event.get("message") or event.get("error", {}).get("message")) for event in self.events
                if event.get("type") in ("error", "turn.failed")]

    def describe(self) -> str:
        """What went wrong, for assertion messages: exit status, errors, last message, stderr's tail."""
        return f"exit {self.returncode}; errors: {self.errors}; last message: {str(self.final_message)[:400]!r}; " \
               f"commands: {[(c.get('command'), c.get('exit_code')) for c in self.commands]}; " \
               f"stderr: {self.stderr[-800:]!r}"


class Codex:
    """A user of Codex pointed at `base_url` (the provider's base URL, e.g. `http://127.0.0.1:<port>/v1`) with
    `api_key` and `model`, on a machine of its own under `workdir`: HOME (CODEX_HOME is `HOME/.codex`), a project
    directory, a temp directory and a bin directory holding the `demo` command."""

    def __init__(self, binary: Path, workdir: Path, base_url: str, api_key: str, model: str) -> None:
        self.binary = binary
        self.base_url = base_url
        self.api_key = api_key
        self.model = model
        self.home, self.project, self.tmp, self.bin = (workdir / name for name in ("home", "project", "tmp", "bin"))
        self.codex_home = self.home / ".codex"
        for directory in (self.codex_home, self.project / DEMO_COMMAND, self.tmp, self.bin):
            directory.mkdir(parents=True, exist_ok=True)
        (self.home / ".profile").write_text(f'PATH="{self.bin}:$PATH"\nexport PATH\n')
        (self.codex_home / "config.toml").write_text(config_toml(base_url, model))
        self.set_marker("no marker set")

    def set_marker(self, marker: str) -> None:
        """What the next `demo` commands print."""
        script = self.bin / DEMO_COMMAND
        script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{marker}'\n")
        script.chmod(0o755)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(self.home),
                "CODEX_HOME": str(self.codex_home), "TMPDIR": str(self.tmp), "SHELL": "/bin/bash",
                "LANG": "C.UTF-8", API_KEY_ENV: self.api_key, **(extra or {})}

    def run(self, prompt: str, *, resume: str | None = None, env: dict[str, str] | None = None,
            args: tuple[str, ...] = (), timeout: float = CLI_TIMEOUT) -> CodexRun:
        """`codex exec --json <prompt>` in the project directory (continuing thread `resume`), bounded by
        `timeout`; `args` go before the prompt (`-c key=value`, `--enable feature` ...)."""
        argv = (str(self.binary), "exec", "--json", "--skip-git-repo-check", "--strict-config", "--color", "never",
                *args, *(("resume", resume) if resume else ()), prompt)
        returncode, stdout, stderr = _run_bounded(argv, self.project, self.environment(env), timeout)
        return CodexRun(argv, returncode, _json_lines(stdout), stdout, stderr)


def run_codex(base_url: str, api_key: str, model: str, prompt: str, *, workdir: Path | None = None,
              marker: str = "no marker set", env_extra: dict[str, str] | None = None,
              timeout: float = CLI_TIMEOUT) -> CodexRun:
    """One `codex exec` run of the pinned CLI (installed if needed) on a fresh machine under `workdir` (a
    temporary directory, removed afterwards, when None), with `demo` printing `marker`."""
    if workdir is not None:
        return _run_once(workdir, base_url, api_key, model, prompt, marker, env_extra, timeout)
    with tempfile.TemporaryDirectory(prefix="codex-e2e-") as scratch:
        return _run_once(Path(scratch), base_url, api_key, model, prompt, marker, env_extra, timeout)


def _run_once(workdir: Path, base_url: str, api_key: str, model: str, prompt: str, marker: str,
              env_extra: dict[str, str] | None, timeout: float) -> CodexRun:
    codex = Codex(codex_binary(), workdir, base_url, api_key, model)
    codex.set_marker(marker)
    return codex.run(prompt, env=env_extra, timeout=timeout)


def config_toml(base_url: str, model: str) -> str:
    """CODEX_HOME/config.toml: the gateway as the only model provider, nothing else reached, no questions asked."""
    settings: dict[str, object] = {"model": model, "model_provider": PROVIDER_ID, "approval_policy": "never",
                                   "sandbox_mode": "danger-full-access", "check_for_update_on_startup": False}
    tables: dict[str, dict[str, object]] = {
        f"model_providers.{PROVIDER_ID}": {"name": "Babelgate", "base_url": base_url, "env_key": API_KEY_ENV,
                                           "wire_api": "responses", "request_max_retries": 0,
                                           "stream_max_retries": 0},
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "otel": {"exporter": "none"},
        "features": OFFLINE_FEATURES,
    }
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for table, values in tables.items():
        lines += ["", f"[{table}]", *(f"{key} = {_toml_value(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    """A TOML scalar: JSON's string escapes and integers are TOML's too; booleans are lower-case in both."""
    return json.dumps(value)


def _run_bounded(argv: tuple[str, ...], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run `argv` in a process group of its own; past `timeout` the whole group is killed and whatever it printed
    is kept (returncode -1, a note at the end of stderr). Leftovers of a finished run are killed too. Output goes to
    files, not pipes, so a grandchild that escaped the group and kept them open cannot block the read."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = -1
        _kill_group(process.pid)
        process.wait()
        stdout, stderr = (_read(file) for file in (out, err))
    return returncode, stdout, stderr + (f"\n(killed after {timeout:g} s)" if returncode == -1 else "")


def _read(file: Any) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, signal.SIGKILL)


def _json_lines(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
