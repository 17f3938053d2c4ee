"""What an attempt sends the provider: the OpenAI body in the backend's schema (or an Anthropic Messages body as the
client wrote it, for an Anthropic-family backend: `providers/anthropic_passthrough.py`), its path, host, length and
credentials, and none of the client's own credentials or Babelgate's and Envoy's internal headers.

Used by the attempt stage of a chain and by a direct route's stage alike; the direct route hands over the
translation its route stage already made, so a request is translated once for the backend that serves it.
"""

from __future__ import annotations

import orjson

from .. import constants
from ..auth.backend_credentials import CREDENTIAL_HEADERS
from ..errors import BadRequest
from ..json_types import JsonObject
from ..providers import anthropic_passthrough, responses_passthrough
from ..runtime.build import BackendInfo
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages

# Client credentials and protocol headers that must never be forwarded to a provider. On a retry Envoy shows the
# attempt stage the previous attempt's headers, so every header a backend credential sets is listed here too.
_CLIENT_ONLY_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "anthropic-version", "anthropic-beta",
                                  "openai-organization", "openai-project", "accept-encoding", "cookie",
                                  # hop-by-hop: they describe the client's connection, not the provider's
                                  "connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
                                  "proxy-connection", "te", "trailer", "upgrade",
                                  # who the client is stays with the gateway (X-Forwarded-* go by their prefix)
                                  "forwarded", "x-real-ip"}
                                 ) | CREDENTIAL_HEADERS
_NEVER_FORWARDED_PREFIXES = (constants.CLIENT_HEADER_PREFIX, constants.ENVOY_HEADER_PREFIX, "x-forwarded-")


def forwarded_never(header: str) -> bool:
    """Client credentials and addresses, Babelgate's and Envoy's own headers, and any credential a provider sets:
    never sent on."""
    return header in _CLIENT_ONLY_HEADERS or header.startswith(_NEVER_FORWARDED_PREFIXES)


def chat(backend: BackendInfo, model: str, body: JsonObject, stream: bool, default_max_tokens: int,
         translated: JsonObject | None = None, dropped: list[str] | None = None) -> tuple[JsonObject, str]:
    """The chat request in the backend's schema and the path it goes to. `translated`: the same translation made
    earlier for this backend and model (a direct route's route stage makes it while checking the request);
    otherwise the fields the translation leaves out are appended to `dropped`."""
    upstream = (translated if translated is not None
                else backend.chat_request(body, model, default_max_tokens, dropped))
    return upstream, backend.base_path + backend.translator.chat_path(model, stream, backend.settings)


def without_gateway_usage(upstream: JsonObject, client_options: object) -> JsonObject:
    """`upstream` without the `stream_options.include_usage` the translation added for the gateway's meter: for a
    stream whose chunks go to the client as the backend wrote them, which must hold what the client asked for."""
    options = upstream.get("stream_options")
    asked = client_options if isinstance(client_options, dict) else {}
    if not isinstance(options, dict) or asked.get("include_usage") is True:
        return upstream
    kept = {name: value for name, value in options.items() if name != "include_usage"}
    if "include_usage" in asked:
        kept["include_usage"] = asked["include_usage"]
    upstream = {**upstream}
    if kept or isinstance(client_options, dict):
        upstream["stream_options"] = kept
    else:
        upstream.pop("stream_options")
    return upstream


def passthrough(backend: BackendInfo, model: str, body: JsonObject, stream: bool,
                betas: list[str]) -> tuple[JsonObject, str, tuple[tuple[str, str], ...]]:
    """The client's Messages body for an Anthropic-family backend, its path, and the headers it needs (betas)."""
    upstream, headers = anthropic_passthrough.request(backend.schema, body, model, betas)
    for name in backend.settings.drop_fields:
        upstream.pop(name, None)
    return upstream, backend.base_path + backend.translator.chat_path(model, stream, backend.settings), headers


def responses_native(backend: BackendInfo, model: str, body: JsonObject,
                     default_max_tokens: int) -> tuple[JsonObject, str, tuple[tuple[str, str], ...]]:
    """A Responses API body for a backend that serves that API itself, and its path."""
    settings = backend.settings
    upstream = responses_passthrough.request(body, model, settings, default_max_tokens)
    return upstream, backend.base_path + responses_passthrough.path(settings), ()


def count_tokens(backend: BackendInfo, model: str, body: JsonObject, openai_body: JsonObject | None,
                 betas: list[str], default_max_tokens: int) -> tuple[JsonObject, str, tuple[tuple[str, str], ...]]:
    """The counting request for a backend whose service counts (`anthropic_passthrough.COUNTING_SCHEMAS`);
    `openai_body`, the body in OpenAI form, is what a Gemini backend's count is translated from."""
    gemini = None
    if backend.schema in anthropic_passthrough.GEMINI_SCHEMAS:
        assert openai_body is not None
        gemini = backend.chat_request(openai_body, model, default_max_tokens)
    upstream, headers = anthropic_passthrough.count_request(backend.schema, body, model, betas, gemini)
    path = backend.base_path + anthropic_passthrough.count_path(backend.schema, model, backend.settings)
    return upstream, path, headers


def embeddings(backend: BackendInfo, model: str, body: JsonObject) -> tuple[JsonObject, str]:
    translator = backend.translator
    if not translator.serves_embeddings:
        raise BadRequest(f"Backend {backend.id!r} ({backend.schema}) does not serve embeddings.",
                         code="unsupported_endpoint")
    upstream = translator.embeddings_request(body, model, backend.settings)
    return upstream, backend.base_path + translator.embeddings_path(model, backend.settings)


def reply(backend: BackendInfo, path: str, upstream: JsonObject,
          extra: tuple[tuple[str, str], ...] = ()) -> ProcessingResponse:
    """The request body phase's answer: the new body, and the headers that go with it (credentials are computed
    over the final body: SigV4 signs it). `extra`: headers the request itself needs (a client's betas)."""
    encoded = orjson.dumps(upstream)
    return messages.request_body_reply(
        set_headers=(
            (":path", path),
            (":authority", backend.authority),
            ("content-type", messages.JSON_CONTENT_TYPE),
            ("content-length", str(len(encoded))),
            *extra,
            *backend.credential.headers("POST", backend.origin + path, encoded),
        ),
        body=encoded)
