"""The gateway's MCP side for one configuration: the merged catalog kept fresh, the upstream servers' health, the
gateway sessions and the upstream sessions they map to. Built with the runtime, kept across reloads that leave the
`mcp:` section (and Redis) unchanged, closed when a reload replaces it.

Decisions worth knowing before changing this file:
- Control traffic only: lists, handshakes and health pings go from this process straight to each upstream (the
  `upstream_client.py` client; a stdio server through its bridge's loopback port). Clients' calls never do: they go
  through Envoy to the server's cluster (`envoy_config/mcp.py`), with Envoy's TLS, pools, timeouts and retries.
- The catalog is filled lazily and kept fresh in the background: the first list request of a process waits for the
  first fetch (at most `wait_budget`, under Envoy's ext_proc message timeout; then it answers what has arrived);
  later ones answer from memory and, when something is stale (TTL), start one refresh in the background. An
  upstream's `list_changed` (on a call's stream, or on the server's own GET stream, which each process reads while
  the server offers one) starts a refresh at once. A server that fails keeps its last good lists and is marked
  unhealthy until a refresh or a ping succeeds (every `HEALTH_INTERVAL_SECONDS`).
- Upstream sessions: a gateway session opens its own upstream session per server the first time it needs that
  server, and keeps the id (with the version spoken) in the session store, so another process continues it. A
  stateless-revision client has no gateway session: its calls share this process's session with the server (the
  same one the catalog uses), which is what the client asked for by being stateless.
- An upstream that answers 404 to a session we opened has forgotten it: `forget` drops the mapping and the next call
  opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..auth.sealing import KEY_ENV, derived_secret, mcp_bridge_key
from ..auth.virtual_keys import KeyInfo
from ..config.models import McpServer, McpSettings, SecretRef, Team
from ..guardrails.engine import Guardrail
from ..json_types import JsonObject
from .catalog import KINDS, Allow, Catalog
from .names import Namespace
from .protocol import LIST_METHODS
from .sessions import Session, SessionStore
from .upstream_client import UpstreamClient, UpstreamError, UpstreamSession, credential_headers

log = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 15.0
"""How often each upstream is pinged (and stale lists fetched) in the background."""
_LIST_OF_KIND = {kind: method for method, kind in LIST_METHODS.items()}
_CAPABILITY_OF_KIND = {"tools": "tools", "resources": "resources", "resourceTemplates": "resources",
                       "prompts": "prompts"}
MAX_ALLOW_CACHED = 4096
LISTEN_PAUSE_MAX_SECONDS = 30.0
"""A server whose stream keeps breaking is listened to again at most this often."""


@dataclass
class ServerState:
    """One upstream server as this process sees it."""

    settings: McpServer
    url: str
    client: UpstreamClient
    shared: UpstreamSession | None = None
    """This process's own session with the server (lists, pings, stateless clients' calls)."""
    healthy: bool | None = None
    """None until first contacted."""
    error: str = ""
    checked_at: float = 0.0
    """Wall-clock time of the last contact attempt."""
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self, catalog: Catalog) -> JsonObject:
        counts = {kind: sum(1 for server, _ in catalog.merged(kind) if server == self.settings.name)
                  for kind in KINDS}
        return {"name": self.settings.name, "transport": "stdio" if self.settings.command else "http",
                "url": self.url, "healthy": self.healthy, "error": self.error, "checked_at": self.checked_at,
                "protocol_version": self.shared.version if self.shared is not None else "", **counts}


def upstream_url(server: McpServer, bridge_host: str) -> str:
    """Where the gateway reaches `server`: its URL, or a stdio server's bridge."""
    if server.url is not None:
        return server.url
    return f"http://{bridge_host}:{server.port}/mcp"


class McpService:
    def __init__(self, settings: McpSettings, sessions: SessionStore, credentials: dict[str, dict[str, str]],
                 cursor_key: bytes, teams: dict[str, Team] | None = None, wait_budget: float = 2.5) -> None:
        """`wait_budget`: the longest a request waits for an upstream here (the first fill of the catalog, opening
        an upstream session); under Envoy's ext_proc message timeout, so a slow upstream is this request's error
        (or a partial first list), never the gateway's timeout."""
        self.settings = settings
        self.wait_budget = wait_budget
        self.sessions = sessions
        self.credentials = credentials
        """Server name -> the headers the gateway adds upstream (secrets already read)."""
        namespace = Namespace(((s.name, s.name_prefix) for s in settings.servers), settings.separator)
        self.catalog = Catalog(namespace, page_size=settings.page_size, ttl=settings.list_ttl, cursor_key=cursor_key)
        self.servers: dict[str, ServerState] = {}
        for server in settings.servers:
            url = upstream_url(server, settings.bridge_host)
            client = UpstreamClient(url, headers=credentials.get(server.name), timeout=server.timeout,
                                    max_bytes=settings.max_result_bytes,
                                    on_notification=self._notified_by(server.name))
            self.servers[server.name] = ServerState(server, url, client)
        self.guardrails = tuple(Guardrail.of(g) for g in settings.guardrails)
        self._teams = teams or {}
        self._allows: dict[tuple[object, ...], Allow] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._first_fill: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Task[None]] = []
        self._ending: set[asyncio.Task[None]] = set()
        self._closed = False
        self._sessions_handed_over = False

    # -- policy --------------------------------------------------------------------------------------------------

    def allow_for(self, key: KeyInfo) -> Allow:
        """The key's allow-list, its team's applied too; one object per distinct pair of lists."""
        team = self._teams.get(key.team) if key.team is not None else None
        server_lists = [key.mcp_servers] + ([tuple(team.mcp_servers)] if team is not None else [])
        tool_lists = [key.mcp_tools] + ([tuple(team.mcp_tools)] if team is not None else [])
        cache_key = (tuple(server_lists), tuple(tool_lists))
        allow = self._allows.get(cache_key)
        if allow is None:
            if len(self._allows) >= MAX_ALLOW_CACHED:
                self._allows.clear()
            allow = self._allows[cache_key] = Allow(server_lists, tool_lists)
        return allow

    # -- the catalog ---------------------------------------------------------------------------------------------

    async def fresh_catalog(self) -> Catalog:
        """The catalog, filled at least once; a stale part is refreshed in the background."""
        self._start_pinger()
        if any(server.healthy is None for server in self.servers.values()):
            if self._first_fill is None or (self._first_fill.done() and self._never_filled()):
                self._first_fill = asyncio.get_running_loop().create_task(self.refresh())
            with contextlib.suppress(TimeoutError):  # past the budget: answer with what has arrived
                await asyncio.wait_for(asyncio.shield(self._first_fill), self.wait_budget)
        elif self.catalog.stale():
            self._refresh_soon()
        return self.catalog

    def _never_filled(self) -> bool:
        return any(server.healthy is None for server in self.servers.values())

    async def refresh(self) -> None:
        """Fetch every stale (server, kind) list, servers in parallel."""
        stale: dict[str, list[str]] = {}
        for server, kind in self.catalog.stale():
            stale.setdefault(server, []).append(kind)
        await asyncio.gather(*(self._refresh_server(self.servers[name], kinds) for name, kinds in stale.items()))

    async def _refresh_server(self, state: ServerState, kinds: list[str]) -> None:
        try:
            session = await self._shared(state)
            offered = session.server.get("capabilities") if isinstance(session.server, dict) else None
            for kind in kinds:
                if isinstance(offered, dict) and _CAPABILITY_OF_KIND[kind] not in offered:
                    self.catalog.update(state.settings.name, kind, [])  # the server offers none
                    continue
                items = await state.client.list_all(session, _LIST_OF_KIND[kind])
                self.catalog.update(state.settings.name, kind, items)
            self._mark(state, None)
        except UpstreamError as exc:
            self._mark(state, exc)
            if state.shared is not None and "HTTP 404" in str(exc):
                state.shared = None  # the server forgot our session: open a new one next time

    def failed(self, server: str, error: str) -> None:
        """A forwarded request found the server unreachable or broken (health shows it until a ping succeeds)."""
        self._mark(self.servers[server], UpstreamError(error))

    def _mark(self, state: ServerState, error: Exception | None) -> None:
        was = state.healthy
        state.healthy, state.error, state.checked_at = error is None, str(error or ""), time.time()
        if error is not None and was is not False:
            log.warning("MCP server %s unavailable: %s", state.settings.name, error)
        elif error is None and was is False:
            log.warning("MCP server %s reachable again", state.settings.name)

    async def _shared(self, state: ServerState) -> UpstreamSession:
        async with state.opening:
            if state.shared is None:
                state.shared = await state.client.open()
            return state.shared

    def _notified_by(self, server: str) -> Callable[[JsonObject], None]:
        def notified(message: JsonObject) -> None:
            method = message.get("method")
            if isinstance(method, str):
                self.notified(server, method)
        return notified

    def notified(self, server: str, method: str) -> None:
        """An upstream notification (on a call's stream, an answer, or the server's own stream): a `list_changed`
        makes that server's lists stale and starts a refresh now."""
        if self.catalog.notified(server, method) and not self._closed:
            self._refresh_soon()

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next request refreshes
                self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    # -- upstream sessions ---------------------------------------------------------------------------------------

    async def upstream_session(self, server: str, session: Session | None) -> UpstreamSession:
        """The upstream session a call for `session` (None: a stateless client) goes on, opened if needed (within
        `wait_budget`; the opening runs in a task of its own, as the HTTP client needs)."""
        state = self.servers[server]
        known = state.shared if session is None else _recorded(session, server)
        if known is not None:  # the common case: no I/O, no task
            return known
        try:
            return await asyncio.wait_for(self._session_for(state, session), self.wait_budget)
        except TimeoutError:
            raise UpstreamError(f"no session with {server!r} within {self.wait_budget:g}s", timeout=True) from None

    async def _session_for(self, state: ServerState, session: Session | None) -> UpstreamSession:
        server = state.settings.name
        if session is None:
            return await self._shared(state)
        opened = await state.client.open()
        await self.sessions.set_upstream(session, server, f"{opened.version} {opened.session_id or ''}")
        return opened

    async def forget(self, server: str, session: Session | None) -> None:
        """The upstream no longer knows the session a call went on."""
        if session is None:
            self.servers[server].shared = None
        else:
            session.upstream.pop(server, None)
            await self.sessions.set_upstream(session, server, "")

    def end(self, session: Session) -> None:
        """The client ended its gateway session: end the upstream sessions it opened (best effort, in the
        background: the client's DELETE does not wait for the upstreams')."""
        task = asyncio.get_running_loop().create_task(self._end(session))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _end(self, session: Session) -> None:
        for server, recorded in session.upstream.items():
            state = self.servers.get(server)
            version, _, upstream_id = recorded.partition(" ")
            if state is not None and upstream_id:
                with contextlib.suppress(UpstreamError):
                    await state.client.close(UpstreamSession(version, upstream_id))

    # -- health --------------------------------------------------------------------------------------------------

    def health(self) -> list[JsonObject]:
        return [state.describe(self.catalog) for state in self.servers.values()]

    def _start_pinger(self) -> None:
        if self._pinger is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._pinger = loop.create_task(self._ping_forever())
            self._listeners = [loop.create_task(self._listen_forever(state)) for state in self.servers.values()]

    async def _listen_forever(self, state: ServerState) -> None:
        """Each server's own stream of notifications (its `list_changed` reach the catalog without a call), read
        again whenever it ends or breaks; not at all when the server offers none."""
        pause = 1.0
        while not self._closed:
            try:
                if not await state.client.listen(await self._shared(state)):
                    return
                pause = 1.0
            except UpstreamError:
                await asyncio.sleep(pause)
                pause = min(pause * 2, LISTEN_PAUSE_MAX_SECONDS)

    async def _ping_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(HEALTH_INTERVAL_SECONDS, self.settings.list_ttl))
            await asyncio.gather(*(self._ping(state) for state in self.servers.values()))
            if self.catalog.stale():
                await self.refresh()

    async def _ping(self, state: ServerState) -> None:
        try:
            session = await self._shared(state)
            await state.client.request(session, "ping")
            self._mark(state, None)
        except UpstreamError as exc:
            self._mark(state, exc)
            state.shared = None
            self.catalog.invalidate(state.settings.name)

    def hand_over_sessions(self) -> SessionStore:
        """The session store, for the service that replaces this one on a reload (this one won't close it)."""
        self._sessions_handed_over = True
        return self.sessions

    async def close(self) -> None:
        self._closed = True
        for task in (self._pinger, self._refreshing, self._first_fill, *self._listeners):
            if task is not None:
                task.cancel()
        for state in self.servers.values():
            await state.client.aclose()
        if not self._sessions_handed_over:
            await self.sessions.close()


def _recorded(session: Session, server: str) -> UpstreamSession | None:
    """The upstream session `session` already has with `server` (recorded as "<version> <id>")."""
    recorded = session.upstream.get(server)
    if not recorded:
        return None
    version, _, upstream_id = recorded.partition(" ")
    return UpstreamSession(version, upstream_id or None)


def read_credentials(settings: McpSettings, read: Callable[[SecretRef, str], str],
                     where: Callable[[int], str]) -> dict[str, dict[str, str]]:
    """Every server's upstream headers, secrets read now (a missing one fails the config load, not a call). A stdio
    server's bridge gets the bearer its launcher gave it (derived from the deployment's shared key, when set)."""
    shared = os.environ.get(KEY_ENV)
    headers = {}
    for index, server in enumerate(settings.servers):
        headers[server.name] = credential_headers(server, read, where(index))
        if server.command is not None and shared:
            headers[server.name]["authorization"] = "Bearer " + mcp_bridge_key(shared, server.name)
    return headers


def shared_key(purpose: str) -> bytes:
    """A key for `purpose` (list cursors, sealed session ids) from the deployment's shared metadata key, so any
    process reads what another signed (one process's own random key without it, like reservation seals)."""
    shared = os.environ.get(KEY_ENV) or secrets.token_urlsafe(32)
    return bytes.fromhex(derived_secret(shared, f"babelgate mcp {purpose}"))
