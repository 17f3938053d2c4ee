"""The fake Google providers: Gemini on AI Studio (kind `gemini`) and on Vertex AI (kind `vertex`), plus Claude on
Vertex AI (`rawPredict` / `streamRawPredict` on the `vertex` kind).

AI Studio, key in `x-goog-api-key` (or `?key=` when the query reaches this module):
- `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (SSE, as with `?alt=sse`)
- `POST /v1beta/models/{model}:batchEmbedContents`, `:countTokens` (`contents` or `generateContentRequest`)

Vertex AI, `authorization: Bearer <token>` (the token must equal the demo's key when it has one):
- `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent`, `:streamGenerateContent`,
  `:predict` (text embeddings)
- `POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict`, `:streamRawPredict`: the
  Anthropic Messages body with `anthropic_version: vertex-2023-10-16` and no `model`, answered by the Anthropic
  demo's own script and formats; `.../publishers/anthropic/models/count-tokens:rawPredict` counts (the body names
  the model) and `.../publishers/google/models/{model}:countTokens` counts a Gemini request
- `POST /token`: an OAuth token endpoint, so a service-account key whose `token_uri` points here yields a token this
  server accepts (the demo's key, or a fixed demo token). The form body is not checked: `Call` carries JSON bodies.

`v1alpha`/`v1` (AI Studio) and `v1beta1` (Vertex, the google-genai SDK's default) paths are served too. Both kinds
serve both APIs (a module answers for all its kinds); the kind names what a demo provider stands in for. Errors use
Google's format, `{"error": {"code", "message", "status"}}`; requests are checked as strictly as the real API checks
its JSON (unknown fields are refused), but only in the camelCase field names Google's SDKs send. With
`generationConfig.responseLogprobs` a text candidate carries a `logprobsResult` (one chosen token per word-sized
piece, `logprobs` alternatives each), per event when streamed.

Pure functions from a `Call` to a `Reply`; the HTTP server, faults and request recording live in `server.py`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from typing import TypeGuard
from urllib.parse import parse_qs

import orjson

from ext_proc.demo import anthropic_server
from ext_proc.demo.answers import (
    NOT_JSON,
    Call,
    Rejected,
    Reply,
    complete,
    estimate_tokens,
    greeting,
    parallel_tool_count,
    structured_answer,
    tool_input,
    tool_reply,
    verbose_text,
    words,
)
from ext_proc.json_types import JsonObject

KINDS = ("gemini", "vertex")
EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 3072
MAX_CANDIDATES = 8
MAX_TOP_LOGPROBS = 20
MAX_STOP_SEQUENCES = 5
IMPLICIT_CACHE_MIN_TOKENS = 1024
"""Prompts at least this long report half their tokens as read from Gemini's implicit cache."""
DEMO_TOKEN = "ya29.demo-access-token"
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
THOUGHT = "Thinking about what to answer."

_AI_STUDIO_PATH = re.compile(r"^/(?:v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
_VERTEX_PATH = re.compile(
    r"^/(?:v1|v1beta1)/projects/([^/]+)/locations/([^/]+)/publishers/(google|anthropic)/models/([^/:]+):([A-Za-z]+)$")
_API_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
"""Recent anthropic SDKs' Vertex client sends the API version date (e.g. 2026-10-21) as `anthropic_version`."""
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
                   "cachedContent", "labels"}
_GENERATION_FIELDS = {
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "seed", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
    "thinkingConfig", "responseLogprobs", "logprobs", "mediaResolution", "speechConfig", "imageConfig",
}
_THINKING_FIELDS = {"thinkingBudget", "includeThoughts", "thinkingLevel"}
_PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult"}
_PART_EXTRAS = {"thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
_DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema",
                       "behavior"}
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}
_ROLES = {"user", "model", "function"}


def answer(call: Call) -> Reply:
    path, _, query = call.path.partition("?")
    if call.method == "POST" and path == "/token":
        return _token(call)
    vertex = _VERTEX_PATH.match(path)
    studio = _AI_STUDIO_PATH.match(path)
    if vertex is None and studio is None:
        return error(404, f"The requested URL {path} was not found on this server.")
    if call.method != "POST":
        return error(405, f"Method {call.method} is not allowed on {path}; use POST.")
    if vertex is not None:
        failure = _check_bearer(call)
        api, model, method = vertex.group(3), vertex.group(4), vertex.group(5)
    else:
        failure = _check_key(call, query)
        assert studio is not None  # one of the two matched
        api, model, method = "ai-studio", studio.group(1), studio.group(2)
    if failure is not None:
        return failure
    handler = _METHODS.get((api, method))
    if handler is None:
        return error(404, f"Method {method} is not served here by this demo.")
    try:
        return handler(call, model, vertex is not None)
    except Rejected as exc:
        return error(exc.status, exc.message)


def error(status: int, message: str, *, reason: str | None = None) -> Reply:
    """An answer in Google's error format; a 429 also says when to retry (RetryInfo), as Gemini does."""
    name = _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    body: dict[str, object] = {"code": status, "message": message, "status": name}
    if reason is not None:
        body["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                            "domain": "googleapis.com"}]
    elif status == 429:
        body["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
    return Reply(status, orjson.dumps({"error": body}))


# --- auth ----------------------------------------------------------------------------------------------------------


def _check_key(call: Call, query: str) -> Reply | None:
    key = call.headers.get("x-goog-api-key") or next(iter(parse_qs(query).get("key", ())), None)
    if not key:
        return error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                          "Please use API Key or other form of API consumer identity to call this API.")
    if call.api_key is not None and key != call.api_key:
        return error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")
    return None


def _check_bearer(call: Call) -> Reply | None:
    scheme, _, token = call.headers.get("authorization", "").partition(" ")
    expected = call.api_key or None
    if scheme.lower() != "bearer" or not token.strip() or (expected is not None and token != expected):
        return error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                          "cookie or other valid authentication credential.")
    return None


def _token(call: Call) -> Reply:
    token = call.api_key or DEMO_TOKEN
    return Reply(200, orjson.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))


# --- generateContent -----------------------------------------------------------------------------------------------


def _generate(call: Call, model: str, vertex: bool, stream: bool = False) -> Reply:
    body = _checked_request(call.body)
    contents: list[JsonObject] = body["contents"]
    config: JsonObject = body.get("generationConfig") or {}
    if model.startswith("gemini-3"):
        _require_signatures(contents)
    candidates = _int_setting(config, "candidateCount", 1, MAX_CANDIDATES, 1)
    thinking = config.get("thinkingConfig") or {}
    thought = THOUGHT if thinking.get("includeThoughts") is True and thinking.get("thinkingBudget") != 0 else ""
    results = _function_results(contents[-1])
    calls = _function_calls(call, body, model, bool(thought)) if contents[-1]["role"] == "user" and not results else []
    if calls:
        parts: list[dict[str, object]] = calls
        finish, tokens = "STOP", estimate_tokens([part["functionCall"] for part in calls])
    else:
        schema = (config.get("responseJsonSchema") or _json_schema(config.get("responseSchema"))
                  if config.get("responseMimeType") == "application/json" else None)
        said = (tool_reply(call.name, model, results) if results
                else structured_answer(schema or {"type": "object"}) if schema is not None
                or config.get("responseMimeType") == "application/json"
                else greeting(call.name, model, _user_text(contents)))
        stops = config.get("stopSequences") or []
        max_tokens = config.get("maxOutputTokens")
        limit = max_tokens if isinstance(max_tokens, int) else None
        if call.verbose:  # thoughts count inside `maxOutputTokens`
            limit = None if limit is None else max(1, limit - len(words(thought)))
            said = verbose_text(limit)
        done = complete(said, stops, limit)
        parts = [{"text": done.text}]
        finish, tokens = ("MAX_TOKENS" if done.reason == "length" else "STOP"), done.tokens
    prompt = estimate_tokens(body.get("systemInstruction"), contents, body.get("tools"))
    thoughts = len(words(thought)) * candidates
    usage: dict[str, object] = {"promptTokenCount": prompt, "candidatesTokenCount": tokens * candidates,
                                "totalTokenCount": prompt + tokens * candidates + thoughts,
                                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if prompt >= IMPLICIT_CACHE_MIN_TOKENS:
        usage["cachedContentTokenCount"] = prompt // 2
    head: dict[str, object] = {"modelVersion": model, "responseId": secrets.token_urlsafe(16)}
    if vertex:
        head["createTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    top = _logprobs_setting(config)
    if stream:
        return Reply(200, events=_events(head, parts, thought, finish, candidates, usage, top))
    answer_parts = ([{"text": thought, "thought": True}] if thought else []) + parts
    body_out = {"candidates": [_candidate(answer_parts, index, finish, top) for index in range(candidates)],
                "usageMetadata": usage, **head}
    return Reply(200, orjson.dumps(body_out))


def _stream(call: Call, model: str, vertex: bool) -> Reply:
    return _generate(call, model, vertex, stream=True)


def _candidate(parts: list[dict[str, object]], index: int, finish: str | None,
               top: int | None = None) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"parts": parts, "role": "model"}, "index": index}
    if finish is not None:
        candidate["finishReason"] = finish
    text = "".join(str(part["text"]) for part in parts if isinstance(part.get("text"), str) and not part.get("thought"))
    if top is not None and text:
        candidate["logprobsResult"] = _logprobs_result(words(text), top)
    return candidate


def _logprobs_setting(config: JsonObject) -> int | None:
    """None without `responseLogprobs`, else the number of alternatives asked per token (`logprobs`, 0..20)."""
    if config.get("responseLogprobs") is not True:
        if config.get("logprobs") is not None:
            raise Rejected("logprobs is only valid if responseLogprobs is true.")
        return None
    return _int_setting(config, "logprobs", 0, MAX_TOP_LOGPROBS, 0)


def _logprobs_result(tokens: list[str], top: int) -> JsonObject:
    """Gemini's `logprobsResult` for `tokens`: each chosen token, and `top` alternatives per step (the chosen one
    first, as a most likely token is), with made-up but stable ids and log probabilities."""
    chosen = [(token, -0.05 * (1 + step % 4)) for step, token in enumerate(tokens)]
    result: JsonObject = {"chosenCandidates": [_token_candidate(token, logprob) for token, logprob in chosen],
                          "logProbabilitySum": round(sum(logprob for _, logprob in chosen), 6)}
    if top:
        result["topCandidates"] = [{"candidates": [_token_candidate(token, logprob)] + [
            _token_candidate(f"{token}~{k}", logprob - 1.5 * k) for k in range(1, top)]} for token, logprob in chosen]
    return result


def _token_candidate(token: str, logprob: float) -> JsonObject:
    return {"token": token, "tokenId": _token_id(token), "logProbability": logprob}


def _token_id(token: str) -> int:
    return int.from_bytes(hashlib.sha256(token.encode()).digest()[:3], "little")


def _events(head: dict[str, object], parts: list[dict[str, object]], thought: str, finish: str, candidates: int,
            usage: dict[str, object], top: int | None = None) -> tuple[bytes, ...]:
    """SSE events like Gemini's: a thought, then text in word-sized pieces (function calls whole, in one event),
    each event one candidate; the last event of each candidate has its finishReason and every event the usage so
    far, with the full usage on the last one."""
    pieces: list[list[dict[str, object]]] = [[{"text": thought, "thought": True}]] if thought else []
    if "text" in parts[0]:
        pieces += [[{"text": piece}] for piece in words(str(parts[0]["text"]))] or [[{"text": ""}]]
    else:
        pieces.append(parts)
    prompt_only = {key: usage[key] for key in ("promptTokenCount", "promptTokensDetails")}
    events = []
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1
        for index in range(candidates):
            final = last and index == candidates - 1
            chunk = {"candidates": [_candidate(piece, index, finish if last else None, top)],
                     "usageMetadata": usage if final else {**prompt_only, "totalTokenCount": usage["promptTokenCount"]},
                     **head}
            events.append(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
    return tuple(events)


def _function_calls(call: Call, body: JsonObject, model: str, thinking: bool) -> list[dict[str, object]]:
    """The functionCall parts the fake answers with: the allowed functions (ANY mode) or all, first one first."""
    declarations = [declaration for tool in body.get("tools") or () for declaration in
                    tool.get("functionDeclarations") or ()]
    setting = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = setting.get("mode", "AUTO")
    if not declarations or mode == "NONE":
        return []
    allowed = setting.get("allowedFunctionNames")
    chosen = [d for d in declarations if d["name"] in allowed] if allowed else declarations
    if not chosen:
        raise Rejected("allowed_function_names names no declared function.")
    count = parallel_tool_count(call.headers)
    parts: list[dict[str, object]] = []
    for index in range(count):
        declaration = chosen[index % len(chosen)]
        schema = declaration.get("parametersJsonSchema") or _json_schema(declaration.get("parameters"))
        parts.append({"functionCall": {"name": declaration["name"], "args": tool_input(schema)}})
    if thinking or model.startswith("gemini-3"):
        # Only the first call of a step carries the signature, as Gemini 3 does.
        parts[0]["thoughtSignature"] = base64.b64encode(b"demo-signature:" + model.encode()).decode()
    return parts


def _json_schema(schema: object) -> object:
    """Gemini's Schema (types in capitals) -> JSON Schema, for `answers.tool_input`."""
    if isinstance(schema, dict):
        return {key: (value.lower() if key == "type" and isinstance(value, str) else _json_schema(value))
                for key, value in schema.items()}
    if isinstance(schema, list):
        return [_json_schema(item) for item in schema]
    return schema


def _function_results(content: JsonObject) -> str:
    """The function responses in a user turn as text ("" when there are none)."""
    responses = [part["functionResponse"] for part in content["parts"] if "functionResponse" in part]
    texts = []
    for response in responses:
        result = response.get("response") or {}
        output = result.get("output") if isinstance(result, dict) else None
        texts.append(output if isinstance(output, str) else orjson.dumps(result).decode())
    return " ".join(texts)


def _user_text(contents: list[JsonObject]) -> str:
    for content in reversed(contents):
        if content["role"] == "user":
            texts = [part["text"] for part in content["parts"] if isinstance(part.get("text"), str)]
            return " ".join(texts)
    return ""


def _require_signatures(contents: list[JsonObject]) -> None:
    for position, content in enumerate(contents):
        calls = [part for part in content["parts"] if "functionCall" in part]
        if calls and "thoughtSignature" not in calls[0]:
            name = calls[0]["functionCall"]["name"]
            raise Rejected("Function call is missing a thought_signature in functionCall parts. This is required for "
                           "tools to work correctly, and missing thought_signature may lead to degraded model "
                           f"performance. Additional data, function call `default_api:{name}` , position "
                           f"{position + 1}.")


# --- request checks ------------------------------------------------------------------------------------------------


def _checked_request(body: object) -> JsonObject:
    """The request with every field name in camelCase (the API, as any proto3 JSON parser, also takes the proto
    names in snake_case, which the google-genai SDK sends for some nested settings), once it passed the checks."""
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("Invalid JSON payload received. Expected an object.")
    body = _normalized(body)
    _known(body, _REQUEST_FIELDS, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Rejected("* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        _check_content(content, f"contents[{index}]", require_role=True)
    if contents[-1].get("role") == "model" and any("functionCall" in p for p in contents[-1]["parts"]):
        raise Rejected("Please ensure that function call turn comes immediately after a user turn or after a "
                       "function response turn.")
    if body.get("systemInstruction") is not None:
        _check_content(body["systemInstruction"], "system_instruction", require_role=False)
    _check_tools(body.get("tools"), body.get("toolConfig"))
    config = body.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise Rejected("Invalid value at 'generation_config': expected an object.")
        _known(config, _GENERATION_FIELDS, "generation_config")
        _check_config(config)
    return body


def _normalized(body: JsonObject) -> JsonObject:
    """camelCase names for the request's own fields, leaving user data (function args, schemas) as it is."""
    body = _camel_object(body)
    if isinstance(body.get("contents"), list):
        body["contents"] = [_normalized_content(content) for content in body["contents"]]
    if "systemInstruction" in body:
        body["systemInstruction"] = _normalized_content(body["systemInstruction"])
    if isinstance(body.get("tools"), list):
        body["tools"] = [_camel_keys(tool) for tool in body["tools"]]
        for tool in body["tools"]:
            if isinstance(tool, dict) and isinstance(tool.get("functionDeclarations"), list):
                tool["functionDeclarations"] = [_camel_keys(item) for item in tool["functionDeclarations"]]
    if isinstance(body.get("toolConfig"), dict):
        body["toolConfig"] = config = _camel_object(body["toolConfig"])
        if "functionCallingConfig" in config:
            config["functionCallingConfig"] = _camel_keys(config["functionCallingConfig"])
    if isinstance(body.get("generationConfig"), dict):
        body["generationConfig"] = config = _camel_object(body["generationConfig"])
        if "thinkingConfig" in config:
            config["thinkingConfig"] = _camel_keys(config["thinkingConfig"])
    return body


def _normalized_content(content: object) -> object:
    content = _camel_keys(content)
    if isinstance(content, dict) and isinstance(content.get("parts"), list):
        content["parts"] = parts = [_camel_keys(part) for part in content["parts"]]
        for part in parts:
            for key in ("inlineData", "fileData", "functionCall", "functionResponse"):
                if isinstance(part, dict) and key in part:
                    part[key] = _camel_keys(part[key])
    return content


def _camel_keys(value: object) -> object:
    return _camel_object(value) if isinstance(value, dict) else value


def _camel_object(value: JsonObject) -> JsonObject:
    return {re.sub(r"_([a-z])", lambda match: match.group(1).upper(), key): item for key, item in value.items()}


def _known(value: Mapping[str, object], fields: set[str], where: str) -> None:
    for key in value:
        if key not in fields:
            at = f" at '{where}'" if where else ""
            raise Rejected(f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.')


def _check_content(content: object, where: str, *, require_role: bool) -> None:
    if not isinstance(content, dict):
        raise Rejected(f"Invalid value at '{where}': expected a Content object.")
    _known(content, {"role", "parts"}, where)
    role = content.get("role")
    if require_role and role not in _ROLES:
        raise Rejected(f"Please use a valid role: user, model. ({where}.role is {role!r})")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise Rejected(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    for index, part in enumerate(parts):
        here = f"{where}.parts[{index}]"
        if not isinstance(part, dict):
            raise Rejected(f"Invalid value at '{here}': expected a Part object.")
        _known(part, _PART_DATA | _PART_EXTRAS, here)
        data = [key for key in part if key in _PART_DATA]
        if len(data) != 1:
            raise Rejected(f"* GenerateContentRequest.{here}.data: required oneof field 'data' must have one "
                           "initialized field")
        kind = data[0]
        if kind == "text" and not isinstance(part["text"], str):
            raise Rejected(f"Invalid value at '{here}.text': expected a string.")
        if kind == "inlineData" and not _has(part["inlineData"], ("mimeType", "data")):
            raise Rejected(f"* GenerateContentRequest.{here}.inline_data: mime_type and data are required")
        if kind == "fileData" and not _has(part["fileData"], ("fileUri",)):
            raise Rejected(f"* GenerateContentRequest.{here}.file_data.file_uri: a file URI is required")
        if kind == "functionCall" and not _has(part["functionCall"], ("name",)):
            raise Rejected(f"* GenerateContentRequest.{here}.function_call.name: name is not specified")
        if kind == "functionResponse":
            response = part["functionResponse"]
            if not _has(response, ("name",)) or not isinstance(response.get("response", {}), dict):
                raise Rejected(f"* GenerateContentRequest.{here}.function_response: name and an object response "
                               "are required")
            if role == "model":
                raise Rejected(f"* GenerateContentRequest.{here}: function responses belong in a user turn")
        if kind == "functionCall" and role == "user":
            raise Rejected(f"* GenerateContentRequest.{here}: function calls belong in a model turn")


def _has(value: object, keys: tuple[str, ...]) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(key), str) and value[key] for key in keys)


def _check_tools(tools: object, tool_config: object) -> None:
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise Rejected("Invalid value at 'tools': expected a list.")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise Rejected(f"Invalid value at 'tools[{index}]': expected a Tool object.")
            for number, declaration in enumerate(tool.get("functionDeclarations") or ()):
                here = f"tools[{index}].function_declarations[{number}]"
                if not isinstance(declaration, dict):
                    raise Rejected(f"Invalid value at '{here}': expected a FunctionDeclaration.")
                _known(declaration, _DECLARATION_FIELDS, here)
                name = declaration.get("name")
                if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                    raise Rejected(f"* GenerateContentRequest.{here}.name: Invalid function name. Must start with a "
                                   "letter or an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, "
                                   "colons and dashes, with a maximum length of 128.")
                names.add(name)
    if tool_config is None:
        return
    setting = tool_config.get("functionCallingConfig") if isinstance(tool_config, dict) else None
    if not isinstance(setting, dict):
        raise Rejected("Invalid value at 'tool_config': expected functionCallingConfig.")
    mode = setting.get("mode", "AUTO")
    if mode not in _MODES:
        raise Rejected(f"Invalid value at 'tool_config.function_calling_config.mode' ({mode!r}).")
    allowed = setting.get("allowedFunctionNames")
    if allowed is not None:
        if mode not in ("ANY", "VALIDATED"):
            raise Rejected("* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                           "allowed_function_names can only be set when mode is ANY or VALIDATED.")
        unknown = [name for name in allowed if name not in names]
        if unknown:
            raise Rejected(f"* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                           f"{unknown[0]} is not a declared function.")


def _check_config(config: dict[str, object]) -> None:
    _int_setting(config, "candidateCount", 1, MAX_CANDIDATES, 1)
    _int_setting(config, "maxOutputTokens", 1, 1 << 20, 1)
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES
                              or not all(isinstance(stop, str) for stop in stops)):
        raise Rejected(f"* GenerateContentRequest.generation_config.stop_sequences: at most {MAX_STOP_SEQUENCES} "
                       "strings are allowed")
    for key, low, high in (("temperature", 0.0, 2.0), ("topP", 0.0, 1.0), ("presencePenalty", -2.0, 2.0),
                           ("frequencyPenalty", -2.0, 2.0)):
        value = config.get(key)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise Rejected(f"* GenerateContentRequest.generation_config.{key}: must be from {low} to {high}")
    mime_type = config.get("responseMimeType")
    if config.get("responseSchema") is not None and mime_type != "application/json":
        raise Rejected("* GenerateContentRequest.generation_config.response_schema: only supported with "
                       "response_mime_type application/json")
    thinking = config.get("thinkingConfig")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise Rejected("Invalid value at 'generation_config.thinking_config': expected an object.")
        _known(thinking, _THINKING_FIELDS, "generation_config.thinking_config")


def _int_setting(config: Mapping[str, object], key: str, low: int, high: int, default: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Rejected(f"* GenerateContentRequest.generation_config.{key}: must be an integer from {low} to {high}")
    return value


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- embeddings ----------------------------------------------------------------------------------------------------


def _batch_embed(call: Call, model: str, vertex: bool) -> Reply:
    body = call.body
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("Invalid JSON payload received. Expected an object.")
    _known(body, {"requests"}, "")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise Rejected("* BatchEmbedContentsRequest.requests: requests is not specified")
    vectors = []
    for index, request in enumerate(requests):
        here = f"requests[{index}]"
        if not isinstance(request, dict):
            raise Rejected(f"Invalid value at '{here}': expected an EmbedContentRequest.")
        _known(request, {"model", "content", "taskType", "title", "outputDimensionality"}, here)
        if request.get("model") != f"models/{model}":
            raise Rejected(f"* BatchEmbedContentsRequest.{here}.model: model in the request "
                           f"({request.get('model')!r}) does not match the model in the URL (models/{model}).")
        _check_content(request.get("content"), f"{here}.content", require_role=False)
        text = " ".join(part.get("text", "") for part in request["content"]["parts"])
        dimensions = _int_setting(request, "outputDimensionality", 1, MAX_EMBEDDING_DIMENSIONS, EMBEDDING_DIMENSIONS)
        vectors.append({"values": _vector(text, dimensions)})
    return Reply(200, orjson.dumps({"embeddings": vectors}))


def _predict(call: Call, model: str, vertex: bool) -> Reply:
    body = call.body
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("Invalid JSON payload received. Expected an object.")
    _known(body, {"instances", "parameters"}, "")
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise Rejected("instances must be a non-empty list.")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise Rejected("parameters must be an object.")
    _known(parameters, {"outputDimensionality", "autoTruncate"}, "parameters")
    dimensions = _int_setting(parameters, "outputDimensionality", 1, MAX_EMBEDDING_DIMENSIONS, EMBEDDING_DIMENSIONS)
    predictions = []
    characters = 0
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("content"), str) or not instance["content"]:
            raise Rejected(f"instances[{index}].content must be a non-empty string.")
        _known(instance, {"content", "task_type", "title"}, f"instances[{index}]")
        text = instance["content"]
        characters += len(text)
        predictions.append({"embeddings": {"values": _vector(text, dimensions),
                                           "statistics": {"truncated": False, "token_count": estimate_tokens(text)}}})
    return Reply(200, orjson.dumps({"predictions": predictions, "metadata": {"billableCharacterCount": characters}}))


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of the text."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(text.encode() + counter.to_bytes(4, "little")).digest()
        raw += [value / 2**31 - 1.0 for value in struct.unpack("<8I", digest)]
        counter += 1
    norm = math.sqrt(sum(value * value for value in raw[:dimensions])) or 1.0
    return [round(value / norm, 8) for value in raw[:dimensions]]


# --- Claude on Vertex ----------------------------------------------------------------------------------------------


def _raw_predict(call: Call, model: str, vertex: bool, stream: bool = False) -> Reply:
    """Check what Vertex adds to the Messages body, then let the Anthropic demo answer as `model`. The model
    `count-tokens` is Vertex's counting endpoint (the body names the model)."""
    body = call.body
    if body is NOT_JSON or not isinstance(body, dict):
        return anthropic_server.error(400, "The request body is not valid JSON.")
    version = body.get("anthropic_version")
    if version != VERTEX_ANTHROPIC_VERSION and not (isinstance(version, str) and _API_DATE.match(version)):
        return anthropic_server.error(400, f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}' "
                                           "or an Anthropic API version date")
    if model == "count-tokens" and not stream:
        counted = {key: value for key, value in body.items() if key != "anthropic_version"}
        headers = {**call.headers, "x-api-key": "vertex", "anthropic-version": "2023-06-01"}
        return anthropic_server.answer(Call(call.name, "POST", anthropic_server.COUNT_TOKENS_PATH, headers, counted,
                                            None))
    if "model" in body:
        return anthropic_server.error(400, "model: Extra inputs are not permitted (the model is in the URL)")
    messages_body = {key: value for key, value in body.items() if key != "anthropic_version"}
    messages_body["model"] = model
    if stream:
        messages_body["stream"] = True
    headers = {**call.headers, "x-api-key": "vertex", "anthropic-version": "2023-06-01"}
    return anthropic_server.answer(Call(call.name, "POST", "/v1/messages", headers, messages_body, None,
                                        verbose=call.verbose))


def _stream_raw_predict(call: Call, model: str, vertex: bool) -> Reply:
    return _raw_predict(call, model, vertex, stream=True)


def _count_tokens(call: Call, model: str, vertex: bool) -> Reply:
    """countTokens: AI Studio takes `contents` or a whole `generateContentRequest`, Vertex the request's contents,
    system instruction and tools; both answer `totalTokens`, the count generateContent reports as its prompt's."""
    body = call.body
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("Invalid JSON payload received. Expected an object.")
    request = body.get("generateContentRequest") if not vertex else None
    if request is not None:
        if set(body) != {"generateContentRequest"} or not isinstance(request, dict):
            raise Rejected("contents and generateContentRequest can't both be set")
        if request.get("model") != f"models/{model}":
            raise Rejected("generateContentRequest.model must name the model of the URL (models/...)")
        request = {key: value for key, value in request.items() if key != "model"}
    else:
        _known(_normalized(body), {"contents", "systemInstruction", "tools", "generationConfig", "instances"}, "")
        request = body
    checked = _checked_request(request)
    prompt = estimate_tokens(checked.get("systemInstruction"), checked["contents"], checked.get("tools"))
    answer: dict[str, object] = {"totalTokens": prompt}
    if vertex:
        answer["totalBillableCharacters"] = len(orjson.dumps(checked["contents"]))
    else:
        answer["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return Reply(200, orjson.dumps(answer))


_METHODS: dict[tuple[str, str], Callable[[Call, str, bool], Reply]] = {
    ("ai-studio", "generateContent"): _generate,
    ("ai-studio", "streamGenerateContent"): _stream,
    ("ai-studio", "batchEmbedContents"): _batch_embed,
    ("ai-studio", "countTokens"): _count_tokens,
    ("google", "countTokens"): _count_tokens,
    ("google", "generateContent"): _generate,
    ("google", "streamGenerateContent"): _stream,
    ("google", "predict"): _predict,
    ("anthropic", "rawPredict"): _raw_predict,
    ("anthropic", "streamRawPredict"): _stream_raw_predict,
}
"""(AI Studio, or the Vertex publisher) and method -> handler."""
