"""The admin API's methods: virtual keys (create, list, revoke, rotate), routes with backend health, the upstream MCP
servers' health, usage, prompt templates (create a version, list, get, set a label).

Every call carries one of `admin.credentials` as a bearer token; it is compared in constant time against each
configured credential's digest. Every call, refused ones included, leaves an audit line naming who (the credential's
name, and the operator the CLI reports), from where, and what changed, never a key or credential.

The MCP servers' health is this process's view (`McpService.health`): each ext_proc process pings and lists on its
own. `ListMcpServers` contacts the servers this process never reached yet, so the first answer is a real one, for at
most `MCP_FIRST_CONTACT_SECONDS` (under the CLI's deadline; a server still being reached then reads UNKNOWN).
`ListRoutes` shows the same entries as last seen and never waits on an upstream.

Prompt templates travel as JSON objects (`google.protobuf.Struct`, so the JSON API takes them as they are written);
Struct numbers are doubles, so whole numbers are made integers again (`plain_json`). A template written in the config
is read-only here: creating a version of its name, or labelling it, is FAILED_PRECONDITION. A template's `model` must
be one the gateway routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message
from google.protobuf.struct_pb2 import Struct
from pydantic import ValidationError

from .. import constants
from ..auth.credentials import read_secret
from ..auth.virtual_keys import bearer_token, generate_key, hash_key
from ..config import prompt_syntax as template_syntax
from ..config.models import AdminApi, LimitRule, PromptTemplate, VirtualKey, route_models
from ..errors import GatewayError
from ..json_types import JsonObject, whole_numbers_as_ints
from ..limits.estimate import MICRO
from ..limits.report import usage_rows
from ..limits.store import StoreUnavailable
from ..runtime.build import Runtime, find_route
from ..templates.registry import PromptEntry, PromptRegistry, build_registry
from ..templates.store import PromptStore, PromptStoreError, TooManyVersions, prompt_store_for
from ..transport.grpc import (
    PEER_METADATA_KEY,
    Call,
    MethodFactory,
    RpcError,
    RpcHandler,
    Status,
    unary_with_metadata,
)
from . import admin_pb2 as pb
from .key_store import KeyStore, KeyStoreError, key_store_for

audit = logging.getLogger("babelgate.audit")

SERVICE_NAME = "babelgate.admin.v1.Admin"
OPERATOR_METADATA_KEY = "x-babelgate-operator"
"""Who is at the keyboard, as the CLI reports it (the OS user): recorded next to the credential's name."""

CALLER_METADATA_KEY = ":babelgate-caller"
"""Who the credential says the caller is, set once it was checked (a pseudo-header name: no client sends it)."""
CLIENT_ADDRESS_HEADER = constants.ADMIN_CLIENT_ADDRESS_HEADER
MAX_MESSAGE_BYTES = constants.ADMIN_MAX_MESSAGE_BYTES

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_LIMIT_METRICS = ("requests", "input_tokens", "output_tokens", "total_tokens", "usd")
MCP_FIRST_CONTACT_SECONDS = 5.0
"""Longest `ListMcpServers` waits for servers this process never contacted (the CLI's own deadline is 10 s)."""
_MCP_HEALTH = {None: pb.McpServer.UNKNOWN, True: pb.McpServer.HEALTHY, False: pb.McpServer.UNHEALTHY}


class Holder(Protocol):
    current: Runtime


def valid_key_id(key_id: str) -> bool:
    return _KEY_ID.fullmatch(key_id) is not None


class AdminCredentials:
    """The configured credentials' digests, read once per configuration (a reload may rotate them)."""

    def __init__(self, settings: AdminApi) -> None:
        self.settings = settings
        self._digests = [(c.name, hashlib.sha256(read_secret(c.secret, f"admin.credentials[{i}].secret").encode())
                          .digest()) for i, c in enumerate(settings.credentials)]

    def holder_of(self, presented: str | None) -> str | None:
        """The name of the credential presented, or None. Every digest is compared, whichever matches."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, expected in self._digests:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found


class AdminService:
    def __init__(self, holder: Holder, on_change: Callable[[str], Awaitable[object]] | None = None) -> None:
        self._holder = holder
        self._on_change = on_change
        self._credentials: AdminCredentials | None = None
        self._store: KeyStore | None = None
        self._store_origin: object = None
        self._prompt_store: PromptStore | None = None
        self._prompt_store_origin: object = None

    def methods(self) -> dict[str, MethodFactory]:
        table: dict[str, tuple[type[Message], Callable]] = {
            "CreateKey": (pb.CreateKeyRequest, self.create_key),
            "ListKeys": (pb.ListKeysRequest, self.list_keys),
            "RevokeKey": (pb.RevokeKeyRequest, self.revoke_key),
            "RotateKey": (pb.RotateKeyRequest, self.rotate_key),
            "ListRoutes": (pb.ListRoutesRequest, self.list_routes),
            "GetUsage": (pb.GetUsageRequest, self.get_usage),
            "ListMcpServers": (pb.ListMcpServersRequest, self.list_mcp_servers),
            "CreatePromptVersion": (pb.CreatePromptVersionRequest, self.create_prompt_version),
            "ListPrompts": (pb.ListPromptsRequest, self.list_prompts),
            "GetPrompt": (pb.GetPromptRequest, self.get_prompt),
            "SetPromptLabel": (pb.SetPromptLabelRequest, self.set_prompt_label),
        }
        return {f"/{SERVICE_NAME}/{name}": self._authenticated(name, unary_with_metadata(
                    self._method(request_type, handler))) for name, (request_type, handler) in table.items()}

    def _authenticated(self, name: str, factory: MethodFactory) -> MethodFactory:
        """The credential is checked on the call's headers: a caller without one is answered before a byte of its
        message is read."""

        def open_call(call: Call, metadata: dict[str, str]) -> RpcHandler:
            metadata[CALLER_METADATA_KEY] = self._authenticate(name, metadata)
            return factory(call, metadata)

        return open_call

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        if self._prompt_store is not None:
            await self._prompt_store.close()

    def _method(self, request_type: type[Message], handler: Callable) -> Callable:
        async def call(data: bytes, metadata: dict[str, str]) -> bytes:
            caller = metadata[CALLER_METADATA_KEY]
            try:
                request = request_type.FromString(data)
            except DecodeError:
                raise RpcError(Status.INVALID_ARGUMENT, f"not a {request_type.DESCRIPTOR.name}") from None
            try:
                reply = await handler(request, caller)
            except (KeyStoreError, PromptStoreError) as exc:
                raise RpcError(Status.UNAVAILABLE, str(exc)) from None
            except StoreUnavailable:
                raise RpcError(Status.UNAVAILABLE, "the limiter store is unavailable") from None
            return reply.SerializeToString()

        return call

    def _authenticate(self, method: str, metadata: dict[str, str]) -> str:
        config = self._holder.current.config
        where = _origin(metadata)
        if config.admin is None:
            raise RpcError(Status.UNAVAILABLE, "the admin API is not configured")
        if self._credentials is None or self._credentials.settings is not config.admin:
            self._credentials = AdminCredentials(config.admin)
        presented = bearer_token(metadata.get("authorization"))
        name = self._credentials.holder_of(presented)
        if name is None:
            audit.warning("admin %s refused from %s: %s admin credential", method, where,
                          "no" if not presented else "an invalid")
            raise RpcError(Status.UNAUTHENTICATED, "send a valid admin credential as `Authorization: Bearer <secret>`")
        operator = metadata.get(OPERATOR_METADATA_KEY, "")[:64]
        who = f"{name} ({_printable(operator)})" if operator else name
        return f"{who} from {where}"

    def _key_store(self) -> KeyStore:
        config = self._holder.current.config
        origin = (config.limits.redis, config.keys_file)
        if self._store is None or origin != self._store_origin:
            store = key_store_for(config)
            if store is None:
                raise RpcError(Status.FAILED_PRECONDITION, "no key store: configure limits.redis or keys_file")
            self._store, self._store_origin = store, origin
        return self._store

    def _prompts(self) -> PromptStore:
        config = self._holder.current.config
        origin = (config.limits.redis, config.keys_file)
        if self._prompt_store is None or origin != self._prompt_store_origin:
            store = prompt_store_for(config)
            if store is None:
                raise RpcError(Status.FAILED_PRECONDITION, "no prompt store: configure limits.redis or keys_file")
            self._prompt_store, self._prompt_store_origin = store, origin
        return self._prompt_store

    async def _changed(self, what: str) -> None:
        if self._on_change is not None:
            await self._on_change(what)

    # -- keys -------------------------------------------------------------------------------------------------------

    async def create_key(self, request: pb.CreateKeyRequest, caller: str) -> pb.CreateKeyResponse:
        wanted = request.key
        runtime = self._holder.current
        if any(k.id == wanted.id for k in runtime.config.virtual_keys):
            raise RpcError(Status.ALREADY_EXISTS, f"a key with id {wanted.id!r} exists")
        secret = generate_key()
        key = new_virtual_key(wanted, hash_key(secret), runtime.config.model_names())
        if not await self._key_store().create(key):
            raise RpcError(Status.ALREADY_EXISTS, f"a key with id {wanted.id!r} exists")
        audit.info("admin CreateKey by %s: key %r (team %s, models %s, %d limits, expires %s)", caller, key.id,
                   key.team or "-", ",".join(key.models), len(key.limits or ()),
                   key.expires_at.isoformat() if key.expires_at else "never")
        await self._changed(f"key {key.id!r} created")
        return pb.CreateKeyResponse(key=key_message(key), secret=secret)

    async def list_keys(self, request: pb.ListKeysRequest, caller: str) -> pb.ListKeysResponse:
        # the keys in force here win over the store's (a config-file id shadows a stored one); a stored key this
        # process has not loaded yet is listed too
        keys = {k.id: k for k in await self._key_store().list()}
        keys.update((k.id, k) for k in self._holder.current.config.virtual_keys)
        audit.info("admin ListKeys by %s: %d keys", caller, len(keys))
        return pb.ListKeysResponse(keys=[key_message(keys[i]) for i in sorted(keys)])

    async def revoke_key(self, request: pb.RevokeKeyRequest, caller: str) -> pb.RevokeKeyResponse:
        if not await self._key_store().revoke(request.id):
            self._not_stored(request.id)
        audit.info("admin RevokeKey by %s: key %r revoked", caller, request.id)
        await self._changed(f"key {request.id!r} revoked")
        return pb.RevokeKeyResponse()

    async def rotate_key(self, request: pb.RotateKeyRequest, caller: str) -> pb.CreateKeyResponse:
        store = self._key_store()
        current = next((k for k in await store.list() if k.id == request.id), None)
        if current is None:
            self._not_stored(request.id)
        secret = generate_key()
        rotated = current.model_copy(update={"hash": hash_key(secret)})
        if not await store.replace(rotated):
            self._not_stored(request.id)
        audit.info("admin RotateKey by %s: key %r has a new secret; the old one is refused", caller, request.id)
        await self._changed(f"key {request.id!r} rotated")
        return pb.CreateKeyResponse(key=key_message(rotated), secret=secret)

    def _not_stored(self, key_id: str) -> NoReturn:
        if any(k.id == key_id for k in self._holder.current.config.virtual_keys):
            raise RpcError(Status.FAILED_PRECONDITION,
                           f"key {key_id!r} is written in the config file: change it there")
        raise RpcError(Status.NOT_FOUND, f"no key with id {key_id!r}")

    # -- routes and usage -------------------------------------------------------------------------------------------

    async def list_routes(self, request: pb.ListRoutesRequest, caller: str) -> pb.ListRoutesResponse:
        runtime = self._holder.current
        health = runtime.health
        routes = [pb.Route(model=r.model, aliases=r.aliases, policy=r.policy,
                           backends=[entry.backend for entry in r.backends]) for r in runtime.config.routes]
        backends = [pb.Backend(id=b.id, schema=b.schema_, cooling=health.cooldowns.cooling(b.id),
                               first_byte_seconds=health.latency.first_byte.get(b.id, 0.0),
                               total_seconds=health.latency.total.get(b.id, 0.0)) for b in runtime.config.backends]
        mcp_servers = [mcp_server_message(entry) for entry in runtime.mcp.health()] if runtime.mcp else []
        audit.info("admin ListRoutes by %s", caller)
        return pb.ListRoutesResponse(routes=routes, backends=backends, mcp_servers=mcp_servers)

    async def list_mcp_servers(self, request: pb.ListMcpServersRequest, caller: str) -> pb.ListMcpServersResponse:
        mcp = self._holder.current.mcp
        servers: list[pb.McpServer] = []
        if mcp is not None:
            if any(entry["healthy"] is None for entry in mcp.health()):
                # the first fetch goes on in the background past the wait (fresh_catalog shields it)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(mcp.fresh_catalog(), MCP_FIRST_CONTACT_SECONDS)
            servers = [mcp_server_message(entry) for entry in mcp.health()]
        audit.info("admin ListMcpServers by %s: %d servers", caller, len(servers))
        return pb.ListMcpServersResponse(servers=servers)

    async def get_usage(self, request: pb.GetUsageRequest, caller: str) -> pb.GetUsageResponse:
        limiter = self._holder.current.limiter
        rows = []
        if limiter is not None:
            values = await limiter.store.scan(limiter.prefix)
            for row in usage_rows(values, limiter.tables, limiter.prefix):
                if request.scope and row.scope != request.scope:
                    continue
                scale = MICRO if row.metric == "usd" else 1
                rows.append(pb.UsageRow(scope=row.scope, id=row.scope_id, window=row.window, metric=row.metric,
                                        used=row.used / scale,
                                        limit=row.limit / scale if row.limit is not None else 0.0))
        audit.info("admin GetUsage by %s: %d rows", caller, len(rows))
        return pb.GetUsageResponse(rows=rows)


    # -- prompt templates -------------------------------------------------------------------------------------------

    async def create_prompt_version(self, request: pb.CreatePromptVersionRequest, caller: str) -> pb.PromptVersion:
        runtime = self._holder.current
        name = _prompt_name(request.name)
        if request.label:
            _prompt_label(request.label)
        self._not_in_config(name, "create versions of it")
        template = new_prompt_template(name, plain_json(MessageToDict(request.template)))
        if template.model is not None and find_route(runtime, template.model) is None:
            raise RpcError(Status.INVALID_ARGUMENT, f"template.model: no route serves {template.model!r}")
        try:
            version = await self._prompts().create(template, request.label or None)
        except TooManyVersions:
            raise RpcError(Status.FAILED_PRECONDITION, f"prompt {name!r} has {template_syntax.MAX_VERSIONS} "
                                                       "versions, the most a name keeps: use a new name") from None
        audit.info("admin CreatePromptVersion by %s: prompt %r version %d%s", caller, name, version,
                   f" labelled {request.label!r}" if request.label else "")
        await self._changed(f"prompt {name!r} version {version} created")
        stored = template.model_copy(update={"version": version})
        return prompt_version_message(stored, [request.label] if request.label else [], from_config=False)

    async def list_prompts(self, request: pb.ListPromptsRequest, caller: str) -> pb.ListPromptsResponse:
        registry = await self._registry()
        audit.info("admin ListPrompts by %s: %d prompts", caller, len(registry.entries))
        return pb.ListPromptsResponse(prompts=[prompt_message(registry.entries[name])
                                               for name in sorted(registry.entries)])

    async def get_prompt(self, request: pb.GetPromptRequest, caller: str) -> pb.PromptVersion:
        registry = await self._registry()
        try:
            template = registry.lookup(request.name, request.ref or None)
        except GatewayError as exc:
            raise RpcError(Status.NOT_FOUND, exc.message) from None
        entry = registry.entries[template.name]
        audit.info("admin GetPrompt by %s: prompt %r version %s", caller, template.name, template.version)
        labels = sorted(label for label, version in entry.labels.items() if version == template.version)
        return prompt_version_message(template, labels, from_config=entry.from_config)

    async def set_prompt_label(self, request: pb.SetPromptLabelRequest, caller: str) -> pb.Prompt:
        name = _prompt_name(request.name)
        label = _prompt_label(request.label)
        self._not_in_config(name, "label it there")
        if not await self._prompts().set_label(name, label, request.version):
            raise RpcError(Status.NOT_FOUND, f"prompt {name!r} has no version {request.version}")
        audit.info("admin SetPromptLabel by %s: prompt %r label %r -> version %d", caller, name, label,
                   request.version)
        await self._changed(f"prompt {name!r} label {label!r} set to version {request.version}")
        return prompt_message((await self._registry()).entries[name])

    async def _registry(self) -> PromptRegistry:
        """The config's templates and the store's as they are now (this process may not have reloaded yet)."""
        return build_registry(self._holder.current.config, await self._prompts().load())

    def _not_in_config(self, name: str, advice: str) -> None:
        if any(t.name == name for t in self._holder.current.config.prompts):
            raise RpcError(Status.FAILED_PRECONDITION,
                           f"prompt {name!r} is written in the config file: {advice} in the config")


# -- conversions --------------------------------------------------------------------------------------------------

def _prompt_name(name: str) -> str:
    if not template_syntax.TEMPLATE_NAME.fullmatch(name):
        raise RpcError(Status.INVALID_ARGUMENT, "name: 1-64 characters: lowercase letters, digits, . _ -, starting "
                                                "with a letter or digit")
    return name


def _prompt_label(label: str) -> str:
    if not template_syntax.LABEL.fullmatch(label) or label == template_syntax.LATEST:
        raise RpcError(Status.INVALID_ARGUMENT, f"label: 1-32 lowercase letters, digits, _ or -, starting with a "
                                                f"letter (and not {template_syntax.LATEST!r}, which is implicit)")
    return label


_STORE_OWNED = ("name", "version", "labels", "created_at")


def new_prompt_template(name: str, data: object) -> PromptTemplate:
    """The template a request creates, validated; the store numbers it."""
    if not isinstance(data, dict) or not data:
        raise RpcError(Status.INVALID_ARGUMENT, "template: a JSON object with at least `messages`")
    owned = [field for field in _STORE_OWNED if field in data]
    if owned:
        raise RpcError(Status.INVALID_ARGUMENT, f"template.{owned[0]}: set by the store (the name is the request's, "
                                                "labels are set with SetPromptLabel)")
    try:
        return PromptTemplate.model_validate({**data, "name": name,
                                              "created_at": datetime.now(UTC).replace(microsecond=0)})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RpcError(Status.INVALID_ARGUMENT,
                       f"template{'.' + where if where else ''}: {first['msg'].removeprefix('Value error, ')}"
                       ) from None


def plain_json(value: object) -> object:
    """A Struct's JSON with whole numbers as integers (Struct carries every number as a double)."""
    return whole_numbers_as_ints(value)


def prompt_version_message(template: PromptTemplate, labels: list[str], *, from_config: bool) -> pb.PromptVersion:
    content = Struct()
    content.update(template.model_dump(mode="json", exclude_none=True, exclude={"name", "version", "labels",
                                                                               "created_at"}))
    message = pb.PromptVersion(name=template.name, version=template.version or 1, template=content, labels=labels,
                               from_config=from_config)
    if template.created_at is not None:
        message.created_at.FromDatetime(template.created_at)
    return message


def prompt_message(entry: PromptEntry) -> pb.Prompt:
    return pb.Prompt(name=entry.name, latest=entry.latest, versions=sorted(entry.versions), labels=entry.labels,
                     from_config=entry.from_config, model=entry.versions[entry.latest].model or "")



def new_virtual_key(wanted: pb.Key, key_hash: str, model_names: Mapping[str, str] | None) -> VirtualKey:
    """The key to store for a request, validated. `model_names`: each route's model name and alias -> the route's
    model name (`Config.model_names`); a key naming a route by an alias is stored with the route's model name, as
    authorization compares those. None skips that check, for a keys file edited without its config."""
    if not valid_key_id(wanted.id):
        raise RpcError(Status.INVALID_ARGUMENT, "key.id: 1-128 characters of letters, digits and . _ @ -, "
                                                "starting with a letter or digit")
    if wanted.team and not valid_key_id(wanted.team):
        raise RpcError(Status.INVALID_ARGUMENT, "key.team: 1-128 characters of letters, digits and . _ @ -, "
                                                "starting with a letter or digit")
    models = list(wanted.models) or ["*"]
    if model_names is not None:
        unknown = [m for m in models if m != "*" and m not in model_names]
        if unknown:
            raise RpcError(Status.INVALID_ARGUMENT, f"key.models: unknown model {unknown[0]!r} (give a route's model "
                                                    "name or alias, or '*' for every model)")
        models = route_models(models, model_names)
    now = datetime.now(UTC)
    expires = wanted.expires_at.ToDatetime(tzinfo=UTC) if wanted.HasField("expires_at") else None
    if expires is not None and expires <= now:
        raise RpcError(Status.INVALID_ARGUMENT, "key.expires_at: must be in the future")
    try:
        limits = [LimitRule.model_validate({"window": limit.window, **{
            metric: getattr(limit, metric) for metric in _LIMIT_METRICS if limit.HasField(metric)}})
            for limit in wanted.limits]
        return VirtualKey(id=wanted.id, hash=key_hash, models=models, team=wanted.team or None,
                          user=wanted.user or None, asserts_users=wanted.asserts_users,
                          prompts=list(wanted.prompts) or ["*"],
                          limits=limits or None, expires_at=expires, created_at=now.replace(microsecond=0))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        field = where if where in ("user", "asserts_users") else f"limits: {where}"
        raise RpcError(Status.INVALID_ARGUMENT, f"key.{field}: {first['msg']}") from None


def key_message(key: VirtualKey) -> pb.Key:
    message = pb.Key(id=key.id, team=key.team or "", models=[] if "*" in key.models else key.models,
                     user=key.user or "", asserts_users=key.asserts_users,
                     prompts=[] if "*" in key.prompts else key.prompts)
    for rule in key.limits or ():
        message.limits.append(pb.Limit(window=rule.window, **{
            metric: getattr(rule, metric) for metric in _LIMIT_METRICS if getattr(rule, metric) is not None}))
    if key.expires_at is not None:
        message.expires_at.FromDatetime(key.expires_at)
    if key.created_at is not None:
        message.created_at.FromDatetime(key.created_at)
    return message


def mcp_server_message(entry: JsonObject) -> pb.McpServer:
    """One entry of `McpService.health()`."""
    message = pb.McpServer(name=entry["name"], transport=entry["transport"], url=entry["url"],
                           health=_MCP_HEALTH[entry["healthy"]], error=entry["error"],
                           protocol_version=entry["protocol_version"], tools=entry["tools"],
                           resources=entry["resources"], resource_templates=entry["resourceTemplates"],
                           prompts=entry["prompts"])
    if entry["checked_at"]:
        message.checked_at.FromNanoseconds(round(entry["checked_at"] * 1e9))
    return message


def _origin(metadata: dict[str, str]) -> str:
    """The socket's peer, and, through Envoy, the client address Envoy resolved (`use_remote_address`: its own
    view of the connection, or what the configured number of trusted proxies said), never a client's own
    `X-Forwarded-For`."""
    peer = metadata.get(PEER_METADATA_KEY) or "a local socket"
    client = metadata.get(CLIENT_ADDRESS_HEADER)
    return f"{peer} (client {_printable(client[:64])} per Envoy)" if client else peer


def _printable(text: str) -> str:
    """What a caller wrote goes into the audit log without control characters (no forged log lines)."""
    return "".join(c if c.isprintable() else "?" for c in text)
