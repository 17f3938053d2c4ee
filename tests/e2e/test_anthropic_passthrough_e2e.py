"""Anthropic-format clients to Anthropic-family backends, untranslated; count_tokens on every kind of backend;
`HEAD /anthropic`. The anthropic SDK drives a real gateway (Envoy + ext_proc) in front of the demo providers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import orjson
import pytest

from .gateways import Gateway, GatewayBuilder
from .support import fault

BETAS = ["context-management-2025-06-27", "interleaved-thinking-2025-05-14"]
CONTEXT_MANAGEMENT = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
CLAUDE_ROUTES = {  # route -> (demo handle, what the provider's request must look like)
    "claude-direct": "anthropic",
    "claude-bedrock": "bedrock",
    "claude-vertex": "vertex",
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(Path(tmp_path_factory.mktemp("passthrough"))) as build:
        build.backend("an", build.demo("anthropic", "anthropic"))
        build.backend("br", build.demo("bedrock", "bedrock"), schema="bedrock-anthropic")
        vertex = build.demo("vertex", "vertex")
        build.backend("vx", vertex, schema="vertex-anthropic")
        build.backend("vg", vertex, schema="vertex-gemini")
        build.backend("gm", build.demo("gemini", "gemini"))
        build.backend("oa", build.demo("openai", "openai"))
        build.route("claude-direct", ("an", "claude-sonnet-4-5-20250929"))
        build.route("claude-bedrock", ("br", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"))
        build.route("claude-vertex", ("vx", "claude-sonnet-4-5@20250929"))
        build.route("gemini", ("gm", "gemini-2.5-flash"))
        build.route("vertex-gemini", ("vg", "gemini-2.5-flash"))
        build.route("gpt", ("oa", "gpt-4o-mini"))
        build.route("claude-chain", ("an", "claude-sonnet-4-5-20250929"), ("oa", "gpt-4o-mini"))
        build.key("k")
        build.key("only-gpt", models=["gpt"])
        yield build.start()


@pytest.fixture
def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)


def _sent_body(gateway: Gateway, handle: str) -> dict:
    return gateway.last_request(handle)["body"]


@pytest.mark.parametrize("route", sorted(CLAUDE_ROUTES))
def test_fields_the_gateway_does_not_know_reach_the_provider(gateway: Gateway, claude: anthropic.Anthropic,
                                                             route: str) -> None:
    """What Claude Code sends (`?beta=true`, betas, context_management) goes through; the provider decides."""
    handle = CLAUDE_ROUTES[route]
    message = claude.beta.messages.create(model=route, max_tokens=300, betas=BETAS,
                                          messages=[{"role": "user", "content": "hello there"}],
                                          extra_body={"context_management": CONTEXT_MANAGEMENT})
    assert message.type == "message" and "hello there" in message.content[-1].text
    sent = gateway.last_request(handle)
    body = sent["body"]
    assert body["context_management"] == CONTEXT_MANAGEMENT and body["max_tokens"] == 300
    if handle == "anthropic":
        assert body["model"] == "claude-sonnet-4-5-20250929"
        assert sent["headers"]["anthropic-beta"] == ",".join(BETAS)
    elif handle == "bedrock":
        assert "model" not in body and "stream" not in body
        assert body["anthropic_version"] == "bedrock-2023-05-31" and body["anthropic_beta"] == BETAS
        assert "anthropic-beta" not in sent["headers"]
    else:
        assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
        assert sent["headers"]["anthropic-beta"] == ",".join(BETAS)


@pytest.mark.parametrize(("route", "handle"), [("gpt", "openai"), ("gemini", "gemini")])
def test_steering_fields_are_dropped_and_named_on_a_translated_backend(gateway: Gateway, claude: anthropic.Anthropic,
                                                                     route: str, handle: str) -> None:
    """What Claude Code sends to every model reaches a translated backend without the settings that only steer, and
    the answer names them in `x-babelgate-dropped-fields`."""
    raw = claude.beta.messages.with_raw_response.create(
        model=route, max_tokens=2000, betas=BETAS, messages=[{"role": "user", "content": "hello there"}],
        thinking={"type": "adaptive", "display": "omitted"},  # type: ignore[typeddict-item]
        tools=[{"name": "lookup", "description": "d", "input_schema": {"type": "object", "properties": {}},
                "defer_loading": True}],
        extra_body={"context_management": CONTEXT_MANAGEMENT})
    message = raw.parse()
    assert message.type == "message" and message.content
    dropped = raw.headers["x-babelgate-dropped-fields"].split(",")
    assert dropped[:3] == ["context_management", "thinking.display", "tools[].defer_loading"]
    body = _sent_body(gateway, handle)
    assert "context_management" not in body and "lookup" not in orjson.dumps(body).decode()  # deferred: no search


def test_a_typed_client_tool_is_a_function_tool_on_a_translated_backend(gateway: Gateway,
                                                                        claude: anthropic.Anthropic) -> None:
    """Anthropic's bash tool reaches an OpenAI backend as a function `bash` with its documented input schema; the
    model's call comes back as the tool_use the client would get from Claude."""
    message = claude.messages.create(model="gpt", max_tokens=200, tools=[{"type": "bash_20250124", "name": "bash"}],
                                     messages=[{"role": "user", "content": "List the files here."}])
    calls = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use" and [call.name for call in calls] == ["bash"]
    assert isinstance(calls[0].input, dict) and "command" in calls[0].input
    [tool] = _sent_body(gateway, "openai")["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "bash"
    assert set(tool["function"]["parameters"]["properties"]) == {"command", "restart"}


@pytest.mark.parametrize("route", sorted(CLAUDE_ROUTES))
def test_streams_come_back_as_the_provider_sent_them(gateway: Gateway, route: str) -> None:
    """Server-sent events whatever the provider's framing (Bedrock: AWS event-stream), usage included."""
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", gateway.url + "/anthropic/v1/messages?beta=true",
            headers={"x-api-key": gateway.key, "anthropic-version": "2023-06-01", "anthropic-beta": ",".join(BETAS)},
            json={"model": route, "max_tokens": 200, "stream": True,
                  "messages": [{"role": "user", "content": "stream to me"}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes())
    names = [line.removeprefix(b"event: ") for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == b"message_start" and names[-1] == b"message_stop"
    claude = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)
    with claude.messages.stream(model=route, max_tokens=200,
                                messages=[{"role": "user", "content": "stream to me"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "stream to me" in text and final.usage.output_tokens > 0


@pytest.mark.parametrize(("route", "handle", "path_end"), [
    ("claude-direct", "anthropic", "/v1/messages/count_tokens"),
    ("claude-bedrock", "bedrock", "/count-tokens"),
    ("claude-vertex", "vertex", "/publishers/anthropic/models/count-tokens:rawPredict"),
    ("gemini", "gemini", ":countTokens"),
    ("vertex-gemini", "vertex", ":countTokens"),
])
def test_count_tokens_asks_the_provider_that_counts(gateway: Gateway, claude: anthropic.Anthropic, route: str,
                                                    handle: str, path_end: str) -> None:
    counted = claude.messages.count_tokens(model=route, system="Be brief.",
                                           messages=[{"role": "user", "content": "how many tokens is this?"}])
    assert counted.input_tokens > 0
    sent = gateway.last_request(handle)
    assert sent["path"].partition("?")[0].endswith(path_end)
    if handle == "bedrock":
        inner = orjson.loads(base64.b64decode(sent["body"]["input"]["invokeModel"]["body"]))
        assert inner["system"] == "Be brief." and inner["anthropic_version"] == "bedrock-2023-05-31"


def test_count_tokens_elsewhere_is_the_gateway_estimate(gateway: Gateway, claude: anthropic.Anthropic) -> None:
    gateway.clear_provider_requests("openai")
    counted = claude.beta.messages.count_tokens(model="gpt", betas=BETAS,
                                                messages=[{"role": "user", "content": "how many tokens is this?"}])
    assert counted.input_tokens > 0
    assert gateway.provider_requests("openai") == []  # answered without calling the provider


def test_count_tokens_on_a_chain_asks_its_first_backend(gateway: Gateway, claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="claude-chain", messages=[{"role": "user", "content": "count me"}])
    assert counted.input_tokens > 0
    assert gateway.last_request("anthropic")["path"] == "/v1/messages/count_tokens"


def test_count_tokens_failing_over_to_a_backend_that_cannot_count_is_estimated(gateway: Gateway,
                                                                             claude: anthropic.Anthropic) -> None:
    gateway.clear_provider_requests("openai")
    gateway.clear_provider_requests("anthropic")
    counted = claude.messages.count_tokens(model="claude-chain", messages=[{"role": "user", "content": "count me"}],
                                           extra_headers=fault("anthropic:503"))
    assert counted.input_tokens > 0
    assert [r["path"] for r in gateway.provider_requests("anthropic")] == ["/v1/messages/count_tokens"]  # the 503
    assert gateway.provider_requests("openai") == []  # the second attempt's stage answered it


def test_a_chain_passes_an_anthropic_body_through_to_its_claude_backend(gateway: Gateway,
                                                                        claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="claude-chain", max_tokens=100,
                                     messages=[{"role": "user", "content": "hi chain"}],
                                     extra_body={"context_management": CONTEXT_MANAGEMENT})
    assert "hi chain" in message.content[-1].text
    assert _sent_body(gateway, "anthropic")["context_management"] == CONTEXT_MANAGEMENT


@pytest.mark.parametrize("path", ["/anthropic", "/anthropic/", "/anthropic/v1", "/anthropic/api/hello"])
def test_head_anthropic_is_200_without_a_key(gateway: Gateway, path: str) -> None:
    response = httpx.head(gateway.url + path, timeout=10)
    assert response.status_code == 200 and response.content == b""


def test_an_unknown_anthropic_path_is_still_404(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/anthropic/v1/complete", headers={"x-api-key": gateway.key}, json={},
                          timeout=10)
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/anthropic/v1/messages/count_tokens",
                                  "/anthropic/v1/messages/count_tokens?beta=true"])
def test_count_tokens_holds_the_key_and_its_scope(gateway: Gateway, path: str) -> None:
    """Counting calls a provider with the gateway's credentials: it needs a key, and one that may use the model."""
    body = {"model": "claude-direct", "messages": [{"role": "user", "content": "count me"}]}
    before = len(gateway.provider_requests("anthropic"))
    missing = httpx.post(gateway.url + path, json=body, timeout=10)
    forged = httpx.post(gateway.url + path, json=body, headers={"x-api-key": "bg-" + "x" * 40}, timeout=10)
    scoped = httpx.post(gateway.url + path, json=body, headers={"x-api-key": gateway.keys["only-gpt"]}, timeout=10)
    assert (missing.status_code, forged.status_code, scoped.status_code) == (401, 401, 403)
    assert all(r.json()["type"] == "error" for r in (missing, forged, scoped))
    assert len(gateway.provider_requests("anthropic")) == before


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_only_the_probe_paths_answer_without_a_key(gateway: Gateway, method: str) -> None:
    """HEAD answers the API's own probes; it opens nothing else: no messages, no counting, no other method."""
    for path in ("/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens", "/anthropic/v1/models"):
        response = httpx.request(method, gateway.url + path, timeout=10)
        assert response.status_code in (401, 404, 405), (method, path, response.status_code)
    if method == "GET":
        assert httpx.get(gateway.url + "/anthropic", timeout=10).status_code in (401, 404, 405)
