"""What a request will cost before it runs (for the reservation) and what it did cost after (for settlement).

No tokenizer ships inside an installed package here (tiktoken downloads its encodings at run time), so the prompt
estimate is a documented rule: every character of text the model reads (message text, tool definitions, tool call
arguments) counts `1 / chars_per_token` tokens, plus 4 tokens of framing per message and 85 per image (OpenAI's
low-detail image cost). The output reservation is the request's `max_completion_tokens`/`max_tokens`, else the
configured default, so output can never exceed what was reserved.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import orjson

MESSAGE_OVERHEAD_TOKENS = 4
IMAGE_TOKENS = 85
MICRO = 1_000_000


class Usage(NamedTuple):
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Price(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float


FREE = Price(0.0, 0.0, 0.0)


def estimate_prompt_tokens(body: dict, chars_per_token: float) -> int:
    chars = 0
    images = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        if part.get("type") == "image_url":
                            images += 1
                        elif isinstance(part.get("text"), str):
                            chars += len(part["text"])
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    chars += len(str(call["function"].get("arguments") or "")) + len(str(call["function"].get("name")))
        count = len(messages)
    else:
        count = 0
        chars += len(str(body.get("input") or ""))  # embeddings
    tools = body.get("tools")
    if tools:
        chars += len(orjson.dumps(tools))
    return math.ceil(chars / chars_per_token) + MESSAGE_OVERHEAD_TOKENS * count + IMAGE_TOKENS * images


def reserved_output_tokens(body: dict, default: int) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def cost_micro_usd(usage: Usage, price: Price) -> int:
    """Spend in millionths of a dollar, rounded up so a budget is never under-charged."""
    uncached = max(0, usage.input_tokens - usage.cached_input_tokens)
    # prices are per million tokens, so tokens x price is already micro-dollars
    micro = uncached * price.input + usage.cached_input_tokens * price.cached_input + usage.output_tokens * price.output
    return math.ceil(micro - 1e-9)


def usage_from_openai(usage: dict | None) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                 int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0)
