"""Token, request and spend limits through the real Envoy, shared by two ext_proc processes through a real Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from ext_proc.limits.estimate import estimate_prompt_tokens

from ..eventually import eventually
from ..redis_server import RedisServer
from .gateways import Gateway, GatewayBuilder
from .support import fault, room_in_window

TPM_LIMIT = 3000
LEASED_LIMIT = 640
"""Requests per hour: 1/64 of it (10) holds 8 requests, so processes lease it (`limits/leases.py`)."""
MAX_TOKENS = 20
ADMIN_ENV = "BG_LIMITS_ADMIN"
ADMIN_SECRET = "bg-admin-limits-e2e-0123456789"
BURST_ROOM = 60.0
"""Seconds left in the current hour (or day) a 256-request burst waits for: it and its settlement take seconds even
on a busy machine, and a window that ended mid-burst would start counting from zero. At most this long a wait, so a
test that waits stays well inside pytest's 120 s timeout."""
SEQUENCE_ROOM = 30.0
"""Seconds left in the current window a short sequence (a few requests, then the refusal) waits for."""


def _settled(gateway: Gateway, scope: str, metric: str, expected: int) -> None:
    """Wait until the counter holds `expected`: a settlement may still be on its way when the answer arrives."""
    eventually(lambda: _counters(gateway, scope).get(metric, 0) == expected,
               what=f"{scope} {metric} settled at {expected} (now {_counters(gateway, scope).get(metric, 0)})")


def _counters(gateway: Gateway, scope: str) -> dict[str, int]:
    """Counter values of one scope (e.g. `key:burst`) by `metric:window`, summed over the windows still stored (a
    settlement goes to the window its reservation was counted in): requests on both sides of a window boundary all
    count, where keeping one window's value would drop the others'."""
    assert gateway.redis is not None
    client = redis.Redis(port=gateway.redis.port)
    found: dict[str, int] = {}
    for key in client.scan_iter(match=f"bg:{{{scope}}}:*"):
        _, metric, window, _start = key.decode().rsplit(":", 3)
        found[f"{metric}:{window}"] = found.get(f"{metric}:{window}", 0) + int(client.get(key) or 0)
    client.close()
    return found


def _start(build: GatewayBuilder, redis_server: RedisServer | None) -> Gateway:
    build.backend("oa", build.demo("limits-provider"))
    build.backend("ob", build.demo("limits-second"))
    build.route("m", ("oa", "gpt-4o-mini"))
    build.route("pair", ("oa", "gpt-4o-mini"), ("ob", "gpt-4o-mini"))
    if redis_server is not None:
        build.redis(redis_server)  # the builder's 1 s timeout: under 64 clients no reservation times out uncounted
        # a hung Redis costs a request up to two store calls (the limiter retries once) of up to 4 x 1 s + 0.05 s
        # each: Envoy's default 5 s per ext_proc message must not cut them before the key's policy answers
        build.set(ext_proc={"message_timeout": "15s"})
    build.set(prices=[{"backend": "oa", "model": "gpt-4o-mini", "input": 150.0, "output": 600.0}],
              limits={"per_user": [{"window": "hour", "requests": 3}]},
              teams=[{"id": "team-a", "limits": [{"window": "hour", "requests": 4}]}])
    hour_tokens = [{"window": "hour", "total_tokens": 100_000}]
    build.key("burst", limits=[{"window": "hour", "total_tokens": TPM_LIMIT}])
    build.key("leased", limits=[{"window": "hour", "requests": LEASED_LIMIT}])
    build.key("headers", limits=[{"window": "hour", "total_tokens": 50_000, "requests": 1000}])
    for key_id in ("stream", "abort", "failover", "failing", "aside", "aside-abort", "aside-failing",
                   "aside-spoof"):
        build.key(key_id, limits=hour_tokens)
    build.key("requests", limits=[{"window": "hour", "requests": 5}])
    build.key("budget", limits=[{"window": "day", "usd": 0.05}])
    build.key("open", limits=[{"window": "hour", "requests": 1000, "on_store_error": "fail_open"}])
    build.key("closed", limits=[{"window": "hour", "requests": 1000, "on_store_error": "fail_closed"}])
    build.key("mid-open", limits=[{"window": "hour", "requests": 100_000, "on_store_error": "fail_open"}])
    build.key("mid-closed", limits=[{"window": "hour", "requests": 100_000, "on_store_error": "fail_closed"}])
    build.key("team-a1", team="team-a")
    build.key("team-a2", team="team-a")
    build.key("user", limits=hour_tokens, asserts_users=True)  # a service naming its end users
    # `babelgate usage` reads an in-memory store from the servers: over their sockets, with an admin credential
    build.set(ext_proc={"socket_dir": str(build.workdir / "sockets")}, keys_file=str(build.workdir / "keys.yaml"))
    build.admin(ADMIN_SECRET, env=ADMIN_ENV)
    return build.start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("limited"), processes=2) as build:
        yield _start(build, redis_server)


def _hammer(gateway: Gateway, key_id: str, clients: int, requests_each: int) -> list[tuple[int, dict, dict]]:
    """`clients` concurrent clients, each sending `requests_each` requests; (status, headers, body) of each."""
    async def one_client(index: int) -> list[tuple[int, dict, dict]]:
        results = []
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            for number in range(requests_each):
                response = await http.post("/v1/chat/completions", headers={
                    "authorization": f"Bearer {gateway.keys[key_id]}"}, json=_request(f"client {index} #{number}"))
                results.append((response.status_code, dict(response.headers), response.json()))
        return results

    async def everyone() -> list[tuple[int, dict, dict]]:
        batches = await asyncio.gather(*(one_client(i) for i in range(clients)))
        return [result for batch in batches for result in batch]

    return asyncio.run(everyone())


def _request(text: str) -> dict:
    return {"model": "m", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": text}]}


def _check_exactness(results: list[tuple[int, dict, dict]], limit: int) -> tuple[int, int, int]:
    admitted = [body for status, _, body in results if status == 200]
    refused = [(headers, body) for status, headers, body in results if status == 429]
    assert len(admitted) + len(refused) == len(results), {s for s, _, _ in results}
    used = sum(body["usage"]["total_tokens"] for body in admitted)
    # What each admitted request could exceed its reservation by: real usage beyond the estimate.
    under_estimates = sum(max(0, body["usage"]["total_tokens"]
                              - (estimate_prompt_tokens(_request("client 00 #00"), 4.0) + MAX_TOKENS))
                          for body in admitted)
    assert used <= limit + under_estimates
    assert refused, "the load never reached the limit"
    for headers, body in refused:
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit-tokens"] == str(limit)
        assert int(headers["x-ratelimit-remaining-tokens"]) >= 0
        assert headers["x-ratelimit-reset-tokens"]
        assert body["error"]["type"] == "rate_limit_error"
        assert "total_tokens per hour" in body["error"]["message"]
    return limit, used, len(refused)


def test_exactness_under_64_concurrent_clients_two_processes_shared_redis(gateway: Gateway) -> None:
    room_in_window("hour", BURST_ROOM)
    results = _hammer(gateway, "burst", clients=64, requests_each=4)
    limit, used, refused = _check_exactness(results, TPM_LIMIT)
    print(f"\nredis, 2 processes: limit {limit}, admitted tokens {used}, refused {refused} of {len(results)}")
    _settled(gateway, "key:burst", "total_tokens:hour", used)  # to the token


def test_a_burst_past_a_leased_limit_never_passes_it_and_ends_exactly_at_it(gateway: Gateway) -> None:
    """A limit large enough for leases (`limits/leases.py`: 1/64 of it holds 10 requests): 64 clients over two
    processes and a shared Redis run past its end. Never more is admitted than the limit; once the leases are back,
    Redis alone admits exactly up to it."""
    room_in_window("hour", BURST_ROOM)
    results = _hammer(gateway, "leased", clients=64, requests_each=11)
    assert {status for status, _, _ in results} <= {200, 429}
    admitted = sum(1 for status, _, _ in results if status == 200)
    assert admitted <= LEASED_LIMIT
    client = gateway.client("leased")

    def spent_to_the_limit() -> bool:
        nonlocal admitted
        while True:
            try:
                client.chat.completions.create(**_request("after the burst"))
            except openai.RateLimitError:  # early while a lease taken under half the limit is out: tried again
                return _counters(gateway, "key:leased")["requests:hour"] == LEASED_LIMIT
            admitted += 1

    eventually(spent_to_the_limit, what=f"Redis counting {LEASED_LIMIT} requests")
    assert admitted == LEASED_LIMIT


def test_exactness_with_the_in_memory_store_in_one_process(tmp_path: Path) -> None:
    with GatewayBuilder(tmp_path) as build:
        gateway = _start(build, None)
        room_in_window("hour", BURST_ROOM)  # the report below reads the current hour's count
        results = _hammer(gateway, "burst", clients=64, requests_each=4)
        limit, used, refused = _check_exactness(results, TPM_LIMIT)

        def reported() -> list[str]:  # read from inside the running server: that is where the store lives
            report = _usage_report(gateway)
            return next(line for line in report.splitlines() if line.startswith("key") and "burst" in line).split()

        eventually(lambda: reported()[4:6] == [str(used), str(TPM_LIMIT)], what=f"{used} tokens settled")
    print(f"\nmemory, 1 process: limit {limit}, admitted tokens {used}, refused {refused} of {len(results)}")


def test_admitted_responses_carry_rate_limit_headers(gateway: Gateway) -> None:
    raw = gateway.client("headers").chat.completions.with_raw_response.create(**_request("hi"))
    assert raw.headers["x-ratelimit-limit-tokens"] == "50000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 50000
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert raw.headers["x-ratelimit-remaining-requests"] == "999"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")


def test_stream_is_settled_with_its_real_usage(gateway: Gateway) -> None:
    chunks = list(gateway.client("stream").chat.completions.create(**_request("stream me"), stream=True))
    assert chunks
    # the provider reported usage (the gateway asked for it) although this client did not
    reserved = estimate_prompt_tokens(_request("stream me"), 4.0) + MAX_TOKENS
    eventually(lambda: 0 < _counters(gateway, "key:stream").get("total_tokens:hour", 0) < reserved,
               what="the stream settled below its reservation")


def test_client_abort_mid_stream_is_charged_for_what_was_streamed(gateway: Gateway) -> None:
    request = {**_request("abort me please"), "max_tokens": 500, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=request, timeout=30,
                      headers={"authorization": f"Bearer {gateway.keys['abort']}",
                               **fault("limits-provider:slow=200")}) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    prompt = estimate_prompt_tokens(request, 4.0)
    # the 500 reserved output tokens were not all kept
    eventually(lambda: prompt <= _counters(gateway, "key:abort").get("total_tokens:hour", 0) < prompt + 500,
               what="the cut stream settled with what was streamed")


def _ext_proc_messages(gateway: Gateway) -> dict[str, int]:
    """Messages Envoy sent to ext_proc so far, by filter (`route` or `stream_meter`), workers summed."""
    assert gateway.stack is not None
    stats = httpx.get(f"http://127.0.0.1:{gateway.stack.config.listener.admin_port}/stats?filter=ext_proc",
                      timeout=10).text.splitlines()
    sent = {"route": 0, "stream_meter": 0}
    for name, _, value in (line.partition(": ") for line in stats):
        if name.startswith("http.babelgate.") and name.endswith(".stream_msgs_sent"):
            sent["stream_meter" if ".stream_meter." in name else "route"] += int(value)
    return sent


def test_a_stream_whose_client_asks_its_usage_is_settled_aside_exactly(gateway: Gateway) -> None:
    """A direct OpenAI stream whose client asked for usage needs nothing changed: Envoy relays it without waiting
    for ext_proc, the stream meter reads a copy, and the reservation settles at exactly the usage reported."""
    before = _ext_proc_messages(gateway)
    chunks = list(gateway.client("aside").chat.completions.create(
        **_request("stream me aside"), stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == [] and usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3
    _settled(gateway, "key:aside", "total_tokens:hour", usage.total_tokens)
    sent = {stage: count - before[stage] for stage, count in _ext_proc_messages(gateway).items()}
    # the route stage saw the request and the answer's headers, never a chunk; the meter a copy of the headers and
    # of the body (the demo provider writes its chunks at once: Envoy may hand them over in one piece)
    assert sent["route"] == 3 and sent["stream_meter"] >= 2


def test_a_client_cannot_send_its_stream_to_the_metered_twin(gateway: Gateway) -> None:
    """The twin's name in a client's own routing header changes nothing: the header goes before Envoy matches
    routes, the route stage picks the route, and a stream whose client did not ask for usage is read in its path
    (where the gateway's usage is taken out), never handed to the stream meter."""
    before = _ext_proc_messages(gateway)
    chunks = list(gateway.client("aside-spoof").chat.completions.create(
        **_request("spoofed twin"), stream=True,
        extra_headers={"x-babelgate-int-chain": "bg_direct_oa.metered", "x-babelgate-int-meter": "1"}))
    assert chunks and all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    sent = {stage: count - before[stage] for stage, count in _ext_proc_messages(gateway).items()}
    assert sent["stream_meter"] == 0 and sent["route"] > 3


def test_a_stream_settled_aside_and_cut_by_its_client_is_charged_for_what_was_streamed(gateway: Gateway) -> None:
    request = {**_request("abort me aside"), "max_tokens": 500, "stream": True,
               "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=request, timeout=30,
                      headers={"authorization": f"Bearer {gateway.keys['aside-abort']}",
                               **fault("limits-provider:slow=200")}) as response:
        assert response.headers["x-ratelimit-limit-tokens"] == "100000"
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    prompt = estimate_prompt_tokens(request, 4.0)
    eventually(lambda: prompt <= _counters(gateway, "key:aside-abort").get("total_tokens:hour", 0) < prompt + 500,
               what="the cut stream settled with what was streamed")


def test_a_stream_that_would_be_settled_aside_but_fails_releases_its_reservation(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError):
        gateway.client("aside-failing").chat.completions.create(
            **_request("x"), stream=True, stream_options={"include_usage": True},
            extra_headers=fault("limits-provider:500"))
    _settled(gateway, "key:aside-failing", "total_tokens:hour", 0)


def test_failed_first_attempt_is_not_charged_twice(gateway: Gateway) -> None:
    raw = gateway.client("failover").chat.completions.with_raw_response.create(
        **{**_request("fail once"), "model": "pair"}, extra_headers=fault("limits-provider:500"))
    assert raw.headers["x-babelgate-attempts"] == "2"
    _settled(gateway, "key:failover", "total_tokens:hour", raw.parse().usage.total_tokens)


def test_final_failure_releases_the_reservation(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError):
        gateway.client("failing").chat.completions.create(**_request("x"), extra_headers=fault("limits-provider:500"))
    _settled(gateway, "key:failing", "total_tokens:hour", 0)
    answer = gateway.client("failing").chat.completions.create(**_request("x"))
    _settled(gateway, "key:failing", "total_tokens:hour", answer.usage.total_tokens)


def test_request_limit_names_itself(gateway: Gateway) -> None:
    client = gateway.client("requests")
    room_in_window("hour", SEQUENCE_ROOM)
    for _ in range(5):
        client.chat.completions.create(**_request("x"))
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**_request("x"))
    assert "key 'requests': requests per hour" in raised.value.body["message"]
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_usd_budget_is_spent_from_real_usage(gateway: Gateway) -> None:
    client = gateway.client("budget")
    spent = 0
    room_in_window("day", BURST_ROOM)  # up to 200 requests until the budget refuses
    with pytest.raises(openai.RateLimitError) as raised:
        for _ in range(200):
            answer = client.chat.completions.create(**_request("spend"))
            spent += answer.usage.prompt_tokens * 150 + answer.usage.completion_tokens * 600  # micro-USD
    assert "usd per day" in raised.value.body["message"]
    assert spent <= 50_000
    _settled(gateway, "key:budget", "usd:day", spent)


def test_team_limit_is_shared_by_its_keys(gateway: Gateway) -> None:
    room_in_window("hour", SEQUENCE_ROOM)
    for key_id in ("team-a1", "team-a2", "team-a1", "team-a2"):
        gateway.client(key_id).chat.completions.create(**_request("x"))
    with pytest.raises(openai.RateLimitError) as raised:
        gateway.client("team-a2").chat.completions.create(**_request("x"))
    assert "team 'team-a'" in raised.value.body["message"]


def test_end_user_limit_from_header_or_user_field(gateway: Gateway) -> None:
    client = gateway.client("user")
    room_in_window("hour", SEQUENCE_ROOM)
    client.chat.completions.create(**_request("x"), extra_headers={"x-user-id": "u-1"})
    client.chat.completions.create(**_request("x"), user="u-1")
    client.chat.completions.create(**_request("x"), user="u-1")
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**_request("x"), extra_headers={"x-user-id": "u-1"})
    assert "user 'u-1'" in raised.value.body["message"]
    client.chat.completions.create(**_request("x"), user="u-2")  # another user is unaffected


def test_redis_outage_follows_each_limits_policy_and_recovers(gateway: Gateway) -> None:
    assert gateway.redis is not None
    opened, closed = gateway.client("open"), gateway.client("closed")
    opened.chat.completions.create(**_request("x"))
    gateway.redis.stop()
    try:
        started = time.monotonic()
        for _ in range(3):
            assert opened.chat.completions.create(**_request("x")).choices  # fail_open: served
        with pytest.raises(openai.APIStatusError) as raised:
            closed.chat.completions.create(**_request("x"))
        assert raised.value.status_code == 503
        assert raised.value.body["code"] == "rate_limiter_unavailable"
        assert time.monotonic() - started < 10  # bounded timeouts, no hang
    finally:
        gateway.redis.start()
    # recovered without a restart (a refused request counts nothing)
    eventually(lambda: closed.chat.completions.create(**_request("x")), what="fail_closed served again")
    # once the lease that admission started has given its unspent part back (`limits/leases.py`)
    eventually(lambda: _counters(gateway, "key:closed")["requests:hour"] == 1, what="one request counted")


def test_redis_killed_and_hung_mid_load(gateway: Gateway) -> None:
    """Traffic never stops while Redis is killed, restarted, frozen and thawed: each key's policy holds throughout,
    every answer is a clean 200 or 503, nothing hangs, and no ext_proc process dies. Each phase lasts until the
    traffic shows its effect (fail_closed refused, then served again), not for a fixed time."""
    store = gateway.redis
    assert store is not None
    # per key: (when the request was sent, its status; 0 when no answer came within the client's 10 s)
    answers: dict[str, list[tuple[float, int]]] = {"mid-open": [], "mid-closed": []}
    stop = threading.Event()

    def traffic(key_id: str) -> None:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = http.post("/v1/chat/completions", json=_request("load"),
                                       headers={"authorization": f"Bearer {gateway.keys[key_id]}"}).status_code
                except httpx.HTTPError:
                    status = 0
                answers[key_id].append((sent, status))

    def answered_since(key_id: str, moment: float, status: int | None = None) -> bool:
        return any(sent >= moment and (status is None or code == status) for sent, code in list(answers[key_id]))

    def phase(what: str, change: Callable[[], None], closed_status: int) -> None:
        """`change` Redis, then wait until fail_closed answered a request sent after it with `closed_status` and
        fail_open answered one too."""
        began = time.monotonic()
        change()
        eventually(lambda: answered_since("mid-closed", began, closed_status) and answered_since("mid-open", began),
                   what=f"{what}: fail_closed answers {closed_status}, fail_open answers")

    workers = [threading.Thread(target=traffic, args=(key_id,)) for key_id in answers for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        phase("before the faults", lambda: None, 200)
        phase("Redis killed", lambda: store.stop(kill=True), 503)
        phase("Redis restarted", store.start, 200)  # recovered by itself
        phase("Redis frozen", store.freeze, 503)  # a hang is cut by the store's timeout
        phase("Redis thawed", store.thaw, 200)  # recovered by itself
    finally:
        store.thaw() if store.running else store.start()
        stop.set()
        for worker in workers:
            worker.join(30)
    opened, closed = [status for _, status in answers["mid-open"]], [status for _, status in answers["mid-closed"]]
    assert set(opened) == {200}, opened
    assert set(closed) == {200, 503}, closed
    assert max(answers["mid-closed"])[1] == 200  # the request sent last, after the thaw, was served
    print(f"\nmid-load outage: fail_open served {opened.count(200)}/{len(opened)}, "
          f"fail_closed refused {closed.count(503)}/{len(closed)}")
    assert gateway.client("headers").chat.completions.create(**_request("still alive")).choices


def _usage_report(gateway: Gateway) -> str:
    result = subprocess.run([sys.executable, "-m", "ext_proc", "usage", "-c", str(gateway.config_path)],
                            capture_output=True, text=True, timeout=60, env={**os.environ, ADMIN_ENV: ADMIN_SECRET})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_usage_command_reports_from_redis(gateway: Gateway) -> None:
    gateway.client("headers").chat.completions.create(**_request("for the report"))
    line = next(line for line in _usage_report(gateway).splitlines() if "headers" in line and "total_tokens" in line)
    assert line.split()[5] == "50000"
