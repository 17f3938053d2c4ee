"""OpenAI chat completions and embeddings <-> Google Gemini, on AI Studio (`gemini`) and Vertex AI (`vertex-gemini`).

AI Studio: `POST /v1beta/models/{model}:generateContent` (`:streamGenerateContent?alt=sse`), key in `x-goog-api-key`.
Vertex: `POST /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent` (and the
stream), OAuth bearer from `auth/gcp.py`. Both take and answer the same JSON, so one translator serves both; only
paths, credentials and embeddings differ.

Every top-level field of an OpenAI chat request is listed in `FIELDS` with what this translator does with it, and a
field that is not listed is refused. For a `refused` field the values in `_HARMLESS` (OpenAI's own defaults, such as
`parallel_tool_calls: true`) mean "not asked for" and are accepted.

Things worth knowing before changing this file:

- System and developer messages, wherever they are in the conversation, become `systemInstruction` parts in order.
  Consecutive messages of one role are merged into one turn; `tool` messages become `functionResponse` parts of a
  user turn, so the results of parallel calls share one turn, as Gemini wants.
- Gemini function calls have no ids, and a function response names the function instead. Ids are made up from the
  response: `call_<k>_<12 hex digits of sha256(responseId, candidate, k, name, args)>`, so the same answer gets the
  same ids streamed or not. A tool message's function name is found through the earlier assistant `tool_calls` with
  its `tool_call_id`. A tool result that parses as a JSON object is sent as the `response` itself, anything else as
  `{"output": <text>}` (the key Gemini documents for a function's output).
- Thinking models put an opaque `thoughtSignature` on function calls, and Gemini 3 refuses a conversation that
  replays a call without it. OpenAI clients only echo the call id, so the signature travels inside it:
  `call_<k>_<digest>_ts_<signature in unpadded base64url>`, and is put back on the `functionCall` part. A replayed
  model turn whose calls carry no signature (history from another provider) gets Google's documented
  `skip_thought_signature_validator` value on its first call, for `gemini-3*` models only.
- Tool parameters and `json_schema` response formats are JSON Schema; Gemini takes an OpenAPI-style subset
  (`_schema`). Kept: type (a `[T, "null"]` type or `anyOf` with null becomes `nullable`), properties, required,
  items, enum (strings), anyOf (and oneOf, whose exclusivity is lost), title, description, default, example(s),
  min/max Items, Length, Properties, minimum, maximum, pattern, and the formats Gemini accepts. Local `$ref`s are
  inlined and a one-member `allOf` merged. Kept as text in `description` (the model reads it, the API does not
  enforce it): other formats, non-string enum/const, exclusiveMinimum/Maximum, multipleOf, uniqueItems. Dropped:
  annotations ($schema, $id, $comment, readOnly, writeOnly, deprecated), `additionalProperties` and
  `unevaluatedProperties` (Gemini objects have only the listed properties), and keys that are not JSON Schema
  keywords (vendor `x-` keys). Refused: recursive `$ref`s, non-local `$ref`s, `allOf` with several members, `not`,
  if/then/else, tuple `items`/`prefixItems`, patternProperties, propertyNames, dependent*, contains. Response
  schemas also get `propertyOrdering` (as google-genai adds it), or Gemini writes the JSON keys alphabetically. A
  function without parameters is declared without `parameters`.
- Images, audio and files: data URLs become `inlineData`; http(s) and gs:// image URLs become `fileData`, whose MIME
  type (required by Vertex) comes from the URL's extension, so a URL without one is refused.
- Usage: `promptTokenCount` (plus `toolUsePromptTokenCount`) is OpenAI's `prompt_tokens`, of which
  `cachedContentTokenCount` are cached; `candidatesTokenCount + thoughtsTokenCount` is `completion_tokens`, of which
  `thoughtsTokenCount` are reasoning tokens (OpenAI counts reasoning as completion, Gemini reports it apart).
- `max_completion_tokens` maps to `maxOutputTokens` as is: both limits include thinking tokens.
- `logprobs` -> `generationConfig.responseLogprobs`, `top_logprobs` -> `logprobs` (the alternatives per token, 1..20
  on both APIs; 0 is not sent). A candidate's `logprobsResult` (`chosenCandidates[i]` with `topCandidates[i]`, one
  per decoding step) becomes the choice's OpenAI `logprobs.content`, `bytes` being the token's UTF-8; streamed, each
  event's result rides on the chunk with that event's text.
- `reasoning_effort` only steers, so `xhigh` and `max` get `high`'s budget (the largest every Gemini 2.5 model takes)
  instead of a refusal.
- `reasoning_content` and `thinking_blocks` on past assistant messages are left out (`common.
  DROPPED_ASSISTANT_FIELDS`); Gemini's own thought signatures travel in the tool call ids (above).
- `provider_options["gemini"]` and `provider_options["vertex-gemini"]` are merged into the request after translation
  (`common.with_provider_options`; e.g. `safetySettings`, `cachedContent`, `labels`, `generationConfig.topK`). The
  translator serves both schemas without knowing which one a backend is, so both objects reach both APIs (AI Studio
  refuses Vertex-only keys such as `labels` itself). `generationConfig.maxOutputTokens` and `candidateCount` stay
  the gateway's (the limiter reserved for them).
- Embeddings differ by API: AI Studio's `batchEmbedContents` and Vertex's `predict`, so `embeddings_request` needs
  the backend to know which one it writes for. Token counts: Vertex reports `statistics.token_count` per text;
  AI Studio's documented answer is `embeddings` only, and newer answers add `usageMetadata.promptTokenCount`
  (google-genai reads it), which is used when present. Without either the usage is 0: the translator never sees the
  input, so the gateway's documented estimate (`limits/estimate.py`, characters / `chars_per_token`) is what the
  attempt stage settles limits with.
- A stream has no end marker: the last event carries `finishReason` (and the final usage), and the connection ends.
  `ChatStream.finish` therefore decides whether the stream was complete, and sends the usage chunk.
"""

from __future__ import annotations

import hashlib
import mimetypes
import re
from urllib.parse import quote, urlsplit

import orjson

from ..config.models import Backend
from ..errors import BadRequest, status_error_type
from ..json_types import JsonObject
from .common import (
    DROPPED,
    MAPPED,
    REFUSED,
    error_dict,
    function_tools,
    refuse_unsupported,
    requested_max_tokens,
    split_data_url,
    with_provider_options,
)
from .stream import ChatStream as BaseChatStream
from .translator import Translator

SCHEMAS = ("gemini", "vertex-gemini")
AI_STUDIO_VERSION = "v1beta"
VERTEX_VERSION = "v1"

FIELDS: dict[str, str] = {
    "messages": MAPPED,  # system/developer -> systemInstruction; user/assistant/tool -> contents; an assistant's
    # reasoning_content / thinking_blocks are dropped (common.DROPPED_ASSISTANT_FIELDS)
    "model": MAPPED,  # the backend's model, in the path
    "max_completion_tokens": MAPPED,  # -> generationConfig.maxOutputTokens (preferred over max_tokens)
    "max_tokens": MAPPED,  # -> maxOutputTokens
    "temperature": MAPPED,  # same 0..2 range
    "top_p": MAPPED,  # -> topP
    "stop": MAPPED,  # -> stopSequences
    "stream": MAPPED,  # -> :streamGenerateContent?alt=sse
    "stream_options": DROPPED,  # include_usage is honoured by ChatStream; Gemini always reports usage
    "n": MAPPED,  # -> candidateCount
    "seed": MAPPED,
    "presence_penalty": MAPPED,  # -> presencePenalty
    "frequency_penalty": MAPPED,  # -> frequencyPenalty
    "response_format": MAPPED,  # json_object -> responseMimeType; json_schema -> + responseSchema
    "logprobs": MAPPED,  # -> responseLogprobs; logprobsResult -> choices[].logprobs
    "top_logprobs": MAPPED,  # -> logprobs (needs logprobs: true)
    "provider_options": MAPPED,  # its "gemini" and "vertex-gemini" objects are merged into the request
    "reasoning_effort": MAPPED,  # -> thinkingConfig {thinkingBudget, includeThoughts}
    "tools": MAPPED,  # function tools -> functionDeclarations; custom tools refused
    "tool_choice": MAPPED,  # -> toolConfig.functionCallingConfig
    "user": DROPPED,  # an abuse-monitoring id; no Gemini field, no effect on the answer
    "safety_identifier": DROPPED,  # the same, newer name
    "store": DROPPED,  # OpenAI-side storage of the completion
    "metadata": DROPPED,  # OpenAI-side tags of stored completions
    "service_tier": DROPPED,  # OpenAI's tiers have no Gemini counterpart
    "prediction": DROPPED,  # a latency optimisation; the answer is the same without it
    "prompt_cache_key": DROPPED,  # OpenAI cache routing hint; Gemini caches implicitly
    "prompt_cache_retention": DROPPED,
    "prompt_cache_options": DROPPED,
    "parallel_tool_calls": REFUSED,  # Gemini can't be told to make at most one call; `true` (the default) is fine
    "logit_bias": REFUSED,
    "audio": REFUSED,
    "modalities": REFUSED,  # text only
    "web_search_options": REFUSED,
    "functions": REFUSED,  # deprecated: use tools
    "function_call": REFUSED,  # deprecated: use tool_choice
    "verbosity": REFUSED,  # no Gemini equivalent, and it changes the answer
    "moderation": REFUSED,  # OpenAI-side moderation can't run on a Gemini backend
}

_HARMLESS: dict[str, tuple[object, ...]] = {
    "parallel_tool_calls": (True,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "verbosity": ("medium",),
}

_REFUSAL_REASONS = {
    "parallel_tool_calls": "'parallel_tool_calls: false' is not supported on gemini backends: Gemini may always "
                           "call several functions at once",
    "functions": "'functions' is deprecated and not supported on gemini backends; use 'tools'",
    "function_call": "'function_call' is deprecated and not supported on gemini backends; use 'tool_choice'",
}

EMBEDDING_FIELDS: dict[str, str] = {
    "input": MAPPED,  # strings only; token arrays refused
    "model": MAPPED,
    "dimensions": MAPPED,  # -> outputDimensionality
    "encoding_format": MAPPED,  # floats here; base64 packed by the attempt stage
    "user": DROPPED,
}

# thinkingBudget per reasoning_effort (Gemini 2.5 budgets: Flash 0..24576, Pro 128..32768; Gemini 3 accepts them
# too). "xhigh" and "max" get high's: a budget above 24576 fails on Flash models.
_THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576,
                     "max": 24576}
_MAX_TOP_LOGPROBS = 20
_RESERVED_OPTIONS = ("generationConfig.maxOutputTokens", "generationConfig.candidateCount")

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}
"""Anything else (OTHER, MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, ...) ends the answer as `stop`; a
candidate with function calls that stopped normally ends as `tool_calls`."""

_STATUS_BY_ERROR = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

_SIGNATURE_SENTINEL = "skip_thought_signature_validator"
_CALL_ID = re.compile(r"^call_\d+_[0-9a-f]{12}_ts_([A-Za-z0-9_-]+)$")
_AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}
_FILE_URL_SCHEMES = ("https://", "http://", "gs://")

# JSON Schema keywords -> Gemini Schema, see the module docstring.
_SCHEMA_COPIED = ("title", "default", "example", "pattern", "minimum", "maximum", "minItems",
                  "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "nullable",
                  "propertyOrdering")
_SCHEMA_HINTED = ("exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems")
_SCHEMA_REFUSED = ("not", "if", "then", "else", "prefixItems", "patternProperties", "propertyNames",
                   "dependentRequired", "dependentSchemas", "dependencies", "contains", "minContains", "maxContains",
                   "unevaluatedItems", "additionalItems", "$dynamicRef", "$recursiveRef")
_SCHEMA_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
                 "array": "ARRAY", "object": "OBJECT", "null": "NULL"}
_SCHEMA_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}
_MAX_SCHEMA_DEPTH = 32


def chat_path(model: str, stream: bool, backend: Backend | None = None) -> str:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{_model_path(model, backend)}:{method}"


def embeddings_path(model: str, backend: Backend | None = None) -> str:
    return f"{_model_path(model, backend)}:{'predict' if _is_vertex(backend) else 'batchEmbedContents'}"


def _is_vertex(backend: Backend | None) -> bool:
    return backend is not None and backend.schema_ == "vertex-gemini"


def _model_path(model: str, backend: Backend | None) -> str:
    name = quote(model.removeprefix("models/"), safe="@")
    if not _is_vertex(backend):
        return f"/{AI_STUDIO_VERSION}/models/{name}"
    assert backend is not None and backend.gcp is not None  # the config requires project and location for vertex
    return (f"/{VERTEX_VERSION}/projects/{quote(backend.gcp.project or '', safe='')}/locations/"
            f"{quote(backend.gcp.location or '', safe='')}/publishers/google/models/{name}")


# --- request -------------------------------------------------------------------------------------------------------


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """Translate an OpenAI chat request into a Gemini GenerateContentRequest for `model`.

    Gemini needs no max_tokens (it defaults to the model's limit), so `default_max_tokens` is not used.
    """
    refuse_unsupported(body, FIELDS, _HARMLESS, _REFUSAL_REASONS, "gemini")
    system, contents = _conversation(body.get("messages"), model)
    request: JsonObject = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    tools = _tools(body.get("tools"))
    if tools:
        declarations, mode = _tool_choice(body.get("tool_choice"), tools)
        request["tools"] = [{"functionDeclarations": declarations}]
        if mode is not None:
            request["toolConfig"] = {"functionCallingConfig": mode}
    config = _generation_config(body, default_max_tokens)
    if config:
        request["generationConfig"] = config
    return with_provider_options(request, body, SCHEMAS, _RESERVED_OPTIONS)


def _generation_config(body: JsonObject, default_max_tokens: int) -> JsonObject:
    """Without the client's output limit, `maxOutputTokens` is `default_max_tokens` (Gemini's own default is the
    model's limit, more than the limiter reserved); thinking counts against it."""
    config: JsonObject = {}
    for field, key in (("temperature", "temperature"), ("top_p", "topP"), ("presence_penalty", "presencePenalty"),
                       ("frequency_penalty", "frequencyPenalty")):
        value = body.get(field)
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise BadRequest(f"'{field}' must be a number", param=field)
            config[key] = value
    n = body.get("n")
    if n is not None and n != 1:
        config["candidateCount"] = _positive_int(body, "n")
    max_tokens, _ = requested_max_tokens(body)
    config["maxOutputTokens"] = max_tokens if max_tokens is not None else default_max_tokens
    stop = body.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
            raise BadRequest("'stop' must be a string or an array of strings", param="stop")
        config["stopSequences"] = list(stops)
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise BadRequest("'seed' must be an integer", param="seed")
        config["seed"] = seed
    config.update(_response_format(body.get("response_format")))
    config.update(_logprobs(body))
    thinking = _thinking(body.get("reasoning_effort"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _positive_int(body: JsonObject, field: str) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"'{field}' must be a positive integer", param=field)
    return value


def _logprobs(body: JsonObject) -> JsonObject:
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise BadRequest("'logprobs' must be a boolean", param="logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= _MAX_TOP_LOGPROBS):
        raise BadRequest(f"'top_logprobs' must be an integer from 0 to {_MAX_TOP_LOGPROBS}", param="top_logprobs")
    if top and not wanted:
        raise BadRequest("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    if not wanted:
        return {}
    return {"responseLogprobs": True, "logprobs": top} if top else {"responseLogprobs": True}


def _thinking(effort: object) -> JsonObject | None:
    if effort is None:
        return None
    budget = _THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None:
        raise BadRequest(f"reasoning_effort {effort!r} is not supported on gemini backends; "
                         "use none, minimal, low, medium, high, xhigh or max", param="reasoning_effort")
    if budget == 0:
        return {"thinkingBudget": 0}
    return {"thinkingBudget": budget, "includeThoughts": True}


def _response_format(value: object) -> JsonObject:
    if value is None:
        return {}
    given: JsonObject = value if isinstance(value, dict) else {}
    kind = given.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = given.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest("response_format.json_schema must be an object", param="response_format")
        config: JsonObject = {"responseMimeType": "application/json"}
        schema = spec.get("schema")
        if schema is not None:
            config["responseSchema"] = _schema(schema, schema, "response_format.json_schema.schema", ordered=True)
        return config
    raise BadRequest(f"response_format type {kind!r} is not supported on gemini backends; "
                     "use text, json_object or json_schema", param="response_format")


# --- conversation --------------------------------------------------------------------------------------------------


def _conversation(messages: object, model: str) -> tuple[list[JsonObject], list[JsonObject]]:
    """OpenAI messages -> (systemInstruction parts, contents with merged consecutive roles)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    names_by_call: dict[str, str] = {}
    system: list[JsonObject] = []
    contents: list[JsonObject] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where))
            continue
        if role == "user":
            gemini_role, parts = "user", _user_parts(message.get("content"), where)
        elif role == "assistant":
            gemini_role, parts = "model", _assistant_parts(message, where, names_by_call, model)
        elif role == "tool":
            gemini_role, parts = "user", [_function_response(message, where, names_by_call)]
        elif role == "function":
            raise BadRequest(f"{where}: 'function' messages are deprecated and not supported on gemini backends; "
                             "use tool messages", param=where)
        else:
            raise BadRequest(f"{where} has an unknown role {role!r}", param=f"{where}.role")
        # `name` on a message has no Gemini equivalent and is left out.
        if not parts:
            continue
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    if not contents:
        raise BadRequest("'messages' holds no user or assistant content for gemini backends", param="messages")
    return system, contents


def _text_parts(content: object, where: str, kinds: tuple[str, ...] = ("text",)) -> list[JsonObject]:
    """Text-only content (system, assistant, tool): a string or text parts (an assistant's past `refusal` too)."""
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    parts = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise BadRequest(f"{here}: content part type {kind!r} is not supported here on gemini backends",
                             param=here)
        text = part.get(kind)
        if not isinstance(text, str):
            raise BadRequest(f"{here}.{kind} must be a string", param=f"{here}.{kind}")
        if text:
            parts.append({"text": text})
    return parts


def _user_parts(content: object, where: str) -> list[JsonObject]:
    if not isinstance(content, list):
        return _text_parts(content, where)
    parts = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.extend(_text_parts([part], where))
        elif kind == "image_url":
            parts.append(_image_part(part, here))
        elif kind == "input_audio":
            parts.append(_audio_part(part, here))
        elif kind == "file":
            parts.append(_file_part(part, here))
        else:
            raise BadRequest(f"{here}: content part type {kind!r} is not supported on gemini backends", param=here)
        # cache_control / prompt_cache_breakpoint: Gemini caches implicitly, there is nothing to mark.
    return parts


def _image_part(part: JsonObject, where: str) -> JsonObject:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequest(f"{where}: image_url.url must be a string", param=where)
    if url.startswith("data:"):
        return _inline_data(url, where)
    if url.startswith(_FILE_URL_SCHEMES):
        # image_url.detail has no Gemini equivalent and is left out.
        return {"fileData": {"mimeType": _mime_type_of(url, where), "fileUri": url}}
    raise BadRequest(f"{where}: an image URL must be an http(s) or gs:// URL or a base64 data URL", param=where)


def _inline_data(url: str, where: str, fallback_type: str | None = None) -> JsonObject:
    mime_type, data = split_data_url(url) or ("", "")
    mime_type = mime_type or (fallback_type or "")
    if not data or not mime_type:
        raise BadRequest(f"{where}: a data URL must look like data:image/png;base64,<data>", param=where)
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _mime_type_of(url: str, where: str) -> str:
    """Gemini wants the MIME type of a file URL (Vertex requires it); it comes from the URL's extension."""
    guessed, _ = mimetypes.guess_type(urlsplit(url).path)
    if guessed is None:
        raise BadRequest(f"{where}: can't tell the file type of {url[:100]!r} from its extension; gemini backends "
                         "need it: use a URL ending in .png, .jpg, .webp, .pdf ... or a base64 data URL", param=where)
    return guessed


def _audio_part(part: JsonObject, where: str) -> JsonObject:
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
        raise BadRequest(f"{where}: input_audio needs base64 data", param=where)
    mime_type = _AUDIO_FORMATS.get(str(audio.get("format")))
    if mime_type is None:
        raise BadRequest(f"{where}: input_audio.format must be one of {', '.join(_AUDIO_FORMATS)}", param=where)
    return {"inlineData": {"mimeType": mime_type, "data": audio["data"]}}


def _file_part(part: JsonObject, where: str) -> JsonObject:
    file = part.get("file")
    if not isinstance(file, dict):
        raise BadRequest(f"{where}: file must be an object", param=where)
    if file.get("file_id") is not None:
        raise BadRequest(f"{where}: OpenAI file ids can't be read by gemini backends; send file_data",
                         param=f"{where}.file.file_id")
    data = file.get("file_data")
    if not isinstance(data, str) or not data:
        raise BadRequest(f"{where}: file.file_data is required", param=where)
    if data.startswith("data:"):
        return _inline_data(data, where)
    filename = file.get("filename")
    guessed = mimetypes.guess_type(filename)[0] if isinstance(filename, str) else None
    if guessed is None:
        raise BadRequest(f"{where}: send file_data as a data URL (data:application/pdf;base64,...) or give a "
                         "filename with an extension", param=where)
    return {"inlineData": {"mimeType": guessed, "data": data}}


def _assistant_parts(message: JsonObject, where: str, names_by_call: dict[str, str], model: str) -> list[JsonObject]:
    for field in ("audio", "function_call"):
        if message.get(field) is not None:
            raise BadRequest(f"{where}.{field} is not supported on gemini backends", param=f"{where}.{field}")
    parts = _text_parts(message.get("content"), where, ("text", "refusal"))
    if message.get("refusal"):
        parts.append({"text": message["refusal"]})
    calls = [_function_call(call, f"{where}.tool_calls[{k}]", names_by_call)
             for k, call in enumerate(message.get("tool_calls") or ())]
    if calls and not any("thoughtSignature" in call for call in calls) and _validates_signatures(model):
        calls[0]["thoughtSignature"] = _SIGNATURE_SENTINEL
    return parts + calls


def _validates_signatures(model: str) -> bool:
    return model.rsplit("/", 1)[-1].startswith("gemini-3")


def _function_call(call: object, where: str, names_by_call: dict[str, str]) -> JsonObject:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise BadRequest(f"{where}: only function tool calls are supported on gemini backends", param=where)
    function = call.get("function") or {}
    call_id, name = call.get("id"), function.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise BadRequest(f"{where} needs an id and a function name", param=where)
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise BadRequest(f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments")
    names_by_call[call_id] = name
    part: JsonObject = {"functionCall": {"name": name, "args": arguments}}
    signature = _signature_from_id(call_id)
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _function_response(message: JsonObject, where: str, names_by_call: dict[str, str]) -> JsonObject:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}: a tool message needs a tool_call_id", param=f"{where}.tool_call_id")
    name = names_by_call.get(call_id)
    if name is None:
        raise BadRequest(f"{where}: tool_call_id {call_id!r} matches no earlier assistant tool call; gemini backends "
                         "need the function's name", param=f"{where}.tool_call_id")
    text = "".join(part["text"] for part in _text_parts(message.get("content"), where))
    try:
        result = orjson.loads(text)
    except orjson.JSONDecodeError:
        result = None
    response = result if isinstance(result, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


# --- tools ---------------------------------------------------------------------------------------------------------


def _tools(tools: object) -> list[JsonObject]:
    declarations = []
    for where, _, function in function_tools(tools, "gemini"):
        declaration: JsonObject = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if isinstance(parameters, dict) and (parameters.get("properties") or parameters.get("type") != "object"):
            declaration["parameters"] = _schema(parameters, parameters, f"{where}.function.parameters")
        # A function without parameters is declared without `parameters` (Gemini refuses an empty OBJECT).
        # `strict` has no Gemini counterpart: declared parameters are the only ones Gemini fills in.
        declarations.append(declaration)
    return declarations


def _tool_choice(choice: object, declarations: list[JsonObject]) -> tuple[list[JsonObject], JsonObject | None]:
    """(function declarations, functionCallingConfig); `allowed_tools` in auto mode narrows the declarations."""
    names = [declaration["name"] for declaration in declarations]
    if choice is None:
        return declarations, None
    if choice == "auto":
        return declarations, {"mode": "AUTO"}
    if choice == "none":
        return declarations, {"mode": "NONE"}
    if choice == "required":
        return declarations, {"mode": "ANY"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
        return declarations, {"mode": "ANY", "allowedFunctionNames": [name]}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        chosen = []
        for entry in allowed.get("tools") or ():
            if not isinstance(entry, dict) or entry.get("type") != "function":
                raise BadRequest("tool_choice.allowed_tools may only name function tools on gemini backends",
                                 param="tool_choice")
            chosen.append((entry.get("function") or {}).get("name"))
        chosen = [name for name in names if name in chosen]
        if not chosen:
            raise BadRequest("tool_choice.allowed_tools names none of the tools in 'tools'", param="tool_choice")
        if allowed.get("mode") == "required":
            return declarations, {"mode": "ANY", "allowedFunctionNames": chosen}
        # Gemini restricts names only in ANY mode, so in auto mode the other functions are not declared.
        return [d for d in declarations if d["name"] in chosen], {"mode": "AUTO"}
    raise BadRequest("tool_choice must be 'auto', 'required', 'none', a function or allowed_tools on gemini backends",
                     param="tool_choice")


def _schema(node: object, root: JsonObject, where: str, refs: tuple[str, ...] = (), *,
            ordered: bool = False) -> JsonObject:
    """A JSON Schema -> Gemini's Schema object (see the module docstring for what is kept, described or refused).

    `refs` are the `$ref`s followed on the way here: meeting one again means the schema is recursive. `ordered`
    (for response schemas) adds `propertyOrdering` to objects, as google-genai does: without it Gemini writes the
    properties of its JSON answer in alphabetical order rather than the schema's.
    """
    if not isinstance(node, dict):
        raise BadRequest(f"{where} must be a JSON Schema object", param=_param_of(where))
    if where.count(".") > _MAX_SCHEMA_DEPTH:
        raise BadRequest(f"{where} nests deeper than {_MAX_SCHEMA_DEPTH} levels", param=_param_of(where))
    node, refs = _inline(node, root, where, refs)
    for key in node:
        if key in _SCHEMA_REFUSED:
            raise BadRequest(f"JSON Schema keyword '{key}' at {where} is not supported on gemini backends",
                             param=_param_of(where))
    result: JsonObject = {}
    nullable = _apply_type(node, where, result)
    result.update((key, node[key]) for key in _SCHEMA_COPIED if key in node)
    if "example" not in node and isinstance(node.get("examples"), list) and node["examples"]:
        result["example"] = node["examples"][0]
    options = node.get("anyOf", node.get("oneOf"))
    if isinstance(options, list):
        kept = [option for option in options if not (isinstance(option, dict) and option.get("type") == "null")]
        nullable = nullable or len(kept) < len(options)
        if len(kept) == 1:
            result = {**_schema(kept[0], root, f"{where}.anyOf[0]", refs, ordered=ordered), **result}
        elif kept:
            result["anyOf"] = [_schema(option, root, f"{where}.anyOf[{k}]", refs, ordered=ordered)
                               for k, option in enumerate(kept)]
    if nullable:
        result["nullable"] = True
    if isinstance(node.get("properties"), dict):
        result["properties"] = {name: _schema(value, root, f"{where}.properties.{name}", refs, ordered=ordered)
                                for name, value in node["properties"].items()}
        if ordered and len(result["properties"]) > 1 and "propertyOrdering" not in result:
            result["propertyOrdering"] = list(result["properties"])
    if isinstance(node.get("required"), list) and node["required"]:
        result["required"] = list(node["required"])
    if "items" in node:
        if not isinstance(node["items"], dict):
            raise BadRequest(f"{where}.items: tuple-style items are not supported on gemini backends",
                             param=_param_of(where))
        result["items"] = _schema(node["items"], root, f"{where}.items", refs, ordered=ordered)
    hints = _apply_values(node, result)
    hints += [f"{key}: {orjson.dumps(node[key]).decode()}" for key in _SCHEMA_HINTED if key in node]
    description = node.get("description")
    if not isinstance(description, str):
        description = ""
    if hints:
        description = f"{description} ({'; '.join(hints)})" if description else "; ".join(hints)
    if description:
        result["description"] = description
    return result


def _inline(node: JsonObject, root: JsonObject, where: str,
            refs: tuple[str, ...]) -> tuple[JsonObject, tuple[str, ...]]:
    """Resolve local `$ref`s and merge one-member `allOf`s into the node; keys written next to them win."""
    while True:
        all_of = node.get("allOf")
        if all_of is not None:
            if not isinstance(all_of, list) or len(all_of) != 1 or not isinstance(all_of[0], dict):
                raise BadRequest(f"JSON Schema 'allOf' with several members at {where} is not supported on gemini "
                                 "backends", param=_param_of(where))
            node = {**all_of[0], **{key: value for key, value in node.items() if key != "allOf"}}
            continue
        ref = node.get("$ref")
        if ref is None:
            return node, refs
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise BadRequest(f"{where}: only local $refs (#/$defs/...) are supported on gemini backends",
                             param=_param_of(where))
        if ref in refs:
            raise BadRequest(f"{where}: recursive schemas ($ref {ref}) are not supported on gemini backends",
                             param=_param_of(where))
        target: object = root
        for part in ref[1:].split("/")[1:]:
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise BadRequest(f"{where}: $ref {ref} points at nothing", param=_param_of(where))
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
        refs = (*refs, ref)


def _apply_type(node: JsonObject, where: str, result: JsonObject) -> bool:
    """Set `type` (or `anyOf` for several types); return whether "null" was one of them."""
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    if not all(isinstance(k, str) and k in _SCHEMA_TYPES for k in kinds):
        raise BadRequest(f"{where}.type {kind!r} is not a JSON Schema type", param=_param_of(where))
    nullable = "null" in kinds and len(kinds) > 1
    kinds = [k for k in kinds if k != "null"] or kinds
    if len(kinds) == 1:
        result["type"] = _SCHEMA_TYPES[kinds[0]]
    elif kinds:
        result["anyOf"] = [{"type": _SCHEMA_TYPES[k]} for k in kinds]
    return nullable


def _apply_values(node: JsonObject, result: JsonObject) -> list[str]:
    """enum / const (strings only on Gemini) and format (a few per type); returns what only the description can say."""
    hints = []
    values = node.get("enum")
    if not isinstance(values, list):
        values = [node["const"]] if "const" in node else None
    if values is not None:
        present = [value for value in values if value is not None]
        if len(present) < len(values):
            result["nullable"] = True
        if all(isinstance(value, str) for value in present):
            result["enum"] = present
            result.setdefault("type", "STRING")
        else:
            hints.append(f"one of {orjson.dumps(values).decode()}")
            kinds = {_json_type(value) for value in present}
            if len(kinds) == 1 and "type" not in result:
                result["type"] = kinds.pop()
    form = node.get("format")
    if isinstance(form, str):
        if form in _SCHEMA_FORMATS.get(result.get("type", ""), ()):
            result["format"] = form
        else:
            hints.append(f"format: {form}")
    return hints


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "NUMBER"
    return "STRING" if isinstance(value, str) else "OBJECT" if isinstance(value, dict) else "ARRAY"


def _param_of(where: str) -> str:
    """The OpenAI field a schema location belongs to: `tools[0].function.parameters` or `response_format`."""
    if where.startswith("tools["):
        return where[: where.index("]") + 1]
    return where.split(".", 1)[0]


def _signature_from_id(call_id: str) -> str | None:
    match = _CALL_ID.match(call_id)
    if match is None:
        return None
    encoded = match.group(1).replace("-", "+").replace("_", "/")
    return encoded + "=" * (-len(encoded) % 4)


def _call_id(response_id: str, candidate: int, index: int, name: str, args: object, signature: object) -> str:
    digest = hashlib.sha256(orjson.dumps([response_id, candidate, index, name, args],
                                         option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    call_id = f"call_{index}_{digest}"
    if isinstance(signature, str) and signature:
        call_id += "_ts_" + signature.replace("+", "-").replace("/", "_").rstrip("=")
    return call_id


# --- response ------------------------------------------------------------------------------------------------------


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    """Translate a GenerateContentResponse into an OpenAI `chat.completion` (one choice per candidate)."""
    response_id = body.get("responseId") or ""
    choices = []
    for position, candidate in enumerate(body.get("candidates") or ()):
        index = candidate.get("index", position)
        text, reasoning, calls = _candidate_parts(candidate, response_id, index)
        message: JsonObject = {"role": "assistant", "content": "".join(text) if text or not calls else None,
                         "refusal": None}
        if calls:
            message["tool_calls"] = calls
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        choices.append({"index": index, "message": message, "logprobs": _openai_logprobs(candidate),
                        "finish_reason": _finish_reason(candidate.get("finishReason"), bool(calls))})
    if not choices:
        # The prompt itself was blocked (promptFeedback.blockReason): no candidates at all.
        choices.append({"index": 0, "message": {"role": "assistant", "content": "", "refusal": None},
                        "logprobs": None, "finish_reason": "content_filter"})
    choices.sort(key=lambda choice: choice["index"])
    completion = {"id": response_id, "object": "chat.completion", "created": created,
                  "model": body.get("modelVersion") or model, "choices": choices}
    usage = usage_of(body)
    if usage is not None:
        completion["usage"] = usage
    return completion


def _candidate_parts(candidate: JsonObject, response_id: str, index: int,
                     first_call: int = 0) -> tuple[list[str], list[str], list[JsonObject]]:
    """(text pieces, thought pieces, OpenAI tool calls) of a candidate; calls are numbered from `first_call`."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[JsonObject] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if "functionCall" in part:
            call = part["functionCall"] or {}
            name, args = call.get("name") or "", call.get("args") or {}
            call_id = _call_id(response_id, index, first_call + len(calls), name, args, part.get("thoughtSignature"))
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": orjson.dumps(args).decode()}})
        elif isinstance(part.get("text"), str):
            (reasoning if part.get("thought") else text).append(part["text"])
        # inlineData (images), executableCode and codeExecutionResult only answer requests this translator never
        # makes (image output modalities, the code execution tool).
    return text, reasoning, calls


def _openai_logprobs(candidate: JsonObject) -> JsonObject | None:
    """A candidate's `logprobsResult` -> OpenAI `logprobs` (`content`, one entry per token), None without one."""
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict) or not isinstance(result.get("chosenCandidates"), list):
        return None
    tops = result.get("topCandidates")
    if not isinstance(tops, list):
        tops = []
    content = []
    for step, chosen in enumerate(result["chosenCandidates"]):
        entry = _token_logprob(chosen)
        top = tops[step].get("candidates") if step < len(tops) and isinstance(tops[step], dict) else None
        entry["top_logprobs"] = [_token_logprob(option) for option in top or ()]
        content.append(entry)
    return {"content": content, "refusal": None}


def _token_logprob(candidate: object) -> JsonObject:
    given: JsonObject = candidate if isinstance(candidate, dict) else {}
    token = given.get("token")
    token = token if isinstance(token, str) else ""
    logprob = given.get("logProbability")
    return {"token": token, "logprob": float(logprob) if isinstance(logprob, int | float) else 0.0,
            "bytes": list(token.encode())}


def _finish_reason(reason: object, called: bool) -> str:
    mapped = _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if called and mapped == "stop" else mapped


def usage_of(response: JsonObject) -> JsonObject | None:
    usage = response.get("usageMetadata")
    return _openai_usage(usage) if isinstance(usage, dict) else None


def _openai_usage(usage: JsonObject) -> JsonObject:
    prompt = (usage.get("promptTokenCount") or 0) + (usage.get("toolUsePromptTokenCount") or 0)
    thoughts = usage.get("thoughtsTokenCount") or 0
    completion = (usage.get("candidatesTokenCount") or 0) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage.get("totalTokenCount") or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.get("cachedContentTokenCount") or 0},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


# --- streaming -----------------------------------------------------------------------------------------------------


class ChatStream(BaseChatStream):
    """Gemini SSE events (each a partial GenerateContentResponse) -> OpenAI `chat.completion.chunk` dicts.

    Function calls arrive whole and are sent as one tool call delta each (id, name and all arguments). The stream has
    no end marker: `finish` accepts it when every candidate reported a `finishReason`, and only then sends the usage
    chunk; an `error` event ends the stream without finishing it.
    """

    provider = "gemini"
    end_marker = "its last candidate finished"

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self._raw_usage: JsonObject = {}
        self._calls: dict[int, int] = {}  # candidate index -> tool calls sent so far
        self._open: set[int] = set()  # candidates that started and have not finished

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed:
            return []
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, list) and len(payload) == 1:
            payload = payload[0]  # Vertex wraps some errors in an array
        if not isinstance(payload, dict):
            return self._malformed()
        if isinstance(payload.get("error"), dict):
            return self._fail(_error_from_google(payload["error"], None))
        self._id = self._id or payload.get("responseId") or ""
        self._model = payload.get("modelVersion") or self._model
        if isinstance(payload.get("usageMetadata"), dict):
            self._raw_usage.update(payload["usageMetadata"])
            self.usage = _openai_usage(self._raw_usage)
        chunks: list[JsonObject] = []
        candidates = payload.get("candidates") or []
        if not candidates and (payload.get("promptFeedback") or {}).get("blockReason") and not self._calls:
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
            chunks.append(self._chunk({}, "content_filter"))
            self._calls[0] = 0
        for position, candidate in enumerate(candidates):
            chunks.extend(self._candidate(candidate.get("index", position), candidate))
        return chunks

    def _last_chunks(self) -> list[JsonObject] | None:
        return self._usage_chunks() if self._calls and not self._open else None

    def _candidate(self, index: int, candidate: JsonObject) -> list[JsonObject]:
        chunks = []
        if index not in self._calls:
            self._calls[index] = 0
            self._open.add(index)
            chunks.append(self._chunk({"role": "assistant", "content": ""}, None, index))
        first = self._calls[index]
        text, reasoning, calls = _candidate_parts(candidate, self._id, index, first)
        if "".join(reasoning):
            chunks.append(self._chunk({"reasoning_content": "".join(reasoning)}, None, index))
        logprobs = _openai_logprobs(candidate)
        if "".join(text) or logprobs is not None:
            chunk = self._chunk({"content": "".join(text)}, None, index)
            if logprobs is not None:
                chunk["choices"][0]["logprobs"] = logprobs
            chunks.append(chunk)
        for offset, call in enumerate(calls):
            chunks.append(self._chunk({"tool_calls": [{"index": first + offset, **call}]}, None, index))
        self._calls[index] = first + len(calls)
        reason = candidate.get("finishReason")
        if reason and index in self._open:
            self._open.discard(index)
            chunks.append(self._chunk({}, _finish_reason(reason, self._calls[index] > 0), index))
        return chunks


# --- errors --------------------------------------------------------------------------------------------------------


def error_response(status: int, body: bytes, headers: object = None) -> tuple[int, JsonObject]:
    """A Google API error (`{"error": {"code", "message", "status"}}`, possibly in a one-element array) -> (status for
    the client, OpenAI error). AI Studio's 400 for a bad API key becomes a 401."""
    client_status = status if status < 500 or status in (500, 502, 503, 504) else 502
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        if _reason(error) == "API_KEY_INVALID":
            client_status = 401
        return client_status, _error_from_google(error, client_status)
    message = f"the gemini backend answered HTTP {status} with a body that is not a Google API error"
    return client_status, error_dict(message, status_error_type(client_status), None)


def error_from_google_body(status: int, body: bytes) -> tuple[int, JsonObject] | None:
    """`error_response` when `body` is a Google API error, else None (for Vertex partner models, whose own errors
    have another shape but whose auth, quota and routing errors come from Google's front end)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("status"), str):
        return error_response(status, body)
    return None


def _reason(error: JsonObject) -> str | None:
    for detail in error.get("details") or ():
        reason = detail.get("reason") if isinstance(detail, dict) else None
        if isinstance(reason, str):
            return reason
    return None


def _error_from_google(error: JsonObject, status: int | None) -> JsonObject:
    """An `error` object -> OpenAI error; a stream error has no HTTP status, its `status` name gives one."""
    kind = error.get("status")
    if not isinstance(kind, str):
        kind = None
    if status is None:
        code = error.get("code")
        status = _STATUS_BY_ERROR.get(kind or "", code if isinstance(code, int) and code >= 400 else 500)
    message = error.get("message")
    if not isinstance(message, str):
        message = None
    return error_dict(message or f"the gemini backend reported {kind or 'an error'}", status_error_type(status), kind)


# --- embeddings ----------------------------------------------------------------------------------------------------


def embeddings_request(body: JsonObject, model: str, backend: Backend | None = None) -> JsonObject:
    """OpenAI embeddings -> AI Studio `batchEmbedContents`, or Vertex `predict` when `backend` is a Vertex one."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for field in body:
        if field not in EMBEDDING_FIELDS:
            raise BadRequest(f"'{field}' is not an embeddings field the gemini translator knows; "
                             "it is refused rather than ignored", param=field)
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(item, str) and item for item in inputs):
        raise BadRequest("'input' must be a non-empty string or array of non-empty strings on gemini backends "
                         "(token arrays are not supported)", param="input")
    dimensions = _positive_int(body, "dimensions") if body.get("dimensions") is not None else None
    if _is_vertex(backend):
        request: JsonObject = {"instances": [{"content": text} for text in inputs]}
        if dimensions is not None:
            request["parameters"] = {"outputDimensionality": dimensions}
        return request
    name = f"models/{model.removeprefix('models/')}"
    requests = []
    for text in inputs:
        entry: JsonObject = {"model": name, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            entry["outputDimensionality"] = dimensions
        requests.append(entry)
    return {"requests": requests}


def embeddings_response(body: JsonObject, model: str) -> JsonObject:
    """`{embeddings: [{values}], usageMetadata?}` (AI Studio) or `{predictions: [{embeddings: {values,
    statistics}}]}` (Vertex) -> an OpenAI embeddings list, with the token count the answer gives (0 without one: see
    the module docstring)."""
    if "predictions" in body:
        vectors = [(prediction.get("embeddings") or {}) for prediction in body.get("predictions") or ()]
        tokens = sum(int((vector.get("statistics") or {}).get("token_count") or 0) for vector in vectors)
    else:
        vectors = list(body.get("embeddings") or ())
        tokens = int((body.get("usageMetadata") or {}).get("promptTokenCount") or 0)
    data = [{"object": "embedding", "index": index, "embedding": list(vector.get("values") or ())}
            for index, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class GeminiTranslator(Translator):
    schemas = SCHEMAS
    fields = FIELDS
    serves_embeddings = True
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
    embeddings_path = staticmethod(embeddings_path)
    embeddings_request = staticmethod(embeddings_request)
    embeddings_response = staticmethod(embeddings_response)
