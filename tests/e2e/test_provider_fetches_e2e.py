"""Provider-side fetches through the real Envoy: an `s3://` image for Bedrock or a `gs://` file for Vertex is a 400
naming the param and reaches no provider, unless the backend's `fetch_urls` grants its prefix (Bedrock then gets the
grant's bucket owner); a chain skips the backends that may not take the URL, and refuses when none may. Anthropic
clients' bodies passed through to Claude on Bedrock or Vertex never carry such a URL (a 400, whatever the grants)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from .gateways import Gateway, GatewayBuilder

OWNER = "111122223333"
NOVA = "amazon.nova-pro-v1:0"
GEMINI = "gemini-2.5-pro"
PARAM = "messages[0].content[1].image_url.url"
DEMOS = ("fx-bedrock", "fx-vertex", "fx-openai")


def look_at(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("fetches"), backend_defaults={"outlier_detection": None}) as build:
        bedrock, vertex = build.demo("fx-bedrock", "bedrock"), build.demo("fx-vertex", "vertex")
        build.backend("br", bedrock)
        build.backend("br-granted", bedrock,
                      fetch_urls=[{"prefix": "s3://acme-uploads/images/", "bucket_owner": OWNER}])
        build.backend("vx", vertex)
        build.backend("vx-granted", vertex, fetch_urls=[{"prefix": "gs://acme-uploads/"}])
        build.backend("oa", build.demo("fx-openai", "openai"))
        build.backend("br-claude", bedrock, schema="bedrock-anthropic",
                      fetch_urls=[{"prefix": "s3://acme-uploads/images/", "bucket_owner": OWNER}])
        build.backend("vx-claude", vertex, schema="vertex-anthropic", fetch_urls=[{"prefix": "gs://acme-uploads/"}])
        build.route("nova", ("br", NOVA))
        build.route("nova-granted", ("br-granted", NOVA))
        build.route("nova-then-openai", ("br", NOVA), ("oa", "gpt-4o-mini"))
        build.route("openai-then-nova-granted", ("oa", "gpt-4o-mini"), ("br-granted", NOVA))
        build.route("gemini", ("vx", GEMINI))
        build.route("gemini-granted", ("vx-granted", GEMINI))
        build.route("claude-bedrock", ("br-claude", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"))
        build.route("claude-vertex", ("vx-claude", "claude-sonnet-4-5@20250929"))
        build.key("fetches")
        yield build.start()


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    for demo in DEMOS:
        gateway.clear_provider_requests(demo)
    return gateway.client(max_retries=0)


def refused(client: openai.OpenAI, model: str, url: str) -> dict:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=model, messages=look_at(url))
    error = raised.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("provider_fetch_not_allowed", PARAM)
    return error


@pytest.mark.parametrize(("model", "url"), [("nova", "s3://acme-uploads/images/cat.png"),
                                            ("nova-granted", "s3://acme-uploads-evil/images/cat.png"),
                                            ("nova-granted", "s3://acme-uploads/images/../secrets/cat.png"),
                                            ("gemini", "gs://acme-uploads/cat.png"),
                                            ("gemini-granted", "gs://acme-uploads-evil/cat.png")])
def test_an_ungranted_url_is_a_400_naming_the_param_and_reaches_no_provider(
        gateway: Gateway, client: openai.OpenAI, model: str, url: str) -> None:
    refused(client, model, url)
    assert all(gateway.provider_requests(demo) == [] for demo in DEMOS)


def test_a_granted_s3_image_reaches_bedrock_with_the_bucket_owner(gateway: Gateway, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="nova-granted", messages=look_at("s3://acme-uploads/images/cat.png"))
    assert answer.choices[0].message.content
    sent = gateway.last_request("fx-bedrock")["body"]
    assert sent["messages"][0]["content"][1]["image"]["source"]["s3Location"] == {
        "uri": "s3://acme-uploads/images/cat.png", "bucketOwner": OWNER}


def test_a_granted_gs_image_reaches_vertex(gateway: Gateway, client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model="gemini-granted", messages=look_at("gs://acme-uploads/cat.png"))
    assert answer.choices[0].message.content
    sent = gateway.last_request("fx-vertex")["body"]
    assert sent["contents"][0]["parts"][1]["fileData"]["fileUri"] == "gs://acme-uploads/cat.png"


def test_a_chain_whose_backends_may_not_fetch_it_refuses_naming_both(gateway: Gateway,
                                                                      client: openai.OpenAI) -> None:
    """Bedrock may not read the URL and OpenAI can't (it has no S3 identity): no backend of the chain serves it."""
    error = refused(client, "nova-then-openai", "s3://acme-uploads/images/cat.png")
    assert "'br'" in error["message"] and "'oa'" in error["message"]
    assert all(gateway.provider_requests(demo) == [] for demo in DEMOS)


def test_a_chain_sends_the_url_to_the_backend_that_grants_it_only(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="openai-then-nova-granted", messages=look_at("s3://acme-uploads/images/cat.png"))
    assert (raw.status_code, raw.headers["x-babelgate-backend"]) == (200, "br-granted")
    assert gateway.provider_requests("fx-openai") == []


@pytest.mark.parametrize(("model", "url"), [("claude-bedrock", "s3://acme-uploads/images/cat.png"),
                                            ("claude-vertex", "gs://acme-uploads/cat.png")])
def test_an_anthropic_body_passed_through_never_carries_an_s3_or_gs_source(gateway: Gateway, model: str,
                                                                           url: str) -> None:
    for demo in DEMOS:
        gateway.clear_provider_requests(demo)
    claude = anthropic.Anthropic(base_url=gateway.url + "/anthropic", api_key=gateway.key, max_retries=0, timeout=30)
    image = {"type": "image", "source": {"type": "url", "url": url}}
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": [image]}])
    assert raised.value.status_code == 400 and "messages[0].content[0].source.url" in raised.value.message
    assert all(gateway.provider_requests(demo) == [] for demo in DEMOS)
