"""OpenAI chat completions <-> Claude on Vertex AI (`vertex-anthropic`).

`POST /v1/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict` (`:streamRawPredict`
for streams) with the Anthropic Messages body, minus `model` (it is in the path) and plus
`anthropic_version: "vertex-2023-10-16"` in the body instead of the `anthropic-version` header. Answers, stream events
and model errors are Anthropic's own, so the whole translation is `providers/anthropic.py`'s; authentication is a
Google OAuth bearer (`auth/gcp.py`). Errors raised by Google's front end before the model is reached (a bad token,
a quota, an unknown model) come in Google's shape and are read as such. The client's
`provider_options["vertex-anthropic"]` is merged into the body.
"""

from __future__ import annotations

from urllib.parse import quote

from ..config.models import Backend
from ..json_types import JsonObject
from . import anthropic, gemini
from .anthropic import FIELDS, ChatStream, chat_response, usage_of
from .common import DROPPED, MAPPED, REFUSED, with_provider_options
from .translator import Translator

SCHEMA = "vertex-anthropic"
API_VERSION = "vertex-2023-10-16"
VERTEX_VERSION = "v1"
RESERVED_OPTIONS = ("anthropic_version", "model", "max_tokens", "stream")

__all__ = ["API_VERSION", "DROPPED", "FIELDS", "MAPPED", "REFUSED", "SCHEMA", "ChatStream", "VertexAnthropicTranslator",
           "chat_path", "chat_request", "chat_response", "error_response", "usage_of"]


def chat_path(model: str, stream: bool, backend: Backend | None = None) -> str:
    assert backend is not None and backend.gcp is not None  # the config requires project and location for vertex
    return (f"/{VERTEX_VERSION}/projects/{quote(backend.gcp.project or '', safe='')}/locations/"
            f"{quote(backend.gcp.location or '', safe='')}/publishers/anthropic/models/{quote(model, safe='@')}"
            f":{'streamRawPredict' if stream else 'rawPredict'}")


def chat_request(body: JsonObject, model: str, *, default_max_tokens: int, dropped: list[str] | None = None,
                 reasoning: str | None = None) -> JsonObject:
    """The Anthropic Messages request for `model`, without `model` and with Vertex's `anthropic_version` first."""
    request = anthropic.messages_request(body, model, default_max_tokens=default_max_tokens,
                                         dropped=dropped, reasoning=reasoning)
    del request["model"]
    return with_provider_options({"anthropic_version": API_VERSION, **request}, body, (SCHEMA,), RESERVED_OPTIONS)


def error_response(status: int, body: bytes, headers: object = None) -> tuple[int, JsonObject]:
    """Google's front-end errors (auth, quota, routing) in Google's shape; the model's own errors in Anthropic's."""
    google = gemini.error_from_google_body(status, body)
    return google if google is not None else anthropic.error_response(status, body)


class VertexAnthropicTranslator(Translator):
    schemas = (SCHEMA,)
    fields = FIELDS
    chat_path = staticmethod(chat_path)
    chat_request = staticmethod(chat_request)
    chat_response = staticmethod(chat_response)
    chat_stream = staticmethod(ChatStream)
    error_response = staticmethod(error_response)
