"""Traces through the real Envoy, exported by OTLP/HTTP to a collector stand-in on 127.0.0.1: a SERVER span per
request parented on the client's `traceparent`, a CLIENT span per attempt under it, GenAI attributes, and the trace
context handed on to the provider."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ext_proc.launch.stack import Stack

from ..eventually import eventually
from .gateways import GatewayBuilder
from .support import fault

PROVIDER_SECRET = "sk-trace-provider-secret-42"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HELLO = [{"role": "user", "content": "hi"}]
SERVER, CLIENT = 2, 3  # Span.SpanKind values in the OTLP protos
EXPORT_TIMEOUT = 30.0
"""Seconds spans may take to reach the collector: the exporter batches them, and a busy machine delays it."""


class Collector:
    def __init__(self) -> None:
        self.spans: list = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def trace(self, trace_id: str, count: int) -> list:
        """The spans of one trace, once `count` of them have arrived (the exporter sends them in batches)."""
        found: list = []

        def arrived() -> bool:
            found[:] = [s for s in list(self.spans) if s.trace_id.hex() == trace_id]
            return len(found) >= count

        eventually(arrived, timeout=EXPORT_TIMEOUT, what=f"{count} spans of trace {trace_id}")
        return found


def _start(build: GatewayBuilder, traces: dict) -> tuple[Stack, str, dict[str, int]]:
    ports = {}
    for name in ("first", "second"):
        demo = build.demo(name, api_key=PROVIDER_SECRET)
        build.backend(name, demo, outlier_detection=None)
        ports[name] = demo.port
    build.route("chain", ("first", "f"), ("second", "s"))
    build.route("direct", ("second", "d"))
    key = build.key("k")
    build.set(routing={"cooldown_max": "1ms"}, telemetry={"traces": traces})
    return build.start().stack, key, ports


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, Collector, dict[str, int]]]:
    collector = Collector()
    with GatewayBuilder(tmp_path_factory.mktemp("traced")) as build:
        build.on_stop(collector.server.shutdown)
        stack, key, ports = _start(build, {"otlp_endpoint": collector.url})
        yield stack, key, collector, ports


def _client(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_failover_request_is_one_trace_under_the_clients_span(traced: tuple) -> None:
    stack, key, collector, ports = traced
    trace_id = CLIENT_TRACE[:-4] + "0001"
    header = {"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01", **fault("first:503")}
    _client(stack, key).chat.completions.create(model="chain", messages=HELLO, extra_headers=header)
    spans = collector.trace(trace_id, 3)
    request = [s for s in spans if s.kind == SERVER]
    attempts = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(request) == 1 and len(attempts) == 2
    assert request[0].parent_span_id.hex() == CLIENT_SPAN
    assert all(a.parent_span_id == request[0].span_id for a in attempts)
    assert request[0].name == "chat chain"
    attributes = [{a.key: a.value for a in span.attributes} for span in attempts]
    assert [a["babelgate.backend"].string_value for a in attributes] == ["first", "second"]
    assert attributes[0]["http.response.status_code"].int_value == 503
    assert attributes[1]["gen_ai.response.model"].string_value == "s"
    assert attributes[1]["gen_ai.usage.output_tokens"].int_value > 0
    assert attributes[1]["gen_ai.provider.name"].string_value == "openai"
    assert attempts[1].name == "chat s"
    sent = httpx.get(f"http://127.0.0.1:{ports['second']}/_demo/requests").json()[-1]["headers"]
    assert sent["traceparent"] == f"00-{trace_id}-{attempts[1].span_id.hex()}-01"


def test_direct_route_and_a_new_trace(traced: tuple) -> None:
    stack, key, collector, _ = traced
    before = len(collector.spans)
    raw = _client(stack, key).chat.completions.with_raw_response.create(model="direct", messages=HELLO)
    assert raw.status_code == 200

    def request_and_attempt() -> tuple | None:
        new = collector.spans[before:]
        request = next((s for s in new if s.kind == SERVER and s.name == "chat direct"), None)
        attempt = next((s for s in new if request is not None and s.kind == CLIENT and s.trace_id == request.trace_id),
                       None)
        return (request, attempt) if attempt is not None else None

    request, attempt = eventually(request_and_attempt, timeout=EXPORT_TIMEOUT, what="the request's and attempt's spans")
    assert attempt.parent_span_id == request.span_id and not request.parent_span_id


def test_spans_carry_no_secret(traced: tuple) -> None:
    stack, key, collector, _ = traced
    trace_id = CLIENT_TRACE[:-4] + "0003"
    _client(stack, key).chat.completions.create(model="direct", messages=HELLO,
                                                extra_headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"})
    collector.trace(trace_id, 2)  # this request's spans (the request's and its attempt's) have arrived
    dump = b"".join(span.SerializeToString() for span in list(collector.spans))
    assert PROVIDER_SECRET.encode() not in dump and key.encode() not in dump


def test_otlp_over_grpc(tmp_path: Path) -> None:
    received: list = []

    def export(request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:
        received.extend(span for resource in request.resource_spans for scope in resource.scope_spans
                        for span in scope.spans)
        return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=ExportTraceServiceRequest.FromString,
            response_serializer=ExportTraceServiceResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with GatewayBuilder(tmp_path) as build:
        build.on_stop(lambda: server.stop(0))
        stack, key, _ = _start(build, {"otlp_endpoint": f"http://127.0.0.1:{port}", "protocol": "grpc"})
        _client(stack, key).chat.completions.create(model="chain", messages=HELLO)
        eventually(lambda: {span.kind for span in list(received)} == {SERVER, CLIENT}, timeout=EXPORT_TIMEOUT,
                   what="a SERVER and a CLIENT span over gRPC")
