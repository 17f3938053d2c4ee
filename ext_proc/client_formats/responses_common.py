"""What the Responses API client format's request, answer and stream modules share: item ids, the tool names the
chat form gives Responses tools, and the envelope Claude's thinking travels in.

- Tool names. A Responses function tool keeps its name in the chat form. A tool inside a `namespace` tool becomes
  the function `<namespace>__<name>`, and a `custom` (free-form text input) tool becomes a function taking one string
  parameter `input`; `tool_names` maps each chat name back, so a call in the answer goes out as the item the client
  declared (`function_call` with its `namespace`, or `custom_tool_call`).
- Thinking. Claude's signed thinking blocks (`thinking_blocks` on the chat form's assistant message) travel in a
  `reasoning` item's `encrypted_content`, so a stateless client (`store: false`, as Codex sends) hands them back on
  its next turn. The envelope is `bgw1.` + unpadded base64url of the blocks' JSON: it carries nothing secret (the
  signatures are Anthropic's; Claude refuses a forged block) and is told apart from OpenAI's own opaque reasoning,
  which only an OpenAI-family backend can read. A translated backend gets the blocks back; a native OpenAI backend
  gets neither the envelope nor anything else of them (`is_gateway_reasoning`).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass

import orjson

from ..json_types import JsonObject

THINKING_ENVELOPE = "bgw1."
NAMESPACE_SEPARATOR = "__"
CUSTOM_TOOL_PARAMETER = "input"


def new_id(prefix: str) -> str:
    """An item or response id in OpenAI's style (`resp_...`, `msg_...`, `fc_...`, `rs_...`)."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class ToolName:
    """What a chat-form function name stands for in the client's Responses request."""

    kind: str
    """`function` or `custom`."""
    name: str
    namespace: str | None = None


def tool_names(tools: object) -> dict[str, ToolName]:
    """The chat-form function name of each function-like tool of a Responses request's `tools` (function, custom,
    and those inside namespaces); other tool types (hosted ones) have none. Assumes `tools` was checked by the
    request conversion: entries that are not objects with string names are skipped."""
    names: dict[str, ToolName] = {}
    if not isinstance(tools, list):
        return names
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if kind == "namespace" and isinstance(tool.get("name"), str):
            for inner in tool.get("tools") or ():
                if isinstance(inner, dict) and isinstance(inner.get("name"), str) and inner.get("type") in (
                        "function", "custom"):
                    names[tool["name"] + NAMESPACE_SEPARATOR + inner["name"]] = ToolName(
                        inner["type"], inner["name"], tool["name"])
        elif kind in ("function", "custom") and isinstance(tool.get("name"), str):
            names[tool["name"]] = ToolName(kind, tool["name"])
    return names


def chat_tool_name(name: str, namespace: str | None) -> str:
    """The chat-form function name of a call the client hands back (the inverse of `tool_names`)."""
    return namespace + NAMESPACE_SEPARATOR + name if namespace else name


def encode_thinking(blocks: list[JsonObject]) -> str:
    """Signed thinking blocks -> a reasoning item's `encrypted_content`."""
    return THINKING_ENVELOPE + base64.urlsafe_b64encode(orjson.dumps(blocks)).rstrip(b"=").decode()


def is_gateway_reasoning(encrypted: object) -> bool:
    return isinstance(encrypted, str) and encrypted.startswith(THINKING_ENVELOPE)


def decode_thinking(encrypted: object) -> list[JsonObject] | None:
    """A reasoning item's `encrypted_content` -> the thinking blocks it carries; None when it is not the gateway's
    envelope (OpenAI's own) or does not decode to a list of flat objects (the caller drops it: a translator validates
    the blocks themselves). Flat: a thinking block's fields are strings, and nesting hidden in the envelope would
    pass the request's depth check and break whatever encodes the chat form again (orjson stops at 255 levels)."""
    if not is_gateway_reasoning(encrypted):
        return None
    assert isinstance(encrypted, str)
    packed = encrypted[len(THINKING_ENVELOPE):]
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(blocks, list) or not all(isinstance(block, dict) and not any(
            isinstance(value, dict | list) for value in block.values()) for block in blocks):
        return None
    return blocks
