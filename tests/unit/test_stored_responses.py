"""The route stage's side of the Responses store (`stages/stored_responses.py`): a conversation rebuilt from
`previous_response_id`, `item_reference` items, and the answers to GET / DELETE / input_items / cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TypeVar

import orjson
import pytest

from ext_proc.errors import BadRequest, GatewayError, NotFound, Unavailable
from ext_proc.json_types import JsonObject
from ext_proc.limits.store import StoreUnavailable
from ext_proc.stages import stored_responses
from ext_proc.stages.endpoints import Endpoint
from ext_proc.stages.responses_turn import ResponsesTurn
from ext_proc.state.responses import MemoryResponseStore, ResponseStore

from .stage_support import immediate

REASONING = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "bgw1.e30"}
ANSWER = {"type": "message", "id": "msg_out", "role": "assistant", "status": "completed",
          "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}
STORED_INPUT = [{"role": "user", "content": "hi", "id": "msg_in"}]
T = TypeVar("T")
RESPONSE = {"id": "resp_1", "object": "response", "status": "completed", "output": [REASONING, ANSWER]}


def run(call: Coroutine[object, object, T]) -> T:
    return asyncio.run(call)


def store_with(*records: tuple[str, str, JsonObject]) -> MemoryResponseStore:
    """A memory store holding (id, owner, record-without-owner) for each record."""
    store = MemoryResponseStore(3600.0, 100)
    for response_id, owner, kept in records:
        run(store.put(response_id, {"owner": owner, **kept}))
    return store


def first_turn() -> MemoryResponseStore:
    return store_with(("resp_1", "alice", {"response": RESPONSE, "input": STORED_INPUT}))


def fails(call: Coroutine[object, object, object]) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        run(call)
    return raised.value


# --- with_conversation ----------------------------------------------------------------------------------------------


def test_a_request_without_previous_id_or_references_is_the_same_object() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": "hi"}]}
    assert run(stored_responses.with_conversation(first_turn(), "alice", body)) is body
    assert run(stored_responses.with_conversation(None, "alice", body)) is body


def test_the_conversation_is_stored_input_then_stored_output_then_the_new_input() -> None:
    body = {"model": "m", "previous_response_id": "resp_1", "input": "and now?", "instructions": "Be brief."}
    expanded = run(stored_responses.with_conversation(first_turn(), "alice", body))
    assert expanded["input"] == [*STORED_INPUT, REASONING, ANSWER, {"role": "user", "content": "and now?"}]
    assert {k: v for k, v in expanded.items() if k != "input"} == {k: v for k, v in body.items() if k != "input"}
    assert body["input"] == "and now?"  # the client's body is not changed


def test_a_list_input_follows_the_history_as_it_came() -> None:
    new = [{"type": "function_call_output", "call_id": "c1", "output": "42"}]
    expanded = run(stored_responses.with_conversation(first_turn(), "alice",
                                                      {"previous_response_id": "resp_1", "input": new}))
    assert expanded["input"] == [*STORED_INPUT, REASONING, ANSWER, *new]


@pytest.mark.parametrize(("owner", "previous"), [("alice", "resp_nope"), ("bob", "resp_1"), ("alice", "*"),
                                                 ("alice", "../resp_1"), ("alice", "resp_1\n")])
def test_an_unknown_or_someone_elses_previous_id_is_not_found(owner: str, previous: str) -> None:
    error = fails(stored_responses.with_conversation(first_turn(), owner,
                                                     {"previous_response_id": previous, "input": "x"}))
    assert isinstance(error, BadRequest)
    assert (error.param, error.code) == ("previous_response_id", "previous_response_not_found")


def test_a_previous_id_with_storing_off_is_not_found() -> None:
    error = fails(stored_responses.with_conversation(None, "alice", {"previous_response_id": "resp_1", "input": "x"}))
    assert (error.status, error.code) == (400, "previous_response_not_found")


@pytest.mark.parametrize("previous", [42, ["resp_1"], {"id": "resp_1"}, True])
def test_a_previous_id_that_is_not_a_string_is_a_400(previous: object) -> None:
    error = fails(stored_responses.with_conversation(first_turn(), "alice",
                                                     {"previous_response_id": previous, "input": "x"}))
    assert (error.status, error.param) == (400, "previous_response_id")


def test_an_item_reference_is_replaced_by_the_item_it_names() -> None:
    body = {"previous_response_id": "resp_1",
            "input": [{"type": "item_reference", "id": "msg_out"}, {"role": "user", "content": "more"}]}
    expanded = run(stored_responses.with_conversation(first_turn(), "alice", body))
    assert expanded["input"] == [*STORED_INPUT, REASONING, ANSWER, ANSWER, {"role": "user", "content": "more"}]


@pytest.mark.parametrize(("previous", "reference"), [("resp_1", "msg_nope"), (None, "msg_out"), ("resp_1", 7)])
def test_a_reference_naming_nothing_in_the_conversation_is_a_400_naming_the_item(previous: str | None,
                                                                                  reference: object) -> None:
    body: JsonObject = {"input": [{"role": "user", "content": "a"}, {"type": "item_reference", "id": reference}]}
    if previous is not None:
        body["previous_response_id"] = previous
    error = fails(stored_responses.with_conversation(first_turn(), "alice", body))
    assert (error.status, error.param, error.code) == (400, "input[1].id", "item_not_found")


def test_a_lookup_the_store_cannot_answer_is_a_503() -> None:
    error = fails(stored_responses.with_conversation(Broken(), "alice", {"previous_response_id": "resp_1"}))
    assert isinstance(error, Unavailable) and error.status == 503


# --- refuse_unoffered -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param"), [({"background": True}, "background"), ({"background": 1}, "background"),
                                             ({"conversation": "conv_1"}, "conversation"),
                                             ({"conversation": {"id": "conv_1"}}, "conversation")])
def test_what_no_backend_offers_is_refused(body: JsonObject, param: str) -> None:
    with pytest.raises(BadRequest) as raised:
        stored_responses.refuse_unoffered(body)
    assert (raised.value.param, raised.value.code) == (param, "unsupported_parameter")


@pytest.mark.parametrize("body", [{}, {"background": False}, {"background": None}, {"conversation": None}])
def test_background_off_and_no_conversation_pass(body: JsonObject) -> None:
    stored_responses.refuse_unoffered(body)


# --- answer ---------------------------------------------------------------------------------------------------------


def answer(store: ResponseStore | None, owner: str, endpoint: Endpoint, method: str = "GET",
           response_id: str = "resp_1", query: str = "") -> tuple[int, dict]:
    status, payload, _ = immediate(run(stored_responses.answer(store, owner, endpoint, method, response_id, query)))
    return status, payload


def test_get_returns_the_stored_response_without_encrypted_reasoning() -> None:
    status, got = answer(first_turn(), "alice", Endpoint.RESPONSE)
    assert status == 200
    assert got == {**RESPONSE, "output": [{k: v for k, v in REASONING.items() if k != "encrypted_content"}, ANSWER]}


@pytest.mark.parametrize("query", ["include[]=reasoning.encrypted_content",
                                   "include%5B%5D=reasoning.encrypted_content",
                                   "include=reasoning.encrypted_content",
                                   "include[]=message.output_text.logprobs&include[]=reasoning.encrypted_content"])
def test_get_with_the_include_returns_the_encrypted_reasoning(query: str) -> None:
    assert answer(first_turn(), "alice", Endpoint.RESPONSE, query=query)[1] == RESPONSE


def test_delete_then_get_is_not_found() -> None:
    store = first_turn()
    assert answer(store, "alice", Endpoint.RESPONSE, "DELETE") == (
        200, {"id": "resp_1", "object": "response", "deleted": True})
    for endpoint in (Endpoint.RESPONSE, Endpoint.RESPONSE_INPUT_ITEMS):
        error = fails(stored_responses.answer(store, "alice", endpoint, "GET", "resp_1", ""))
        assert (error.status, error.code) == (404, "response_not_found")
    assert fails(stored_responses.answer(store, "alice", Endpoint.RESPONSE, "DELETE", "resp_1", "")).status == 404


@pytest.mark.parametrize(("endpoint", "method"), [(Endpoint.RESPONSE, "GET"), (Endpoint.RESPONSE, "DELETE"),
                                                  (Endpoint.RESPONSE_INPUT_ITEMS, "GET")])
def test_another_owners_response_reads_exactly_as_one_that_never_existed(endpoint: Endpoint, method: str) -> None:
    store = first_turn()
    theirs = fails(stored_responses.answer(store, "bob", endpoint, method, "resp_1", ""))
    never = fails(stored_responses.answer(store, "bob", endpoint, method, "resp_2", ""))
    assert isinstance(theirs, NotFound) and theirs.status == 404
    assert orjson.loads(theirs.body())["error"] == {
        **orjson.loads(never.body())["error"], "message": never.message.replace("resp_2", "resp_1")}
    assert answer(store, "alice", Endpoint.RESPONSE)[0] == 200  # bob's DELETE took nothing


def test_storing_off_answers_every_stored_call_404() -> None:
    for endpoint, method in ((Endpoint.RESPONSE, "GET"), (Endpoint.RESPONSE, "DELETE"),
                             (Endpoint.RESPONSE_INPUT_ITEMS, "GET")):
        assert fails(stored_responses.answer(None, "alice", endpoint, method, "resp_1", "")).status == 404


def test_streaming_a_stored_response_again_is_a_400() -> None:
    error = fails(stored_responses.answer(first_turn(), "alice", Endpoint.RESPONSE, "GET", "resp_1", "stream=true"))
    assert (error.status, error.param) == (400, "stream")
    assert answer(first_turn(), "alice", Endpoint.RESPONSE, query="stream=false")[0] == 200


def test_cancel_is_a_400_for_anyone() -> None:
    for owner in ("alice", "bob"):
        error = fails(stored_responses.answer(first_turn(), owner, Endpoint.RESPONSE_CANCEL, "POST", "resp_1", ""))
        assert (error.status, error.code) == (400, "unsupported_parameter")


class Broken(ResponseStore):
    """A store whose backing service is down."""

    def __init__(self) -> None:
        super().__init__(60.0)

    async def put(self, response_id: str, record: JsonObject) -> None:
        raise StoreUnavailable("down")

    async def _read(self, response_id: str) -> bytes | None:
        raise StoreUnavailable("down")

    async def _remove(self, response_id: str) -> None:
        raise StoreUnavailable("down")


@pytest.mark.parametrize(("endpoint", "method"), [(Endpoint.RESPONSE, "GET"), (Endpoint.RESPONSE, "DELETE"),
                                                  (Endpoint.RESPONSE_INPUT_ITEMS, "GET")])
def test_a_store_that_is_down_is_a_503(endpoint: Endpoint, method: str) -> None:
    error = fails(stored_responses.answer(Broken(), "alice", endpoint, method, "resp_1", ""))
    assert isinstance(error, Unavailable)
    assert (error.status, error.code) == (503, "response_store_unavailable")


# --- input_items ----------------------------------------------------------------------------------------------------

MANY = [{"role": "user", "content": f"turn {n}"} for n in range(5)]


def items(query: str = "", store: ResponseStore | None = None) -> dict:
    store = store or store_with(("resp_1", "alice", {"response": RESPONSE, "input": MANY}))
    status, listing = answer(store, "alice", Endpoint.RESPONSE_INPUT_ITEMS, query=query)
    assert status == 200 and listing["object"] == "list"
    return listing


def texts(listing: dict) -> list[str]:
    return [item["content"][0]["text"] for item in listing["data"]]


def test_input_items_list_newest_first_by_default_and_oldest_first_asked() -> None:
    assert texts(items()) == [f"turn {n}" for n in (4, 3, 2, 1, 0)]
    assert texts(items("order=asc")) == [f"turn {n}" for n in range(5)]
    first = items("order=asc")["data"][0]
    assert first["type"] == "message" and first["status"] == "completed"
    assert first["content"] == [{"type": "input_text", "text": "turn 0"}]


def test_input_items_have_ids_stable_between_listings_and_keep_their_own() -> None:
    store = store_with(("resp_1", "alice", {"response": RESPONSE, "input": [*MANY, *STORED_INPUT]}))
    one, two = items(store=store), items(store=store)
    assert [i["id"] for i in one["data"]] == [i["id"] for i in two["data"]]
    assert one["data"][0]["id"] == "msg_in"
    assert len({i["id"] for i in one["data"]}) == 6
    assert all(i["id"].startswith("msg_") for i in one["data"])


def test_input_items_page_with_limit_and_after() -> None:
    page = items("order=asc&limit=2")
    assert texts(page) == ["turn 0", "turn 1"] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][1]["id"])
    rest = items(f"order=asc&limit=2&after={page['last_id']}")
    assert texts(rest) == ["turn 2", "turn 3"] and rest["has_more"] is True
    last = items(f"order=asc&limit=2&after={rest['last_id']}")
    assert texts(last) == ["turn 4"] and last["has_more"] is False
    end = items(f"order=asc&after={last['last_id']}")
    assert end == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize("limit", ["1", "100"])
def test_the_limit_bounds_are_accepted(limit: str) -> None:
    assert len(items(f"limit={limit}")["data"]) == min(int(limit), 5)


@pytest.mark.parametrize(("query", "param"), [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"), ("limit=", "limit"),
    ("limit=%C2%B2", "limit"), ("limit=%D9%A3", "limit"), ("limit=" + "1" * 5000, "limit"),
    ("order=sideways", "order"), ("after=msg_nope", "after")])
def test_bad_paging_is_a_400(query: str, param: str) -> None:
    store = store_with(("resp_1", "alice", {"response": RESPONSE, "input": MANY}))
    error = fails(stored_responses.answer(store, "alice", Endpoint.RESPONSE_INPUT_ITEMS, "GET", "resp_1", query))
    assert (error.status, error.param) == (400, param)


def test_a_string_input_is_listed_as_one_user_message() -> None:
    """`ResponsesTurn.keep` stores a string input as the user message it stands for."""
    store = MemoryResponseStore(60.0, 10)
    turn = ResponsesTurn({"model": "m", "input": "just this"}, "m", "alice")
    turn.final = {**RESPONSE, "id": "resp_1"}
    run(turn.keep(store))
    only = items(store=store)["data"]
    assert len(only) == 1
    assert only[0]["content"] == [{"type": "input_text", "text": "just this"}] and only[0]["role"] == "user"
    assert only[0]["type"] == "message" and only[0]["id"].startswith("msg_")


def test_an_assistant_message_is_listed_with_output_text() -> None:
    store = store_with(("resp_1", "alice", {"response": RESPONSE,
                                            "input": [{"role": "assistant", "content": "earlier"}]}))
    assert items(store=store)["data"][0]["content"] == [{"type": "output_text", "text": "earlier"}]
