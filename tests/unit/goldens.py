"""Each provider's golden fixtures, described once: which translator reads them, with which model, what its requests,
answers and stream events must fit, and how its streams are framed. `test_goldens.py` runs the same checks over every
description; a provider's own test module keeps only what is particular to it.

A golden folder (tests/fixtures/<provider>/) holds pairs named `<family>_<case>.<kind>.<ext>`:

- `request_<case>.<client kind>.json` -> `request_<case>.<provider kind>.json` (the translated request),
- `response_<case>.<provider kind>.json` -> `response_<case>.<answer kind>.json` (the client's `chat.completion`),
- `stream_<case>.<provider stream file>` -> `stream_<case>.<answer kind>[.usage].sse` (what `ChatStream.feed` and
  `finish` return, without / with `stream_options.include_usage`).

Two translators may share a folder (bedrock-converse and bedrock-anthropic); every pair file must belong to one of
them. Tables a translator's field rules are checked with (`refused_fields.json`, `dropped_fields.json`,
`bad_requests.json`, `tool_choice_cases.json`) may come from another folder: Claude on Vertex and on Bedrock take
the Anthropic translation's, since they translate with it.

Why the validators are this strict: the SDKs' own types accept unknown keys (TypedDicts under pydantic, cohere's
models, botocore leaves patterns and ranges to the service), and an unknown key is exactly the mistake a translator
makes.
"""

from __future__ import annotations

import base64
import collections.abc
import json
import re
import types as python_types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anthropic.types as anthropic_types
import botocore.session
import orjson
import pydantic
from anthropic.types import message_create_params
from botocore.model import Shape
from botocore.validate import ParamValidator
from cohere.types import ChatFinishReason
from cohere.v2.raw_client import RawV2Client
from cohere.v2.types import V2ChatResponse, V2ChatStreamResponse
from google.auth.credentials import AnonymousCredentials
from google.genai import _api_client, models
from google.genai import types as genai_types
from openai.types.chat import ChatCompletion, completion_create_params
from openai.types.responses import response_create_params

from ext_proc.providers import (
    anthropic,
    azure_openai,
    bedrock_anthropic,
    bedrock_converse,
    cohere,
    gemini,
    openai,
    vertex_anthropic,
)
from ext_proc.providers.stream import ChatStream
from ext_proc.providers.translator import Translator
from ext_proc.streaming.eventstream import EventStreamDecoder, encode_event, encode_message
from ext_proc.streaming.sse import SSEEvent
from tests.unit.provider_checks import FixtureFolder, feed_stream, scalar_problems, sse_events, typed_dict_problems

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CREATED = 1700000000
DEFAULT_MAX_TOKENS = 4096
BASE_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
TWO_TOOLS = [{"type": "function", "function": {"name": "get_weather"}},
             {"type": "function", "function": {"name": "get_time"}}]

OPENAI_EXTENSIONS = frozenset({"reasoning_content", "thinking_blocks"})
"""Keys we add to OpenAI messages and deltas that the SDK models don't declare (read by many OpenAI clients)."""
AZURE_EXTENSIONS = frozenset({"prompt_filter_results", "content_filter_results"})
"""Azure's keys on answers and chunks that the openai SDK models don't declare (clients ignore them)."""

ANTHROPIC_MODEL = "claude-sonnet-4-5-20250929"
VERTEX_ANTHROPIC_MODEL = "claude-sonnet-4-5@20250929"
CONVERSE_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
INVOKE_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
COHERE_MODEL = "command-a-03-2025"
GEMINI_MODEL = "gemini-2.5-flash"


def openai_params(body: Mapping[str, object]) -> type:
    return (completion_create_params.CompletionCreateParamsStreaming if body.get("stream")
            else completion_create_params.CompletionCreateParamsNonStreaming)


# --- OpenAI and Azure: the openai SDK's request type ---------------------------------------------------------------


def assert_valid_openai_request(request: dict, extensions: frozenset[str] = frozenset()) -> None:
    """The openai SDK's `CompletionCreateParams`, unknown keys refused; `extensions` are keys the backend adds."""
    request = {key: value for key, value in request.items() if key not in extensions}
    params = openai_params(request)
    pydantic.TypeAdapter(params).validate_python(request)
    assert typed_dict_problems(request, params, "request") == []


def assert_valid_azure_request(request: dict) -> None:
    assert_valid_openai_request(request, azure_openai.EXTENSIONS)


RESPONSES_CLIENT_FIELDS = frozenset({"client_metadata"})
"""Top-level Responses fields OpenAI accepts from its own clients (Codex) that the SDK's types don't declare."""
CODEX_DEVIATIONS = re.compile(r"request\.(input\[\d+\]\.id: unknown key|input\[\d+\]\.content: expected an array"
                              r"|tools\[\d+\]\.search_content_types: unknown key)$")
"""What Codex 0.171 sends that the SDK's types don't declare and OpenAI accepts: an `id` on every input message,
`content: null` on reasoning items it hands back, `search_content_types` on its web_search tool."""


def assert_valid_responses_request(body: dict) -> None:
    """What a native Responses backend gets: the openai SDK's `ResponseCreateParams`, unknown keys refused (but
    those in `RESPONSES_CLIENT_FIELDS` and Codex's `CODEX_DEVIATIONS`: a native backend gets the client's body)."""
    body = {key: value for key, value in body.items() if key not in RESPONSES_CLIENT_FIELDS}
    params = (response_create_params.ResponseCreateParamsStreaming if body.get("stream")
              else response_create_params.ResponseCreateParamsNonStreaming)
    problems = [problem for problem in typed_dict_problems(body, params, "request")
                if not CODEX_DEVIATIONS.match(problem)]
    assert problems == []


# --- Anthropic, and Claude on Vertex and Bedrock: the anthropic SDK's request types --------------------------------


LEGACY_SAMPLING = {"temperature": (0.0, 1.0), "top_p": (0.0, 1.0)}
"""Accepted by the API (anthropic-version 2023-06-01, models before Opus 4.7) but gone from the SDK's types."""


def assert_valid_anthropic_request(request: dict) -> None:
    request = dict(request)
    for name, (low, high) in LEGACY_SAMPLING.items():
        value = request.pop(name, None)
        assert value is None or (isinstance(value, float | int) and low <= value <= high), (name, value)
    params = (message_create_params.MessageCreateParamsStreaming if request.get("stream")
              else message_create_params.MessageCreateParamsNonStreaming)
    pydantic.TypeAdapter(params).validate_python(request)
    assert typed_dict_problems(request, params, "request") == []
    # The SDK also allows inline system messages (newer API versions); 2023-06-01 only takes user and assistant.
    assert {message["role"] for message in request["messages"]} <= {"user", "assistant"}


def assert_valid_vertex_anthropic_request(request: dict) -> None:
    """The anthropic SDK's request type once `model` is put back (Vertex takes it in the path) and the body's
    `anthropic_version` taken out."""
    assert request["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in request
    body = {key: value for key, value in request.items() if key != "anthropic_version"}
    assert_valid_anthropic_request({"model": VERTEX_ANTHROPIC_MODEL, **body})


def assert_valid_invoke_body(request: dict) -> None:
    """The anthropic SDK's request type, with the `model` and `stream` that InvokeModel moves out of the body."""
    assert request["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in request and "stream" not in request
    assert_valid_anthropic_request({key: value for key, value in request.items() if key != "anthropic_version"}
                                   | {"model": INVOKE_MODEL})


def _valid_anthropic_event(event: SSEEvent) -> None:
    """A real Anthropic stream event (the SDK's union leaves out `ping` and `error`); SSE names it by its type."""
    kind = json.loads(event.data)["type"]
    assert event.event in (None, kind)
    if kind not in ("ping", "error"):
        pydantic.TypeAdapter(anthropic_types.RawMessageStreamEvent).validate_json(event.data)


# --- Bedrock: botocore's bedrock-runtime service model -------------------------------------------------------------


RUNTIME = botocore.session.get_session().get_service_model("bedrock-runtime")


def _decoded(value: object, shape: Shape) -> object:
    """`value` with every blob member base64-decoded (JSON carries blobs as base64; the model declares bytes)."""
    if shape.type_name == "blob" and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if shape.type_name == "structure" and isinstance(value, dict) and not shape.metadata.get("document"):
        return {key: _decoded(item, shape.members[key]) if key in shape.members else item
                for key, item in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_decoded(item, shape.member) for item in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {key: _decoded(item, shape.value) for key, item in value.items()}
    return value


def _constraint_problems(value: object, shape: Shape, path: str) -> list[str]:
    """What botocore's ParamValidator leaves to the service: string patterns and float ranges."""
    if shape.type_name == "string" and isinstance(value, str) and "pattern" in shape.metadata:
        try:
            matched = re.fullmatch(shape.metadata["pattern"], value)
        except re.error:
            return []
        return [] if matched else [f"{path}: {value!r} does not match {shape.metadata['pattern']}"]
    if shape.type_name in ("float", "double") and isinstance(value, int | float):
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{path}: {value} is outside {low}..{high}"]
        return []
    if shape.type_name == "structure" and isinstance(value, dict) and not shape.metadata.get("document"):
        return [problem for key, item in value.items() if key in shape.members
                for problem in _constraint_problems(item, shape.members[key], f"{path}.{key}")]
    if shape.type_name == "list" and isinstance(value, list):
        return [problem for i, item in enumerate(value)
                for problem in _constraint_problems(item, shape.member, f"{path}[{i}]")]
    return []


def shape_problems(value: dict, shape: Shape) -> str:
    """Where `value` departs from a botocore shape; empty means it fits."""
    params = _decoded(value, shape)
    report = ParamValidator().validate(params, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    return "\n".join(problems + _constraint_problems(params, shape, "request"))


def assert_valid_converse_request(request: dict, stream: bool = False, model: str = CONVERSE_MODEL) -> None:
    shape = RUNTIME.operation_model("ConverseStream" if stream else "Converse").input_shape
    assert shape_problems({"modelId": model, **request}, shape) == ""


def _valid_converse_answer(answer: dict) -> None:
    assert shape_problems(answer, RUNTIME.operation_model("Converse").output_shape) == ""


def _stream_member(operation: str, stream: str, event: str | None) -> Shape:
    name = (event or "").removeprefix("exception:")
    return RUNTIME.operation_model(operation).output_shape.members[stream].members[name]


def _valid_converse_event(event: SSEEvent) -> None:
    payload = {key: value for key, value in json.loads(event.data).items() if key != "p"}  # Bedrock's padding
    assert shape_problems(payload, _stream_member("ConverseStream", "stream", event.event)) == ""


def _valid_invoke_event(event: SSEEvent) -> None:
    payload = {key: value for key, value in json.loads(event.data).items() if key != "p"}
    assert shape_problems(payload, _stream_member("InvokeModelWithResponseStream", "body", event.event)) == ""
    if event.event == "chunk":
        _valid_anthropic_event(SSEEvent(None, base64.b64decode(payload["bytes"])))  # InvokeModel names none


# --- Cohere: the cohere SDK's parameters and models ----------------------------------------------------------------


_NOT_SENT = {"request_options", "return"}


def _sent_params(method: object) -> dict[str, object]:
    return {name: hint for name, hint in typing.get_type_hints(method, include_extras=True).items()
            if name not in _NOT_SENT}


COHERE_CHAT_PARAMS = _sent_params(RawV2Client.chat)
COHERE_EMBED_PARAMS = _sent_params(RawV2Client.embed)


def cohere_problems(value: object, hint: object, path: str) -> list[str]:
    """Where `value` departs from a cohere SDK type, unknown keys and unknown enum values included (the SDK's models
    allow extra keys and `Union[Literal, Any]` enums, which would let a misspelt key or value through)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return cohere_problems(value, typing.get_args(hint)[0], path)
    if origin in (typing.Union, python_types.UnionType):
        members = [member for member in typing.get_args(hint) if member is not typing.Any]  # enums stay closed
        tries = [cohere_problems(value, member, path) for member in members]
        return min(tries, key=lambda problems: (any(p.startswith(f"{path}: ") for p in problems), len(problems)))
    if origin is typing.Literal:
        return [] if value in typing.get_args(hint) else [f"{path}: {value!r} is not one of {typing.get_args(hint)}"]
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        return _cohere_model_problems(value, hint, path)
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            return [f"{path}: expected an array"]
        item_hint = typing.get_args(hint)[0]
        return [problem for i, item in enumerate(value) for problem in cohere_problems(item, item_hint,
                                                                                       f"{path}[{i}]")]
    if origin is dict or hint is dict:
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if hint is typing.Any:
        return []
    return scalar_problems(value, hint, path)


def _cohere_model_problems(value: object, model: type[pydantic.BaseModel], path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object"]
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    problems = [f"{path}.{key}: unknown key" for key in value if key not in fields]
    problems += [f"{path}.{key}: missing" for key, info in fields.items() if info.is_required() and key not in value]
    for key, item in value.items():
        if key in fields:
            problems += cohere_problems(item, fields[key].annotation, f"{path}.{key}")
    return problems


def assert_valid_cohere_request(request: dict, params: dict[str, object] = COHERE_CHAT_PARAMS) -> None:
    """The parameters of the SDK's `client.v2.chat` / `chat_stream` (or `embed`) and the models they take."""
    request = dict(request)
    stream = request.pop("stream", None)
    assert stream in (None, True), "chat_stream sends stream: true; chat leaves it out (the SDK sends false)"
    problems = [f"request.{key}: unknown parameter" for key in request if key not in params]
    for key, value in request.items():
        if key in params:
            problems += cohere_problems(value, params[key], f"request.{key}")
            try:
                pydantic.TypeAdapter(params[key]).validate_python(value)
            except pydantic.ValidationError as exc:
                problems.append(f"request.{key}: {exc.errors()[0]['msg']}")
    assert problems == []
    required = {"model", "messages"} if params is COHERE_CHAT_PARAMS else {"model", "input_type"}
    assert required <= set(request)


def _valid_cohere_answer(answer: dict) -> None:
    V2ChatResponse.model_validate(answer)  # the fixture is a real Cohere answer
    assert cohere_problems(answer, V2ChatResponse, "answer") == []


def _valid_cohere_event(event: SSEEvent) -> None:
    if event.data != b"[DONE]":  # the fixture events are real Cohere events
        # (not checked strictly: Cohere's message-start carries keys the SDK model does not declare)
        assert event.event == json.loads(event.data)["type"]
        pydantic.TypeAdapter(V2ChatStreamResponse).validate_json(event.data)


# --- Gemini: the google-genai SDK's types and its own request writers ----------------------------------------------


GEMINI_TOP_LEVEL_CONFIG = ("systemInstruction", "tools", "toolConfig", "safetySettings")
"""Request fields the SDK takes in `GenerateContentConfig` and writes at the top level of the request."""
GEMINI_WIRE_FIELDS = {"contents", "generationConfig", *GEMINI_TOP_LEVEL_CONFIG}
_GENAI_CLIENTS = {
    "ai-studio": (_api_client.BaseApiClient(api_key="test-key"), models._GenerateContentParameters_to_mldev),
    "vertex": (_api_client.BaseApiClient(vertexai=True, project="p", location="us-central1",
                                         credentials=AnonymousCredentials()),
               models._GenerateContentParameters_to_vertex),
}


def _sdk_request(request: dict, api: str) -> object:
    """Parse our request with the SDK's types, then let the SDK write its own request from them."""
    client, convert = _GENAI_CLIENTS[api]
    top_level = {key: request[key] for key in GEMINI_TOP_LEVEL_CONFIG if key in request}
    config = genai_types.GenerateContentConfig.model_validate_json(
        orjson.dumps({**request.get("generationConfig", {}), **top_level}))
    contents = [genai_types.Content.model_validate_json(orjson.dumps(content)) for content in request["contents"]]
    written = convert(client, {"model": GEMINI_MODEL, "contents": contents, "config": config})
    written.pop("_url")
    return _plain(written)


def _plain(value: object) -> object:
    """SDK objects as wire JSON; bytes (signatures, inline data) as standard base64 like the API's own answers."""
    if isinstance(value, pydantic.BaseModel):
        return _plain(value.model_dump(by_alias=True, exclude_none=True))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item != {} or key != "generationConfig"}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "value") and type(value).__module__ == genai_types.__name__:
        return value.value  # an SDK enum
    return value


def assert_valid_gemini_request(request: dict) -> None:
    """Parsed with google-genai's types (which refuse unknown fields) and written again by the SDK's own request
    converters for AI Studio and Vertex: it must come out exactly as we wrote it."""
    assert set(request) <= GEMINI_WIRE_FIELDS, set(request) - GEMINI_WIRE_FIELDS
    assert set(request.get("generationConfig", {})) <= {field.alias for field in
                                                        genai_types.GenerationConfig.model_fields.values()}
    expected = _plain(json.loads(json.dumps(request)))
    for api in _GENAI_CLIENTS:
        assert _sdk_request(request, api) == _signatures_decoded(expected), api


def _signatures_decoded(request: object) -> object:
    """Bytes fields (signatures, inline data) in standard base64, as `_plain` writes them; the API also takes the
    URL-safe alphabet (Google's signature sentinel is written in it)."""
    if isinstance(request, dict):
        decoded = {key: _signatures_decoded(item) for key, item in request.items()}
        if isinstance(request.get("thoughtSignature"), str):
            decoded["thoughtSignature"] = _standard_base64(request["thoughtSignature"])
        if isinstance(request.get("inlineData"), dict) and isinstance(request["inlineData"].get("data"), str):
            decoded["inlineData"]["data"] = _standard_base64(request["inlineData"]["data"])
        return decoded
    if isinstance(request, list):
        return [_signatures_decoded(item) for item in request]
    return request


def _standard_base64(text: str) -> str:
    padded = text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
    return base64.b64encode(base64.urlsafe_b64decode(padded)).decode()


def _valid_gemini_answer(answer: dict) -> None:
    genai_types.GenerateContentResponse.model_validate_json(orjson.dumps(answer))  # a real Gemini answer


def _valid_gemini_event(event: SSEEvent) -> None:
    if b'"error"' not in event.data:  # the fixture events are real Gemini answers
        genai_types.GenerateContentResponse.model_validate_json(event.data)


# --- stream framing ------------------------------------------------------------------------------------------------


def invoke_chunk_frame(event_json: bytes, padding: str = "abcdefgh") -> bytes:
    """An InvokeModelWithResponseStream `chunk` event carrying one Anthropic stream event."""
    payload = {"bytes": base64.b64encode(event_json).decode(), "p": padding}
    return encode_event("chunk", json.dumps(payload).encode())


def eventstream_events(frames: bytes) -> list[SSEEvent]:
    decoder = EventStreamDecoder()
    return decoder.feed(frames) + decoder.finish()


def jsonl_eventstream(path: Path) -> list[SSEEvent]:
    """A `.jsonl` fixture (one AWS event-stream message per line, readable rather than binary) framed as Bedrock
    sends it and decoded again: `{"event", "payload"}` (Converse), `{"event": "chunk", "anthropic", "p"}` (the
    Anthropic event, base64 in `bytes`), `{"exception", "payload"}`."""
    frames = b""
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "exception" in entry:
            frames += encode_message({":message-type": "exception", ":exception-type": entry["exception"],
                                      ":content-type": "application/json"}, json.dumps(entry["payload"]).encode())
        elif "anthropic" in entry:
            frames += invoke_chunk_frame(json.dumps(entry["anthropic"]).encode(), entry["p"])
        else:
            frames += encode_event(entry["event"], json.dumps(entry["payload"]).encode())
    return eventstream_events(frames)


# --- the description -----------------------------------------------------------------------------------------------


def _no_check(_: object) -> None:
    return None


def _unchanged(chunks: list[dict]) -> list[dict]:
    return chunks


def masked_ids(chunks: list[dict]) -> list[dict]:
    """Generated ids -> `chatcmpl-bedrock` (Converse answers carry none), after checking one answer or stream shares
    one well-formed id."""
    ids = {chunk["id"] for chunk in chunks if "id" in chunk}
    assert len(ids) <= 1 and all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", value) for value in ids), ids
    return [{**chunk, "id": "chatcmpl-bedrock"} if "id" in chunk else chunk for chunk in chunks]


@dataclass(frozen=True)
class FieldRules:
    """A translator's `FIELDS` table (mapped, dropped or refused, per OpenAI field) and the fixture tables that show
    each rule: `refused_fields.json`, `dropped_fields.json`, `bad_requests.json`, `tool_choice_cases.json`."""

    table: Mapping[str, str]
    tables: FixtureFolder
    tool_choice_of: Callable[[dict], tuple[object, list[str]]]
    """The provider request's tool choice (as `expected_tool_choice` in the cases) and the tool names it declares."""
    tools: list[dict] = field(default_factory=lambda: TWO_TOOLS)
    refusal_body: Mapping[str, object] = field(default_factory=lambda: BASE_BODY)
    """What a refused field is added to (Cohere refuses `parallel_tool_calls: false` only when there are tools)."""
    own_messages: Mapping[str, str] = field(default_factory=dict)
    """`bad_requests.json` cases (by name) this translator refuses, at the same param, with a message of its own."""


@dataclass(frozen=True)
class StopReasons:
    """The table `<provider stop reason> -> finish_reason` and every stop reason the provider's SDK declares."""

    table: str
    sdk: frozenset[str]
    answer: str
    """The response case each stop reason is put into."""
    put: Callable[[dict, str], dict]


@dataclass(frozen=True)
class MidStreamError:
    """A stream fixture that fails part-way, what would have ended it normally, and the prompt tokens it had
    reported before failing (None: it had reported none)."""

    case: str
    closing_event: SSEEvent
    prompt_tokens: int | None


@dataclass(frozen=True, repr=False)
class Golden:
    """One translator's golden fixtures: where they are, what its requests, answers and stream events must fit, how
    its streams are framed, and which of the shared checks apply to it (the optional parts)."""

    name: str
    """The schema; also the test id."""
    translator: Translator
    fixtures: FixtureFolder
    model: str
    """The backend model the golden requests and answers were written for."""
    usage_of: Callable[[dict], dict | None]
    valid_request: Callable[[dict, bool], None]
    """Raises AssertionError (or ValueError) unless a provider request fits the provider's SDK; the flag says
    whether the client asked for a stream."""
    broken_requests: Mapping[str, Callable[[dict], object]]
    """Changes to a translated request that `valid_request` must catch (so the validator is known to bite)."""
    request_kinds: tuple[str, str]
    """(client kind, provider kind): `request_<case>.<client>.json` -> `request_<case>.<provider>.json`."""
    response_kinds: tuple[str, str]
    """(provider kind, answer kind): `response_<case>.<provider>.json` -> `response_<case>.<answer>.json`."""
    stream_kinds: tuple[str, str]
    """(provider stream file suffix, answer kind): `stream_<case>.<suffix>` -> `stream_<case>.<kind>[.usage].sse`."""
    read_stream: Callable[[Path], list[SSEEvent]] = sse_events
    """The decoder kind: SSE, or AWS event-stream frames built from a `.jsonl` fixture."""
    valid_answer: Callable[[dict], None] = _no_check
    valid_event: Callable[[SSEEvent], None] = _no_check
    openai_extensions: frozenset[str] = frozenset()
    """Keys its OpenAI answers and chunks carry that the openai SDK's models don't declare, on purpose."""
    normalise: Callable[[list[dict]], list[dict]] = _unchanged
    """Applied to translated answers and chunks before comparing them with the goldens (generated ids)."""
    malformed_event: str | None = None
    """The event name a malformed payload is fed under (None for providers whose events are unnamed)."""
    mid_stream_error: MidStreamError | None = None
    rules: FieldRules | None = None
    stop_reasons: StopReasons | None = None

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Golden({self.name!r})"

    def translate(self, body: dict) -> dict:
        return self.translator.chat_request(body, self.model, default_max_tokens=DEFAULT_MAX_TOKENS)

    def request_pair(self, case: str) -> tuple[str, str]:
        client, provider = self.request_kinds
        return f"request_{case}.{client}.json", f"request_{case}.{provider}.json"

    def response_pair(self, case: str) -> tuple[str, str]:
        provider, answer = self.response_kinds
        return f"response_{case}.{provider}.json", f"response_{case}.{answer}.json"

    def stream_pair(self, case: str, include_usage: bool) -> tuple[str, str]:
        provider, answer = self.stream_kinds
        return f"stream_{case}.{provider}", f"stream_{case}.{answer}{'.usage' if include_usage else ''}.sse"

    def request_cases(self) -> list[str]:
        return self.fixtures.cases("request_", f".{self.request_kinds[1]}.json")

    def response_cases(self) -> list[str]:
        return self.fixtures.cases("response_", f".{self.response_kinds[0]}.json")

    def stream_cases(self) -> list[tuple[str, bool]]:
        """(case, include_usage) for every answer-side stream file whose provider stream is in the folder."""
        cases = []
        for path in sorted(self.fixtures.folder.glob(f"stream_*.{self.stream_kinds[1]}*.sse")):
            case, _, rest = path.name.removeprefix("stream_").partition(f".{self.stream_kinds[1]}")
            if (self.fixtures.folder / self.stream_pair(case, False)[0]).exists():
                cases.append((case, rest == ".usage.sse"))
        return cases

    def pair_files(self) -> set[str]:
        """Every pair file this golden reads."""
        names = {name for case in self.request_cases() for name in self.request_pair(case)}
        names |= {name for case in self.response_cases() for name in self.response_pair(case)}
        return names | {name for case, usage in self.stream_cases() for name in self.stream_pair(case, usage)}

    def provider_events(self, case: str) -> list[SSEEvent]:
        return self.read_stream(self.fixtures.folder / self.stream_pair(case, False)[0])

    def run_stream(self, case: str, include_usage: bool) -> tuple[ChatStream, list[dict]]:
        stream = self.translator.chat_stream(self.model, CREATED, include_usage)
        return stream, feed_stream(stream, self.provider_events(case))

    def expected_chunks(self, case: str, include_usage: bool) -> list[dict]:
        return [json.loads(event.data) for event in self.fixtures.events(self.stream_pair(case, include_usage)[1])]


def _folder(name: str) -> FixtureFolder:
    return FixtureFolder(FIXTURES / name)


def _patch(**fields: object) -> Callable[[dict], None]:
    return lambda request: request.update(fields)


def _first_message(**fields: object) -> Callable[[dict], None]:
    return lambda request: request["messages"][0].update(fields)


def _anthropic_tool_choice(request: dict) -> tuple[object, list[str]]:
    return request.get("tool_choice"), [tool["name"] for tool in request["tools"]]


def _converse_tool_choice(request: dict) -> tuple[object, list[str]]:
    config = request.get("toolConfig") or {}
    return config.get("toolChoice"), [tool["toolSpec"]["name"] for tool in config.get("tools", ())]


def _cohere_tool_choice(request: dict) -> tuple[object, list[str]]:
    return request.get("tool_choice"), [tool["function"]["name"] for tool in request["tools"]]


def _gemini_tool_choice(request: dict) -> tuple[object, list[str]]:
    declarations = request["tools"][0]["functionDeclarations"]
    return request.get("toolConfig"), [declaration["name"] for declaration in declarations]


def _with_gemini_finish_reason(answer: dict, reason: str) -> dict:
    return {**answer, "candidates": [{**answer["candidates"][0], "finishReason": reason}]}


_ANTHROPIC_FIXTURES = _folder("anthropic")
_BEDROCK_FIXTURES = _folder("bedrock")
_GEMINI_FIXTURES = _folder("gemini")
_ANTHROPIC_RULES = FieldRules(anthropic.FIELDS, _ANTHROPIC_FIXTURES, _anthropic_tool_choice)
_MISPLACED_CACHE_CONTROL = _first_message(cache_control={"type": "ephemeral"})  # belongs on a block
_ANTHROPIC_STREAM_END = SSEEvent("message_stop", b'{"type":"message_stop"}')

OPENAI = Golden(
    name="openai", translator=openai.OpenAITranslator(), fixtures=_folder("openai"), model="gpt-4o-mini-2024-07-18",
    usage_of=openai.usage_of, valid_request=lambda request, stream: assert_valid_openai_request(request),
    broken_requests={"unknown_message_key": _first_message(tool_plan="x")},
    request_kinds=("client", "upstream"), response_kinds=("openai", "openai"), stream_kinds=("upstream.sse", "client"),
    valid_answer=ChatCompletion.model_validate,
    mid_stream_error=MidStreamError("error_mid_stream", SSEEvent(None, b"[DONE]"), None))

AZURE_OPENAI = Golden(
    name="azure-openai", translator=azure_openai.AzureOpenAITranslator(), fixtures=_folder("azure"),
    model="gpt-4o-2024-08-06", usage_of=azure_openai.usage_of,
    valid_request=lambda request, stream: assert_valid_azure_request(request),
    broken_requests={"unknown_message_key": _first_message(tool_plan="x")},
    request_kinds=("client", "azure"), response_kinds=("azure", "openai"), stream_kinds=("azure.sse", "openai"),
    openai_extensions=AZURE_EXTENSIONS)

ANTHROPIC = Golden(
    name="anthropic", translator=anthropic.AnthropicTranslator(), fixtures=_ANTHROPIC_FIXTURES, model=ANTHROPIC_MODEL,
    usage_of=anthropic.usage_of, valid_request=lambda request, stream: assert_valid_anthropic_request(request),
    broken_requests={"misplaced_cache_control": _MISPLACED_CACHE_CONTROL},
    request_kinds=("openai", "anthropic"), response_kinds=("anthropic", "openai"),
    stream_kinds=("anthropic.sse", "openai"),
    valid_answer=anthropic_types.Message.model_validate, valid_event=_valid_anthropic_event,
    openai_extensions=OPENAI_EXTENSIONS, malformed_event="content_block_delta",
    mid_stream_error=MidStreamError("error_mid_stream", _ANTHROPIC_STREAM_END, 10),
    rules=_ANTHROPIC_RULES,
    stop_reasons=StopReasons("stop_reasons.json", frozenset(typing.get_args(anthropic_types.StopReason)), "text",
                             lambda answer, reason: {**answer, "stop_reason": reason}))

VERTEX_ANTHROPIC = Golden(
    name="vertex-anthropic", translator=vertex_anthropic.VertexAnthropicTranslator(),
    fixtures=_folder("vertex_anthropic"), model=VERTEX_ANTHROPIC_MODEL, usage_of=vertex_anthropic.usage_of,
    valid_request=lambda request, stream: assert_valid_vertex_anthropic_request(request),
    broken_requests={"misplaced_cache_control": _MISPLACED_CACHE_CONTROL,
                     "model_in_the_body": _patch(model=VERTEX_ANTHROPIC_MODEL)},
    request_kinds=("openai", "vertex"), response_kinds=("vertex", "openai"), stream_kinds=("vertex.sse", "openai"),
    valid_answer=anthropic_types.Message.model_validate, valid_event=_valid_anthropic_event,
    openai_extensions=OPENAI_EXTENSIONS, malformed_event="content_block_delta", rules=_ANTHROPIC_RULES)

BEDROCK_CONVERSE = Golden(
    name="bedrock-converse", translator=bedrock_converse.BedrockConverseTranslator(), fixtures=_BEDROCK_FIXTURES,
    model=CONVERSE_MODEL, usage_of=bedrock_converse.usage_of,
    valid_request=lambda request, stream: assert_valid_converse_request(request, stream),
    broken_requests={
        "unknown_key": _patch(messages=[{"role": "user", "content": [
            {"text": "hi", "cache_control": {"type": "ephemeral"}}]}]),
        "two_union_members": _patch(messages=[{"role": "user", "content": [
            {"text": "hi", "cachePoint": {"type": "default"}}]}]),
        "bad_base64": _patch(messages=[{"role": "user", "content": [
            {"image": {"format": "png", "source": {"bytes": "not base64!"}}}]}]),
        "temperature_range": _patch(inferenceConfig={"temperature": 1.5}),
        "tool_use_id_pattern": _patch(messages=[{"role": "user", "content": [
            {"toolUse": {"toolUseId": "a b", "name": "f", "input": {}}}]}]),
    },
    request_kinds=("openai", "converse"), response_kinds=("converse", "openai"),
    stream_kinds=("converse.jsonl", "openai"), read_stream=jsonl_eventstream,
    valid_answer=_valid_converse_answer, valid_event=_valid_converse_event,
    openai_extensions=OPENAI_EXTENSIONS, normalise=masked_ids, malformed_event="contentBlockDelta",
    mid_stream_error=MidStreamError("exception_mid_stream", SSEEvent("messageStop", b'{"stopReason":"end_turn"}'),
                                    None),
    rules=FieldRules(bedrock_converse.FIELDS, _BEDROCK_FIXTURES, _converse_tool_choice),
    stop_reasons=StopReasons(
        "stop_reasons.json", frozenset(RUNTIME.operation_model("Converse").output_shape.members["stopReason"].enum),
        "text", lambda answer, reason: {**answer, "stopReason": reason}))

BEDROCK_ANTHROPIC = Golden(
    name="bedrock-anthropic", translator=bedrock_anthropic.BedrockAnthropicTranslator(), fixtures=_BEDROCK_FIXTURES,
    model=INVOKE_MODEL, usage_of=bedrock_anthropic.usage_of,
    valid_request=lambda request, stream: assert_valid_invoke_body(request),
    broken_requests={"misplaced_cache_control": _MISPLACED_CACHE_CONTROL, "stream_in_the_body": _patch(stream=True)},
    request_kinds=("openai", "invoke"), response_kinds=("invoke", "openai"), stream_kinds=("invoke.jsonl", "openai"),
    read_stream=jsonl_eventstream, valid_event=_valid_invoke_event,
    openai_extensions=OPENAI_EXTENSIONS, malformed_event="chunk",
    mid_stream_error=MidStreamError("invoke_throttled", eventstream_events(invoke_chunk_frame(
        b'{"type":"message_stop"}'))[0], 21),
    rules=FieldRules(bedrock_anthropic.FIELDS, _ANTHROPIC_FIXTURES, _anthropic_tool_choice,
                     own_messages={"image_in_system": "Bedrock does not fetch image URLs"}))

COHERE = Golden(
    name="cohere", translator=cohere.CohereTranslator(), fixtures=_folder("cohere"), model=COHERE_MODEL,
    usage_of=cohere.usage_of, valid_request=lambda request, stream: assert_valid_cohere_request(request),
    broken_requests={
        "unknown_message_key": _patch(messages=[{"role": "user", "content": "hi", "tool_plan": "x"}]),
        "unknown_enum_value": _patch(tool_choice="ANY"),
        "anthropic_thinking": _patch(thinking={"type": "enabled", "budget_tokens": 10}),
        "json_schema_without_schema": _patch(response_format={"type": "json_schema"}),
        "openai_name_top_p": _patch(top_p=0.5),
    },
    request_kinds=("openai", "cohere"), response_kinds=("cohere", "openai"), stream_kinds=("cohere.sse", "openai"),
    valid_answer=_valid_cohere_answer, valid_event=_valid_cohere_event,
    openai_extensions=OPENAI_EXTENSIONS, malformed_event="content-delta",
    mid_stream_error=MidStreamError("error_mid_stream", SSEEvent(
        "message-end", b'{"type":"message-end","delta":{"finish_reason":"COMPLETE"}}'), 3),
    rules=FieldRules(cohere.FIELDS, _folder("cohere"), _cohere_tool_choice,
                     refusal_body={**BASE_BODY, "tools": TWO_TOOLS}),
    stop_reasons=StopReasons(
        "finish_reasons.json",
        frozenset(typing.get_args(next(arg for arg in typing.get_args(ChatFinishReason)
                                       if typing.get_origin(arg) is typing.Literal))),
        "text", lambda answer, reason: {**answer, "finish_reason": reason}))

GEMINI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}]

GEMINI = Golden(
    name="gemini", translator=gemini.GeminiTranslator(), fixtures=_GEMINI_FIXTURES, model=GEMINI_MODEL,
    usage_of=gemini.usage_of, valid_request=lambda request, stream: assert_valid_gemini_request(request),
    broken_requests={
        "snake_case_part_key": lambda request: request["contents"][0].update(
            parts=[{"text": "x", "thought_signature": "AAAA"}]),
        "unknown_nested_key": lambda request: request["contents"][0]["parts"][0].update(
            functionCall={"name": "f", "arguments": {}}),
        "misplaced_system_instruction": lambda request: request.setdefault("generationConfig", {}).update(
            systemInstruction={"parts": [{"text": "x"}]}),
        "snake_case_config_key": lambda request: request.setdefault("generationConfig", {}).update(
            max_output_tokens=5),
        "snake_case_top_level_key": _patch(generation_config={"temperature": 0.5}),
    },
    request_kinds=("openai", "gemini"), response_kinds=("gemini", "openai"), stream_kinds=("gemini.sse", "openai"),
    valid_answer=_valid_gemini_answer, valid_event=_valid_gemini_event, openai_extensions=OPENAI_EXTENSIONS,
    mid_stream_error=MidStreamError("error_mid_stream", SSEEvent(
        None, orjson.dumps(_GEMINI_FIXTURES.load("response_text.gemini.json"))), 10),
    rules=FieldRules(gemini.FIELDS, _GEMINI_FIXTURES, _gemini_tool_choice, tools=GEMINI_TOOLS),
    stop_reasons=StopReasons("finish_reasons.json", frozenset(genai_types.FinishReason.__members__), "text",
                             _with_gemini_finish_reason))

GOLDENS = (OPENAI, AZURE_OPENAI, ANTHROPIC, VERTEX_ANTHROPIC, BEDROCK_CONVERSE, BEDROCK_ANTHROPIC, COHERE, GEMINI)
