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


_EXACT: dict[str, tuple[Endpoint, str]] = {
    "/v1/chat/completions": (Endpoint.CHAT, "POST"),
    "/v1/embeddings": (Endpoint.EMBEDDINGS, "POST"),
    "/v1/models": (Endpoint.MODELS, "GET"),
    "/anthropic/v1/messages": (Endpoint.MESSAGES, "POST"),
    "/anthropic/v1/messages/count_tokens": (Endpoint.COUNT_TOKENS, "POST"),
    "/anthropic": (Endpoint.PROBE, "HEAD"),
    "/anthropic/v1": (Endpoint.PROBE, "HEAD"),
    "/anthropic/api/hello": (Endpoint.PROBE, "HEAD"),  # Claude Code's connection warm-up
}
ANTHROPIC_STYLE = frozenset({Endpoint.MESSAGES, Endpoint.COUNT_TOKENS, Endpoint.PROBE})
"""Endpoints whose errors take Anthropic's shape."""
_MODEL_PREFIX = "/v1/models/"


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
    if found is None:
        raise NotFound(f"Unknown endpoint {path!r}. Babelgate serves /v1/chat/completions, /v1/embeddings, "
                       "/v1/models, /anthropic/v1/messages and /anthropic/v1/messages/count_tokens.",
                       code="unknown_url")
    endpoint, allowed = found
    if method != allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}.",
                               headers=(("allow", allowed),))
    return endpoint, argument
