"""The JSON-schema check behind `answer_schema`: Draft 2020-12 with a deadline at every keyword, the client's regular
expressions run by `regex` under it, `uniqueItems` in linear time, and a registry that never fetches a `$ref`. Its own
module so jsonschema, referencing and regex load only in a process that has an answer to check (`answer_schema`
imports it then); why each bound exists is told in `answer_schema`'s docstring."""

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

from ..errors import bounded
from ..json_types import JsonObject, whole_numbers_as_ints

log = logging.getLogger(__name__)

MAX_REASON = 200
"""Characters of the validator's reason (which may quote the answer) at most: `answer_schema.MAX_QUOTED`."""
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




def compile_schema(schema: JsonObject) -> Any:
    """A bounded validator for `schema`, or None when the schema is not enforced at all."""
    if _mixes_pattern_and_unevaluated(schema):
        return None
    return _BoundedValidator(schema, registry=_NO_RETRIEVAL)


def violation(validator: Any, schema: JsonObject, value: object) -> str | None:
    """Where and why `value` does not fit (`at $.path: reason`), None when it does or the schema can't be enforced."""
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
        key = orjson.dumps(whole_numbers_as_ints(item), option=orjson.OPT_SORT_KEYS)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)



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
    return bounded("".join(parts), MAX_PATH)


def _reason(error: ValidationError) -> str:
    """jsonschema's message, whose quote of the offending value (it starts most messages) is cut to `MAX_QUOTE`
    characters, so the reason after it survives the bound."""
    message = error.message
    quoted = repr(error.instance)
    if len(quoted) > MAX_QUOTE and message.startswith(quoted):
        message = bounded(quoted, MAX_QUOTE) + message[len(quoted):]
    return bounded(message, MAX_REASON)


