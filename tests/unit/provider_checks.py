"""Checks the provider translation tests share: fixture folders, strict SDK-type validation, OpenAI answer shapes.

What it means for a request to fit a provider's SDK (anthropic, openai, cohere, google-genai, botocore's
bedrock-runtime model), for an answer to be a valid OpenAI chunk, or for a field table to cover every OpenAI field is
written once here. `goldens.py` says which of these each provider's fixtures go through; the provider test modules
call them for their own cases.
"""

from __future__ import annotations

import collections.abc
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pydantic
import pytest
from openai.types.chat import ChatCompletionChunk, completion_create_params
from typing_extensions import is_typeddict

from ext_proc.errors import BadRequest
from ext_proc.providers.common import DROPPED, GATEWAY_CHAT_FIELDS, MAPPED, REFUSED
from ext_proc.streaming.sse import SSEDecoder, SSEEvent

OPENAI_CHAT_PARAMS = (completion_create_params.CompletionCreateParamsNonStreaming,
                      completion_create_params.CompletionCreateParamsStreaming)


class FixtureFolder:
    """Golden files of one provider: JSON bodies, SSE streams, and case names taken from file names."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self, name: str) -> typing.Any:
        return json.loads((self.folder / name).read_text())

    def cases(self, prefix: str, suffix: str) -> list[str]:
        """The `<case>` parts of files named `<prefix><case><suffix>`, sorted."""
        return sorted(path.name[len(prefix):-len(suffix)] for path in self.folder.glob(f"{prefix}*{suffix}"))

    def events(self, name: str) -> list[SSEEvent]:
        return sse_events(self.folder / name)


def sse_events(path: Path) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(path.read_bytes()) + decoder.finish()


def feed_stream(stream: typing.Any, events: Iterable[SSEEvent]) -> list[dict]:
    """Everything a provider's ChatStream emits for `events`, its `finish()` included."""
    out: list[dict] = []
    for event in events:
        out.extend(stream.feed(event.event, event.data))
    out.extend(stream.finish())
    return out


def streamed_tool_calls(chunks: Iterable[dict]) -> dict[int, dict]:
    """The tool calls a stream's deltas build, by index: id, name, the joined arguments and how many pieces."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.get("choices", ()):
            for fragment in choice["delta"].get("tool_calls", ()):
                call = calls.setdefault(fragment["index"], {"id": None, "name": None, "arguments": "", "pieces": 0})
                call["id"] = fragment.get("id") or call["id"]
                call["name"] = fragment["function"].get("name") or call["name"]
                call["arguments"] += fragment["function"].get("arguments") or ""
                call["pieces"] += 1
    return calls


def streamed_text(chunks: Iterable[dict]) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk.get("choices"))


# --- request fields ------------------------------------------------------------------------------------------------


def sdk_fields(*params: type) -> set[str]:
    """Top-level keys of TypedDict request types (`__annotations__` and resolved hints, inherited ones included)."""
    fields: set[str] = set()
    for param in params:
        fields |= set(param.__annotations__) | set(typing.get_type_hints(param))
    return fields


def openai_chat_fields() -> set[str]:
    """Every top-level field of an OpenAI chat completions request, as the installed openai SDK declares them."""
    return sdk_fields(*OPENAI_CHAT_PARAMS)


def assert_every_openai_field_has_a_rule(fields: Mapping[str, str]) -> None:
    """Every OpenAI field has a rule, and every rule is for an OpenAI field or one Babelgate adds
    (`common.GATEWAY_CHAT_FIELDS`)."""
    sdk = openai_chat_fields()
    assert sdk - set(fields) == set(), "OpenAI fields with no mapped/dropped/refused rule"
    assert set(fields) - sdk - set(GATEWAY_CHAT_FIELDS) == set(), "rules for fields the OpenAI SDK no longer has"
    assert set(fields.values()) <= {MAPPED, DROPPED, REFUSED}


def fields_with_rule(fields: Mapping[str, str], rule: str) -> set[str]:
    return {field for field, found in fields.items() if found == rule}


def assert_refused_field_is_named(translate: Callable[[dict], object], body: dict, field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        translate(body)
    assert refused.value.param == field
    assert field in refused.value.message


def assert_refused_with_param(translate: Callable[[dict], object], body: dict, param: str, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        translate(body)
    assert refused.value.param == param
    assert message in refused.value.message


# --- strict TypedDict validation -----------------------------------------------------------------------------------


def typed_dict_problems(value: object, hint: object, path: str) -> list[str]:
    """Where `value` departs from a TypedDict-based SDK type, unknown keys included. Empty means it fits.

    pydantic validates these types but ignores unknown keys, which is exactly the mistake a translator makes.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Required, typing.NotRequired, typing.Annotated):
        return typed_dict_problems(value, typing.get_args(hint)[0], path)
    if origin in (typing.Union, types.UnionType):
        # Fits if one member fits; otherwise report the member that got furthest (not "expected str" at the top).
        tries = [typed_dict_problems(value, member, path) for member in typing.get_args(hint)]
        return min(tries, key=lambda problems: (any(p.startswith(f"{path}: ") for p in problems), len(problems)))
    if origin is typing.Literal:
        return [] if value in typing.get_args(hint) else [f"{path}: {value!r} is not one of {typing.get_args(hint)}"]
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        hints = typing.get_type_hints(hint, include_extras=True)
        problems = [f"{path}.{key}: unknown key" for key in value if key not in hints]
        problems += [f"{path}.{key}: missing" for key in hint.__required_keys__ if key not in value]
        for key, item in value.items():
            if key in hints:
                problems += typed_dict_problems(item, hints[key], f"{path}.{key}")
        return problems
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or (
            origin is not None and origin.__name__ == "SequenceNotStr"):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        item_hint = typing.get_args(hint)[0]
        return [problem for i, item in enumerate(value) for problem in typed_dict_problems(item, item_hint,
                                                                                           f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping) or hint is object:
        return [] if hint is object or isinstance(value, dict) else [f"{path}: expected an object"]
    return scalar_problems(value, hint, path)


def scalar_problems(value: object, hint: object, path: str) -> list[str]:
    """The leaves of a request type: null, numbers (a bool is none), strings; any other hint matches nothing."""
    if hint is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if hint is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else [f"{path}: expected number"]
    if hint in (str, int, bool):
        ok = isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
        return [] if ok else [f"{path}: expected {hint.__name__}"]
    return [f"{path}: {hint!r} never matches a request value"]  # response models, file handles


# --- OpenAI answers ------------------------------------------------------------------------------------------------


def assert_no_undeclared_keys(model: pydantic.BaseModel, path: str, extensions: frozenset[str] | set[str]) -> None:
    """No key anywhere in `model` that the openai SDK does not declare, except the `extensions` we add on purpose."""
    extra = set(model.model_extra or ()) - extensions
    assert not extra, f"{path} has keys the openai SDK does not declare: {extra}"
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, pydantic.BaseModel):
                assert_no_undeclared_keys(item, f"{path}.{name}[{i}]", extensions)


def assert_error_envelope(error: dict) -> None:
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    assert isinstance(error["error"]["type"], str)


def assert_valid_chunks(chunks: list[dict], extensions: frozenset[str] | set[str]) -> None:
    """Each chunk is an OpenAI ChatCompletionChunk with no undeclared keys, or an OpenAI error envelope."""
    for chunk in chunks:
        if "error" in chunk:
            assert_error_envelope(chunk)
        else:
            assert_no_undeclared_keys(ChatCompletionChunk.model_validate(chunk), "chunk", extensions)
