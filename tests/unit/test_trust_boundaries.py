"""What a caller controls can't steer the gateway past its policy: a request that skipped the body phase, provider
headers meant for the gateway's account, per-process tables keyed by caller text, reservation seals."""

from __future__ import annotations

import asyncio

import pytest

from ext_proc.auth.sealing import Sealer
from ext_proc.limits.memory_store import MemoryStore
from ext_proc.limits.store import Counter, StoreUnavailable
from ext_proc.stages import attempt, provider_headers
from ext_proc.stages.route import MAX_USER_CHARS, RouteStage
from ext_proc.wire.external_processor_pb2 import HttpTrailers, ProcessingRequest

from .stage_support import CLIENT_KEY, SERVICE_KEY, body, drive, headers, immediate, runtime

CHAT = {":method": "POST", ":path": "/v1/chat/completions", "authorization": f"Bearer {CLIENT_KEY}",
        "content-type": "application/json"}
HELLO = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_request_that_ends_with_trailers_and_no_body_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/2 lets a request be HEADERS + trailers: Envoy then skips the body phase, so the route stage says no
    at the trailers (and no chain route matches without its decision anyway)."""
    stage = RouteStage(runtime(monkeypatch))
    spoofed = {**CHAT, "x-babelgate-int-chain": "bg_direct_claude"}
    drive(stage, ProcessingRequest(request_headers=headers(spoofed)))
    reply = drive(stage, ProcessingRequest(request_trailers=HttpTrailers()))
    status, error, _ = immediate(reply)  # type: ignore[arg-type]
    assert status == 400
    assert error["error"]["code"] == "missing_body"


def test_trailers_after_a_body_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = RouteStage(runtime(monkeypatch))
    drive(stage, ProcessingRequest(request_headers=headers(CHAT)))
    drive(stage, ProcessingRequest(request_body=body(HELLO)))
    reply = drive(stage, ProcessingRequest(request_trailers=HttpTrailers()))
    assert reply is not None and reply.WhichOneof("response") == "request_trailers"


@pytest.mark.parametrize("where", ["header", "body"])
def test_an_end_user_id_longer_than_the_bound_is_a_400(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    runtime(monkeypatch)  # the provider secrets
    from ext_proc.config.loading import parse_config
    from ext_proc.runtime.build import compile_runtime

    from .stage_support import CONFIG

    limited = compile_runtime(parse_config(CONFIG + "limits: {per_user: [{window: day, requests: 5}]}\n"))
    stage = RouteStage(limited)
    long_user = "u" * (MAX_USER_CHARS + 1)
    service = {**CHAT, "authorization": f"Bearer {SERVICE_KEY}"}  # only a caller trusted to assert users names one
    request_headers = {**service, "x-user-id": long_user} if where == "header" else service
    reply = drive(stage, ProcessingRequest(request_headers=headers(request_headers)))
    if where == "body":
        reply = drive(stage, ProcessingRequest(request_body=body({**HELLO, "user": long_user})))
    status, error, _ = immediate(reply)  # type: ignore[arg-type]
    assert (status, error["error"]["code"]) == (400, "user_too_long")


def test_provider_account_headers_are_screened_and_its_request_id_renamed() -> None:
    answer = {":status": "200", "content-type": "application/json", "content-length": "12",
              "set-cookie": "__cf_bm=abc; HttpOnly", "openai-organization": "acme-prod",
              "openai-processing-ms": "120", "x-ratelimit-remaining-tokens": "9000",
              "anthropic-ratelimit-requests-remaining": "10", "cf-ray": "8f-IAD", "server": "cloudflare",
              "x-request-id": "req_123", "retry-after": "3", "x-babelgate-int-access-log": "{}",
              "x-babelgate-backend": "forged"}
    renamed, removed = provider_headers.screen(answer, frozenset({"x-babelgate-backend"}))
    assert renamed == [(provider_headers.UPSTREAM_REQUEST_ID, "req_123")]
    assert sorted(removed) == sorted(["set-cookie", "openai-organization", "openai-processing-ms",
                                      "x-ratelimit-remaining-tokens", "anthropic-ratelimit-requests-remaining",
                                      "cf-ray", "server", "x-request-id", "x-babelgate-int-access-log"])


def test_the_backend_memo_stays_bounded_whatever_texts_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempt, "_backend_by_metadata", {})
    from google.protobuf.struct_pb2 import Struct

    for index in range(attempt._MEMO_LIMIT + 500):
        text = (f'filter_metadata {{ key: "babelgate" value {{ fields {{ key: "backend" '
                f'value {{ string_value: "b{index}" }} }} }} }}')
        attributes = {"envoy.filters.http.ext_proc": Struct()}
        attributes["envoy.filters.http.ext_proc"].fields[attempt.constants.UPSTREAM_HOST_METADATA_ATTRIBUTE] \
            .string_value = text
        assert attempt.backend_from_attributes(attributes) == f"b{index}"
    assert len(attempt._backend_by_metadata) == attempt._MEMO_LIMIT


def test_the_in_memory_limiter_refuses_counters_past_its_maximum() -> None:
    store = MemoryStore(max_entries=10)

    async def reserve(key: str) -> None:
        await store.reserve([Counter(key, 100, 60, key)], [1])

    for index in range(10):
        asyncio.run(reserve(f"user-{index}"))
    asyncio.run(reserve("user-3"))  # an existing counter still counts
    with pytest.raises(StoreUnavailable, match="maximum"):
        asyncio.run(reserve("user-new"))
    assert len(store) == 10


def test_a_seal_from_another_key_or_an_edited_text_does_not_open() -> None:
    ours, theirs = Sealer(b"k" * 32), Sealer(b"x" * 32)
    sealed = ours.seal('{"e":[["bg:key:alice:total_tokens:minute:1",500]]}')
    assert ours.open(sealed) == '{"e":[["bg:key:alice:total_tokens:minute:1",500]]}'
    assert theirs.open(sealed) is None
    assert ours.open(sealed.replace("500", "-500")) is None
    assert ours.open("no seal at all") is None
