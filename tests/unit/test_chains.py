"""Chains: backend orders, their Envoy routes and retry policies, route validation and the compiled route tables."""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from pydantic import ValidationError

from ext_proc.config.chains import (
    FULL_ORDERS_UP_TO,
    ChainRoute,
    RetrySettings,
    all_chain_routes,
    deadline,
    orders,
    route_chains,
)
from ext_proc.config.loading import parse_config
from ext_proc.config.models import Backend, Config, ModelRoute, OutlierDetection, RoutingSettings
from ext_proc.envoy_config.bootstrap import render_bootstrap, render_yaml
from ext_proc.runtime.build import RouteInfo, Runtime, compile_runtime, find_route


def _backends(*ids: str, extra: dict[str, str] | None = None) -> str:
    extra = extra or {}
    lines = [f'  - {{id: {i}, schema: openai, base_url: "http://127.0.0.1:9/v1"{extra.get(i, "")}}}' for i in ids]
    return "backends:\n" + "\n".join(lines) + "\n"


def _config(routes: str, *ids: str, extra: dict[str, str] | None = None) -> Config:
    return parse_config(_backends(*(ids or ("a", "b", "c", "d", "e", "f")), extra=extra) + "routes:\n" + routes)


def _route(**fields: object) -> ModelRoute:
    data: dict = {"model": "m", "backends": [{"backend": "a", "model": "x"}, {"backend": "b", "model": "y"}]}
    data.update(fields)
    return ModelRoute.model_validate(data)


def _entries(*ids: str) -> list[dict]:
    return [{"backend": i, "model": f"model-{i}"} for i in ids]


def _default_retry(retries: int) -> RetrySettings:
    return RetrySettings(retry_on=(429, 500, 502, 503, 504, "connect-failure", "reset"), retries=retries,
                         deadline=None)


# orders

def test_full_orders_up_to_four_backends() -> None:
    assert FULL_ORDERS_UP_TO == 4
    assert orders(("a", "b", "c"), 3) == list(itertools.permutations(("a", "b", "c")))
    assert len(orders(("a", "b", "c", "d"), 4)) == 24


def test_orders_are_cut_to_the_length() -> None:
    found = orders(("a", "b", "c", "d"), 2)
    assert len(found) == 12
    assert set(found) == set(itertools.permutations(("a", "b", "c", "d"), 2))


def test_length_beyond_the_backends_is_the_backends() -> None:
    assert orders(("a", "b"), 5) == [("a", "b"), ("b", "a")]


def test_one_backend_has_one_order() -> None:
    assert orders(("a",), 1) == [("a",)]


def test_more_than_four_backends_get_one_order_per_first_with_the_rest_in_config_order() -> None:
    found = orders(("a", "b", "c", "d", "e"), 5)
    assert found == [
        ("a", "b", "c", "d", "e"),
        ("b", "a", "c", "d", "e"),
        ("c", "a", "b", "d", "e"),
        ("d", "a", "b", "c", "e"),
        ("e", "a", "b", "c", "d"),
    ]


def test_more_than_four_backends_cut_to_the_length() -> None:
    assert orders(("a", "b", "c", "d", "e"), 2) == [("a", "b"), ("b", "a"), ("c", "a"), ("d", "a"), ("e", "a")]


# route_chains and names

def test_two_backend_route_has_both_orders_with_default_names() -> None:
    chains = route_chains(_route())
    assert set(chains) == {("a", "b"), ("b", "a")}
    assert chains[("a", "b")].name == "bg_chain_a__b"
    assert chains[("b", "a")].name == "bg_chain_b__a"
    assert chains[("a", "b")].retry.retries == 1
    assert not chains[("a", "b")].direct


def test_one_backend_route_is_a_direct_route() -> None:
    chains = route_chains(_route(backends=_entries("a")))
    assert list(chains) == [("a",)]
    chain = chains[("a",)]
    assert chain.name == "bg_direct_a"
    assert chain.direct
    assert chain.cluster == "bg_backend_a"
    assert chain.retry.retries == 0


def test_chain_cluster_names_the_order() -> None:
    assert route_chains(_route())[("b", "a")].cluster == "bg_chain_b__a"


def test_rules_add_the_orders_of_their_own_backends() -> None:
    route = _route(backends=_entries("a", "b", "c"), rules=[
        {"when": {"team": "t"}, "backends": ["c", "a"]},
        {"when": {"team": "u"}, "backends": ["b"]},
    ])
    chains = route_chains(route)
    assert set(chains) == (set(itertools.permutations(("a", "b", "c"))) | {("c", "a"), ("a", "c"), ("b",)})
    assert chains[("c", "a")].name == "bg_chain_c__a"
    assert chains[("c", "a")].retry.retries == 1
    assert chains[("b",)].name == "bg_direct_b"


def test_max_attempts_cuts_the_orders() -> None:
    chains = route_chains(_route(backends=_entries("a", "b", "c"), max_attempts=2))
    assert set(chains) == set(itertools.permutations(("a", "b", "c"), 2))
    assert chains[("c", "b")].name == "bg_chain_c__b"


def test_max_attempts_one_gives_direct_routes_only() -> None:
    chains = route_chains(_route(max_attempts=1))
    assert {c.name for c in chains.values()} == {"bg_direct_a", "bg_direct_b"}
    assert all(c.retry.retries == 0 for c in chains.values())


def test_reordered_default_retry_on_keeps_the_default_name() -> None:
    route = _route(retry_on=["reset", 504, "connect-failure", 503, 502, 500, 429])
    assert route_chains(route)[("a", "b")].name == "bg_chain_a__b"


@pytest.mark.parametrize("fields", [
    {"retry_on": [429, "connect-failure"]},
    {"deadline": "90s"},
    {"max_attempts": 3},
])
def test_non_default_retry_settings_get_a_digest_suffix(fields: dict) -> None:
    name = route_chains(_route(**fields))[("a", "b")].name
    assert re.fullmatch(r"bg_chain_a__b\.[0-9a-f]{8}", name), name


def test_direct_route_with_retries_gets_a_digest_suffix() -> None:
    name = route_chains(_route(backends=_entries("a"), max_attempts=2))[("a",)].name
    assert re.fullmatch(r"bg_direct_a\.[0-9a-f]{8}", name), name


def test_digest_depends_on_the_settings_only() -> None:
    one = route_chains(_route(deadline="90s"))[("a", "b")].name
    same = route_chains(_route(model="other", deadline=90))[("a", "b")].name
    longer = route_chains(_route(deadline="91s"))[("a", "b")].name
    fewer = route_chains(_route(retry_on=[429]))[("a", "b")].name
    assert one == same
    assert len({one, longer, fewer}) == 3


def test_duplicate_retry_outcomes_count_once() -> None:
    chain = route_chains(_route(retry_on=[503, 429, 503]))[("a", "b")]
    assert chain.retry.retry_on == (429, 503)
    assert chain.retry.statuses == [429, 503]


def test_retry_outcomes_in_another_order_make_the_same_envoy_route() -> None:
    one = route_chains(_route(retry_on=["reset", 503, "connect-failure"]))[("a", "b")]
    other = route_chains(_route(retry_on=["connect-failure", 503, "reset"]))[("a", "b")]
    assert one.name == other.name


def test_all_chain_routes_share_identical_chains_across_routes() -> None:
    config = _config("""
  - model: one
    backends: [{backend: a, model: x}, {backend: b, model: x}]
  - model: two
    backends: [{backend: b, model: z}, {backend: a, model: z}]
  - model: three
    deadline: 60s
    backends: [{backend: a, model: x}, {backend: b, model: x}]
""", "a", "b")  # one translation kind per route: a request can't leave one of them out (see test_capability_chains)
    names = [c.name for c in all_chain_routes(config)]
    assert names[:2] == ["bg_chain_a__b", "bg_chain_b__a"]
    assert len(names) == 4
    assert all(re.fullmatch(r"bg_chain_(a__b|b__a)\.[0-9a-f]{8}", n) for n in names[2:])


def test_all_chain_routes_include_direct_routes() -> None:
    config = _config("  - {model: one, backends: [{backend: a, model: x}]}\n", "a", "b")
    assert [c.name for c in all_chain_routes(config)] == ["bg_direct_a"]


# deadline

def _timeouts(**seconds: float) -> dict[str, Backend]:
    return {name: Backend.model_validate({"id": name, "schema": "openai", "base_url": "http://127.0.0.1:9/v1",
                                          "timeout": value})
            for name, value in seconds.items()}


def test_deadline_is_the_sum_of_the_backend_timeouts() -> None:
    chain = ChainRoute(("a", "b", "c"), _default_retry(2))
    assert deadline(chain, _timeouts(a=30, b=45, c=20)) == 95


def test_attempts_past_the_order_go_round_it_again() -> None:
    chain = ChainRoute(("a", "b"), _default_retry(4))
    assert deadline(chain, _timeouts(a=30, b=45)) == 30 + 45 + 30 + 45 + 30


def test_a_direct_route_without_retries_gets_its_backend_timeout() -> None:
    assert deadline(ChainRoute(("b",), _default_retry(0)), _timeouts(a=30, b=45)) == 45


def test_a_route_deadline_wins_over_the_timeouts() -> None:
    chain = route_chains(_route(deadline="2m"))[("a", "b")]
    assert deadline(chain, _timeouts(a=600, b=600)) == 120


# ModelRoute validation

def test_policy_must_be_known() -> None:
    for policy in ("priority", "weighted", "latency", "cost"):
        assert _route(policy=policy).policy == policy
    with pytest.raises(ValidationError, match="policy"):
        _route(policy="random")


def test_rules_may_only_name_the_routes_backends() -> None:
    with pytest.raises(ValidationError, match="rule names backends that are not in this route: z"):
        _route(rules=[{"when": {"team": "t"}, "backends": ["a", "z"]}])


def test_a_rule_names_a_backend_once() -> None:
    with pytest.raises(ValidationError, match="only once in a rule's chain"):
        _route(rules=[{"when": {"team": "t"}, "backends": ["a", "a"]}])


def test_a_route_names_a_backend_once() -> None:
    with pytest.raises(ValidationError, match="only once in a route's chain"):
        _route(backends=_entries("a", "a"))


def test_a_rule_needs_backends() -> None:
    with pytest.raises(ValidationError, match="backends"):
        _route(rules=[{"when": {"team": "t"}, "backends": []}])


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_statuses_that_fail_everywhere_are_refused_in_retry_on(status: int) -> None:
    with pytest.raises(ValidationError, match=f"retry_on: {status} is not retried"):
        _route(retry_on=[429, status])


@pytest.mark.parametrize("status", [200, 302, 399, 600, 1])
def test_statuses_outside_4xx_and_5xx_are_refused_in_retry_on(status: int) -> None:
    with pytest.raises(ValidationError, match=f"retry_on: {status} is not retried"):
        _route(retry_on=[status])


@pytest.mark.parametrize("status", [408, 409, 429, 500, 529, 599])
def test_other_4xx_and_5xx_statuses_are_accepted_in_retry_on(status: int) -> None:
    assert _route(retry_on=[status]).retry_on == [status]


def test_unknown_retry_events_are_refused() -> None:
    with pytest.raises(ValidationError, match="retry_on"):
        _route(retry_on=["timeout"])


@pytest.mark.parametrize("attempts", [0, 11])
def test_max_attempts_is_between_one_and_ten(attempts: int) -> None:
    with pytest.raises(ValidationError, match="max_attempts"):
        _route(max_attempts=attempts)


def test_wildcard_route_is_prefix_slash_star() -> None:
    route = _route(model="anthropic/*", backends=[{"backend": "a", "model": "claude-*"}])
    assert route.is_wildcard
    assert not _route().is_wildcard


@pytest.mark.parametrize(("model", "message"), [
    ("anthropic*", "may only end a wildcard route's model"),
    ("*", "may only end a wildcard route's model"),
    ("an*/x", "may only end a wildcard route's model"),
    ("a/*/b/*", "a wildcard route is written `prefix/\\*`"),
])
def test_misplaced_stars_in_the_model_are_refused(model: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _route(model=model)


def test_a_wildcard_route_has_no_aliases() -> None:
    with pytest.raises(ValidationError, match="a wildcard route has no aliases"):
        _route(model="openai/*", aliases=["gpt"])


def test_star_in_a_backend_model_needs_a_wildcard_route() -> None:
    with pytest.raises(ValidationError, match="needs a wildcard route"):
        _route(backends=[{"backend": "a", "model": "claude-*"}])


def test_sticky_header_is_lowercased() -> None:
    assert _route(policy="weighted", sticky_header="X-Request-ID").sticky_header == "x-request-id"


def test_durations_in_route_settings() -> None:
    assert _route(deadline="500ms").deadline == 0.5
    with pytest.raises(ValidationError, match="deadline"):
        _route(deadline=0)


# OutlierDetection, RoutingSettings, Backend timeouts

def test_outlier_detection_defaults() -> None:
    settings = OutlierDetection()
    assert (settings.consecutive_5xx, settings.consecutive_gateway_failure) == (5, 3)
    assert (settings.interval, settings.base_ejection_time, settings.max_ejection_time) == (5.0, 30.0, 300.0)


def test_outlier_detection_parses_durations_and_refuses_zero_counts() -> None:
    settings = OutlierDetection.model_validate({"interval": "500ms", "base_ejection_time": "1m"})
    assert (settings.interval, settings.base_ejection_time) == (0.5, 60.0)
    with pytest.raises(ValidationError, match="consecutive_5xx"):
        OutlierDetection.model_validate({"consecutive_5xx": 0})
    with pytest.raises(ValidationError, match="colour"):
        OutlierDetection.model_validate({"colour": "red"})


def test_backends_have_outlier_detection_unless_turned_off() -> None:
    config = _config("  - {model: m, backends: [{backend: a, model: x}]}\n", "a", "b",
                     extra={"b": ", outlier_detection: null"})
    assert config.backends[0].outlier_detection == OutlierDetection()
    assert config.backends[1].outlier_detection is None


def test_routing_settings_defaults() -> None:
    settings = RoutingSettings()
    assert (settings.cooldown_default, settings.cooldown_max) == (5.0, 300.0)
    assert settings.share_cooldowns is True
    assert settings.latency_smoothing == 0.3


def test_routing_settings_parse_durations() -> None:
    settings = RoutingSettings.model_validate({"cooldown_default": "500ms", "cooldown_max": "10m"})
    assert (settings.cooldown_default, settings.cooldown_max) == (0.5, 600.0)


@pytest.mark.parametrize("fields", [
    {"latency_smoothing": 0},
    {"latency_smoothing": 1.5},
    {"cooldown_default": 0},
    {"cooldown_max": "soon"},
])
def test_routing_settings_refuse_bad_values(fields: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(fields))):
        RoutingSettings.model_validate(fields)


def _backend(**fields: object) -> Backend:
    return Backend.model_validate({"id": "a", "schema": "openai", "base_url": "http://127.0.0.1:9/v1", **fields})


def test_backend_stream_timeouts_are_unset_by_default() -> None:
    backend = _backend()
    assert backend.first_byte_timeout is None
    assert backend.stream_idle_timeout is None


def test_backend_stream_timeouts_parse_durations() -> None:
    backend = _backend(first_byte_timeout="1500ms", stream_idle_timeout="2m")
    assert backend.first_byte_timeout == 1.5
    assert backend.stream_idle_timeout == 120.0


@pytest.mark.parametrize("field", ["first_byte_timeout", "stream_idle_timeout"])
@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_backend_stream_timeouts_refuse_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        _backend(**{field: value})


# runtime: find_route, backend_model, chain_for, first_byte_ms

WILDCARDS = """
  - model: openai/special
    aliases: [special]
    backends: [{backend: a, model: special-model}]
  - model: openai/*
    backends: [{backend: a, model: "claude-*"}, {backend: b, model: fixed-model}]
  - model: openai/gpt/*
    backends: [{backend: b, model: "gpt-*"}]
  - model: anthropic/*
    backends: [{backend: a, model: "*"}]
"""


@pytest.fixture(scope="module")
def wildcard_runtime() -> Runtime:
    return compile_runtime(_config(WILDCARDS, "a", "b"), load_secrets=False)


def test_exact_names_and_aliases_win_over_wildcards(wildcard_runtime: Runtime) -> None:
    assert find_route(wildcard_runtime, "openai/special").name == "openai/special"
    assert find_route(wildcard_runtime, "special").name == "openai/special"


def test_the_longest_wildcard_prefix_wins(wildcard_runtime: Runtime) -> None:
    assert find_route(wildcard_runtime, "openai/gpt/4o").name == "openai/gpt/*"
    assert find_route(wildcard_runtime, "openai/gpt-4o").name == "openai/*"
    assert find_route(wildcard_runtime, "anthropic/claude-3").name == "anthropic/*"


@pytest.mark.parametrize("model", ["anthropic/", "anthropic", "anthropicx/claude", "mistral/large", "openai"])
def test_names_a_wildcard_does_not_cover(wildcard_runtime: Runtime, model: str) -> None:
    assert find_route(wildcard_runtime, model) is None


def test_wildcard_routes_are_not_public_model_names(wildcard_runtime: Runtime) -> None:
    assert wildcard_runtime.public_models == ("openai/special",)
    assert [w.name for w in wildcard_runtime.wildcards] == ["openai/gpt/*", "anthropic/*", "openai/*"]


def test_a_wildcard_star_in_a_backend_model_becomes_what_the_name_matched(wildcard_runtime: Runtime) -> None:
    route = find_route(wildcard_runtime, "openai/mini-7")
    assert route.backend_model("a", "openai/mini-7") == "claude-mini-7"
    assert route.backend_model("b", "openai/mini-7") == "fixed-model"
    nested = find_route(wildcard_runtime, "openai/gpt/4o")
    assert nested.backend_model("b", "openai/gpt/4o") == "gpt-4o"
    whole = find_route(wildcard_runtime, "anthropic/claude-3/5")
    assert whole.backend_model("a", "anthropic/claude-3/5") == "claude-3/5"


def test_exact_routes_keep_their_backend_model(wildcard_runtime: Runtime) -> None:
    route = find_route(wildcard_runtime, "special")
    assert route.backend_model("a", "special") == "special-model"


FIVE = """
  - model: five
    backends: [{backend: a, model: x}, {backend: b, model: x}, {backend: c, model: x}, {backend: d, model: x},
               {backend: e, model: x}]
    rules:
      - {when: {team: t}, backends: [c, a]}
  - model: two
    backends: [{backend: a, model: x}, {backend: b, model: x}]
  - model: once
    max_attempts: 1
    backends: [{backend: a, model: x}, {backend: b, model: x}]
  - model: slow
    deadline: 90s
    backends: [{backend: a, model: x}, {backend: b, model: x}]
"""


@pytest.fixture(scope="module")
def five_runtime() -> Runtime:
    return compile_runtime(_config(FIVE, "a", "b", "c", "d", "e"), load_secrets=False)


def test_chain_for_names_the_orders_envoy_route(five_runtime: Runtime) -> None:
    route = five_runtime.routes["two"]
    choice = route.chain_for(["b", "a"], route.backends)
    assert choice.name == "bg_chain_b__a"
    assert not choice.direct


def test_chain_for_carries_non_default_names(five_runtime: Runtime) -> None:
    route = five_runtime.routes["slow"]
    assert re.fullmatch(r"bg_chain_b__a\.[0-9a-f]{8}", route.chain_for(["b", "a"], route.backends).name)


def test_chain_for_cuts_the_order_to_the_attempts(five_runtime: Runtime) -> None:
    route = five_runtime.routes["once"]
    choice = route.chain_for(["b", "a"], route.backends)
    assert choice.name == "bg_direct_b"
    assert choice.direct


def test_chain_for_a_rule_uses_the_rules_own_orders(five_runtime: Runtime) -> None:
    route = five_runtime.routes["five"]
    assert route.chain_for(["a", "c"], ("c", "a")).name == "bg_chain_a__c"


def test_chain_for_an_order_envoy_was_not_given_falls_back_to_its_first_backend(five_runtime: Runtime) -> None:
    route = five_runtime.routes["five"]
    assert route.chain_for(["c", "e", "d", "b", "a"], route.backends).name == "bg_chain_c__a__b__d__e"
    assert route.chain_for(["b", "a", "c", "d", "e"], route.backends).name == "bg_chain_b__a__c__d__e"


STREAMING = """
  - model: m
    backends: [{backend: a, model: x}, {backend: b, model: x}, {backend: c, model: x}]
"""


@pytest.fixture(scope="module")
def streaming_route() -> RouteInfo:
    config = _config(STREAMING, "a", "b", "c",
                     extra={"a": ", first_byte_timeout: 2s", "b": ", first_byte_timeout: 3500ms"})
    return compile_runtime(config, load_secrets=False).routes["m"]


def test_first_byte_ms_is_the_largest_first_byte_timeout_of_the_order(streaming_route: RouteInfo) -> None:
    assert streaming_route.chains[("a", "b", "c")].first_byte_ms == "3500"
    assert streaming_route.chains[("c", "a", "b")].first_byte_ms == "3500"


def test_first_byte_ms_ignores_backends_without_one() -> None:
    config = _config("  - {model: m, max_attempts: 2, backends: [{backend: a, model: x}, {backend: c, model: x}, "
                     "{backend: b, model: x}]}\n", "a", "b", "c", extra={"a": ", first_byte_timeout: 2s"})
    route = compile_runtime(config, load_secrets=False).routes["m"]
    assert route.chains[("a", "c")].first_byte_ms == "2000"
    assert route.chains[("c", "b")].first_byte_ms is None


def test_first_byte_ms_of_a_direct_route() -> None:
    config = _config("  - {model: m, backends: [{backend: a, model: x}]}\n"
                     "  - {model: n, backends: [{backend: b, model: x}]}\n", "a", "b",
                     extra={"a": ", first_byte_timeout: 750ms"})
    runtime = compile_runtime(config, load_secrets=False)
    assert runtime.routes["m"].chains[("a",)].first_byte_ms == "750"
    assert runtime.routes["n"].chains[("b",)].first_byte_ms is None


def test_chain_for_a_rule_never_leaves_the_rules_backends() -> None:
    routes = """
  - model: six
    backends: [{backend: a, model: x}, {backend: b, model: x}, {backend: c, model: x}, {backend: d, model: x},
               {backend: e, model: x}, {backend: f, model: x}]
    rules:
      - {when: {team: t}, backends: [a, b, c, d, e]}
"""
    route = compile_runtime(_config(routes), load_secrets=False).routes["six"]
    rule = ("a", "b", "c", "d", "e")
    # e.g. priority order with `b` cooling: cooled_last moves it to the end
    choice = route.chain_for(["a", "c", "d", "e", "b"], rule)
    assert set(choice.order) <= set(rule) and choice.order[0] == "a"


def test_chain_for_never_tries_a_backend_the_cost_policy_left_out() -> None:
    config = _config("  - {model: m, policy: cost, backends: [{backend: a, model: x}, "
                     "{backend: b, model: x, max_input_tokens: 100}, {backend: c, model: x}]}\n", "a", "b", "c")
    route = compile_runtime(config, load_secrets=False).routes["m"]
    choice = route.chain_for(["a", "c"], route.backends)
    assert choice.order == ("a", "c")


def test_route_prices_only_for_the_routes_backend_model() -> None:
    config = parse_config(_backends("a", "b") + """routes:
  - {model: m, policy: cost, backends: [{backend: a, model: x}, {backend: b, model: y}]}
prices:
  - {backend: a, model: x, input: 3, output: 15}
  - {backend: b, model: other, input: 1, output: 1}
""")
    route = compile_runtime(config, load_secrets=False).routes["m"]
    assert route.prices == {"a": (3e-6, 15e-6)}


# Envoy rendering

RENDER = """
  - model: default
    backends: [{backend: a, model: x}, {backend: b, model: x}]
  - model: statuses
    retry_on: [503, 429]
    backends: [{backend: a, model: x}, {backend: c, model: x}]
  - model: events
    retry_on: [connect-failure]
    backends: [{backend: b, model: x}, {backend: c, model: x}]
  - model: resets
    retry_on: [reset, 500]
    backends: [{backend: c, model: x}, {backend: b, model: x}]
  - model: deadline
    deadline: 90s
    backends: [{backend: b, model: x}, {backend: a, model: x}]
  - model: rounds
    max_attempts: 3
    backends: [{backend: a, model: x}, {backend: b, model: x}]
  - model: direct-retry
    max_attempts: 2
    backends: [{backend: c, model: x}]
  - model: direct-once
    backends: [{backend: b, model: x}]
"""
RENDER_BACKENDS = {
    "a": ", timeout: 30s",
    "b": ", timeout: 45s, outlier_detection: null",
    "c": ", timeout: 20s, outlier_detection: {consecutive_5xx: 7, interval: 10s, base_ejection_time: 1m}",
}


@pytest.fixture(scope="module")
def render_config() -> Config:
    return _config(RENDER, "a", "b", "c", extra=RENDER_BACKENDS)


@pytest.fixture(scope="module")
def rendered_text(render_config: Config) -> str:
    return render_yaml(render_config)


@pytest.fixture(scope="module")
def envoy_routes(rendered_text: str) -> dict[str, dict]:
    data = yaml.safe_load(rendered_text)
    manager = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {r["name"]: r for r in manager["route_config"]["virtual_hosts"][0]["routes"]}


@pytest.fixture(scope="module")
def envoy_clusters(rendered_text: str) -> dict[str, dict]:
    return {c["name"]: c for c in yaml.safe_load(rendered_text)["static_resources"]["clusters"]}


def _envoy_route(config: Config, routes: dict[str, dict], model: str, order: tuple[str, ...]) -> dict:
    route = next(r for r in config.routes if r.model == model)
    return routes[route_chains(route)[order].name]["route"]


def _seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_default_retry_policy(render_config: Config, envoy_routes: dict) -> None:
    route = _envoy_route(render_config, envoy_routes, "default", ("a", "b"))
    policy = route["retry_policy"]
    assert set(policy["retry_on"].split(",")) == {"connect-failure", "reset", "refused-stream",
                                                  "retriable-status-codes"}
    assert policy["retriable_status_codes"] == [429, 500, 502, 503, 504]
    assert policy["num_retries"] == 1
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert _seconds(route["timeout"]) == 30 + 45


def test_statuses_only_retry_on(render_config: Config, envoy_routes: dict) -> None:
    policy = _envoy_route(render_config, envoy_routes, "statuses", ("c", "a"))["retry_policy"]
    assert policy["retry_on"] == "retriable-status-codes"
    assert policy["retriable_status_codes"] == [429, 503]


def test_connect_failure_only_retry_on(render_config: Config, envoy_routes: dict) -> None:
    policy = _envoy_route(render_config, envoy_routes, "events", ("b", "c"))["retry_policy"]
    assert policy["retry_on"] == "connect-failure"
    assert not policy.get("retriable_status_codes")


def test_reset_also_retries_refused_streams(render_config: Config, envoy_routes: dict) -> None:
    policy = _envoy_route(render_config, envoy_routes, "resets", ("c", "b"))["retry_policy"]
    assert set(policy["retry_on"].split(",")) == {"reset", "refused-stream", "retriable-status-codes"}
    assert policy["retriable_status_codes"] == [500]


def test_route_deadline_is_the_envoy_timeout(render_config: Config, envoy_routes: dict) -> None:
    route = _envoy_route(render_config, envoy_routes, "deadline", ("a", "b"))
    assert _seconds(route["timeout"]) == 90


def test_num_retries_is_max_attempts_minus_one(render_config: Config, envoy_routes: dict) -> None:
    route = _envoy_route(render_config, envoy_routes, "rounds", ("b", "a"))
    assert route["retry_policy"]["num_retries"] == 2
    assert _seconds(route["timeout"]) == 45 + 30 + 45


def test_direct_route_with_retries_has_no_retry_priority(render_config: Config, envoy_routes: dict) -> None:
    route = _envoy_route(render_config, envoy_routes, "direct-retry", ("c",))
    assert route["cluster"] == "bg_backend_c"
    policy = route["retry_policy"]
    assert policy["num_retries"] == 1
    assert "retry_priority" not in policy
    assert "retry_host_predicate" not in policy
    assert _seconds(route["timeout"]) == 20 + 20


def test_direct_route_without_retries_has_no_retry_policy(render_config: Config, envoy_routes: dict) -> None:
    route = _envoy_route(render_config, envoy_routes, "direct-once", ("b",))
    assert route["cluster"] == "bg_backend_b"
    assert "retry_policy" not in route
    assert _seconds(route["timeout"]) == 45


def test_chain_routes_use_their_aggregate_cluster(render_config: Config, envoy_routes: dict,
                                                  envoy_clusters: dict) -> None:
    route = _envoy_route(render_config, envoy_routes, "statuses", ("c", "a"))
    assert route["cluster"] == "bg_chain_c__a"
    members = envoy_clusters["bg_chain_c__a"]["cluster_type"]["typed_config"]["clusters"]
    assert members == ["bg_backend_c", "bg_backend_a"]


def test_every_chain_route_is_rendered_once(render_config: Config, envoy_routes: dict) -> None:
    expected = {c.name for c in all_chain_routes(render_config)} | {"unrouted"}
    assert set(envoy_routes) == expected


def test_outlier_detection_defaults_on_backend_clusters(envoy_clusters: dict) -> None:
    outlier = envoy_clusters["bg_backend_a"]["outlier_detection"]
    assert outlier["consecutive_5xx"] == 5
    assert outlier["consecutive_gateway_failure"] == 3
    assert _seconds(outlier["interval"]) == 5
    assert _seconds(outlier["base_ejection_time"]) == 30
    assert _seconds(outlier["max_ejection_time"]) == 300


def test_configured_outlier_detection_is_rendered(envoy_clusters: dict) -> None:
    outlier = envoy_clusters["bg_backend_c"]["outlier_detection"]
    assert outlier["consecutive_5xx"] == 7
    assert _seconds(outlier["interval"]) == 10
    assert _seconds(outlier["base_ejection_time"]) == 60


def test_outlier_detection_null_renders_none(envoy_clusters: dict) -> None:
    assert "outlier_detection" not in envoy_clusters["bg_backend_b"]


def test_outlier_detection_is_on_backend_clusters_and_the_ext_proc_cluster(envoy_clusters: dict) -> None:
    """Backends by their 5xx (as configured); the ext_proc servers by refused or dropped connections."""
    with_outlier = {name for name, c in envoy_clusters.items() if "outlier_detection" in c}
    assert with_outlier == {"bg_backend_a", "bg_backend_c", "bg_ext_proc"}


def test_yaml_uses_envoys_consecutive_5xx_field_name(rendered_text: str) -> None:
    assert "consecutive_5_xx" not in rendered_text
    assert rendered_text.count("consecutive_5xx: ") == 2


def test_bootstrap_object_carries_the_outlier_settings(render_config: Config) -> None:
    clusters = {c.name: c for c in render_bootstrap(render_config).static_resources.clusters}
    assert clusters["bg_backend_c"].outlier_detection.consecutive_5xx == 7
    assert clusters["bg_backend_b"].outlier_detection is None
