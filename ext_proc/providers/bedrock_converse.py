"""OpenAI chat completions <-> Amazon Bedrock Converse (`POST /model/{modelId}/converse` and `/converse-stream`).

Every top-level field of an OpenAI chat request is listed in `FIELDS` with what this translator does with it; a field
that is not listed is refused. The shapes follow the `bedrock-runtime` service model that ships with botocore (the
tests validate every request against it).

Things worth knowing before changing this file:

- The model id goes into the path percent-encoded like botocore does (`:` and `/` included), so foundation model
  ids, cross-region inference profiles (`us.anthropic...`) and ARNs (provisioned models, application inference
  profiles) all work.
- Converse wants user and assistant turns to alternate: consecutive messages of one role are merged, and OpenAI
  `tool` messages become `toolResult` blocks of a user turn. Empty text blocks are refused by Bedrock and left out.
- Converse also refuses a conversation that starts with an assistant turn ("A conversation must start with a user
  message"): a history that opens with the assistant (a greeting, or after an empty user message was left out) gets
  a leading user turn holding only `LEADING_USER_TEXT`, a placeholder that asks nothing, rather than a 400. Nothing
  can be merged instead: there is no earlier user turn, and moving the assistant's words into a user turn would
  change who said them.
- Thinking round trip (Claude models): an answer's `reasoningContent` blocks come back as `reasoning_content` (the
  text) plus the message's `thinking_blocks` (`{type: thinking, thinking, signature}` / `{type: redacted_thinking,
  data}`, the format `anthropic.py` uses, `data` being the base64 of Converse's `redactedContent`); a stream sends
  each block in a delta's `thinking_blocks` when the block stops, signature included. An assistant message's
  `thinking_blocks` go back first in that turn as `reasoningContent` blocks: with thinking on, Claude refuses a
  tool-use turn that does not start with its signed thinking. Other model families get no `thinking_blocks` (no
  model reads another's thinking), and `reasoning_content` alone, without a signature, is never sent back.
- Images are base64 data URLs (sent as the `bytes` blob, base64 in JSON) or `s3://` URLs (`s3Location`); Bedrock
  does not fetch http(s) URLs, so those are refused. `file` parts with a data URL become `document` blocks and
  `input_audio` parts `audio` blocks.
- `cache_control` (Anthropic-style, on parts, messages and tools) and OpenAI's `prompt_cache_breakpoint` become a
  `cachePoint` block right after the block they mark.
- `response_format: json_schema` maps to Converse structured output (`outputConfig.textFormat`, present in the
  botocore model); models without structured output answer 400 themselves. `json_object` has no Converse
  equivalent: it becomes a forced tool named `JSON_TOOL` whose input schema is any object, and the answer's call of
  that tool is turned back into the message text (`finish_reason` "stop"), also when streamed.
- `reasoning_effort` goes into `additionalModelRequestFields`, per model family (recognised in the model id):
  Anthropic Claude `thinking` with a token budget (as `anthropic.py`), Amazon Nova 2 `reasoningConfig` with
  `maxReasoningEffort`, and OpenAI gpt-oss `reasoning_effort`. It only steers how long the model thinks, so what a
  model lacks is dropped rather than refused: models of other families (Nova 1, Llama, Mistral ...) get nothing,
  `xhigh`/`max` get `high`'s setting (no larger one works on every model of the family), and gpt-oss, which always
  reasons, gets `low` for `none`. What is still refused changes the answer: an output limit Nova 2 can't honour at
  `high`, a forced tool or `json_object` with Claude thinking.
- `provider_options["bedrock-converse"]` is merged into the Converse body after translation (`common.
  with_provider_options`), e.g. `additionalModelRequestFields`, `guardrailConfig`, `performanceConfig`;
  `inferenceConfig.maxTokens` stays the gateway's (the limiter reserved for it).
- Converse has no `tool_choice: none` (and needs `toolConfig` whenever the conversation holds tool blocks) and no
  switch for parallel tool calls, so those are refused where they would change the answer.
- Bedrock reports input tokens in three parts (`inputTokens` uncached, cache writes, cache reads); OpenAI's
  `prompt_tokens` is their sum. Converse answers carry no id: one is generated per answer.
- Errors are `{"message": ...}` with the exception name in `x-amzn-errortype` (`error_response` takes the response
  headers when the caller has them, and also reads `__type`/`code` in the body); mid-stream failures arrive as
  event-stream exception messages. Both map to statuses in `_STATUS_BY_EXCEPTION`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson

from ..errors import BadRequest, status_error_type
from ..json_types import JsonObject
from . import bedrock_embeddings
from .common import (
    DROPPED,
    MAPPED,
    REFUSED,
    error_dict,
    refuse_unsupported,
    requested_max_tokens,
    signed_thinking_blocks,
    split_data_url,
    with_provider_options,
)
from .stream import ChatStream as BaseChatStream
from .translator import Translator

SCHEMA = "bedrock-converse"

JSON_TOOL = "babelgate_json_object"
"""The tool forced for `response_format: json_object`; its arguments are the JSON answer."""

LEADING_USER_TEXT = "."
"""The text of the user turn put before a conversation that starts with the assistant (Converse refuses those): a
placeholder that asks the model nothing."""

_RESERVED_OPTIONS = ("inferenceConfig.maxTokens",)

FIELDS: dict[str, str] = {
    "messages": MAPPED,  # system/developer -> `system`; user/assistant/tool -> alternating turns, user first;
    # an assistant's thinking_blocks -> reasoningContent on Claude, dropped elsewhere; its reasoning_content dropped
    "model": MAPPED,  # the backend's model id, in the path
    "stream": MAPPED,  # -> /converse-stream
    "max_completion_tokens": MAPPED,  # -> inferenceConfig.maxTokens (preferred over max_tokens)
    "max_tokens": MAPPED,
    "temperature": MAPPED,  # clamped to 0..1; left out when reasoning forbids it
    "top_p": MAPPED,
    "stop": MAPPED,  # -> inferenceConfig.stopSequences
    "tools": MAPPED,  # function tools -> toolConfig.tools[].toolSpec
    "tool_choice": MAPPED,  # auto / required (any) / named (tool); none only without tool history
    "parallel_tool_calls": MAPPED,  # true is Converse's behaviour; false is refused when tools are given
    "reasoning_effort": MAPPED,  # -> additionalModelRequestFields, per model family
    "response_format": MAPPED,  # json_schema -> outputConfig; json_object -> forced JSON_TOOL
    "service_tier": MAPPED,  # default / flex / priority -> serviceTier; auto -> left out
    "provider_options": MAPPED,  # its "bedrock-converse" object is merged into the Converse body
    "stream_options": DROPPED,  # include_usage is honoured by ChatStream; Converse always reports usage
    "user": DROPPED,  # Converse has no end-user field
    "safety_identifier": DROPPED,
    "presence_penalty": DROPPED,  # no Converse equivalent; a sampling nudge, not a contract
    "frequency_penalty": DROPPED,
    "seed": DROPPED,  # best-effort determinism even on OpenAI
    "store": DROPPED,  # OpenAI-side storage of the completion
    "metadata": DROPPED,  # OpenAI-side tags of stored completions
    "prediction": DROPPED,  # a latency optimisation; the answer is the same without it
    "prompt_cache_key": DROPPED,  # OpenAI cache routing hint; Bedrock caches at cachePoint markers
    "prompt_cache_retention": DROPPED,
    "prompt_cache_options": DROPPED,
    "n": REFUSED,  # one choice only
    "logprobs": REFUSED,
    "top_logprobs": REFUSED,
    "logit_bias": REFUSED,
    "audio": REFUSED,  # text output only
    "modalities": REFUSED,
    "web_search_options": REFUSED,
    "functions": REFUSED,  # deprecated: use tools
    "function_call": REFUSED,  # deprecated: use tool_choice
    "verbosity": REFUSED,  # no Converse equivalent, and it changes the answer
    "moderation": REFUSED,  # OpenAI-side moderation can't run on a Bedrock backend
}

_HARMLESS: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "verbosity": ("medium",),
}

_REFUSAL_REASONS = {
    "functions": "'functions' is deprecated and not supported on bedrock-converse backends; use 'tools'",
    "function_call": "'function_call' is deprecated and not supported on bedrock-converse backends; use "
                     "'tool_choice'",
}

# Claude thinking budget_tokens per reasoning_effort (the same budgets as anthropic.py); Nova 2 and gpt-oss take
# an effort level. xhigh and max get high's: a larger budget fails on Claude models with a 32k output limit.
_THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576, "max": 24576}
_EFFORT_LEVELS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                  "xhigh": "high", "max": "high"}

_SERVICE_TIERS = {"default": "default", "flex": "flex", "priority": "priority"}

_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html", "text/plain": "txt", "text/markdown": "md",
}
_AUDIO_FORMATS = {"wav": "wav", "mp3": "mp3"}

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
}

_STATUS_BY_EXCEPTION = {
    "validationexception": 400,
    "accessdeniedexception": 403,
    "unrecognizedclientexception": 401,
    "invalidsignatureexception": 401,
    "incompletesignatureexception": 401,
    "missingauthenticationtokenexception": 401,
    "expiredtokenexception": 401,
    "resourcenotfoundexception": 404,
    "throttlingexception": 429,
    "servicequotaexceededexception": 429,
    "modelnotreadyexception": 503,
    "serviceunavailableexception": 503,
    "modeltimeoutexception": 504,
    "internalserverexception": 500,
    "modelerrorexception": 502,
    "modelstreamerrorexception": 502,
}
# Without an exception name: Bedrock answers 408 only for model timeouts and 424 only for model errors.
_STATUS_BY_STATUS = {408: 504, 424: 502}


def chat_path(model: str, stream: bool, backend: object = None) -> str:
    return f"/model/{model_path_segment(model)}/{'converse-stream' if stream else 'converse'}"


def model_path_segment(model: str) -> str:
    """The model id as botocore puts it in the path: every reserved character (`:` and `/` too) percent-encoded."""
    return quote(model, safe="")


embeddings_path = bedrock_embeddings.embeddings_path
embeddings_request = bedrock_embeddings.embeddings_request
embeddings_response = bedrock_embeddings.embeddings_response


def model_family(model: str) -> str:
    """`claude`, `nova2`, `gpt-oss` or `other`, from a model id, inference profile id or ARN."""
    if "anthropic.claude" in model:
        return "claude"
    if "amazon.nova-2" in model:
        return "nova2"
    if "openai.gpt-oss" in model:
        return "gpt-oss"
    return "other"


# --- request -------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Reasoning:
    """What reasoning adds to the request, and which other settings it rules out."""

    fields: JsonObject = field(default_factory=dict)  # -> additionalModelRequestFields
    budget: int = 0  # Claude thinking tokens: maxTokens must stay above them
    temperature: bool = True  # temperature may be sent
    top_p: bool = True
    max_tokens: bool = True
    forced_tools: bool = True  # toolChoice any/tool allowed


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """Translate an OpenAI chat request into a Converse request body (the model id travels in the path). What a
    model lacks (reasoning, sampling with reasoning on) is appended to `dropped`; `reasoning` (a configured style)
    is not read: the model family decides."""
    refuse_unsupported(body, FIELDS, _HARMLESS, _REFUSAL_REASONS, "bedrock-converse")
    system, messages = _conversation(body.get("messages"), model_family(model) == "claude")
    request: JsonObject = {"messages": messages}
    if system:
        request["system"] = system

    thinking = _reasoning(body.get("reasoning_effort"), model_family(model))
    inference = _inference_config(body, thinking, default_max_tokens)
    if inference:
        request["inferenceConfig"] = inference

    tool_config = _tool_config(body, messages, thinking)
    json_tool = _json_object_tool(body.get("response_format"), tool_config, thinking)
    if json_tool is not None:
        tool_config = json_tool
    if tool_config is not None:
        request["toolConfig"] = tool_config
    output_config = _output_config(body.get("response_format"))
    if output_config is not None:
        request["outputConfig"] = output_config
    if thinking.fields:
        request["additionalModelRequestFields"] = thinking.fields
    if dropped is not None:
        _name_dropped(dropped, body, thinking, inference)

    tier = body.get("service_tier")
    if tier is not None and tier != "auto":
        if tier not in _SERVICE_TIERS:
            raise BadRequest(f"service_tier {tier!r} has no Bedrock counterpart; use auto, default, flex or priority",
                             param="service_tier")
        request["serviceTier"] = {"type": _SERVICE_TIERS[tier]}
    return with_provider_options(request, body, (SCHEMA,), _RESERVED_OPTIONS)


def _name_dropped(dropped: list[str], body: JsonObject, thinking: _Reasoning, inference: JsonObject) -> None:
    """The fields this model left out: an effort it has no setting for, sampling that reasoning rules out."""
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none" and not thinking.fields:
        dropped.append("reasoning_effort")
    for name, sent in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(name) is not None and sent not in inference:
            dropped.append(name)


def _reasoning(effort: object, family: str) -> _Reasoning:
    if effort is None:
        return _Reasoning()
    if not isinstance(effort, str) or effort not in _EFFORT_LEVELS:
        raise BadRequest(f"reasoning_effort {effort!r} is not supported on bedrock-converse backends; use none, "
                         "minimal, low, medium, high, xhigh or max", param="reasoning_effort")
    if family == "claude":
        if effort == "none":
            return _Reasoning()  # Claude thinks only when asked
        budget = _THINKING_BUDGETS[effort]
        # Like anthropic.py: with thinking on, Claude accepts only the default temperature and no forced tool.
        return _Reasoning({"thinking": {"type": "enabled", "budget_tokens": budget}}, budget, temperature=False,
                          forced_tools=False)
    if family == "nova2":
        if effort == "none":
            return _Reasoning()  # extended thinking is off by default
        level = _EFFORT_LEVELS[effort]
        config = {"reasoningConfig": {"type": "enabled", "maxReasoningEffort": level}}
        # At "high", Nova 2 decides the output length itself and takes no temperature, topP or maxTokens.
        low_or_medium = level != "high"
        return _Reasoning(config, temperature=low_or_medium, top_p=low_or_medium, max_tokens=low_or_medium)
    if family == "gpt-oss":
        return _Reasoning({"reasoning_effort": _EFFORT_LEVELS[effort]})  # it always reasons: none -> low
    return _Reasoning()  # no known reasoning setting: the effort only steers, so it is dropped


def _inference_config(body: JsonObject, reasoning: _Reasoning, default_max_tokens: int) -> JsonObject:
    config: JsonObject = {}
    max_tokens, max_field = requested_max_tokens(body)
    if max_tokens is not None and not reasoning.max_tokens:
        raise BadRequest(f"'{max_field}' can't be combined with reasoning_effort 'high' on Amazon Nova 2 models, "
                         "which choose their output length themselves", param=max_field)
    if reasoning.max_tokens:
        # Without the client's limit, the one the limiter reserved (Bedrock's default is the model's maximum).
        max_tokens = max_tokens or default_max_tokens
    if reasoning.budget and max_tokens is not None and max_tokens <= reasoning.budget:
        # Thinking counts against maxTokens and must stay below it: keep the room the client asked for.
        max_tokens += reasoning.budget
    if max_tokens is not None:
        config["maxTokens"] = max_tokens

    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or isinstance(temperature, bool)):
        raise BadRequest("'temperature' must be a number", param="temperature")
    if temperature is not None and reasoning.temperature:
        # OpenAI accepts 0..2, Converse 0..1: both ends mean "most random", so values above 1 are clamped.
        config["temperature"] = min(float(temperature), 1.0)
    top_p = body.get("top_p")
    if top_p is not None:
        if not isinstance(top_p, int | float) or isinstance(top_p, bool) or not 0 <= top_p <= 1:
            raise BadRequest("'top_p' must be a number from 0 to 1", param="top_p")
        if reasoning.top_p:
            config["topP"] = float(top_p)
    stop = body.get("stop")
    if stop:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(item, str) for item in stops):
            raise BadRequest("'stop' must be a string or an array of strings", param="stop")
        if any(stops):
            config["stopSequences"] = [item for item in stops if item]
    return config


def _conversation(messages: object, claude: bool) -> tuple[list[JsonObject], list[JsonObject]]:
    """Split OpenAI messages into Converse `system` blocks and alternating user/assistant turns; `claude` keeps the
    assistants' signed thinking."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    system: list[JsonObject] = []
    turns: list[JsonObject] = []
    for i, message in enumerate(messages):
        role, blocks = _message_blocks(message, f"messages[{i}]", claude)
        if role == "system":
            system.extend(blocks)
        elif not blocks:
            continue
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise BadRequest("'messages' holds no user or assistant content for bedrock-converse backends",
                         param="messages")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"text": LEADING_USER_TEXT}]})
    return system, turns


def _message_blocks(message: object, where: str, claude: bool) -> tuple[str, list[JsonObject]]:
    """One OpenAI message -> (Converse role, or "system"; its content blocks, cachePoints included)."""
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if role in ("system", "developer"):
        role, blocks = "system", _content_blocks(message.get("content"), where, ("text",))
    elif role == "user":
        blocks = _content_blocks(message.get("content"), where, ("text", "image_url", "file", "input_audio"))
    elif role == "assistant":
        blocks = _assistant_blocks(message, where, claude)
    elif role == "tool":
        role, blocks = "user", [_tool_result(message, where)]
    elif role == "function":
        raise BadRequest(f"{where}: 'function' messages are deprecated and not supported on bedrock-converse "
                         "backends; use tool messages", param=where)
    else:
        raise BadRequest(f"{where} has an unknown role {role!r}", param=f"{where}.role")
    # `name` has no Converse equivalent and is left out.
    if blocks and message.get("cache_control") is not None and "cachePoint" not in blocks[-1]:
        blocks.append(_cache_point(message["cache_control"], where))
    return role, blocks


def _content_blocks(content: object, where: str, allowed: tuple[str, ...]) -> list[JsonObject]:
    """Message content (a string or an array of parts) -> Converse blocks; `allowed` are the part types accepted."""
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []  # Bedrock refuses blank text blocks
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    blocks: list[JsonObject] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise BadRequest(f"{here}: content part type {kind!r} is not supported here on bedrock-converse "
                             "backends", param=here)
        if kind == "image_url":
            block: JsonObject | None = _image_block(part, here)
        elif kind == "file":
            block = _document_block(part, here)
        elif kind == "input_audio":
            block = _audio_block(part, here)
        else:
            text = part.get(kind)  # a text part's `text`, or a past assistant `refusal` (plain text to the model)
            if not isinstance(text, str):
                raise BadRequest(f"{here}.{kind} must be a string", param=f"{here}.{kind}")
            block = {"text": text} if text else None
        if block is not None:
            blocks.append(block)
            marker = part.get("cache_control")
            if marker is None and part.get("prompt_cache_breakpoint") is not None:
                marker = {"type": "ephemeral"}  # OpenAI's explicit breakpoint; its ttl has no Bedrock value
            if marker is not None:
                blocks.append(_cache_point(marker, here))
    return blocks


def _cache_point(marker: object, where: str) -> JsonObject:
    if not isinstance(marker, dict):
        raise BadRequest(f"{where}.cache_control must be an object", param=f"{where}.cache_control")
    point: JsonObject = {"type": "default"}
    ttl = marker.get("ttl")
    if ttl is not None:
        if ttl not in ("5m", "1h"):
            raise BadRequest(f"{where}.cache_control.ttl must be '5m' or '1h' on Bedrock",
                             param=f"{where}.cache_control")
        point["ttl"] = ttl
    return {"cachePoint": point}


def _data_url(url: str, where: str) -> tuple[str, str]:
    """`data:<media type>;base64,<data>` -> (media type, base64 data)."""
    parsed = split_data_url(url)
    if parsed is None:
        raise BadRequest(f"{where}: a data URL must look like data:<media type>;base64,<data>", param=where)
    return parsed


def _image_block(part: JsonObject, where: str) -> JsonObject:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise BadRequest(f"{where}: image_url.url must be a string", param=where)
    if url.startswith("data:"):
        media_type, data = _data_url(url, where)
        image_format = _IMAGE_FORMATS.get(media_type)
        if image_format is None:
            raise BadRequest(f"{where}: image type {media_type!r} is not supported on bedrock-converse backends; "
                             "use png, jpeg, gif or webp", param=where)
        source: JsonObject = {"bytes": data}  # a blob: base64 in the JSON body
    elif url.startswith("s3://"):
        image_format = _IMAGE_FORMATS.get("image/" + url.rpartition(".")[2].lower())
        if image_format is None:
            raise BadRequest(f"{where}: an s3:// image URL must end in .png, .jpeg, .jpg, .gif or .webp",
                             param=where)
        source = {"s3Location": {"uri": url}}
    else:
        raise BadRequest(f"{where}: Bedrock does not fetch image URLs; send the image as a base64 data URL "
                         "(data:image/png;base64,...) or an s3:// URL", param=where)
    # image_url.detail has no Converse equivalent and is left out.
    return {"image": {"format": image_format, "source": source}}


def _document_block(part: JsonObject, where: str) -> JsonObject:
    file = part.get("file")
    if not isinstance(file, dict) or not isinstance(file.get("file_data"), str):
        raise BadRequest(f"{where}: bedrock-converse backends take files as file.file_data data URLs; uploaded "
                         "file ids can't be read", param=where)
    media_type, data = _data_url(file["file_data"], where)
    document_format = _DOCUMENT_FORMATS.get(media_type)
    if document_format is None:
        raise BadRequest(f"{where}: document type {media_type!r} is not supported on bedrock-converse backends; "
                         f"use one of {', '.join(sorted(_DOCUMENT_FORMATS))}", param=where)
    return {"document": {"format": document_format, "name": _document_name(file.get("filename")),
                         "source": {"bytes": data}}}


def _document_name(filename: object) -> str:
    """The file name without its extension, in the characters Bedrock allows in a document name (letters, digits,
    single spaces, hyphens, parentheses and square brackets)."""
    stem = (filename.rpartition(".")[0] or filename) if isinstance(filename, str) else ""
    cleaned = "".join(char if char.isalnum() or char in " -()[]" else "-" for char in stem)
    return " ".join(cleaned.split())[:200] or "document"


def _audio_block(part: JsonObject, where: str) -> JsonObject:
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"]:
        raise BadRequest(f"{where}: input_audio needs base64 data", param=where)
    audio_format = _AUDIO_FORMATS.get(str(audio.get("format")))
    if audio_format is None:
        raise BadRequest(f"{where}: input_audio.format must be wav or mp3", param=where)
    return {"audio": {"format": audio_format, "source": {"bytes": audio["data"]}}}


def _assistant_blocks(message: JsonObject, where: str, claude: bool) -> list[JsonObject]:
    for name in ("audio", "function_call"):
        if message.get(name) is not None:
            raise BadRequest(f"{where}.{name} is not supported on bedrock-converse backends", param=f"{where}.{name}")
    blocks = ([_reasoning_block(block) for block in signed_thinking_blocks(message.get("thinking_blocks"), where)]
              if claude else [])
    blocks += _content_blocks(message.get("content"), where, ("text", "refusal"))
    if message.get("refusal"):
        blocks.append({"text": message["refusal"]})
    for k, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{k}]"))
    return blocks


def _reasoning_block(block: JsonObject) -> JsonObject:
    """A Claude thinking block -> Converse `reasoningContent`, signature and all."""
    if block["type"] == "redacted_thinking":
        return {"reasoningContent": {"redactedContent": block["data"]}}  # a blob: base64 in JSON
    return {"reasoningContent": {"reasoningText": {"text": block["thinking"], "signature": block["signature"]}}}


def _tool_use(call: object, where: str) -> JsonObject:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise BadRequest(f"{where}: only function tool calls are supported on bedrock-converse backends", param=where)
    function = call.get("function") or {}
    try:
        tool_input = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        raise BadRequest(f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments") from None
    if not isinstance(tool_input, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments")
    if not call.get("id") or not function.get("name"):
        raise BadRequest(f"{where} needs an id and a function name", param=where)
    return {"toolUse": {"toolUseId": call["id"], "name": function["name"], "input": tool_input}}


def _tool_result(message: JsonObject, where: str) -> JsonObject:
    tool_call_id = message.get("tool_call_id")
    if not tool_call_id:
        raise BadRequest(f"{where}: a tool message needs a tool_call_id", param=f"{where}.tool_call_id")
    blocks = _content_blocks(message.get("content"), where, ("text",))
    return {"toolResult": {"toolUseId": tool_call_id, "content": [b for b in blocks if "text" in b]}}


def _tool_config(body: JsonObject, messages: list[JsonObject], reasoning: _Reasoning) -> JsonObject | None:
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    has_history = any("toolUse" in block or "toolResult" in block for turn in messages for block in turn["content"])
    if not tools:
        if has_history:
            raise BadRequest("this conversation holds tool calls or results, and Bedrock Converse needs the 'tools' "
                             "they used defined in the request", param="tools")
        return None
    if body.get("parallel_tool_calls") is False:
        raise BadRequest("parallel_tool_calls false can't be honoured on bedrock-converse backends: Converse has no "
                         "switch for it", param="parallel_tool_calls")
    mapped: JsonObject | None = None
    if choice is None or choice == "auto":
        mapped = {"auto": {}}
    elif choice == "required":
        mapped = {"any": {}}
    elif choice == "none":
        if has_history:
            raise BadRequest("tool_choice 'none' can't be honoured on bedrock-converse backends while the "
                             "conversation holds tool calls (Converse needs the tools then and has no 'none')",
                             param="tool_choice")
        return None  # without the tools, no tool can be called
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in {tool["toolSpec"]["name"] for tool in tools if "toolSpec" in tool}:
            raise BadRequest(f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice")
        mapped = {"tool": {"name": name}}
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tools, mapped = _allowed_tools(choice, tools)
    else:
        raise BadRequest("tool_choice must be 'auto', 'required', 'none', a function or allowed_tools on "
                         "bedrock-converse backends", param="tool_choice")
    if not reasoning.forced_tools and ("any" in mapped or "tool" in mapped):
        raise BadRequest("Claude can't be forced to call a tool while reasoning_effort enables thinking; use "
                         "tool_choice 'auto'", param="tool_choice")
    return {"tools": tools, "toolChoice": mapped}


def _allowed_tools(choice: JsonObject, tools: list[JsonObject]) -> tuple[list[JsonObject], JsonObject]:
    allowed = choice.get("allowed_tools") or {}
    names = set()
    for entry in allowed.get("tools") or ():
        if not isinstance(entry, dict) or entry.get("type") != "function":
            raise BadRequest("tool_choice.allowed_tools may only name function tools on bedrock-converse backends",
                             param="tool_choice")
        names.add((entry.get("function") or {}).get("name"))
    kept: list[JsonObject] = []
    keeping = False
    for tool in tools:
        if "toolSpec" in tool:
            keeping = tool["toolSpec"]["name"] in names
        if keeping:
            kept.append(tool)  # a tool and the cache point that follows it
    if not any("toolSpec" in tool for tool in kept):
        raise BadRequest("tool_choice.allowed_tools names none of the tools in 'tools'", param="tool_choice")
    return kept, {"any": {}} if allowed.get("mode") == "required" else {"auto": {}}


def _tools(tools: object) -> list[JsonObject]:
    if not tools:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    result: list[JsonObject] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"{where}: tool type {kind!r} is not supported on bedrock-converse backends; only "
                             "function tools are", param=where)
        function = tool.get("function") or {}
        name = function.get("name")
        if not name:
            raise BadRequest(f"{where}.function.name is required", param=f"{where}.function.name")
        if name == JSON_TOOL:
            raise BadRequest(f"{where}: the tool name {JSON_TOOL!r} is reserved by the gateway", param=where)
        spec: JsonObject = {"name": name}
        if function.get("description"):
            spec["description"] = function["description"]
        spec["inputSchema"] = {"json": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("strict"):
            spec["strict"] = True
        result.append({"toolSpec": spec})
        if tool.get("cache_control") is not None:
            result.append(_cache_point(tool["cache_control"], where))
    return result


def _json_object_tool(response_format: object, tool_config: JsonObject | None,
                      reasoning: _Reasoning) -> JsonObject | None:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_object":
        return None
    if tool_config is not None:
        raise BadRequest("response_format json_object can't be combined with tools on bedrock-converse backends "
                         "(it is implemented as a forced tool call); use json_schema", param="response_format")
    if not reasoning.forced_tools:
        raise BadRequest("response_format json_object can't be combined with Claude thinking on bedrock-converse "
                         "backends (it is implemented as a forced tool call); use json_schema",
                         param="response_format")
    spec = {"name": JSON_TOOL, "description": "Answer with a JSON object.", "inputSchema": {"json": {
        "type": "object"}}}
    return {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": JSON_TOOL}}}


def _output_config(response_format: object) -> JsonObject | None:
    if response_format is None:
        return None
    given: JsonObject = response_format if isinstance(response_format, dict) else {}
    kind = given.get("type")
    if kind in ("text", "json_object"):
        return None
    if kind != "json_schema":
        raise BadRequest("response_format must be text, json_object or json_schema", param="response_format")
    definition = given.get("json_schema")
    if not isinstance(definition, dict) or not isinstance(definition.get("schema"), dict):
        raise BadRequest("response_format.json_schema needs a 'schema' object on bedrock-converse backends",
                         param="response_format")
    schema: JsonObject = {"schema": orjson.dumps(definition["schema"]).decode()}
    for key in ("name", "description"):
        if isinstance(definition.get(key), str) and definition[key]:
            schema[key] = definition[key]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}


# --- response ------------------------------------------------------------------------------------------------------


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    """Translate a Converse answer into an OpenAI `chat.completion`."""
    text: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[JsonObject] = []
    tool_calls: list[JsonObject] = []
    json_answer = False
    for block in ((body.get("output") or {}).get("message") or {}).get("content") or ():
        if "text" in block:
            text.append(block["text"] or "")
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            if use.get("name") == JSON_TOOL:
                text.append(arguments)
                json_answer = True
            else:
                tool_calls.append({"id": use["toolUseId"], "type": "function",
                                   "function": {"name": use["name"], "arguments": arguments}})
        elif "reasoningContent" in block:
            thinking = _thinking_block(block["reasoningContent"] or {})
            if thinking is not None:
                thinking_blocks.append(thinking)
            reasoning.append(((block["reasoningContent"] or {}).get("reasoningText") or {}).get("text") or "")
        elif "citationsContent" in block:
            text.extend(part.get("text") or "" for part in block["citationsContent"].get("content") or ())
        # images and documents in an answer have no OpenAI chat form.
    message: JsonObject = {"role": "assistant", "content": "".join(text) if text or not tool_calls else None,
                     "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        message["thinking_blocks"] = thinking_blocks
    finish_reason = _finish_reason(body.get("stopReason"))
    if json_answer and not tool_calls and finish_reason == "tool_calls":
        finish_reason = "stop"
    completion = {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
    }
    tier = _service_tier(body.get("serviceTier"))
    if tier is not None:
        completion["service_tier"] = tier
    usage = usage_of(body)
    if usage is not None:
        completion["usage"] = usage
    return completion


def _thinking_block(content: JsonObject) -> JsonObject | None:
    """A Converse `reasoningContent` -> an OpenAI-side thinking block, when it is signed (or redacted): Claude's, which
    it takes back later; unsigned reasoning (other models) only reads as `reasoning_content`."""
    text = content.get("reasoningText")
    if isinstance(text, dict) and isinstance(text.get("signature"), str) and text["signature"]:
        return {"type": "thinking", "thinking": text.get("text") or "", "signature": text["signature"]}
    redacted = content.get("redactedContent")
    if isinstance(redacted, str) and redacted:
        return {"type": "redacted_thinking", "data": redacted}
    return None


def usage_of(response: JsonObject) -> JsonObject | None:
    usage = response.get("usage")
    return openai_usage(usage) if isinstance(usage, dict) else None


def openai_usage(usage: JsonObject) -> JsonObject:
    """Bedrock `TokenUsage` (uncached input, cache writes and reads reported apart) -> OpenAI usage."""
    cache_write = usage.get("cacheWriteInputTokens") or 0
    cache_read = usage.get("cacheReadInputTokens") or 0
    prompt = (usage.get("inputTokens") or 0) + cache_write + cache_read
    completion = usage.get("outputTokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }


def _finish_reason(stop_reason: object) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _service_tier(tier: object) -> str | None:
    kind = tier.get("type") if isinstance(tier, dict) else None
    return kind if kind in _SERVICE_TIERS else None


def _completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


# --- streaming -----------------------------------------------------------------------------------------------------


class ChatStream(BaseChatStream):
    """ConverseStream events (event-stream `:event-type` + JSON payload) -> OpenAI `chat.completion.chunk` dicts.

    Bedrock sends `messageStop` (the stop reason) and then `metadata` (usage): the finish chunk goes out at
    `messageStop`, the usage chunk (when asked for) at `metadata`, and the stream counts as finished once both came.
    A stream that ends after `messageStop` without `metadata` has still said everything; an exception message ends
    it without finishing it.
    """

    provider = "bedrock"
    end_marker = "messageStop"

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        super().__init__(model, created, include_usage)
        self._id = _completion_id()
        self._tool_index: dict[int, int] = {}  # Converse content block index -> OpenAI tool call index
        self._json_blocks: set[int] = set()  # blocks of the forced JSON_TOOL: their input is the answer text
        self._silent: set[int] = set()  # tool blocks that have not streamed any input yet
        self._thinking: dict[int, list[str]] = {}  # reasoning blocks: their text pieces, then the signature last
        self._stopped = False
        self._metadata = False

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed:
            return []
        if event and event.startswith("exception:"):
            return self._fail(aws_stream_error(event.partition(":")[2], data))
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self._malformed()
        match event:
            case "messageStart":
                return [self._chunk({"role": "assistant", "content": ""})]
            case "contentBlockStart":
                return self._block_start(payload.get("contentBlockIndex", 0), payload.get("start") or {})
            case "contentBlockDelta":
                return self._block_delta(payload.get("contentBlockIndex", 0), payload.get("delta") or {})
            case "contentBlockStop":
                return self._block_stop(payload.get("contentBlockIndex", 0))
            case "messageStop":
                return self._message_stop(payload.get("stopReason"))
            case "metadata":
                if isinstance(payload.get("usage"), dict):
                    self.usage = openai_usage(payload["usage"])
                self._metadata = True
                return self._end() if self._stopped else []
            case _:
                return []  # event types added after this was written

    def _last_chunks(self) -> list[JsonObject] | None:
        return [] if self._stopped else None  # metadata (usage) missing: the answer itself is complete

    def _block_start(self, index: int, start: JsonObject) -> list[JsonObject]:
        use = start.get("toolUse")
        if not isinstance(use, dict):
            return []
        self._silent.add(index)
        if use.get("name") == JSON_TOOL:
            self._json_blocks.add(index)
            return []
        position = self._tool_index[index] = len(self._tool_index)
        return [self._chunk({"tool_calls": [{"index": position, "id": use.get("toolUseId"), "type": "function",
                                             "function": {"name": use.get("name"), "arguments": ""}}]})]

    def _block_delta(self, index: int, delta: JsonObject) -> list[JsonObject]:
        if isinstance(delta.get("text"), str) and delta["text"]:
            return [self._chunk({"content": delta["text"]})]
        use = delta.get("toolUse")
        if isinstance(use, dict) and isinstance(use.get("input"), str) and use["input"]:
            self._silent.discard(index)
            if index in self._json_blocks:
                return [self._chunk({"content": use["input"]})]
            if index in self._tool_index:
                fragment = {"index": self._tool_index[index], "function": {"arguments": use["input"]}}
                return [self._chunk({"tool_calls": [fragment]})]
            return []
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            return self._reasoning_delta(index, reasoning)
        return []  # citations have no OpenAI form

    def _reasoning_delta(self, index: int, reasoning: JsonObject) -> list[JsonObject]:
        """Text goes out as it comes; the signature is kept for the block's `thinking_blocks` entry at its stop, and
        redacted reasoning (whole in one delta) goes out as a block at once."""
        pieces = self._thinking.setdefault(index, [""])
        if isinstance(reasoning.get("signature"), str):
            pieces[-1] = reasoning["signature"]
        redacted = reasoning.get("redactedContent")
        if isinstance(redacted, str) and redacted:
            del self._thinking[index]
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": redacted}]})]
        if isinstance(reasoning.get("text"), str) and reasoning["text"]:
            pieces.insert(-1, reasoning["text"])
            return [self._chunk({"reasoning_content": reasoning["text"]})]
        return []

    def _block_stop(self, index: int) -> list[JsonObject]:
        pieces = self._thinking.pop(index, None)
        if pieces is not None and pieces[-1]:
            block = {"type": "thinking", "thinking": "".join(pieces[:-1]), "signature": pieces[-1]}
            return [self._chunk({"thinking_blocks": [block]})]
        if index not in self._silent:
            return []
        # A tool called without arguments streams none; OpenAI clients parse the joined fragments, so send "{}".
        self._silent.discard(index)
        if index in self._json_blocks:
            return [self._chunk({"content": "{}"})]
        fragment = {"index": self._tool_index[index], "function": {"arguments": "{}"}}
        return [self._chunk({"tool_calls": [fragment]})]

    def _message_stop(self, stop_reason: object) -> list[JsonObject]:
        self._stopped = True
        finish_reason = _finish_reason(stop_reason)
        if finish_reason == "tool_calls" and self._json_blocks and not self._tool_index:
            finish_reason = "stop"
        chunks = [self._chunk({}, finish_reason)]
        if self._metadata:
            chunks += self._end()
        return chunks

    def _end(self) -> list[JsonObject]:
        self.finished = True
        return self._usage_chunks()


# --- errors (shared with bedrock_anthropic) -------------------------------------------------------------------------


def error_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, JsonObject]:
    """A Bedrock error answer -> (status for the client, OpenAI error)."""
    return aws_error_response(status, body, headers)


def aws_error_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, JsonObject]:
    """`{"message": ...}` with the exception name in `x-amzn-errortype` (or `__type`/`code` in the body) -> the
    client status (by exception name when known, else by HTTP status) and an OpenAI error whose `code` is the
    exception name. A body that is not an AWS error is not echoed (it could hold anything)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    payload = payload if isinstance(payload, dict) else {}
    kind = _exception_name((headers or {}).get("x-amzn-errortype") or payload.get("__type") or payload.get("code"))
    client_status = _STATUS_BY_EXCEPTION.get(kind.lower()) if kind else None
    if client_status is None:
        client_status = _STATUS_BY_STATUS.get(status, status if status < 500 or status in (500, 502, 503, 504)
                                              else 502)
    message = payload.get("message") or payload.get("Message")
    if not isinstance(message, str) or not message:
        message = (f"the bedrock backend answered HTTP {status} ({kind})" if kind
                   else f"the bedrock backend answered HTTP {status} with a body that is not an AWS error")
    return client_status, error_dict(message, status_error_type(client_status), kind)


def aws_stream_error(exception_type: str, data: bytes) -> JsonObject:
    """An event-stream exception message (`throttlingException`, `modelStreamErrorException`, ...) -> OpenAI error."""
    kind = _exception_name(exception_type) or "InternalServerException"
    status = _STATUS_BY_EXCEPTION.get(kind.lower(), 502)
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, str) or not message:
        message = f"the bedrock stream failed with {kind}"
    return error_dict(message, status_error_type(status), kind)


def _exception_name(value: object) -> str | None:
    """`ThrottlingException:http://internal.amazon.com/...`, `com.amazon.coral#ThrottlingException` or the stream's
    `throttlingException` -> `ThrottlingException`."""
    if not isinstance(value, str) or not value:
        return None
    name = value.partition(":")[0].rpartition("#")[2].strip()
    return name[:1].upper() + name[1:] if name else None


class BedrockConverseTranslator(Translator):
    schemas = (SCHEMA,)
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
