"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the route stage's request parsing and of every provider's
request translator. It complements the hypothesis tests in tests/unit/test_hostile_input.py, whose stage driver,
runtime and request headers it reuses, and holds inputs to the same rule: each one ends in a continue or a 4xx. A 5xx
from Babelgate, an escaped exception, an ERROR log line or a hang (libFuzzer's `-timeout`) is reported as a crash.

The last byte of an input picks the mode (FuzzedDataProvider reads integers from the end), the rest feeds it:

    0  the bytes as a /v1/chat/completions body
    1  the bytes as an /anthropic/v1/messages body
    2  the bytes as a /v1/embeddings body
    3  a seed OpenAI chat request, mutated by the fuzzer's choices and sent as a chat body
    4  a seed Anthropic Messages request, mutated the same way and sent as a Messages body

The raw modes exercise the parser and, starting from the seed corpus (tests/fuzz/corpus), libFuzzer's byte-level
mutations of valid requests; the structured modes keep the JSON valid so that changes reach deep into the translators.

The shared test configuration has OpenAI and Anthropic backends only, so every chat body that passes the route stage's
own checks also goes through each provider's translator directly (Azure, Cohere, Bedrock, Gemini, Vertex, the OpenAI
presets): a translator that fails with anything but a client error would be a 502 from the route stage of a
configuration that uses that provider.

    python tests/fuzz/route_stage_fuzz.py -max_len=4096 -timeout=10 <copy of tests/fuzz/corpus>
    python tests/fuzz/route_stage_fuzz.py tests/fuzz/regressions/<input>  # replays one input
    BG_FUZZ_TRIAGE_DIR=/tmp/fuzz-crashes python tests/fuzz/route_stage_fuzz.py -max_total_time=600 ...

The last form keeps going past failures and saves one input (with a .txt traceback) per distinct bug.
"""

from __future__ import annotations

import functools
import json
import logging
import marshal
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["ext_proc"]):
    from ext_proc.client_formats import anthropic_messages
    from ext_proc.errors import GatewayError
    from ext_proc.providers import (
        anthropic,
        azure_openai,
        bedrock_anthropic,
        bedrock_converse,
        cohere,
        gemini,
        openai,
        presets,
        vertex_anthropic,
    )
    from ext_proc.stages.route import check_chat_shape, check_client_limits, parse_json_object
    from tests.unit.test_hostile_input import ANTHROPIC, CHAT, EMBEDDINGS, _outcome, _runtime


class FuzzFailure(Exception):
    """An input broke the rule; raised so that libFuzzer stops and saves the input."""


CHAT_SEEDS: list[dict] = [
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]},
    {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Weather in Paris?"}],
     "tools": [{"type": "function", "function": {
         "name": "get_weather", "description": "Current weather", "strict": True,
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False},
    {"model": "gpt-4o", "tool_choice": "auto", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Give me a number."}],
     "response_format": {"type": "json_schema", "json_schema": {
         "name": "answer", "strict": True,
         "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                    "additionalProperties": False}}}},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "JSON please"}],
     "response_format": {"type": "json_object"}, "temperature": 0.2, "top_p": 0.9, "seed": 7},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in these pictures?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Count to 3"}], "stream": True,
     "stream_options": {"include_usage": True}, "max_tokens": 64, "stop": ["\n\n"], "user": "u-1"},
    {"model": "gpt-4o", "messages": [{"role": "developer", "content": "Think first."},
                                     {"role": "user", "content": "2+2?"}],
     "reasoning_effort": "low", "max_completion_tokens": 256, "n": 1},
    {"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarise"},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]},
]

ANTHROPIC_SEEDS: list[dict] = [
    {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]},
    {"model": "claude", "max_tokens": 512, "system": [{"type": "text", "text": "Be brief.",
                                                       "cache_control": {"type": "ephemeral"}}],
     "thinking": {"type": "enabled", "budget_tokens": 2048}, "stop_sequences": ["END"],
     "metadata": {"user_id": "u-1"}, "stream": True,
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": "What is this?"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
    {"model": "claude", "max_tokens": 128, "tool_choice": {"type": "tool", "name": "get_weather"},
     "tools": [{"name": "get_weather", "description": "Current weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
     "messages": [
         {"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                            "input": {"city": "Paris"}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
                                       "is_error": False}]}]},
    {"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": [
        {"type": "document", "title": "a.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]},
]

MODELS = ["gpt-4o", "gpt4", "claude"]
"""Routed by tests/unit/stage_support.py: gpt-4o and its alias to OpenAI then Anthropic, claude to Anthropic."""

KEYS = [
    "model", "messages", "role", "content", "type", "text", "image_url", "url", "detail", "tools", "function", "name",
    "description", "parameters", "strict", "tool_choice", "response_format", "json_schema", "schema", "stream",
    "stream_options", "include_usage", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop",
    "n", "seed", "user", "tool_calls", "id", "arguments", "tool_call_id", "reasoning_effort", "input_audio", "data",
    "format", "file", "file_data", "file_id", "filename", "logprobs", "top_logprobs", "parallel_tool_calls",
    "metadata", "frequency_penalty", "presence_penalty", "logit_bias", "modalities", "audio", "prediction",
    "service_tier", "store", "web_search_options", "refusal", "system", "thinking", "budget_tokens",
    "stop_sequences", "source", "media_type", "tool_use_id", "input", "input_schema", "is_error", "cache_control",
    "user_id", "output_config", "effort", "title", "citations", "properties", "required", "items", "enum",
    "additionalProperties", "$ref", "anyOf",
]

WORDS = [
    "user", "assistant", "system", "tool", "developer", "function", "text", "image_url", "input_audio", "file",
    "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking", "base64", "url", "content",
    "auto", "none", "required", "any", "json_object", "json_schema", "object", "string", "integer", "array",
    "minimal", "low", "medium", "high", "enabled", "disabled", "adaptive", "ephemeral", "wav", "mp3", "image/png",
    "application/pdf", "text/plain", "data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,",
    "data:;base64,", "data:image/png,x", "https://example.com/a.png", "{}", '{"city":"Paris"}', "[]", "{",
    "call_1", "toolu_1", "get_weather", "gpt-4o", "gpt4", "claude", "embed", "", " ",
]


def _copy(value: object) -> object:
    """A deep copy of JSON data at a third of `copy.deepcopy`'s cost, which dominated the time per input."""
    return marshal.loads(marshal.dumps(value))


def _fragments(seeds: list[dict]) -> list[object]:
    """Every subtree of the seeds: grafting one elsewhere puts valid-looking parts in unexpected places."""
    found: list[object] = []
    stack: list[object] = list(seeds)
    while stack:
        node = stack.pop()
        found.append(node)
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


FRAGMENTS = _fragments(CHAT_SEEDS + ANTHROPIC_SEEDS)


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-2, 70000)
    if kind == 3:  # past 64 bits, where orjson and the token arithmetic have limits
        return fdp.ConsumeInt(9)
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return fdp.PickValueInList(WORDS)
    if kind == 6:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 7:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 8:
        return {fdp.PickValueInList(KEYS): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}
    return _copy(fdp.PickValueInList(FRAGMENTS))


def _mutate(fdp: atheris.FuzzedDataProvider, root: dict) -> None:
    """One edit at a container the fuzzer walks to: replace, delete, add, rename or duplicate a member."""
    node: dict | list = root
    for _ in range(6):
        inner = [child for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, dict | list) and child]
        if not inner or not fdp.ConsumeBool():
            break
        node = inner[fdp.ConsumeIntInRange(0, len(inner) - 1)]
    operation = fdp.ConsumeIntInRange(0, 4)
    if isinstance(node, dict):
        keys = list(node)
        if operation == 0 and keys:
            node[fdp.PickValueInList(keys)] = _value(fdp)
        elif operation == 1 and keys:
            del node[fdp.PickValueInList(keys)]
        elif operation == 2 and keys:
            node[fdp.PickValueInList(KEYS)] = node.pop(fdp.PickValueInList(keys))
        else:
            node[fdp.PickValueInList(KEYS)] = _value(fdp)
        return
    index = fdp.ConsumeIntInRange(0, len(node) - 1) if node else 0
    if operation == 0 and node:
        node[index] = _value(fdp)
    elif operation == 1 and node:
        del node[index]
    elif operation == 2 and node:
        node.insert(index, _copy(node[index]))
    else:
        node.insert(index, _value(fdp))


def _structured(fdp: atheris.FuzzedDataProvider, seeds: list[dict]) -> bytes:
    body: dict = _copy(fdp.PickValueInList(seeds))  # type: ignore[assignment]
    body["model"] = fdp.PickValueInList(MODELS)
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        _mutate(fdp, body)
    # json rather than orjson: the latter refuses integers past 64 bits, which are worth sending
    return json.dumps(body, ensure_ascii=False).encode()


def _translators() -> list[tuple[str, Callable[[dict], dict]]]:
    """Every provider's request translator, with model names that switch on each family's special cases."""
    limit = _runtime().default_max_tokens
    by_module = [
        (openai, ["gpt-4o-2024"]),
        (anthropic, ["claude-x"]),
        (azure_openai, ["gpt-4o"]),
        (cohere, ["command-a-03-2025"]),
        (bedrock_converse, ["anthropic.claude-sonnet-4-v1:0", "amazon.nova-2-lite-v1:0", "openai.gpt-oss-120b-1:0",
                            "meta.llama3-70b-instruct-v1:0"]),
        (bedrock_anthropic, ["anthropic.claude-sonnet-4-v1:0"]),
        (gemini, ["gemini-2.5-flash", "gemini-3-pro-preview"]),
        (vertex_anthropic, ["claude-sonnet-4"]),
    ]
    found: list[tuple[str, Callable[[dict], dict]]] = [
        (f"{module.__name__} {model}", functools.partial(module.chat_request, model=model, default_max_tokens=limit))
        for module, models in by_module for model in models]

    def preset_request(preset: str, body: dict) -> dict:
        return presets.adapt_request(preset, openai.chat_request(body, "m", default_max_tokens=limit), "m")

    found.extend((f"preset {name}", functools.partial(preset_request, name)) for name in presets.PRESETS)
    return found


TRANSLATORS = _translators()


def _translate_everywhere(request_headers: dict[str, str], raw: bytes) -> None:
    """What the route stage does before translating, then every translator, each on its own copy of the body."""
    runtime = _runtime()
    if len(raw) > runtime.max_body_bytes:
        return
    try:
        body = parse_json_object(raw)
        check_client_limits(body, runtime.config.requests)
        if request_headers is ANTHROPIC:
            body = anthropic_messages.to_openai(body)
        check_chat_shape(body)
    except GatewayError as error:
        _require_client_error(error, "the route stage's checks")
        return
    failures: list[Exception] = []
    for name, translate in TRANSLATORS:  # all of them, so that one translator's bug can't hide another's
        try:
            translate(_copy(body))
        except GatewayError as error:
            if not 400 <= error.status < 500:
                failures.append(_caused(FuzzFailure(f"{name} answered {error.status}: {error.message}"), error))
        except Exception as error:
            failures.append(_caused(FuzzFailure(f"the {name} translator raised {type(error).__name__}"), error))
    if failures:
        raise ExceptionGroup("translators failed", failures)


def _caused(failure: FuzzFailure, cause: BaseException) -> FuzzFailure:
    failure.__cause__ = cause
    return failure


def _require_client_error(error: GatewayError, where: str) -> None:
    if not 400 <= error.status < 500:
        raise FuzzFailure(f"{where} answered {error.status}: {error.message}") from error


class _ErrorLines(logging.Handler):
    """Holds the ERROR records of one input (`server.respond` logs an unexpected exception before answering 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> logging.LogRecord | None:
        first = self.records[0] if self.records else None
        self.records.clear()
        return first


ERRORS = _ErrorLines()
logging.getLogger().addHandler(ERRORS)


def _check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 3:
        request_headers, raw = CHAT, _structured(fdp, CHAT_SEEDS)
    elif mode == 4:
        request_headers, raw = ANTHROPIC, _structured(fdp, ANTHROPIC_SEEDS)
    else:
        request_headers, raw = (CHAT, ANTHROPIC, EMBEDDINGS)[mode], fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        status = _outcome(request_headers, raw)
        logged = ERRORS.take()
        if logged is not None:
            cause = logged.exc_info[1] if logged.exc_info else None
            raise FuzzFailure(f"ERROR logged, answered {status}: {logged.getMessage()}") from cause
        if status != 0 and not 400 <= status < 500:
            raise FuzzFailure(f"the route stage answered {status}")
        if request_headers is not EMBEDDINGS:
            _translate_everywhere(request_headers, raw)
    except Exception as failure:
        for single in _leaves(failure):
            single.add_note(f"request: POST {request_headers[':path']} {raw!r}")
        raise


def _leaves(failure: BaseException) -> list[BaseException]:
    if isinstance(failure, BaseExceptionGroup):
        return [leaf for inner in failure.exceptions for leaf in _leaves(inner)]
    return [failure]


FAILURE_BANNER = "=== Babelgate fuzz failure ==="
TRIAGE = os.environ.get("BG_FUZZ_TRIAGE_DIR")
"""When set, each distinct failure is saved there (input, request and traceback) and fuzzing goes on: libFuzzer alone
stops at the first, which hides every other bug for as long as that one is open."""


def _signature(failure: BaseException) -> str:
    """The root cause's type and innermost ext_proc line: one file per bug, not per input."""
    root = failure
    while root.__cause__ is not None:
        root = root.__cause__
    frames = [frame for frame in traceback.extract_tb(root.__traceback__) if "/ext_proc/" in frame.filename]
    if not frames:
        return re.sub(r"\W+", "_", str(root))[:80]
    where = frames[-1]
    return f"{type(root).__name__}-{Path(where.filename).stem}-{where.lineno}"


def TestOneInput(data: bytes) -> None:
    try:
        _check(data)
    except Exception as failure:
        distinct: dict[str, BaseException] = {}  # one traceback per bug, though several models of a provider hit it
        for leaf in _leaves(failure):
            distinct.setdefault(_signature(leaf), leaf)
        if TRIAGE is None:
            # atheris prints only the outermost exception, without its cause or notes: the whole chain goes first
            for leaf in distinct.values():
                print(f"{FAILURE_BANNER}\n{''.join(traceback.format_exception(leaf))}", file=sys.stderr, flush=True)
            raise FuzzFailure(", ".join(distinct)) from None
        for signature, leaf in distinct.items():
            saved = Path(TRIAGE) / signature
            if not saved.exists():
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_bytes(data)
                saved.with_suffix(".txt").write_text("".join(traceback.format_exception(leaf)))
                print(f"new failure saved: {saved}", file=sys.stderr)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
