"""Whole answers on their way back to the client (ext_proc/stages/answers.py)."""

from __future__ import annotations

from ext_proc.providers import gemini
from ext_proc.stages import answers


def test_an_embeddings_answer_that_counts_no_input_reports_the_gateways_estimate() -> None:
    """AI Studio's documented batchEmbedContents answer has no token count: the client gets the estimate the
    limiter settles with, not 0."""
    listing = gemini.embeddings_response({"embeddings": [{"values": [0.1, 0.2]}]}, "text-embedding-004")
    assert listing["usage"]["prompt_tokens"] == 0
    answers.count_uncounted_input(listing, 7)
    assert listing["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_a_provider_count_is_kept() -> None:
    listing = {"object": "list", "data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    answers.count_uncounted_input(listing, 7)
    assert listing["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
