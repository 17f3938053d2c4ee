"""The client-facing API surface: which paths exist and which method each takes."""

from __future__ import annotations

from enum import StrEnum

from ..errors import MethodNotAllowed, NotFound


class Endpoint(StrEnum):
    CHAT = "chat"
    MESSAGES = "messages"
    """Anthropic Messages format from the client; translated to and from the canonical chat format."""
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    MODEL = "model"


_EXACT: dict[str, tuple[Endpoint, str]] = {
    "/v1/chat/completions": (Endpoint.CHAT, "POST"),
    "/v1/embeddings": (Endpoint.EMBEDDINGS, "POST"),
    "/v1/models": (Endpoint.MODELS, "GET"),
    "/anthropic/v1/messages": (Endpoint.MESSAGES, "POST"),
}
_MODEL_PREFIX = "/v1/models/"


def classify(method: str, path: str) -> tuple[Endpoint, str]:
    """Return the endpoint and the path's trailing argument (a model id for `/v1/models/{id}`)."""
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
                       "/v1/models and /anthropic/v1/messages.", code="unknown_url")
    endpoint, allowed = found
    if method != allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}.",
                               headers=(("allow", allowed),))
    return endpoint, argument
