"""Prompt templates on the request path: a chat completion whose `model` is `prompt:<name>[@version|label]` (its
variables in `prompt_variables`), or a Responses request with OpenAI's `prompt: {id, version?, variables?}`, becomes
the request the template describes, before anything is routed: the key's model allow-list, limits, guardrails and
the request log then see the expanded request, and Envoy sends it on (the route stage marks it rewritten).

Chat: `model` becomes the template's (a template without one is a 400: the request names its template there); the
template's messages come first, the request's `messages` after; the template's temperature, top_p, max_tokens (or
max_completion_tokens) and response_format apply unless the request sets its own. Responses: the template's messages
lead `input` as message items; `model` is the request's, else the template's; max tokens become
`max_output_tokens`, response_format `text.format`.

Variables are strings; a Responses variable may also be an `input_text` content object (its text). Other content
(images, files) is refused: a template holds text only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..auth.virtual_keys import KeyInfo
from ..config.models import PromptTemplate
from ..config.prompt_syntax import MAX_VARIABLES, parse_reference
from ..errors import BadRequest
from ..json_types import JsonObject
from ..runtime.build import Runtime
from ..templates.registry import PromptRegistry
from ..templates.render import check_variables, render_messages, responses_items, responses_text_format
from .endpoints import Endpoint

MODEL_PREFIX = "prompt:"
CHAT_VARIABLES = "prompt_variables"
_PROMPT_FIELDS = frozenset({"id", "version", "variables"})


@dataclass(frozen=True, slots=True)
class TemplateUse:
    """The request a template made, and which version made it (for the request log)."""

    name: str
    version: int
    body: JsonObject


def expand(runtime: Runtime, key: KeyInfo, endpoint: Endpoint, body: JsonObject) -> TemplateUse | None:
    """The request with its template applied; None when it names none."""
    if endpoint is Endpoint.CHAT:
        return expand_chat(runtime.prompts, key, body)
    if endpoint is Endpoint.RESPONSES:
        return expand_responses(runtime.prompts, key, body)
    return None


def expand_chat(registry: PromptRegistry, key: KeyInfo, body: JsonObject) -> TemplateUse | None:
    model = body.get("model")
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIX):
        if CHAT_VARIABLES in body:
            raise BadRequest(f"`{CHAT_VARIABLES}` goes with a prompt template: `model: \"prompt:<name>\"`.",
                             param=CHAT_VARIABLES, code="unexpected_prompt_variables")
        return None
    name, ref = parse_reference(model[len(MODEL_PREFIX):])
    template = registry.resolve(key.id, key.team, name, ref, param="model")
    variables = _variables(body.get(CHAT_VARIABLES), CHAT_VARIABLES, allow_content=False)
    check_variables(template, variables, CHAT_VARIABLES)
    if template.model is None:
        raise BadRequest(f"The prompt template {name!r} (version {template.version}) names no model; a chat "
                         "completion names its template in `model`, so the template must name one.",
                         param="model", code="prompt_has_no_model")
    extra = body.get("messages", [])
    if not isinstance(extra, list):
        raise BadRequest("`messages` must be a list.", param="messages", code="invalid_messages")
    expanded = {field: value for field, value in body.items() if field != CHAT_VARIABLES}
    expanded["model"] = template.model
    expanded["messages"] = [*render_messages(template, variables), *extra]
    _apply_sampling(template, body, expanded, max_field=None)
    if template.response_format is not None and body.get("response_format") is None:
        expanded["response_format"] = copy.deepcopy(template.response_format)
    return TemplateUse(template.name, template.version or 1, expanded)


def expand_responses(registry: PromptRegistry, key: KeyInfo, body: JsonObject) -> TemplateUse | None:
    prompt = body.get("prompt")
    if prompt is None:
        return None
    if not isinstance(prompt, dict) or not isinstance(prompt.get("id"), str):
        raise BadRequest("`prompt` must be an object with the template's `id` (and optionally `version` and "
                         "`variables`).", param="prompt", code="invalid_prompt")
    unknown = sorted(set(prompt) - _PROMPT_FIELDS)
    if unknown:
        raise BadRequest(f"`prompt.{unknown[0]}` is not a prompt field (id, version, variables).",
                         param=f"prompt.{unknown[0]}", code="invalid_prompt")
    template = registry.resolve(key.id, key.team, prompt["id"], _reference(prompt.get("version")), param="prompt.id",
                                ref_param="prompt.version")
    variables = _variables(prompt.get("variables"), "prompt.variables", allow_content=True)
    check_variables(template, variables, "prompt.variables")
    model = body.get("model") or template.model
    if model is None:
        raise BadRequest(f"The prompt template {template.name!r} (version {template.version}) names no model: send "
                         "`model`.", param="model", code="missing_model")
    expanded = {field: value for field, value in body.items() if field != "prompt"}
    expanded["model"] = model
    expanded["input"] = [*responses_items(render_messages(template, variables)), *_input_items(body.get("input"))]
    _apply_sampling(template, body, expanded, max_field="max_output_tokens")
    text = body.get("text")
    if template.response_format is not None and (text is None or (isinstance(text, dict) and "format" not in text)):
        expanded["text"] = {**(text or {}), "format": responses_text_format(copy.deepcopy(template.response_format))}
    return TemplateUse(template.name, template.version or 1, expanded)


def _reference(version: object) -> str | None:
    if version is None or isinstance(version, str):
        return version
    if isinstance(version, int) and not isinstance(version, bool):
        return str(version)
    raise BadRequest("`prompt.version` must be a version number or a label (a string).", param="prompt.version",
                     code="invalid_prompt")


def _variables(value: object, param: str, *, allow_content: bool) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"`{param}` must be an object of strings.", param=param, code="invalid_prompt_variables")
    if len(value) > MAX_VARIABLES:
        raise BadRequest(f"`{param}` has {len(value)} variables; at most {MAX_VARIABLES} are accepted.", param=param,
                         code="invalid_prompt_variables")
    return {name: _variable_text(item, f"{param}.{name}", allow_content) for name, item in value.items()}


def _variable_text(item: object, param: str, allow_content: bool) -> str:
    if isinstance(item, str):
        return item
    if allow_content and isinstance(item, dict) and item.get("type") == "input_text":
        text = item.get("text")
        if isinstance(text, str):
            return text
    kind = f"an {item.get('type')!s} object" if isinstance(item, dict) and isinstance(item.get("type"), str) \
        else "not a string"
    accepted = "a string or an input_text object" if allow_content else "a string"
    raise BadRequest(f"`{param}` is {kind}; a template variable is {accepted} (templates hold text only).",
                     param=param, code="unsupported_prompt_variable")


def _input_items(value: object) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return value
    raise BadRequest("`input` must be a string or a list of items.", param="input", code="invalid_input")


def _apply_sampling(template: PromptTemplate, body: JsonObject, expanded: JsonObject, max_field: str | None) -> None:
    """The template's sampling parameters where the request sets none. `max_field`: the request's one name for the
    output bound (Responses: `max_output_tokens`); None keeps the template's own (chat)."""
    for field in ("temperature", "top_p"):
        value = getattr(template, field)
        if value is not None and body.get(field) is None:
            expanded[field] = value
    limit_field = "max_completion_tokens" if template.max_completion_tokens is not None else "max_tokens"
    limit = template.max_completion_tokens or template.max_tokens
    request_fields = (max_field,) if max_field is not None else ("max_tokens", "max_completion_tokens")
    if limit is not None and all(body.get(field) is None for field in request_fields):
        expanded[max_field or limit_field] = limit
