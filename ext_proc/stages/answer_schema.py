"""Output normalization: an answer to a request that asked for JSON (`response_format` json_schema or json_object)
is checked against what was asked, whatever the backend, so the client gets schema-valid JSON or an error.

One check for every client format: it reads the OpenAI form of the request (`response_format`, which the Anthropic
Messages `output_config.format` and the Responses `text.format` already become in `client_formats/`) and the OpenAI
form of the answer (`choices[i].message.content`, every choice). A body that passes through untranslated (an
Anthropic Message to an Anthropic-family backend, a Responses body to a backend that serves that API) is read in its
own form by `of_client_body`, its answer in the form the meter reads (`answer_form`).

Decisions worth knowing before changing this file:

- A choice that answers with a refusal or with tool calls instead of content is not a violation: the model declined,
  or asked for a tool first; the schema applies to the content that answers. A choice with neither and no content (a
  content filter, an empty answer) is one, and so is content cut at the output limit (it is not JSON).
- Draft 2020-12, the dialect OpenAI's and Anthropic's structured outputs take, with an empty `referencing` registry:
  a `$ref` resolves inside the schema (and to the draft metaschemas jsonschema ships) or not at all. jsonschema's
  default resolver would fetch a remote `$ref` with urllib; a client's schema must never make the gateway open a
  connection (a trust boundary), so the registry is always passed and has no `retrieve`.
- A schema that is itself invalid is not enforced: the provider refuses it or answers as it sees fit, and the
  gateway does not refuse what the provider took. Checking the schema against the metaschema costs ~6 ms, 30 times
  the validation, so it runs only when the answer fails (or the validator trips over the schema): a valid answer costs
  one validation, the compile of a validator (~10 µs) included, and no cache keyed by client text is needed.
- A `$ref` that does not resolve inside the schema, or a schema the validator can't use, is the same: not enforced.
  An answer too deeply nested to check is a violation.
- The cost is bounded (`_BoundedValidator`): a deadline (`BUDGET`) is checked at every keyword, the client's regular
  expressions (`pattern`, `patternProperties`) run in the `regex` module with a timeout (`re` can't be stopped: one
  pattern that backtracks forever would hold the whole process), and `uniqueItems` is linear. Past the budget the
  schema is not enforced for that answer (logged): the schema is the client's own, and so is what it asks. A schema
  with both `patternProperties` and `unevaluatedProperties` is not enforced (jsonschema's `unevaluatedProperties`
  runs the patterns with `re`). The answer itself is parsed and validated once per choice.
- The message names the first violation (jsonschema's `best_match`): where (`$.items[0].age`) and why, bounded, never
  more than `MAX_QUOTED` characters of the answer.

Failover. In a chain, the attempt stage answers an invalid answer's body phase with a 502 (`json_reply` sets
`:status` from the body response). The attempt stage's response body mode is BUFFERED, so Envoy's upstream ext_proc
filter holds the response headers until the body has been processed; the router sees the headers only after that,
with the 502, and its retry policy (`retry_on`: 502 by default) sends the request to the next backend of the chain.
What the invalid answer used is charged (`take_usage`, as for a guardrail's block). The last backend's 502, or a
direct route's (no other backend), reaches the client with the violation in its message
(`tests/e2e/test_output_schema_e2e.py` proves both through Envoy).

Streams. A streamed answer can't be taken back: chunks went to the client as they came. Its content is collected
per choice and checked when the choice finishes (`CheckedStream`); an invalid one ends the stream with an error event
in place of the finish (the finish reason, and anything after it, never goes out), as a guardrail ends a stream. A
stream never fails over after its first chunk. An Anthropic or Responses stream relayed untranslated gets the error
event after the provider's event that finished the answer (its final event may follow: the SDKs raise on the error).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import orjson
import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, UnknownType, ValidationError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable

from ..errors import UpstreamError
from ..json_types import JsonObject
from ..providers.openai_responses import chat_completion_from_response
from ..providers.stream import ChatStream
from .endpoints import Endpoint

log = logging.getLogger(__name__)

CODE = "invalid_structured_output"
MAX_QUOTED = 200
"""Characters of the answer (or of the validator's reason, which may quote it) a violation message carries at most."""
MAX_QUOTE = 80
"""Characters of the offending value a violation's reason quotes at most."""
MAX_PATH = 120
"""Characters of the path to the violation at most."""
_NO_RETRIEVAL: Registry[bool | Mapping[str, Any]] = Registry()
"""No resources and no `retrieve`: a `$ref` outside the schema is unresolvable, never fetched."""
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UNUSABLE_SCHEMA = (UnknownType, Unresolvable, re.error, regex.error, TypeError, ValueError, AttributeError,
                    LookupError)
"""What jsonschema raises (besides reporting errors) for a schema it can't use: an unknown type, a bad pattern, a
`$ref` outside the schema, a keyword of the wrong shape."""
BUDGET = 0.2
"""Seconds one answer's validation may take, its regular expressions included; past it the schema is not enforced
for that answer (the schema is the client's own, and so is what it asks of the answer)."""
_deadline: ContextVar[float] = ContextVar("answer_schema_deadline", default=float("inf"))
"""When the validation running in this context must stop (its keywords are called with no room for it)."""
Keyword = Callable[[Any, Any, Any, Any], Any]
"""A jsonschema keyword function: (validator, the keyword's value, instance, schema) -> errors (or None)."""


class _OutOfTime(Exception):
    """The validation ran past its `BUDGET`."""


class AnswerSchema:
    """What one request's answer must be: JSON that fits `schema`, or (schema None) any JSON object."""

    __slots__ = ("_enforced", "_validator", "schema")

    def __init__(self, schema: JsonObject | None) -> None:
        self.schema = schema
        self._validator: Any = None
        """Compiled at the first answer (an attempt that fails before it never needs one)."""
        self._enforced: bool | None = None
        """Whether the schema can be enforced at all; known once compiled."""

    def check(self, answer: JsonObject, backend: str) -> UpstreamError | None:
        """The error for an OpenAI-form answer (`chat.completion`) whose content does not fit, None when every
        choice's does (or has a refusal or tool calls instead)."""
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            return _violation(backend, "", "it has no choices")
        for position, choice in enumerate(choices):
            message = choice.get("message") if isinstance(choice, dict) else None
            reason = self._reason(message if isinstance(message, dict) else {},
                                  choice.get("finish_reason") if isinstance(choice, dict) else None)
            if reason is not None:
                return _violation(backend, f"choice {position}: " if len(choices) > 1 else "", reason)
        return None

    def check_untranslated(self, answer: JsonObject, response: bool, backend: str) -> UpstreamError | None:
        """`check` for an answer passed through untranslated: a Responses API `response` object (`response`), else
        an Anthropic Message."""
        return self.check(chat_completion_from_response(answer) if response else answer_form(answer), backend)

    def check_content(self, content: object, finish_reason: object = None) -> str | None:
        """Why one choice's content does not fit (path and reason), None when it does."""
        if not isinstance(content, str) or not content.strip():
            return "the answer has no content"
        try:
            value = orjson.loads(content)
        except orjson.JSONDecodeError:
            cut = " (the answer was cut at its output limit)" if finish_reason == "length" else ""
            return f"the answer is not JSON{cut}: {_quote(content)}"
        if self.schema is None:
            return None if isinstance(value, dict) else f"the answer is not a JSON object: {_quote(content)}"
        return self._validate(value)

    def watch(self, stream: ChatStream, backend: str) -> ChatStream:
        """The backend's stream translation, its content checked as each choice finishes."""
        return CheckedStream(stream, self, backend)

    def _reason(self, message: JsonObject, finish_reason: object) -> str | None:
        if message.get("tool_calls") or (message.get("refusal") and not message.get("content")):
            return None
        return self.check_content(message.get("content"), finish_reason)

    def _validate(self, value: object) -> str | None:
        schema = self.schema
        assert schema is not None
        if self._enforced is None:
            self._enforced = not _mixes_pattern_and_unevaluated(schema)
            self._validator = _BoundedValidator(schema, registry=_NO_RETRIEVAL)
        if not self._enforced:
            return None
        validator = self._validator
        token = _deadline.set(time.monotonic() + BUDGET)
        try:
            error = best_match(validator.iter_errors(value))
        except RecursionError:
            return "the answer is nested too deeply to check"
        except (_OutOfTime, TimeoutError):
            log.warning("a response_format schema was not enforced: checking an answer took more than %gs", BUDGET)
            return None
        except _UNUSABLE_SCHEMA as exc:
            log.info("a response_format schema was not enforced: jsonschema can't use it (%s)", type(exc).__name__)
            return None
        finally:
            _deadline.reset(token)
        if error is None or not _schema_is_valid(schema):
            return None
        return f"at {_path(error)}: {_reason(error)}"


class CheckedStream(ChatStream):
    """A `ChatStream` that passes its translation's chunks on, collecting each choice's content; when a choice
    finishes with content that does not fit, an error chunk goes out in place of the finish, and nothing after it."""

    def __init__(self, inner: ChatStream, schema: AnswerSchema, backend: str) -> None:
        super().__init__("", 0, False)
        self._inner = inner
        self._schema = schema
        self._backend = backend
        self._texts: dict[object, list[str]] = {}
        self._unchecked: set[object] = set()
        """Choices that answered with a refusal or tool calls: nothing of theirs is checked."""
        self._ended = False
        """An error went out (the provider's or this check's): the rest passes unchecked, or not at all."""

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        chunks = self._inner.feed(event, data)
        return self._watch(chunks) if chunks else chunks

    def finish(self) -> list[JsonObject]:
        return self._watch(self._inner.finish())

    def _watch(self, chunks: list[JsonObject]) -> list[JsonObject]:
        if self._failed:
            return []
        if self._ended:
            return chunks
        for position, chunk in enumerate(chunks):
            if "error" in chunk:
                self._ended = True
                return chunks
            error = self._take(chunk)
            if error is not None:
                self._failed = True
                return [*chunks[:position], *_unfinished(chunk), orjson.loads(error.body())]
        return chunks

    def _take(self, chunk: JsonObject) -> UpstreamError | None:
        """Collect one chunk's content; the error when it finishes a choice whose content does not fit."""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if delta.get("tool_calls") or delta.get("refusal"):
                    self._unchecked.add(index)
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self._texts.setdefault(index, []).append(content)
            finish = choice.get("finish_reason")
            if finish and index not in self._unchecked:
                reason = self._schema.check_content("".join(self._texts.pop(index, ())), finish)
                if reason is not None:
                    return _violation(self._backend, f"choice {index}: " if index else "", reason)
        return None


def _timed(keyword: Keyword) -> Keyword:
    """`keyword`, refused once the validation is past its deadline (checked at every keyword, so no schema and
    answer together run much past `BUDGET`)."""
    def run(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > _deadline.get():
            raise _OutOfTime
        return keyword(validator, value, instance, schema)
    return run


def _search(pattern: str, text: str) -> bool:
    """A client's regular expression over the answer's text, within what is left of the budget: `re` can't be
    stopped, and a pattern that backtracks exponentially would hold the whole process (the `regex` module can)."""
    left = _deadline.get() - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    return regex.search(pattern, text, timeout=min(left, BUDGET)) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                        schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """jsonschema's own unless `patternProperties` is beside it (whose regular expressions it would run with `re`)."""
    patterns = schema.get("patternProperties")
    if not patterns or not isinstance(patterns, dict):
        yield from _ADDITIONAL_PROPERTIES(validator, additional, instance, schema) or ()
        return
    if not validator.is_type(instance, "object"):
        return
    named = schema.get("properties") or {}
    extras = [name for name in instance if name not in named and not any(_search(p, name) for p in patterns)]
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif not additional and extras:
        yield ValidationError(f"{', '.join(repr(name) for name in extras[:5])} match no property and no pattern")


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """In linear time (jsonschema compares unhashable items pairwise): items as canonical JSON (keys sorted, a
    whole float as its integer, as JSON Schema's equality has it), in a set."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[bytes] = set()
    for item in instance:
        key = orjson.dumps(_canonical(item), option=orjson.OPT_SORT_KEYS)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _canonical(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


_ADDITIONAL_PROPERTIES: Keyword = Draft202012Validator.VALIDATORS["additionalProperties"]
_BoundedValidator = validators.extend(Draft202012Validator, {  # type: ignore[no-untyped-call]
    **{name: _timed(keyword) for name, keyword in Draft202012Validator.VALIDATORS.items()},
    "pattern": _timed(_pattern), "patternProperties": _timed(_pattern_properties),
    "additionalProperties": _timed(_additional_properties), "uniqueItems": _timed(_unique_items)})
"""Draft 2020-12 with a deadline at every keyword, client regular expressions run by `regex` under it, and
`uniqueItems` in linear time."""


def _mixes_pattern_and_unevaluated(schema: object) -> bool:
    """Whether `patternProperties` and `unevaluatedProperties` both appear (jsonschema's `unevaluatedProperties`
    runs the patterns with `re`, which no deadline stops)."""
    found: set[str] = set()
    todo = [schema]
    while todo and len(found) < 2:
        node = todo.pop()
        if isinstance(node, dict):
            found.update(key for key in ("patternProperties", "unevaluatedProperties") if key in node)
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    if len(found) == 2:
        log.info("a response_format schema was not enforced: it has both patternProperties and unevaluatedProperties "
                 "(which jsonschema checks with unbounded regular expressions)")
        return True
    return False


def of_request(body: JsonObject) -> AnswerSchema | None:
    """What an OpenAI-form chat request's `response_format` asks of the answer; None when it asks for no JSON."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    json_schema = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(json_schema, dict):
        schema = json_schema.get("schema")
        # a json_schema format without a schema asks for JSON of no particular shape: an object, as OpenAI answers
        return AnswerSchema(schema if isinstance(schema, dict) else None)
    return AnswerSchema(None) if response_format.get("type") == "json_object" else None


def of_client_body(body: JsonObject, endpoint: Endpoint) -> AnswerSchema | None:
    """The same for a body that passes through untranslated, read in its own client format: Anthropic Messages
    `output_config.format` (or the older beta's top-level `output_format`), Responses `text.format` (its schema
    beside its type)."""
    if endpoint is Endpoint.MESSAGES:
        config = body.get("output_config")
        found = config.get("format") if isinstance(config, dict) else None
        if found is None:
            found = body.get("output_format")
    elif endpoint is Endpoint.RESPONSES:
        text = body.get("text")
        found = text.get("format") if isinstance(text, dict) else None
        if isinstance(found, dict) and found.get("type") == "json_object":
            return AnswerSchema(None)
    else:
        return of_request(body)
    if isinstance(found, dict) and found.get("type") == "json_schema" and isinstance(found.get("schema"), dict):
        return AnswerSchema(found["schema"])
    return None


def answer_form(answer: JsonObject) -> JsonObject:
    """An Anthropic Message in the OpenAI form the check reads: its text blocks as the content, tool use and a
    refusal as themselves."""
    content = answer.get("content")
    blocks = [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
    text = "".join(block["text"] for block in blocks if block.get("type") == "text" and isinstance(block.get("text"),
                                                                                                 str))
    message: JsonObject = {"content": text}
    if any(block.get("type") in ("tool_use", "server_tool_use") for block in blocks):
        message["tool_calls"] = [block for block in blocks if block.get("type") in ("tool_use", "server_tool_use")]
    if answer.get("stop_reason") == "refusal":
        message = {"content": None, "refusal": text or "refused"}
    finish = "length" if answer.get("stop_reason") == "max_tokens" else "stop"
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def _schema_is_valid(schema: JsonObject) -> bool:
    """Whether the client's schema is a valid Draft 2020-12 schema (run only when an answer failed it)."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        log.info("a response_format schema was not enforced: it is not a valid JSON schema")
        return False
    except RecursionError:
        return False
    return True


def _violation(backend: str, where: str, reason: str) -> UpstreamError:
    return UpstreamError(f"The answer from backend {backend!r} does not match the response_format schema: "
                         f"{where}{reason}", code=CODE)


def _unfinished(chunk: JsonObject) -> list[JsonObject]:
    """The finishing chunk without its finish (and usage): what content it carries still goes out."""
    choices = [{**choice, "finish_reason": None} for choice in chunk.get("choices") or () if isinstance(choice, dict)]
    if not any(isinstance(choice.get("delta"), dict) and choice["delta"] for choice in choices):
        return []
    stripped = {**chunk, "choices": choices}
    if "usage" in stripped:
        stripped["usage"] = None
    return [stripped]


def _path(error: ValidationError) -> str:
    """`$`, then `.name` or `[index]` for each step into the answer (`["odd name"]` for a key that is no name)."""
    parts = ["$"]
    for step in error.absolute_path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _PLAIN_NAME.match(str(step)):
            parts.append(f".{step}")
        else:
            parts.append(f"[{orjson.dumps(str(step)).decode()}]")
    return _bounded("".join(parts), MAX_PATH)


def _reason(error: ValidationError) -> str:
    """jsonschema's message, whose quote of the offending value (it starts most messages) is cut to `MAX_QUOTE`
    characters, so the reason after it survives the bound."""
    message = error.message
    quoted = repr(error.instance)
    if len(quoted) > MAX_QUOTE and message.startswith(quoted):
        message = _bounded(quoted, MAX_QUOTE) + message[len(quoted):]
    return _bounded(message)


def _quote(text: str) -> str:
    return _bounded(repr(text[:MAX_QUOTED]))


def _bounded(text: str, limit: int = MAX_QUOTED) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
