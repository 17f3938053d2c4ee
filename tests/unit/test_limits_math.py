"""The pure parts of limiting: windows, the prompt estimate, costs, and the usage report."""

from __future__ import annotations

import calendar

from ext_proc.config.loading import parse_config
from ext_proc.limits.estimate import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    Price,
    Usage,
    cost_micro_usd,
    estimate_prompt_tokens,
    reserved_output_tokens,
    usage_from_openai,
)
from ext_proc.limits.limiter import compile_tables
from ext_proc.limits.report import format_rows, usage_rows
from ext_proc.limits.windows import duration_text, window_bounds

NOW = calendar.timegm((2026, 12, 31, 23, 59, 30))


def test_windows_are_utc_aligned_and_months_are_calendar_months() -> None:
    assert window_bounds("minute", NOW) == (NOW - 30, NOW + 30)
    assert window_bounds("hour", NOW) == (NOW - 3570, NOW + 30)
    assert window_bounds("day", NOW)[1] == calendar.timegm((2027, 1, 1, 0, 0, 0))
    start, end = window_bounds("month", NOW)
    assert start == calendar.timegm((2026, 12, 1, 0, 0, 0)) and end == calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert window_bounds("month", calendar.timegm((2027, 2, 10, 0, 0, 0)))[1] == calendar.timegm((2027, 3, 1, 0, 0, 0))


def test_reset_durations_read_like_openais() -> None:
    assert [duration_text(s) for s in (1, 59, 60, 61, 3600, 3723)] == ["1s", "59s", "1m0s", "1m1s", "1h0m0s",
                                                                       "1h2m3s"]


def test_prompt_estimate_counts_text_tools_images_and_framing() -> None:
    body = {"messages": [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 20},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    ]}
    assert estimate_prompt_tokens(body, 4.0) == 60 // 4 + 1 + 3 * MESSAGE_OVERHEAD_TOKENS + IMAGE_TOKENS
    assert estimate_prompt_tokens({**body, "tools": [{"type": "function", "function": {"name": "g"}}]}, 4.0) > \
        estimate_prompt_tokens(body, 4.0)
    assert estimate_prompt_tokens({"input": "z" * 8}, 2.0) == 4  # embeddings


def test_output_reservation_prefers_max_completion_tokens() -> None:
    assert reserved_output_tokens({"max_completion_tokens": 7, "max_tokens": 9}, 100) == 7
    assert reserved_output_tokens({"max_tokens": 9}, 100) == 9
    assert reserved_output_tokens({"max_tokens": True}, 100) == 100
    assert reserved_output_tokens({}, 100) == 100


def test_cost_uses_the_cached_price_for_cached_tokens_and_rounds_up() -> None:
    price = Price(input=2.5, output=10.0, cached_input=1.25)
    assert cost_micro_usd(Usage(1000, 100, 400), price) == 600 * 2.5 + 400 * 1.25 + 100 * 10
    assert cost_micro_usd(Usage(1, 0), Price(0.1, 0, 0)) == 1


def test_usage_from_an_openai_usage_object() -> None:
    usage = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                               "prompt_tokens_details": {"cached_tokens": 4}})
    assert usage == Usage(10, 5, 4) and usage.total_tokens == 15
    assert usage_from_openai(None) is None


def test_usage_report_shows_current_windows_with_their_limits() -> None:
    config = parse_config("""
backends: [{id: oa, schema: openai, base_url: "http://127.0.0.1:9/v1", limits: [{window: day, requests: 9}]}]
routes: [{model: m, backends: [{backend: oa, model: x}]}]
limits: {per_key: [{window: minute, total_tokens: 1000}]}
teams: [{id: t, limits: [{window: day, usd: 2.5}]}]
""")
    start = window_bounds("minute", NOW)[0]
    day = window_bounds("day", NOW)[0]
    values = {f"bg:{{key:alice}}:total_tokens:minute:{start}": 250,
              f"bg:{{key:alice}}:total_tokens:minute:{start - 60}": 999,  # an old window: not shown
              f"bg:{{team:t}}:usd:day:{day}": 1_250_000,
              f"bg:{{backend:oa}}:requests:day:{day}": 3,
              "other:key": 5}
    rows = usage_rows(values, compile_tables(config), "bg:", now=NOW)
    assert [(r.scope, r.scope_id, r.metric, r.used, r.limit) for r in rows] == [
        ("backend", "oa", "requests", 3, 9), ("key", "alice", "total_tokens", 250, 1000),
        ("team", "t", "usd", 1_250_000, 2_500_000)]
    text = format_rows(rows)
    assert "$1.2500" in text and "$2.5000" in text and "750" in text
