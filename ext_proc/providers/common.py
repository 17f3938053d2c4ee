"""Pieces every translating provider shares: the field-table check, `max_tokens`, data URLs and error dicts.

Each provider keeps its own tables (which fields it maps, drops or refuses, which values are harmless, why a field is
refused); these functions take them as arguments so the rules read the same everywhere and a fix lands once.
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
