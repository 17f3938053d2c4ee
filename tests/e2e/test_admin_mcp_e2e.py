"""The upstream MCP servers' health through the real admin API: gRPC on its own port, JSON through Envoy's gRPC-JSON
transcoder, and `babelgate mcp servers`. One ext_proc process, so the process that serves the admin API is also the
one every MCP call goes through (each process keeps its own view of the upstreams)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from ext_proc.admin import admin_pb2 as pb
from ext_proc.launch.processes import free_port
from tests.unit.mcp_peers import RawClient
from tests.unit.test_admin_mcp import upstream_counts

from ..eventually import eventually
from .gateways import Gateway, GatewayBuilder
from .support import wait_for_the_full_mcp_catalog

ADMIN_SECRET = "bg-admin-mcp-e2e-credential-0123456789"
METHOD = "/babelgate.admin.v1.Admin/"
BABELGATE = [sys.executable, "-m", "ext_proc"]
LIST_TTL_SECONDS = 2
"""`mcp.list_ttl`: the servers' pings run this often (at most every 15 s), so a dead server's error shows soon."""


@dataclass
class McpAdmin:
    gateway: Gateway
    admin_port: int
    urls: dict[str, str]
    """MCP server name -> its upstream URL."""

    def servers(self) -> dict[str, pb.McpServer]:
        with grpc.insecure_channel(f"127.0.0.1:{self.admin_port}") as channel:
            method = channel.unary_unary(METHOD + "ListMcpServers",
                                         request_serializer=pb.ListMcpServersRequest.SerializeToString,
                                         response_deserializer=pb.ListMcpServersResponse.FromString)
            reply = method(pb.ListMcpServersRequest(), timeout=30,
                           metadata=[("authorization", f"Bearer {ADMIN_SECRET}"), ("x-babelgate-operator", "e2e")])
        return {server.name: server for server in reply.servers}

    def json(self, path: str) -> Any:
        answer = httpx.get(self.gateway.url + path, headers={"authorization": f"Bearer {ADMIN_SECRET}"}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def stop(self, server: str) -> None:
        child = next(c for c in self.gateway.supervisor.children if c.name == f"mcp-{server}")
        child.process.terminate()
        child.process.wait(30)


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpAdmin]:
    workdir = tmp_path_factory.mktemp("admin-mcp")
    with GatewayBuilder(workdir, processes=1) as build:
        build.backend("openai", build.demo("openai"))
        build.route("gpt-4o", ("openai", "gpt-4o"))
        build.key("everything")
        urls = {name: build.mcp_server(name)["url"] for name in ("tools", "doomed")}
        urls["nowhere"] = f"http://127.0.0.1:{free_port()}/mcp"
        build.config["mcp"]["servers"].append({"name": "nowhere", "url": urls["nowhere"], "timeout": "10s"})
        build.mcp_stdio_server("local")
        build.set(mcp={"list_ttl": f"{LIST_TTL_SECONDS}s"}, keys_file=str(workdir / "keys.yaml"))
        admin_port = build.admin(ADMIN_SECRET, via_envoy=True)
        gateway = build.start()
        # the first contact waits only so long for the upstreams; the tests want every one contacted
        wait_for_the_full_mcp_catalog(gateway.url, gateway.key, {"tools__echo", "doomed__echo", "local__notes_add"})
        yield McpAdmin(gateway, admin_port, urls)


def test_the_first_listing_contacts_each_server_and_shows_its_health(admin: McpAdmin) -> None:
    servers = admin.servers()
    assert list(servers) == ["tools", "doomed", "nowhere", "local"]
    tools = servers["tools"]
    assert (tools.health, tools.transport, tools.url, tools.error) == (pb.McpServer.HEALTHY, "http",
                                                                        admin.urls["tools"], "")
    assert tools.tools == upstream_counts(admin.urls["tools"])["tools"] > 0
    assert tools.protocol_version and tools.HasField("checked_at")
    assert servers["local"].health == pb.McpServer.HEALTHY and servers["local"].transport == "stdio"
    nowhere = servers["nowhere"]
    assert nowhere.health == pb.McpServer.UNHEALTHY and "could not be reached" in nowhere.error
    assert nowhere.tools == 0


def test_json_through_envoy_and_in_list_routes(admin: McpAdmin) -> None:
    listed = {s["name"]: s for s in admin.json("/admin/v1/mcp/servers")["servers"]}
    assert listed["tools"]["health"] == "HEALTHY" and listed["tools"]["tools"] > 0
    assert listed["nowhere"]["health"] == "UNHEALTHY" and listed["nowhere"]["error"]
    assert listed["local"]["transport"] == "stdio"
    routes = admin.json("/admin/v1/routes")
    assert [r["model"] for r in routes["routes"]] == ["gpt-4o"]
    assert {s["name"]: s["health"] for s in routes["mcp_servers"]}["tools"] == "HEALTHY"


def test_a_server_that_stops_turns_unhealthy_with_its_error(admin: McpAdmin) -> None:
    assert admin.servers()["doomed"].health == pb.McpServer.HEALTHY
    admin.stop("doomed")
    client = RawClient(admin.gateway.url + "/mcp", headers={"authorization": f"Bearer {admin.gateway.key}"})
    try:
        client.initialize()
        failed = client.request("tools/call", {"name": "doomed__echo", "arguments": {"text": "hi"}})
    finally:
        client.close()
    assert "doomed" in failed["error"]["message"], failed
    assert admin.servers()["doomed"].health == pb.McpServer.UNHEALTHY  # the failed call marked it

    def down_with_an_error() -> pb.McpServer | None:
        doomed = admin.servers()["doomed"]
        return doomed if doomed.health == pb.McpServer.UNHEALTHY and doomed.error else None

    # the error text comes from the next ping (every LIST_TTL_SECONDS)
    down = eventually(down_with_an_error, timeout=60, what="the stopped server unhealthy with its error")
    assert "could not be reached" in down.error
    assert admin.servers()["tools"].health == pb.McpServer.HEALTHY


def _babelgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*BABELGATE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_the_mcp_servers_command_prints_a_table_and_json(admin: McpAdmin) -> None:
    by_address = ("--admin", f"127.0.0.1:{admin.admin_port}")
    credential = {"BABELGATE_ADMIN_KEY": ADMIN_SECRET}
    printed = _babelgate("mcp", "servers", *by_address, env=credential)
    assert printed.returncode == 0, printed.stderr
    header, *lines = printed.stdout.splitlines()
    assert header.split()[:3] == ["name", "transport", "health"]
    rows = {line.split()[0]: line for line in lines}
    assert rows["tools"].split()[1:3] == ["http", "healthy"] and rows["tools"].rstrip().endswith(admin.urls["tools"])
    assert rows["nowhere"].split()[2] == "unhealthy" and "could not be reached" in rows["nowhere"]

    by_config = ("-c", str(admin.gateway.config_path))
    as_json = _babelgate("mcp", "servers", "--json", *by_config, env={"BG_E2E_ADMIN": ADMIN_SECRET})
    assert as_json.returncode == 0, as_json.stderr
    listed = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert listed["tools"]["health"] == "HEALTHY" and listed["tools"]["tools"] > 0
    assert listed["local"]["transport"] == "stdio"


def test_the_mcp_servers_command_says_why_it_could_not_list(admin: McpAdmin) -> None:
    wrong = _babelgate("mcp", "servers", "--admin", f"127.0.0.1:{admin.admin_port}",
                       env={"BABELGATE_ADMIN_KEY": "wrong"})
    assert wrong.returncode == 2 and "unauthenticated" in wrong.stderr
    closed = _babelgate("mcp", "servers", "--admin", f"127.0.0.1:{free_port()}",
                        env={"BABELGATE_ADMIN_KEY": ADMIN_SECRET})
    assert closed.returncode == 2 and "can't reach the admin API" in closed.stderr
