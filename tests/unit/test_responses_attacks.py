"""What a hostile client (or a forged reasoning item) can try against the Responses API, through the route stage as
Envoy drives it: reading or deleting another key's responses, ids and paths built to escape the store's key space,
forged thinking envelopes, and conversations grown past the gateway's bounds. Also the Responses endpoint's direct
route to a native OpenAI backend, end to end through the route stage."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import orjson
import pytest

from ext_proc.client_formats import responses_request
from ext_proc.client_formats.responses_common import encode_thinking
from ext_proc.config.loading import parse_config
from ext_proc.errors import BadRequest
from ext_proc.json_types import JsonObject
from ext_proc.limits.limiter import Limiter
from ext_proc.providers import for_schema, responses_passthrough
from ext_proc.providers.openai_responses import ResponsesEventReader
from ext_proc.runtime.build import Runtime, compile_runtime
from ext_proc.stages.route import RouteStage
from ext_proc.stages.stream_relay import ResponsesPassthroughRelay
from ext_proc.state.responses import MemoryResponseStore
from ext_proc.telemetry.hub import Telemetry
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest

from .stage_support import CLIENT_KEY, CONFIG, LIMITED_KEY, body, counted, drive, headers, immediate, runtime

NATIVE = CONFIG.replace(
    "routes:\n", "routes:\n  - model: gpt-native\n    backends: [{backend: oa, model: gpt-5-2025}]\n", 1)
"""stage_support's config (max_body_bytes 2048) with a route straight to a native OpenAI Responses backend."""
LIMITS = "limits: {per_key: [{window: hour, total_tokens: 100000}]}\n"
ALL = f"Bearer {CLIENT_KEY}"
POST = {":method": "POST", ":path": "/v1/responses", "authorization": ALL, "content-type": "application/json"}
ENVELOPE_ITEM = {"type": "reasoning", "id": "rs_gw", "summary": [],
                 "encrypted_content": encode_thinking([{"type": "thinking", "thinking": "t", "signature": "sig"}])}
OPENAI_REASONING = {"type": "reasoning", "id": "rs_oa", "summary": [], "encrypted_content": "gAAAAopaque"}
ANSWER = {"type": "message", "id": "msg_out", "role": "assistant", "status": "completed",
          "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}
FIRST = {"owner": "all", "response": {"id": "resp_1", "object": "response", "status": "completed",
                                      "output": [ENVELOPE_ITEM, OPENAI_REASONING, ANSWER]},
         "input": [{"role": "user", "content": "hi"}]}


def gateway(monkeypatch: pytest.MonkeyPatch, *records: tuple[str, JsonObject], config: str = NATIVE,
            extra: str = "") -> tuple[Runtime, MemoryResponseStore]:
    """The runtime of `config`, with a fresh memory store holding `records` (id, record)."""
    runtime(monkeypatch)  # the provider secrets
    store = MemoryResponseStore(3600.0, 100)
    for response_id, kept in records:
        asyncio.run(store.put(response_id, kept))
    return dataclasses.replace(compile_runtime(parse_config(config + extra)), responses=store), store


def reads(monkeypatch: pytest.MonkeyPatch, store: MemoryResponseStore) -> list[str]:
    """Every id the store is asked to read from now on."""
    asked: list[str] = []
    original = store._read

    async def spy(response_id: str) -> bytes | None:
        asked.append(response_id)
        return await original(response_id)

    monkeypatch.setattr(store, "_read", spy)
    return asked


def call(rt: Runtime, method: str, path: str, authorization: str | None = ALL) -> tuple[int, dict]:
    """One stored-response call (no body) through a route stage."""
    request = {":method": method, ":path": path}
    if authorization is not None:
        request["authorization"] = authorization
    status, payload, _ = immediate(drive(RouteStage(rt), ProcessingRequest(
        request_headers=headers(request, end_of_stream=True))))
    return status, payload


def post(rt: Runtime, payload: object, request: dict[str, str] = POST) -> tuple[RouteStage, object]:
    stage = RouteStage(rt)
    reply = drive(stage, ProcessingRequest(request_headers=headers(request)))
    assert reply is not None and reply.WhichOneof("response") != "immediate_response", reply
    return stage, drive(stage, ProcessingRequest(request_body=body(payload)))


# --- another key's responses ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"),
                                              ("GET", "/v1/responses/resp_1/input_items")])
def test_another_key_can_neither_read_nor_delete_a_response(monkeypatch: pytest.MonkeyPatch, method: str,
                                                            path: str) -> None:
    rt, _ = gateway(monkeypatch, ("resp_1", FIRST))
    status, theirs = call(rt, method, path, f"Bearer {LIMITED_KEY}")
    never_status, never = call(rt, method, path.replace("resp_1", "resp_2"), f"Bearer {LIMITED_KEY}")
    assert status == never_status == 404
    assert theirs["error"]["code"] == never["error"]["code"] == "response_not_found"
    assert theirs["error"]["message"] == never["error"]["message"].replace("resp_2", "resp_1")
    assert call(rt, "GET", "/v1/responses/resp_1")[0] == 200  # still there for its owner


@pytest.mark.parametrize("path", [
    "/v1/responses/..", "/v1/responses/../responses/resp_1", "/v1/responses/resp_1/../resp_1",
    "/v1/responses/resp_1/input_items/..", "/v1/responses/resp_1%2f..", "/v1/responses/..%2fresp_1",
    "/v1/responses/resp_1%2Finput_items", "/v1/responses/" + "r" * 10_000, "/v1/responses/resp_1\x00",
    "/v1/responses/resp_1%00", "/v1/responses/*", "/v1/responses/resp_*", "/v1/responses/resp_%3F",
    "/v1/responses/[r]esp_1", "/v1/responses/resp_1%0a", "/v1/responses/resp_1\n"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_hostile_path_reaches_no_response_and_no_key_outside_the_id_shape(monkeypatch: pytest.MonkeyPatch,
                                                                          path: str, method: str) -> None:
    rt, store = gateway(monkeypatch, ("resp_1", FIRST))
    asked = reads(monkeypatch, store)
    status, payload = call(rt, method, path)
    assert status in (404, 405)
    assert "Hello!" not in orjson.dumps(payload).decode()
    assert asked == []  # nothing but a well-formed id is ever looked up
    assert call(rt, "GET", "/v1/responses/resp_1")[0] == 200  # and nothing was deleted


@pytest.mark.parametrize("authorization", [None, "Bearer bg-wrong", "Basic abc"])
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"),
                                              ("GET", "/v1/responses/resp_1/input_items"),
                                              ("POST", "/v1/responses/resp_1/cancel")])
def test_a_stored_response_call_without_a_valid_key_is_a_401_before_any_lookup(
        monkeypatch: pytest.MonkeyPatch, authorization: str | None, method: str, path: str) -> None:
    rt, store = gateway(monkeypatch, ("resp_1", FIRST))
    asked = reads(monkeypatch, store)
    assert call(rt, method, path, authorization)[0] == 401
    assert asked == []


def test_the_owner_reads_lists_and_deletes_through_the_route_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, _ = gateway(monkeypatch, ("resp_1", FIRST))
    status, got = call(rt, "GET", "/v1/responses/resp_1")
    assert status == 200 and all("encrypted_content" not in item for item in got["output"])
    status, got = call(rt, "GET", "/v1/responses/resp_1?include[]=reasoning.encrypted_content")
    assert got["output"] == FIRST["response"]["output"]
    status, listing = call(rt, "GET", "/v1/responses/resp_1/input_items?order=asc")
    assert status == 200 and listing["data"][0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert call(rt, "POST", "/v1/responses/resp_1/cancel")[0] == 400
    assert call(rt, "POST", "/v1/responses/resp_1")[0] == 405
    assert call(rt, "DELETE", "/v1/responses/resp_1")[0] == 200
    assert call(rt, "GET", "/v1/responses/resp_1")[0] == 404


# --- forged thinking envelopes --------------------------------------------------------------------------------------


def _packed(raw: bytes) -> str:
    return "bgw1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


FORGED = {
    "junk base64": "bgw1.!!!*** not base64",
    "bare prefix": "bgw1.",
    "not json": _packed(b"not json at all"),
    "json not a list": _packed(b'{"type": "thinking", "thinking": "t", "signature": "s"}'),
    "list of non-objects": _packed(b'[1, "two", null, [3]]'),
    "nested past the parser": _packed(b"[" * 5000 + b"]" * 5000),
    "huge": _packed(orjson.dumps([{"type": "thinking", "thinking": "x" * 20, "signature": ""}] * 20_000)),
    "unsigned": encode_thinking([{"type": "thinking", "thinking": "made up", "signature": ""}]),
    "deep extra field": _packed(b'[{"type": "thinking", "thinking": "t", "signature": "s", "x": '
                                + b'{"a": ' * 600 + b"1" + b"}" * 600 + b"}]"),
    "fake signature with extras": encode_thinking([{"type": "thinking", "thinking": "t", "signature": "forged",
                                                    "extra": "x", "n": 1}]),
    "nested extra field": encode_thinking([{"type": "thinking", "thinking": "t", "signature": "s",
                                            "cache_control": {"type": "ephemeral"}}]),
    "redacted": encode_thinking([{"type": "redacted_thinking", "data": "opaque", "extra": True}]),
    "other block types": encode_thinking([{"type": "tool_use", "id": "t", "name": "n", "input": {}}]),
}
ACCEPTED = {  # what the Claude translator may see of each: only what `signed_thinking_blocks` accepts (an
    # envelope whose blocks nest is dropped whole: real thinking blocks are flat)
    "fake signature with extras": [{"type": "thinking", "thinking": "t", "signature": "forged"}],
    "redacted": [{"type": "redacted_thinking", "data": "opaque"}],
}


def _with_reasoning(encrypted: str) -> JsonObject:
    return {"model": "claude", "input": [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encrypted},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "and?"}]}


def _claude_thinking(upstream: JsonObject) -> list[JsonObject]:
    return [part for message in upstream["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part.get("type") in ("thinking", "redacted_thinking")]


@pytest.mark.parametrize("name", FORGED)
def test_a_forged_envelope_never_breaks_the_conversion_and_reaches_claude_only_as_accepted_blocks(name: str) -> None:
    chat = responses_request.to_openai(_with_reasoning(FORGED[name]))
    try:
        upstream = for_schema("anthropic").chat_request(chat, "claude-x", default_max_tokens=100)
    except BadRequest as refused:  # a block of no known type: the translator's own 400, naming it
        assert name == "other block types" and "thinking_blocks[0]" in str(refused.param)
        return
    assert _claude_thinking(upstream) == ACCEPTED.get(name, [])
    orjson.dumps(upstream)  # what leaves for the provider encodes


@pytest.mark.parametrize("name", FORGED)
def test_a_gateway_envelope_never_reaches_a_native_openai_backend(monkeypatch: pytest.MonkeyPatch,
                                                                   name: str) -> None:
    client = _with_reasoning(FORGED[name])
    settings = runtime(monkeypatch).backends["oa"].settings
    upstream = responses_passthrough.request(client, "gpt-5", settings, 4096)
    assert [item.get("type", "message") for item in upstream["input"]] == ["message", "message", "message"]
    assert "bgw1." not in orjson.dumps(upstream).decode()
    assert len(client["input"]) == 4  # the client's body is not changed


def test_a_forged_envelope_through_the_route_stage_is_a_400_or_a_clean_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt, _ = gateway(monkeypatch)
    for name, encrypted in FORGED.items():
        if len(encrypted) > 1500:  # past the 2 KB body limit of this config
            continue
        _, reply = post(rt, _with_reasoning(encrypted))
        kind = reply.WhichOneof("response")
        if kind == "immediate_response":
            assert reply.immediate_response.status.code == 400, name
            continue
        sent = orjson.loads(reply.request_body.response.body_mutation.body)
        assert _claude_thinking(sent) == ACCEPTED.get(name, []), name


# --- bounds on a rebuilt conversation -------------------------------------------------------------------------------


BIG = {"owner": "all", "response": {"id": "resp_big", "object": "response", "output": [ANSWER]},
       "input": [{"role": "user", "content": "x" * 3000}]}


@pytest.mark.parametrize("model", ["gpt-4o", "claude", "gpt-native"])  # a chain, a translated and a native direct
def test_a_conversation_grown_past_the_body_limit_is_a_413_before_anything_is_reserved(
        monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    rt, _ = gateway(monkeypatch, ("resp_big", BIG), extra=LIMITS)
    reservations = counted(monkeypatch, Limiter, "reserve")
    _, reply = post(rt, {"model": model, "previous_response_id": "resp_big", "input": "next"})
    status, payload, _ = immediate(reply)
    assert (status, payload["error"]["code"]) == (413, "request_too_large")
    assert "previous_response_id" in payload["error"]["message"]
    assert reservations == []


def test_more_input_items_than_allowed_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    config = NATIVE.replace("requests: {max_body_bytes: 2048}", "requests: {max_body_bytes: 2048, max_messages: 3}")
    rt, _ = gateway(monkeypatch, ("resp_1", FIRST), config=config)
    asked = reads(monkeypatch, rt.responses)  # type: ignore[arg-type]
    many = [{"role": "user", "content": str(n)} for n in range(4)]
    _, reply = post(rt, {"model": "gpt-native", "previous_response_id": "resp_1", "input": many})
    status, payload, _ = immediate(reply)
    assert (status, payload["error"]["code"], payload["error"]["param"]) == (400, "too_many_messages", "input")
    assert asked == []  # refused before the store is asked
    # the rebuilt conversation is bounded alike: 1 stored input + 3 stored output items + 1 new one
    _, reply = post(rt, {"model": "gpt-native", "previous_response_id": "resp_1", "input": "one more"})
    status, payload, _ = immediate(reply)
    assert (status, payload["error"]["code"]) == (400, "too_many_messages")


@pytest.mark.parametrize(("field", "value"), [("background", True), ("conversation", "conv_1")])
def test_unoffered_features_are_refused_by_the_route_stage(monkeypatch: pytest.MonkeyPatch, field: str,
                                                           value: object) -> None:
    rt, _ = gateway(monkeypatch)
    _, reply = post(rt, {"model": "gpt-native", "input": "hi", field: value})
    status, payload, _ = immediate(reply)
    assert (status, payload["error"]["param"]) == (400, field)


def test_an_unknown_previous_id_is_a_400_through_the_route_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, _ = gateway(monkeypatch, ("resp_1", FIRST))
    limited = {**POST, "authorization": f"Bearer {LIMITED_KEY}"}
    _, reply = post(rt, {"model": "claude", "previous_response_id": "resp_1", "input": "x"}, limited)
    status, payload, _ = immediate(reply)
    assert (status, payload["error"]["code"]) == (400, "previous_response_not_found")


# --- a native OpenAI backend on a direct route ----------------------------------------------------------------------


UPSTREAM_ANSWER = {"id": "resp_up1", "object": "response", "created_at": 1, "status": "completed",
                   "model": "gpt-5-2025", "output": [{**ANSWER, "id": "msg_up"}],
                   "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}}


def test_a_native_direct_route_gets_the_clients_body_with_the_conversation_and_answers_with_its_previous_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rt, store = gateway(monkeypatch, ("resp_1", FIRST))
    client = {"model": "gpt-native", "previous_response_id": "resp_1", "input": "next", "store": True,
              "tools": [{"type": "web_search"}], "text": {"verbosity": "low"}, "metadata": {"k": "v"}}
    stage, reply = post(rt, client)
    sent = orjson.loads(reply.request_body.response.body_mutation.body)
    assert sent["model"] == "gpt-5-2025" and "previous_response_id" not in sent
    assert {k: sent[k] for k in ("store", "tools", "text", "metadata")} == {
        k: client[k] for k in ("store", "tools", "text", "metadata")}
    # the gateway's thinking envelope is left out; OpenAI's own reasoning goes back to OpenAI
    assert sent["input"] == [*FIRST["input"], OPENAI_REASONING, ANSWER, {"role": "user", "content": "next"}]

    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    answered = drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(UPSTREAM_ANSWER),
                                                                      end_of_stream=True)))
    got = orjson.loads(answered.response_body.response.body_mutation.body)
    assert got == {**UPSTREAM_ANSWER, "previous_response_id": "resp_1"}
    kept = asyncio.run(store.get("resp_up1", "all"))
    assert kept is not None and kept["response"] == got
    assert kept["input"] == [*FIRST["input"], *FIRST["response"]["output"], {"role": "user", "content": "next"}]
    assert asyncio.run(store.get("resp_up1", "limited")) is None


def test_a_native_answer_to_a_request_with_store_false_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, store = gateway(monkeypatch)
    stage, _ = post(rt, {"model": "gpt-native", "input": "hi", "store": False})
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(UPSTREAM_ANSWER), end_of_stream=True)))
    assert asyncio.run(store.get("resp_up1", "all")) is None


@pytest.mark.parametrize("data", [b'{"type": "response.completed"}', b"[1]", b'{"response": null}',
                                  b'{"response": [1]}', b"not json"])
def test_a_native_stream_event_without_a_response_object_passes_as_it_came(data: bytes) -> None:
    relay = ResponsesPassthroughRelay("text/event-stream", ResponsesEventReader("m", 0, True), None, None,
                                      {"previous_response_id": "resp_0"})
    out = relay.relay(b"event: response.completed\ndata: " + data + b"\n\n", False)
    assert out.startswith(b"event: response.completed\ndata: " + data + b"\n\n")


CLAUDE_ANSWER = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
                 "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig2"},
                             {"type": "text", "text": "Sure."}],
                 "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 3}}


def test_a_translated_direct_route_answers_a_response_of_its_own_that_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, store = gateway(monkeypatch, ("resp_1", FIRST))
    stage, reply = post(rt, {"model": "claude", "previous_response_id": "resp_1", "input": "next"})
    sent = orjson.loads(reply.request_body.response.body_mutation.body)
    assert sent["model"] == "claude-x"
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert _claude_thinking(sent) == [{"type": "thinking", "thinking": "t", "signature": "sig"}]  # from the envelope
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    answered = drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(CLAUDE_ANSWER),
                                                                      end_of_stream=True)))
    got = orjson.loads(answered.response_body.response.body_mutation.body)
    assert got["id"].startswith("resp_") and got["previous_response_id"] == "resp_1"
    assert [item["type"] for item in got["output"]] == ["reasoning", "message"]
    assert "encrypted_content" not in got["output"][0]  # not asked for; kept in the store all the same
    kept = asyncio.run(store.get(got["id"], "all"))
    assert kept is not None and kept["response"]["output"][0]["encrypted_content"].startswith("bgw1.")
    # the next turn, on the native backend, chains from it: Claude's envelope stays out of OpenAI's input
    _, reply = post(rt, {"model": "gpt-native", "previous_response_id": got["id"], "input": "and then?"})
    chained = orjson.loads(reply.request_body.response.body_mutation.body)["input"]
    assert chained[-1] == {"role": "user", "content": "and then?"}
    assert "bgw1." not in orjson.dumps(chained).decode()
    assert {"role": "user", "content": "next"} in chained


def test_nesting_hidden_in_an_envelope_does_not_break_a_logged_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request log encodes the chat form (thinking blocks included); orjson refuses more than 255 levels."""
    config = NATIVE.replace("  - model: claude\n", "  - model: claude\n    log_content: true\n", 1).replace(
        "max_body_bytes: 2048", "max_body_bytes: 20000")
    rt, _ = gateway(monkeypatch, config=config)
    rt = dataclasses.replace(rt, telemetry=Telemetry(request_log=RequestLogStub()))  # type: ignore[arg-type]
    _, reply = post(rt, _with_reasoning(FORGED["deep extra field"]))
    sent = orjson.loads(reply.request_body.response.body_mutation.body)
    assert _claude_thinking(sent) == []


class RequestLogStub:
    def record(self, row: object) -> None:
        return None


def test_a_native_answer_not_kept_still_gets_the_clients_previous_id_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing to keep, meter or guard, a direct answer could skip the body phase: not when the client named a
    previous response, which the provider never saw and the answer must carry."""
    rt, store = gateway(monkeypatch, ("resp_1", FIRST))
    stage, _ = post(rt, {"model": "gpt-native", "previous_response_id": "resp_1", "input": "next", "store": False})
    head = drive(stage, ProcessingRequest(response_headers=headers({":status": "200",
                                                                    "content-type": "application/json"})))
    assert head.mode_override.response_body_mode == head.mode_override.BUFFERED
    answered = drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(UPSTREAM_ANSWER),
                                                                      end_of_stream=True)))
    got = orjson.loads(answered.response_body.response.body_mutation.body)
    assert got["previous_response_id"] == "resp_1"
    assert asyncio.run(store.get("resp_up1", "all")) is None
