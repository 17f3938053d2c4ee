"""What the semantic cache compares, and what must match exactly: a request splits into the text of its
conversation (embedded, compared by cosine similarity) and a namespace (a digest of everything else that decides
the answer, compared exactly).

Decisions worth knowing before changing this file:
- The namespace covers what the exact key covers (client format, route, scope, the body less `keys.IGNORED`) with
  the conversation fields (`messages`, `input`, `system`, `instructions`) taken out and replaced by their non-text
  parts: tool calls, tool results, images, files, audio, and any field of a message or text part other than its
  role and text. Only plain text is judged by similarity: a tool result of `20°C` and one of `25°C` embed almost
  alike, and an image does not embed at all, so those must be equal for a hit. Different tools, a different
  `max_tokens`, a different `previous_response_id`: a different namespace, never a hit.
- The embeddings model is in the namespace too: vectors of two models can't be compared.
- The text is `role: text` lines in conversation order (system/instructions first). A text longer than
  `MAX_TEXT_CHARS` keeps its first `HEAD_CHARS` and its last characters (the system prompt that names the task, and
  the latest turns that ask the question), and the digest of the middle it drops joins the namespace: two long
  conversations are only compared by similarity where they were embedded, and must match exactly where they weren't.
- A request with no text (only images, only tool results) has nothing to compare: no semantic step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from ..json_types import JsonObject
from .keys import IGNORED

CONVERSATION = ("instructions", "system", "messages", "input")
"""The body's fields that hold the conversation, in the order the text reads them."""
MAX_TEXT_CHARS = 8000
"""About 2,000 tokens: well inside every embeddings model's input limit, and quick to embed."""
HEAD_CHARS = 2000
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_TOOL_ROLES = frozenset({"tool", "function"})
_ROLE_OF = {"instructions": "system", "system": "system", "messages": "user", "input": "user"}


@dataclass(frozen=True, slots=True)
class SemanticRequest:
    namespace: str
    """Requests are only compared with others of the same namespace."""
    text: str
    """What is embedded."""


def semantic_request(route: str, scope: str, client_format: str, body: JsonObject,
                     embeddings_model: str) -> SemanticRequest | None:
    """The request's namespace and text; None when it has no text to compare."""
    lines: list[str] = []
    exact: list[object] = []
    for name in CONVERSATION:
        if name in body:
            _walk(body[name], _ROLE_OF[name], lines, exact)
    text = "\n".join(line for line in lines if line.strip())
    if not text.strip():
        return None
    if len(text) > MAX_TEXT_CHARS:
        tail = MAX_TEXT_CHARS - HEAD_CHARS
        exact.append({"omitted": hashlib.sha256(text[HEAD_CHARS:-tail].encode()).hexdigest()})
        text = text[:HEAD_CHARS] + "\n…\n" + text[-tail:]
    kept = {name: value for name, value in body.items() if name not in IGNORED and name not in CONVERSATION}
    digest = hashlib.sha256(orjson.dumps(["semantic", client_format, route, scope, embeddings_model, kept, exact],
                                         option=orjson.OPT_SORT_KEYS))
    return SemanticRequest(f"{client_format}:{digest.hexdigest()}", text)


def _walk(value: object, role: str, lines: list[str], exact: list[object]) -> None:
    """Text into `lines` (as `role: text`), everything else into `exact`, in order."""
    if isinstance(value, str):
        lines.append(f"{role}: {value}")
    elif isinstance(value, list):
        for item in value:
            _walk(item, role, lines, exact)
    elif isinstance(value, dict) and isinstance(value.get("role"), str):
        _message(value, lines, exact)
    elif isinstance(value, dict) and value.get("type") in _TEXT_PARTS and isinstance(value.get("text"), str):
        lines.append(f"{role}: {value['text']}")
        extra = {name: field for name, field in value.items() if name not in ("type", "text")}
        if extra:
            exact.append(extra)
    else:
        exact.append(value)


def _message(message: JsonObject, lines: list[str], exact: list[object]) -> None:
    role = str(message["role"])
    extra = {name: field for name, field in message.items() if name not in ("role", "content")}
    if extra:  # tool calls, a tool call's id, a name: equal or no hit
        exact.append({"role": role, **extra})
    content = message.get("content")
    if role in _TOOL_ROLES:  # a chat tool result is data, not prose: equal or no hit
        exact.append(content)
    elif content is not None:
        _walk(content, role, lines, exact)
