"""The Responses API (`/v1/responses`) through a real gateway (Envoy + two ext_proc processes + Redis) in front of
every kind of demo provider, driven by the openai SDK: `responses.create`, `responses.stream`, `responses.parse`,
`previous_response_id` chains, `retrieve`, `input_items`, `delete`, and what a client may not do.

OpenAI and Azure backends get the client's body natively (`/v1/responses`, `/openai/responses`); every other backend
gets the gateway's translation to chat completions and back. What reached each demo provider is checked: the native
bodies against the openai SDK's `ResponseCreateParams`, the translated ones by the golden validators.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import ResponseStreamEvent

from tests.unit.goldens import assert_valid_responses_request

from .claude_cli import assert_valid_provider_request
from .gateways import Gateway, GatewayBuilder, every_backend_kind
from .support import fault

NATIVE = {"gpt": "openai", "azure": "azure"}
"""Routes whose backend serves the Responses API itself -> demo handle."""
TRANSLATED = {  # route -> (demo handle, backend schema, backend model)
    "claude": ("anthropic", "anthropic", "claude-sonnet-4-5-20250929"),
    "nova": ("bedrock", "bedrock-converse", "amazon.nova-pro-v1:0"),
    "bedrock-claude": ("bedrock", "bedrock-anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    "gemini": ("gemini", "gemini", "gemini-2.5-flash"),
    "vertex-gemini": ("vertex", "vertex-gemini", "gemini-2.5-flash"),
    "vertex-claude": ("vertex", "vertex-anthropic", "claude-sonnet-4-5@20250929"),
    "command": ("cohere", "cohere", "command-a-03-2025"),
    "compat": ("compat", "openai", "gpt-4o-mini"),
}
"""Routes the gateway translates: what reached the provider is checked against that provider's SDK."""
ROUTES = sorted({**NATIVE, **TRANSLATED})
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(Path(tmp_path_factory.mktemp("responses")), processes=2) as build:
        build.redis()
        every_backend_kind(build)
        build.backend("compat", build.demo("compat", "openai"), responses_api=False)
        build.route("gpt", ("oa", "gpt-4o-mini"))
        build.route("azure", ("az", "gpt-4o"))
        build.route("compat", ("compat", "gpt-4o-mini"))
        build.route("claude", ("an", "claude-sonnet-4-5-20250929"))
        build.route("nova", ("br", "amazon.nova-pro-v1:0"))
        build.route("bedrock-claude", ("brc", "anthropic.claude-sonnet-4-5-20250929-v1:0"))
        build.route("gemini", ("gm", "gemini-2.5-flash"))
        build.route("vertex-gemini", ("vg", "gemini-2.5-flash"))
        build.route("vertex-claude", ("vc", "claude-sonnet-4-5@20250929"))
        build.route("command", ("co", "command-a-03-2025"))
        build.route("gpt-then-claude", ("oa", "gpt-4o-mini"), ("an", "claude-sonnet-4-5-20250929"))
        build.route("claude-then-gpt", ("an", "claude-sonnet-4-5-20250929"), ("oa", "gpt-4o-mini"))
        build.route("ruled", ("oa", "gpt-4o-mini"), ("an", "claude-sonnet-4-5-20250929"),
                    rules=[{"when": {"metadata": {"purpose": "eval"}}, "backends": ["an"]}])
        build.key("k")
        build.key("other")
        build.key("small", limits=[{"window": "minute", "total_tokens": 300}])
        yield build.start()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return gateway.client()


def _native_request(gateway: Gateway, handle: str) -> dict:
    sent = gateway.last_request(handle)
    assert sent["path"].partition("?")[0] in ("/v1/responses", "/openai/responses"), sent["path"]
    assert_valid_responses_request(sent["body"])
    return sent["body"]


def _check_provider_request(gateway: Gateway, route: str) -> None:
    if route in NATIVE:
        _native_request(gateway, NATIVE[route])
        return
    handle, schema, model = TRANSLATED[route]
    assert_valid_provider_request(gateway.last_request(handle), schema, model)


@pytest.mark.parametrize("route", ROUTES)
def test_create_answers_on_every_backend(gateway: Gateway, client: openai.OpenAI, route: str) -> None:
    response = client.responses.create(model=route, instructions="Be brief.", input="hello there",
                                       max_output_tokens=200)
    assert response.status == "completed" and response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.id.startswith("resp_")
    _check_provider_request(gateway, route)


@pytest.mark.parametrize("route", ROUTES)
def test_stream_events_are_the_sdks_own_on_every_backend(gateway: Gateway, client: openai.OpenAI,
                                                         route: str) -> None:
    deltas: list[str] = []
    with client.responses.stream(model=route, input="tell me a story", max_output_tokens=200) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed" and "".join(deltas) == final.output_text != ""
    assert final.usage is not None and final.usage.output_tokens > 0
    _check_provider_request(gateway, route)


def test_raw_stream_is_typed_and_numbered(gateway: Gateway) -> None:
    """Every event as it comes off the wire: the SDK's types, sequence numbers counting from 0, one terminal event."""
    with httpx.Client(timeout=30) as http, http.stream(
            "POST", gateway.url + "/v1/responses", headers={"authorization": f"Bearer {gateway.key}"},
            json={"model": "claude", "input": "hi", "stream": True, "store": False}) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = [EVENTS.validate_json(line[6:]) for line in answer.iter_lines() if line.startswith("data: ")]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"


@pytest.mark.parametrize("route", ["gpt", "claude", "nova", "gemini"])
def test_function_tool_loop_with_previous_response_id(gateway: Gateway, client: openai.OpenAI, route: str) -> None:
    first = client.responses.create(model=route, input="What is the weather in Paris?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    second = client.responses.create(
        model=route, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}])
    assert second.previous_response_id == first.id
    assert second.status == "completed" and second.output_text
    items = client.responses.input_items.list(second.id, order="asc").data
    kinds = [item.type for item in items]
    assert kinds[0] == "message" and "function_call" in kinds and kinds[-1] == "function_call_output"
    if route in NATIVE:  # the conversation went to the provider inline: it never sees the gateway's ids
        body = _native_request(gateway, NATIVE[route])
        assert "previous_response_id" not in body and len(body["input"]) == len(items)


@pytest.mark.parametrize("route", ["gpt", "claude"])
def test_parse_gives_schema_valid_output(client: openai.OpenAI, route: str) -> None:
    class City(pydantic.BaseModel):
        name: str
        population: int

    parsed = client.responses.parse(model=route, input="Name a city.", text_format=City)
    assert isinstance(parsed.output_parsed, City)


def test_previous_response_chain_spans_both_processes(gateway: Gateway, client: openai.OpenAI) -> None:
    """Six turns, each naming the last: the two ext_proc processes share the store (Redis), so whichever serves a
    turn finds the one before, and the provider's last request carries every earlier turn."""
    previous = None
    for turn in range(6):
        response = client.responses.create(model="claude", input=f"turn {turn}", previous_response_id=previous)
        previous = response.id
    sent = gateway.last_request("anthropic")["body"]["messages"]
    said = [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in sent
            if m["role"] == "user"]
    assert [text for text in said if text.startswith("turn")] == [f"turn {n}" for n in range(6)]


def test_retrieve_and_delete_only_for_the_key_that_made_it(gateway: Gateway, client: openai.OpenAI) -> None:
    made = client.responses.create(model="gemini", input="keep this")
    assert client.responses.retrieve(made.id).output_text == made.output_text
    stranger = gateway.client("other")
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(made.id)
    with pytest.raises(openai.BadRequestError) as refused:
        stranger.responses.create(model="gemini", input="go on", previous_response_id=made.id)
    assert refused.value.body["param"] == "previous_response_id"
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    made = client.responses.create(model="gpt", input="forget this", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_claude_thinking_round_trips_statelessly(gateway: Gateway, client: openai.OpenAI) -> None:
    """As Codex works (`store: false`, `include: reasoning.encrypted_content`): the signed thinking comes back in a
    reasoning item's `encrypted_content`, and handed back it reaches Claude as the signed blocks it was."""
    first = client.responses.create(model="claude", input="What is the weather in Paris?", tools=[WEATHER],
                                    store=False, include=["reasoning.encrypted_content"],
                                    reasoning={"effort": "medium", "summary": "auto"}, max_output_tokens=16000)
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content and reasoning[0].summary
    call = next(item for item in first.output if item.type == "function_call")
    history = [item.model_dump(exclude_none=True) for item in first.output]
    second = client.responses.create(
        model="claude", store=False, include=["reasoning.encrypted_content"], tools=[WEATHER],
        reasoning={"effort": "medium"}, max_output_tokens=16000,
        input=[{"role": "user", "content": "What is the weather in Paris?"}, *history,
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.status == "completed"
    assistant = next(m for m in gateway.last_request("anthropic")["body"]["messages"] if m["role"] == "assistant")
    assert assistant["content"][0]["type"] == "thinking" and assistant["content"][0]["signature"]


def test_claude_reasoning_is_dropped_cleanly_for_openai(gateway: Gateway, client: openai.OpenAI) -> None:
    """The gateway's envelope never reaches a native OpenAI backend (which would refuse reasoning it can't read)."""
    first = client.responses.create(model="claude", input="think", store=False,
                                    include=["reasoning.encrypted_content"], reasoning={"effort": "low"},
                                    max_output_tokens=8000)
    history = [item.model_dump(exclude_none=True) for item in first.output]
    assert any(item["type"] == "reasoning" for item in history)
    second = client.responses.create(model="gpt", store=False, input=[*history, {"role": "user", "content": "more"}])
    assert second.status == "completed"
    assert not any(item.get("type") == "reasoning" for item in _native_request(gateway, "openai")["input"])


def test_hosted_tools_are_named_when_dropped(gateway: Gateway) -> None:
    answer = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {gateway.key}"},
                        json={"model": "claude", "input": "hi", "tools": [{"type": "web_search"}, WEATHER]},
                        timeout=30)
    assert answer.status_code == 200
    assert "tools[].web_search" in answer.headers["x-babelgate-dropped-fields"].split(",")
    native = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {gateway.key}"},
                        json={"model": "gpt", "input": "hi", "tools": [{"type": "web_search_preview"}]}, timeout=30)
    assert native.status_code == 200 and "x-babelgate-dropped-fields" not in native.headers
    assert _native_request(gateway, "openai")["tools"] == [{"type": "web_search_preview"}]


@pytest.mark.parametrize("stream", [False, True])
def test_failover_from_native_to_translated(gateway: Gateway, client: openai.OpenAI, stream: bool) -> None:
    """OpenAI answers 503: the same request goes on to Claude, translated, and the client can't tell."""
    gateway.clear_provider_requests("anthropic")
    response = client.responses.create(model="gpt-then-claude", input="hello failover", stream=stream,
                                       extra_headers=fault("openai:503"))
    if stream:
        events = list(response)  # type: ignore[arg-type]
        assert events[-1].type == "response.completed"
        response = events[-1].response
    assert response.status == "completed" and response.output_text  # type: ignore[union-attr]
    assert "hello failover" in str(gateway.last_request("anthropic")["body"]["messages"])


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "claude", "input": [{"type": "no_such_item"}]}, 400, "input[0].type"),
    ({"model": "claude", "input": [{"type": "function_call", "name": "f"}]}, 400, None),
    ({"model": "claude", "input": "hi", "previous_response_id": "resp_unknown"}, 400, "previous_response_id"),
    ({"model": "claude", "input": "hi", "background": True}, 400, "background"),
    ({"model": "claude", "input": "hi", "conversation": "conv_1"}, 400, "conversation"),
    ({"model": "claude", "input": "hi", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}},
     400, None),
    ({"model": "nowhere", "input": "hi"}, 404, "model"),
    ({"model": "claude", "input": "x" * (9 * 1024 * 1024)}, 413, None),
])
def test_bad_input_is_a_clear_openai_error(gateway: Gateway, body: dict, status: int, param: str | None) -> None:
    answer = httpx.post(gateway.url + "/v1/responses", headers={"authorization": f"Bearer {gateway.key}"},
                        json=body, timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param


def test_stored_response_calls_need_a_key_and_known_methods(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/v1/responses/resp_x", timeout=10).status_code == 401
    bearer = {"authorization": f"Bearer {gateway.key}"}
    assert httpx.put(gateway.url + "/v1/responses/resp_x", headers=bearer, timeout=10).status_code == 405
    cancel = httpx.post(gateway.url + "/v1/responses/resp_x/cancel", headers=bearer, timeout=10)
    assert cancel.status_code == 400 and "background" in cancel.json()["error"]["message"]
    odd = httpx.get(gateway.url + "/v1/responses/" + "%2e%2e%2fadmin", headers=bearer, timeout=10)
    assert odd.status_code == 404


def test_limits_reserve_from_max_output_tokens(gateway: Gateway) -> None:
    """A key with 300 tokens a minute: a request that may produce 1,000 can never fit."""
    small = gateway.client("small")
    with pytest.raises(openai.RateLimitError):
        small.responses.create(model="claude", input="hi", max_output_tokens=1000)
    assert small.responses.create(model="claude", input="hi", max_output_tokens=50).status == "completed"


def test_every_stored_response_is_listed_with_ids(client: openai.OpenAI) -> None:
    made = client.responses.create(model="command", input=[{"role": "user", "content": "one"},
                                                           {"role": "user", "content": "two"}])
    first = client.responses.input_items.list(made.id, limit=1, order="asc")
    assert first.has_more and first.data[0].id
    rest = client.responses.input_items.list(made.id, after=first.data[0].id, order="asc")
    assert [item.content[0].text for item in rest.data] == ["two"]  # type: ignore[union-attr]


def test_routing_rules_read_the_clients_metadata(client: openai.OpenAI) -> None:
    """A Responses body's `metadata` stays out of its chat form, yet rules match on it as they do for chat."""
    ruled = client.responses.with_raw_response.create(model="ruled", input="hi", metadata={"purpose": "eval"})
    assert ruled.headers["x-babelgate-backend"] == "an"
    assert ruled.parse().metadata == {"purpose": "eval"}
    plain = client.responses.with_raw_response.create(model="ruled", input="hi")
    assert plain.headers["x-babelgate-backend"] == "oa"
