"""OpenAI <-> Claude on Vertex AI: what Vertex changes about the Anthropic translation.

The golden pairs in tests/fixtures/vertex_anthropic/ (bodies validated with the anthropic SDK's request types once
`model` is put back and `anthropic_version` taken out, the answer, the stream, Google-shaped errors) and the Anthropic
field rules and tables, run through the Vertex translator, are checked by tests/unit/test_goldens.py. Here: every
Anthropic golden request is the Vertex body minus `model`, the rules are the Anthropic ones, and the rawPredict paths.
"""

from __future__ import annotations

import pytest

from ext_proc.config.models import Backend
from ext_proc.errors import BadRequest
from ext_proc.providers import anthropic, vertex_anthropic
from tests.unit.goldens import ANTHROPIC, BASE_BODY, VERTEX_ANTHROPIC

MODEL = VERTEX_ANTHROPIC.model
BACKEND = Backend.model_validate({"id": "claude-vertex", "schema": "vertex-anthropic",
                                  "gcp": {"project": "my-project", "location": "us-east5"}})


@pytest.mark.parametrize("case", ANTHROPIC.request_cases())
def test_every_anthropic_golden_request_is_the_vertex_body_minus_model(case: str) -> None:
    client, provider = ANTHROPIC.request_pair(case)
    expected = ANTHROPIC.fixtures.load(provider)
    translated = vertex_anthropic.chat_request(ANTHROPIC.fixtures.load(client), expected["model"],
                                               default_max_tokens=4096)
    assert next(iter(translated)) == "anthropic_version"
    assert translated == {"anthropic_version": "vertex-2023-10-16",
                          **{key: value for key, value in expected.items() if key != "model"}}


def test_field_rules_are_the_anthropic_ones() -> None:
    assert vertex_anthropic.FIELDS is anthropic.FIELDS
    with pytest.raises(BadRequest) as refused:
        VERTEX_ANTHROPIC.translate({**BASE_BODY, "n": 2})
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
