"""Routing: cooldowns from provider headers, latency averages, the ordering policies and route rules."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ext_proc.config.models import RouteRule
from ext_proc.routing import cooldowns as cooldowns_module
from ext_proc.routing import latency as latency_module
from ext_proc.routing import policies as policies_module
from ext_proc.routing.cooldowns import Cooldowns, wait_from_headers
from ext_proc.routing.latency import FAILURE_PENALTY, SPIKE_LIMIT, LatencyAverages, handed
from ext_proc.routing.policies import cheapest_first, cooled_last, fastest_first, rank, weighted_first
from ext_proc.routing.rules import CompiledRule, RequestFacts, first_match

NOW = 1_700_000_000.0
"""2023-11-14T22:13:20Z."""


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class NoRandom(random.Random):
    """An rng that fails the test if the code under test draws from it."""

    def random(self) -> float:
        raise AssertionError("the rng was used")

    def shuffle(self, x: list) -> None:
        raise AssertionError("the rng was used")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(NOW)
    monkeypatch.setattr(cooldowns_module, "time", fake)
    monkeypatch.setattr(policies_module, "time", fake, raising=False)
    return fake


# wait_from_headers

def test_retry_after_ms_is_milliseconds() -> None:
    assert wait_from_headers({"retry-after-ms": "1500"}, now=NOW) == 1.5


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert wait_from_headers({"retry-after-ms": "250", "retry-after": "30"}, now=NOW) == 0.25


def test_unparsable_retry_after_ms_falls_back_to_retry_after() -> None:
    assert wait_from_headers({"retry-after-ms": "soon", "retry-after": "7"}, now=NOW) == 7.0


def test_retry_after_seconds() -> None:
    assert wait_from_headers({"retry-after": " 12 "}, now=NOW) == 12.0


def test_negative_retry_after_is_no_wait() -> None:
    assert wait_from_headers({"retry-after": "-5"}, now=NOW) == 0.0


def test_retry_after_http_date_is_seconds_from_now() -> None:
    assert wait_from_headers({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, now=NOW) == pytest.approx(30.0)


def test_retry_after_http_date_in_the_past_is_no_wait() -> None:
    assert wait_from_headers({"retry-after": "Tue, 14 Nov 2023 22:00:00 GMT"}, now=NOW) == 0.0


def test_unparsable_retry_after_falls_back_to_rate_limit_resets() -> None:
    headers = {"retry-after": "later", "x-ratelimit-reset-requests": "3s", "x-ratelimit-remaining-requests": "0"}
    assert wait_from_headers(headers, now=NOW) == 3.0


def test_no_wait_headers_means_none() -> None:
    assert wait_from_headers({"content-type": "application/json"}, now=NOW) is None


def test_unparsable_headers_alone_mean_none() -> None:
    headers = {"retry-after": "later", "x-ratelimit-reset-requests": "soon",
               "anthropic-ratelimit-requests-reset": "tomorrow"}
    assert wait_from_headers(headers, now=NOW) is None


@pytest.mark.parametrize(("duration", "seconds"), [
    ("1s", 1.0),
    ("6m0s", 360.0),
    ("20ms", 0.02),
    ("1h2m3.5s", 3723.5),
    ("2m30s", 150.0),
    ("0.5s", 0.5),
    ("17", 17.0),
])
def test_openai_reset_durations(duration: str, seconds: float) -> None:
    headers = {"x-ratelimit-reset-requests": duration, "x-ratelimit-remaining-requests": "0"}
    assert wait_from_headers(headers, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("duration", ["", "s", "5x", "1.2.3s", "1 s"])
def test_malformed_openai_durations_are_ignored(duration: str) -> None:
    headers = {"x-ratelimit-reset-requests": duration, "x-ratelimit-remaining-requests": "0"}
    assert wait_from_headers(headers, now=NOW) is None


def test_openai_exhausted_limit_reset_wins_over_a_sooner_one() -> None:
    headers = {
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-requests": "42",
        "x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "0",
    }
    assert wait_from_headers(headers, now=NOW) == 360.0


def test_several_exhausted_limits_wait_for_the_latest_reset() -> None:
    headers = {
        "x-ratelimit-reset-requests": "20s", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-tokens": "5s", "x-ratelimit-remaining-tokens": " 0 ",
    }
    assert wait_from_headers(headers, now=NOW) == 20.0


def test_without_an_exhausted_limit_the_smallest_reset_wins() -> None:
    headers = {
        "x-ratelimit-reset-requests": "20s", "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-tokens": "500ms",
    }
    assert wait_from_headers(headers, now=NOW) == 0.5


def test_anthropic_reset_timestamp_is_seconds_from_now() -> None:
    headers = {"anthropic-ratelimit-requests-reset": "2023-11-14T22:14:20Z",
               "anthropic-ratelimit-requests-remaining": "0"}
    assert wait_from_headers(headers, now=NOW) == pytest.approx(60.0)


def test_anthropic_timestamp_with_an_offset() -> None:
    headers = {"anthropic-ratelimit-tokens-reset": "2023-11-15T00:13:30+02:00"}
    assert wait_from_headers(headers, now=NOW) == pytest.approx(10.0)


def test_anthropic_exhausted_output_tokens_win_over_sooner_resets() -> None:
    headers = {
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:25Z", "anthropic-ratelimit-requests-remaining": "9",
        "anthropic-ratelimit-input-tokens-reset": "2023-11-14T22:13:30Z",
        "anthropic-ratelimit-input-tokens-remaining": "1000",
        "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:14:00Z",
        "anthropic-ratelimit-output-tokens-remaining": "0",
    }
    assert wait_from_headers(headers, now=NOW) == pytest.approx(40.0)


def test_anthropic_reset_in_the_past_is_no_wait() -> None:
    headers = {"anthropic-ratelimit-tokens-reset": "2023-11-14T22:00:00Z"}
    assert wait_from_headers(headers, now=NOW) == 0.0


def test_anthropic_timestamp_without_a_zone_is_ignored() -> None:
    headers = {"anthropic-ratelimit-requests-reset": "2023-11-14T22:14:20",
               "anthropic-ratelimit-requests-remaining": "0"}
    assert wait_from_headers(headers, now=NOW) is None


def test_retry_after_wins_over_rate_limit_resets() -> None:
    headers = {"retry-after": "2", "x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "0"}
    assert wait_from_headers(headers, now=NOW) == 2.0


# Cooldowns

def test_cooled_backend_cools_until_the_wait_ends(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.cool("oa", 10.0)
    assert cooldowns.cooling("oa", now=NOW + 9.9)
    assert not cooldowns.cooling("oa", now=NOW + 10.0)
    assert not cooldowns.cooling("an", now=NOW)


def test_cooling_reads_the_clock_when_no_time_is_given(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.cool("oa", 10.0)
    assert cooldowns.cooling("oa")
    clock.now = NOW + 11
    assert not cooldowns.cooling("oa")


def test_cool_is_capped_at_the_maximum(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=60.0)
    cooldowns.cool("oa", 3600.0)
    assert cooldowns.cooling("oa", now=NOW + 59)
    assert not cooldowns.cooling("oa", now=NOW + 61)


def test_a_shorter_cool_never_shortens_a_longer_one(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.cool("oa", 100.0)
    cooldowns.cool("oa", 1.0)
    assert cooldowns.cooling("oa", now=NOW + 50)


def test_merge_keeps_the_later_end_per_backend(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.cool("oa", 100.0)
    cooldowns.merge({"oa": NOW + 10, "an": NOW + 20})
    assert cooldowns.cooling("oa", now=NOW + 50)
    assert cooldowns.cooling("an", now=NOW + 19)
    assert not cooldowns.cooling("an", now=NOW + 21)
    cooldowns.merge({"oa": NOW + 200})
    assert cooldowns.cooling("oa", now=NOW + 150)


def test_merge_ignores_cooldowns_already_over(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.merge({"oa": NOW - 1})
    assert not cooldowns.cooling("oa", now=NOW - 2)
    assert not cooldowns.any


def test_an_ended_cooldown_is_forgotten_once_asked_about(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    assert not cooldowns.any
    cooldowns.cool("oa", 5.0)
    assert cooldowns.any
    assert not cooldowns.cooling("oa", now=NOW + 6)
    assert not cooldowns.any


def test_429_without_wait_headers_cools_for_the_default(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("oa", 429, {})
    assert cooldowns.cooling("oa", now=NOW + 4.9)
    assert not cooldowns.cooling("oa", now=NOW + 5.1)


def test_429_cools_for_the_header_wait(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("oa", 429, {"retry-after": "30"})
    assert cooldowns.cooling("oa", now=NOW + 29)
    assert not cooldowns.cooling("oa", now=NOW + 31)


def test_429_header_wait_is_capped_at_the_maximum(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=60.0)
    cooldowns.on_response("oa", 429, {"retry-after": "86400"})
    assert not cooldowns.cooling("oa", now=NOW + 61)


def test_429_with_an_exhausted_openai_limit_cools_until_its_reset(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("oa", 429, {"x-ratelimit-reset-tokens": "1m0s", "x-ratelimit-remaining-tokens": "0"})
    assert cooldowns.cooling("oa", now=NOW + 59)
    assert not cooldowns.cooling("oa", now=NOW + 61)


@pytest.mark.parametrize("status", [503, 529])
def test_overloaded_with_retry_after_cools(clock: FakeClock, status: int) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("an", status, {"retry-after": "20"})
    assert cooldowns.cooling("an", now=NOW + 19)
    assert not cooldowns.cooling("an", now=NOW + 21)


def test_503_with_retry_after_ms_cools(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("an", 503, {"retry-after-ms": "8000"})
    assert cooldowns.cooling("an", now=NOW + 7)


@pytest.mark.parametrize("headers", [
    {},
    {"x-ratelimit-reset-requests": "30s", "x-ratelimit-remaining-requests": "0"},
    {"retry-after": "not-a-wait"},
])
def test_503_without_a_usable_retry_after_does_not_cool(clock: FakeClock, headers: dict[str, str]) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("an", 503, headers)
    assert not cooldowns.cooling("an", now=NOW)


@pytest.mark.parametrize("status", [200, 400, 401, 404, 500, 502, 504])
def test_other_statuses_never_cool(clock: FakeClock, status: int) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.on_response("oa", status, {"retry-after": "30"})
    assert not cooldowns.cooling("oa", now=NOW)


# LatencyAverages

def test_first_sample_is_the_average() -> None:
    latency = LatencyAverages(smoothing=0.3)
    latency.on_first_byte("oa", 0.4)
    latency.on_end("oa", 2.0)
    assert latency.first_byte == {"oa": 0.4}
    assert latency.total == {"oa": 2.0}


def test_later_samples_move_the_average_by_the_smoothing() -> None:
    latency = LatencyAverages(smoothing=0.25)
    latency.on_end("oa", 1.0)
    latency.on_end("oa", 2.0)
    assert latency.total["oa"] == pytest.approx(1.25)
    latency.on_end("oa", 0.25)
    assert latency.total["oa"] == pytest.approx(1.25 + 0.25 * (0.25 - 1.25))


def test_a_spike_is_clipped_to_the_spike_limit() -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.on_first_byte("oa", 0.1)
    latency.on_first_byte("oa", 30.0)
    clipped = SPIKE_LIMIT * 0.1 + 0.01
    assert latency.first_byte["oa"] == pytest.approx(0.1 + 0.5 * (clipped - 0.1))


def test_a_spike_of_the_whole_answer_is_clipped_too() -> None:
    latency = LatencyAverages(smoothing=1.0)
    latency.on_end("oa", 1.0)
    latency.on_end("oa", 100.0)
    assert latency.total["oa"] == pytest.approx(SPIKE_LIMIT * 1.0 + 0.01)


def test_a_sample_under_the_spike_limit_is_not_clipped() -> None:
    latency = LatencyAverages(smoothing=1.0)
    latency.on_first_byte("oa", 1.0)
    latency.on_first_byte("oa", 2.5)
    assert latency.first_byte["oa"] == 2.5


def test_a_backend_that_keeps_being_slow_catches_up_within_a_few_samples() -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.on_end("oa", 0.1)
    for _ in range(8):
        latency.on_end("oa", 10.0)
    assert latency.total["oa"] > 5.0


def test_a_fast_failure_counts_at_least_the_failure_penalty_in_both_tables() -> None:
    latency = LatencyAverages(smoothing=0.3)
    latency.on_failure("oa", 0.05)
    assert latency.first_byte["oa"] == FAILURE_PENALTY
    assert latency.total["oa"] == FAILURE_PENALTY


def _from_another_process(sample: str) -> str:
    return "0123456789ab" + sample[len(latency_module.PROCESS_TOKEN):]


def test_samples_handed_by_another_process_are_recorded() -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.take_handed("oa", _from_another_process(handed(0.25, 1.5, ok=True)))
    latency.take_handed("ob", _from_another_process(handed(0.125, None, ok=True)))
    assert latency.first_byte == {"oa": 0.25, "ob": 0.125}
    assert latency.total == {"oa": 1.5}


def test_a_failure_handed_by_another_process_counts_the_penalty() -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.take_handed("oa", _from_another_process(handed(0.01, None, ok=False)))
    assert latency.first_byte == latency.total == {"oa": FAILURE_PENALTY}


def test_samples_this_process_handed_are_not_counted_twice() -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.take_handed("oa", handed(0.25, 1.5, ok=True))
    assert latency.first_byte == latency.total == {}


@pytest.mark.parametrize("value", ["", "x", "0123456789ab ok", "0123456789ab ok fast", "0123456789ab ok nan",
                                   "0123456789ab ok -1", "0123456789ab ok 1e9", "0123456789ab maybe 0.5",
                                   "0123456789ab ok inf 1"])
def test_a_handed_sample_that_cannot_be_read_is_ignored(value: str) -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.take_handed("oa", value)
    assert latency.first_byte == latency.total == {}


def test_a_long_failure_counts_as_long_as_it_lasted() -> None:
    latency = LatencyAverages(smoothing=0.3)
    latency.on_failure("oa", 42.0)
    assert latency.first_byte["oa"] == 42.0
    assert latency.total["oa"] == 42.0


def test_a_failure_counts_at_least_twice_each_tables_average() -> None:
    latency = LatencyAverages(smoothing=0.5)
    latency.on_first_byte("oa", 0.8)
    latency.on_end("oa", 3.0)
    latency.on_failure("oa", 0.2)
    assert latency.first_byte["oa"] == pytest.approx(0.8 + 0.5 * (1.6 - 0.8))
    assert latency.total["oa"] == pytest.approx(3.0 + 0.5 * (6.0 - 3.0))


def test_failure_samples_are_not_clipped_as_spikes() -> None:
    latency = LatencyAverages(smoothing=1.0)
    latency.on_end("oa", 0.1)
    latency.on_failure("oa", 60.0)
    assert latency.total["oa"] == 60.0


def test_streams_rank_by_first_byte_and_whole_answers_by_total() -> None:
    latency = LatencyAverages(smoothing=0.3)
    latency.on_first_byte("oa", 0.1)
    latency.on_end("oa", 5.0)
    assert latency.ranking_key(streaming=True) is latency.first_byte
    assert latency.ranking_key(streaming=False) is latency.total


# weighted_first

def test_weighted_first_draws_by_weight() -> None:
    rng = random.Random(1234)
    firsts = Counter(weighted_first(["a", "b"], {"a": 3.0, "b": 1.0}, None, rng)[0] for _ in range(10_000))
    assert firsts["a"] / 10_000 == pytest.approx(0.75, abs=0.02)
    assert firsts["a"] + firsts["b"] == 10_000


def test_weighted_first_keeps_the_others_in_config_order() -> None:
    rng = random.Random(7)
    for _ in range(200):
        order = weighted_first(["a", "b", "c", "d"], {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, None, rng)
        assert sorted(order) == ["a", "b", "c", "d"]
        assert order[1:] == [b for b in ["a", "b", "c", "d"] if b != order[0]]


def test_weighted_first_never_picks_a_backend_against_a_huge_weight() -> None:
    rng = random.Random(99)
    firsts = {weighted_first(["a", "b"], {"a": 1e-9, "b": 1.0}, None, rng)[0] for _ in range(1000)}
    assert firsts == {"b"}


def test_same_sticky_value_always_gives_the_same_first_backend() -> None:
    weights = {"a": 1.0, "b": 1.0, "c": 1.0}
    for value in ("req-1", "req-2", "user-42", ""):
        firsts = {weighted_first(["a", "b", "c"], weights, value, random.Random(seed))[0] for seed in range(50)}
        assert len(firsts) == 1, value


def test_sticky_draw_does_not_use_the_rng() -> None:
    order = weighted_first(["a", "b"], {"a": 1.0, "b": 1.0}, "req-1", NoRandom())
    assert sorted(order) == ["a", "b"]


def test_sticky_values_still_spread_by_weight() -> None:
    firsts = Counter(weighted_first(["a", "b"], {"a": 3.0, "b": 1.0}, f"req-{i}", NoRandom())[0]
                     for i in range(4000))
    assert firsts["a"] / 4000 == pytest.approx(0.75, abs=0.04)


# fastest_first

def test_fastest_first_sorts_by_average() -> None:
    order = fastest_first(["a", "b", "c"], {"a": 2.0, "b": 0.5, "c": 1.0}, 0.0, NoRandom())
    assert order == ["b", "c", "a"]


def test_unmeasured_backends_go_first_in_config_order() -> None:
    order = fastest_first(["a", "b", "c", "d"], {"a": 0.1, "c": 0.2}, 0.0, NoRandom())
    assert order == ["b", "d", "a", "c"]


def test_zero_exploration_never_draws() -> None:
    for _ in range(100):
        assert fastest_first(["a", "b"], {"a": 1.0, "b": 0.1}, 0.0, NoRandom()) == ["b", "a"]


def test_full_exploration_shuffles_every_request() -> None:
    rng = random.Random(5)
    orders = {tuple(fastest_first(["a", "b", "c"], {"a": 0.1, "b": 0.2, "c": 0.3}, 1.0, rng)) for _ in range(200)}
    assert all(sorted(order) == ["a", "b", "c"] for order in orders)
    assert len(orders) == 6


def test_exploration_share_goes_in_random_order() -> None:
    rng = random.Random(11)
    averages = {"a": 0.1, "b": 0.2, "c": 0.3}
    not_sorted = sum(fastest_first(["a", "b", "c"], averages, 0.2, rng) != ["a", "b", "c"] for _ in range(5000))
    # a shuffle leaves the sorted order in place one time in six
    assert not_sorted / 5000 == pytest.approx(0.2 * 5 / 6, abs=0.02)


# cheapest_first

PRICES = {"a": (3e-6, 15e-6), "b": (1e-6, 2e-6), "c": (0.5e-6, 20e-6)}


def test_cheapest_first_sorts_by_the_price_of_this_request() -> None:
    assert cheapest_first(["a", "b", "c"], PRICES, 1000, 10, {}) == ["c", "b", "a"]
    # a long answer makes c's expensive output count
    assert cheapest_first(["a", "b", "c"], PRICES, 1000, 10_000, {}) == ["b", "a", "c"]


def test_unpriced_backends_go_after_priced_ones_in_config_order() -> None:
    order = cheapest_first(["x", "a", "y", "b"], PRICES, 1000, 100, {})
    assert order == ["b", "a", "x", "y"]


def test_backends_whose_window_the_prompt_exceeds_are_left_out() -> None:
    windows = {"a": None, "b": 8_000, "c": 200_000}
    assert cheapest_first(["a", "b", "c"], PRICES, 10_000, 100, windows) == ["c", "a"]


def test_a_prompt_exactly_the_window_fits() -> None:
    assert cheapest_first(["b"], PRICES, 8_000, 100, {"b": 8_000}) == ["b"]


def test_no_backend_fits_gives_an_empty_order() -> None:
    assert cheapest_first(["a", "b"], PRICES, 10_000, 100, {"a": 4_000, "b": 8_000}) == []


def test_window_check_applies_to_unpriced_backends_too() -> None:
    assert cheapest_first(["x", "b"], PRICES, 10_000, 100, {"x": 100}) == ["b"]


# cooled_last

def test_cooled_backends_go_last_in_their_relative_order(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.cool("a", 30.0)
    cooldowns.cool("c", 30.0)
    assert cooled_last(["a", "b", "c", "d"], cooldowns) == ["b", "d", "a", "c"]


def test_cooled_last_never_drops_a_backend_even_when_all_cool(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    for backend in ("a", "b", "c"):
        cooldowns.cool(backend, 30.0)
    assert cooled_last(["c", "a", "b"], cooldowns) == ["c", "a", "b"]


def test_cooled_last_leaves_an_order_without_cooldowns_alone(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    assert cooled_last(["b", "a"], cooldowns) == ["b", "a"]


def test_an_expired_cooldown_no_longer_moves_a_backend(clock: FakeClock) -> None:
    cooldowns = Cooldowns(default=5.0, maximum=300.0)
    cooldowns.cool("a", 5.0)
    clock.now = NOW + 6
    assert cooled_last(["a", "b"], cooldowns) == ["a", "b"]


# rank

def _rank(policy: str, **overrides: object) -> list[str]:
    latency = LatencyAverages(0.3)
    latency.on_first_byte("a", 0.9)
    latency.on_first_byte("b", 0.1)
    latency.on_end("a", 1.0)
    latency.on_end("b", 5.0)
    arguments: dict = dict(weights={"a": 1.0, "b": 1.0}, sticky=None, latency=latency, streaming=False,
                           exploration=0.0, prices={"a": (2e-6, 2e-6), "b": (1e-6, 1e-6)}, windows={},
                           prompt_tokens=100, output_tokens=100, rng=random.Random(3))
    arguments.update(overrides)
    return rank(policy, ["a", "b"], **arguments)


def test_rank_priority_keeps_config_order() -> None:
    assert _rank("priority", rng=NoRandom()) == ["a", "b"]


def test_rank_latency_uses_first_byte_for_streams_and_total_otherwise() -> None:
    assert _rank("latency", streaming=True) == ["b", "a"]
    assert _rank("latency", streaming=False) == ["a", "b"]


def test_rank_cost_puts_the_cheapest_first() -> None:
    assert _rank("cost") == ["b", "a"]
    assert _rank("cost", windows={"b": 50}) == ["a"]


def test_rank_weighted_follows_the_weights() -> None:
    assert _rank("weighted", weights={"a": 1e-9, "b": 1.0}) == ["b", "a"]


# rules

def _rule(when: dict, backends: list[str] | None = None, policy: str | None = None,
          route_policy: str = "priority") -> CompiledRule:
    data: dict = {"when": when, "backends": backends or ["b"]}
    if policy is not None:
        data["policy"] = policy
    return CompiledRule.of(RouteRule.model_validate(data), route_policy)


def _facts(key_id: str = "k1", team: str | None = None, headers: dict[str, str] | None = None,
           metadata: dict | None = None) -> RequestFacts:
    return RequestFacts(key_id, team, headers or {}, metadata or {})


def test_tags_come_from_the_comma_separated_header() -> None:
    facts = _facts(headers={"x-babelgate-tags": " eu, batch,,  cheap "})
    assert facts.tags == frozenset({"eu", "batch", "cheap"})
    assert _facts().tags == frozenset()


def test_compiled_rule_inherits_the_route_policy_unless_it_names_one() -> None:
    assert _rule({"team": "t"}, route_policy="latency").policy == "latency"
    assert _rule({"team": "t"}, policy="cost", route_policy="latency").policy == "cost"
    assert _rule({"team": "t"}, backends=["a", "b"]).backends == ("a", "b")


def test_rule_on_team() -> None:
    rule = _rule({"team": "research"})
    assert rule.matches(_facts(team="research"))
    assert not rule.matches(_facts(team="sales"))
    assert not rule.matches(_facts(team=None))


def test_rule_on_key_id() -> None:
    rule = _rule({"key": "k7"})
    assert rule.matches(_facts(key_id="k7"))
    assert not rule.matches(_facts(key_id="k8"))


def test_rule_on_tags_needs_any_one_of_them() -> None:
    rule = _rule({"tags": ["eu", "gdpr"]})
    assert rule.matches(_facts(headers={"x-babelgate-tags": "batch,gdpr"}))
    assert not rule.matches(_facts(headers={"x-babelgate-tags": "batch,us"}))
    assert not rule.matches(_facts())


def test_rule_on_headers_needs_exact_values_and_lowercases_names() -> None:
    rule = _rule({"headers": {"X-Region": "eu-west"}})
    assert rule.matches(_facts(headers={"x-region": "eu-west"}))
    assert not rule.matches(_facts(headers={"x-region": "EU-WEST"}))
    assert not rule.matches(_facts(headers={}))


def test_rule_on_metadata_needs_exact_values() -> None:
    rule = _rule({"metadata": {"tier": "gold"}})
    assert rule.matches(_facts(metadata={"tier": "gold", "other": 1}))
    assert not rule.matches(_facts(metadata={"tier": "silver"}))
    assert not rule.matches(_facts(metadata={}))


def test_every_given_condition_must_hold() -> None:
    rule = _rule({"team": "research", "tags": ["eu"], "headers": {"x-region": "eu"}, "metadata": {"tier": "gold"}})
    full = {"team": "research", "headers": {"x-babelgate-tags": "eu", "x-region": "eu"},
            "metadata": {"tier": "gold"}}
    assert rule.matches(_facts(**full))
    assert not rule.matches(_facts(**{**full, "team": "sales"}))
    assert not rule.matches(_facts(**{**full, "headers": {"x-region": "eu"}}))
    assert not rule.matches(_facts(**{**full, "headers": {"x-babelgate-tags": "eu"}}))
    assert not rule.matches(_facts(**{**full, "metadata": {}}))


def test_a_rule_without_conditions_matches_every_request() -> None:
    assert _rule({}).matches(_facts())


def test_first_matching_rule_wins() -> None:
    by_team = _rule({"team": "research"}, backends=["a"])
    by_tag = _rule({"tags": ["eu"]}, backends=["b"])
    rules = (by_team, by_tag)
    assert first_match(rules, _facts(team="research", headers={"x-babelgate-tags": "eu"})) is by_team
    assert first_match(rules, _facts(team="sales", headers={"x-babelgate-tags": "eu"})) is by_tag
    assert first_match(rules, _facts(team="sales")) is None
    assert first_match((), _facts()) is None
