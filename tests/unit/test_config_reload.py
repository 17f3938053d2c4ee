"""The reloader's poll of the stored keys' version (keys the admin API keeps in Redis): a new version reloads, an
unchanged or unreadable one does not, and a failing poll never stops the watch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from ext_proc.config.loading import load_config
from ext_proc.runtime import reload
from ext_proc.runtime.build import compile_runtime
from ext_proc.runtime.reload import ConfigReloader


class Holder:
    def __init__(self, path: Path) -> None:
        self.current = compile_runtime(load_config(path), load_secrets=False)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "backends": [{"id": "oa", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "oa", "model": "m"}]}]}))
    return path


def test_a_new_stored_keys_version_reloads_and_a_failing_poll_is_survived(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reload, "POLL_INTERVAL", 0.01)
    versions = iter([b"1", b"1", None, b"2", RuntimeError("boom"), b"2", b"3"])

    async def changes() -> object:
        value = next(versions, b"3")
        if isinstance(value, Exception):
            raise value
        return value

    path = _config(tmp_path)
    reloader = ConfigReloader(Holder(path), path, load_config, changes=changes)
    reloader._build = lambda old: old  # type: ignore[method-assign]  # what is loaded is not under test here

    async def run() -> None:
        watch = asyncio.get_running_loop().create_task(reloader.watch())
        await asyncio.sleep(0.3)
        assert not watch.done()
        watch.cancel()

    asyncio.run(run())
    assert reloader.reloads == 2  # b"1" -> b"2" -> b"3"; None and the failure changed nothing
