"""Pieces every translating provider shares: the field-table check, `max_tokens`, data URLs, error dicts, and the
client's per-schema `provider_options`.

Each provider keeps its own tables (which fields it maps, drops or refuses, which values are harmless, why a field is
refused); these functions take them as arguments so the rules read the same everywhere and a fix lands once.

`provider_options` is Babelgate's own top-level field of an OpenAI chat request: an object keyed by backend schema
(`{"gemini": {"safetySettings": [...]}, "bedrock-converse": {"additionalModelRequestFields": {...}}}`). Each
translator merges the objects of its own schema into the body it built, after translation, as a JSON merge patch
(RFC 7386: objects merge key by key, any other value replaces, `null` removes the key), and ignores the other
schemas' objects, so one request can carry settings for every backend of a chain. It is for what Babelgate doesn't
map; the keys the gateway must own (model, stream, the output limit it reserved for) are refused there.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from ..errors import BadRequest, UpstreamError, error_body
from ..json_types import JsonObject

MAPPED = "mapped"
DROPPED = "dropped"
REFUSED = "refused"

OPENAI_CHAT_FIELDS: tuple[str, ...] = (
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options",
)
"""Every top-level field of an OpenAI chat completions request (openai SDK `CompletionCreateParams`)."""

PROVIDER_OPTIONS = "provider_options"
"""Babelgate's top-level request field of per-schema vendor options (see the module docstring)."""

GATEWAY_CHAT_FIELDS: tuple[str, ...] = (PROVIDER_OPTIONS,)
"""Top-level fields Babelgate adds to OpenAI chat requests; FIELDS tables may list them beside OpenAI's."""

OPTION_NAMESPACES: tuple[str, ...] = (
    "openai", "anthropic", "azure-openai", "cohere", "bedrock-converse", "bedrock-anthropic", "gemini",
    "vertex-gemini", "vertex-anthropic",
)
"""The keys `provider_options` may hold: every backend schema (`providers.SCHEMAS`; a test keeps them equal)."""

DROPPED_ASSISTANT_FIELDS: tuple[str, ...] = ("reasoning_content", "thinking_blocks")
"""Keys of past assistant messages that only translators for Claude read (the Anthropic family, and
bedrock-converse for Claude models): `reasoning_content` (the model's reasoning as text) and `thinking_blocks`
(Claude's signed `thinking` / `redacted_thinking` blocks, which only a Claude backend can verify). Every other
translator leaves them out: a model reads no other model's thinking."""

_MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")


def refuse_unsupported(body: object, fields: Mapping[str, str], harmless: Mapping[str, tuple[object, ...]],
                       reasons: Mapping[str, str], translator: str) -> None:
    """Refuse a field `fields` does not list, and a REFUSED field set to anything but None or a harmless value.

    An unknown field is refused rather than ignored so that a new OpenAI field can't be silently lost.
    `translator` names the provider in the messages ("anthropic", "bedrock-converse" ...).
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for field, value in body.items():
        rule = fields.get(field)
        if rule is None:
            raise BadRequest(f"'{field}' is not a chat completions field the {translator} translator knows; "
                             "it is refused rather than ignored", param=field)
        if rule == REFUSED and value is not None and value not in harmless.get(field, ()):
            raise BadRequest(reasons.get(field, f"'{field}' is not supported on {translator} backends"), param=field)


def requested_max_tokens(body: JsonObject) -> tuple[int | None, str]:
    """The requested output limit and the field it came from; `max_completion_tokens` wins over `max_tokens`.

    Returns (None, "") when neither is set. A value that is not a positive integer is refused, naming its field.
    """
    for field in _MAX_TOKENS_FIELDS:
        value = body.get(field)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadRequest(f"'{field}' must be a positive integer", param=field)
            return value, field
    return None, ""


def split_data_url(url: str) -> tuple[str, str] | None:
    """`data:<media type>;base64,<data>` -> (media type, stripped and lower-cased; base64 data).

    None when the URL is not a base64 data URL with data; the media type may be empty, each caller decides.
    Callers word their own error, since what they accept (images only, any file) differs.
    """
    header, comma, data = url.removeprefix("data:").partition(",")
    media_type, _, encoding = header.partition(";")
    if not comma or encoding.strip().lower() != "base64" or not data:
        return None
    return media_type.strip().lower(), data


def error_dict(message: str, type_: str, code: str | int | None, param: str | None = None) -> JsonObject:
    """An OpenAI error body as a dict, built by `errors.error_body` so every error has the same envelope."""
    error: JsonObject = orjson.loads(error_body(message, type_, code, param))
    return error


def gateway_error(message: str) -> JsonObject:
    """The error for an upstream answer the gateway can't make sense of (502 upstream_error)."""
    return error_dict(message, UpstreamError.type, UpstreamError.code)


def function_tools(tools: object, translator: str) -> list[tuple[str, JsonObject, JsonObject]]:
    """(where, tool, function) for each OpenAI function tool, after the checks every provider makes: an array of
    `type: function` tools, each with a non-empty name. Other tool types are refused, naming the tool."""
    if not tools:
        return []
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    found = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise BadRequest(f"{where}: tool type {kind!r} is not supported on {translator} backends; "
                             "only function tools are", param=where)
        function = tool.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.function.name is required", param=f"{where}.function.name")
        found.append((where, tool, function))
    return found


def with_provider_options(request: JsonObject, body: JsonObject, namespaces: tuple[str, ...],
                          reserved: tuple[str, ...] = ()) -> JsonObject:
    """`request` (the translated body) with the client's `provider_options` for `namespaces` merged into it, in
    order, as JSON merge patches; the objects of other schemas are ignored. `reserved` are dotted paths
    (`inferenceConfig.maxTokens`) the gateway owns in this schema's body: an option that sets one is refused.

    A `provider_options` that is not an object of schema -> object, or names no schema, is refused. `request` is
    not modified.
    """
    options = body.get(PROVIDER_OPTIONS)
    if options is None:
        return request
    if not isinstance(options, dict):
        raise BadRequest("'provider_options' must be an object of backend schema -> fields to merge into that "
                         "schema's request", param=PROVIDER_OPTIONS)
    for name, value in options.items():
        if name not in OPTION_NAMESPACES:
            raise BadRequest(f"provider_options.{name} names no backend schema; use one of "
                             f"{', '.join(OPTION_NAMESPACES)}", param=PROVIDER_OPTIONS)
        if not isinstance(value, dict):
            raise BadRequest(f"provider_options.{name} must be an object", param=PROVIDER_OPTIONS)
    for name in namespaces:
        patch = options.get(name)
        if patch is None:
            continue
        for path in reserved:
            if _has_path(patch, path.split(".")):
                raise BadRequest(f"provider_options.{name}.{path} is set by the gateway; use the OpenAI field for "
                                 "it", param=PROVIDER_OPTIONS)
        request = _merge_patch(request, patch)
    return request


def _has_path(value: object, keys: list[str]) -> bool:
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return False
        value = value[key]
    return True


def _merge_patch(target: JsonObject, patch: JsonObject) -> JsonObject:
    """RFC 7386: `patch`'s objects merge into `target`'s key by key, `null` removes a key, anything else replaces.
    Neither argument is modified."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            merged[key] = _merge_patch(current if isinstance(current, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def signed_thinking_blocks(value: object, where: str) -> list[JsonObject]:
    """An assistant message's `thinking_blocks` (the gateway's extension of the OpenAI message), validated, in
    Anthropic's shape: signed thinking blocks and redacted ones, which Claude needs back unchanged on later turns. An
    unsigned block (another model's reasoning) is left out: Claude would refuse it as forged."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}.thinking_blocks must be an array", param=f"{where}.thinking_blocks")
    blocks: list[JsonObject] = []
    for k, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "thinking" and isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str):
            if block["signature"]:
                blocks.append({"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]})
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str) and block["data"]:
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
        else:
            here = f"{where}.thinking_blocks[{k}]"
            raise BadRequest(f"{here} must be {{type: thinking, thinking, signature}} or "
                             "{type: redacted_thinking, data}", param=here)
    return blocks
