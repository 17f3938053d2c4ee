"""Guardrails compiled from a route's config and applied to a request (route stage) or an answer (attempt stage).

Text is looked for wherever a client or a model puts it: message contents (strings and text parts), the system prompt,
an embeddings `input`, an Anthropic-format `system`, tool definitions (`description`s at any depth, so the tool's and
its parameters', and schema `enum` values), tool-call arguments (an OpenAI or Responses `arguments` string, and every
string value of an object under `input` or `arguments`: an Anthropic `tool_use.input`), tool results, reasoning
(`reasoning_content`, `reasoning`, a thinking block's `thinking`), refusals, and in the Responses API's shapes:
`instructions`, input items, a tool call's `output`, and a streamed event's `delta`. Streams are watched by
`stages/stream_guard.py`, with the same compiled guardrails.

Matching reads a normalised copy of each text (`normalize.py`: NFKC, invisible characters removed), and the patterns
allow whitespace runs where separators go, so `4111.1111.1111.1111`, a card with NBSPs, a fullwidth at sign (U+FF20) or
a deny phrase with a zero-width space, a double space or a line break are found; a deny phrase's words also match with
no space between them (`deny_patterns` are the operator's own: they see whitespace as written). `redact` replaces the
span of the client's own text each find came from with `[REDACTED:<KIND>]`, every other character left as it was;
`block` refuses with a 400 that names the guardrail (a blocking guardrail sees the text before any redaction); `log`
only records the find in the audit log. Found values are never logged, only their kinds and counts, with the route and
the key.

Signed thinking: a thinking block with a `signature` is checked like any text in an answer, and redacted there (the
client never gets the value; the block can then not be sent back, since the provider checks its text against the
signature). A signed block a client sends back in a request is checked by `block` and `log` guardrails but never
changed: the signature pins its text, the provider would refuse the request, and the model wrote it itself.
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
from .normalize import Normalized, normalize

audit = logging.getLogger("babelgate.audit")

_TEXT_KEYS = frozenset({"content", "text", "system", "input", "prompt", "arguments", "instructions", "output",
                        "delta", "description", "enum", "reasoning_content", "reasoning", "thinking", "refusal",
                        "partial_json"})
_FREE_FORM_KEYS = frozenset({"input", "arguments", "structuredContent"})
"""An object under one of these is a tool call's arguments (or an MCP tool's structured result): every string in it
is text the model wrote or reads."""
_NORMAL, _TEXT_LIST, _FREE_FORM = 0, 1, 2
Find = tuple[str, tuple[int, int]]
Visit = Callable[[str, bool], str]
"""Called with a text and whether it is pinned (may be checked, not changed); returns the text to keep."""


@dataclass(frozen=True, slots=True)
class Guardrail:
    name: str
    mode: str
    request: bool
    response: bool
    kinds: tuple[str, ...]
    deny: re.Pattern[str] | None
    longest_deny_word: int = 0
    """Characters of the longest deny word (normalised): a stream holds back at least this much."""

    @classmethod
    def of(cls, settings: GuardrailSettings) -> Guardrail:
        words = [normalize(word).text.split() for word in settings.deny_words]
        alternatives = [r"\s*".join(re.escape(part) for part in parts) for parts in words if parts]
        alternatives += list(settings.deny_patterns)
        deny = re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE) if alternatives else None
        return cls(name=settings.name, mode=settings.mode, request="request" in settings.apply_to,
                   response="response" in settings.apply_to, kinds=tuple(settings.pii), deny=deny,
                   longest_deny_word=max((len(" ".join(parts)) for parts in words), default=0))

    def finds(self, text: str) -> list[Find]:
        """What this guardrail finds in an already normalised text, as spans of that text."""
        found = pii.find(text, self.kinds) if self.kinds else []
        if self.deny is not None:
            found.extend(("deny", match.span()) for match in self.deny.finditer(text) if match.end() > match.start())
            found.sort(key=lambda item: item[1][0])
        return found


class GuardrailBlocked(BadRequest):
    pass


def apply(guardrails: tuple[Guardrail, ...], document: object, *, phase: str, route: str,
          key_id: str = "") -> bool:
    """Check every text of `document` (a request or an answer, changed in place when redacting); True if anything
    was redacted. Raises GuardrailBlocked for a `block` guardrail that found something."""
    active = tuple(g for g in guardrails if (g.request if phase == "request" else g.response))
    if not active:
        return False
    counts: list[Counter[str]] = [Counter() for _ in active]
    redacting = any(g.mode == "redact" for g in active)

    def visit(text: str, pinned: bool) -> str:
        copy = normalize(text)
        spans = scan(active, copy, counts)
        if not spans or pinned or not redacting:
            return text
        return redact(text, copy, spans)

    changed = _walk(document, visit, pin_signed=phase == "request")
    blocked = report(active, counts, phase=phase, route=route, key_id=key_id)
    if blocked is not None:
        raise _blocked(blocked, counts[active.index(blocked)], phase, document)
    return changed


def scan(guardrails: tuple[Guardrail, ...], copy: Normalized, counts: list[Counter[str]]) -> list[Find]:
    """Count every guardrail's finds in `copy` into `counts` (one per guardrail, in order); the finds a `redact`
    guardrail makes, as spans of the normalised text, in text order."""
    spans: list[Find] = []
    for guardrail, count in zip(guardrails, counts, strict=True):
        found = guardrail.finds(copy.text)
        if found:
            count.update(kind for kind, _ in found)
            if guardrail.mode == "redact":
                spans.extend(found)
    spans.sort(key=lambda item: item[1][0])
    return spans


def redact(text: str, copy: Normalized, spans: list[Find]) -> str:
    """`text` with the original span of each find (spans of `copy`, in order) replaced by its marker; finds that
    overlap (two guardrails' finds, an email inside a deny phrase) are replaced as one, named by the first."""
    merged: list[tuple[str, int, int]] = []
    for kind, (start, end) in spans:
        begin, finish = copy.original(start, end)
        if merged and begin < merged[-1][2]:
            first, head, tail = merged[-1]
            merged[-1] = (first, head, max(tail, finish))
        else:
            merged.append((kind, begin, finish))
    pieces: list[str] = []
    last = 0
    for kind, begin, finish in merged:
        pieces.extend((text[last:begin], f"[REDACTED:{kind.upper()}]"))
        last = finish
    pieces.append(text[last:])
    return "".join(pieces)


def report(guardrails: tuple[Guardrail, ...], counts: list[Counter[str]], *, phase: str, route: str,
           key_id: str) -> Guardrail | None:
    """Write one audit line per guardrail that found something; the first `block` guardrail among them, if any."""
    blocked = None
    for guardrail, count in zip(guardrails, counts, strict=True):
        if not count:
            continue
        audit.info("guardrail %r (%s) found %s in a %s of route %r, key %r", guardrail.name, guardrail.mode,
                   summary(count), phase, route, key_id)
        if guardrail.mode == "block" and blocked is None:
            blocked = guardrail
    return blocked


def summary(count: Counter[str]) -> str:
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(count.items()))


def blocked_error(guardrail: Guardrail, count: Counter[str], phase: str, param: str | None = None) -> GuardrailBlocked:
    what = "the request" if phase == "request" else "the answer"
    return GuardrailBlocked(f"Guardrail {guardrail.name!r} blocked {what}: it found {summary(count)}.", param=param,
                            code="guardrail_blocked")


def _blocked(guardrail: Guardrail, count: Counter[str], phase: str, document: object) -> GuardrailBlocked:
    return blocked_error(guardrail, count, phase, _prompt_field(document) if phase == "request" else None)


def _walk(document: object, visit: Visit, *, pin_signed: bool = False) -> bool:
    """Apply `visit` to every string under a text-bearing key (and in lists under one; and every string of an
    object under a free-form key); True if any changed. Iterative, so a deeply nested document costs no recursion.
    `pin_signed`: a signed thinking block's text is visited as pinned."""
    changed = False
    stack: list[tuple[object, int]] = [(document, _NORMAL)]
    while stack:
        node, mode = stack.pop()
        if isinstance(node, dict):
            pinned = pin_signed and "signature" in node
            for key, value in node.items():
                text = mode == _FREE_FORM or key in _TEXT_KEYS
                if isinstance(value, str):
                    if text:
                        new = visit(value, pinned and key == "thinking")
                        if new is not value and new != value:
                            node[key] = new
                            changed = True
                elif isinstance(value, dict):
                    stack.append((value, _FREE_FORM if mode == _FREE_FORM or key in _FREE_FORM_KEYS else _NORMAL))
                elif isinstance(value, list):
                    stack.append((value, mode if mode == _FREE_FORM else _TEXT_LIST if text else _NORMAL))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, str):
                    if mode != _NORMAL:
                        new = visit(value, False)
                        if new is not value and new != value:
                            node[index] = new
                            changed = True
                elif isinstance(value, dict | list):
                    stack.append((value, _FREE_FORM if mode == _FREE_FORM else _NORMAL if isinstance(value, dict)
                                  else mode))
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

        def count(text: str, pinned: bool) -> str:
            nonlocal total
            total += len(text)
            return text

        _walk({"messages": messages, "system": body.get("system"), "input": items,
               "instructions": body.get("instructions")}, count)
        if total > max_prompt_chars:
            raise BadRequest(f"The prompt has {total} characters; this route allows {max_prompt_chars}.",
                             param=field, code="prompt_too_long")
