"""OpenAI <-> Claude on Vertex AI, checked against golden fixture pairs in tests/fixtures/vertex_anthropic/.

The translation is the Anthropic one (tests/unit/test_anthropic_translation.py covers it field by field); these tests
pin what Vertex changes: no `model` in the body, `anthropic_version` in it, the rawPredict paths, and Google-shaped
errors from Vertex's front end. Every body validates with the anthropic SDK's request types once `model` is put back
and `anthropic_version` taken out.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion

from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic, vertex_anthropic
from ext_proc.streaming.sse import SSEDecoder, SSEEvent
from tests.unit.provider_checks import assert_error_envelope
from tests.unit.test_anthropic_translation import (
    _assert_no_undeclared_keys,
    _assert_valid_anthropic_request,
    _assert_valid_chunks,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vertex_anthropic"
ANTHROPIC_FIXTURES = FIXTURES.parent / "anthropic"
MODEL = "claude-sonnet-4-5@20250929"
CREATED = 1700000000
BASE_BODY = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
BACKEND = Backend.model_validate({"id": "claude-vertex", "schema": "vertex-anthropic",
                                  "gcp": {"project": "my-project", "location": "us-east5"}})


def _load(name: str) -> typing.Any:
    return json.loads((FIXTURES / name).read_text())


def _cases(prefix: str, suffix: str, folder: Path = FIXTURES) -> list[str]:
    return sorted(path.name[len(prefix):-len(suffix)] for path in folder.glob(f"{prefix}*{suffix}"))


def _events(path: Path) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return decoder.feed(path.read_bytes()) + decoder.finish()


def _translate(body: dict) -> dict:
    return vertex_anthropic.chat_request(body, MODEL, default_max_tokens=4096)


def _assert_valid_vertex_request(request: dict) -> None:
    assert request["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in request
    body = {key: value for key, value in request.items() if key != "anthropic_version"}
    _assert_valid_anthropic_request({"model": MODEL, **body})


@pytest.mark.parametrize("case", _cases("request_", ".openai.json"))
def test_request_translates_to_golden_vertex_request(case: str) -> None:
    translated = _translate(_load(f"request_{case}.openai.json"))
    assert translated == _load(f"request_{case}.vertex.json")
    _assert_valid_vertex_request(translated)


@pytest.mark.parametrize("case", _cases("request_", ".openai.json", ANTHROPIC_FIXTURES))
def test_every_anthropic_golden_request_is_the_vertex_body_minus_model(case: str) -> None:
    body = json.loads((ANTHROPIC_FIXTURES / f"request_{case}.openai.json").read_text())
    expected = json.loads((ANTHROPIC_FIXTURES / f"request_{case}.anthropic.json").read_text())
    translated = vertex_anthropic.chat_request(body, expected["model"], default_max_tokens=4096)
    assert next(iter(translated)) == "anthropic_version"
    assert translated == {"anthropic_version": "vertex-2023-10-16",
                          **{key: value for key, value in expected.items() if key != "model"}}


def test_field_rules_are_the_anthropic_ones() -> None:
    assert vertex_anthropic.FIELDS is anthropic.FIELDS
    with pytest.raises(BadRequest) as refused:
        _translate({**BASE_BODY, "n": 2})
    assert refused.value.param == "n"


@pytest.mark.parametrize(("stream", "method"), [(False, "rawPredict"), (True, "streamRawPredict")])
def test_chat_path_names_project_location_and_model(stream: bool, method: str) -> None:
    assert vertex_anthropic.chat_path(MODEL, stream, BACKEND) == (
        f"/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:{method}")


def test_wire_constants() -> None:
    assert vertex_anthropic.SCHEMA == "vertex-anthropic"
    assert vertex_anthropic.ChatStream is anthropic.ChatStream
    assert vertex_anthropic.chat_response is anthropic.chat_response
    assert vertex_anthropic.usage_of is anthropic.usage_of
    assert not vertex_anthropic.VertexAnthropicTranslator.serves_embeddings


def test_response_is_translated_like_anthropic() -> None:
    translated = vertex_anthropic.chat_response(_load("response_text.vertex.json"), MODEL, CREATED)
    assert translated == _load("response_text.openai.json")
    _assert_no_undeclared_keys(ChatCompletion.model_validate(translated), "completion")


def test_stream_is_translated_like_anthropic() -> None:
    stream = vertex_anthropic.ChatStream(MODEL, CREATED, include_usage=True)
    chunks = [chunk for event in _events(FIXTURES / "stream_text.vertex.sse")
              for chunk in stream.feed(event.event, event.data)] + stream.finish()
    assert chunks == [json.loads(event.data) for event in _events(FIXTURES / "stream_text.openai.usage.sse")]
    assert stream.finished
    _assert_valid_chunks(chunks)


@pytest.mark.parametrize("case", _load("errors.json"), ids=lambda case: case["name"])
def test_errors_from_google_or_from_the_model(case: dict) -> None:
    status, error = vertex_anthropic.error_response(case["status"], json.dumps(case["body"]).encode())
    assert (status, error) == (case["expected_status"], case["expected"])
    assert_error_envelope(error)


def test_unrecognised_error_body_is_not_echoed() -> None:
    status, error = vertex_anthropic.error_response(502, b"<html>Bearer ya29.SECRET</html>")
    assert status == 502
    assert "ya29" not in error["error"]["message"]
