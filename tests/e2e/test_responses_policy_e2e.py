"""The Responses API (`/v1/responses`) under the same policy as chat completions, through a real gateway (Envoy, one
ext_proc process, Redis): keys and model allow-lists, token and request limits, guardrails on what goes in and what
comes back, the request log, metrics and traces, failover with cooldowns. Each on a native route (the demo OpenAI
serves the Responses API itself) and a translated one (the demo Anthropic), streamed and not where it applies.

The demo providers answer "You said: <the last user message>" (and a tool's output, after a tool call), so a test
makes the model say what it needs by writing it: an email to redact, a phrase to block.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pyarrow.dataset as ds
import pytest
import redis

from ext_proc.launch.processes import free_port

from ..eventually import eventually
from .gateways import Gateway, GatewayBuilder
from .support import fault, room_in_window
from .test_telemetry_e2e import prometheus_samples
from .test_tracing_e2e import CLIENT, SERVER, Collector

ROUTES = {"gpt": ("oa", "gpt-4o-mini", "openai"), "claude": ("an", "claude-sonnet-4-5", "anthropic")}
"""Route -> (backend, backend model, demo handle): native, then translated."""
KINDS = sorted(ROUTES)
ANSWERING = [("gpt", {}), ("claude", {}), ("chain", {}), ("chain", fault("openai:503"))]
"""Routes that guard answers (`answers-<route>`) and the fault a request carries: direct native and translated
routes, and a chain whose native first backend answers, or fails so the translated one does."""
ANSWERING_IDS = ["native", "translated", "chain-native", "chain-translated"]
EMAIL = "alice@example.com"
REDACTED = "[REDACTED:EMAIL]"
BLOCKED = "project orion"
LEAKED = "launch codes"
PRICES = {"oa": (1.0, 2.0), "an": (3.0, 15.0)}
"""USD per million input and output tokens."""
CALL = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
LOOKUP = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


@dataclass
class Policy:
    gateway: Gateway
    metrics_url: str
    log_dir: Path
    collector: Collector


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Policy]:
    workdir = Path(tmp_path_factory.mktemp("responses-policy"))
    collector = Collector()
    metrics_port = free_port()
    with GatewayBuilder(workdir, backend_defaults={"outlier_detection": None}) as build:
        build.on_stop(collector.server.shutdown)
        build.redis()
        demos = {"openai": build.demo("openai"), "anthropic": build.demo("anthropic", "anthropic")}
        request_rails = [{"name": "pii", "pii": ["email"], "mode": "redact"},
                         {"name": "no-orion", "deny_words": [BLOCKED]}]
        answer_rails = [{"name": "answer-pii", "pii": ["email"], "mode": "redact", "apply_to": ["response"]},
                        {"name": "answer-block", "deny_words": [LEAKED], "apply_to": ["response"]}]
        for route, (backend, model, handle) in ROUTES.items():
            build.backend(backend, demos[handle])
            build.route(route, (backend, model))
            build.route(f"guarded-{route}", (backend, model), guardrails=request_rails)
            build.route(f"answers-{route}", (backend, model), guardrails=answer_rails)
            build.route(f"sized-{route}", (backend, model), max_messages=3, max_prompt_chars=200)
            for stream in ("json", "stream"):  # backends of their own: a test's cooldown stays its own
                build.backend(f"{backend}-{stream}", demos[handle])
        # chains: their attempts run in Envoy's upstream filter, not inside the route stage as a direct route's do
        build.route("guarded-chain", ("oa", "gpt-4o-mini"), ("an", "claude-sonnet-4-5"), guardrails=request_rails)
        build.route("answers-chain", ("oa", "gpt-4o-mini"), ("an", "claude-sonnet-4-5"), guardrails=answer_rails)
        for stream in ("json", "stream"):
            build.route(f"cooling-{stream}", (f"oa-{stream}", "gpt-4o-mini"), (f"an-{stream}", "claude-sonnet-4-5"))
        build.key("k")
        build.key("narrow", models=["elsewhere"])
        build.route("elsewhere", ("oa", "gpt-4o-mini"))
        build.key("tokens", limits=[{"window": "minute", "total_tokens": 2000}])
        build.key("rpm", limits=[{"window": "hour", "requests": 2}])
        for route in KINDS:
            for stream in ("json", "stream"):
                build.key(f"metered-{route}-{stream}", limits=[{"window": "hour", "total_tokens": 100_000}])
        build.key("observed")
        build.set(prices=[{"backend": backend, "model": model, "input": PRICES[backend][0],
                           "output": PRICES[backend][1]} for backend, model, _ in ROUTES.values()],
                  telemetry={"request_log": {"destination": str(workdir / "requests"), "flush_seconds": "200ms"},
                             "metrics": {"prometheus_port": metrics_port},
                             "traces": {"otlp_endpoint": collector.url}})
        gateway = build.start()
        yield Policy(gateway, f"http://127.0.0.1:{metrics_port}/metrics", workdir / "requests", collector)


@pytest.fixture
def gateway(policy: Policy) -> Gateway:
    return policy.gateway


def _create(client: openai.OpenAI, stream: bool, **request: object) -> openai.types.responses.Response:
    """`responses.create`, or the same request streamed: the final Response either way."""
    if not stream:
        return client.responses.create(**request)  # type: ignore[call-overload,no-any-return]
    with client.responses.stream(**request) as events:  # type: ignore[arg-type]
        return events.get_final_response()


def _streamed_text(client: openai.OpenAI, **request: object) -> tuple[str, list]:
    """The text of a stream's `response.output_text.delta` events, and every event."""
    events = list(client.responses.create(stream=True, **request))  # type: ignore[call-overload]
    return "".join(e.delta for e in events if e.type == "response.output_text.delta"), events


def _sent(gateway: Gateway, route: str) -> str:
    """What the provider behind `route` last received, as text (its JSON body)."""
    return repr(gateway.last_request(ROUTES[route][2])["body"])


# -- 1. keys and model allow-lists ---------------------------------------------------------------------------------

@pytest.mark.parametrize("route", KINDS)
@pytest.mark.parametrize("api_key", [None, "bg-not-a-key-of-this-gateway-000000"])
def test_no_key_or_a_wrong_key_is_a_401(gateway: Gateway, route: str, api_key: str | None) -> None:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    for stream in (False, True):
        answer = httpx.post(gateway.url + "/v1/responses", headers=headers, timeout=30,
                            json={"model": route, "input": "hi", "stream": stream})
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["message"]


@pytest.mark.parametrize("route", KINDS)
def test_a_key_for_other_models_is_refused_and_sees_no_one_elses_responses(gateway: Gateway, route: str) -> None:
    made = gateway.client().responses.create(model=route, input="mine")
    narrow = gateway.client("narrow")
    for stream in (False, True):
        with pytest.raises(openai.PermissionDeniedError):
            narrow.responses.create(model=route, input="hi", stream=stream)
    with pytest.raises(openai.NotFoundError):
        narrow.responses.retrieve(made.id)
    assert narrow.responses.create(model="elsewhere", input="hi", store=False).status == "completed"


# -- 2. limits -----------------------------------------------------------------------------------------------------

def _counted(gateway: Gateway, key_id: str, metric: str) -> int:
    """What the limiter counted for a key, over every window start of its one window."""
    assert gateway.redis is not None
    store = redis.Redis(port=gateway.redis.port)
    try:
        return sum(int(store.get(name) or 0) for name in store.scan_iter(match=f"bg:{{key:{key_id}}}:{metric}:*"))
    finally:
        store.close()


@pytest.mark.parametrize("route", KINDS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("text", "max_output_tokens"), [("hi", 5000), ("many words " * 1000, 16)],
                         ids=["max_output_tokens", "input"])
def test_a_request_that_can_never_fit_the_token_limit_is_a_429_naming_it(
        gateway: Gateway, route: str, stream: bool, text: str, max_output_tokens: int) -> None:
    """2,000 tokens a minute: 5,000 output tokens reserved, or an input of about 2,750, can never fit."""
    gateway.clear_provider_requests(ROUTES[route][2])
    with pytest.raises(openai.RateLimitError) as refused:
        gateway.client("tokens").responses.create(model=route, input=text, max_output_tokens=max_output_tokens,
                                                  stream=stream)
    assert "total_tokens per minute" in refused.value.body["message"]  # type: ignore[index]
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "2000"
    assert gateway.provider_requests(ROUTES[route][2]) == []


@pytest.mark.parametrize("route", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_settled_with_the_real_usage(gateway: Gateway, route: str, stream: bool) -> None:
    key_id = f"metered-{route}-{'stream' if stream else 'json'}"
    response = _create(gateway.client(key_id), stream, model=route, input="count me", max_output_tokens=4000)
    assert response.usage is not None and response.usage.total_tokens < 4000
    eventually(lambda: _counted(gateway, key_id, "total_tokens") == response.usage.total_tokens,  # type: ignore
               timeout=30, what="the reservation settled to the real usage")


def test_request_limits_count_responses_requests(gateway: Gateway) -> None:
    rpm = gateway.client("rpm")
    room_in_window("hour", 30)  # the two requests and the refusal in one window
    raw = rpm.responses.with_raw_response.create(model="gpt", input="one", store=False)
    assert raw.headers["x-ratelimit-limit-requests"] == "2" and raw.headers["x-ratelimit-remaining-requests"] == "1"
    list(rpm.responses.create(model="claude", input="two", store=False, stream=True))
    with pytest.raises(openai.RateLimitError) as refused:
        rpm.responses.create(model="claude", input="three")
    assert "requests per hour" in refused.value.body["message"]  # type: ignore[index]


# -- 3. guardrails -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_pii_in_every_input_shape_reaches_the_provider_redacted(gateway: Gateway, route: str, stream: bool) -> None:
    client = gateway.client()
    _create(client, stream, model=f"guarded-{route}", input=f"write to {EMAIL}", instructions=f"cc {EMAIL}")
    sent = _sent(gateway, route)
    assert EMAIL not in sent and sent.count(REDACTED) == 2
    made = _create(client, stream, model=f"guarded-{route}", instructions="Be brief.", tools=[LOOKUP], input=[
        {"role": "user", "content": [{"type": "input_text", "text": f"I am {EMAIL}"}]}, CALL,
        {"type": "function_call_output", "call_id": "call_1", "output": f"found {EMAIL}"}])
    sent = _sent(gateway, route)
    assert EMAIL not in sent and sent.count(REDACTED) == 2
    kept = client.responses.input_items.list(made.id).model_dump_json()  # the store keeps what the provider got
    assert EMAIL not in kept and kept.count(REDACTED) == 2


def test_a_chain_sends_the_redacted_input_to_every_attempt(gateway: Gateway) -> None:
    raw = gateway.client().responses.with_raw_response.create(
        model="guarded-chain", input=f"I am {EMAIL}", instructions=f"cc {EMAIL}", extra_headers=fault("openai:503"))
    assert raw.headers["x-babelgate-backend"] == "an" and raw.headers["x-babelgate-attempts"] == "2"
    for route in KINDS:
        sent = _sent(gateway, route)
        assert EMAIL not in sent and sent.count(REDACTED) == 2


@pytest.mark.parametrize("route", [*KINDS, "chain"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_blocked_phrase_in_input_is_a_400_naming_the_guardrail(gateway: Gateway, route: str, stream: bool) -> None:
    for handle in ("openai", "anthropic"):
        gateway.clear_provider_requests(handle)
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().responses.create(model=f"guarded-{route}", input=[
            {"role": "user", "content": [{"type": "input_text", "text": f"status of {BLOCKED.title()}?"}]}],
            stream=stream)
    error = refused.value.body
    assert error["code"] == "guardrail_blocked" and "'no-orion'" in error["message"]  # type: ignore[index]
    assert error["param"] == "input"  # type: ignore[index]
    assert gateway.provider_requests("openai") == gateway.provider_requests("anthropic") == []


@pytest.mark.parametrize("route", KINDS)
@pytest.mark.parametrize(("request_fields", "code"), [
    ({"input": [{"role": "user", "content": "hi"}, CALL,
                {"type": "function_call_output", "call_id": "call_1", "output": "x"},
                {"role": "user", "content": "and?"}], "tools": [LOOKUP]}, "too_many_messages"),
    ({"input": "hi", "instructions": "x" * 300}, "prompt_too_long"),
], ids=["items", "instructions"])
def test_a_routes_size_limits_count_input_items_and_instructions(gateway: Gateway, route: str,
                                                                 request_fields: dict, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().responses.create(model=f"sized-{route}", **request_fields)
    assert refused.value.body["code"] == code and refused.value.body["param"] == "input"  # type: ignore[index]
    assert gateway.client().responses.create(model=f"sized-{route}", input="hi", instructions="x" * 100).output_text


@pytest.mark.parametrize(("route", "faults"), ANSWERING, ids=ANSWERING_IDS)
def test_an_answer_with_pii_is_redacted_whole_streamed_and_stored(gateway: Gateway, route: str,
                                                                  faults: dict) -> None:
    client = gateway.client()
    answer = client.responses.create(model=f"answers-{route}", input=f"echo {EMAIL}", extra_headers=faults)
    assert REDACTED in answer.output_text and EMAIL not in answer.model_dump_json()
    assert EMAIL not in client.responses.retrieve(answer.id).model_dump_json()
    text, events = _streamed_text(client, model=f"answers-{route}", input=f"echo {EMAIL}", extra_headers=faults)
    assert REDACTED in text and EMAIL not in text
    final = events[-1]
    assert final.type == "response.completed" and EMAIL not in final.response.model_dump_json()
    assert final.response.output_text == text
    stored = client.responses.retrieve(final.response.id)
    assert REDACTED in stored.output_text and EMAIL not in stored.model_dump_json()


@pytest.mark.parametrize(("route", "faults"), ANSWERING, ids=ANSWERING_IDS)
def test_a_tool_output_echoed_with_pii_is_redacted(gateway: Gateway, route: str, faults: dict) -> None:
    client = gateway.client()
    request = {"model": f"answers-{route}", "tools": [LOOKUP], "extra_headers": faults, "input": [
        {"role": "user", "content": "look it up"}, CALL,
        {"type": "function_call_output", "call_id": "call_1", "output": f"owner is {EMAIL}"}]}
    assert REDACTED in client.responses.create(**request).output_text  # type: ignore[arg-type]
    text, _ = _streamed_text(client, **request)
    assert REDACTED in text and EMAIL not in text


@pytest.mark.parametrize(("route", "faults"), ANSWERING, ids=ANSWERING_IDS)
def test_a_blocked_answer_is_refused_whole_and_ends_a_stream(gateway: Gateway, route: str, faults: dict) -> None:
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=f"answers-{route}", input=f"the {LEAKED} are 1234", extra_headers=faults)
    assert "'answer-block'" in refused.value.body["message"]  # type: ignore[index]
    text, events = _streamed_text(client, model=f"answers-{route}", input=f"the {LEAKED} are 1234",
                                  extra_headers=faults)
    assert LEAKED not in text
    assert [event.sequence_number for event in events] == list(range(len(events)))
    last = events[-1]
    if route == "gpt" or (route == "chain" and not faults):  # the provider's own events, then an `error` event
        assert last.type == "error" and "answer-block" in last.message
    else:  # the gateway's translation, ended as a failed Response
        assert last.type == "response.failed" and "answer-block" in last.response.error.message
    assert not any(e.type == "response.completed" for e in events)
    created = next(e for e in events if e.type == "response.created").response.id
    with pytest.raises(openai.NotFoundError):  # nothing of a blocked answer is kept
        client.responses.retrieve(created)


# -- 4. telemetry --------------------------------------------------------------------------------------------------

def _rows(log_dir: Path, route: str, stream: bool) -> list[dict]:
    """The log's rows of the one request each test makes with the key "observed"."""
    table = ds.dataset(log_dir, format="parquet", partitioning="hive").to_table()
    return [row for row in table.to_pylist()
            if (row["key_id"], row["route"], row["stream"]) == ("observed", route, stream)]


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return prometheus_samples(response.read().decode())


def _operations(samples: dict, route: str) -> float:
    """Requests for `route` the GenAI duration histogram counted as chat operations."""
    return sum(value for (name, labels), value in samples.items()
               if name == "gen_ai_client_operation_duration_seconds_count"
               and ("gen_ai_operation_name", "chat") in labels and ("gen_ai_request_model", route) in labels)


def _spans(collector: Collector, trace_id: str) -> dict:
    """The trace's request (SERVER) and attempt (CLIENT) spans by kind, once both arrived."""
    found = {span.kind: span for span in list(collector.spans) if span.trace_id.hex() == trace_id}
    return found if {SERVER, CLIENT} <= set(found) else {}


@pytest.mark.parametrize("route", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_responses_request_is_logged_counted_and_traced(policy: Policy, route: str, stream: bool) -> None:
    backend, model, _ = ROUTES[route]
    trace_id = f"{KINDS.index(route)}{int(stream)}4bf92f3577b34da6a3ce929d0e0736"
    before = _operations(_scrape(policy.metrics_url), route)
    client = policy.gateway.client("observed")
    response = _create(client, stream, model=route, input="observe me",
                       extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert response.usage is not None
    [row] = eventually(lambda: _rows(policy.log_dir, route, stream), timeout=15,
                       what="the request's row in the log")
    assert (row["endpoint"], row["key_id"], row["route"], row["backend"], row["served_model"], row["status"],
            row["stream"]) == ("responses", "observed", route, backend, model, 200, stream)
    assert (row["input_tokens"], row["output_tokens"]) == (response.usage.input_tokens, response.usage.output_tokens)
    assert not stream or 0 < row["ttft_ms"] <= row["latency_ms"]
    price_in, price_out = PRICES[backend]
    assert row["cost_usd"] == pytest.approx((row["input_tokens"] * price_in + row["output_tokens"] * price_out) / 1e6)
    eventually(lambda: _operations(_scrape(policy.metrics_url), route) == before + 1, timeout=10,
               what="the request counted as a chat operation")
    spans = eventually(lambda: _spans(policy.collector, trace_id), timeout=15, what="the request's two spans")
    for span in spans.values():  # the request's and its attempt's
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["gen_ai.operation.name"].string_value == "chat"
        assert attributes["gen_ai.request.model"].string_value == route
        assert attributes["gen_ai.response.model"].string_value == model
        assert attributes["gen_ai.provider.name"].string_value == ROUTES[route][2]
        assert attributes["gen_ai.usage.output_tokens"].int_value == response.usage.output_tokens
        assert attributes["gen_ai.request.stream"].bool_value is stream


# -- 5. failover with cooldowns ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_429_fails_over_to_the_translated_backend_and_cools_the_native_one(gateway: Gateway, stream: bool) -> None:
    which = "stream" if stream else "json"
    client = gateway.client()

    def ask(**extra: object) -> tuple[str, str, str]:
        raw = client.responses.with_raw_response.create(model=f"cooling-{which}", input="hello", stream=stream,
                                                        store=False, **extra)  # type: ignore[call-overload]
        answer = raw.parse()
        text = "".join(e.delta for e in answer if e.type == "response.output_text.delta") if stream \
            else answer.output_text
        return raw.headers["x-babelgate-backend"], raw.headers["x-babelgate-attempts"], text

    backend, attempts, text = ask(extra_headers=fault("openai:429,openai:retry_after=2"))
    assert (backend, attempts) == (f"an-{which}", "2") and "anthropic" in text
    assert ask()[:2] == (f"an-{which}", "1")  # the native backend cools: the translated one is tried first
    eventually(lambda: ask()[0] == f"oa-{which}", timeout=10, interval=0.25,
               what="the native backend back once its retry-after passed")
