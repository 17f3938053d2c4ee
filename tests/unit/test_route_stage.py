"""The route stage on its own: authentication, endpoint and shape checks, model routing, chain choice."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ext_proc import constants
from ext_proc.client_formats import anthropic_messages
from ext_proc.config.loading import parse_config
from ext_proc.errors import GatewayError
from ext_proc.runtime.build import BackendInfo, compile_runtime
from ext_proc.stages import attempt, messages, route
from ext_proc.stages.route import RouteStage
from ext_proc.wire.external_processor_pb2 import ProcessingRequest

from .stage_support import (
    CLIENT_KEY,
    CONFIG,
    EXPIRED_KEY,
    LIMITED_KEY,
    body,
    counted,
    drive,
    headers,
    immediate,
    runtime,
    set_headers,
)

CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}",
        "content-type": "application/json"}
HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def run(monkeypatch: pytest.MonkeyPatch, request_headers: dict[str, str], payload: object = None,
        end_of_stream: bool = False) -> object:
    """Feed headers (and a body) through the same handler the server uses; return the last reply."""
    stage = RouteStage(runtime(monkeypatch))
    reply = drive(stage, ProcessingRequest(request_headers=headers(request_headers, end_of_stream)))
    if payload is not None and reply.WhichOneof("response") != "immediate_response":
        reply = drive(stage, ProcessingRequest(request_body=body(payload)))
    return reply


def expect_error(monkeypatch: pytest.MonkeyPatch, status: int, code: str | None, request_headers: dict[str, str],
                 payload: object = None, end_of_stream: bool = False) -> dict:
    stage = RouteStage(runtime(monkeypatch))
    try:
        stage.on_request_headers(headers(request_headers, end_of_stream))
        asyncio.run(stage.on_request_body(body(payload)))
    except GatewayError as error:
        reply = messages.error_reply(error)
    else:
        pytest.fail("expected an error")
    got_status, got_body, _ = immediate(reply)
    assert got_status == status
    assert got_body["error"]["code"] == code, got_body
    assert set(got_body["error"]) == {"message", "type", "param", "code"}
    assert reply.dynamic_metadata.fields[constants.METADATA_NAMESPACE].struct_value.fields["replied"].bool_value
    return got_body


def test_chat_request_names_its_chain_and_hands_the_decision_on(monkeypatch: pytest.MonkeyPatch) -> None:
    reply = run(monkeypatch, {**CHAT, "x-babelgate-int-chain": "spoofed"}, {**HELLO, "model": "gpt4"})
    assert reply.request_body.response.clear_route_cache
    assert set_headers(reply.request_body.response) == {constants.HEADER_CHAIN: "bg_chain_oa__an"}
    assert messages.babelgate_metadata(_as_metadata(reply)) == {"route": "gpt-4o", "requested": "gpt4",
                                                                      "endpoint": "chat", "key_id": "all"}


def test_spoofed_internal_headers_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = RouteStage(runtime(monkeypatch))
    reply = stage.on_request_headers(headers({**CHAT, "x-babelgate-int-chain": "bg_chain_x", "x-babelgate-tags": "a",
                                              "x-envoy-max-retries": "0"}))
    removed = list(reply.request_headers.response.header_mutation.remove_headers)
    assert removed == ["x-babelgate-int-chain", "x-envoy-max-retries"]


def test_x_api_key_header_authenticates_too(monkeypatch: pytest.MonkeyPatch) -> None:
    request = {k: v for k, v in CHAT.items() if k != "authorization"} | {"x-api-key": CLIENT_KEY}
    reply = run(monkeypatch, request, HELLO)
    assert reply.WhichOneof("response") == "request_body"


@pytest.mark.parametrize(("auth", "code"), [
    (None, "missing_api_key"), ("Bearer nope", "invalid_api_key"), ("Basic abc", "missing_api_key"),
    (f"Bearer {EXPIRED_KEY}", "expired_api_key"),
])
def test_bad_keys_get_401(monkeypatch: pytest.MonkeyPatch, auth: str | None, code: str) -> None:
    request = {k: v for k, v in CHAT.items() if k != "authorization"}
    if auth:
        request["authorization"] = auth
    expect_error(monkeypatch, 401, code, request, HELLO)


def test_key_limited_to_other_models_gets_403_even_through_an_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    body = expect_error(monkeypatch, 403, "model_not_allowed", {**CHAT, "authorization": f"Bearer {LIMITED_KEY}"},
                        {**HELLO, "model": "gpt4"})
    assert "limited" in body["error"]["message"]


@pytest.mark.parametrize(("payload", "code", "param"), [
    (b"{not json", "invalid_json", None),
    (b"[1, 2]", "invalid_json", None),
    ({"messages": [{"role": "user", "content": "x"}]}, "missing_model", "model"),
    ({"model": 42, "messages": []}, "missing_model", "model"),
    ({"model": "gpt-4o", "messages": []}, None, "messages"),
    ({"model": "gpt-4o", "messages": ["hi"]}, None, "messages[0]"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, None, "stream"),
])
def test_malformed_bodies_get_400(monkeypatch: pytest.MonkeyPatch, payload: object, code: str | None,
                                  param: str | None) -> None:
    stage = RouteStage(runtime(monkeypatch))
    stage.on_request_headers(headers(CHAT))
    with pytest.raises(GatewayError) as raised:
        asyncio.run(stage.on_request_body(body(payload)))
    assert raised.value.status == 400
    assert raised.value.param == param
    if code:
        assert raised.value.code == code


def test_a_field_the_fallback_refuses_leaves_it_out_of_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = RouteStage(runtime(monkeypatch))
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    # OpenAI takes n=3, the Anthropic fallback can't: the request goes to OpenAI alone, never to the fallback
    reply = drive(stage, ProcessingRequest(request_body=body({**HELLO, "n": 3}))).request_body.response
    assert set_headers(reply)[constants.HEADER_CHAIN] == "bg_direct_oa"
    assert orjson.loads(reply.body_mutation.body)["n"] == 3


STRICT = CONFIG.replace("    aliases: [gpt4]\n", "    aliases: [gpt4]\n    fields: strict\n", 1)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("logit_bias", {"50256": -100}, "'logit_bias' is not supported on anthropic backends"),
    ("frobnicate", 1, "'frobnicate' is not a chat completions field the anthropic translator knows"),
])
def test_on_a_strict_route_a_field_the_fallback_refuses_is_a_400_naming_that_backend(
        monkeypatch: pytest.MonkeyPatch, field: str, value: object, reason: str) -> None:
    runtime(monkeypatch)  # the provider secrets
    stage = RouteStage(compile_runtime(parse_config(STRICT)))
    stage.on_request_headers(headers(CHAT))
    with pytest.raises(GatewayError) as raised:
        asyncio.run(stage.on_request_body(body({**HELLO, field: value})))
    assert (raised.value.status, raised.value.param) == (400, field)
    assert raised.value.message.startswith(
        f"Backend 'an' (anthropic) of route 'gpt-4o' can't serve `{field}`: {reason}")


def test_a_field_the_only_backend_refuses_is_a_400_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    got = expect_error(monkeypatch, 400, None, CHAT, {**HELLO, "model": "claude", "logit_bias": {"1": 2}})["error"]
    assert got["param"] == "logit_bias"
    assert got["message"].startswith("Backend 'an' (anthropic) of route 'claude' can't serve `logit_bias`: ")


def test_unknown_model_gets_404(monkeypatch: pytest.MonkeyPatch) -> None:
    expect_error(monkeypatch, 404, "model_not_found", CHAT, {**HELLO, "model": "gpt-9"})


def test_unknown_path_and_wrong_method(monkeypatch: pytest.MonkeyPatch) -> None:
    expect_error(monkeypatch, 404, "unknown_url", {**CHAT, ":path": "/v1/fine_tuning/jobs"})
    _, _, extra = immediate(run(monkeypatch, {**CHAT, ":method": "GET"}))
    assert extra["allow"] == "POST"
    assert immediate(run(monkeypatch, {**CHAT, ":method": "GET"}))[0] == 405


def test_declared_oversize_body_is_refused_at_the_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    expect_error(monkeypatch, 413, "request_too_large", {**CHAT, "content-length": "4096"})


def test_oversize_body_without_content_length_is_refused_at_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {**HELLO, "messages": [{"role": "user", "content": "x" * 4000}]}
    expect_error(monkeypatch, 413, "request_too_large", CHAT, payload)


def test_post_without_body_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    expect_error(monkeypatch, 400, "missing_body", CHAT, end_of_stream=True)


def test_models_list_shows_only_what_the_key_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    models = {":method": "GET", ":path": "/v1/models", "authorization": f"Bearer {LIMITED_KEY}"}
    status, listing, _ = immediate(run(monkeypatch, models, end_of_stream=True))
    assert status == 200
    assert [m["id"] for m in listing["data"]] == ["claude"]
    status, listing, _ = immediate(run(monkeypatch, {**models, "authorization": f"Bearer {CLIENT_KEY}"}))
    assert [m["id"] for m in listing["data"]] == ["gpt-4o", "claude", "embed"]


def test_single_model_lookup_hides_models_the_key_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = {":method": "GET", ":path": "/v1/models/gpt-4o", "authorization": f"Bearer {LIMITED_KEY}"}
    assert immediate(run(monkeypatch, lookup))[0] == 404
    status, model, _ = immediate(run(monkeypatch, {**lookup, "authorization": f"Bearer {CLIENT_KEY}"}))
    assert (status, model["id"], model["object"]) == (200, "gpt-4o", "model")


def test_embeddings_need_an_input_and_a_route_that_embeds(monkeypatch: pytest.MonkeyPatch) -> None:
    embed = {**CHAT, ":path": "/v1/embeddings"}
    expect_error(monkeypatch, 400, "missing_input", embed, {"model": "embed"})
    expect_error(monkeypatch, 400, "unsupported_endpoint", embed, {"model": "claude", "input": "x"})
    assert run(monkeypatch, embed, {"model": "embed", "input": "x"}).WhichOneof("response") == "request_body"


def _as_metadata(reply: object) -> object:
    from ext_proc.wire.base_pb2 import Metadata

    metadata = Metadata()
    namespace = constants.METADATA_NAMESPACE
    metadata.filter_metadata[namespace].CopyFrom(reply.dynamic_metadata.fields[namespace].struct_value)  # type: ignore[attr-defined]
    return metadata


def test_model_list_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    _, listing, extra = immediate(run(monkeypatch, {":method": "GET", ":path": "/v1/models?x=1",
                                                    "authorization": f"Bearer {CLIENT_KEY}"}))
    assert extra["content-type"] == "application/json"
    assert orjson.loads(orjson.dumps(listing))["object"] == "list"


def test_direct_route_is_translated_in_the_route_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = RouteStage(runtime(monkeypatch))
    drive(stage, ProcessingRequest(request_headers=headers({**CHAT, "x-api-key": "bg-client"})))
    reply = drive(stage, ProcessingRequest(request_body=body({**HELLO, "model": "claude"}))).request_body.response
    sent = orjson.loads(reply.body_mutation.body)
    assert sent["model"] == "claude-x" and sent["messages"] == [{"role": "user", "content": "hi"}]
    set_ = set_headers(reply)
    assert set_[constants.HEADER_CHAIN] == "bg_direct_an" and set_[":path"] == "/v1/messages"
    assert set_["x-api-key"] == "sk-unit-anthropic" and set_[":authority"] == "api.anthropic.com"
    assert "authorization" in reply.header_mutation.remove_headers
    assert "x-api-key" not in reply.header_mutation.remove_headers  # overwritten with the provider's key instead
    assert reply.clear_route_cache


def _answer_mode(monkeypatch: pytest.MonkeyPatch, path: str, payload: dict, status: str = "200") -> object:
    stage = RouteStage(runtime(monkeypatch))
    drive(stage, ProcessingRequest(request_headers=headers({**CHAT, ":path": path})))
    drive(stage, ProcessingRequest(request_body=body(payload)))
    reply = drive(stage, ProcessingRequest(response_headers=headers(
        {":status": status, "content-type": "application/json"})))
    return reply.mode_override


def test_an_answer_already_in_openai_format_skips_the_body_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Minimal processing: a direct OpenAI-schema answer with no reservation to settle never reaches Python."""
    mode = _answer_mode(monkeypatch, "/v1/embeddings", {"model": "embed", "input": "hi"})
    assert mode.response_body_mode == mode.NONE


@pytest.mark.parametrize(("why", "path", "payload", "status"), [
    ("translated answer", "/v1/chat/completions", {**HELLO, "model": "claude"}, "200"),
    ("base64 embeddings are re-encoded", "/v1/embeddings",
     {"model": "embed", "input": "hi", "encoding_format": "base64"}, "200"),
    ("errors are normalised", "/v1/embeddings", {"model": "embed", "input": "hi"}, "500"),
])
def test_answers_that_need_python_keep_the_body_phase(monkeypatch: pytest.MonkeyPatch, why: str, path: str,
                                                      payload: dict, status: str) -> None:
    mode = _answer_mode(monkeypatch, path, payload, status)
    assert mode.response_body_mode == mode.BUFFERED, why


LIMITS = "limits: {per_key: [{window: hour, total_tokens: 100000}]}\n"
ANTHROPIC_HELLO = {"model": "claude", "max_tokens": 50, "system": "Be brief.",
                   "messages": [{"role": "user", "content": "hi"}]}


def test_a_direct_route_converts_translates_and_estimates_the_request_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The route stage checks the request by translating it for the backend; a direct route sends that very
    translation, with the prompt estimate its reservation made."""
    limited = runtime(monkeypatch, LIMITS)
    conversions = counted(monkeypatch, anthropic_messages, "to_openai")
    translations = counted(monkeypatch, BackendInfo, "chat_request")
    estimates = counted(monkeypatch, route, "estimate_prompt_tokens")
    monkeypatch.setattr(attempt, "estimate_prompt_tokens", route.estimate_prompt_tokens)  # one counter for both
    stage = RouteStage(limited)
    drive(stage, ProcessingRequest(request_headers=headers({**CHAT, ":path": "/anthropic/v1/messages"})))
    reply = drive(stage, ProcessingRequest(request_body=body(ANTHROPIC_HELLO))).request_body.response
    # an Anthropic body to an Anthropic backend passes through: converted once (to route and estimate it), and
    # sent as the client wrote it, with the backend's model
    assert (len(conversions), len(translations), len(estimates)) == (1, 0, 1)
    assert set_headers(reply)[constants.HEADER_CHAIN] == "bg_direct_an"
    assert reply.body_mutation.body == orjson.dumps({**ANTHROPIC_HELLO, "model": "claude-x"})


def test_a_direct_backend_checked_through_another_of_its_kind_gets_its_own_translation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The route stage checks each kind of backend once, with the first of that kind; a rule may send the request
    to another one of that kind, whose model name (and dropped fields) the translation must carry."""
    runtime(monkeypatch)  # the provider secrets
    config = CONFIG.replace("backends:\n", """backends:
  - {id: oa2, schema: openai, base_url: "http://127.0.0.1:8/v1", api_key: {env: BG_UNIT_OPENAI}, drop_fields: [user]}
""", 1).replace("routes:\n", """routes:
  - model: tiers
    backends: [{backend: oa, model: gpt-a}, {backend: oa2, model: gpt-b}]
    rules: [{when: {headers: {x-tier: b}}, backends: [oa2]}]
""", 1)
    stage = RouteStage(compile_runtime(parse_config(config)))
    drive(stage, ProcessingRequest(request_headers=headers({**CHAT, "x-tier": "b"})))
    reply = drive(stage, ProcessingRequest(request_body=body({**HELLO, "model": "tiers", "user": "u1"})))
    sent = reply.request_body.response
    assert set_headers(sent)[constants.HEADER_CHAIN] == "bg_direct_oa2"
    assert orjson.loads(sent.body_mutation.body) == {"model": "gpt-b", "messages": HELLO["messages"],
                                                    "max_completion_tokens": 4096}


DIRECT_OPENAI = CONFIG.replace("routes:\n", """routes:
  - model: mini
    backends: [{backend: oa, model: gpt-4o-mini}]
""", 1)
IDLE_WATCHED = DIRECT_OPENAI.replace("api_key: {env: BG_UNIT_OPENAI}}",
                                     "api_key: {env: BG_UNIT_OPENAI}, stream_idle_timeout: 5s}", 1)


def _stream_answer(monkeypatch: pytest.MonkeyPatch, content_type: str, config: str = DIRECT_OPENAI,
                   **request: object) -> tuple[object, dict]:
    """The mode a direct OpenAI route's streamed answer switches Envoy to, and the body sent upstream."""
    runtime(monkeypatch)  # the provider secrets
    stage = RouteStage(compile_runtime(parse_config(config)))
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    sent = drive(stage, ProcessingRequest(request_body=body({**HELLO, "model": "mini", "stream": True, **request})))
    reply = drive(stage, ProcessingRequest(response_headers=headers({":status": "200", "content-type": content_type})))
    return reply.mode_override, orjson.loads(sent.request_body.response.body_mutation.body)


def test_a_stream_nothing_reads_skips_the_body_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its chunks already are the client's: Envoy relays them without Python, and the backend is asked for no usage
    the client did not ask for."""
    mode, sent = _stream_answer(monkeypatch, "text/event-stream; charset=utf-8")
    assert mode.response_body_mode == mode.NONE
    assert "stream_options" not in sent
    mode, sent = _stream_answer(monkeypatch, "text/event-stream", stream_options={"include_usage": True})
    assert mode.response_body_mode == mode.NONE and sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("why", "content_type", "config"), [
    ("usage is settled", "text/event-stream", DIRECT_OPENAI + LIMITS),
    ("a stream idle timeout watches the chunks", "text/event-stream", IDLE_WATCHED),
    ("an answer that is not a stream is read as one", "application/json", DIRECT_OPENAI),
])
def test_streams_that_need_python_keep_their_chunks(monkeypatch: pytest.MonkeyPatch, why: str, content_type: str,
                                                    config: str) -> None:
    mode, sent = _stream_answer(monkeypatch, content_type, config)
    assert mode.response_body_mode != mode.NONE, why
    if config is not DIRECT_OPENAI:
        assert sent["stream_options"] == {"include_usage": True}, why
