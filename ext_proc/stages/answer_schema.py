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
- The cost is bounded (`schema_validation`, loaded with the first schema there is to check): a deadline (`BUDGET`)
  is checked at every keyword, the client's regular expressions (`pattern`, `patternProperties`) run in the `regex`
  module with a timeout (`re` can't be stopped: one pattern that backtracks forever would hold the whole process),
  and `uniqueItems` is linear. Past the budget the schema is not enforced for that answer (logged): the schema is the
  client's own, and so is what it asks. A schema with both `patternProperties` and `unevaluatedProperties` is not
  enforced (jsonschema's `unevaluatedProperties` runs the patterns with `re`). The answer itself is parsed and
  validated once per choice.
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

from typing import Any

import orjson

from ..errors import UpstreamError, bounded
from ..json_types import JsonObject
from ..providers.openai_responses import chat_completion_from_response
from ..providers.stream import ChatStream
from .endpoints import Endpoint

CODE = "invalid_structured_output"
MAX_QUOTED = 200
"""Characters of the answer (or of the validator's reason, which may quote it) a violation message carries at most."""
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
        # jsonschema and regex load with the first schema there is to check, not in every gateway process
        from . import schema_validation

        schema = self.schema
        assert schema is not None
        if self._enforced is None:
            self._validator = schema_validation.compile_schema(schema)
            self._enforced = self._validator is not None
        if not self._enforced:
            return None
        return schema_validation.violation(self._validator, schema, value)


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


def _quote(text: str) -> str:
    return bounded(repr(text[:MAX_QUOTED]), MAX_QUOTED)
