"""What a prompt template may contain, checked once when it is loaded or created (the registry trusts it after).

A leaf module (only `re` and `pathlib`): the config schema (`config.models.PromptTemplate`) validates with it, the
renderer and the store use the same names and bounds.

Bounds, chosen so one template can never be what makes a request too large or a store slow: a template's JSON at most
`MAX_TEMPLATE_BYTES` (64 KiB), `MAX_MESSAGES` messages, `MAX_VARIABLES` variables (also the most a request may send),
`MAX_VERSIONS` versions per name (a store refuses the next one: create a new name), `MAX_LABELS` labels per name.
A variable's value is bounded by the gateway's body limit, like everything else the client sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,31}")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,63})\s*\}\}")
"""`{{name}}`, whitespace allowed inside the braces."""

LATEST = "latest"
"""The implicit label: the highest version. It can't be set."""
DEFAULT_LABEL = "production"
"""What a reference without a version or label resolves to when set (else `latest`)."""

MAX_TEMPLATE_BYTES = 64 * 1024
MAX_MESSAGES = 256
MAX_VARIABLES = 64
MAX_VERSIONS = 256
MAX_LABELS = 32

ROLES = ("system", "developer", "user", "assistant")
_MESSAGE_KEYS = frozenset({"role", "content", "name"})
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def message_problem(message: object) -> str | None:
    """Why a template message is not one (None: it is). A message is an OpenAI chat message of one of `ROLES` whose
    content is a string or a list of text parts: what a placeholder can sit in."""
    if not isinstance(message, dict):
        return "a message is an object with `role` and `content`"
    extra = sorted(set(message) - _MESSAGE_KEYS)
    if extra:
        return f"unknown field {extra[0]!r} (a template message has role, content and optionally name)"
    if message.get("role") not in ROLES:
        return f"`role` must be one of {', '.join(ROLES)}"
    if "name" in message and not isinstance(message["name"], str):
        return "`name` must be a string"
    content = message.get("content")
    if isinstance(content, str):
        return None
    if not isinstance(content, list) or not content:
        return "`content` must be a string or a non-empty list of text parts"
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                and set(part) <= {"type", "text"}):
            return "each content part must be {type: text, text: ...} (templates hold text)"
    return None


def texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    """Every text of the messages a placeholder may sit in."""
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            yield content
        else:
            yield from (part["text"] for part in content)


def placeholders(messages: list[dict[str, Any]]) -> list[str]:
    """The variables the messages name, in order of first use."""
    return list(dict.fromkeys(match.group(1) for text in texts(messages) for match in PLACEHOLDER.finditer(text)))


def response_format_problem(value: dict[str, Any]) -> str | None:
    """Why `value` is not an OpenAI chat `response_format` (None: it is)."""
    kind = value.get("type")
    if kind not in _RESPONSE_FORMATS:
        return f"`type` must be one of {', '.join(_RESPONSE_FORMATS)}"
    if kind != "json_schema":
        return None if set(value) == {"type"} else "only `type` goes with this type"
    schema = value.get("json_schema")
    if set(value) != {"type", "json_schema"} or not isinstance(schema, dict):
        return "a json_schema format is {type: json_schema, json_schema: {name, schema, strict?, description?}}"
    if not isinstance(schema.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", schema["name"]):
        return "`json_schema.name`: 1-64 letters, digits, _ or -"
    if "schema" in schema and not isinstance(schema["schema"], dict):
        return "`json_schema.schema` must be an object"
    if "strict" in schema and not isinstance(schema["strict"], bool | None):
        return "`json_schema.strict` must be a boolean"
    extra = sorted(set(schema) - {"name", "schema", "strict", "description"})
    return f"unknown field json_schema.{extra[0]}" if extra else None


def parse_reference(reference: str) -> tuple[str, str | None]:
    """`name[@version|label]` -> (name, the part after @ or None). Shapes are checked by the registry."""
    name, at, ref = reference.partition("@")
    return name, ref if at else None


def prompts_file(keys_file: Path) -> Path:
    """Where stored templates live without Redis: `keys.yaml` -> `keys.prompts.yaml`, in the same directory."""
    return keys_file.with_name(f"{keys_file.stem}.prompts{keys_file.suffix or '.yaml'}")
