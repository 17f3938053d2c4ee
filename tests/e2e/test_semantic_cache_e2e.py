"""The semantic cache through the real Envoy, driven by the official openai SDK: a paraphrase of a cached prompt is
answered from the cache (the embeddings come from an embeddings route of the same gateway, asked with the caller's
own key), an unrelated prompt, another team, or other tools miss, and an embeddings route that is down makes a miss,
never an error."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ..eventually import eventually
from .gateways import Gateway, GatewayBuilder

SEMANTIC = {"scope": "team", "ttl": "300s", "semantic": {"embeddings_model": "embed", "threshold": 0.85}}
WORDS_MODEL = "text-embedding-demo-words"  # the demo embeds it as a bag of words: paraphrases are close
# each test asks of its own subject: prompts that share most words are close under the demo's embedding (one
# word apart in ten: ~0.95)
PHOTOSYNTHESIS = "Please explain briefly how photosynthesis works in green plants"
ROMAN = "Summarize the history of the Roman empire in three short sentences"
JUPITER = "List the largest moons of Jupiter and Saturn by their diameter"
ICELAND = "Compare the climates of Iceland and Madagascar during the winter months"
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with GatewayBuilder(tmp_path_factory.mktemp("semantic")) as build:
        build.backend("oa", build.demo("sem-openai"), outlier_detection=None)
        build.backend("emb", build.demo("sem-embeddings"), outlier_detection=None)
        build.backend("gone", build.unreachable("sem-gone"), outlier_detection=None)
        build.route("similar", ("oa", "gpt-sem"), cache=SEMANTIC)
        build.route("similar-down", ("oa", "gpt-sem"),
                    cache={**SEMANTIC, "semantic": {"embeddings_model": "embed-down", "threshold": 0.85}})
        build.route("embed", ("emb", WORDS_MODEL))
        build.route("embed-down", ("gone", WORDS_MODEL))
        build.key("a1", team="team-a")
        build.key("a2", team="team-a")
        build.key("b1", team="team-b")
        yield build.start()


def _chat(gateway: Gateway, key: str, model: str, text: str, **options: object) -> tuple[str, httpx.Headers]:
    raw = gateway.client(key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, **options)
    return raw.parse().choices[0].message.content or "", raw.headers


def _chats(gateway: Gateway, marker: str) -> int:
    """Chat requests the chat provider got with `marker` in them."""
    return sum(1 for request in gateway.provider_requests("sem-openai") if marker in str(request))


def _both_served(gateway: Gateway, marker: str) -> None:
    eventually(lambda: _chats(gateway, marker) == 2, what=f"the provider serving both {marker} prompts")


def test_a_paraphrase_is_answered_from_the_cache(gateway: Gateway) -> None:
    first, headers = _chat(gateway, "a1", "similar", PHOTOSYNTHESIS)
    assert headers["x-babelgate-cache"] == "miss"
    again, headers = _chat(gateway, "a2", "similar", "Now " + PHOTOSYNTHESIS.lower())
    assert headers["x-babelgate-cache"] == "hit" and again == first
    assert 0.85 <= float(headers["x-babelgate-cache-similarity"]) < 1
    assert _chats(gateway, "photosynthesis") == 1  # the provider saw one chat request
    embedded = [request for request in gateway.provider_requests("sem-embeddings")
                if "photosynthesis" in str(request)]
    assert len(embedded) == 2 and all(WORDS_MODEL in str(request) for request in embedded)


def test_an_unrelated_prompt_misses(gateway: Gateway) -> None:
    _chat(gateway, "a1", "similar", "Describe the rules of chess for a beginner player")
    _, headers = _chat(gateway, "a1", "similar", "Write a haiku about autumn leaves, not about chess")
    assert headers["x-babelgate-cache"] == "miss"
    _both_served(gateway, "chess")


def test_another_team_never_shares_a_hit(gateway: Gateway) -> None:
    _chat(gateway, "a1", "similar", ROMAN)
    _, headers = _chat(gateway, "b1", "similar", "Now " + ROMAN.lower())
    assert headers["x-babelgate-cache"] == "miss"
    _both_served(gateway, "empire")


def test_the_same_prompt_with_other_tools_misses(gateway: Gateway) -> None:
    _chat(gateway, "a1", "similar", JUPITER)
    _, headers = _chat(gateway, "a1", "similar", "Now " + JUPITER.lower(), tools=TOOLS)
    assert headers["x-babelgate-cache"] == "miss"
    _both_served(gateway, "upiter")


def test_an_embeddings_route_that_is_down_makes_a_miss_not_an_error(gateway: Gateway) -> None:
    first, headers = _chat(gateway, "a1", "similar-down", ICELAND)
    assert headers["x-babelgate-cache"] == "miss" and first
    again, headers = _chat(gateway, "a1", "similar-down", "Now " + ICELAND.lower())
    assert headers["x-babelgate-cache"] == "miss" and again
    exact, headers = _chat(gateway, "a1", "similar-down", ICELAND)
    assert headers["x-babelgate-cache"] == "hit" and exact == first  # the exact cache works without it
