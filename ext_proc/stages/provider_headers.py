"""Which of a provider's response headers reach the client: an allow-list, not a deny-list.

A provider answers with headers about its own account and infrastructure: `set-cookie` (load-balancer cookies),
`openai-organization` and `anthropic-organization-id` (whose account the gateway uses), its own `x-ratelimit-*` and
`anthropic-ratelimit-*` (the gateway account's quota, not the client's: Babelgate sends its own `x-ratelimit-*`),
`cf-ray`, `server`, timing headers. None of that is the client's business, and new ones appear without notice, so only
the headers below pass. The provider's request id is useful when a client reports a problem, so it passes renamed,
under a name that can't be mistaken for Babelgate's own request id.
"""

from __future__ import annotations

PASSED = frozenset({
    "content-type", "content-length", "content-encoding", "cache-control", "date",
    # clients back off by these (the OpenAI and Anthropic SDKs read both)
    "retry-after", "retry-after-ms",
})
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "x-amz-request-id", "apim-request-id",
                      "x-goog-request-id", "x-cohere-request-id")
"""Where providers put their own request id, in order of preference (OpenAI/Azure, Anthropic, AWS, Google...)."""
UPSTREAM_REQUEST_ID = "x-babelgate-upstream-request-id"


def screen(headers: dict[str, str], keep: frozenset[str] = frozenset()) -> tuple[list[tuple[str, str]], list[str]]:
    """What to set and what to remove so that only allowed headers (and `keep`, which the caller sets itself) of
    the provider's answer go on."""
    removed = [name for name in headers if name[0] != ":" and name not in PASSED and name not in keep]
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return [(UPSTREAM_REQUEST_ID, value[:128])], removed
    return [], removed
