"""Provider-side fetches are opt-in: an `s3://` / `gs://` URL a provider would read with the gateway's own identity is
refused unless the backend's `fetch_urls` grants its prefix (exactly); an S3 grant's bucket owner goes to Bedrock as
`s3Location.bucketOwner`; a chain skips the backends that may not take it; Anthropic bodies passed through never
carry one."""

from __future__ import annotations

import pytest

from ext_proc.config.loading import parse_config
from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic_passthrough, fetches
from ext_proc.runtime.build import BackendInfo, Runtime, compile_runtime
from ext_proc.stages.translations import translate

from .goldens import CONVERSE_MODEL, GEMINI_MODEL, assert_valid_converse_request, assert_valid_gemini_request

OWNER = "111122223333"
CONFIG = f"""
backends:
  - {{id: br, schema: bedrock-converse, base_url: "https://bedrock-runtime.us-east-1.amazonaws.com",
      aws: {{region: us-east-1}}}}
  - {{id: br-granted, schema: bedrock-converse, base_url: "https://bedrock-runtime.us-east-1.amazonaws.com",
      aws: {{region: us-east-1}},
      fetch_urls: [{{prefix: "s3://bucket/", bucket_owner: "{OWNER}"}}, {{prefix: "s3://other/a"}}]}}
  - {{id: vx, schema: vertex-gemini, base_url: "https://us-central1-aiplatform.googleapis.com",
      gcp: {{project: p, location: us-central1}}}}
  - {{id: vx-granted, schema: vertex-gemini, base_url: "https://us-central1-aiplatform.googleapis.com",
      gcp: {{project: p, location: us-central1}}, fetch_urls: [{{prefix: "gs://bucket/shared/"}}]}}
  - {{id: gm, schema: gemini, base_url: "https://generativelanguage.googleapis.com", api_key: {{env: BG_UNIT_X}}}}
  - {{id: oa, schema: openai, base_url: "https://api.openai.com/v1", api_key: {{env: BG_UNIT_X}}}}
routes:
  - model: chain
    backends: [{{backend: br, model: "{CONVERSE_MODEL}"}}, {{backend: oa, model: gpt-4o}}]
  - model: granted-chain
    backends: [{{backend: oa, model: gpt-4o}}, {{backend: br-granted, model: "{CONVERSE_MODEL}"}}]
"""
MODELS = {"br": CONVERSE_MODEL, "br-granted": CONVERSE_MODEL, "vx": GEMINI_MODEL, "vx-granted": GEMINI_MODEL,
          "gm": GEMINI_MODEL, "oa": "gpt-4o"}


@pytest.fixture(scope="module")
def built() -> Runtime:
    return compile_runtime(parse_config(CONFIG), load_secrets=False)


def chat(*parts: dict, **extra: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "look"}, *parts]}],
            **extra}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def file(data: str, filename: str = "report.pdf") -> dict:
    return {"type": "file", "file": {"file_data": data, "filename": filename}}


def send(built: Runtime, backend: str, body: dict) -> dict:
    info: BackendInfo = built.backends[backend]
    return info.chat_request(body, MODELS[backend], 1024)


def refusal(built: Runtime, backend: str, body: dict) -> BadRequest:
    with pytest.raises(BadRequest) as raised:
        send(built, backend, body)
    return raised.value


# --- refused by default --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "part", "param"), [
    ("br", image("s3://bucket/cat.png"), "messages[0].content[1].image_url.url"),
    ("vx", image("gs://bucket/cat.png"), "messages[0].content[1].image_url.url"),
    ("gm", image("gs://bucket/cat.png"), "messages[0].content[1].image_url.url"),
    ("vx", file("gs://bucket/report.pdf"), "messages[0].content[1].file.file_data"),
    ("oa", image("s3://bucket/cat.png"), "messages[0].content[1].image_url.url"),
])
def test_a_url_the_provider_would_fetch_is_refused_by_default_naming_the_param(
        built: Runtime, backend: str, part: dict, param: str) -> None:
    refused = refusal(built, backend, chat(part))
    assert (refused.status, refused.code, refused.param) == (400, "provider_fetch_not_allowed", param)
    assert refused.message.startswith(param)


def test_an_s3_document_on_bedrock_is_refused_by_its_translator_which_reads_data_urls_only(built: Runtime) -> None:
    refused = refusal(built, "br", chat(file("s3://bucket/report.pdf")))
    assert refused.param == "messages[0].content[1]"


def test_a_grant_on_another_backend_allows_nothing_here(built: Runtime) -> None:
    assert refusal(built, "vx", chat(image("gs://bucket/shared/cat.png"))).code == "provider_fetch_not_allowed"


# --- allowed by a grant, exactly -----------------------------------------------------------------------------------


def test_an_s3_grant_sets_the_bucket_owner_and_the_request_still_fits_botocore(built: Runtime) -> None:
    sent = send(built, "br-granted", chat(image("s3://bucket/cats/cat.png")))
    location = sent["messages"][0]["content"][1]["image"]["source"]["s3Location"]
    assert location == {"uri": "s3://bucket/cats/cat.png", "bucketOwner": OWNER}
    assert_valid_converse_request(sent, model=CONVERSE_MODEL)


def test_a_grant_without_owner_sends_the_location_as_it_was(built: Runtime) -> None:
    sent = send(built, "br-granted", chat(image("s3://other/a/cat.png")))
    assert sent["messages"][0]["content"][1]["image"]["source"]["s3Location"] == {"uri": "s3://other/a/cat.png"}


def test_a_gs_grant_allows_its_prefix_and_the_request_still_fits_google_genai(built: Runtime) -> None:
    sent = send(built, "vx-granted", chat(image("gs://bucket/shared/cat.png")))
    assert sent["contents"][0]["parts"][1] == {"fileData": {"mimeType": "image/png",
                                                            "fileUri": "gs://bucket/shared/cat.png"}}
    assert_valid_gemini_request(sent)


@pytest.mark.parametrize(("backend", "url"), [
    ("br-granted", "s3://bucket-evil/cat.png"),       # another bucket whose name starts alike
    ("br-granted", "s3://bucke/cat.png"),
    ("br-granted", "s3://other/ab/cat.png"),          # `s3://other/a` is a folder, not a string prefix
    ("br-granted", "s3://other/a.png"),
    ("br-granted", "s3://bucket/../secrets/cat.png"),  # traversal, even under a grant
    ("br-granted", "s3://bucket/a/./cat.png"),
    ("br-granted", "s3://bucket/%2e%2e/cat.png"),      # percent-encoding
    ("br-granted", "s3://bucket/a%2Fb.png"),
    ("br-granted", "s3://bucket/a\\..\\b.png"),
    ("br-granted", "s3://bucket/a b.png"),
    ("br-granted", "s3://bucket/a\tb.png"),
    ("br-granted", "s3://bucket/a\x00.png"),
    ("br-granted", " s3://bucket/cat.png"),
    ("br-granted", "S3://bucket/cat.png"),             # case: the grant says s3://bucket/
    ("br-granted", "s3://BUCKET/cat.png"),
    ("vx-granted", "gs://bucket/shared-evil/cat.png"),
    ("vx-granted", "gs://bucket/Shared/cat.png"),
    ("vx-granted", "GS://bucket/shared/cat.png"),
    ("vx-granted", "gs://bucket/shared/../private/cat.png"),
])
def test_only_an_exact_prefix_is_granted(built: Runtime, backend: str, url: str) -> None:
    with pytest.raises(BadRequest) as raised:
        send(built, backend, chat(image(url)))
    assert raised.value.param is not None and raised.value.param.startswith("messages[0].content[1]")
    if url.startswith(("s3://", "gs://")):  # to the translators, `S3://` and ` s3://` are no s3:// URL: their 400
        assert raised.value.code == "provider_fetch_not_allowed"


@pytest.mark.parametrize("url", ["s3://other/a", "s3://other/a/", "s3://other/a/b/c.png"])
def test_a_folder_grant_covers_itself_and_what_is_under_it(url: str) -> None:
    grant = parse_config(CONFIG).backends[1].fetch_urls[1]
    assert fetches._covers(grant.prefix, url)


@pytest.mark.parametrize(("backend", "part"), [
    ("br", image("data:image/png;base64,iVBORw0KGgo=")),
    ("vx", image("https://example.com/s3://bucket/cat.png")),
    ("gm", image("https://example.com/cat.png")),
    ("vx", image("https://generativelanguage.googleapis.com/v1beta/files/abc123.png")),  # Vertex: a public URL
    ("oa", image("https://example.com/cat.png")),
    ("br", {"type": "text", "text": "what is in s3://bucket/cat.png?"}),
])
def test_other_urls_and_text_are_untouched(built: Runtime, backend: str, part: dict) -> None:
    info = built.backends[backend]
    body = chat(part)
    assert send(built, backend, body) == info.translator.chat_request(body, MODELS[backend], default_max_tokens=1024)


def test_a_request_without_fetched_urls_gets_its_translation_as_it_is(built: Runtime) -> None:
    body = chat(image("data:image/png;base64,iVBORw0KGgo="))
    upstream = {"messages": []}
    assert fetches.checked("bedrock-converse", (), body, upstream) is upstream


# --- provider_options: what is merged after translation is checked too ---------------------------------------------


def converse_options(location: dict) -> dict:
    document = {"document": {"format": "pdf", "name": "report", "source": {"s3Location": location}}}
    return {"bedrock-converse": {"messages": [{"role": "user", "content": [{"text": "read"}, document]}]}}


def test_an_s3_document_in_provider_options_is_refused_by_default(built: Runtime) -> None:
    options = converse_options({"uri": "s3://bucket/report.pdf"})
    refused = refusal(built, "br", chat(provider_options=options))
    assert (refused.code, refused.param) == ("provider_fetch_not_allowed", "provider_options")


def test_a_granted_s3_document_in_provider_options_gets_the_owner_without_changing_the_client_body(
        built: Runtime) -> None:
    options = converse_options({"uri": "s3://bucket/report.pdf", "bucketOwner": "999999999999"})
    body = chat(provider_options=options)
    sent = send(built, "br-granted", body)
    assert sent["messages"][0]["content"][1]["document"]["source"]["s3Location"] == {
        "uri": "s3://bucket/report.pdf", "bucketOwner": OWNER}
    assert options["bedrock-converse"]["messages"][0]["content"][1]["document"]["source"]["s3Location"][
        "bucketOwner"] == "999999999999"
    assert_valid_converse_request(sent, model=CONVERSE_MODEL)


@pytest.mark.parametrize(("backend", "data"), [
    ("vx", {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}}),
    ("vx", {"file_data": {"mime_type": "image/png", "file_uri": "gs://bucket/cat.png"}}),
    ("gm", {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}}),
    # AI Studio's Files API: files of the gateway key's project, whoever uploaded them
    ("gm", {"fileData": {"mimeType": "image/png",
                         "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc123"}}),
])
def test_a_file_in_gemini_provider_options_the_provider_would_fetch_is_refused(built: Runtime, backend: str,
                                                                               data: dict) -> None:
    options = {"vertex-gemini": {"contents": [{"role": "user", "parts": [{"text": "see"}, data]}]}}
    refused = refusal(built, backend, chat(provider_options=options))
    assert (refused.code, refused.param) == ("provider_fetch_not_allowed", "provider_options")


# --- chains: a backend that may not take the URL leaves the order --------------------------------------------------


def test_a_chain_whose_backends_may_not_fetch_refuses_naming_each(built: Runtime) -> None:
    route = built.routes["chain"]
    with pytest.raises(BadRequest) as raised:
        translate(route, route.backends, chat(image("s3://bucket/cat.png")), "chain", 1024)
    assert (raised.value.code, raised.value.param) == ("provider_fetch_not_allowed",
                                                       "messages[0].content[1].image_url.url")
    assert "'br'" in raised.value.message and "'oa'" in raised.value.message


def test_a_chain_sends_the_url_only_to_the_backend_that_grants_it(built: Runtime) -> None:
    route = built.routes["granted-chain"]
    translated = translate(route, route.backends, chat(image("s3://bucket/cat.png")), "granted-chain", 1024)
    assert set(translated.upstream) == {"br-granted"}


# --- Anthropic bodies passed through to Claude backends ------------------------------------------------------------


def messages_body(*blocks: dict) -> dict:
    return {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": [*blocks]}]}


def url_image(url: str) -> dict:
    return {"type": "image", "source": {"type": "url", "url": url}}


@pytest.mark.parametrize(("body", "param"), [
    (messages_body(url_image("s3://bucket/cat.png")), "messages[0].content[0].source.url"),
    (messages_body({"type": "document", "source": {"type": "url", "url": "gs://bucket/report.pdf"}}),
     "messages[0].content[0].source.url"),
    (messages_body({"type": "tool_result", "tool_use_id": "t1", "content": [url_image("s3://bucket/cat.png")]}),
     "messages[0].content[0].content[0].source.url"),
    (messages_body({"type": "document", "source": {"type": "content", "content": [url_image("gs://b/c.png")]}}),
     "messages[0].content[0].source.content[0].source.url"),
])
@pytest.mark.parametrize("schema", sorted(anthropic_passthrough.SCHEMAS))
def test_a_passed_through_anthropic_body_never_carries_an_s3_or_gs_source(schema: str, body: dict,
                                                                           param: str) -> None:
    with pytest.raises(BadRequest) as raised:
        anthropic_passthrough.request(schema, body, "claude-x", [])
    assert (raised.value.code, raised.value.param) == ("provider_fetch_not_allowed", param)


def test_a_passed_through_https_source_is_untouched() -> None:
    body = messages_body(url_image("https://example.com/cat.png"))
    upstream, _ = anthropic_passthrough.request("vertex-anthropic", body, "claude-x", [])
    assert upstream["messages"] == body["messages"]


def test_an_anthropic_url_document_translated_for_a_chat_backend_is_checked_too(built: Runtime) -> None:
    part = {"type": "anthropic", "anthropic": {"type": "document", "source": {"type": "url", "url": "s3://b/r.pdf"}}}
    refused = refusal(built, "oa", chat(part))
    assert refused.param == "messages[0].content[1].anthropic.source.url"


def test_an_anthropic_body_with_a_fetched_url_is_refused_before_anything_is_reserved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The passthrough's refusal happens while the route stage picks the backends, not in the attempt: a direct
    route's 400 leaves no reservation counted, and a chain goes on to the backends that can serve the request."""
    from ext_proc.stages.route import RouteStage
    from ext_proc.wire.external_processor_pb2 import ProcessingRequest

    from .stage_support import CLIENT_KEY, body, drive, headers, immediate, runtime

    limited = runtime(monkeypatch, "limits: {per_key: [{window: hour, total_tokens: 100000}]}\n")
    stage = RouteStage(limited)
    drive(stage, ProcessingRequest(request_headers=headers(
        {":method": "POST", ":path": "/anthropic/v1/messages", "x-api-key": CLIENT_KEY})))
    image = {"type": "image", "source": {"type": "url", "url": "s3://bucket/cat.png"}}
    reply = drive(stage, ProcessingRequest(request_body=body(
        {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": [image]}]})))
    status, error, _ = immediate(reply)
    assert status == 400 and "s3://" in error["error"]["message"]
    assert stage._reservation is None
