"""Streams metered aside: the route stage hands a stream to the stream meter (the route's twin, the decision in the
metadata), the stream meter settles it from a copy, and the renderer gives exactly the eligible backends a twin."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ext_proc import constants
from ext_proc.config.loading import parse_config
from ext_proc.envoy_config.bootstrap import render_bootstrap
from ext_proc.envoy_config.stream_meter import COPY_MODE, IDLE_MODE, metered_backends
from ext_proc.limits.limiter import Limiter
from ext_proc.runtime.build import Runtime, compile_runtime
from ext_proc.server import respond
from ext_proc.stages.route import RouteStage
from ext_proc.stages.stream_meter import StreamMeterStage
from ext_proc.wire.base_pb2 import Metadata
from ext_proc.wire.external_processor_pb2 import HttpBody, ProcessingRequest

from .stage_support import CLIENT_KEY, CONFIG, body, counted, drive, headers, runtime

CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}",
        "content-type": "application/json"}
DIRECT_OPENAI = CONFIG.replace("routes:\n", """routes:
  - model: mini
    backends: [{backend: oa, model: gpt-4o-mini}]
""", 1)
LIMITS = "limits: {per_key: [{window: hour, total_tokens: 100000}]}\n"
METERED = DIRECT_OPENAI + LIMITS
ASKS_USAGE = {"model": "mini", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "hi"}]}
SSE = {":status": "200", "content-type": "text/event-stream; charset=utf-8"}


def _chunk(**fields: object) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", **fields}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


TEXT = (_chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}])
        + _chunk(choices=[{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]))
END = (_chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
       + _chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
       + b"data: [DONE]\n\n")


def _compiled(monkeypatch: pytest.MonkeyPatch, config: str) -> Runtime:
    runtime(monkeypatch)  # the provider secrets
    return compile_runtime(parse_config(config))


def _through_route_stage(monkeypatch: pytest.MonkeyPatch, config: str = METERED, answer: dict[str, str] = SSE,
                         request: dict | None = None) -> tuple[Runtime, dict[str, str], Metadata, object]:
    """A direct OpenAI stream through the route stage: (runtime, headers its request reply set, the metadata Envoy
    would forward, the answer headers' mode override)."""
    compiled = _compiled(monkeypatch, config)
    stage = RouteStage(compiled)
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    reply = drive(stage, ProcessingRequest(request_body=body(request or ASKS_USAGE)))
    common = reply.request_body.response
    set_ = {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}
    metadata = Metadata()
    namespace = constants.METADATA_NAMESPACE
    metadata.filter_metadata[namespace].CopyFrom(reply.dynamic_metadata.fields[namespace].struct_value)
    mode = drive(stage, ProcessingRequest(response_headers=headers(answer))).mode_override
    asyncio.run(stage.close())
    return compiled, set_, metadata, mode


def _meter(compiled: Runtime, metadata: Metadata, answer: dict[str, str], pieces: list[tuple[bytes, bool]]) -> None:
    """The copies Envoy sends the stream meter, in one event loop (a settlement started at the end finishes in
    `close`), then its stream's end."""
    async def copies() -> None:
        stage = StreamMeterStage(compiled)
        assert await respond(stage, ProcessingRequest(response_headers=headers(answer),
                                                      metadata_context=metadata)) is None
        for piece, end in pieces:
            assert await respond(stage, ProcessingRequest(response_body=HttpBody(body=piece, end_of_stream=end),
                                                          metadata_context=metadata)) is None
        await stage.close()
    asyncio.run(copies())


def test_a_stream_whose_client_asks_usage_goes_to_the_twin_route_with_its_decision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settled = counted(monkeypatch, Limiter, "settle")
    compiled, set_, metadata, mode = _through_route_stage(monkeypatch)
    assert set_[constants.HEADER_CHAIN] == "bg_direct_oa.metered"
    decision = {k: v.string_value for k, v in metadata.filter_metadata["babelgate"].fields.items()}
    assert decision["meter_backend"] == "oa" and decision["meter_model"] == "gpt-4o-mini"
    assert decision["meter_estimate"].isdigit() and int(decision["meter_estimate"]) > 0
    assert compiled.limiter is not None and compiled.limiter.unseal(decision["reservation"]) is not None
    # the chunks pass Envoy without this stage, which settles nothing: the stream meter does
    assert mode.response_body_mode == mode.NONE
    assert settled == []


@pytest.mark.parametrize(("why", "config", "request_fields"), [
    ("the client did not ask for usage", METERED, {"stream_options": None}),
    ("telemetry reads the stream", METERED + "telemetry: {metrics: {prometheus_port: 9}}\n", {}),
    ("turned off", METERED.replace(LIMITS, "limits: {meter_streams_aside: false, per_key: [{window: hour, "
                                           "total_tokens: 100000}]}\n"), {}),
    ("nothing to settle", DIRECT_OPENAI, {}),
])
def test_other_streams_stay_on_their_route(monkeypatch: pytest.MonkeyPatch, why: str, config: str,
                                           request_fields: dict) -> None:
    request = {k: v for k, v in {**ASKS_USAGE, **request_fields}.items() if v is not None}
    _, set_, metadata, mode = _through_route_stage(monkeypatch, config, request=request)
    assert set_[constants.HEADER_CHAIN] == "bg_direct_oa", why
    assert "meter_backend" not in metadata.filter_metadata["babelgate"].fields, why
    if config is METERED:  # read in the stream's path, usage settled there
        assert mode.response_body_mode != mode.NONE, why


@pytest.mark.parametrize("answer", [{":status": "500", "content-type": "application/json"},
                                    {":status": "200", "content-type": "application/json"}])
def test_an_answer_that_is_no_stream_is_read_and_settled_in_its_path(monkeypatch: pytest.MonkeyPatch,
                                                                     answer: dict[str, str]) -> None:
    """The twin was chosen, but the answer is an error or not a stream: the route stage reads it, and the stream
    meter, seeing the same headers, leaves it alone."""
    compiled, _, metadata, mode = _through_route_stage(monkeypatch, answer=answer)
    assert mode.response_body_mode == mode.BUFFERED  # the route stage settles (or releases) with what it reads
    settled = counted(monkeypatch, Limiter, "settle")
    _meter(compiled, metadata, answer, [(b'{"error": {"message": "x"}}', True)])
    assert settled == []


def test_the_stream_meter_settles_with_the_usage_the_stream_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, _, metadata, _ = _through_route_stage(monkeypatch)
    settled = counted(monkeypatch, Limiter, "settle")
    stored = counted(monkeypatch, type(compiled.limiter.store), "adjust")  # type: ignore[union-attr]
    _meter(compiled, metadata, SSE, [(TEXT, False), (END, False), (b"", True)])
    assert len(settled) == 1 and len(stored) == 1  # what the forged decisions below never reach
    _, reservation, usage, backend, model = settled[0]
    assert (usage.input_tokens, usage.output_tokens, backend, model) == (9, 2, "oa", "gpt-4o-mini")
    assert reservation.entries and reservation.primary_backend == "oa"  # the sealed reservation, opened


def test_a_copy_cut_before_its_end_is_charged_with_what_was_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, _, metadata, _ = _through_route_stage(monkeypatch)
    estimate = int(metadata.filter_metadata["babelgate"].fields["meter_estimate"].string_value)
    settled = counted(monkeypatch, Limiter, "settle")
    _meter(compiled, metadata, SSE, [(TEXT, False)])
    assert len(settled) == 1
    usage = settled[0][2]
    assert (usage.input_tokens, usage.output_tokens) == (estimate, 2)  # "Hello": 5 characters, 4 per token


@pytest.mark.parametrize("tampered", ["reservation", "meter_backend", "meter_estimate"])
def test_a_copy_without_a_genuine_decision_settles_nothing(monkeypatch: pytest.MonkeyPatch, tampered: str) -> None:
    """The ext_proc port is a trust boundary: a stream opened as the stream meter with a forged reservation (or none,
    or a backend the gateway doesn't have) changes no count."""
    compiled, _, metadata, _ = _through_route_stage(monkeypatch)
    fields = metadata.filter_metadata["babelgate"].fields
    fields[tampered].string_value = {"reservation": fields["reservation"].string_value[:-4] + "AAAA",
                                     "meter_backend": "nope", "meter_estimate": "-1"}[tampered]
    stored = counted(monkeypatch, type(compiled.limiter.store), "adjust")  # type: ignore[union-attr]
    _meter(compiled, metadata, SSE, [(TEXT, False), (END, True)])
    assert stored == []


def test_only_eligible_backends_get_a_twin_and_the_meter_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime(monkeypatch)
    assert metered_backends(parse_config(METERED)) == {"oa"}
    for config in (DIRECT_OPENAI, METERED + "telemetry: {access_log: /dev/stdout}\n",
                   METERED.replace("api_key: {env: BG_UNIT_OPENAI}}",
                                   "api_key: {env: BG_UNIT_OPENAI}, stream_idle_timeout: 5s}", 1)):
        assert "oa" not in metered_backends(parse_config(config))
    rendered = orjson.loads(orjson.dumps(render_bootstrap(parse_config(METERED)).to_dict()))
    manager = rendered["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
    names = [f["name"] for f in manager["httpFilters"]]
    assert names[-3:] == ["babelgate.route_stage", "babelgate.stream_meter", "envoy.filters.http.router"]
    meter = manager["httpFilters"][-2]["typedConfig"]
    assert meter["observabilityMode"] is True and meter["failureModeAllow"] is True
    assert meter["metadataOptions"]["forwardingNamespaces"]["untyped"] == ["babelgate"]
    assert meter["processingMode"] == IDLE_MODE.to_dict()
    routes = {r["name"]: r for r in manager["routeConfig"]["virtualHosts"][0]["routes"]}
    plain, twin = routes["bg_direct_oa"], routes["bg_direct_oa.metered"]
    assert twin["match"]["headers"][0]["stringMatch"] == {"exact": "bg_direct_oa.metered"}
    assert twin["match"]["dynamicMetadata"] == plain["match"]["dynamicMetadata"]  # only the route stage picks it
    assert twin["route"] == plain["route"]
    assert twin["requestHeadersToRemove"] == plain["requestHeadersToRemove"]
    assert twin["typedPerFilterConfig"]["babelgate.stream_meter"]["overrides"]["processingMode"] == \
        COPY_MODE.to_dict()
    assert "typedPerFilterConfig" not in plain


def _filter_names(config: str) -> list[str]:
    rendered = orjson.loads(orjson.dumps(render_bootstrap(parse_config(config)).to_dict()))
    manager = rendered["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
    return [f["name"] for f in manager["httpFilters"]]


def test_the_meter_filter_is_there_before_any_twin_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`babelgate up` reloads routes, not the listener: a reload that adds limits adds twins, and the filter must
    already be in the listener (inert until then: its own mode sends nothing). Switched off, neither is rendered."""
    runtime(monkeypatch)
    assert metered_backends(parse_config(DIRECT_OPENAI)) == set()  # no limits yet: no twin
    assert constants.STREAM_METER_FILTER in _filter_names(DIRECT_OPENAI)
    off = METERED.replace(LIMITS, "limits: {meter_streams_aside: false, per_key: [{window: hour, total_tokens: 9}]}\n")
    assert metered_backends(parse_config(off)) == set()
    assert constants.STREAM_METER_FILTER not in _filter_names(off)
