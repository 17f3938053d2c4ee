"""Traces through the real Envoy, exported by OTLP/HTTP to a collector stand-in on 127.0.0.1: a SERVER span per
request parented on the client's `traceparent`, a CLIENT span per attempt under it, GenAI attributes, and the trace
context handed on to the provider."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import openai
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ext_proc.auth.virtual_keys import generate_key, hash_key
from ext_proc.config.loading import load_config
from ext_proc.launch.processes import Supervisor, free_port
from ext_proc.launch.stack import Stack, start_stack

from .support import fault, start_demo

PROVIDER_SECRET = "sk-trace-provider-secret-42"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
HELLO = [{"role": "user", "content": "hi"}]
SERVER, CLIENT = 2, 3  # Span.SpanKind values in the OTLP protos


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
        deadline = time.monotonic() + 10
        while True:
            found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def _start(supervisor: Supervisor, traces: dict) -> tuple[Stack, str, dict[str, int]]:
    ports = {name: start_demo(supervisor, name, "openai", PROVIDER_SECRET) for name in ("first", "second")}
    key = generate_key()
    config = {
        "listener": {"port": free_port(), "admin_port": free_port()}, "ext_proc": {"port": free_port()},
        "backends": [{"id": n, "schema": "openai", "base_url": f"http://127.0.0.1:{p}/v1",
                      "api_key": {"env": "TRACE_KEY"}, "outlier_detection": None} for n, p in ports.items()],
        "routes": [{"model": "chain", "backends": [{"backend": "first", "model": "f"},
                                                   {"backend": "second", "model": "s"}]},
                   {"model": "direct", "backends": [{"backend": "second", "model": "d"}]}],
        "virtual_keys": [{"id": "k", "hash": hash_key(key)}],
        "routing": {"cooldown_max": "1ms"},
        "telemetry": {"traces": traces},
    }
    workdir = Path(tempfile.mkdtemp(prefix="trace-"))
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    stack = start_stack(load_config(path), path, workdir, supervisor, env={"TRACE_KEY": PROVIDER_SECRET})
    return stack, key, ports


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Stack, str, Collector, dict[str, int]]]:
    collector = Collector()
    supervisor = Supervisor()
    try:
        stack, key, ports = _start(supervisor, {"otlp_endpoint": collector.url})
        yield stack, key, collector, ports
    finally:
        supervisor.stop_all()
        collector.server.shutdown()


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
    deadline = time.monotonic() + 10
    while len(collector.spans) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    new = collector.spans[before:]
    request = next(s for s in new if s.kind == SERVER and s.name == "chat direct")
    attempt = next(s for s in new if s.kind == CLIENT and s.trace_id == request.trace_id)
    assert attempt.parent_span_id == request.span_id and not request.parent_span_id


def test_spans_carry_no_secret(traced: tuple) -> None:
    stack, key, collector, _ = traced
    _client(stack, key).chat.completions.create(model="direct", messages=HELLO)
    time.sleep(1)
    dump = b"".join(span.SerializeToString() for span in collector.spans)
    assert PROVIDER_SECRET.encode() not in dump and key.encode() not in dump


def test_otlp_over_grpc() -> None:
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
    supervisor = Supervisor()
    try:
        stack, key, _ = _start(supervisor, {"otlp_endpoint": f"http://127.0.0.1:{port}", "protocol": "grpc"})
        _client(stack, key).chat.completions.create(model="chain", messages=HELLO)
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {span.kind for span in received} == {SERVER, CLIENT}
    finally:
        supervisor.stop_all()
        server.stop(0)
