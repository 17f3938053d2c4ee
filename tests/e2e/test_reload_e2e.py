"""Hot reload through the real Envoy: config and keys rewritten under traffic, two ext_proc processes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.launch.stack import Stack

from ..eventually import eventually
from .gateways import GatewayBuilder

HELLO = [{"role": "user", "content": "hi"}]
RELOAD_TIMEOUT = 30.0
"""Seconds a change may take to show in every answer. The servers poll their files four times a second and Envoy
takes new routes from its watched files at once: under a second when the machine is quiet, several when it is busy."""


@dataclass
class Reloadable:
    stack: Stack
    config_path: Path
    keys_path: Path
    base: dict
    keys: dict[str, str]
    log_dir: Path
    written: list[int] = field(default_factory=list)

    def client(self, key_id: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.stack.url + "/v1", api_key=self.keys[key_id], max_retries=0, timeout=20)

    def write_config(self, backend_model: str, broken: bool = False) -> None:
        data = {**self.base, "routes": [{"model": "m", "aliases": ["m-alias"],
                                         "backends": [{"backend": "p", "model": backend_model}]}]}
        text = yaml.safe_dump(data, sort_keys=False) + ("routes: [unclosed\n" if broken else "")
        _replace(self.config_path, text)

    def write_keys(self, *key_ids: str) -> None:
        _replace(self.keys_path, yaml.safe_dump([{"id": k, "hash": hash_key(self.keys[k])} for k in key_ids]))


def _replace(path: Path, text: str) -> None:
    """The way editors and ConfigMap updates write: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture(scope="module")
def reloadable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reloadable]:
    workdir = tmp_path_factory.mktemp("reload")
    with GatewayBuilder(workdir, processes=2) as build:
        (workdir / "provider.key").write_text("sk-reload\n")
        build.backend("p", build.demo("p", api_key="sk-reload"), api_key={"file": "provider.key"})
        build.set(keys_file="keys.yaml")
        base = dict(build.config)
        build.route("m", ("p", "v0"), aliases=["m-alias"])  # what `write_config("v0")` writes
        keys = {name: generate_key() for name in ("alice", "bob")}
        reloadable = Reloadable(None, build.config_path, workdir / "keys.yaml", base, keys, workdir)  # type: ignore[arg-type]
        reloadable.write_keys("alice", "bob")
        reloadable.stack = build.start().stack  # type: ignore[assignment]
        yield reloadable


def _model(client: openai.OpenAI) -> str:
    return client.chat.completions.create(model="m", messages=HELLO).model


def _wait_for_model(client: openai.OpenAI, expected: str) -> None:
    # both processes must have it: several answers in a row
    eventually(lambda: all(_model(client) == expected for _ in range(4)), timeout=RELOAD_TIMEOUT,
               what=f"{expected} served by every process")


def test_twenty_reloads_under_traffic_lose_no_request(reloadable: Reloadable) -> None:
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        client = reloadable.client("alice")
        while not stop.is_set():
            try:
                stream = client.chat.completions.create(model="m-alias", messages=HELLO, stream=True)
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
                client.chat.completions.create(model="m", messages=HELLO)
                served += 2
            except Exception as exc:  # every failure is a finding
                failures.append(repr(exc))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        observer = reloadable.client("alice")
        for version in range(1, 21):
            reloadable.write_config(f"v{version}")
            _wait_for_model(observer, f"v{version}")
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert not failures, failures[:5]
    assert served > 100


def test_revoked_key_is_refused_by_every_process_soon_after(reloadable: Reloadable) -> None:
    """Every process polls the keys file four times a second; the bound is loose (a busy CI machine) and the time
    measured is printed."""
    bob = reloadable.client("bob")
    assert _model(bob)
    reloadable.write_keys("alice")
    revoked = time.monotonic()
    eventually(lambda: _refused_six_times(bob), timeout=RELOAD_TIMEOUT, what="every process refuses the revoked key")
    print(f"\nrevoked key refused by every process {time.monotonic() - revoked:.3f} s after the keys file changed")
    assert _model(reloadable.client("alice"))
    reloadable.write_keys("alice", "bob")
    eventually(lambda: all(_model(bob) for _ in range(4)), timeout=RELOAD_TIMEOUT,
               what="the restored key works everywhere")


def _envoy_routes_version(admin_port: int) -> int:
    """The version of the routes Envoy runs (`up` writes version 1 at start and one more at each change), from its
    RDS `version_text` stat."""
    stats = httpx.get(f"http://127.0.0.1:{admin_port}/stats", params={"filter": r"\.rds\..*\.version_text$"},
                      timeout=5).text
    return max(int(line.rpartition(":")[2].strip().strip('"')) for line in stats.splitlines())


def _refused_six_times(client: openai.OpenAI) -> bool:
    for _ in range(6):
        try:
            _model(client)
        except openai.AuthenticationError:
            continue
        return False
    return True


def test_invalid_config_is_rejected_and_the_running_one_stays(reloadable: Reloadable) -> None:
    alice = reloadable.client("alice")
    current = _model(alice)
    reloadable.write_config("never-served", broken=True)
    rejected = "config reload (a watched file changed) rejected, keeping the running configuration"
    eventually(lambda: rejected in "".join(path.read_text() for path in reloadable.log_dir.glob("ext_proc-*.log")),
               what="the broken config's rejection")
    assert {_model(alice) for _ in range(6)} == {current}
    reloadable.write_config("after-the-fix")
    _wait_for_model(alice, "after-the-fix")


def test_provider_key_file_rotation_takes_effect_without_a_restart(reloadable: Reloadable) -> None:
    alice = reloadable.client("alice")
    _replace(reloadable.log_dir / "provider.key", "sk-wrong\n")

    def refusal() -> int | None:  # the demo provider only accepts sk-reload: the rotated key is in use once one fails
        try:
            _model(alice)
        except openai.APIStatusError as exc:
            return exc.status_code
        return None

    assert eventually(refusal, timeout=RELOAD_TIMEOUT, what="the rotated (wrong) provider key in use") in (401, 502)
    _replace(reloadable.log_dir / "provider.key", "sk-reload\n")
    eventually(lambda: _model(alice), timeout=RELOAD_TIMEOUT, what="the provider key rotated back in use")


def test_up_gives_envoy_new_routes_and_clusters_without_dropping_traffic(tmp_path: Path) -> None:
    """`babelgate up -c`: a new backend and a two-backend route appear while a client keeps its connections busy."""
    with GatewayBuilder(tmp_path, config_name="babelgate.yaml") as build:
        build.env["UP_KEY"] = "sk-up"  # in `up`'s environment from the start: the backend added later reads it too
        first, second = build.demo("first", api_key="sk-up"), build.demo("second", api_key="sk-up")
        build.backend("first", first, api_key={"env": "UP_KEY"})
        build.route("old", ("first", "f"))
        build.key("k")
        client = build.up().client(timeout=20)
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    client.chat.completions.create(model="old", messages=HELLO)
                except Exception as exc:  # every failure is a finding
                    failures.append(repr(exc))

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            build.backend("second", second, api_key={"env": "UP_KEY"})
            build.route("new", ("second", "s"), ("first", "f"))
            build.write()
            raw = eventually(lambda: client.chat.completions.with_raw_response.create(
                model="new", messages=HELLO, extra_headers={"x-demo-fault": "second:500"}),
                timeout=RELOAD_TIMEOUT, what="the new route works")
            assert (raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"]) == ("first", "2")
            # `up` gave Envoy the old and the new routes together (version 2), then, once the servers have caught up,
            # the new ones alone (version 3): the traffic keeps going through both changes
            admin_port = build.config["listener"]["admin_port"]
            eventually(lambda: _envoy_routes_version(admin_port) >= 3, timeout=RELOAD_TIMEOUT,
                       what="Envoy has the settled routes")
            assert client.chat.completions.create(model="new", messages=HELLO).model == "s"
        finally:
            stop.set()
            worker.join(30)
        assert not failures, failures[:5]
