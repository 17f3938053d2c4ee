"""The MCP side of the runtime across reloads: kept while `mcp:` is unchanged, replaced otherwise, with the clients'
sessions handed over; the old side closed without closing the store it handed over."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ext_proc.config.loading import load_config, parse_config
from ext_proc.config.watch import watched_files
from ext_proc.runtime.build import compile_runtime, retired_by

CONFIG = """
backends:
  - {id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1"}
routes:
  - model: m
    backends: [{backend: oa, model: x}]
mcp:
  list_ttl: %s
  servers:
    - {name: tools, url: "http://127.0.0.1:9/mcp"}
"""


def test_a_reload_keeps_or_replaces_the_mcp_side_and_keeps_the_sessions() -> None:
    first = compile_runtime(parse_config(CONFIG % "300s"))
    assert first.mcp is not None
    same = compile_runtime(parse_config(CONFIG % "300s"), previous=first)
    assert same.mcp is first.mcp and first.mcp not in retired_by(first, same)

    async def scenario() -> None:
        assert first.mcp is not None
        session = await first.mcp.sessions.create("k", "2025-11-25", {})
        changed = compile_runtime(parse_config(CONFIG % "60s"), previous=first)
        assert changed.mcp is not None and changed.mcp is not first.mcp
        assert changed.mcp.catalog.ttl == 60 and first.mcp in retired_by(first, changed)
        await first.mcp.close()
        kept = await changed.mcp.sessions.get(session.id, "k")
        assert kept is not None and kept.version == "2025-11-25"
        await changed.mcp.close()

    asyncio.run(scenario())


def test_no_mcp_section_no_mcp_side() -> None:
    text = CONFIG.split("mcp:")[0]
    assert compile_runtime(parse_config(text)).mcp is None


def test_mcp_secret_and_ca_files_are_relative_to_the_config_and_watched(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    for name in ("bearer", "header", "env"):
        (tmp_path / "secrets" / name).write_text(name)
    (tmp_path / "config.yaml").write_text(CONFIG % "300s" + """
    - name: second
      url: https://mcp.example.com/mcp
      ca_file: certs/ca.pem
      bearer: {file: secrets/bearer}
      headers: {x-api-key: {file: secrets/header}}
    - name: local
      command: [tool]
      env: {TOKEN: {file: secrets/env}}
""")
    config = load_config(tmp_path / "config.yaml")
    assert config.mcp is not None
    second, local = config.mcp.servers[1], config.mcp.servers[2]
    assert second.ca_file == tmp_path / "certs" / "ca.pem"
    assert second.bearer is not None and second.bearer.file == tmp_path / "secrets" / "bearer"
    watched = watched_files(config, tmp_path / "config.yaml")
    assert {tmp_path / "secrets" / name for name in ("bearer", "header", "env")} <= set(watched)
    assert local.env["TOKEN"].file == tmp_path / "secrets" / "env"
