"""Where the admin API's records live in Redis, named once for every store that keeps them (virtual keys, prompt
templates): the keys hash, its version field every server polls to reload, and the client options."""

from __future__ import annotations

from ..auth.credentials import read_secret
from ..config.models import RedisSettings

VERSION_FIELD = ":version"
"""Bumped by every change; key ids can't contain ':' (see `valid_key_id`), so it never names a key."""


def keys_hash_name(settings: RedisSettings) -> str:
    return settings.key_prefix + "keys"


def client_options(settings: RedisSettings) -> dict:
    password = read_secret(settings.password, "limits.redis.password") if settings.password else None
    options: dict = {"password": password, "socket_timeout": max(settings.timeout, 1.0), "socket_connect_timeout": 1.0}
    if settings.ca_file is not None:
        options["ssl_ca_certs"] = str(settings.ca_file)
    return options
