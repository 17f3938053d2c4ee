"""The seams around the translations: every configurable schema has a translator and a credential, and what a
credential sets is stripped again before the next attempt."""

from __future__ import annotations

import typing

import pytest

from ext_proc import providers
from ext_proc.auth.backend_credentials import CREDENTIAL_HEADERS, credential_for
from ext_proc.auth.credentials import StaticCredential
from ext_proc.config.models import Backend, Schema
from ext_proc.providers.stream import ChatStream
from ext_proc.providers.translator import Translator

SCHEMAS = typing.get_args(Schema)
KEY = "sk-unit-key-1234"

KEY_HEADERS = {
    "openai": [("authorization", f"Bearer {KEY}")],
    "cohere": [("authorization", f"Bearer {KEY}")],
    "anthropic": [("x-api-key", KEY), ("anthropic-version", "2023-06-01")],
    "azure-openai": [("api-key", KEY)],
    "gemini": [("x-goog-api-key", KEY)],
    "bedrock-converse": [("authorization", f"Bearer {KEY}")],
    "bedrock-anthropic": [("authorization", f"Bearer {KEY}")],
}
"""How each schema that takes an API key sends it (Vertex schemas refuse one: they use Google tokens)."""


def _backend(schema: str) -> Backend:
    return Backend.model_validate({"id": "b", "schema": schema, "base_url": "https://backend.example",
                                   "aws": {"region": "eu-west-1"} if schema.startswith("bedrock") else None})


def test_every_configurable_schema_has_a_translator() -> None:
    assert set(providers.SCHEMAS) == set(SCHEMAS)
    for schema in SCHEMAS:
        translator = providers.for_schema(schema)
        assert isinstance(translator, Translator) and schema in translator.schemas
        assert isinstance(translator.chat_stream("m", 1, False), ChatStream)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_embeddings_are_declared_by_the_translators_that_implement_them(schema: str) -> None:
    translator = providers.for_schema(schema)
    implemented = type(translator).embeddings_request is not Translator.embeddings_request
    assert translator.serves_embeddings == implemented


@pytest.mark.parametrize(("schema", "headers"), KEY_HEADERS.items())
def test_an_api_key_is_sent_the_way_its_schema_wants(schema: str, headers: list[tuple[str, str]]) -> None:
    credential = credential_for(_backend(schema), KEY)
    assert isinstance(credential, StaticCredential)
    assert credential.headers("POST", "https://backend.example/x", b"{}") == headers
    assert {name for name, _ in headers} <= CREDENTIAL_HEADERS


@pytest.mark.parametrize("schema", ["openai", "cohere", "anthropic", "azure-openai", "gemini"])
def test_a_backend_without_a_key_sends_no_credential(schema: str) -> None:
    assert credential_for(_backend(schema), None).headers("POST", "https://backend.example/x", b"{}") == []
