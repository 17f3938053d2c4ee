"""`ListMcpServers` (and the MCP servers in `ListRoutes`) over a real `McpService` and real upstreams: the demo MCP
server over HTTP, the stdio demo behind the bridge, a port with nothing listening and a socket that never answers.
Driven through the method table the gRPC server registers, credential and audit line included; and the table
`babelgate mcp servers` prints."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import Message

from ext_proc.admin import admin_pb2 as pb
from ext_proc.admin import service as admin_service
from ext_proc.admin.mcp_command import table
from ext_proc.admin.service import OPERATOR_METADATA_KEY, SERVICE_NAME, AdminService
from ext_proc.config.loading import parse_config
from ext_proc.launch.processes import free_port
from ext_proc.runtime.build import compile_runtime
from ext_proc.transport.grpc import PEER_METADATA_KEY, RpcError, Status

from .mcp_peers import STDIO_DEMO, Peer, RawClient, bridge, http_demo, run
from .test_admin_service import OPS_SECRET, FakeCall, Holder

CONFIG = """
admin:
  credentials: [{name: ops, secret: {env: BG_TEST_ADMIN_OPS}}]
keys_file: KEYS_FILE
backends: [{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}]
routes: [{model: m, backends: [{backend: oa, model: x}]}]
"""
KINDS = {"tools": "tools/list", "resources": "resources/list", "resource_templates": "resources/templates/list",
         "prompts": "prompts/list"}


@pytest.fixture(autouse=True)
def admin_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BG_TEST_ADMIN_OPS", OPS_SECRET)


@pytest.fixture(scope="module")
def demo() -> Iterator[Peer]:
    with http_demo() as peer:
        yield peer


@pytest.fixture(scope="module")
def stdio() -> Iterator[Peer]:
    with bridge() as peer:
        yield peer


@pytest.fixture
def silent() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def admin_for(tmp_path: Path, servers: str = "") -> AdminService:
    text = CONFIG.replace("KEYS_FILE", str(tmp_path / "keys.yaml"))
    if servers:
        text += f"mcp:\n  servers:\n{servers}"
    return AdminService(Holder(compile_runtime(parse_config(text))))


async def call(service: AdminService, name: str, request: Message, reply: type[Message],
               secret: str | None = OPS_SECRET) -> Message:
    """One call through the registered method table; a refusal raises RpcError as the transport would answer it."""
    metadata = {PEER_METADATA_KEY: "10.1.2.3:40000", OPERATOR_METADATA_KEY: "alice"}
    if secret is not None:
        metadata["authorization"] = f"Bearer {secret}"
    fake = FakeCall()
    handler = service.methods()[f"/{SERVICE_NAME}/{name}"](fake, metadata)  # type: ignore[arg-type]
    handler.on_message(request.SerializeToString())
    handler.on_end()
    await asyncio.wait_for(fake.finished.wait(), 30)
    if fake.status != Status.OK:
        raise RpcError(fake.status or Status.UNKNOWN, fake.message)
    return reply.FromString(fake.messages[0])


async def servers_of(service: AdminService) -> dict[str, pb.McpServer]:
    reply = await call(service, "ListMcpServers", pb.ListMcpServersRequest(), pb.ListMcpServersResponse)
    return {server.name: server for server in reply.servers}  # type: ignore[attr-defined]


async def closing(service: AdminService, scenario: object) -> object:
    """Run the scenario, then close the MCP side (its clients belong to this event loop)."""
    try:
        return await scenario  # type: ignore[misc]
    finally:
        mcp = service._holder.current.mcp
        if mcp is not None:
            await mcp.close()


def upstream_counts(url: str) -> dict[str, int]:
    """What the server itself lists, cursor by cursor (the demos page two at a time)."""
    client = RawClient(url)
    try:
        client.initialize()
        counts = {}
        for field, method in KINDS.items():
            items, cursor = 0, None
            while True:
                result = client.request(method, {"cursor": cursor} if cursor else {})["result"]
                items += len(next(value for key, value in result.items() if isinstance(value, list)))
                cursor = result.get("nextCursor")
                if not cursor:
                    break
            counts[field] = items
        return counts
    finally:
        client.close()


def counts_of(server: pb.McpServer) -> dict[str, int]:
    return {field: getattr(server, field) for field in KINDS}


def test_each_server_is_contacted_before_the_first_answer_and_shows_what_it_offers(
        tmp_path: Path, demo: Peer, stdio: Peer) -> None:
    dead = free_port()
    service = admin_for(tmp_path, f"""    - {{name: web, url: "{demo.url}"}}
    - {{name: local, command: {STDIO_DEMO}, port: {stdio.ready["port"]}}}
    - {{name: gone, url: "http://127.0.0.1:{dead}/mcp", timeout: 10s}}
""")
    servers = run(closing(service, servers_of(service)))
    web, local, gone = servers["web"], servers["local"], servers["gone"]  # type: ignore[index]
    assert (web.health, web.transport, web.url, web.error) == (pb.McpServer.HEALTHY, "http", demo.url, "")
    assert counts_of(web) == upstream_counts(demo.url) and web.tools > 0
    assert web.protocol_version and web.HasField("checked_at")
    assert (local.health, local.transport, local.url) == (pb.McpServer.HEALTHY, "stdio", stdio.url)
    assert counts_of(local) == upstream_counts(stdio.url) and local.tools > 0
    assert gone.health == pb.McpServer.UNHEALTHY and gone.transport == "http"
    assert gone.error and gone.HasField("checked_at") and counts_of(gone) == dict.fromkeys(KINDS, 0)


def test_list_routes_shows_the_servers_as_last_seen_and_never_contacts_them(tmp_path: Path, demo: Peer) -> None:
    service = admin_for(tmp_path, f'    - {{name: web, url: "{demo.url}"}}\n')

    async def scenario() -> tuple[pb.ListRoutesResponse, pb.ListRoutesResponse]:
        before = await call(service, "ListRoutes", pb.ListRoutesRequest(), pb.ListRoutesResponse)
        await servers_of(service)
        after = await call(service, "ListRoutes", pb.ListRoutesRequest(), pb.ListRoutesResponse)
        return before, after  # type: ignore[return-value]

    before, after = run(closing(service, scenario()))  # type: ignore[misc]
    [unseen] = before.mcp_servers
    assert unseen.name == "web" and unseen.health == pb.McpServer.UNKNOWN and not unseen.HasField("checked_at")
    assert unseen.tools == 0 and unseen.protocol_version == ""
    [seen] = after.mcp_servers
    assert seen.health == pb.McpServer.HEALTHY and seen.tools > 0
    assert [r.model for r in after.routes] == ["m"]


def test_a_server_that_never_answers_is_unknown_once_the_first_contact_wait_is_over(
        tmp_path: Path, demo: Peer, silent: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer does not wait out the silent server's own timeout (a minute here): the others are already known."""
    monkeypatch.setattr(admin_service, "MCP_FIRST_CONTACT_SECONDS", 0.5)
    service = admin_for(tmp_path, f"""    - {{name: web, url: "{demo.url}"}}
    - {{name: silent, url: "http://127.0.0.1:{silent}/mcp", timeout: 60s}}
""")
    servers = run(closing(service, servers_of(service)))
    assert servers["silent"].health == pb.McpServer.UNKNOWN  # type: ignore[index]
    assert servers["web"].health == pb.McpServer.HEALTHY  # type: ignore[index]


def test_without_an_mcp_section_there_are_no_servers(tmp_path: Path) -> None:
    service = admin_for(tmp_path)
    assert service._holder.current.mcp is None
    assert run(closing(service, servers_of(service))) == {}
    routes = run(call(service, "ListRoutes", pb.ListRoutesRequest(), pb.ListRoutesResponse))
    assert list(routes.mcp_servers) == []  # type: ignore[attr-defined]


def test_listing_needs_the_admin_credential_and_is_audited(tmp_path: Path, demo: Peer,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="babelgate.audit")
    service = admin_for(tmp_path, f'    - {{name: web, url: "{demo.url}"}}\n')
    for secret in (None, "bg-not-the-credential"):
        with pytest.raises(RpcError) as refused:
            run(call(service, "ListMcpServers", pb.ListMcpServersRequest(), pb.ListMcpServersResponse,
                     secret=secret))
        assert refused.value.status == Status.UNAUTHENTICATED
    assert service._holder.current.mcp is not None
    assert all(entry["healthy"] is None for entry in service._holder.current.mcp.health())  # refused: not contacted
    run(closing(service, servers_of(service)))
    lines = [r.getMessage() for r in caplog.records if r.name == "babelgate.audit"]
    assert "admin ListMcpServers by ops (alice) from 10.1.2.3:40000: 1 servers" in lines
    assert sum("admin ListMcpServers refused" in line for line in lines) == 2


def test_the_table_names_the_error_of_an_unhealthy_server_and_when_it_was_checked() -> None:
    healthy = pb.McpServer(name="web", transport="http", url="http://127.0.0.1:9/mcp", health=pb.McpServer.HEALTHY,
                           protocol_version="2025-11-25", tools=6, resources=3, resource_templates=1, prompts=2)
    healthy.checked_at.GetCurrentTime()
    down = pb.McpServer(name="gone", transport="stdio", url="http://127.0.0.1:8/mcp", health=pb.McpServer.UNHEALTHY,
                        error="connection refused")
    down.checked_at.GetCurrentTime()
    unseen = pb.McpServer(name="later", transport="http", url="http://127.0.0.1:7/mcp")
    header, *rows = table([healthy, down, unseen]).splitlines()
    assert header.split()[:4] == ["name", "transport", "health", "tools"]
    assert rows[0].split()[:8] == ["web", "http", "healthy", "6", "3", "1", "2", "2025-11-25"]
    checked, ago, url = rows[0].split()[8:]
    assert checked.endswith("s") and checked[:-1].isdigit() and (ago, url) == ("ago", "http://127.0.0.1:9/mcp")
    assert rows[1].split()[:3] == ["gone", "stdio", "unhealthy"] and rows[1].endswith("connection refused")
    assert rows[2].split()[:3] == ["later", "http", "unknown"] and "never" in rows[2]
