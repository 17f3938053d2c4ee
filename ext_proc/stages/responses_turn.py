"""One Responses API request, as its attempt sees it: the client's body (its conversation already rebuilt by the
route stage, `stored_responses.py`), the chat form a translated backend gets, the Response the client gets back
(whole or streamed), and the record kept of it when the client asked to store it.

A translated backend's answer becomes a Response with the gateway's own id (`resp_...`); a native backend's
Response (`providers/responses_passthrough.py`) is the client's as it came, id included, and is read back into the
chat form only for the usage meter and the guardrails (`providers/openai_responses.py`). Either way the full
Response (reasoning envelopes included, whatever the client was shown) is what `keep` stores.
"""

from __future__ import annotations

import time

from ..client_formats import responses_request
from ..client_formats.responses_answer import client_view, from_openai
from ..client_formats.responses_common import new_id
from ..client_formats.responses_stream import ResponsesStream
from ..json_types import JsonObject
from ..providers.openai_responses import ResponsesEventReader
from ..state.responses import ResponseStore


class ResponsesTurn:
    __slots__ = ("_model", "_owner", "_reader", "_stream", "created_at", "final", "request", "response_id", "store")

    def __init__(self, request: JsonObject, model: str, owner: str) -> None:
        """`model`: the name the client asked for; `owner`: the key id the record belongs to."""
        self.request = request
        self._model = model
        self._owner = owner
        self.response_id = new_id("resp")
        self.created_at = int(time.time())
        self.store = request.get("store") is not False
        self.final: JsonObject | None = None
        """A whole (not streamed) answer's Response: what `keep` stores."""
        self._stream: ResponsesStream | None = None
        self._reader: ResponsesEventReader | None = None

    def chat_form(self) -> tuple[JsonObject, list[str]]:
        """The request in the canonical chat form, and what the conversion left out (named to the client)."""
        body = {name: value for name, value in self.request.items() if name != "previous_response_id"}
        return responses_request.to_openai(body), responses_request.dropped_fields(body)

    def answer(self, completion: JsonObject) -> JsonObject:
        """A translated backend's whole answer -> the client's Response."""
        self.final = from_openai(completion, self.request, response_id=self.response_id,
                                 created_at=self.created_at, model=self._model)
        return client_view(self.final, self.request)

    def restored(self) -> JsonObject:
        """What a native backend's Response must be given back: the `previous_response_id` the client named (the
        provider got the conversation instead)."""
        previous = self.request.get("previous_response_id")
        return {"previous_response_id": previous} if previous is not None else {}

    def stream(self) -> ResponsesStream:
        """A translated backend's stream -> the client's Responses events."""
        self._stream = ResponsesStream(self.request, response_id=self.response_id, created_at=self.created_at,
                                       model=self._model)
        return self._stream

    def reader(self, model: str, created: int) -> ResponsesEventReader:
        """A native backend's Responses events, read into the chat form for the meter and the guardrails."""
        self._reader = ResponsesEventReader(model, created, True)
        return self._reader

    def completed(self) -> JsonObject | None:
        """The whole Response, once the answer (whole or streamed) is complete."""
        if self.final is None:
            if self._stream is not None and self._stream.finished:
                self.final = self._stream.response
            elif self._reader is not None and self._reader.final_response is not None:
                self.final = {**self._reader.final_response, **self.restored()}
        return self.final

    async def keep(self, store: ResponseStore | None) -> None:
        """Store the Response when the client asked (`store`, true by default) and the answer completed."""
        final = self.completed()
        if store is None or not self.store or final is None or not isinstance(final.get("id"), str):
            return
        items = self.request.get("input")
        conversation = [{"role": "user", "content": items}] if isinstance(items, str) else items
        await store.keep(final["id"], {"owner": self._owner, "response": final, "input": conversation or []})
