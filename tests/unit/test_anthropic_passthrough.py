"""Anthropic Messages bodies to Anthropic-family backends go as the client wrote them; count_tokens; HEAD /anthropic."""

from __future__ import annotations

import base64

import orjson
import pytest

from ext_proc import constants
from ext_proc.config.loading import parse_config
from ext_proc.demo import anthropic_server, bedrock_server, gemini_server
from ext_proc.demo.answers import Call
from ext_proc.limits.estimate import estimate_prompt_tokens
from ext_proc.providers import anthropic_passthrough
from ext_proc.providers.bedrock_anthropic import ChatStream
from ext_proc.runtime.build import compile_runtime
from ext_proc.stages.endpoints import Endpoint, classify
from ext_proc.stages.route import RouteStage
from ext_proc.stages.stream_relay import PassthroughRelay
from ext_proc.stages.usage_meter import UsageMeter
from ext_proc.streaming.eventstream import encode_event
from ext_proc.streaming.sse import SSEDecoder
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest

from .stage_support import CONFIG, body, drive, headers, runtime, set_headers
from .test_attempt_stage import Attempt

CLAUDE_CODE = {
    "model": "claude", "max_tokens": 32000, "stream": True,
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "mcp_servers": [{"type": "url", "url": "https://mcp.example/sse", "name": "x"}],
}
CLIENT = {":method": "POST", ":path": "/anthropic/v1/messages?beta=true", ":authority": "gw",
          "x-api-key": "bg-test-client-key", "content-type": "application/json",
          "anthropic-beta": "context-management-2025-06-27, interleaved-thinking-2025-05-14"}
BETAS = ["context-management-2025-06-27", "interleaved-thinking-2025-05-14"]


@pytest.mark.parametrize(("path", "method", "expected"), [
    ("/anthropic/v1/messages?beta=true", "POST", Endpoint.MESSAGES),
    ("/anthropic/v1/messages/count_tokens?beta=true", "POST", Endpoint.COUNT_TOKENS),
    ("/anthropic", "HEAD", Endpoint.PROBE),
    ("/anthropic/", "HEAD", Endpoint.PROBE),
    ("/anthropic/v1", "HEAD", Endpoint.PROBE),
    ("/anthropic/api/hello", "HEAD", Endpoint.PROBE),
])
def test_claude_code_paths_route_like_the_path_without_the_query(path: str, method: str, expected: Endpoint) -> None:
    assert classify(method, path)[0] is expected


@pytest.mark.parametrize("path", ["/anthropic", "/anthropic/", "/anthropic/v1", "/anthropic/api/hello"])
def test_head_anthropic_answers_200_without_a_body_or_a_key(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    stage = RouteStage(runtime(monkeypatch))
    reply = drive(stage, ProcessingRequest(request_headers=headers({":method": "HEAD", ":path": path},
                                                                   end_of_stream=True)))
    assert reply.immediate_response.status.code == 200
    assert reply.immediate_response.body == b""


# --- what each service gets ------------------------------------------------------------------------------------------


def test_anthropic_gets_the_body_with_its_model_and_the_betas_as_the_header() -> None:
    sent, extra = anthropic_passthrough.request("anthropic", CLAUDE_CODE, "claude-opus-4-1", BETAS)
    assert sent == {**CLAUDE_CODE, "model": "claude-opus-4-1"}
    assert extra == (("anthropic-beta", ",".join(BETAS)),)


def test_bedrock_gets_its_version_and_the_betas_in_the_body_without_model_or_stream() -> None:
    sent, extra = anthropic_passthrough.request("bedrock-anthropic", CLAUDE_CODE, "us.anthropic.claude-x-v1:0", BETAS)
    expected = {k: v for k, v in CLAUDE_CODE.items() if k not in ("model", "stream")}
    assert sent == {"anthropic_version": "bedrock-2023-05-31", **expected, "anthropic_beta": BETAS}
    assert extra == ()


def test_vertex_gets_its_version_keeps_stream_and_takes_the_betas_as_the_header() -> None:
    sent, extra = anthropic_passthrough.request("vertex-anthropic", CLAUDE_CODE, "claude-x@2025", BETAS)
    expected = {k: v for k, v in CLAUDE_CODE.items() if k != "model"}
    assert sent == {"anthropic_version": "vertex-2023-10-16", **expected}
    assert extra == (("anthropic-beta", ",".join(BETAS)),)


def test_the_client_body_is_not_changed() -> None:
    before = orjson.dumps(CLAUDE_CODE)
    for schema in anthropic_passthrough.SCHEMAS:
        anthropic_passthrough.request(schema, CLAUDE_CODE, "m", BETAS)
    assert orjson.dumps(CLAUDE_CODE) == before


def test_bedrock_counts_an_invoke_model_body_in_base64() -> None:
    counted = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
    sent, _ = anthropic_passthrough.count_request("bedrock-anthropic", counted, "anthropic.claude-x", BETAS)
    inner = orjson.loads(base64.b64decode(sent["input"]["invokeModel"]["body"]))
    assert inner == {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1,
                     "messages": counted["messages"], "anthropic_beta": BETAS}
    assert anthropic_passthrough.count_answer("bedrock-anthropic", {"inputTokens": 12}) == {"input_tokens": 12}


def test_bedrock_counts_a_thinking_request_with_room_for_its_budget() -> None:
    counted = {"model": "c", "messages": [{"role": "user", "content": "hi"}],
               "thinking": {"type": "enabled", "budget_tokens": 31999}}
    sent, _ = anthropic_passthrough.count_request("bedrock-anthropic", counted, "anthropic.claude-x", [])
    assert orjson.loads(base64.b64decode(sent["input"]["invokeModel"]["body"]))["max_tokens"] == 32000


def test_vertex_counts_with_the_model_in_the_body() -> None:
    counted = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
    sent, _ = anthropic_passthrough.count_request("vertex-anthropic", counted, "claude-x@2025", [])
    assert sent == {"anthropic_version": "vertex-2023-10-16", "model": "claude-x@2025", "messages": counted["messages"]}


def test_gemini_counts_a_generate_content_request() -> None:
    generate = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 9}}
    sent, _ = anthropic_passthrough.count_request("gemini", {}, "gemini-2.5-flash", [], generate)
    assert sent == {"generateContentRequest": {"model": "models/gemini-2.5-flash", "contents": generate["contents"]}}
    assert anthropic_passthrough.count_answer("gemini", {"totalTokens": 3}) == {"input_tokens": 3}


# --- the stages ------------------------------------------------------------------------------------------------------


def test_a_body_the_client_format_refuses_still_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """`context_management` and `mcp_servers` are the provider's to judge on an Anthropic-only route."""
    stage = RouteStage(runtime(monkeypatch))
    drive(stage, ProcessingRequest(request_headers=headers(CLIENT)))
    reply = drive(stage, ProcessingRequest(request_body=body(CLAUDE_CODE))).request_body.response
    assert orjson.loads(reply.body_mutation.body) == {**CLAUDE_CODE, "model": "claude-x"}
    assert set_headers(reply)["anthropic-beta"] == ",".join(BETAS)


def test_a_chain_attempt_reads_the_betas_from_the_route_stage_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an", route="claude", endpoint="messages")
    attempt.stage._betas = anthropic_passthrough.betas(CLIENT["anthropic-beta"])  # what the metadata carries
    reply = attempt.send(request_body=body(CLAUDE_CODE)).request_body.response
    assert orjson.loads(reply.body_mutation.body) == {**CLAUDE_CODE, "model": "claude-x"}
    assert set_headers(reply)["anthropic-beta"] == ",".join(BETAS)


def test_an_untranslated_answer_reaches_the_client_as_it_came(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt = Attempt(monkeypatch, "an", route="claude", endpoint="messages",
                      extra="telemetry: {access_log: /dev/null}\n")
    attempt.send(request_body=body({**CLAUDE_CODE, "stream": False}))
    attempt.send(response_headers=headers({":status": "200", "content-type": "application/json"}))
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}},
                           {"type": "text", "text": "hello"}],
               "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 7, "output_tokens": 3}, "context_management": {"applied_edits": []}}
    reply = attempt.send(response_body=HttpBody(body=orjson.dumps(message), end_of_stream=True))
    assert not reply.response_body.response.HasField("body_mutation")
    meter = attempt.stage._meter
    assert meter is not None and meter.final().input_tokens == 7 and meter.final().output_tokens == 3


def _bedrock_chunk(event: dict) -> bytes:
    return encode_event("chunk", orjson.dumps({"bytes": base64.b64encode(orjson.dumps(event)).decode(), "p": "ab"}))


def test_bedrock_frames_become_the_anthropic_events_they_carry() -> None:
    events = [{"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                                    "model": "c", "usage": {"input_tokens": 5, "output_tokens": 1}}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
              {"type": "message_stop"}]
    meter = UsageMeter(1, 4.0, False)
    stream = ChatStream("c", 0, True)
    meter.stream = stream
    relay = PassthroughRelay("application/vnd.amazon.eventstream", stream, None, meter)
    out = relay.relay(b"".join(_bedrock_chunk(e) for e in events), True)
    decoded = SSEDecoder().feed(out)
    assert [(e.event, orjson.loads(e.data)) for e in decoded] == [(e["type"], e) for e in events]
    assert meter.final().input_tokens == 5 and meter.final().output_tokens == 2


def test_a_bedrock_stream_says_it_is_server_sent_events(monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIG.replace("backends:\n", """backends:
  - {id: br, schema: bedrock-anthropic, base_url: "https://bedrock-runtime.us-east-1.amazonaws.com",
     aws: {region: us-east-1}}
""", 1).replace("routes:\n", """routes:
  - model: bedrock-claude
    backends: [{backend: br, model: anthropic.claude-x}]
""", 1)
    runtime(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-secret")
    stage = RouteStage(compile_runtime(parse_config(config)))
    drive(stage, ProcessingRequest(request_headers=headers(CLIENT)))
    sent = drive(stage, ProcessingRequest(request_body=body({**CLAUDE_CODE, "model": "bedrock-claude"})))
    assert set_headers(sent.request_body.response)[":path"] == "/model/anthropic.claude-x/invoke-with-response-stream"
    head = drive(stage, ProcessingRequest(response_headers=headers(
        {":status": "200", "content-type": "application/vnd.amazon.eventstream", "content-length": "10"})))
    response = head.response_headers.response
    assert set_headers(response)["content-type"] == "text/event-stream"
    assert "content-length" in response.header_mutation.remove_headers


def test_count_tokens_on_a_backend_that_cannot_count_is_the_gateway_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIG.replace("routes:\n", "routes:\n  - model: gpt-only\n    backends: [{backend: oa, model: g}]\n", 1)
    runtime(monkeypatch)
    stage = RouteStage(compile_runtime(parse_config(config)))
    drive(stage, ProcessingRequest(request_headers=headers(
        {**CLIENT, ":path": "/anthropic/v1/messages/count_tokens?beta=true"})))
    counted = {"model": "gpt-only", "messages": [{"role": "user", "content": "hello there"}]}
    reply = drive(stage, ProcessingRequest(request_body=body(counted)))
    assert reply.immediate_response.status.code == 200
    expected = estimate_prompt_tokens({"messages": [{"role": "user", "content": "hello there"}]}, 4.0)
    assert orjson.loads(reply.immediate_response.body) == {"input_tokens": expected}


def test_count_tokens_on_anthropic_asks_its_counting_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = RouteStage(runtime(monkeypatch, "limits: {per_key: [{window: hour, total_tokens: 10}]}\n"))
    drive(stage, ProcessingRequest(request_headers=headers({**CLIENT, ":path": "/anthropic/v1/messages/count_tokens"})))
    counted = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "context_management": {}}
    full = drive(stage, ProcessingRequest(request_body=body(counted)))
    reply = full.request_body.response
    assert set_headers(reply)[":path"] == "/v1/messages/count_tokens"
    assert orjson.loads(reply.body_mutation.body) == {**counted, "model": "claude-x"}
    decision = full.dynamic_metadata.fields[constants.METADATA_NAMESPACE].struct_value.fields
    assert constants.METADATA_RESERVATION_KEY not in decision  # counting reserves nothing
    head = drive(stage, ProcessingRequest(response_headers=headers({":status": "200",
                                                                    "content-type": "application/json"})))
    assert "x-ratelimit-limit-tokens" not in set_headers(head.response_headers.response)
    answer = drive(stage, ProcessingRequest(response_body=HttpBody(body=b'{"input_tokens": 4}', end_of_stream=True)))
    assert orjson.loads(answer.response_body.response.body_mutation.body) == {"input_tokens": 4}


GUARDED = CONFIG.replace("  - model: claude\n", """  - model: claude
    guardrails:
      - {name: pii, pii: [email], mode: redact, apply_to: [request, response]}
      - {name: codes, deny_words: [launch code], mode: block, apply_to: [response]}
""", 1)


def _guarded_stage(monkeypatch: pytest.MonkeyPatch, payload: dict) -> RouteStage:
    runtime(monkeypatch)
    stage = RouteStage(compile_runtime(parse_config(GUARDED)))
    drive(stage, ProcessingRequest(request_headers=headers(CLIENT)))
    sent = drive(stage, ProcessingRequest(request_body=body(payload))).request_body.response
    assert "a@b.example" not in sent.body_mutation.body.decode()  # the request was redacted before it passed
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "application/json"})))
    return stage


def test_guardrails_redact_an_untranslated_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _guarded_stage(monkeypatch, {**CLAUDE_CODE, "stream": False,
                                         "messages": [{"role": "user", "content": "mail a@b.example"}]})
    message = {"id": "m", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "write to a@b.example"}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=orjson.dumps(message), end_of_stream=True)))
    answer = orjson.loads(reply.response_body.response.body_mutation.body)
    assert "a@b.example" not in answer["content"][0]["text"] and answer["type"] == "message"


def test_guardrails_end_an_untranslated_stream_with_an_anthropic_error(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _guarded_stage(monkeypatch, {**CLAUDE_CODE, "messages": [{"role": "user", "content": "a@b.example"}]})
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "text/event-stream"})))
    events = [("message_start", {"type": "message_start", "message": {
                  "id": "m", "type": "message", "role": "assistant", "content": [], "model": "c",
                  "usage": {"input_tokens": 1, "output_tokens": 1}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "the launch code is 1"}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "more"}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0})]  # the held text is checked
    raw = b"".join(b"event: " + n.encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for n, e in events)
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=raw, end_of_stream=False)))
    out = SSEDecoder().feed(reply.response_body.response.body_mutation.body)
    assert [e.event for e in out][:2] == ["message_start", "content_block_start"]
    assert out[-1].event == "error" and b"launch" not in b"".join(e.data for e in out[2:-1])
    assert orjson.loads(out[-1].data)["type"] == "error"


def test_guardrails_redact_an_untranslated_stream_event(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _guarded_stage(monkeypatch, {**CLAUDE_CODE, "messages": [{"role": "user", "content": "a@b.example"}]})
    drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": "text/event-stream"})))
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "mail a@b.example"}}
    raw = b"event: content_block_delta\ndata: " + orjson.dumps(delta) + b"\n\n"
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=raw, end_of_stream=False)))
    assert SSEDecoder().feed(reply.response_body.response.body_mutation.body) == []  # held back: the window
    stop = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    reply = drive(stage, ProcessingRequest(response_body=HttpBody(body=stop, end_of_stream=False)))
    out = SSEDecoder().feed(reply.response_body.response.body_mutation.body)
    assert [e.event for e in out] == ["content_block_delta", "content_block_stop"]
    assert orjson.loads(out[0].data)["delta"]["text"] == "mail [REDACTED:EMAIL]"


# --- the demo providers count as the real services do -----------------------------------------------------------------

COUNTED = {"model": "claude-x", "system": "Be brief.", "messages": [{"role": "user", "content": "how many?"}]}


def test_demo_anthropic_counts_and_refuses_max_tokens() -> None:
    auth = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    counted = anthropic_server.answer(Call("d", "POST", "/v1/messages/count_tokens", auth, COUNTED, "k"))
    assert counted.status == 200 and orjson.loads(counted.body)["input_tokens"] > 0
    refused = anthropic_server.answer(Call("d", "POST", "/v1/messages/count_tokens", auth,
                                           {**COUNTED, "max_tokens": 5}, "k"))
    assert refused.status == 400


def test_demo_bedrock_counts_an_invoke_model_body() -> None:
    sent, _ = anthropic_passthrough.count_request("bedrock-anthropic", COUNTED, "anthropic.claude-x", [])
    tokens = bedrock_server._count_tokens(_call(sent), "anthropic.claude-x")
    assert tokens.status == 200 and orjson.loads(tokens.body)["inputTokens"] > 0


def test_demo_gemini_counts_on_both_apis() -> None:
    generate = {"contents": [{"role": "user", "parts": [{"text": "how many?"}]}],
                "systemInstruction": {"parts": [{"text": "Be brief."}]}}
    for schema, vertex in (("gemini", False), ("vertex-gemini", True)):
        sent, _ = anthropic_passthrough.count_request(schema, {}, "gemini-2.5-flash", [], generate)
        tokens = gemini_server._count_tokens(_call(sent), "gemini-2.5-flash", vertex)
        assert tokens.status == 200 and orjson.loads(tokens.body)["totalTokens"] > 0


def _call(payload: dict) -> Call:
    return Call("d", "POST", "/", {}, payload, None)
