"""The most a provider may produce for a request as it will be sent: the output side of a reservation.

Read from the provider's own body (after translation, presets and `drop_fields`), never from what the client asked,
because that is what the provider obeys: Claude's thinking budget, which the Anthropic translators add to the
client's `max_tokens`, and `n` / `candidateCount` choices are in it. Every translator sends an output limit (the
client's, or `requests.default_max_tokens` when it set none), so a body without one is the exception: a model that
decides its own length (Amazon Nova 2 at high reasoning effort), for which the caller reserves its configured
ceiling. Thinking and reasoning tokens count inside these limits on every service that has them (Anthropic's
`max_tokens`, Converse's `maxTokens`, Gemini's `maxOutputTokens`, OpenAI's `max_completion_tokens` and
`max_output_tokens`, Cohere's `max_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..json_types import JsonObject

RESPONSES = "responses"
"""Not a schema: a Responses API body for a backend that serves that API itself."""


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _choices(value: object) -> int:
    return _positive(value) or 1


def _openai(body: JsonObject) -> int | None:
    """With both fields the larger: OpenAI obeys `max_completion_tokens`, an OpenAI-compatible server may read
    `max_tokens` only."""
    limits = [limit for limit in (_positive(body.get("max_completion_tokens")), _positive(body.get("max_tokens")))
              if limit is not None]
    return max(limits) * _choices(body.get("n")) if limits else None


def _max_tokens(body: JsonObject) -> int | None:
    return _positive(body.get("max_tokens"))


def _converse(body: JsonObject) -> int | None:
    config = body.get("inferenceConfig")
    return _positive(config.get("maxTokens")) if isinstance(config, dict) else None


def _gemini(body: JsonObject) -> int | None:
    config = body.get("generationConfig")
    if not isinstance(config, dict):
        return None
    limit = _positive(config.get("maxOutputTokens"))
    return limit * _choices(config.get("candidateCount")) if limit is not None else None


def _responses(body: JsonObject) -> int | None:
    return _positive(body.get("max_output_tokens"))


_READERS: dict[str, Callable[[JsonObject], int | None]] = {
    "openai": _openai, "azure-openai": _openai, "anthropic": _max_tokens, "vertex-anthropic": _max_tokens,
    "bedrock-anthropic": _max_tokens, "cohere": _max_tokens, "bedrock-converse": _converse, "gemini": _gemini,
    "vertex-gemini": _gemini, RESPONSES: _responses,
}


def output_bound(schema: str, body: JsonObject) -> int | None:
    """The most output tokens `body`, sent to a backend of `schema` (or `RESPONSES`), may produce; None when it
    carries no limit."""
    return _READERS[schema](body)
