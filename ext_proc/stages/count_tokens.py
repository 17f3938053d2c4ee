"""The OpenAI form of an Anthropic Messages body where the gateway needs one for itself, and the gateway's own token
count.

The route stage routes and estimates in the OpenAI form, but a body that passes through to an Anthropic-family
backend may hold fields the client format does not know (the provider decides about those): such a body is not
refused, it is estimated from a rough form instead (`rough_form`: all of its JSON counted as prompt text, an
over-estimate, never an under-estimate of the text). `count_tokens` on a backend whose service does not count is
answered with `limits/estimate.py`'s estimate, without calling the provider.
"""

from __future__ import annotations

import orjson

from ..client_formats import anthropic_messages
from ..errors import BadRequest
from ..json_types import JsonObject
from ..limits.estimate import estimate_prompt_tokens
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages

_COUNTED = ("system", "messages", "tools")


def openai_form(body: JsonObject, count: bool = False) -> JsonObject | None:
    """The body in the canonical OpenAI form; None when the client format refuses it. `count`: a count_tokens body,
    which has no `max_tokens`."""
    try:
        return anthropic_messages.to_openai({**body, "max_tokens": 1} if count else body)
    except BadRequest:
        return None


def rough_form(body: JsonObject) -> JsonObject:
    """Enough of the OpenAI form to route and estimate a body the client format can't convert."""
    text = orjson.dumps({key: body[key] for key in _COUNTED if key in body}).decode()
    form: JsonObject = {"model": body.get("model"), "messages": [{"role": "user", "content": text}]}
    if isinstance(body.get("max_tokens"), int):
        form["max_completion_tokens"] = body["max_tokens"]
    if body.get("stream") is True:
        form["stream"] = True
    return form


def estimated_count(openai_body: JsonObject, chars_per_token: float) -> ProcessingResponse:
    """Anthropic's count answer, from the gateway's own estimate."""
    count = estimate_prompt_tokens(openai_body, chars_per_token)
    return messages.immediate(200, orjson.dumps({"input_tokens": count}))
