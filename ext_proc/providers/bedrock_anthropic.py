"""OpenAI chat completions <-> Anthropic Claude on Bedrock through InvokeModel (`POST /model/{modelId}/invoke` and
`/invoke-with-response-stream`), with the Anthropic Messages body.

The translation is `anthropic.py`'s, with Bedrock's differences:

- the body carries `anthropic_version: "bedrock-2023-05-31"` and no `model` or `stream` (the model id is in the
  path, streaming is the `-with-response-stream` operation; Bedrock refuses both keys as extraneous);
- `provider_options["bedrock-anthropic"]` is merged into the body (not the `anthropic` object);
- Bedrock does not fetch image or document URLs, so http(s) image URLs and URL documents are refused (base64 works);
- answers are Anthropic `Message` JSON; the stream is AWS event-stream whose `chunk` events carry
  `{"bytes": base64(<one Anthropic stream event as JSON>)}` (plus a padding field), fed to `anthropic.ChatStream`;
  the last event, `message_stop`, also carries `amazon-bedrock-invocationMetrics`, which is not needed;
- errors are AWS errors (`{"message": ...}`, exception name in `x-amzn-errortype`), mapped as in
  `bedrock_converse`, and mid-stream failures arrive as event-stream exception messages.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import orjson

from ..errors import BadRequest
from ..json_types import JsonObject
from . import anthropic
from .bedrock_converse import aws_error_response, aws_stream_error, model_path_segment
from .common import with_provider_options
from .translator import Translator

SCHEMA = "bedrock-anthropic"
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"

FIELDS: dict[str, str] = dict(anthropic.FIELDS)
"""The same rules as the Anthropic translator: `model` goes into the path and `stream` picks the operation;
`provider_options["bedrock-anthropic"]` is the object merged."""
RESERVED_OPTIONS = ("anthropic_version", "model", "max_tokens", "stream")

usage_of = anthropic.usage_of


def chat_path(model: str, stream: bool, backend: object = None) -> str:
    return f"/model/{model_path_segment(model)}/{'invoke-with-response-stream' if stream else 'invoke'}"


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """The Anthropic Messages request for `model`, in InvokeModel's form."""
    _refuse_urls(body)
    request = anthropic.messages_request(body, model, default_max_tokens=default_max_tokens,
                                         dropped=dropped, reasoning=reasoning)
    request.pop("model", None)
    request.pop("stream", None)
    return with_provider_options({"anthropic_version": BEDROCK_ANTHROPIC_VERSION, **request}, body, (SCHEMA,),
                                 RESERVED_OPTIONS)


def _refuse_urls(body: object) -> None:
    messages = body.get("messages") if isinstance(body, dict) else None
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            where = f"messages[{i}].content[{j}]"
            if kind == "anthropic" and ((part.get("anthropic") or {}).get("source") or {}).get("type") == "url":
                raise BadRequest(f"{where}: Bedrock does not fetch document URLs; send the document as base64",
                                 param=where)
            if kind != "image_url":
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                raise BadRequest(f"{where}: Bedrock does not fetch image URLs; send the image as a base64 data URL "
                                 "(data:image/png;base64,...)", param=where)


def chat_response(body: JsonObject, model: str, created: int) -> JsonObject:
    return anthropic.chat_response(body, model, created)


class ChatStream(anthropic.ChatStream):
    """InvokeModelWithResponseStream events -> OpenAI chunks: each `chunk` event's bytes are one Anthropic stream
    event, translated as `anthropic.ChatStream` does; an exception message ends the stream without finishing it."""

    def feed(self, event: str | None, data: bytes) -> list[JsonObject]:
        if self.finished or self._failed:
            return []
        if event and event.startswith("exception:"):
            return self._fail(aws_stream_error(event.partition(":")[2], data))
        if event != "chunk":
            return []  # event types added after this was written
        try:
            encoded = orjson.loads(data)["bytes"]
            inner_event = base64.b64decode(encoded, validate=True)
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error):
            inner_event = b""  # anthropic.ChatStream reports a malformed event
        return anthropic.ChatStream.feed(self, None, inner_event)  # not super(): on 3.11 that builds a proxy per chunk


def error_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, JsonObject]:
    return aws_error_response(status, body, headers)


class BedrockAnthropicTranslator(Translator):
    schemas = (SCHEMA,)
    fields = FIELDS
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
