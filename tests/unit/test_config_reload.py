"""The reloader's poll of the stored keys' version (keys the admin API keeps in Redis): a new version reloads, an
unchanged or unreadable one does not, and a failing poll never stops the watch."""

from __future__ import annotations

import asyncio
import time
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
    polls = 0

    async def changes() -> object:
        nonlocal polls
        polls += 1
        value = next(versions, b"3")
        if isinstance(value, Exception):
            raise value
        return value

    path = _config(tmp_path)
    reloader = ConfigReloader(Holder(path), path, load_config, changes=changes)
    reloader._build = lambda old: old  # type: ignore[method-assign]  # what is loaded is not under test here

    async def run() -> None:
        watch = asyncio.get_running_loop().create_task(reloader.watch())
        deadline = time.monotonic() + 30
        while polls < 10 and time.monotonic() < deadline:  # every version seen, and "3" again a few times
            await asyncio.sleep(0.01)
        assert not watch.done()
        watch.cancel()

    asyncio.run(run())
    assert reloader.reloads == 2  # b"1" -> b"2" -> b"3"; None and the failure changed nothing


def test_an_edit_made_while_a_reload_reads_the_config_is_reloaded_too(tmp_path: Path) -> None:
    """A SIGHUP's reload was reading the file when an edit landed (as an operator saving right after a SIGHUP):
    the watch must still see the edit, not record the edited file as already seen."""
    path = _config(tmp_path)
    holder = Holder(path)

    def edit_while_loading(where: Path) -> object:
        config = load_config(where)  # the reload read the file as it was...
        data = yaml.safe_load(path.read_text())
        data["routes"].append({"model": "added", "backends": [{"backend": "oa", "model": "m"}]})
        replaced = path.with_suffix(".tmp")
        replaced.write_text(yaml.safe_dump(data))
        replaced.replace(path)  # ...and then the edit landed
        return config

    reloader = ConfigReloader(holder, path, edit_while_loading)  # type: ignore[arg-type]
    reloader._build = lambda old: compile_runtime(reloader._load(path), load_secrets=False)  # type: ignore[method-assign]
    asyncio.run(reloader.reload("SIGHUP"))
    assert "added" not in holder.current.routes
    assert reloader._snapshot() != reloader._seen  # the next poll reloads the edit


def test_an_edit_made_before_the_watch_began_is_reloaded(tmp_path: Path) -> None:
    """The servers (and `babelgate up`) start watching after they read the config and started: an edit landing in
    between is measured against the file as it was read, not as it is when the watch begins."""
    path = _config(tmp_path)
    holder = Holder(path)
    edited = yaml.safe_load(path.read_text())
    edited["routes"].append({"model": "added", "backends": [{"backend": "oa", "model": "m"}]})
    replaced = path.with_suffix(".tmp")
    replaced.write_text(yaml.safe_dump(edited))
    replaced.replace(path)
    reloader = ConfigReloader(holder, path, load_config)
    assert reloader._snapshot() != reloader._seen  # the first poll reloads it
    copied = holder.current.config.model_copy(update={"listener": holder.current.config.listener})
    assert copied.origin.read == holder.current.config.origin.read  # what `up` passes on keeps it
