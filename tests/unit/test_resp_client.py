"""The lean Redis client of the limiter's hot calls, against a real redis-server: pipelined replies matched in order,
scripts reloaded after Redis forgot them, a restart survived, password and database from the URL, a hung Redis
bounded, error replies as errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ext_proc.limits.resp import RespClient, RespConnectionError, RespError, RespTimeout, Script

from ..redis_server import RedisServer

INCREMENT = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def test_pipelined_calls_each_get_their_own_reply(tmp_path: Path) -> None:
    async def scenario(client: RespClient) -> None:
        replies = await asyncio.gather(*(client.execute("ECHO", f"call {i}") for i in range(200)))
        assert replies == [f"call {i}".encode() for i in range(200)]
        with pytest.raises(RespError, match="unknown command"):
            await client.execute("NOT-A-COMMAND")
        assert await client.execute("PING") == b"PONG"  # still in step after an error reply

    with RedisServer(tmp_path / "r") as server:
        _run(RespClient(server.url), scenario)


def test_a_script_redis_forgot_is_loaded_again(tmp_path: Path) -> None:
    async def scenario(client: RespClient) -> None:
        assert await client.run_script(INCREMENT, ["k"], [2]) == 2
        await client.execute("SCRIPT", "FLUSH")
        assert await client.run_script(INCREMENT, ["k"], [3]) == 5

    with RedisServer(tmp_path / "r") as server:
        _run(RespClient(server.url), scenario)


def test_a_restarted_redis_is_reconnected_to(tmp_path: Path) -> None:
    async def scenario(client: RespClient, server: RedisServer) -> None:
        assert await client.execute("SET", "a", "1") == b"OK"
        server.stop()
        with pytest.raises((RespConnectionError, RespTimeout)):
            await client.execute("GET", "a")
        server.start()
        for _ in range(100):  # the lost connection is seen, the next call connects again
            try:
                assert await client.execute("PING") == b"PONG"
                break
            except (RespConnectionError, RespTimeout):
                await asyncio.sleep(0.05)
        else:
            pytest.fail("never reconnected")

    with RedisServer(tmp_path / "r") as server:
        client = RespClient(server.url, timeout=0.5)
        asyncio.run(_closing(client, scenario(client, server)))


def test_a_hung_redis_is_a_timeout_and_the_next_call_reconnects(tmp_path: Path) -> None:
    async def scenario(client: RespClient, server: RedisServer) -> None:
        await client.execute("PING")
        server.freeze()
        try:
            results = await asyncio.gather(*(client.execute("PING") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(r, RespTimeout | RespConnectionError) for r in results), results
        finally:
            server.thaw()
        assert await client.execute("PING") == b"PONG"  # the very next call, on a new connection

    with RedisServer(tmp_path / "r") as server:
        # A second, not the production 50 ms: the call right after the thaw (a connect, then a reply from a Redis
        # just woken) must answer, and a busy machine can stall past a tenth of a second.
        client = RespClient(server.url, timeout=1.0)
        asyncio.run(_closing(client, scenario(client, server)))


def test_password_and_database_come_from_the_url(tmp_path: Path) -> None:
    async def scenario(client: RespClient) -> None:
        await client.execute("SET", "where", "db3")
        assert await client.execute("CLIENT", "INFO") and b"db=3" in await client.execute("CLIENT", "INFO")

    async def require_password(client: RespClient) -> None:
        await client.execute("CONFIG", "SET", "requirepass", "s3cret")

    with RedisServer(tmp_path / "r") as server:
        _run(RespClient(server.url), require_password)
        url = server.url.replace("redis://", "redis://:s3cret@") + "/3"
        _run(RespClient(url), scenario)
        with pytest.raises(RespError, match=r"NOAUTH|WRONGPASS|AUTH"):
            _run(RespClient(server.url + "/3"), scenario)
        _run(RespClient(server.url + "/3", password="s3cret"), scenario)
        _run(RespClient(url), lambda client: client.execute("CONFIG", "SET", "requirepass", ""))


def _run(client: RespClient, scenario: object) -> None:
    asyncio.run(_closing(client, scenario(client)))  # type: ignore[operator]


async def _closing(client: RespClient, work: object) -> None:
    try:
        await work  # type: ignore[misc]
    finally:
        await client.close()
