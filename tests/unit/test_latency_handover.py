"""A route ranked by latency learns from attempts another process ran: Envoy balances a request's route stage and its
attempts over the server processes on its own, so the process that ranks is often not the one that timed."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Struct

from ext_proc import constants
from ext_proc.config.loading import parse_config
from ext_proc.routing import latency
from ext_proc.runtime.build import Runtime, compile_runtime
from ext_proc.stages.attempt import AttemptStage
from ext_proc.stages.route import RouteStage
from ext_proc.wire.base_pb2 import Metadata
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest, ProcessingResponse

from .stage_support import CLIENT_KEY, CONFIG, body, drive, headers, set_headers

FASTEST = """  - model: fastest
    policy: latency
    exploration: 0
    backends: [{backend: oa, model: gpt-4o-2024}, {backend: an, model: claude-x}]
  - model: claude
"""
HI = [{"role": "user", "content": "hi"}]
CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}"}
ANSWER = (b'{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o-2024","choices":[{"index":0,'
          b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}')


def _runtime(monkeypatch: pytest.MonkeyPatch, route: str = FASTEST) -> Runtime:
    monkeypatch.setenv("BG_UNIT_OPENAI", "sk-unit-openai")
    monkeypatch.setenv("BG_UNIT_ANTHROPIC", "sk-unit-anthropic")
    return compile_runtime(parse_config(CONFIG.replace("  - model: claude\n", route)))


def _attempt(runtime: Runtime, backend: str, model: str = "fastest") -> AttemptStage:
    stage = AttemptStage(runtime)
    decision = Metadata()
    decision.filter_metadata[constants.METADATA_NAMESPACE].update(
        {constants.METADATA_ROUTE_KEY: model, constants.METADATA_ENDPOINT_KEY: "chat"})
    attribute = Struct()
    attribute.update({constants.UPSTREAM_HOST_METADATA_ATTRIBUTE: (
        'filter_metadata { key: "babelgate" value { fields { key: "backend" value { string_value: "'
        + backend + '" } } } } ')})
    request = ProcessingRequest(request_headers=headers({":method": "POST", ":path": "/v1/chat/completions"}),
                                metadata_context=decision)
    request.attributes["envoy.filters.http.ext_proc"].CopyFrom(attribute)
    drive(stage, request)
    drive(stage, ProcessingRequest(request_body=body({"model": model, "messages": HI})))
    return stage


def _answered(stage: AttemptStage, status: str = "200") -> tuple[ProcessingResponse, ProcessingResponse]:
    head = drive(stage, ProcessingRequest(response_headers=headers({":status": status,
                                                                     "content-type": "application/json"})))
    end = drive(stage, ProcessingRequest(response_body=HttpBody(body=ANSWER, end_of_stream=True)))
    assert head is not None and end is not None
    return head, end


def _route_stage(runtime: Runtime, model: str = "fastest") -> RouteStage:
    stage = RouteStage(runtime)
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    drive(stage, ProcessingRequest(request_body=body({"model": model, "messages": HI})))
    return stage


def test_an_attempt_of_a_latency_route_hands_its_first_byte_then_its_time_to_the_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    head, end = _answered(_attempt(_runtime(monkeypatch), "oa"))
    first = set_headers(head.response_headers.response)[constants.HEADER_LATENCY].split(" ")
    assert first[:2] == [latency.PROCESS_TOKEN, "ok"] and len(first) == 3
    whole = set_headers(end.response_body.response)[constants.HEADER_LATENCY].split(" ")
    assert whole[:2] == [latency.PROCESS_TOKEN, "ok"] and len(whole) == 4
    assert 0 <= float(whole[2]) <= float(whole[3])


def test_a_failed_attempt_hands_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    head, _ = _answered(_attempt(_runtime(monkeypatch), "oa"), status="503")
    assert set_headers(head.response_headers.response)[constants.HEADER_LATENCY].split(" ")[1] == "failed"


def test_an_attempt_of_another_policy_hands_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    head, end = _answered(_attempt(_runtime(monkeypatch), "oa", model="gpt-4o"))
    assert constants.HEADER_LATENCY not in set_headers(head.response_headers.response)
    assert constants.HEADER_LATENCY not in set_headers(end.response_body.response)


def test_a_providers_own_latency_header_never_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = _attempt(_runtime(monkeypatch), "oa", model="gpt-4o")
    head = drive(stage, ProcessingRequest(response_headers=headers({
        ":status": "200", "content-type": "application/json", constants.HEADER_LATENCY: "0123456789ab ok 9 9"})))
    assert head is not None
    assert constants.HEADER_LATENCY in head.response_headers.response.header_mutation.remove_headers


def test_the_ranking_process_learns_from_an_attempt_another_process_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    attempt_process, ranking_process = _runtime(monkeypatch), _runtime(monkeypatch)
    stage = _route_stage(ranking_process)
    _, end = _answered(_attempt(attempt_process, "oa"))
    handed = set_headers(end.response_body.response)[constants.HEADER_LATENCY]
    monkeypatch.setattr(latency, "PROCESS_TOKEN", "another-process")
    reply = drive(stage, ProcessingRequest(response_headers=headers({
        ":status": "200", constants.RESPONSE_HEADER_BACKEND: "oa", constants.HEADER_LATENCY: handed})))
    assert reply is not None
    assert constants.HEADER_LATENCY in reply.response_headers.response.header_mutation.remove_headers
    learned = ranking_process.health.latency
    assert set(learned.first_byte) == set(learned.total) == {"oa"}
    assert learned.first_byte["oa"] == pytest.approx(attempt_process.health.latency.first_byte["oa"], abs=1e-5)


def test_the_attempts_own_process_does_not_count_its_samples_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(monkeypatch)
    stage = _route_stage(runtime)
    attempt = _attempt(runtime, "oa")
    _, end = _answered(attempt)
    recorded = dict(runtime.health.latency.first_byte)
    assert set(recorded) == {"oa"}
    drive(stage, ProcessingRequest(response_headers=headers({
        ":status": "200", constants.RESPONSE_HEADER_BACKEND: "oa",
        constants.HEADER_LATENCY: set_headers(end.response_body.response)[constants.HEADER_LATENCY]})))
    assert runtime.health.latency.first_byte == recorded
    assert runtime.health.latency.total == {}  # the attempt records its whole time when its stream closes


def test_a_sample_for_a_backend_the_gateway_does_not_know_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = _runtime(monkeypatch)
    stage = _route_stage(runtime)
    drive(stage, ProcessingRequest(response_headers=headers({
        ":status": "200", constants.RESPONSE_HEADER_BACKEND: "nope", constants.HEADER_LATENCY: "0123456789ab ok 1"})))
    assert runtime.health.latency.first_byte == {}
