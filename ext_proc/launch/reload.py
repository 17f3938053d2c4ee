"""`babelgate up` follows its config file: on a change (or SIGHUP) Envoy gets the new routes and clusters through
its watched files, while each ext_proc server reloads the same file on its own (see `runtime/reload.py`).

Stdio MCP servers: the bridges follow the new config first (`mcp_bridges.Bridges.start`: new ones start, changed
ones restart, dropped ones stop), and when the servers read a copy of the config with the bridges' ports filled in
(`Stack.served_path`), that copy is rewritten, so they reload with the same ports as Envoy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..auth.credentials import check_environment, read_secret
from ..config.models import Config
from ..config.watch import file_signature, seen_after_reload, watched_files
from .mcp_bridges import needs_ports, write_served_config
from .stack import Stack

log = logging.getLogger(__name__)


class StackReloader:
    def __init__(self, stack: Stack, config_path: Path, load: Callable[[Path], Config]) -> None:
        self._stack = stack
        self._path = config_path
        self._load = load
        # the files as they were when the config was read: an edit while the stack started is a change to reload
        self._seen = seen_after_reload(stack.config.origin.read, watched_files(stack.config, config_path))

    def _snapshot(self) -> dict[Path, tuple[int, int, int] | None]:
        """The watched files (`_seen`'s, worked out when the config was read) as they are now."""
        return {path: file_signature(path) for path in self._seen}

    def tick(self) -> None:
        """Called a few times a second by the supervising loop."""
        self._stack.settle()
        if self._snapshot() != self._seen:
            self.reload("the config file changed")

    def hangup(self) -> None:
        self.reload("SIGHUP")

    def reload(self, reason: str) -> bool:
        before = self._seen = self._snapshot()
        try:
            config = self._load(self._path)
            check_environment(config)  # what the servers would refuse, Envoy refuses too (every variable at once)
            for index, backend in enumerate(config.backends):
                if backend.api_key is not None:
                    read_secret(backend.api_key, config.origin.at(("backends", index, "api_key")))
        except Exception as exc:  # the running configuration stays; the message says why
            log.error("config reload (%s) rejected, keeping the running configuration: %s", reason,
                      str(exc) or type(exc).__name__)
            return False
        running = self._stack.config
        try:
            config = self._with_bridges(config)
        except Exception as exc:
            log.error("config reload (%s) rejected: an MCP bridge did not start: %s", reason, exc)
            return False
        if config.listener != running.listener or _ext_proc_changed(config, running):
            log.warning("listener and ext_proc settings changed: they take effect at the next restart")
        config = config.model_copy(update={"listener": running.listener, "ext_proc": running.ext_proc})
        if config.limits.meter_streams_aside and not running.limits.meter_streams_aside:
            log.warning("limits.meter_streams_aside turned on: Envoy's listener gets the stream meter filter at the "
                        "next restart; until then a stream metered aside is charged its whole reservation")
        if config.jwt != running.jwt:
            log.warning("jwt issuers changed: the servers map claims by the new settings at once, Envoy's listener "
                        "verifies tokens (issuers, audiences, keys) by the old ones until the next restart")
        self._stack.apply(config)
        self._seen = seen_after_reload(before, watched_files(config, self._path))
        log.info("Envoy routes and clusters reloaded (%s)", reason)
        return True

    def _with_bridges(self, config: Config) -> Config:
        """`config` with its stdio servers' bridges running and their ports filled in, also in the servers' copy."""
        stack = self._stack
        if stack.bridges is None or (config.mcp is None and not stack.bridges.running):
            return config
        unresolved = needs_ports(config)
        config = stack.bridges.start(config)
        if stack.served_path is not None:
            write_served_config(self._path, config, stack.served_path.parent)
        elif unresolved:
            log.warning("a stdio MCP server without `port` was added: the ext_proc servers read %s as written, so "
                        "they reach its bridge only after a restart (or give it a `port`)", self._path)
        return config


def _ext_proc_changed(config: Config, running: Config) -> bool:
    """The socket directory `start_stack` chose (the config left it unset) is no change."""
    loaded = config.ext_proc
    if loaded.socket_dir is None:
        loaded = loaded.model_copy(update={"socket_dir": running.ext_proc.socket_dir})
    return loaded != running.ext_proc
