"""Responses API clients to backends that serve OpenAI's Responses API themselves (`Backend.serves_responses`: OpenAI,
Azure OpenAI), untranslated.

The client's `/v1/responses` body goes as it was written, so OpenAI's built-in tools, new item types and fields the
gateway does not know reach a service that understands them. What changes, and why:

- `model` becomes the backend's model (Azure: the deployment name, which its Responses API reads from the body);
- without the client's `max_output_tokens`, the one the limiter reserved for (`requests.default_max_tokens`) is
  sent: the provider's own default is the model's maximum (reasoning included);
- `previous_response_id` is gone: the route stage replaced it with the conversation it names (the gateway keeps
  responses itself, so a chain of responses survives a failover to another provider, and the provider's own store is
  never asked about an id it did not make);
- reasoning items carrying the gateway's thinking envelope (Claude's signed thinking, `responses_common`) are left
  out: only a Claude backend can read them, and OpenAI refuses reasoning it can't decrypt.

Paths: OpenAI `<base>/responses` (the base URL carries `/v1`, as with the SDK's `base_url`); Azure
`/openai/responses?api-version=` (`azure.responses_api_version`).
"""

from __future__ import annotations

from ..client_formats.responses_common import is_gateway_reasoning
from ..config.models import AzureSettings, Backend
from ..json_types import JsonObject


def passes_through(settings: Backend) -> bool:
    return settings.serves_responses


def request(body: JsonObject, model: str, settings: Backend, default_max_tokens: int) -> JsonObject:
    """The client's Responses body for this backend; `body` is not changed."""
    upstream = dict(body)
    upstream["model"] = _deployment(settings, model)
    if upstream.get("max_output_tokens") is None:
        upstream["max_output_tokens"] = default_max_tokens
    upstream.pop("previous_response_id", None)
    items = upstream.get("input")
    if isinstance(items, list) and any(_gateway_reasoning(item) for item in items):
        upstream["input"] = [item for item in items if not _gateway_reasoning(item)]
    for name in settings.drop_fields:
        upstream.pop(name, None)
    return upstream


def path(settings: Backend) -> str:
    if settings.schema_ == "azure-openai":
        azure = settings.azure or AzureSettings()
        return f"/openai/responses?api-version={azure.responses_api_version}"
    return "/responses"


def _deployment(settings: Backend, model: str) -> str:
    if settings.schema_ == "azure-openai" and settings.azure is not None and settings.azure.deployment:
        return settings.azure.deployment
    return model


def _gateway_reasoning(item: object) -> bool:
    return isinstance(item, dict) and item.get("type") == "reasoning" and is_gateway_reasoning(
        item.get("encrypted_content"))
