"""Whole (buffered) answers back to the client: a provider's JSON answer or error in OpenAI's form, re-encoded for
Anthropic Messages clients, embeddings in base64 when the client asked, and never a credential the provider quoted.
An Anthropic-family backend's answer to an Anthropic client is not translated (`untranslated`: read for usage and
guardrails only), and a count is answered in Anthropic's `{"input_tokens": N}` (`count_reply`).

Streamed answers are `stream_relay.py`'s.
"""

from __future__ import annotations

import base64
import logging
import struct
import time
from collections.abc import Mapping

import orjson

from ..auth.credentials import StaticCredential
from ..client_formats import anthropic_messages
from ..errors import UpstreamError, anthropic_error_from_openai
from ..json_types import JsonObject
from ..providers import anthropic, anthropic_passthrough
from ..runtime.build import BackendInfo
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages
from .endpoints import ANTHROPIC_STYLE, Endpoint

log = logging.getLogger(__name__)


def translated(backend: BackendInfo, model: str, endpoint: Endpoint, raw: bytes, base64_embeddings: bool,
               request_id: str) -> JsonObject:
    """A successful answer in OpenAI's form. Raises `UpstreamError` (a 502) for one the gateway can't read."""
    try:
        answer = orjson.loads(raw)
        if endpoint is Endpoint.EMBEDDINGS:
            listing = backend.translator.embeddings_response(answer, model)
            if base64_embeddings:
                encode_embeddings_base64(listing)
            return listing
        return backend.translator.chat_response(answer, model, int(time.time()))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        # Not JSON is the provider's doing; anything else is a translator that met an answer it didn't expect,
        # a bug to see in the log with its traceback and the request it happened to.
        if isinstance(exc, orjson.JSONDecodeError):
            log.warning("backend %r answered request %s with a body that is not JSON", backend.id, request_id or "-")
        else:
            log.exception("the %s translator failed on backend %r's answer to request %s", backend.schema,
                          backend.id, request_id or "-")
        raise UpstreamError(f"Backend {backend.id!r} sent an answer the gateway could not read: "
                            f"{type(exc).__name__}.") from None


def client_answer(answer: JsonObject, model: str, endpoint: Endpoint) -> JsonObject:
    """The OpenAI answer in the client's format."""
    if endpoint is Endpoint.MESSAGES:
        return anthropic_messages.from_openai(answer, model)
    return answer


def untranslated(backend: BackendInfo, raw: bytes, request_id: str) -> JsonObject:
    """An Anthropic-family backend's Message, parsed to meter and check it (the client gets it as it came).
    Raises `UpstreamError` (a 502) for one that is not a JSON object."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        log.warning("backend %r answered request %s with a body that is not a JSON object", backend.id,
                    request_id or "-")
        raise UpstreamError(f"Backend {backend.id!r} sent an answer the gateway could not read.")
    return answer


def metered(answer: JsonObject) -> JsonObject:
    """What the usage meter reads of an Anthropic Message, in the OpenAI form it reads: usage and text."""
    content = answer.get("content")
    text = "".join(block["text"] for block in content if isinstance(block, dict) and block.get("type") == "text"
                   and isinstance(block.get("text"), str)) if isinstance(content, list) else ""
    return {"usage": anthropic.usage_of(answer), "choices": [{"message": {"content": text}}]}


def count_reply(backend: BackendInfo, raw: bytes, request_id: str) -> ProcessingResponse:
    """A backend's token count as Anthropic's `{"input_tokens": N}`."""
    try:
        return json_reply(anthropic_passthrough.count_answer(backend.schema, orjson.loads(raw)))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        log.warning("backend %r answered count_tokens request %s with no count the gateway could read", backend.id,
                    request_id or "-")
        error = UpstreamError(f"Backend {backend.id!r} sent a token count the gateway could not read.")
        return json_reply(orjson.loads(error.body("anthropic")), error.status)


def error_reply(backend: BackendInfo, status: int, raw: bytes, headers: Mapping[str, str],
                endpoint: Endpoint) -> ProcessingResponse:
    """A provider's error in the client's format, with the status the client should see (rewritten only when it
    differs from the provider's)."""
    client_status, error = backend.translator.error_response(status, raw, headers)
    error = without_secrets(error, backend)
    if endpoint in ANTHROPIC_STYLE:
        error = anthropic_error_from_openai(client_status, error)
    return json_reply(error, client_status if client_status != status else None)


def without_secrets(error: JsonObject, backend: BackendInfo) -> JsonObject:
    """A provider's error may quote the credential it was sent (some echo the key they refused): never pass it on."""
    secrets = backend_secrets(backend)
    if not secrets:
        return error
    text = orjson.dumps(error).decode()
    scrubbed = text
    for secret in secrets:
        scrubbed = scrubbed.replace(secret, "[REDACTED:CREDENTIAL]")
    if scrubbed == text:
        return error
    redacted: JsonObject = orjson.loads(scrubbed)
    return redacted


def backend_secrets(backend: BackendInfo) -> tuple[str, ...]:
    """The API key values a static credential sends (the part after `Bearer`); signed or token credentials send
    nothing long-lived."""
    credential = backend.credential
    values = credential.values if isinstance(credential, StaticCredential) else ()
    return tuple(secret for _, value in values if len(secret := value.rpartition(" ")[2]) >= 8)


def count_uncounted_input(listing: JsonObject, estimate: int) -> None:
    """An embeddings answer whose provider counted no input tokens (AI Studio's documented answer has no count)
    reports the gateway's estimate instead of 0: clients bill and budget by it, as the limiter does."""
    usage = listing.get("usage")
    if isinstance(usage, dict) and not usage.get("prompt_tokens") and estimate:
        usage["prompt_tokens"] = estimate
        usage["total_tokens"] = estimate


def encode_embeddings_base64(listing: JsonObject) -> None:
    """Providers answer floats; a client that asked for `encoding_format: base64` gets OpenAI's form (little-endian
    float32, base64) whatever the backend."""
    for item in listing.get("data") or ():
        vector = item.get("embedding")
        if isinstance(vector, list):
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def json_reply(payload: JsonObject, status: int | None = None) -> ProcessingResponse:
    encoded = orjson.dumps(payload)
    headers = [("content-type", messages.JSON_CONTENT_TYPE), ("content-length", str(len(encoded)))]
    if status is not None:
        headers.append((":status", str(status)))
    return messages.response_body_reply(encoded, set_headers=headers)
