"""The client-facing API surface: which paths exist and which method each takes."""

from __future__ import annotations

from enum import StrEnum

from ..errors import MethodNotAllowed, NotFound


class Endpoint(StrEnum):
    CHAT = "chat"
    MESSAGES = "messages"
    """Anthropic Messages format from the client: passed through to Anthropic-family backends, translated to and
    from the canonical chat format for the others."""
    COUNT_TOKENS = "count_tokens"
    """Anthropic's `count_tokens`: the backend's own count where it has one, else the gateway's estimate."""
    PROBE = "probe"
    """`HEAD /anthropic` (clients check the base URL answers) and `HEAD /anthropic/api/hello` (Claude Code warms its
    connection with it): 200, no body, no key needed."""
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    MODEL = "model"
    RESPONSES = "responses"
    """OpenAI's Responses API (`POST /v1/responses`): passed through to backends that serve it themselves,
    translated to and from the canonical chat format for the others."""
    RESPONSE = "response"
    """A stored response: `GET` and `DELETE /v1/responses/{id}`, answered by the route stage from the store."""
    RESPONSE_INPUT_ITEMS = "response_input_items"
    """`GET /v1/responses/{id}/input_items`."""
    RESPONSE_CANCEL = "response_cancel"
    """`POST /v1/responses/{id}/cancel`: only background responses can be cancelled, and the gateway runs none."""


_EXACT: dict[str, tuple[Endpoint, str]] = {
    "/v1/chat/completions": (Endpoint.CHAT, "POST"),
    "/v1/responses": (Endpoint.RESPONSES, "POST"),
    "/v1/embeddings": (Endpoint.EMBEDDINGS, "POST"),
    "/v1/models": (Endpoint.MODELS, "GET"),
    "/anthropic/v1/messages": (Endpoint.MESSAGES, "POST"),
    "/anthropic/v1/messages/count_tokens": (Endpoint.COUNT_TOKENS, "POST"),
    "/anthropic": (Endpoint.PROBE, "HEAD"),
    "/anthropic/v1": (Endpoint.PROBE, "HEAD"),
    "/anthropic/api/hello": (Endpoint.PROBE, "HEAD"),  # Claude Code's connection warm-up
}
STORED_RESPONSE_ENDPOINTS = frozenset({Endpoint.RESPONSE, Endpoint.RESPONSE_INPUT_ITEMS, Endpoint.RESPONSE_CANCEL})
"""Answered by the route stage from the Responses store (`stored_responses.py`), never by a provider."""
ANTHROPIC_STYLE = frozenset({Endpoint.MESSAGES, Endpoint.COUNT_TOKENS, Endpoint.PROBE})
"""Endpoints whose errors take Anthropic's shape."""
_MODEL_PREFIX = "/v1/models/"
_RESPONSE_PREFIX = "/v1/responses/"
_RESPONSE_SUFFIXES: dict[str, tuple[Endpoint, str]] = {
    "/input_items": (Endpoint.RESPONSE_INPUT_ITEMS, "GET"),
    "/cancel": (Endpoint.RESPONSE_CANCEL, "POST"),
}


def classify(method: str, path: str) -> tuple[Endpoint, str]:
    """Return the endpoint and the path's trailing argument (a model id for `/v1/models/{id}`). The query is not
    part of the match: Claude Code adds `?beta=true`."""
    path = path.partition("?")[0]
    if len(path) > 1:
        path = path.rstrip("/")
    found = _EXACT.get(path)
    argument = ""
    if found is None and path.startswith(_MODEL_PREFIX) and len(path) > len(_MODEL_PREFIX):
        found = (Endpoint.MODEL, "GET")
        argument = path[len(_MODEL_PREFIX):]
    if found is None and path.startswith(_RESPONSE_PREFIX):
        found, argument = _stored_response(path[len(_RESPONSE_PREFIX):])
    if found is None:
        raise NotFound(f"Unknown endpoint {path!r}. Babelgate serves /v1/chat/completions, /v1/responses, "
                       "/v1/embeddings, /v1/models, /anthropic/v1/messages and /anthropic/v1/messages/count_tokens.",
                       code="unknown_url")
    endpoint, allowed = found
    if method != allowed and method not in allowed.split(", "):
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}.",
                               headers=(("allow", allowed),))
    return endpoint, argument


def _stored_response(rest: str) -> tuple[tuple[Endpoint, str] | None, str]:
    """`{id}`, `{id}/input_items` or `{id}/cancel` after `/v1/responses/`."""
    response_id, slash, tail = rest.partition("/")
    if not response_id:
        return None, ""
    if not slash:
        return (Endpoint.RESPONSE, "GET, DELETE"), response_id
    return _RESPONSE_SUFFIXES.get("/" + tail), response_id
