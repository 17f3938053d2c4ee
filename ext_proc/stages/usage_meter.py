"""What one attempt used, in tokens: the provider's own usage when it reports it, otherwise the prompt estimate and
the streamed text counted by characters; and the settlement of the route stage's reservation with it.

An attempt has a meter only when something reads it (a reservation to settle, telemetry, the access log): counting
costs a little on every streamed chunk, so a request nobody accounts for skips it.
"""

from __future__ import annotations

import math

from ..json_types import JsonObject
from ..limits.estimate import Usage, usage_from_openai
from ..limits.limiter import Limiter, Reservation
from ..providers.stream import ChatStream


class UsageMeter:
    __slots__ = ("_chars_per_token", "_settled", "completion", "prompt_estimate", "raw_usage", "stream",
                 "streamed_chars", "usage")

    def __init__(self, prompt_estimate: int, chars_per_token: float, keep_text: bool) -> None:
        self.prompt_estimate = prompt_estimate
        self._chars_per_token = chars_per_token
        self.completion: list[str] | None = [] if keep_text else None
        """The answer's text, kept only for routes whose content is logged."""
        self.streamed_chars = 0
        self.usage: Usage | None = None
        self.raw_usage: object = None
        """The provider's usage object as the answer carried it (OpenAI form), for the details telemetry reports."""
        self.stream: ChatStream | None = None
        """A streamed answer's translation, whose usage is known once the provider reported it."""
        self._settled = False

    def take_usage(self, answer: JsonObject) -> None:
        """A whole answer's usage only (an answer whose text must not be kept: a guardrail refused it)."""
        usage = answer.get("usage")
        self.raw_usage = usage
        self.usage = usage_from_openai(usage)

    def keep_reservation(self) -> None:
        """The answer can't be read: nothing settles, so the reservation, the most it could use, is the charge."""
        self._settled = True

    def hand_over(self) -> None:
        """Another stage settles this answer (the stream meter, from a copy of the stream): nothing settles here."""
        self._settled = True

    def take_answer(self, answer: JsonObject) -> None:
        """A whole answer: its usage and, when kept, its text."""
        self.take_usage(answer)
        if self.completion is not None:
            for choice in answer.get("choices") or ():
                content = (choice.get("message") or {}).get("content")
                if isinstance(content, str):
                    self.completion.append(content)

    def count(self, chunk: JsonObject) -> None:
        """One streamed chunk: the characters of its text, reasoning and tool arguments."""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if self.completion is not None and delta.get("content"):
                self.completion.append(delta["content"])
            self.streamed_chars += len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or ():
                self.streamed_chars += len((call.get("function") or {}).get("arguments") or "")

    def final(self) -> Usage:
        """Real usage when the provider reported it; otherwise the prompt estimate and the streamed text."""
        if self.stream is not None:
            self.raw_usage = self.stream.usage or self.raw_usage
            self.usage = usage_from_openai(self.stream.usage) or self.usage
        counted = math.ceil(self.streamed_chars / self._chars_per_token)
        usage = self.usage
        if usage is None:
            return Usage(self.prompt_estimate, counted)
        if usage.output_tokens == 0 and counted:
            return usage._replace(output_tokens=counted)
        if usage.input_tokens == 0:
            return usage._replace(input_tokens=self.prompt_estimate)
        return usage

    async def settle(self, limiter: Limiter, sealed: str, backend: str, model: str,
                     reserved_here: Reservation | None = None) -> None:
        """Replace the reservation (as the route stage sealed it, or `reserved_here` as it made it in this process)
        with what was used; once per attempt."""
        if self._settled:
            return
        self._settled = True
        reservation = reserved_here if reserved_here is not None else limiter.unseal(sealed)
        if reservation is not None:
            await limiter.settle(reservation, self.final(), backend, model)
