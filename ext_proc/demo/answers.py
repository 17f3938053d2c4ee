"""The deterministic script both demo providers follow, and the values they exchange with the HTTP layer.

What is said, when a tool is called and with which arguments, and how many tokens it cost are pure functions of the
request, so tests (and benchmarks comparing runs) can predict every answer. Only ids and timestamps vary.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import orjson

PARALLEL_TOOLS_HEADER = "x-demo-parallel-tools"
MAX_PARALLEL_TOOLS = 16
MAX_ECHO_CHARS = 200
VERBOSE_WORDS = 20_000
"""What a `verbose` answer runs to when the request sets no output limit: the model's own maximum, as a real provider
would produce (and a gateway must prevent by always sending a limit)."""
_VERBOSE_WORD = "la "
"""Three characters a word: a gateway that counts a stream's text by characters (four a token) never counts more
tokens than the words the provider reports."""

NOT_JSON = object()
"""`Call.body` when the request body is not valid JSON (JSON `null` is a valid body, so None can't mean that)."""

_WORD = re.compile(r"\S+\s*|\s+")
_MAX_SCHEMA_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a provider module sees it."""

    name: str
    method: str
    path: str
    headers: Mapping[str, str]
    body: object
    api_key: str | None
    query: str = ""
    """The query string (without `?`), e.g. Azure's `api-version=...`."""
    verbose: bool = False
    """The `verbose` fault: the answer uses all the output the request allows (`verbose_text`)."""
    off_schema: bool = False
    """The `off-schema` fault: a structured answer does not fit its schema (`structured_answer`)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A provider's answer: a JSON body, or (when `events` is set) an SSE stream of already framed events."""

    status: int
    body: bytes = b""
    events: tuple[bytes, ...] | None = None
    headers: tuple[tuple[str, str], ...] = ()


class Rejected(Exception):
    """The request is invalid; each provider renders it in its own error format."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    reason: Literal["end", "stop", "length"]
    stop_sequence: str | None
    tokens: int


def greeting(name: str, model: str, said: str) -> str:
    return f"Hello from {name} ({model})! You said: {said[:MAX_ECHO_CHARS]}"


def tool_reply(name: str, model: str, result: str) -> str:
    return f"Hello from {name} ({model})! The tool returned: {result[:MAX_ECHO_CHARS]}"


def verbose_text(limit: int | None) -> str:
    """An answer that runs past `limit` words (so `complete` cuts it there, with reason "length"), or to
    `VERBOSE_WORDS` when the request sets no limit."""
    return _VERBOSE_WORD * (limit + 1 if limit is not None else VERBOSE_WORDS)


def words(text: str) -> list[str]:
    """Word-sized pieces (each keeps its trailing space) that join back to `text`: one output token each."""
    return _WORD.findall(text)


def complete(text: str, stops: list[str], max_tokens: int | None) -> Completion:
    """Cut `text` at the first stop sequence, then at `max_tokens` words, as a model would stop generating."""
    reason: Literal["end", "stop", "length"] = "end"
    matched = None
    cut = len(text)
    for stop in stops:
        at = text.find(stop)
        if 0 <= at < cut:
            cut, matched, reason = at, stop, "stop"
    pieces = words(text[:cut])
    if max_tokens is not None and len(pieces) > max_tokens:
        pieces, matched, reason = pieces[:max_tokens], None, "length"
    return Completion("".join(pieces), reason, matched, len(pieces))


def estimate_tokens(*values: object) -> int:
    """About one token per four characters of every string inside `values` (dict keys excluded); at least 1."""
    return max(1, -(-_chars(values) // 4))


def contains_key(value: object, key: str) -> bool:
    """Whether any dict nested anywhere in `value` has `key`."""
    if isinstance(value, dict):
        return key in value or any(contains_key(item, key) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_key(item, key) for item in value)
    return False


def text_of(content: object) -> str:
    """The text of a message content: a string, or the `text` of its text parts joined by spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return " ".join(part for part in parts if isinstance(part, str))
    return ""


def tool_input(schema: object) -> dict[str, object]:
    """Arguments that fit a tool's JSON schema: strings "demo", numbers 1, booleans true, enums their first value.

    Nested objects and arrays (one item) are filled the same way; local `$ref`s are followed. Always an object.
    """
    arguments = _sample(schema, schema, 0) if isinstance(schema, dict) else {}
    return arguments if isinstance(arguments, dict) else {}


def structured_answer(schema: object, off_schema: bool = False) -> str:
    """The answer to a request for structured output: a JSON object that fits `schema` (any object without one);
    with `off_schema`, JSON that does not (`_mistyped`)."""
    answer = tool_input(schema)
    return orjson.dumps(_mistyped(answer) if off_schema else answer).decode()


def fragments(text: str, count: int = 4) -> list[str]:
    """Split `text` into up to `count` non-empty pieces, so streamed tool arguments arrive in several deltas."""
    size = max(1, -(-len(text) // count))
    return [text[start : start + size] for start in range(0, len(text), size)]


def parallel_tool_count(headers: Mapping[str, str]) -> int:
    value = headers.get(PARALLEL_TOOLS_HEADER)
    if value is None:
        return 1
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PARALLEL_TOOLS:
        raise Rejected(f"{PARALLEL_TOOLS_HEADER} must be a whole number from 1 to {MAX_PARALLEL_TOOLS}")
    return int(value)


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _chars(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(_chars(item) for item in value)
    return 0


def _sample(schema: object, root: object, depth: int) -> object:
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return "demo"
    if "$ref" in schema:
        return _sample(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _sample(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        return {key: _sample(value, root, depth + 1) for key, value in properties.items()}
    if kind == "array":
        return [_sample(schema.get("items"), root, depth + 1) for _ in range(max(1, _int(schema.get("minItems"))))]
    return _SCALARS.get(kind, "demo") if isinstance(kind, str) else "demo"


_SCALARS: dict[str, object] = {"string": "demo", "integer": 1, "number": 1, "boolean": True, "null": None}


def _mistyped(value: object) -> object:
    """`value` with every scalar swapped for one of another type (strings become 1, the rest "demo"); an object
    without properties becomes an array."""
    if isinstance(value, dict):
        return {key: _mistyped(item) for key, item in value.items()} if value else ["demo"]
    if isinstance(value, list):
        return [_mistyped(item) for item in value]
    return 1 if isinstance(value, str) else "demo"


def _resolve(ref: object, root: object) -> object:
    """Follow a local `#/...` JSON pointer; anything else resolves to nothing (sampled as a string)."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for part in ref[1:].split("/")[1:]:
        if not isinstance(node, dict):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


def _int(value: object) -> int:
    return min(value, 3) if isinstance(value, int) and not isinstance(value, bool) else 0
