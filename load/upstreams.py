"""The fake upstream every scenario shares: one Envoy serving canned provider answers with `direct_response`
(behind a buffer filter, so the request body is read first, as a real provider would), plus the baseline proxy
(plain Envoy in front of it). Neither side of a comparison is limited by a Python upstream."""

from __future__ import annotations

from pathlib import Path

import orjson
import yaml

from ext_proc.launch.processes import Supervisor, free_port, wait_for_envoy
from ext_proc.launch.stack import envoy_argv

OPENAI_ANSWER = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}).decode()
ANTHROPIC_ANSWER = orjson.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 9, "output_tokens": 1}}).decode()


def _anthropic_sse(chunks: int) -> str:
    events = [("message_start", {"type": "message_start", "message": {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": f"word{i} "}}) for i in range(chunks)]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": chunks}}),
               ("message_stop", {"type": "message_stop"})]
    return "".join(f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n" for name, data in events)


STREAM_CHUNKS = 20
ANTHROPIC_STREAM = _anthropic_sse(STREAM_CHUNKS)

# path prefix on the upstream -> (content type, body)
ANSWERS = {
    "/v1/chat/completions": ("application/json", OPENAI_ANSWER),
    "/v1/messages": ("application/json", ANTHROPIC_ANSWER),
    "/stream/v1/messages": ("text/event-stream", ANTHROPIC_STREAM),
}


def _listener(name: str, port: int, routes: list[dict], filters: list[dict]) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                         "HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}


def upstream_config(upstream_port: int, baseline_port: int, admin_port: int) -> dict:
    """One Envoy holding the fake upstream and the baseline proxy in front of it."""
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1 << 20}}
    routes = [{"match": {"path": path}, "direct_response": {"status": 200, "body": {"inline_string": body}},
               "response_headers_to_add": [{"header": {"key": "content-type", "value": content_type}}]}
              for path, (content_type, body) in ANSWERS.items()]
    baseline = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
    cluster = {"name": "upstream", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": [_listener("upstream", upstream_port, routes, [buffer]),
                                               _listener("baseline", baseline_port, baseline, [])],
                                 "clusters": [cluster]}}


def plain_proxy(port: int, admin_port: int, upstream_port: int) -> dict:
    """Envoy as a plain reverse proxy to `upstream_port`: the baseline a gateway's overhead is measured against."""
    cluster = {"name": "upstream", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": [_listener("proxy", port, [
                {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "60s"}}], [])],
                                 "clusters": [cluster]}}


def start_plain_proxy(supervisor: Supervisor, workdir: Path, upstream_port: int, base_id: int) -> tuple[int, int]:
    """A plain Envoy reverse proxy to `upstream_port`, running and ready: (its port, its pid). `base_id`: the
    shared-memory id, distinct from every other Envoy of the run."""
    port, admin = free_port(), free_port()
    (workdir / "proxy.yaml").write_text(yaml.safe_dump(plain_proxy(port, admin, upstream_port)))
    proxy = supervisor.start("plain-envoy", [*envoy_argv(workdir / "proxy.yaml"), "--base-id", str(base_id)])
    wait_for_envoy(admin, 30, supervisor)
    return port, proxy.process.pid
