"""`babelgate mcp servers`: the upstream MCP servers and their health, through the admin API (`ListMcpServers`).

The health shown is the view of the ext_proc process that serves the admin API (each process pings on its own); a
server that process never contacted is contacted before it answers, so the first listing is a real one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from google.protobuf.json_format import MessageToDict

from . import admin_pb2 as pb
from .client import AdminError
from .keys_command import UsageError, add_admin_target, admin_client

_COLUMNS = ("name", "transport", "health", "tools", "resources", "templates", "prompts", "protocol", "checked",
            "url/error")


def add_parser(commands: argparse._SubParsersAction) -> None:
    mcp = commands.add_parser("mcp", help="the gateway's upstream MCP servers (through the admin API)")
    actions = mcp.add_subparsers(dest="mcp_command", required=True)
    servers = actions.add_parser("servers", help="each upstream MCP server: health, last error, items it offers")
    servers.add_argument("--json", action="store_true", help="machine-readable rows")
    add_admin_target(servers)
    servers.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        client = admin_client(args, "the MCP servers' health is read through it")
        try:
            reply = client.call("ListMcpServers", pb.ListMcpServersRequest(), pb.ListMcpServersResponse)
        finally:
            client.close()
    except (UsageError, AdminError) as exc:
        print(f"babelgate: {exc}", file=sys.stderr)
        return 2
    rows = [MessageToDict(server, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for server in reply.servers]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no MCP servers configured (the config has no `mcp:` section)", file=sys.stderr)
    else:
        print(table(list(reply.servers)))
    return 0


def table(servers: list[pb.McpServer]) -> str:
    """One line per server; the last column is the URL, or why the server is unhealthy."""
    lines = [_COLUMNS]
    now = time.time()
    for server in servers:
        checked = (f"{max(0, round(now - server.checked_at.ToNanoseconds() / 1e9))}s ago"
                   if server.HasField("checked_at") else "never")
        lines.append((server.name, server.transport, pb.McpServer.Health.Name(server.health).lower(),
                      str(server.tools), str(server.resources), str(server.resource_templates), str(server.prompts),
                      server.protocol_version or "-", checked, server.error or server.url))
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in lines)
