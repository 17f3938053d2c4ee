"""Guardrails compiled from a route's config and applied to a request (route stage) or an answer (attempt stage).

Text is looked for wherever a client or a model puts it: message contents (strings and text parts), the system
prompt, an embeddings `input`, an Anthropic-format `system`, tool-call arguments, and in the Responses API's
shapes: `instructions`, input items, a tool call's `output`, and a streamed event's `delta`. `block` refuses with a
400 that names the guardrail; `redact` replaces each find with `[REDACTED:<KIND>]` in place; `log` only records the
find in the audit log. Found values are never logged, only their kinds and counts.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ..config.models import GuardrailSettings
from ..errors import BadRequest
from . import pii

audit = logging.getLogger("babelgate.audit")

_TEXT_KEYS = frozenset({"content", "text", "system", "input", "prompt", "arguments", "instructions", "output",
                        "delta"})


@dataclass(frozen=True, slots=True)
class Guardrail:
    name: str
    mode: str
    request: bool
    response: bool
    kinds: tuple[str, ...]
    deny: re.Pattern[str] | None

    @classmethod
    def of(cls, settings: GuardrailSettings) -> Guardrail:
        alternatives = [re.escape(word) for word in settings.deny_words] + list(settings.deny_patterns)
        deny = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE) if alternatives else None
        return cls(name=settings.name, mode=settings.mode, request="request" in settings.apply_to,
                   response="response" in settings.apply_to, kinds=tuple(settings.pii), deny=deny)

    def finds(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        found = pii.find(text, self.kinds) if self.kinds else []
        if self.deny is not None:
            found.extend(("deny", match.span()) for match in self.deny.finditer(text))
            found.sort(key=lambda item: item[1][0])
        return found


class GuardrailBlocked(BadRequest):
    pass


def apply(guardrails: tuple[Guardrail, ...], document: object, *, phase: str, route: str,
          key_id: str = "") -> bool:
    """Check every text of `document` (a request or an answer, changed in place when redacting); True if anything
    was redacted. Raises GuardrailBlocked for a `block` guardrail that found something."""
    active = [g for g in guardrails if (g.request if phase == "request" else g.response)]
    if not active:
        return False
    changed = False
    for guardrail in active:
        counts: Counter[str] = Counter()

        def visit(text: str, guardrail: Guardrail = guardrail, counts: Counter[str] = counts) -> str:
            found = guardrail.finds(text)
            if not found:
                return text
            counts.update(kind for kind, _ in found)
            if guardrail.mode != "redact":
                return text
            return _redact(text, found)

        redacted = _walk(document, visit)
        if not counts:
            continue
        summary = ", ".join(f"{kind} x{count}" for kind, count in sorted(counts.items()))
        audit.info("guardrail %r (%s) found %s in a %s of route %r, key %r", guardrail.name, guardrail.mode,
                   summary, phase, route, key_id)
        if guardrail.mode == "block":
            what = "the request" if phase == "request" else "the answer"
            raise GuardrailBlocked(f"Guardrail {guardrail.name!r} blocked {what}: it found {summary}.",
                                   param=_prompt_field(document) if phase == "request" else None,
                                   code="guardrail_blocked")
        changed = changed or (guardrail.mode == "redact" and redacted)
    return changed


def _redact(text: str, found: list[tuple[str, tuple[int, int]]]) -> str:
    pieces: list[str] = []
    last = 0
    for kind, (start, end) in found:
        if start < last:
            continue
        pieces.extend((text[last:start], f"[REDACTED:{kind.upper()}]"))
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _walk(document: object, visit: Callable[[str], str]) -> bool:
    """Apply `visit` to every string under a text-bearing key (and in lists under one); True if any changed.
    Iterative, so a deeply nested document costs no recursion."""
    changed = False
    stack: list[tuple[object, bool]] = [(document, False)]
    while stack:
        node, text_list = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key in _TEXT_KEYS:
                        new = visit(value)
                        if new != value:
                            node[key] = new
                            changed = True
                elif isinstance(value, dict | list):
                    stack.append((value, key in _TEXT_KEYS))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, str):
                    if text_list:
                        new = visit(value)
                        if new != value:
                            node[index] = new
                            changed = True
                elif isinstance(value, dict | list):
                    stack.append((value, text_list))
    return changed


def _prompt_field(document: object) -> str:
    """Where a request keeps its prompt: chat and Anthropic `messages`, the Responses API's and embeddings' `input`."""
    if isinstance(document, dict) and "messages" not in document and "input" in document:
        return "input"
    return "messages"


def _turns(messages: object, items: object) -> int:
    """Chat messages, else Responses input items (objects: an embeddings `input` list holds none)."""
    if isinstance(messages, list):
        return len(messages)
    return sum(isinstance(item, dict) for item in items) if isinstance(items, list) else 0


def check_size(body: dict, *, max_prompt_chars: int | None, max_messages: int | None) -> None:
    """A route's `max_messages` counts chat (and Anthropic) messages, or a Responses request's input items (each
    is a message, a tool call or a tool's output, as chat messages are); `max_prompt_chars` counts the text of
    either, system prompts and Responses `instructions` included."""
    field = _prompt_field(body)
    messages = body.get("messages")
    items = body.get("input")
    turns = _turns(messages, items)
    if max_messages is not None and turns > max_messages:
        raise BadRequest(f"The request has {turns} messages; this route allows {max_messages}.",
                         param=field, code="too_many_messages")
    if max_prompt_chars is not None:
        total = 0

        def count(text: str) -> str:
            nonlocal total
            total += len(text)
            return text

        _walk({"messages": messages, "system": body.get("system"), "input": items,
               "instructions": body.get("instructions")}, count)
        if total > max_prompt_chars:
            raise BadRequest(f"The prompt has {total} characters; this route allows {max_prompt_chars}.",
                             param=field, code="prompt_too_long")
