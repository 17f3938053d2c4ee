"""The gateway's trust boundaries, tried from the outside as an attacker would, against the shared real stack
(Envoy + ext_proc over Unix sockets + demo providers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import openai
import pytest
import yaml

from ext_proc.auth.certificates import CertificateFiles, make_certificates
from ext_proc.config.chains import all_chain_routes
from ext_proc.launch.processes import free_port
from ext_proc.launch.stack import Stack

from .gateways import Gateway, GatewayBuilder

DIRECT_ROUTE = "anthropic-solo"  # one backend: translated in the route stage, sent straight to its cluster
ROUTES = ["gpt-4o-mini", "claude-sonnet-4-5", DIRECT_ROUTE, "secure-model"]
"""Chains (two backends) and direct routes, over plain HTTP and TLS backends."""
PROVIDER_OF = {"gpt-4o-mini": "openai-a", "claude-sonnet-4-5": "anthropic-a", DIRECT_ROUTE: "anthropic-a",
               "secure-model": "tls"}


def test_the_ext_proc_sockets_are_closed_to_every_other_local_user(gateway: Gateway) -> None:
    """Anything that opens an ext_proc stream can ask for provider credentials: only Envoy's user may connect."""
    settings = gateway.stack.config.ext_proc
    assert settings.socket_dir is not None
    assert settings.socket_dir.stat().st_mode & 0o777 == 0o700
    assert settings.socket_path(0).stat().st_mode & 0o777 == 0o600
    if os.getuid() != 0:
        pytest.skip("needs root to run the attacker as another user")  # CI runs as root
    attacker = textwrap.dedent(f"""
        import os, socket, sys
        os.setgid(65534); os.setuid(65534)
        try:
            socket.socket(socket.AF_UNIX).connect({str(settings.socket_path(0))!r})
        except PermissionError:
            sys.exit(0)
        sys.exit(1)
    """)
    assert subprocess.run([sys.executable, "-c", attacker], timeout=30).returncode == 0


def _trailers_only_request(gateway: Gateway, extra: list[tuple[str, str]]) -> tuple[int, bytes]:
    """HEADERS without END_STREAM, then trailers with END_STREAM, no DATA at all (HTTP/2 prior knowledge)."""
    port = gateway.stack.config.listener.port
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        connection.initiate_connection()
        connection.send_headers(1, [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "http"),
                                    (":authority", "evil.example"), ("authorization", f"Bearer {gateway.key}"),
                                    ("content-type", "application/json"), *extra])
        connection.send_headers(1, [("x-trailer", "1")], end_stream=True)
        sock.sendall(connection.data_to_send())
        status, body = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body
            sock.sendall(connection.data_to_send())
    return status, body


@pytest.mark.parametrize("order", [("an",), ("an", "oa")], ids=["direct", "chain"])
def test_a_request_that_skips_the_body_phase_never_reaches_a_backend(gateway: Gateway,
                                                                     order: tuple[str, ...]) -> None:
    """It carries the route's own chain header: before the fix, Envoy matched that header alone, so the request
    reached the backend unauthorized, unlimited and unlogged, with the client's key and :authority."""
    chain = next(c.name for c in all_chain_routes(gateway.stack.config) if c.order == order)
    gateway.clear_provider_requests("anthropic-a")
    status, body = _trailers_only_request(gateway, [("x-babelgate-int-chain", chain)])
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "missing_body"
    assert gateway.provider_requests("anthropic-a") == []


@pytest.mark.parametrize("model", ROUTES)
def test_nothing_of_the_client_envoy_or_babelgate_reaches_a_provider(gateway: Gateway, model: str) -> None:
    provider = PROVIDER_OF[model]
    gateway.clear_provider_requests(provider)
    gateway.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-babelgate-int-chain": "bg_direct_x", "x-babelgate-tags": "a", "x-envoy-retry-on": "5xx",
                       "x-envoy-max-retries": "9", "x-forwarded-for": "6.6.6.6", "x-real-ip": "6.6.6.6",
                       "cookie": "session=client", "x-api-key": "client-secret"})
    sent = gateway.provider_requests(provider)[-1]["headers"]
    leaked = [name for name in sent if name.startswith(("x-envoy", "x-babelgate", "x-forwarded", "x-real-ip"))
              or name in ("cookie", "forwarded")]
    assert leaked == [], sent
    assert gateway.key not in json.dumps(sent) and "client-secret" not in json.dumps(sent)
    assert "6.6.6.6" not in json.dumps(sent)
    expected_host = "api.demo.test" if provider == "tls" else "127.0.0.1"
    assert sent["host"].startswith(expected_host + ":")


@pytest.mark.parametrize("model", ROUTES)
def test_the_providers_account_headers_never_reach_the_client(gateway: Gateway, model: str) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "x"}])
    names = set(raw.headers.keys())
    for private in ("set-cookie", "openai-organization", "openai-processing-ms", "anthropic-organization-id",
                    "cf-ray", "x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit", "x-demo-provider",
                    "request-id", "x-request-id"):
        assert private not in names, (private, dict(raw.headers))
    assert raw.headers["x-babelgate-upstream-request-id"].startswith("req_demo")
    assert raw.headers["content-type"].startswith("application/json")


def test_the_providers_account_headers_never_reach_a_streaming_client(gateway: Gateway) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {gateway.key}"},
                      json={"model": "gpt-4o-mini", "stream": True,
                            "messages": [{"role": "user", "content": "x"}]}) as response:
        assert response.status_code == 200
        assert "set-cookie" not in response.headers and "openai-organization" not in response.headers
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "data: [DONE]" in response.read().decode()


def test_the_gateway_does_not_answer_for_a_spoofed_forwarded_for(gateway: Gateway) -> None:
    """A client's own X-Forwarded-For changes nothing (the audit and limits see Envoy's view)."""
    client = gateway.client(default_headers={"x-forwarded-for": "10.0.0.1, 6.6.6.6"})
    assert client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]).choices


def test_the_models_listing_is_unchanged_by_the_screening(gateway: Gateway) -> None:
    models = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0).models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, CertificateFiles]]:
    """Envoy and two ext_proc processes over mutual TLS on TCP, as across hosts."""
    workdir = tmp_path_factory.mktemp("mtls")
    files = make_certificates(workdir / "certs", "ext-proc.internal", ("127.0.0.1",))
    with GatewayBuilder(workdir, processes=2) as build:
        build.set(ext_proc={"tls": files.config("ext-proc.internal")})
        provider = build.demo("p")
        build.backend("p", provider)
        build.backend("q", provider)
        build.route("m", ("p", "m"))
        build.route("pair", ("p", "a"), ("q", "b"))
        build.key("k", MTLS_KEY)
        yield build.start().stack, files


MTLS_KEY = "bg-mtls-e2e-client-key"


@pytest.mark.parametrize("model", ["m", "pair"])
def test_envoy_reaches_the_servers_over_mutual_tls(tls_stack: tuple[Stack, CertificateFiles], model: str) -> None:
    stack, _ = tls_stack
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=MTLS_KEY, max_retries=0, timeout=30)
    assert client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}]).choices


def _attempt_stream(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode | None:
    """What an attacker would do: open an attempt-stage stream and ask for a request to be translated."""
    from ext_proc import constants
    from ext_proc.wire.external_processor_pb2 import ProcessingRequest, ProcessingResponse

    options = (("grpc.ssl_target_name_override", "ext-proc.internal"),)
    channel = (grpc.secure_channel(target, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(target))
    with channel:
        process = channel.stream_stream("/envoy.service.ext_proc.v3.ExternalProcessor/Process",
                                        request_serializer=ProcessingRequest.SerializeToString,
                                        response_deserializer=ProcessingResponse.FromString)
        try:
            list(process(iter([ProcessingRequest()]), timeout=10,
                         metadata=[(constants.STAGE_METADATA_KEY, constants.STAGE_ATTEMPT)]))
        except grpc.RpcError as exc:
            return exc.code()
    return None


def test_a_client_without_envoys_certificate_cannot_open_a_stream(tls_stack: tuple[Stack, CertificateFiles],
                                                                  tmp_path: Path) -> None:
    stack, files = tls_stack
    target = f"127.0.0.1:{stack.config.ext_proc.port}"
    assert _attempt_stream(target, None) == grpc.StatusCode.UNAVAILABLE  # plaintext: no TLS handshake
    server_only = grpc.ssl_channel_credentials(files.ca_file.read_bytes())  # TLS, no client certificate
    assert _attempt_stream(target, server_only) == grpc.StatusCode.UNAVAILABLE
    other = make_certificates(tmp_path / "other-ca", "ext-proc.internal")  # a certificate another CA signed
    forged = grpc.ssl_channel_credentials(files.ca_file.read_bytes(), other.client_key_file.read_bytes(),
                                          other.client_cert_file.read_bytes())
    assert _attempt_stream(target, forged) == grpc.StatusCode.UNAVAILABLE
    # Envoy's own certificate opens it (the stage then refuses an empty message): the refusal above is the TLS layer
    envoys = grpc.ssl_channel_credentials(files.ca_file.read_bytes(), files.client_key_file.read_bytes(),
                                          files.client_cert_file.read_bytes())
    assert _attempt_stream(target, envoys) != grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_server_on_a_public_address_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"id": "p", "schema": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "routes": [{"model": "m", "backends": [{"backend": "p", "model": "m"}]}]}))
    result = subprocess.run([sys.executable, "-m", "ext_proc", "serve", "-c", str(config), "--host", "0.0.0.0",
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "ext_proc.tls" in result.stderr and "plaintext" in result.stderr
