"""The semantic cache's embeddings, asked of this gateway itself: `POST /v1/embeddings` to its own listener with the
caller's own credential, so the embedding is authenticated, allow-listed, rate-limited, priced and logged like any
request of that caller (a key using a semantic-cached route needs the embeddings model in its allow-list).

The call is made while Envoy waits for the route stage's answer to the request body, which `ext_proc.message_timeout`
bounds: the caller (`semantic.py`) gives it a deadline well under that. It carries `x-babelgate-cache: bypass`: an
embeddings answer is never cached anyway, and the marker says it was never meant to be.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import httpx
import numpy as np
import orjson

from ..config.models import Config
from .keys import CACHE_HEADER
from .vector_index import Vector

CREDENTIAL_HEADERS = ("authorization", "x-api-key")
"""The headers a caller authenticates with (a virtual key or a JWT); the embeddings request carries the same."""


class EmbeddingsUnavailable(Exception):
    """No embedding: the call failed, was refused, or its answer was not one."""


class Embedder:
    def __init__(self, base_url: str, verify: ssl.SSLContext | bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(verify=verify, trust_env=False, transport=transport)

    async def embed(self, model: str, text: str, headers: Mapping[str, str], timeout: float) -> Vector:
        credentials = {name: headers[name] for name in CREDENTIAL_HEADERS if headers.get(name)}
        if not credentials:
            raise EmbeddingsUnavailable("the request carries no credential to ask for an embedding with")
        try:
            reply = await self._client.post(self.base_url + "/v1/embeddings", timeout=timeout,
                                            headers={**credentials, CACHE_HEADER: "bypass"},
                                            content=orjson.dumps({"model": model, "input": text}))
        except httpx.HTTPError as exc:
            raise EmbeddingsUnavailable(f"{type(exc).__name__} from {self.base_url}") from None
        if reply.status_code != 200:
            raise EmbeddingsUnavailable(f"status {reply.status_code}: {reply.text[:200]}")
        return _vector(reply.content)

    async def close(self) -> None:
        await self._client.aclose()


def _vector(body: bytes) -> Vector:
    try:
        values = orjson.loads(body)["data"][0]["embedding"]
        vector = np.asarray(values, dtype=np.float32)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        raise EmbeddingsUnavailable("the answer holds no embedding") from None
    if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all() or not vector.any():
        raise EmbeddingsUnavailable("the answer's embedding is not a usable vector")
    return vector


def listener_embedder(config: Config, url: str | None) -> Embedder:
    """`url` when given, else Envoy's listener as configured (a wildcard address reached on loopback). A TLS
    listener is trusted by its own certificate, whatever name the address has."""
    if url is not None:
        return Embedder(url)
    listener = config.listener
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listener.host, listener.host)
    host = f"[{host}]" if ":" in host else host
    if listener.tls is None:
        return Embedder(f"http://{host}:{listener.port}")
    context = ssl.create_default_context(cafile=str(listener.tls.cert_file))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return Embedder(f"https://{host}:{listener.port}", context)
