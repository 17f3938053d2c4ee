"""Hot reload of a running server's configuration: on SIGHUP, or when the config file, the keys file or a secret file
changes on disk.

Keys the admin API stored in Redis are part of the configuration too: `changes` polls their version.

A new configuration is loaded and compiled off the event loop, then swapped in as a whole (`RuntimeHolder.current`);
streams already open keep the snapshot they started with. A configuration that does not load (bad YAML, a missing
secret, a reference to an unknown backend) is rejected with one log line and the running one stays. What the old
snapshot held and the new one dropped (credential refresh threads, a limiter store) is closed once the streams that
may still use it have had time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from ..config.models import Config
from ..config.watch import file_signature, seen_after_reload, watched_files
from .build import Runtime, compile_runtime, retired_by

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
RETIRE_AFTER = 60.0
"""Seconds an old snapshot's resources stay open after a swap: longer than any request that could still use them
except the longest streams, whose credential was already used when they started."""


class Holder(Protocol):
    current: Runtime


class ConfigReloader:
    def __init__(self, holder: Holder, config_path: Path, load: Callable[[Path], Config],
                 on_swap: Callable[[Runtime, Runtime], None] | None = None,
                 changes: Callable[[], Awaitable[object]] | None = None) -> None:
        self._holder = holder
        self._changes = changes
        self._changes_seen: object = None
        self._path = config_path
        self._load = load
        self._on_swap = on_swap
        config = holder.current.config
        # the files as they were when this config was read: an edit since then is a change to reload
        self._seen = seen_after_reload(config.origin.read, watched_files(config, config_path))
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self.reloads = 0
        self.rejections = 0

    def _snapshot(self) -> dict[Path, tuple[int, int, int] | None]:
        """The watched files as they are now. Which files those are was worked out when the config was read (the
        keys of `_seen`): walking the config for its secret files four times a second cost more than the stats."""
        return {path: file_signature(path) for path in self._seen}

    async def watch(self) -> None:
        """Poll the watched files; a change triggers a reload (an editor's save is several writes: wait for quiet)."""
        self._changes_seen = await self._poll_changes()
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self._snapshot() != self._seen:
                await asyncio.sleep(POLL_INTERVAL / 2)
                await self.reload("a watched file changed")
            if self._changes is not None:
                version = await self._poll_changes()
                if version is not None and version != self._changes_seen:
                    self._changes_seen = version
                    await self.reload("the stored keys changed")

    async def _poll_changes(self) -> object:
        """The stored keys' version; None when it can't be read now (the watch must outlive any failure)."""
        if self._changes is None:
            return None
        try:
            return await self._changes()
        except Exception as exc:
            log.warning("can't read the stored keys' version: %s", type(exc).__name__)
            return None

    async def reload(self, reason: str) -> bool:
        async with self._lock:
            before = self._seen = self._snapshot()
            old = self._holder.current
            try:
                new = await asyncio.to_thread(self._build, old)
            except Exception as exc:  # every failure keeps the running config; the message says why
                self.rejections += 1
                log.error("config reload (%s) rejected, keeping the running configuration: %s", reason,
                          str(exc) or type(exc).__name__)
                return False
            self._holder.current = new
            self._seen = seen_after_reload(before, watched_files(new.config, self._path))
            self.reloads += 1
            log.info("configuration reloaded (%s): %d backends, %d routes, %d keys", reason,
                     len(new.backends), len(new.config.routes), len(new.keys))
            if self._on_swap is not None:
                self._on_swap(old, new)
            self._retire(retired_by(old, new))
            return True

    def _build(self, old: Runtime) -> Runtime:
        config = self._load(self._path)
        new = compile_runtime(config, previous=old)
        for backend in new.backends.values():
            previous = old.backends.get(backend.id)
            if previous is None or backend.credential is not previous.credential:
                prefetch = getattr(backend.credential, "prefetch", None)
                if prefetch is not None:  # token endpoints are called here, not by the first request
                    prefetch()
        return new

    def _retire(self, resources: list[object]) -> None:
        if not resources:
            return

        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER)
            for resource in resources:
                for name in ("close", "stop"):
                    method = getattr(resource, name, None)
                    if method is None:
                        continue
                    with contextlib.suppress(Exception):
                        result = method()
                        if inspect.isawaitable(result):
                            await result
                    break

        task = asyncio.get_running_loop().create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
