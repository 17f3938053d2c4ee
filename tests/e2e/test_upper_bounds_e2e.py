"""Token and USD limits as true upper bounds (issue 19), through the real Envoy, two ext_proc processes and Redis.

The demo providers answer `verbose` (`ext_proc/demo/faults.py`): every answer runs to the output limit of the
request as the provider got it (`n` choices, Claude's thinking budget, the model's maximum when no limit was sent),
as a real model may. So what a key was charged is what it could at most have been charged, and the limits must hold
against that: the reservation covers `n`, thinking and the dearest backend a request may fail over to, and a request
without an output limit reaches the provider with the one reserved for it.

Decisions worth knowing before changing this file:
- Windows are hourly and counters are checked window by window: a run that crosses the hour stays exact.
- Settlement of a cancelled stream runs after the client has left; the request log (one row per request, with the
  usage the limiter settled) tells when every request was settled: the counters then equal the rows' sums.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import anthropic
import httpx
import httpx2
import openai
import pyarrow.dataset as ds
import pytest
import redis

from ext_proc.limits.estimate import Price, Usage, cost_micro_usd, estimate_prompt_tokens

from ..eventually import eventually
from .gateways import Gateway, GatewayBuilder
from .support import fault

TOKEN_LIMIT = 20_000
USD_LIMIT = 0.22
DEFAULT_MAX_TOKENS = 200
THINKING_BUDGET = 1024
"""What `reasoning_effort: low` becomes on a budget-thinking Claude, added to the client's `max_tokens`."""
CLAUDE = "claude-sonnet-4-5-20250929"
PRICES = {("cheap", "gpt-4o-mini"): Price(1.0, 4.0, 1.0), ("pricey", "gpt-4o"): Price(5.0, 20.0, 5.0),
          ("claude", CLAUDE): Price(3.0, 15.0, 3.0)}
CLIENTS = 64
REQUESTS_EACH = 5
VERBOSE = "*:verbose"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("upper-bounds")
    with GatewayBuilder(workdir, processes=2, backend_defaults={"outlier_detection": None}) as build:
        build.backend("cheap", build.demo("cheap"))
        build.backend("pricey", build.demo("pricey"))
        build.backend("claude", build.demo("claude", "anthropic"))
        build.backend("wild", build.demo("wild"))
        build.backend("gem", build.demo("gem", "gemini"))
        build.backend("conv", build.demo("conv", "bedrock"))
        build.backend("coh", build.demo("coh", "cohere"))
        build.route("chat", ("cheap", "gpt-4o-mini"))
        build.route("chain", ("cheap", "gpt-4o-mini"), ("pricey", "gpt-4o"))
        build.route("claude", ("claude", CLAUDE))
        build.route("open/*", ("wild", "*"))
        build.route("gem", ("gem", "gemini-2.5-flash"))
        build.route("conv", ("conv", "us.amazon.nova-pro-v1:0"))
        build.route("coh", ("coh", "command-a-03-2025"))
        build.redis(timeout="500ms")
        build.key("exact", limits=[{"window": "hour", "total_tokens": TOKEN_LIMIT},
                                   {"window": "hour", "usd": USD_LIMIT}])
        build.key("tiny", limits=[{"window": "minute", "total_tokens": 100}])
        build.key("later", limits=[{"window": "hour", "total_tokens": 1_000}])
        build.key("names", limits=[{"window": "hour", "total_tokens": 100_000}])
        build.key("plain")
        build.set(prices=[{"backend": backend, "model": model, "input": price.input, "output": price.output}
                          for (backend, model), price in PRICES.items()],
                  requests={"default_max_tokens": DEFAULT_MAX_TOKENS},
                  telemetry={"request_log": {"destination": str(workdir / "requests"), "flush_seconds": "200ms"}})
        yield build.start()


# --- exactness ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    kind: str
    reserved: int
    """The most it may use: the gateway's prompt estimate plus the output bound of its body."""
    status: int = 0
    used: int | None = None
    """Total tokens of a completed answer (a cancelled stream's are known from the request log only)."""
    refused_by: str = ""


def _plan(client: int, number: int) -> tuple[str, dict, str]:
    """(kind, request body, fault spec) of one client's request: a fixed mix, each kind at every position."""
    kind = ("n", "no-limit", "thinking", "stream", "cancel", "failover", "thinking-stream")[(client + number) % 7]
    text = f"client {client} request {number}: tell me everything"
    body: dict = {"model": "chat", "messages": [{"role": "user", "content": text}]}
    spec = VERBOSE
    if kind == "n":
        body.update(n=2 + client % 3, max_tokens=40 + 20 * (number % 4))
    elif kind == "thinking" or kind == "thinking-stream":
        body.update(model="claude", max_tokens=60, reasoning_effort="low")
    elif kind == "stream":
        body.update(n=2, max_completion_tokens=80)
    elif kind == "cancel":
        body.update(max_tokens=150)
        spec = f"{VERBOSE},*:slow=20"
    elif kind == "failover":
        body.update(model="chain", max_tokens=100)
        spec = f"{VERBOSE},cheap:503"
    if kind in ("stream", "cancel", "thinking-stream"):
        body.update(stream=True, stream_options={"include_usage": True})
    return kind, body, spec


def _reserved(body: dict) -> int:
    bound = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    if body.get("reasoning_effort"):
        bound += THINKING_BUDGET
    return estimate_prompt_tokens(body, 4.0) + bound * body.get("n", 1)


async def _one(client: openai.AsyncOpenAI, kind: str, body: dict, spec: str) -> Result:
    result = Result(kind, _reserved(body))
    try:
        if body.get("stream"):
            async with await client.chat.completions.create(**body, extra_headers=fault(spec)) as stream:
                result.status = 200
                async for chunk in stream:
                    if kind == "cancel":
                        break  # the client leaves after the first chunk
                    if chunk.usage is not None:
                        result.used = chunk.usage.total_tokens
        else:
            answer = await client.chat.completions.create(**body, extra_headers=fault(spec))
            result.status = 200
            assert answer.usage is not None
            result.used = answer.usage.total_tokens
    except openai.RateLimitError as refused:
        result.status = 429
        assert "retry-after" in refused.response.headers  # each of these fits an empty window
        message = refused.body["message"] if isinstance(refused.body, dict) else str(refused.body)
        result.refused_by = "usd" if "usd per hour" in message else "tokens"
    return result


def _load(gateway: Gateway) -> list[Result]:
    async def client_run(client: openai.AsyncOpenAI, index: int) -> list[Result]:
        return [await _one(client, *_plan(index, number)) for number in range(REQUESTS_EACH)]

    async def everyone() -> list[Result]:
        async with gateway.async_client("exact", timeout=60) as client:
            batches = await asyncio.gather(*(client_run(client, index) for index in range(CLIENTS)))
        return [result for batch in batches for result in batch]

    return asyncio.run(everyone())


def _counters(gateway: Gateway, scope: str) -> dict[str, list[int]]:
    """Each metric's counter values of one scope, one per window (`{"total_tokens": [..], "usd": [..]}`)."""
    assert gateway.redis is not None
    client = redis.Redis(port=gateway.redis.port)
    found: dict[str, list[int]] = {}
    for key in client.scan_iter(match=f"bg:{{{scope}}}:*"):
        _, metric, _window, _start = key.decode().rsplit(":", 3)
        found.setdefault(metric, []).append(int(client.get(key) or 0))
    client.close()
    return found


def _logged(gateway: Gateway, key_id: str) -> list[dict]:
    """The request log's rows of `key_id`'s served requests, one per request id (a stream the client left can be
    logged twice today; it is settled once)."""
    table = ds.dataset(gateway.config_path.parent / "requests", format="parquet", partitioning="hive").to_table()
    rows = {row["request_id"]: row for row in table.to_pylist() if row["key_id"] == key_id and row["status"] == 200}
    return list(rows.values())


def _settled(gateway: Gateway, admitted: int) -> tuple[list[dict], dict[str, list[int]]]:
    """The request log's rows of every admitted request, once the counters hold exactly what they used."""
    seen: list[object] = []

    def check() -> tuple[list[dict], dict[str, list[int]]] | None:
        rows = _logged(gateway, "exact")
        counters = _counters(gateway, "key:exact")
        tokens = sum(row["input_tokens"] + row["output_tokens"] for row in rows)
        usd = sum(_cost(row) for row in rows)
        seen[:] = [f"{len(rows)} of {admitted} rows, {tokens} tokens and {usd} micro-USD logged", counters]
        if len(rows) == admitted and sum(counters["total_tokens"]) == tokens and sum(counters["usd"]) == usd:
            return rows, counters
        return None

    try:
        return eventually(check, timeout=60, what="every admitted request settled")
    except AssertionError as late:
        raise AssertionError(f"{late}; last seen {seen}") from None


def _cost(row: dict) -> int:
    usage = Usage(row["input_tokens"], row["output_tokens"], row["cached_tokens"] or 0)
    return cost_micro_usd(usage, PRICES[(row["backend"], row["served_model"])])


def test_admitted_usage_never_exceeds_the_token_limit_or_the_budget(gateway: Gateway) -> None:
    results = _load(gateway)
    assert {result.status for result in results} <= {200, 429}
    admitted = [result for result in results if result.status == 200]
    for result in admitted:  # each completed answer stayed within what was reserved for it
        assert result.used is None or result.used <= result.reserved, result
    assert {result.kind for result in admitted} == {"n", "no-limit", "thinking", "stream", "cancel", "failover",
                                                    "thinking-stream"}
    rows, counters = _settled(gateway, len(admitted))
    assert all(value <= TOKEN_LIMIT for value in counters["total_tokens"]), counters
    assert all(value <= USD_LIMIT * 1_000_000 for value in counters["usd"]), counters
    refused = [result for result in results if result.status == 429]
    assert refused, "the load never reached a limit"
    assert {row["backend"] for row in rows if row["attempts"] == 2} == {"pricey"}  # failover happened
    tokens, usd = sum(counters["total_tokens"]), sum(counters["usd"]) / 1_000_000
    by = {scope: sum(o.refused_by == scope for o in refused) for scope in ("tokens", "usd")}
    print(f"\nupper bounds, redis, 2 processes, {CLIENTS} clients: limits {TOKEN_LIMIT} tokens / ${USD_LIMIT:.2f} per "
          f"hour; admitted {len(admitted)} of {len(results)} requests using {tokens} tokens / ${usd:.6f}; refused "
          f"{len(refused)} ({by['tokens']} by tokens, {by['usd']} by usd)")


# --- a request that can never fit ----------------------------------------------------------------------------------


def _counting_hooks() -> tuple[list[str], dict]:
    sent: list[str] = []
    return sent, {"request": [lambda request: sent.append(str(request.url))]}


def test_openai_sdk_does_not_retry_a_request_that_can_never_fit(gateway: Gateway) -> None:
    sent, hooks = _counting_hooks()
    with httpx2.Client(event_hooks=hooks, timeout=30) as http, \
            openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.keys["tiny"], http_client=http) as client:
        assert client.max_retries == 2
        with pytest.raises(openai.RateLimitError) as raised:
            client.chat.completions.create(model="chat", max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    headers = raised.value.response.headers
    assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    assert "alone needs more than the whole limit" in raised.value.body["message"]
    assert len(sent) == 1


def test_anthropic_sdk_does_not_retry_a_request_that_can_never_fit(gateway: Gateway) -> None:
    sent, hooks = _counting_hooks()
    with httpx2.Client(event_hooks=hooks, timeout=30) as http, anthropic.Anthropic(
            base_url=gateway.url + "/anthropic", api_key=gateway.keys["tiny"], http_client=http) as client:
        assert client.max_retries == 2
        with pytest.raises(anthropic.RateLimitError) as raised:
            client.messages.create(model="claude", max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    headers = raised.value.response.headers
    assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    assert len(sent) == 1


def test_a_request_that_fits_later_is_told_when(gateway: Gateway) -> None:
    client = gateway.client("later")
    request = {"model": "chat", "max_tokens": 600, "messages": [{"role": "user", "content": "hi"}]}
    client.chat.completions.create(**request, extra_headers=fault(VERBOSE))  # uses 600 of 1000 for the hour
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**request)
    headers = raised.value.response.headers
    assert int(headers["retry-after"]) >= 1 and "x-should-retry" not in headers


# --- model names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["open/caf\u00e9-\u6a21\u578b", "open/a\r\nx-injected: 1", "open/a\nb", "open/a\x00b",
                                  "open/two words", "open/" + "m" * 295])
def test_an_invalid_model_name_is_refused_before_anything_is_sent_or_charged(gateway: Gateway, name: str) -> None:
    gateway.clear_provider_requests("wild")
    before = _counters(gateway, "key:names")
    response = httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                          headers={"authorization": f"Bearer {gateway.keys['names']}"},
                          json={"model": name, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_model_name", "model")
    assert gateway.provider_requests("wild") == []
    assert _counters(gateway, "key:names") == before


def test_an_ordinary_wildcard_model_name_is_served(gateway: Gateway) -> None:
    gateway.clear_provider_requests("wild")
    answer = gateway.client("names").chat.completions.create(
        model="open/gpt-4o-mini:2024-07-18", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert gateway.last_request("wild")["body"]["model"] == "gpt-4o-mini:2024-07-18"


# --- the reserved output limit reaches every provider ----------------------------------------------------------


@pytest.mark.parametrize(("route", "demo", "field"), [
    ("chat", "cheap", ("max_completion_tokens",)),
    ("claude", "claude", ("max_tokens",)),
    ("gem", "gem", ("generationConfig", "maxOutputTokens")),
    ("conv", "conv", ("inferenceConfig", "maxTokens")),
    ("coh", "coh", ("max_tokens",)),
])
def test_an_omitted_output_limit_reaches_the_provider_in_its_own_field(gateway: Gateway, route: str, demo: str,
                                                                       field: tuple[str, ...]) -> None:
    gateway.clear_provider_requests(demo)
    answer = gateway.client("plain").chat.completions.create(
        model=route, messages=[{"role": "user", "content": "hi"}], extra_headers=fault(VERBOSE))
    assert answer.usage is not None and answer.usage.completion_tokens == DEFAULT_MAX_TOKENS
    sent = gateway.last_request(demo)["body"]
    for name in field:
        sent = sent[name]
    assert sent == DEFAULT_MAX_TOKENS


def test_an_omitted_output_limit_reaches_a_native_responses_backend(gateway: Gateway) -> None:
    gateway.clear_provider_requests("cheap")
    answer = gateway.client("plain").responses.create(model="chat", input="hi", extra_headers=fault(VERBOSE))
    assert answer.usage is not None and answer.usage.output_tokens == DEFAULT_MAX_TOKENS
    assert gateway.last_request("cheap")["body"]["max_output_tokens"] == DEFAULT_MAX_TOKENS

