"""Structured outputs and PDF documents on every backend schema, driven with the openai SDK through a real gateway
(Envoy + ext_proc) in front of the demo providers (issue 17, "How it is verified").

- The SDK's structured-output helper (`chat.completions.parse` with a pydantic model) must come back parsed on every
  schema, and the provider-bound request must carry the schema in that provider's native form.
- A PDF sent as an OpenAI `file` part must reach each schema that reads documents in its native form; Cohere, which
  reads none, makes its only backend ineligible: a 400 that names it.

Each schema has a demo provider of its own, so every request a demo received is validated (against the provider
SDK's request types, `claude_cli.provider_requests`) without sorting requests by schema. A 200 with exactly one new
provider request also shows the demo's own validation passed: the demos answer 400 to what they refuse.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pydantic
import pytest

from ext_proc.providers.anthropic import ANSWER_TOOL

from .claude_cli import provider_requests
from .gateways import Gateway, GatewayBuilder


class CityFacts(pydantic.BaseModel):
    city: str
    population: int


DEMO_FACTS = CityFacts(city="demo", population=1)
"""What the demos fill a schema with (`answers.tool_input`): strings "demo", integers 1."""
FILENAME = "tiny.pdf"


def _tiny_pdf() -> bytes:
    """A one-page, empty PDF whose cross-reference table is right (offsets computed, not typed)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>"]
    pdf, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return pdf + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


PDF_BASE64 = base64.b64encode(_tiny_pdf()).decode()
FILE_PART = {"type": "file", "file": {"filename": FILENAME, "file_data": f"data:application/pdf;base64,{PDF_BASE64}"}}
ANTHROPIC_DOCUMENT = {"type": "document", "title": FILENAME,
                      "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_BASE64}}


# -- where each schema puts what was asked -----------------------------------------------------------------------


def _openai_format(body: dict) -> dict:
    assert body["response_format"]["type"] == "json_schema"
    return body["response_format"]["json_schema"]["schema"]


def _claude_format(body: dict) -> dict:
    assert body["output_config"]["format"]["type"] == "json_schema" and "tools" not in body
    return body["output_config"]["format"]["schema"]


def _claude_answer_tool(body: dict) -> dict:
    assert "output_config" not in body and body["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}
    [tool] = body["tools"]
    assert tool["name"] == ANSWER_TOOL
    return tool["input_schema"]


def _converse_format(body: dict) -> dict:
    text_format = body["outputConfig"]["textFormat"]
    assert text_format["type"] == "json_schema" and "toolConfig" not in body
    return json.loads(text_format["structure"]["jsonSchema"]["schema"])  # Converse takes the schema as JSON text


def _gemini_format(body: dict) -> dict:
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    return config.get("responseJsonSchema") or config["responseSchema"]


def _cohere_format(body: dict) -> dict:
    assert body["response_format"]["type"] == "json_object"
    return body["response_format"]["json_schema"]


def _openai_document(body: dict) -> None:
    assert FILE_PART in body["messages"][0]["content"]


def _claude_document(body: dict) -> None:
    assert ANTHROPIC_DOCUMENT in body["messages"][0]["content"]


def _converse_document(body: dict) -> None:
    document = {"document": {"format": "pdf", "name": "tiny", "source": {"bytes": PDF_BASE64}}}
    assert document in body["messages"][0]["content"]


def _gemini_document(body: dict) -> None:
    assert {"inlineData": {"mimeType": "application/pdf", "data": PDF_BASE64}} in body["contents"][0]["parts"]


@dataclass(frozen=True)
class Case:
    """One backend schema under test: its route (backend `b-<route>`), its own demo provider, the backend model,
    where the structured-output schema lands and how the PDF arrives (None: refused)."""

    route: str
    kind: str
    schema: str
    model: str
    structured: Callable[[dict], dict]
    document: Callable[[dict], None] | None
    gap: str | None = None
    """Why the demo can't answer with schema-conforming JSON (the parse case is then a strict xfail)."""
    fields: dict[str, Any] = field(default_factory=dict, hash=False)


CASES = [
    Case("openai", "openai", "openai", "gpt-4o-mini", _openai_format, _openai_document),
    Case("azure", "azure", "azure-openai", "gpt-4o-prod", _openai_format, _openai_document,
         fields={"azure": {"api_version": "2024-10-21"}}),
    Case("anthropic", "anthropic", "anthropic", "claude-sonnet-4-5-20250929", _claude_format, _claude_document),
    Case("anthropic-answer-tool", "anthropic", "anthropic", "claude-sonnet-4-20250514", _claude_answer_tool,
         _claude_document),
    Case("bedrock-claude", "bedrock", "bedrock-anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0",
         _claude_format, _claude_document),
    Case("vertex-claude", "vertex", "vertex-anthropic", "claude-sonnet-4-5@20250929", _claude_format,
         _claude_document),
    Case("converse", "bedrock", "bedrock-converse", "amazon.nova-pro-v1:0", _converse_format, _converse_document),
    Case("gemini", "gemini", "gemini", "gemini-2.5-flash", _gemini_format, _gemini_document),
    Case("vertex-gemini", "vertex", "vertex-gemini", "gemini-2.5-pro", _gemini_format, _gemini_document),
    Case("cohere", "cohere", "cohere", "command-a-03-2025", _cohere_format, None),
]
BY_ROUTE = {case.route: case for case in CASES}
VALIDATED_AS = {"vertex-gemini": "gemini"}
"""Schemas whose requests are checked with another schema's validator (the google-genai one serves both APIs)."""
AWS_ACCESS_KEY_ID = "AKIDE2E" + secrets.token_hex(6).upper()
"""Shared by both Bedrock demos: the gateway's servers hold one set of AWS credentials."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("structured")) as build:
        for case in CASES:
            api_key = AWS_ACCESS_KEY_ID if case.kind == "bedrock" else None
            demo = build.demo(case.route, case.kind, name=f"so-{case.route}", api_key=api_key)
            build.backend(f"b-{case.route}", demo, case.schema, **case.fields)
            build.route(case.route, (f"b-{case.route}", case.model))
        build.key("structured")
        yield build.start()


def _sent(gateway: Gateway, case: Case, before: int) -> dict:
    """The one model request this test's call sent to the case's demo, validated (with every earlier one) against
    the provider SDK's request types."""
    requests = _validated(gateway, case)
    assert len(requests) == before + 1, [request["path"] for request in requests[before:]]
    return requests[-1]["body"]


def _validated(gateway: Gateway, case: Case) -> list[dict]:
    return provider_requests(gateway, case.route, VALIDATED_AS.get(case.schema, case.schema), case.model)


def _model_requests(gateway: Gateway, case: Case) -> int:
    return sum(1 for request in gateway.provider_requests(case.route)
               if request["method"] == "POST" and isinstance(request["body"], dict))


def _structured_params() -> list[Any]:
    return [pytest.param(case.route, marks=pytest.mark.xfail(strict=True,
                                                              reason=case.gap)) if case.gap else case.route
            for case in CASES]


@pytest.mark.parametrize("route", _structured_params())
def test_parse_with_a_pydantic_model_answers_parsed_on_every_schema(gateway: Gateway, route: str) -> None:
    case = BY_ROUTE[route]
    before = _model_requests(gateway, case)
    raw = gateway.client().chat.completions.with_raw_response.parse(
        model=route, messages=[{"role": "user", "content": "Facts about Lima, please."}], response_format=CityFacts)
    assert raw.status_code == 200 and raw.headers["x-babelgate-backend"] == f"b-{route}"
    sent_schema = case.structured(_sent(gateway, case, before))
    assert set(sent_schema["properties"]) == {"city", "population"}
    # what the demo answered must fit the model (a demo that answers plain text raises ValidationError here)
    parsed = raw.parse().choices[0].message.parsed
    assert isinstance(parsed, CityFacts) and parsed == DEMO_FACTS


@pytest.mark.parametrize("route", [case.route for case in CASES if case.document is not None])
def test_a_pdf_file_part_reaches_the_provider_as_its_native_document(gateway: Gateway, route: str) -> None:
    case = BY_ROUTE[route]
    before = _model_requests(gateway, case)
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": [{"type": "text", "text": "What is in this file?"},
                                                            FILE_PART]}])
    assert raw.status_code == 200 and raw.parse().choices[0].message.content
    assert case.document is not None
    case.document(_sent(gateway, case, before))


def test_a_pdf_to_a_cohere_only_route_is_a_400_naming_the_backend(gateway: Gateway) -> None:
    case = BY_ROUTE["cohere"]
    before = _model_requests(gateway, case)
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client().chat.completions.create(model="cohere", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in this file?"}, FILE_PART]}])
    assert refused.value.status_code == 400
    assert "b-cohere" in refused.value.message, refused.value.body
    assert _model_requests(gateway, case) == before  # refused before any provider call


def test_every_request_the_demos_received_validates(gateway: Gateway) -> None:
    """A sweep after the tests above: each demo's whole record, against its provider SDK's request types."""
    for case in CASES:
        if _model_requests(gateway, case):
            _validated(gateway, case)
