"""What a cached answer is found by: a digest of everything that decides the answer, and nothing that doesn't.

Decisions worth knowing before changing this file:
- The key covers the route (never a backend: a hit must not depend on which backend served the miss), the scope
  (a key id, a team, or nothing when the route shares its cache globally), the client's format (a chat answer is not
  an Anthropic Messages answer), and the body with the fields that only steer delivery or bookkeeping removed
  (`IGNORED`): whether it streams, its stream options, the end user, metadata, storage. Everything else counts,
  unknown fields included: a field the gateway does not know may change the answer, so it splits the key rather
  than risk a wrong hit.
- The parts and the body are serialised canonically as one JSON array (sorted keys, orjson) and hashed with SHA-256:
  route names may hold `:`, so joining parts with a separator could make two (route, scope) pairs one key; an array
  can't.
- Deterministic by default: a request is cacheable when its sampling can't vary (`temperature: 0`, or `top_k: 1`),
  unless the route says any request may be cached (`deterministic_only: false`). `n > 1` is never cached: choices
  of one answer are meant to differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import orjson

from ..json_types import JsonObject

IGNORED = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier",
                     "prompt_cache_key", "client_metadata"})
"""Fields that change how or to whom an answer is delivered, or what is recorded of it, never the answer itself."""
CACHE_HEADER = "x-babelgate-cache"


def cache_key(route: str, scope: str, client_format: str, body: JsonObject) -> str:
    """The key of the answer to `body` on `route` for `scope` ("" for a global cache)."""
    kept = {name: value for name, value in body.items() if name not in IGNORED}
    digest = hashlib.sha256(orjson.dumps([client_format, route, scope, kept], option=orjson.OPT_SORT_KEYS))
    return f"{client_format}:{digest.hexdigest()}"


def deterministic(body: JsonObject) -> bool:
    """The answer can't vary by sampling: temperature 0 (or top_k 1), one choice."""
    choices = body.get("n", 1)
    if isinstance(choices, int) and choices > 1:
        return False
    temperature = body.get("temperature")
    return (isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0) or (
        body.get("top_k") == 1)


def directive(headers: Mapping[str, str]) -> str:
    """What the client asks of the cache: "use" (the default), "bypass" (neither read nor written: `Cache-Control:
    no-store`, or `x-babelgate-cache: bypass`) or "refresh" (not read, written: `Cache-Control: no-cache`, or
    `x-babelgate-cache: refresh`). Headers are keyed by lowercase name."""
    own = headers.get(CACHE_HEADER, "").strip().lower()
    if own in ("bypass", "refresh"):
        return own
    words = {word.strip().split("=")[0] for word in headers.get("cache-control", "").lower().split(",")}
    if "no-store" in words:
        return "bypass"
    if "no-cache" in words:
        return "refresh"
    return "use"
