"""The route stage's side of the Responses API's state (`state/responses.py` keeps it): a request's conversation
rebuilt from its `previous_response_id`, and the answers to `GET` / `DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items`, all without a provider.

Decisions worth knowing:
- `previous_response_id` is resolved here for every backend, native OpenAI ones included: the forwarded body's
  `input` becomes the stored conversation (the earlier input, then the earlier response's output items, then the
  request's own input), so a chain of responses survives a failover to another provider. `instructions` do not
  carry over (as on OpenAI: each request states its own).
- `item_reference` items are resolved from that same conversation (by item id); one that names nothing there is a
  400, since the gateway has nowhere else to look.
- A key reads, lists and deletes only the responses it made; another key's id is "not found" (404), exactly as an
  id that never existed.
- Features the gateway does not offer are clear 400s for every backend: `background: true` (and so `cancel`), and
  `conversation` (OpenAI's Conversations API).
- Input items are listed with ids: a client's item that has none gets one derived from the response id and its
  position, so cursors (`after`) stay stable between calls; the stored input itself is kept as the client sent it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import parse_qs

import orjson

from ..client_formats.responses_answer import client_view
from ..errors import BadRequest, NotFound, Unavailable
from ..json_types import JsonObject
from ..limits.store import StoreUnavailable
from ..state.responses import ResponseStore
from ..wire.external_processor_pb2 import ProcessingResponse
from . import messages
from .endpoints import Endpoint

T = TypeVar("T")
MAX_LISTED = 100
_DEFAULT_LISTED = 20
ENCRYPTED_INCLUDE = "reasoning.encrypted_content"


def refuse_unoffered(body: JsonObject) -> None:
    """What no backend behind this gateway can do, refused before anything is routed."""
    if body.get("background") not in (None, False):
        raise BadRequest("Background responses (`background: true`) are not offered by this gateway; send the "
                         "request without it (streamed, if it runs long).", param="background",
                         code="unsupported_parameter")
    if body.get("conversation") is not None:
        raise BadRequest("The Conversations API (`conversation`) is not offered by this gateway; chain responses "
                         "with `previous_response_id`, or send the whole conversation as `input`.",
                         param="conversation", code="unsupported_parameter")


async def with_conversation(store: ResponseStore | None, owner: str, body: JsonObject) -> JsonObject:
    """`body` with its `input` preceded by the conversation its `previous_response_id` names, and its
    `item_reference` items replaced by the items they name; `body` itself when it has neither."""
    previous = body.get("previous_response_id")
    items = body.get("input")
    referring = isinstance(items, list) and any(_is_reference(item) for item in items)
    if previous is None and not referring:
        return body
    history: list[object] = []
    if previous is not None:
        if not isinstance(previous, str):
            raise BadRequest("`previous_response_id` must be a string.", param="previous_response_id")
        record = await _record(store, previous, owner)
        if record is None:
            raise BadRequest(f"Previous response with id {previous!r} not found.", param="previous_response_id",
                             code="previous_response_not_found")
        history = [*_list(record.get("input")), *_list((record.get("response") or {}).get("output"))]
    own: list[object] = [{"role": "user", "content": items}] if isinstance(items, str) else _list(items)
    if referring:
        own = _resolved(own, history)
    return {**body, "input": [*history, *own]}


def _resolved(items: list[object], history: list[object]) -> list[object]:
    known = {item["id"]: item for item in history if isinstance(item, dict) and isinstance(item.get("id"), str)}
    resolved: list[object] = []
    for index, item in enumerate(items):
        if not _is_reference(item):
            resolved.append(item)
            continue
        assert isinstance(item, dict)
        reference = item.get("id")
        found = known.get(reference) if isinstance(reference, str) else None
        if found is None:
            raise BadRequest(f"Item with id {item.get('id')!r} not found: an `item_reference` must name an item of "
                             "the conversation `previous_response_id` names.", param=f"input[{index}].id",
                             code="item_not_found")
        resolved.append(found)
    return resolved


def _is_reference(item: object) -> bool:
    return isinstance(item, dict) and item.get("type") == "item_reference"


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


async def answer(store: ResponseStore | None, owner: str, endpoint: Endpoint, method: str, response_id: str,
                 query: str) -> ProcessingResponse:
    """`GET`/`DELETE /v1/responses/{id}`, `GET .../input_items` and `POST .../cancel`, answered here."""
    if endpoint is Endpoint.RESPONSE_CANCEL:
        raise BadRequest("Only background responses can be cancelled, and this gateway runs none.",
                         code="unsupported_parameter")
    params = parse_qs(query, keep_blank_values=True)
    if method == "DELETE":
        if store is None or not await _call(store.delete(response_id, owner)):
            raise _not_found(response_id)
        return messages.immediate(200, orjson.dumps({"id": response_id, "object": "response", "deleted": True}))
    record = await _record(store, response_id, owner)
    if record is None:
        raise _not_found(response_id)
    if endpoint is Endpoint.RESPONSE_INPUT_ITEMS:
        return messages.immediate(200, orjson.dumps(_input_items(response_id, _list(record.get("input")), params)))
    if params.get("stream", ["false"])[-1] not in ("false", "0", ""):
        raise BadRequest("Streaming a stored response again is not offered by this gateway; omit `stream`.",
                         param="stream", code="unsupported_parameter")
    response = record.get("response")
    if not isinstance(response, dict):
        raise _not_found(response_id)
    shown = client_view(response, {"include": [*params.get("include[]", []), *params.get("include", [])]})
    return messages.immediate(200, orjson.dumps(shown))


def _input_items(response_id: str, items: list[object], params: dict[str, list[str]]) -> JsonObject:
    listed = [_listed(response_id, index, item) for index, item in enumerate(items)]
    order = params.get("order", ["desc"])[-1]
    if order not in ("asc", "desc"):
        raise BadRequest("`order` must be asc or desc.", param="order")
    if order == "desc":
        listed.reverse()
    limit_text = params.get("limit", [str(_DEFAULT_LISTED)])[-1]
    # ASCII and short before `int`: `isdigit` takes "²" and 5000-digit text, which `int` refuses (a 500)
    if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 3
            and 1 <= int(limit_text) <= MAX_LISTED):
        raise BadRequest(f"`limit` must be an integer from 1 to {MAX_LISTED}.", param="limit")
    after = params.get("after", [""])[-1]
    if after:
        position = next((i for i, item in enumerate(listed) if item.get("id") == after), None)
        if position is None:
            raise BadRequest(f"No input item with id {after!r} in this response.", param="after")
        listed = listed[position + 1:]
    page = listed[:int(limit_text)]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(listed) > len(page)}


def _listed(response_id: str, index: int, item: object) -> JsonObject:
    """An input item as OpenAI lists it: with an id, a `type`, and a message's text as content parts."""
    entry: JsonObject = dict(item) if isinstance(item, dict) else {"role": "user", "content": str(item)}
    entry.setdefault("type", "message")
    if entry["type"] == "message":
        content = entry.get("content")
        if isinstance(content, str):
            kind = "output_text" if entry.get("role") == "assistant" else "input_text"
            entry["content"] = [{"type": kind, "text": content}]
        entry.setdefault("status", "completed")
    if not isinstance(entry.get("id"), str):
        digest = hashlib.sha256(f"{response_id}:{index}".encode()).hexdigest()[:32]
        entry["id"] = f"{_ID_PREFIX.get(str(entry['type']), 'item')}_{digest}"
    return entry


_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
              "custom_tool_call": "ctc", "custom_tool_call_output": "ctco"}


async def _record(store: ResponseStore | None, response_id: str, owner: str) -> JsonObject | None:
    if store is None:
        return None
    return await _call(store.get(response_id, owner))


async def _call(call: Awaitable[T]) -> T:
    try:
        return await call
    except StoreUnavailable:
        raise Unavailable("The gateway's response store is unavailable; try again shortly.",
                          code="response_store_unavailable") from None


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id {response_id!r} not found.", code="response_not_found")
