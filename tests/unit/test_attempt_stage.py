"""The attempt stage on its own: per-backend translation, credentials, header hygiene, answers back to OpenAI."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import anthropic
import openai
import orjson
import pydantic
import pytest
from google.protobuf.struct_pb2 import Struct

from ext_proc import constants
from ext_proc.client_formats import anthropic_messages
from ext_proc.config.models import GuardrailSettings
from ext_proc.guardrails.engine import Guardrail
from ext_proc.limits.estimate import estimate_prompt_tokens
from ext_proc.runtime.build import BackendInfo
from ext_proc.stages import attempt as attempt_module
from ext_proc.stages.attempt import STREAMED_RESPONSE_MODE, AttemptStage
from ext_proc.streaming.sse import SSEDecoder
from ext_proc.wire.base_pb2 import Metadata
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest

from .stage_support import body, counted, drive, headers, runtime, set_headers

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
HELLO = {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hi"}], "max_tokens": 50}
CLIENT_HEADERS = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gateway:10000",
                  "authorization": "Bearer bg-client", "x-api-key": "bg-client", "accept-encoding": "gzip",
                  "x-babelgate-int-chain": "bg_chain_oa__an", "x-babelgate-tags": "t",
                  "x-envoy-attempt-count": "2", "x-envoy-expected-rq-timeout-ms": "1000", "x-request-id": "r1"}


def _attributes(backend: str) -> dict[str, Struct]:
    text = ('filter_metadata { key: "babelgate" value { fields { key: "backend" value { string_value: "'
            + backend + '" } } } } ')
    attribute = Struct()
    attribute.update({constants.UPSTREAM_HOST_METADATA_ATTRIBUTE: text})
    return {"envoy.filters.http.ext_proc": attribute}


def _decision(route: str = "gpt-4o", endpoint: str = "chat") -> Metadata:
    metadata = Metadata()
    metadata.filter_metadata[constants.METADATA_NAMESPACE].update(
        {constants.METADATA_ROUTE_KEY: route, constants.METADATA_ENDPOINT_KEY: endpoint})
    return metadata


class Attempt:
    """Drives one attempt-stage stream message by message, like Envoy does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, backend: str, route: str = "gpt-4o", endpoint: str = "chat",
                 extra: str = "") -> None:
        self.stage = AttemptStage(runtime(monkeypatch, extra))
        request = ProcessingRequest(request_headers=headers(CLIENT_HEADERS),
                                    metadata_context=_decision(route, endpoint))
        for key, value in _attributes(backend).items():
            request.attributes[key].CopyFrom(value)
        self.headers_reply = drive(self.stage, request)

    def send(self, **message: object) -> object:
        return drive(self.stage, ProcessingRequest(**message))


def test_request_to_anthropic_is_translated_with_its_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an")
    removed = set(attempt.headers_reply.request_headers.response.header_mutation.remove_headers)
    assert removed == {"authorization", "x-api-key", "accept-encoding", "x-babelgate-int-chain", "x-babelgate-tags",
                       "x-envoy-attempt-count", "x-envoy-expected-rq-timeout-ms"}
    reply = attempt.send(request_body=body(HELLO)).request_body.response
    sent = orjson.loads(reply.body_mutation.body)
    pydantic.TypeAdapter(anthropic.types.MessageCreateParams).validate_python(sent)
    assert sent["model"] == "claude-x" and sent["system"] == "Be brief." and sent["max_tokens"] == 50
    assert set_headers(reply) == {
        ":path": "/v1/messages", ":authority": "api.anthropic.com", "content-type": "application/json",
        "content-length": str(len(reply.body_mutation.body)),
        "x-api-key": "sk-unit-anthropic", "anthropic-version": "2023-06-01"}


def test_request_to_openai_swaps_model_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    reply = Attempt(monkeypatch, "oa").send(request_body=body(HELLO)).request_body.response
    assert orjson.loads(reply.body_mutation.body)["model"] == "gpt-4o-2024"
    headers_set = set_headers(reply)
    assert headers_set[":path"] == "/v1/chat/completions"
    assert headers_set[":authority"] == "127.0.0.1:9"
    assert headers_set["authorization"] == "Bearer sk-unit-openai"


def test_response_json_from_anthropic_becomes_a_chat_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an")
    attempt.send(request_body=body(HELLO))
    head = attempt.send(response_headers=headers({":status": "200", "content-type": "application/json"}))
    assert set_headers(head.response_headers.response) == {"x-babelgate-backend": "an", "x-babelgate-attempts": "2",
                                                           "x-babelgate-requested-model": "gpt-4o"}
    assert not head.HasField("mode_override")
    answer = (FIXTURES / "response_text_and_tool_calls.anthropic.json").read_bytes()
    reply = attempt.send(response_body=HttpBody(body=answer, end_of_stream=True)).response_body.response
    completion = openai.types.chat.ChatCompletion.model_validate(orjson.loads(reply.body_mutation.body))
    assert completion.choices[0].message.tool_calls
    assert set_headers(reply)["content-length"] == str(len(reply.body_mutation.body))


def test_provider_error_is_mapped_and_its_status_rewritten(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an")
    attempt.send(request_body=body(HELLO))
    attempt.send(response_headers=headers({":status": "529", "content-type": "application/json"}))
    overloaded = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    reply = attempt.send(response_body=HttpBody(body=overloaded, end_of_stream=True)).response_body.response
    assert set_headers(reply)[":status"] == "503"
    error = orjson.loads(reply.body_mutation.body)["error"]
    assert error["message"] == "Overloaded" and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("backend", "secret"), [("an", "sk-unit-anthropic"), ("oa", "sk-unit-openai")])
def test_a_provider_error_quoting_its_key_never_passes_it_on(monkeypatch: pytest.MonkeyPatch, backend: str,
                                                             secret: str) -> None:
    attempt = Attempt(monkeypatch, backend)
    attempt.send(request_body=body(HELLO))
    attempt.send(response_headers=headers({":status": "401", "content-type": "application/json"}))
    refused = orjson.dumps({"type": "error", "error": {"type": "authentication_error",
                                                       "message": f"Incorrect API key provided: {secret}."}})
    reply = attempt.send(response_body=HttpBody(body=refused, end_of_stream=True)).response_body.response
    assert secret.encode() not in reply.body_mutation.body
    assert "[REDACTED:CREDENTIAL]" in orjson.loads(reply.body_mutation.body)["error"]["message"]


def test_sse_answer_switches_to_streamed_mode_and_is_translated_chunk_by_chunk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an")
    attempt.send(request_body=body({**HELLO, "stream": True, "stream_options": {"include_usage": True}}))
    head = attempt.send(response_headers=headers({":status": "200", "content-type": "text/event-stream",
                                                  "content-length": "999"}))
    assert head.mode_override == STREAMED_RESPONSE_MODE
    assert list(head.response_headers.response.header_mutation.remove_headers) == ["content-length"]
    stream = (FIXTURES / "stream_tool_calls.anthropic.sse").read_bytes()
    out = b""
    pieces = [stream[i:i + 37] for i in range(0, len(stream), 37)]
    for index, piece in enumerate(pieces):
        reply = attempt.send(response_body=HttpBody(body=piece, end_of_stream=index == len(pieces) - 1))
        out += reply.response_body.response.body_mutation.body
    events = SSEDecoder().feed(out)
    assert events[-1].data == b"[DONE]"
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate(orjson.loads(e.data)) for e in events[:-1]]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)


def test_error_answer_to_a_stream_request_stays_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an")
    attempt.send(request_body=body({**HELLO, "stream": True}))
    head = attempt.send(response_headers=headers({":status": "429", "content-type": "application/json"}))
    assert not head.HasField("mode_override")


def test_unreadable_success_answer_is_a_502(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an")
    attempt.send(request_body=body(HELLO))
    attempt.send(response_headers=headers({":status": "200", "content-type": "application/json"}))
    oops = HttpBody(body=b"<html>oops</html>", end_of_stream=True)
    reply = attempt.send(response_body=oops).response_body.response
    assert set_headers(reply)[":status"] == "502"
    assert orjson.loads(reply.body_mutation.body)["error"]["code"] == "bad_gateway"


def test_attempt_without_a_known_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "nobody")
    assert attempt.headers_reply.immediate_response.status.code == 502


def test_embeddings_go_to_the_openai_embeddings_path(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = AttemptStage(runtime(monkeypatch))
    request = ProcessingRequest(request_headers=headers(CLIENT_HEADERS),
                                metadata_context=_decision("embed", "embeddings"))
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(_attributes("oa")["envoy.filters.http.ext_proc"])
    drive(stage, request)
    reply = drive(stage, ProcessingRequest(request_body=body({"model": "embed", "input": "x"})))
    assert set_headers(reply.request_body.response)[":path"] == "/v1/embeddings"
    assert orjson.loads(reply.request_body.response.body_mutation.body)["model"] == "text-embedding-3-small"


def _limited_stage(monkeypatch: pytest.MonkeyPatch, forge: object = None) -> tuple[AttemptStage, object]:
    """An attempt stage whose request holds a real reservation in the in-process store (sealed by the limiter as
    the route stage does; `forge(text)` replaces what travels in the metadata)."""
    from ext_proc.config.loading import parse_config
    from ext_proc.limits.limiter import Demand
    from ext_proc.runtime.build import compile_runtime

    from .stage_support import CONFIG

    runtime(monkeypatch)  # sets the provider secrets
    limited = compile_runtime(parse_config(CONFIG + "limits: {per_key: [{window: hour, total_tokens: 100000}]}\n"))
    limiter = limited.limiter
    reservation = asyncio.run(limiter.reserve(limiter.scopes("all", None, None, "gpt-4o", "oa"),
                                              Demand(10, 500, 0), "oa"))
    metadata = _decision()
    metadata.filter_metadata[constants.METADATA_NAMESPACE].update(
        {constants.METADATA_RESERVATION_KEY: limiter.seal(reservation) if forge is None
         else forge(reservation.encode())})  # type: ignore[operator]
    stage = AttemptStage(limited)
    request = ProcessingRequest(request_headers=headers(CLIENT_HEADERS), metadata_context=metadata)
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(_attributes("oa")["envoy.filters.http.ext_proc"])
    drive(stage, request)
    return stage, limiter


def _charged(limiter: object) -> int:
    values = asyncio.run(limiter.store.scan("bg:"))  # type: ignore[attr-defined]
    return next(v for k, v in values.items() if "total_tokens" in k)


@pytest.mark.parametrize("fixture", ["stream_no_done", "stream_cut_early"])
def test_stream_without_usage_is_charged_for_the_text_it_streamed(monkeypatch: pytest.MonkeyPatch,
                                                                 fixture: str) -> None:
    stage, limiter = _limited_stage(monkeypatch)
    hello = {**HELLO, "stream": True}
    drive(stage, ProcessingRequest(request_body=body(hello)))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "text/event-stream"})))
    stream = (Path(__file__).parent.parent / "fixtures" / "openai" / f"{fixture}.upstream.sse").read_bytes()
    drive(stage, ProcessingRequest(response_body=HttpBody(body=stream, end_of_stream=fixture == "stream_no_done")))
    asyncio.run(stage.close())  # a cut stream ends with the gRPC stream, not with end_of_stream
    text = b"".join(part.split(b'"content":"', 1)[1].split(b'"', 1)[0] for part in stream.split(b"\n\n")
                    if b'"content":"' in part)
    prompt = estimate_prompt_tokens(hello, 4.0)
    assert _charged(limiter) == prompt + math.ceil(len(text) / 4)  # not the 500 reserved output tokens


def test_a_failed_attempt_settles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    stage, limiter = _limited_stage(monkeypatch)
    drive(stage, ProcessingRequest(request_body=body(HELLO)))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "500", "content-type": "application/json"})))
    drive(stage, ProcessingRequest(response_body=HttpBody(body=b'{"error": {"message": "x"}}', end_of_stream=True)))
    asyncio.run(stage.close())
    assert _charged(limiter) == 510  # still the reservation: Envoy retries, or the route stage releases


def test_an_answer_the_gateway_cant_read_is_charged_the_whole_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider did work nobody can count: the reservation, the most it could use, stands (before, the
    settlement charged the prompt estimate alone)."""
    stage, limiter = _limited_stage(monkeypatch)
    drive(stage, ProcessingRequest(request_body=body(HELLO)))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=b"<html>not json</html>", end_of_stream=True)))
    asyncio.run(stage.close())
    assert reply.response_body.response.body_mutation.body.startswith(b'{"error"')
    assert _charged(limiter) == 510


def test_an_answer_a_guardrail_blocks_is_charged_its_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked answers cost what the provider says they cost (before, only the prompt estimate)."""
    stage, limiter = _limited_stage(monkeypatch)
    guard = Guardrail.of(GuardrailSettings(name="no-secret", deny_words=["sunny"], mode="block",
                                                apply_to=["response"]))
    stage._guardrails = (guard,)
    drive(stage, ProcessingRequest(request_body=body(HELLO)))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    answer = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "it is sunny"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 40, "completion_tokens": 300, "total_tokens": 340}}
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(answer), end_of_stream=True)))
    asyncio.run(stage.close())
    assert b"guardrail" in reply.response_body.response.body_mutation.body
    assert _charged(limiter) == 340


@pytest.mark.parametrize("in_order", [True, False], ids=["lean connection", "pooled connections"])
def test_the_answer_goes_out_before_its_settlement_is_confirmed_only_where_the_store_keeps_order(
        monkeypatch: pytest.MonkeyPatch, in_order: bool) -> None:
    """A store that runs calls in the order they were started (Redis over the lean client, the in-process store) lets
    the last reply go out while the settlement is on its way (the client's next request is still decided after it);
    one that may reorder them (redis-py's pools) is waited for. The stream's close waits for it either way."""
    stage, limiter = _limited_stage(monkeypatch)
    store = limiter.store  # type: ignore[attr-defined]
    gate: list[asyncio.Event] = []
    adjust = store.adjust

    async def gated_adjust(keys: object, deltas: object) -> None:
        await gate[0].wait()
        await adjust(keys, deltas)

    monkeypatch.setattr(store, "adjust", gated_adjust)
    monkeypatch.setattr(store, "settles_in_order", in_order)
    drive(stage, ProcessingRequest(request_body=body(HELLO)))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    answer = (Path(__file__).parent.parent / "fixtures" / "openai" / "response_text.openai.json").read_bytes()
    replied: list[bool] = []

    async def exchange() -> None:
        gate.append(asyncio.Event())
        last = asyncio.ensure_future(stage.handle(ProcessingRequest(
            response_body=HttpBody(body=answer, end_of_stream=True))))
        for _ in range(20):  # let every ready step run: the settlement reaches the gate and waits there
            await asyncio.sleep(0)
        replied.append(last.done())
        if not in_order:
            gate[0].set()
            await last
        closing = asyncio.ensure_future(stage.close())  # Envoy ends the stream once the last reply is in
        for _ in range(20):
            await asyncio.sleep(0)
        assert closing.done() is not in_order  # the close waits for a settlement still on its way
        gate[0].set()
        await closing

    asyncio.run(exchange())
    assert replied == [in_order]
    assert _charged(limiter) == orjson.loads(answer)["usage"]["total_tokens"]


@pytest.mark.parametrize("forgery", [
    pytest.param(lambda text: text, id="unsealed"),
    pytest.param(lambda text: text + "~" + "A" * 43, id="wrong seal"),
    pytest.param(lambda text: text.replace("500", "-99999999") + "~" + "A" * 43, id="negative amount"),
])
def test_a_reservation_without_this_deployments_seal_moves_no_counter(monkeypatch: pytest.MonkeyPatch,
                                                                      forgery: object) -> None:
    """A caller that could open an attempt-stage stream and hand it reservation metadata would otherwise make the
    settlement subtract from any counter it names (a quota reset)."""
    stage, limiter = _limited_stage(monkeypatch, forge=forgery)
    before = _charged(limiter)
    drive(stage, ProcessingRequest(request_body=body(HELLO)))
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    answer = (Path(__file__).parent.parent / "fixtures" / "openai" / "response_text.openai.json")
    drive(stage, ProcessingRequest(response_body=HttpBody(body=answer.read_bytes(), end_of_stream=True)))
    asyncio.run(stage.close())
    assert _charged(limiter) == before
    assert limiter.stats.unsealed_refusals == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("answer", "logged"), [
    (b"<html>bad gateway</html>", "answered request r1 with a body that is not JSON"),
    (b'{"content": "a list, surely?"}', "the anthropic translator failed on backend 'an'"),
], ids=["not json", "translator bug"])
def test_an_answer_the_translator_cant_read_is_a_502_and_a_log_line_naming_the_request(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, answer: bytes, logged: str) -> None:
    attempt = Attempt(monkeypatch, "an")
    attempt.send(request_body=body(HELLO))
    attempt.send(response_headers=headers({":status": "200", "content-type": "application/json"}))
    with caplog.at_level("WARNING", logger="ext_proc.stages.attempt"):
        reply = attempt.send(response_body=HttpBody(body=answer, end_of_stream=True))
    error = orjson.loads(reply.response_body.response.body_mutation.body)  # type: ignore[attr-defined]
    assert "sent an answer the gateway could not read" in error["error"]["message"]
    assert any(logged in record.getMessage() and "r1" in record.getMessage() for record in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_a_chain_attempt_converts_translates_and_estimates_the_request_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain attempt is its own ext_proc stream (maybe in another process): it starts from the client's bytes."""
    conversions = counted(monkeypatch, anthropic_messages, "to_openai")
    translations = counted(monkeypatch, BackendInfo, "chat_request")
    estimates = counted(monkeypatch, attempt_module, "estimate_prompt_tokens")
    attempt = Attempt(monkeypatch, "an", route="claude", endpoint="messages",
                      extra="telemetry: {access_log: /dev/null}\n")  # the access log makes the attempt count usage
    hello = {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    reply = attempt.send(request_body=body(hello)).request_body.response
    # an Anthropic body to an Anthropic backend passes through: neither converted nor translated, estimated once
    assert (len(conversions), len(translations), len(estimates)) == (0, 0, 1)
    assert orjson.loads(reply.body_mutation.body) == {**hello, "model": "claude-x"}
