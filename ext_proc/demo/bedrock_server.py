"""The fake Amazon Bedrock runtime, in the real wire formats (boto3's `bedrock-runtime` client parses every answer):

- `POST /model/{modelId}/converse` (JSON) and `/converse-stream` (AWS event-stream: messageStart,
  contentBlockStart/Delta/Stop, messageStop, metadata);
- `POST /model/{modelId}/invoke`: Anthropic Claude (the Anthropic Messages body with `anthropic_version`, answered by
  the fake Anthropic provider's script), Amazon Titan text embeddings and Cohere embed;
- `POST /model/{modelId}/invoke-with-response-stream`: Claude, as `chunk` events carrying base64 Anthropic events.
- `POST /model/{modelId}/count-tokens` (CountTokens): Claude, with an InvokeModel body (`{"input": {"invokeModel":
  {"body": <base64>}}}`), answered `{"inputTokens": N}`.

Requests must carry a well-formed SigV4 `Authorization` header scoped to the `bedrock` service, with `x-amz-date`
(the signature itself is not recomputed), or a Bedrock API key as `Authorization: Bearer`. With an `api_key`
configured, the SigV4 access key id or the bearer token must equal it. Failures are AWS errors: `{"message": ...}`
with the exception name in `x-amzn-errortype`. A request header `x-demo-stream-exception: <type>` (e.g.
`throttlingException`) makes a stream fail with that exception message after its first events. Converse keeps
Bedrock's conversation rules (user turn first, roles alternating, no blank text) and Claude's with thinking on: the
last assistant turn that calls tools must start with its signed `reasoningContent`.

Pure functions from a `Call` to a `Reply`; the HTTP server, faults and request recording live in `server.py`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct
import uuid
from collections.abc import Mapping
from typing import TypeGuard
from urllib.parse import unquote

import orjson

from ext_proc.demo import anthropic_server
from ext_proc.demo.answers import (
    NOT_JSON,
    PARALLEL_TOOLS_HEADER,
    Call,
    Rejected,
    Reply,
    complete,
    contains_key,
    estimate_tokens,
    fragments,
    greeting,
    new_id,
    parallel_tool_count,
    tool_input,
    tool_reply,
    verbose_text,
    words,
)
from ext_proc.streaming.eventstream import encode_event, encode_message

KIND = "bedrock"
STREAM_EXCEPTION_HEADER = "x-demo-stream-exception"
EVENTSTREAM = "application/vnd.amazon.eventstream"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
COHERE_MAX_TEXTS = 96

_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream|count-tokens)$")
_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/\s,]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
                    r"(?P<service>[a-z0-9-]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*"
                    r"Signature=[0-9a-f]{64}$")
_AMZ_DATE = re.compile(r"^(\d{8})T\d{6}Z$")
_EXCEPTIONS = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_STOP_REASONS = {"end": "end_turn", "stop": "stop_sequence", "length": "max_tokens"}
_REQUEST_FIELDS = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
                   "additionalModelRequestFields", "promptVariables", "additionalModelResponseFieldPaths",
                   "requestMetadata", "performanceConfig", "serviceTier", "outputConfig"}
_BLOCK_KEYS = {"text", "image", "document", "video", "audio", "toolUse", "toolResult", "guardContent", "cachePoint",
               "reasoningContent", "citationsContent", "searchResult"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")
_IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}
_COHERE_INPUT_TYPES = {"search_document", "search_query", "classification", "clustering", "image"}
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def answer(call: Call) -> Reply:
    match = _PATH.match(call.path)
    if match is None:
        return error(404, f"Unknown operation {call.method} {call.path}", exception="UnknownOperationException")
    if call.method != "POST":
        return error(405, f"Method {call.method} not allowed on {call.path}", exception="UnknownOperationException")
    refused = _check_auth(call)
    if refused is not None:
        return refused
    model, operation = unquote(match.group(1)), match.group(2)
    try:
        if operation in ("converse", "converse-stream"):
            return _converse(call, model, stream=operation == "converse-stream")
        if operation == "count-tokens":
            return _count_tokens(call, model)
        return _invoke(call, model, stream=operation == "invoke-with-response-stream")
    except Rejected as exc:
        return error(exc.status, exc.message)


def error(status: int, message: str, *, exception: str | None = None) -> Reply:
    """An AWS error answer: `{"message": ...}`, the exception name in `x-amzn-errortype`."""
    kind = exception or _EXCEPTIONS.get(status, "InternalServerException" if status >= 500 else "ValidationException")
    headers = (("x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
               ("x-amzn-requestid", str(uuid.uuid4())))
    return Reply(status, orjson.dumps({"message": message}), None, headers)


# --- authentication ------------------------------------------------------------------------------------------------


def _check_auth(call: Call) -> Reply | None:
    authorization = call.headers.get("authorization")
    if not authorization:
        return error(403, "Missing Authentication Token", exception="MissingAuthenticationTokenException")
    if authorization.startswith("Bearer "):
        if call.api_key is not None and authorization.removeprefix("Bearer ") != call.api_key:
            return error(403, "Invalid API Key format: Must start with pre-defined prefix",
                         exception="UnrecognizedClientException")
        return None
    match = _SIGV4.match(authorization)
    if match is None:
        return error(403, "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters "
                          "(AWS4-HMAC-SHA256).", exception="IncompleteSignatureException")
    amz_date = _AMZ_DATE.match(call.headers.get("x-amz-date", ""))
    if amz_date is None:
        return error(403, "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                     exception="IncompleteSignatureException")
    if match["service"] != "bedrock":
        return error(403, f"Credential should be scoped to correct service: 'bedrock'. (got {match['service']!r})",
                     exception="InvalidSignatureException")
    if match["date"] != amz_date.group(1):
        return error(403, f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
                          f"HTTP: '{match['date']}' != '{amz_date.group(1)}'", exception="InvalidSignatureException")
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return error(403, "'Host' and 'X-Amz-Date' must be signed headers.", exception="InvalidSignatureException")
    if call.api_key is not None and match["key"] != call.api_key:
        return error(403, "The security token included in the request is invalid.",
                     exception="UnrecognizedClientException")
    return None


# --- Converse ------------------------------------------------------------------------------------------------------


def _converse(call: Call, model: str, *, stream: bool) -> Reply:
    body = _json_object(call.body)
    unknown = sorted(set(body) - _REQUEST_FIELDS)
    if unknown:
        raise Rejected(f"Unknown parameter in input: {unknown[0]!r}")
    messages, has_tool_blocks = _checked_messages(body.get("messages"))
    _check_system(body.get("system"))
    max_tokens, stops = _inference_config(body.get("inferenceConfig"))
    tools, choice = _tool_config(body.get("toolConfig"), has_tool_blocks)
    schema = _output_schema(body.get("outputConfig"))
    thinking = _reasoning_requested(body.get("additionalModelRequestFields"))
    if _claude_thinking(body.get("additionalModelRequestFields")):
        _require_signed_thinking(messages)

    last = messages[-1]
    results = _tool_results(last)
    uses = _tool_uses(call, tools, choice) if last["role"] == "user" and not results else []
    said = (verbose_text(max_tokens) if call.verbose
            else tool_reply(call.name, model, results) if results else greeting(call.name, model, _user_text(messages)))
    content: list[dict] = []
    if thinking:
        content.append({"reasoningContent": {"reasoningText": {"text": f"The user said: {_user_text(messages)[:80]}",
                                                               "signature": "demo-signature"}}})
    if uses:
        content += uses
        stop_reason = "tool_use"
        output_tokens = estimate_tokens([use["toolUse"]["input"] for use in uses])
    elif schema is not None:
        content.append({"text": orjson.dumps(tool_input(schema)).decode()})
        stop_reason, output_tokens = "end_turn", estimate_tokens(content[-1]["text"])
    else:
        done = complete(said, stops, max_tokens)
        content.append({"text": done.text})
        stop_reason, output_tokens = _STOP_REASONS[done.reason], done.tokens
    usage = _usage(body, output_tokens)
    if stream:
        return _event_stream(_converse_events(content, stop_reason, usage), call.headers)
    return Reply(200, orjson.dumps({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 1},
    }), headers=(("x-amzn-requestid", str(uuid.uuid4())),))


def _converse_events(content: list[dict], stop_reason: str, usage: dict) -> list[bytes]:
    """messageStart, then per block its start (tool use only), deltas word by word or in fragments and stop, then
    messageStop and metadata; every payload carries Bedrock's `p` padding field."""
    events = [_converse_event("messageStart", {"role": "assistant"})]
    for index, block in enumerate(content):
        if "toolUse" in block:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            events.append(_converse_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            deltas: list[dict] = [{"toolUse": {"input": piece}}
                                  for piece in fragments(orjson.dumps(use["input"]).decode())]
        elif "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            deltas = [{"reasoningContent": {"text": piece}} for piece in words(reasoning["text"])]
            deltas.append({"reasoningContent": {"signature": reasoning["signature"]}})
        else:
            deltas = [{"text": piece} for piece in words(block["text"])]
        events += [_converse_event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})
                   for delta in deltas]
        events.append(_converse_event("contentBlockStop", {"contentBlockIndex": index}))
    events.append(_converse_event("messageStop", {"stopReason": stop_reason}))
    events.append(_converse_event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
    return events


def _converse_event(kind: str, payload: dict) -> bytes:
    return encode_event(kind, orjson.dumps({**payload, "p": _PADDING[:len(kind)]}))


def _checked_messages(value: object) -> tuple[list[dict], bool]:
    """The messages, and whether any holds a toolUse or toolResult block."""
    if not isinstance(value, list) or not value:
        raise Rejected("The messages field is required and must hold at least one message.")
    previous = None
    has_tool_blocks = False
    for index, message in enumerate(value):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise Rejected(f"{where}.role must be user or assistant")
        if message["role"] == previous:
            raise Rejected("A conversation must alternate between user and assistant roles. Make sure the "
                           "conversation alternates between user and assistant roles and try again.")
        if index == 0 and message["role"] != "user":
            raise Rejected("A conversation must start with a user message. Try again with a conversation that "
                           "starts with a user message.")
        previous = message["role"]
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise Rejected(f"{where}.content must hold at least one content block")
        for position, block in enumerate(content):
            has_tool_blocks |= _check_block(block, f"{where}.content.{position}")
    return value, has_tool_blocks


def _check_block(block: object, where: str) -> bool:
    """Check one content block; True for a toolUse or toolResult block."""
    keys = set(block) & _BLOCK_KEYS if isinstance(block, dict) else set()
    if not isinstance(block, dict) or len(keys) != 1 or len(block) != 1:
        raise Rejected(f"{where}: a content block must set exactly one of {sorted(_BLOCK_KEYS)}")
    (kind,) = keys
    value = block[kind]
    if kind == "text" and (not isinstance(value, str) or not value.strip()):
        raise Rejected(f"The text field in the ContentBlock object at {where} is blank. Add text to the text field, "
                       "and try again.")
    if kind == "image":
        _check_image(value, where)
    if kind == "toolUse" and not (
            isinstance(value, dict) and _TOOL_USE_ID.match(str(value.get("toolUseId")))
            and _TOOL_NAME.match(str(value.get("name"))) and isinstance(value.get("input"), dict)):
        raise Rejected(f"{where}.toolUse needs a toolUseId, a name and an input object")
    if kind == "toolResult":
        if not (isinstance(value, dict) and _TOOL_USE_ID.match(str(value.get("toolUseId")))
                and isinstance(value.get("content"), list)):
            raise Rejected(f"{where}.toolResult needs a toolUseId and a content list")
        for position, item in enumerate(value["content"]):
            if not isinstance(item, dict) or len(item) != 1:
                raise Rejected(f"{where}.toolResult.content.{position} must set exactly one member")
    if kind == "cachePoint" and not (isinstance(value, dict) and value.get("type") == "default"):
        raise Rejected(f"{where}.cachePoint.type must be 'default'")
    return kind in ("toolUse", "toolResult")


def _check_image(value: object, where: str) -> None:
    if not isinstance(value, dict) or value.get("format") not in _IMAGE_FORMATS:
        raise Rejected(f"{where}.image.format must be one of {sorted(_IMAGE_FORMATS)}")
    source = value.get("source")
    if not isinstance(source, dict) or len(source) != 1:
        raise Rejected(f"{where}.image.source must set exactly one of bytes or s3Location")
    if "bytes" in source:
        try:
            base64.b64decode(source["bytes"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise Rejected(f"{where}.image.source.bytes is not valid base64") from None
    elif not (isinstance(source.get("s3Location"), dict) and str(source["s3Location"].get("uri", "")).startswith(
            "s3://")):
        raise Rejected(f"{where}.image.source.s3Location.uri must be an s3:// URI")


def _check_system(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise Rejected("system must be a list of system content blocks")
    for index, block in enumerate(value):
        if not isinstance(block, dict) or len(block) != 1 or not (
                (isinstance(block.get("text"), str) and block["text"]) or "cachePoint" in block
                or "guardContent" in block):
            raise Rejected(f"system.{index} must set exactly one of text (non-empty), guardContent or cachePoint")


def _inference_config(value: object) -> tuple[int | None, list[str]]:
    if value is None:
        return None, []
    if not isinstance(value, dict) or set(value) - {"maxTokens", "temperature", "topP", "stopSequences"}:
        raise Rejected("inferenceConfig takes maxTokens, temperature, topP and stopSequences")
    max_tokens = value.get("maxTokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise Rejected("inferenceConfig.maxTokens must be an integer of at least 1")
    for name in ("temperature", "topP"):
        number = value.get(name)
        if number is not None and (not isinstance(number, int | float) or isinstance(number, bool)
                                   or not 0 <= number <= 1):
            raise Rejected(f"inferenceConfig.{name} must be a number from 0 to 1")
    stops = value.get("stopSequences", [])
    if not isinstance(stops, list) or not all(isinstance(stop, str) and stop for stop in stops):
        raise Rejected("inferenceConfig.stopSequences must be a list of non-empty strings")
    return max_tokens, stops


def _tool_config(value: object, has_tool_blocks: bool) -> tuple[list[dict], dict]:
    if value is None:
        if has_tool_blocks:
            raise Rejected("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
        return [], {}
    if not isinstance(value, dict) or not isinstance(value.get("tools"), list) or not value["tools"]:
        raise Rejected("toolConfig.tools must hold at least one tool")
    tools = []
    for index, tool in enumerate(value["tools"]):
        if isinstance(tool, dict) and set(tool) == {"cachePoint"}:
            continue
        spec = tool.get("toolSpec") if isinstance(tool, dict) and len(tool) == 1 else None
        if not isinstance(spec, dict) or not _TOOL_NAME.match(str(spec.get("name"))) or not isinstance(
                (spec.get("inputSchema") or {}).get("json"), dict):
            raise Rejected(f"toolConfig.tools.{index} must be a toolSpec with a name and inputSchema.json")
        tools.append(spec)
    choice = value.get("toolChoice") or {"auto": {}}
    if not isinstance(choice, dict) or len(choice) != 1 or not set(choice) <= {"auto", "any", "tool"}:
        raise Rejected("toolConfig.toolChoice must set exactly one of auto, any or tool")
    if "tool" in choice and choice["tool"].get("name") not in {tool["name"] for tool in tools}:
        raise Rejected(f"toolConfig.toolChoice.tool.name {choice['tool'].get('name')!r} is not a defined tool")
    return tools, choice


def _output_schema(value: object) -> dict | None:
    if value is None:
        return None
    text_format = value.get("textFormat") if isinstance(value, dict) else None
    definition = ((text_format or {}).get("structure") or {}).get("jsonSchema") if isinstance(text_format,
                                                                                                dict) else None
    if not isinstance(text_format, dict) or text_format.get("type") != "json_schema" or not isinstance(definition,
                                                                                                          dict):
        raise Rejected("outputConfig.textFormat must be {type: json_schema, structure: {jsonSchema: {schema}}}")
    try:
        schema = orjson.loads(definition.get("schema") or b"")
    except (orjson.JSONDecodeError, TypeError):
        raise Rejected("outputConfig.textFormat.structure.jsonSchema.schema must be a JSON schema string") from None
    if not isinstance(schema, dict):
        raise Rejected("outputConfig.textFormat.structure.jsonSchema.schema must be a JSON object")
    return schema


def _claude_thinking(fields: object) -> bool:
    thinking = fields.get("thinking") if isinstance(fields, dict) else None
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _require_signed_thinking(messages: list[dict]) -> None:
    """Claude's rule with thinking on: the last assistant turn that calls tools starts with its signed reasoning."""
    turns = [(index, message) for index, message in enumerate(messages) if message["role"] == "assistant"]
    if not turns:
        return
    index, last = turns[-1]
    first = last["content"][0]
    if not any("toolUse" in block for block in last["content"]) or "reasoningContent" in first:
        return
    found = "tool_use" if "toolUse" in first else "text"
    raise Rejected(f"The model returned the following errors: messages.{index}.content.0.type: Expected `thinking` or "
                   f"`redacted_thinking`, but found `{found}`. When `thinking` is enabled, a final `assistant` "
                   "message must start with a thinking block (preceeding the lastmost set of `tool_use` and "
                   "`tool_result` blocks). We recommend you include thinking blocks from previous turns.")


def _reasoning_requested(fields: object) -> bool:
    if not isinstance(fields, dict):
        return False
    thinking = fields.get("thinking")
    nova = fields.get("reasoningConfig")
    return ((isinstance(thinking, dict) and thinking.get("type") == "enabled")
            or (isinstance(nova, dict) and nova.get("type") == "enabled")
            or isinstance(fields.get("reasoning_effort"), str))


def _tool_uses(call: Call, tools: list[dict], choice: dict) -> list[dict]:
    """The toolUse blocks the fake answers with: the forced tool if named, else the first tools."""
    if not tools:
        return []
    chosen = [tool for tool in tools if tool["name"] == choice["tool"]["name"]] if "tool" in choice else tools
    count = 1 if "tool" in choice else parallel_tool_count(call.headers)
    picked = [chosen[index % len(chosen)] for index in range(count)]
    return [{"toolUse": {"toolUseId": new_id("tooluse_"), "name": tool["name"],
                         "input": tool_input(tool["inputSchema"]["json"])}} for tool in picked]


def _tool_results(message: dict) -> str:
    if message["role"] != "user":
        return ""
    results = [block["toolResult"] for block in message["content"] if "toolResult" in block]
    texts = [" ".join(item["text"] for item in result["content"] if isinstance(item.get("text"), str)) or "(empty)"
             for result in results]
    return " ".join(texts)


def _user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            texts = [block["text"] for block in message["content"] if "text" in block]
            if texts:
                return " ".join(texts)
    return ""


def _usage(body: dict, output_tokens: int) -> dict:
    """Token counts; with any cachePoint about half the prompt counts as read from the cache."""
    total = estimate_tokens(body.get("system"), body.get("messages"), body.get("toolConfig"))
    cached = max(1, total // 2) if contains_key(body, "cachePoint") else 0
    usage = {"inputTokens": max(1, total - cached), "outputTokens": output_tokens}
    usage["totalTokens"] = usage["inputTokens"] + output_tokens + cached
    if cached:
        usage |= {"cacheReadInputTokens": cached, "cacheWriteInputTokens": 0}
    return usage


# --- InvokeModel ---------------------------------------------------------------------------------------------------


def _invoke(call: Call, model: str, *, stream: bool) -> Reply:
    body = _json_object(call.body)
    if "anthropic.claude" in model:
        return _invoke_claude(call, model, body, stream=stream)
    if stream:
        raise Rejected(f"The model {model} does not support streaming.")
    if "amazon.titan-embed-text" in model or "amazon.titan-embed-g1-text" in model:
        return _titan_embedding(model, body)
    if "cohere.embed-" in model:
        return _cohere_embedding(model, body)
    raise Rejected("The provided model identifier is invalid.")


def _count_tokens(call: Call, model: str) -> Reply:
    """CountTokens with an InvokeModel body (`{"input": {"invokeModel": {"body": <base64>}}}`) for Claude: the
    tokens that body's prompt would use, as `{"inputTokens": N}`."""
    body = _json_object(call.body)
    invoke = (body.get("input") or {}).get("invokeModel") if isinstance(body.get("input"), dict) else None
    if set(body) != {"input"} or not isinstance(invoke, dict) or set(invoke) != {"body"}:
        raise Rejected("1 validation error detected: Value at 'input' failed to satisfy constraint: exactly one of "
                       "invokeModel or converse must be set")
    if "anthropic.claude" not in model:
        raise Rejected("The provided model doesn't support counting tokens.")
    try:
        inner = orjson.loads(base64.b64decode(invoke["body"], validate=True))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        raise Rejected("Malformed input request: the invokeModel body is not base64 of a JSON object") from None
    if not isinstance(inner, dict) or inner.get("anthropic_version") != ANTHROPIC_VERSION:
        raise Rejected(f"Malformed input request: anthropic_version must be {ANTHROPIC_VERSION!r}")
    for key in ("model", "stream"):
        if key in inner:
            raise Rejected(f"Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your "
                           "input and try again.")
    counted = {key: value for key, value in inner.items()
               if key not in ("anthropic_version", "anthropic_beta", "max_tokens")}
    try:
        tokens = anthropic_server.count_tokens({**counted, "model": model})
    except Rejected as exc:
        raise Rejected(f"Malformed input request: {exc.message}") from None
    return Reply(200, orjson.dumps({"inputTokens": tokens}), headers=(("x-amzn-requestid", str(uuid.uuid4())),))


def _invoke_claude(call: Call, model: str, body: dict, *, stream: bool) -> Reply:
    """Answered by the fake Anthropic provider, from the body Bedrock would pass on to Claude."""
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        raise Rejected(f"Malformed input request: anthropic_version must be {ANTHROPIC_VERSION!r}")
    for key in ("model", "stream"):
        if key in body:
            raise Rejected(f"Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your "
                           "input and try again.")
    headers = {"x-api-key": "bedrock", "anthropic-version": "2023-06-01"}
    if PARALLEL_TOOLS_HEADER in call.headers:
        headers[PARALLEL_TOOLS_HEADER] = call.headers[PARALLEL_TOOLS_HEADER]
    messages_body = {key: value for key, value in body.items() if key != "anthropic_version"}
    reply = anthropic_server.answer(Call(call.name, "POST", "/v1/messages", headers,
                                         {**messages_body, "model": model, "stream": stream}, None,
                                         verbose=call.verbose))
    if reply.status != 200:
        message = ((_json_or_none(reply.body) or {}).get("error") or {}).get("message") or "Malformed input request"
        raise Rejected(message, status=reply.status if reply.status < 500 else 500)
    if reply.events is None:
        usage: dict = (_json_or_none(reply.body) or {}).get("usage") or {}
        return Reply(200, reply.body, headers=(
            ("x-amzn-requestid", str(uuid.uuid4())),
            ("x-amzn-bedrock-input-token-count", str(usage.get("input_tokens", 0))),
            ("x-amzn-bedrock-output-token-count", str(usage.get("output_tokens", 0))),
            ("x-amzn-bedrock-invocation-latency", "1")))
    events = []
    usage = {}
    for raw in reply.events:
        data = raw.decode().partition("\ndata: ")[2]
        event = orjson.loads(data)
        if event["type"] == "ping":
            continue  # Bedrock does not pass Anthropic's keep-alive pings on
        if event["type"] in ("message_start", "message_delta"):
            usage |= (event.get("message") or event).get("usage") or {}
        if event["type"] == "message_stop":
            event["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": usage.get("input_tokens", 0), "outputTokenCount": usage.get("output_tokens", 0),
                "invocationLatency": 1, "firstByteLatency": 1}
        payload = {"bytes": base64.b64encode(orjson.dumps(event)).decode(), "p": _PADDING[:len(event["type"])]}
        events.append(encode_event("chunk", orjson.dumps(payload)))
    return _event_stream(events, call.headers, (("x-amzn-bedrock-content-type", "application/json"),))


def _titan_embedding(model: str, body: dict) -> Reply:
    v2 = "amazon.titan-embed-text-v2" in model
    allowed = {"inputText", "dimensions", "normalize", "embeddingTypes"} if v2 else {"inputText"}
    extra = sorted(set(body) - allowed)
    if extra:
        raise Rejected(f"Malformed input request: #: extraneous key [{extra[0]}] is not permitted, please reformat "
                       "your input and try again.")
    text = body.get("inputText")
    if not isinstance(text, str) or not text:
        raise Rejected("Malformed input request: #: required key [inputText] not found")
    dimensions = body.get("dimensions", 1024) if v2 else 1536
    if v2 and dimensions not in (256, 512, 1024):
        raise Rejected("Malformed input request: #/dimensions: 256, 512 or 1024 expected")
    vector = _vector(text, dimensions)
    answer_body: dict = {"embedding": vector, "inputTextTokenCount": estimate_tokens(text)}
    if v2:
        answer_body["embeddingsByType"] = {"float": vector}
    return Reply(200, orjson.dumps(answer_body))


def _cohere_embedding(model: str, body: dict) -> Reply:
    texts = body.get("texts")
    if not isinstance(texts, list) or not 1 <= len(texts) <= COHERE_MAX_TEXTS or not all(
            isinstance(text, str) and text for text in texts):
        raise Rejected(f"Malformed input request: #/texts: 1 to {COHERE_MAX_TEXTS} non-empty strings expected")
    if body.get("input_type") not in _COHERE_INPUT_TYPES:
        raise Rejected(f"Malformed input request: #/input_type: one of {sorted(_COHERE_INPUT_TYPES)} expected")
    v4 = "cohere.embed-v4" in model
    dimensions = body.get("output_dimension", 1536) if v4 else 1024
    if "output_dimension" in body and (not v4 or dimensions not in (256, 512, 1024, 1536)):
        raise Rejected("Malformed input request: #/output_dimension is not valid for this model")
    vectors = [_vector(text, dimensions) for text in texts]
    types = body.get("embedding_types")
    answer_body: dict = {"id": str(uuid.uuid4()), "texts": texts}
    if types is None:
        answer_body |= {"embeddings": vectors, "response_type": "embeddings_floats"}
    elif types == ["float"]:
        answer_body |= {"embeddings": {"float": vectors}, "response_type": "embeddings_by_type"}
    else:
        raise Rejected("Malformed input request: the demo answers embedding_types ['float'] only")
    return Reply(200, orjson.dumps(answer_body))


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of the text, rounded to float32 (as the real models answer)."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(text.encode() + counter.to_bytes(4, "little")).digest()
        raw += [value / 2**31 - 1.0 for value in struct.unpack("<8I", digest)]
        counter += 1
    norm = math.sqrt(sum(value * value for value in raw[:dimensions])) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in raw[:dimensions]))))


# --- shared --------------------------------------------------------------------------------------------------------


def _event_stream(events: list[bytes], headers: Mapping[str, str],
                  extra_headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """An event-stream answer; `x-demo-stream-exception` replaces everything after the second event."""
    exception = headers.get(STREAM_EXCEPTION_HEADER)
    if exception:
        events = [*events[:2], encode_message(
            {":message-type": "exception", ":exception-type": exception, ":content-type": "application/json"},
            orjson.dumps({"message": f"demo: the stream failed with {exception}"}))]
    return Reply(200, events=tuple(events), headers=(
        ("content-type", EVENTSTREAM), ("x-amzn-requestid", str(uuid.uuid4())), *extra_headers))


def _json_object(body: object) -> dict:
    if body is NOT_JSON or not isinstance(body, dict):
        raise Rejected("Malformed input request, please reformat your input and try again.")
    return body


def _json_or_none(raw: bytes) -> dict | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
