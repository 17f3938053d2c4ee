"""Limits are upper bounds: a reservation covers the most any backend of the request's order may produce and cost,
read from the request each would be sent; a request that can never fit is refused without an invitation to retry;
model names are checked before anything is routed.

Before this change the reservation was the client's `max_tokens` (or `requests.default_max_tokens`) once, whatever
`n`, the thinking budget the Anthropic translators add, the limit actually sent (none: the model's maximum), or the
price of the backend a failover reaches; each test below names which of those it holds down.
"""

from __future__ import annotations

import pytest

from ext_proc.limits.estimate import Price, Usage, cost_micro_usd
from ext_proc.providers import for_schema
from ext_proc.providers.output_bounds import RESPONSES, output_bound
from ext_proc.stages.endpoints import Endpoint
from ext_proc.stages.reservation import demand, output_bounds
from ext_proc.stages.route import MODEL_NAME, RouteStage
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import CLIENT_KEY, body, drive, headers, immediate, runtime

CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}"}
HELLO = [{"role": "user", "content": "hi"}]
DEFAULT = 4096
MODELS = {"openai": "gpt-4o", "azure-openai": "gpt-4o", "anthropic": "claude-sonnet-4-5-20250929",
          "vertex-anthropic": "claude-sonnet-4-5@20250929",
          "bedrock-anthropic": "anthropic.claude-sonnet-4-5-20250929-v1:0",
          "bedrock-converse": "amazon.nova-pro-v1:0", "gemini": "gemini-2.5-flash", "vertex-gemini": "gemini-2.5-pro",
          "cohere": "command-a-03-2025"}


@pytest.mark.parametrize("schema", sorted(MODELS))
def test_every_translation_carries_an_output_limit(schema: str) -> None:
    """Without the client's limit a provider produces up to the model's maximum: the reserved default goes instead,
    in the provider's own field, and the bound read back is exactly it."""
    translated = for_schema(schema).chat_request({"model": "m", "messages": HELLO}, MODELS[schema],
                                                  default_max_tokens=DEFAULT)
    assert output_bound(schema, translated) == DEFAULT
    asked = for_schema(schema).chat_request({"model": "m", "messages": HELLO, "max_tokens": 300}, MODELS[schema],
                                            default_max_tokens=DEFAULT)
    assert output_bound(schema, asked) == 300


@pytest.mark.parametrize(("schema", "n"), [("openai", 5), ("azure-openai", 3), ("gemini", 4)])
def test_choices_multiply_the_bound(schema: str, n: int) -> None:
    """`n=100` once took a key limited to 2,000 tokens a minute to 150,100."""
    translated = for_schema(schema).chat_request({"model": "m", "messages": HELLO, "max_tokens": 100, "n": n},
                                                  MODELS[schema], default_max_tokens=DEFAULT)
    assert output_bound(schema, translated) == 100 * n


@pytest.mark.parametrize("schema", ["anthropic", "vertex-anthropic", "bedrock-anthropic"])
def test_claude_thinking_budget_is_inside_the_bound(schema: str) -> None:
    """The translator adds the thinking budget to the client's `max_tokens`; the bound is what Claude may write."""
    translated = for_schema(schema).chat_request(
        {"model": "m", "messages": HELLO, "max_tokens": 1000, "reasoning_effort": "high"},
        "claude-sonnet-4-5-20250929" if schema == "anthropic" else MODELS[schema], default_max_tokens=DEFAULT)
    budget = translated["thinking"]["budget_tokens"]
    assert output_bound(schema, translated) == translated["max_tokens"] >= 1000 + budget > 1000


def test_a_model_that_picks_its_own_length_reserves_the_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nova 2 at high effort takes no maxTokens: `requests.unbounded_output_tokens` is reserved for it."""
    nova = for_schema("bedrock-converse").chat_request(
        {"model": "m", "messages": HELLO, "reasoning_effort": "high"}, "amazon.nova-2-lite-v1:0",
        default_max_tokens=DEFAULT)
    assert output_bound("bedrock-converse", nova) is None
    rt = runtime(monkeypatch)
    bounds = output_bounds(rt, Endpoint.CHAT, ["oa"], {"oa": {"model": "x"}}, (), {})
    assert bounds == {"oa": rt.config.requests.unbounded_output_tokens}


def test_passthrough_bodies_are_bounded_by_their_own_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime(monkeypatch)
    messages = output_bounds(rt, Endpoint.MESSAGES, ["an"], None, ("an",), {"max_tokens": 700})
    assert messages == {"an": 700}
    responses = output_bounds(rt, Endpoint.RESPONSES, ["oa"], None, ("oa",), {"input": "hi"})
    assert responses == {"oa": rt.default_max_tokens}  # the native passthrough sends the default
    assert output_bound(RESPONSES, {"max_output_tokens": 90}) == 90


def test_the_dearest_backend_of_the_order_sets_the_cost() -> None:
    """A failover from a cheap backend to a dear one was reserved at the cheap price and charged at the dear one."""
    cheap, dear = Price(0.1, 0.4, 0.1), Price(3.0, 15.0, 0.3)
    wanted = demand(1000, {"cheap": 500, "dear": 400}, {"cheap": cheap, "dear": dear})
    assert wanted.output_tokens == 500
    assert wanted.usd_micro == cost_micro_usd(Usage(1000, 400), dear) > cost_micro_usd(Usage(1000, 500), cheap)


def test_a_chat_reservation_covers_n_choices_and_the_default_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    limited = runtime(monkeypatch, "limits: {per_key: [{window: hour, total_tokens: 1000000}]}\n")
    stage = RouteStage(limited)
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    drive(stage, ProcessingRequest(request_body=body({"model": "claude", "messages": HELLO})))
    assert stage._reservation is not None
    reserved = {metric: amount for _, metric, amount, _ in stage._reservation.entries}
    assert reserved["total_tokens"] >= DEFAULT  # no client limit: the default, which is also what is sent

    chain = RouteStage(limited)
    drive(chain, ProcessingRequest(request_headers=headers(CHAT)))
    drive(chain, ProcessingRequest(request_body=body({"model": "gpt-4o", "messages": HELLO, "n": 4,
                                                      "max_tokens": 100})))
    # gpt-4o fails over to Claude, which refuses n > 1: only OpenAI's 4 x 100 can be produced
    assert chain._reservation is not None
    output = [amount for _, metric, amount, _ in chain._reservation.entries if metric == "total_tokens"]
    assert output and output[0] >= 400


def test_a_request_that_can_never_fit_is_not_invited_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    limited = runtime(monkeypatch, "limits: {per_key: [{window: minute, total_tokens: 100}]}\n")
    stage = RouteStage(limited)
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    reply = drive(stage, ProcessingRequest(request_body=body({"model": "claude", "messages": HELLO,
                                                              "max_tokens": 1000})))
    status, error, extra = immediate(reply)
    assert status == 429 and "alone needs more than the whole limit" in error["error"]["message"]
    assert extra.get("x-should-retry") == "false" and "retry-after" not in extra


def test_a_request_that_fits_later_is_told_when(monkeypatch: pytest.MonkeyPatch) -> None:
    limited = runtime(monkeypatch, "limits: {per_key: [{window: minute, total_tokens: 5000}]}\n")
    first = RouteStage(limited)
    drive(first, ProcessingRequest(request_headers=headers(CHAT)))
    drive(first, ProcessingRequest(request_body=body({"model": "claude", "messages": HELLO, "max_tokens": 3000})))
    second = RouteStage(limited)
    drive(second, ProcessingRequest(request_headers=headers(CHAT)))
    status, _, extra = immediate(drive(second, ProcessingRequest(request_body=body(
        {"model": "claude", "messages": HELLO, "max_tokens": 3000}))))
    assert status == 429 and int(extra["retry-after"]) >= 1 and "x-should-retry" not in extra


@pytest.mark.parametrize("name", ["claude\u00e9", "gpt\r\nx-evil: 1", "gpt\x00", "two words", "x" * 300, "-lead",
                                  "caf\u00e9/\u4e2d\u6587", "", "\t"])
def test_model_names_outside_the_documented_set_are_a_400(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    stage = RouteStage(runtime(monkeypatch, "limits: {per_key: [{window: hour, total_tokens: 100000}]}\n"))
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    status, error, _ = immediate(drive(stage, ProcessingRequest(request_body=body({"model": name,
                                                                                   "messages": HELLO}))))
    assert status == 400 and error["error"]["param"] == "model"
    assert stage._reservation is None  # nothing reserved, nothing routed


@pytest.mark.parametrize("name", ["gpt-4o-mini", "anthropic.claude-sonnet-4-5-20250929-v1:0",
                                  "claude-sonnet-4-5@20250929", "accounts/fireworks/models/llama-v3p1-8b-instruct",
                                  "meta-llama/Llama-3.3-70B-Instruct-Turbo", "llama3:8b", "openai/gpt-4o:online",
                                  "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.x-v1:0"])
def test_every_providers_model_ids_fit(name: str) -> None:
    assert MODEL_NAME.fullmatch(name)
