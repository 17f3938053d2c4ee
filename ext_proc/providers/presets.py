"""What each OpenAI-compatible preset (`backend.preset`) does not take from an OpenAI chat request.

OpenAI-compatible servers accept OpenAI's format but not all of it, and they differ in how they say no: some answer
400/422 to a field they lack, others ignore it silently, which would change the answer without anyone knowing. For
every preset, each top-level field of an OpenAI chat request is one of:

- passed: sent as it is (the provider honours it, or refuses it itself with a clear error);
- dropped: removed because it has no effect on the answer (OpenAI-platform bookkeeping, a user tag);
- renamed: sent under the provider's own name (`max_completion_tokens` -> `max_tokens`, ...);
- refused: a 400 naming the field, because the provider would ignore it and the answer would change. OpenAI's own
  defaults (`n: 1`, `logprobs: false`, ...) mean "not asked for": they are dropped instead. A setting that only
  steers (a `reasoning_effort` the provider has no knob for) is dropped, not refused.

`rules(preset)` gives that table for every field; `adapt_request(preset, body, model)` applies it, then the preset's
model-specific quirks, to the body the OpenAI passthrough built (model already swapped, `stream_options` already
added). Each entry says where it comes from; "docs" below means the provider's own API documentation:

- mistral: Mistral's OpenAPI spec / `mistralai` SDK `ChatCompletionRequest` (fields `random_seed`, `max_tokens`, no
  `logprobs`/`logit_bias`/`user`/`stream_options`; unknown fields answer 422 "Extra inputs are not permitted";
  `tool_choice` takes auto/none/any/required or a named function; usage comes in the last stream chunk).
- groq: console.groq.com/docs/openai ("logprobs, logit_bias, top_logprobs, messages[].name are not supported and
  will result in a 400 error; if N is supplied, it must be equal to 1").
- deepseek: api-docs.deepseek.com (Create Chat Completion; Thinking Mode guide: thinking is on by default except on
  `deepseek-chat`, toggled with `thinking: {type}`, effort with `reasoning_effort`; in thinking mode `temperature`,
  `top_p`, `presence_penalty`, `frequency_penalty` are accepted but have no effect and `logprobs`/`top_logprobs`
  are errors; JSON Output guide: `response_format` json_object only; `reasoning_content` of tool-calling turns must
  be sent back, so it is kept).
- together, fireworks: docs.together.ai / docs.fireworks.ai OpenAI compatibility (`max_tokens`; Together's
  `logprobs` is a count with its own answer shape; Fireworks has no `logit_bias`).
- xai: docs.x.ai (the API answers 400 "Model does not support parameter ..." rather than ignoring one, so only the
  OpenAI-platform fields are removed).
- openrouter: openrouter.ai/docs (parameters, reasoning tokens, provider routing: `provider.require_parameters`
  makes OpenRouter route only to providers that support every parameter sent, instead of dropping some; reasoning
  is `reasoning: {effort}`; no `n`).
- vllm: docs.vllm.ai OpenAI-compatible server (supports n, logprobs, logit_bias, seed, guided json_schema, tools,
  tool_choice, max_completion_tokens; unknown fields are ignored with a warning).
- ollama: Ollama's docs/api/openai-compatibility (unsupported: tool_choice, logit_bias, user, n, logprobs; images
  only as base64 data URIs; `max_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import BadRequest
from ..json_types import JsonObject
from .common import DROPPED, OPENAI_CHAT_FIELDS, REFUSED

PASSED = "passed"
RENAMED = "renamed"

_PLATFORM_DROPPED: dict[str, str] = {
    "store": "OpenAI-side storage of completions; nothing is stored for the client to fetch",
    "metadata": "tags of OpenAI's stored completions",
    "service_tier": "OpenAI's processing tiers",
    "prompt_cache_key": "an OpenAI cache routing hint; the provider caches on its own",
    "prompt_cache_retention": "an OpenAI cache setting",
    "prompt_cache_options": "an OpenAI cache setting",
    "safety_identifier": "OpenAI's abuse-monitoring id",
    "prediction": "a latency optimisation (predicted output); the answer is the same without it",
}
"""OpenAI-platform fields with no effect on the answer, which OpenAI-compatible servers don't implement."""

_PLATFORM_REFUSED: dict[str, str] = {
    "audio": "audio output is an OpenAI feature",
    "modalities": "only text output is available",
    "web_search_options": "web search is an OpenAI feature",
    "moderation": "OpenAI-side moderation can't run on another provider",
    "functions": "'functions' is deprecated; use 'tools'",
    "function_call": "'function_call' is deprecated; use 'tool_choice'",
    "verbosity": "output verbosity is a GPT-5 setting",
}
"""OpenAI-only features that change the answer; a compatible server would ignore or reject them."""

_DEFAULTS: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "logit_bias": ({},),
    "modalities": (["text"],),
    "verbosity": ("medium",),
    "parallel_tool_calls": (True,),
    "tool_choice": ("auto",),
    "top_logprobs": (0,),
}
"""Values of a refused field that mean "not asked for": dropped rather than refused."""

Quirk = Callable[[JsonObject, str], None]


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    dropped: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    renamed: Mapping[str, str] = field(default_factory=dict)
    passed: frozenset[str] = frozenset()
    """Platform fields (normally dropped or refused) that this provider does honour."""
    quirks: tuple[Quirk, ...] = ()
    """Model- or value-specific changes, applied after the table: (request, backend model) -> None, in place."""

    def rule(self, name: str) -> str:
        if name in self.passed:
            return PASSED
        if name in self.renamed:
            return RENAMED
        if name in self.refused or name in _PLATFORM_REFUSED:
            return REFUSED
        if name in self.dropped or name in _PLATFORM_DROPPED:
            return DROPPED
        return PASSED

    def reason(self, name: str) -> str:
        return (self.refused.get(name) or self.dropped.get(name) or _PLATFORM_REFUSED.get(name)
                or _PLATFORM_DROPPED.get(name) or "")


# --- quirks --------------------------------------------------------------------------------------------------------


def _groq_message_names(request: JsonObject, model: str) -> None:
    """Groq answers 400 to `messages[].name`; the name only labels a participant, so it is left out."""
    messages = request.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and "name" in m for m in messages):
        request["messages"] = [{k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) else m
                               for m in messages]


_DEEPSEEK_IGNORED_WHILE_THINKING = {"temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}


def _deepseek(request: JsonObject, model: str) -> None:
    effort = request.get("reasoning_effort")
    if effort == "none":
        request.pop("reasoning_effort")
        request["thinking"] = {"type": "disabled"}
    thinking = model != "deepseek-chat" and effort != "none"
    if thinking:
        for name, default in _DEEPSEEK_IGNORED_WHILE_THINKING.items():
            if request.get(name) is not None and request[name] != default:
                raise BadRequest(f"'{name}' has no effect on deepseek backends while the model thinks (model "
                                 f"{model!r}); send reasoning_effort 'none' to turn thinking off, or leave "
                                 f"'{name}' out", param=name)
        for name in ("logprobs", "top_logprobs"):
            if request.get(name) not in (None, False, 0):
                raise BadRequest(f"'{name}' is not available on deepseek backends while the model thinks",
                                 param=name)
        request.pop("logprobs", None)
        request.pop("top_logprobs", None)
    response_format = request.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        raise BadRequest("response_format json_schema is not supported on deepseek backends; use json_object",
                         param="response_format")


def _openrouter(request: JsonObject, model: str) -> None:
    effort = request.pop("reasoning_effort", None)
    if effort is not None:
        request["reasoning"] = {"effort": effort}
    if "provider" not in request:
        request["provider"] = {"require_parameters": True}


def _ollama_images(request: JsonObject, model: str) -> None:
    """Ollama takes images as base64 data URIs only."""
    for i, message in enumerate(request.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            image = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and not url.startswith("data:"):
                where = f"messages[{i}].content[{j}]"
                raise BadRequest(f"{where}: ollama backends take images as data: URLs only, not web URLs",
                                 param=where)


# --- the presets ---------------------------------------------------------------------------------------------------

_MAX_TOKENS = {"max_completion_tokens": "max_tokens"}

PRESETS: dict[str, Preset] = {
    "mistral": Preset(
        "mistral",
        dropped={"user": "Mistral has no end-user field (and answers 422 to unknown fields)",
                 "stream_options": "Mistral sends usage in its last stream chunk unasked, and answers 422 to it",
                 "reasoning_effort": "Mistral has no reasoning effort setting (a reasoning model decides itself); "
                                     "the effort only steers, so it is left out"},
        refused={"logprobs": "Mistral returns no log probabilities", "top_logprobs": "Mistral returns no log "
                 "probabilities", "logit_bias": "Mistral has no logit bias"},
        renamed={**_MAX_TOKENS, "seed": "random_seed"},
    ),
    "groq": Preset(
        "groq",
        refused={"logprobs": "Groq does not support logprobs", "top_logprobs": "Groq does not support top_logprobs",
                 "logit_bias": "Groq does not support logit_bias", "n": "Groq returns one choice only (n must be 1)"},
        quirks=(_groq_message_names,),
    ),
    "deepseek": Preset(
        "deepseek",
        dropped={"user": "DeepSeek has no end-user field", "seed": "DeepSeek has no seed (best-effort "
                 "determinism even on OpenAI)"},
        refused={"logit_bias": "DeepSeek has no logit bias", "n": "DeepSeek returns one choice only",
                 "parallel_tool_calls": "DeepSeek can't be told to call at most one tool"},
        renamed=_MAX_TOKENS,
        quirks=(_deepseek,),
    ),
    "together": Preset(
        "together",
        refused={"logprobs": "Together's logprobs are a count with a non-OpenAI answer shape",
                 "top_logprobs": "Together's logprobs are a count with a non-OpenAI answer shape"},
        renamed=_MAX_TOKENS,
    ),
    "fireworks": Preset(
        "fireworks",
        refused={"logit_bias": "Fireworks has no logit bias"},
        renamed=_MAX_TOKENS,
    ),
    "xai": Preset("xai"),
    "openrouter": Preset(
        "openrouter",
        refused={"n": "OpenRouter returns one choice only"},
        renamed=_MAX_TOKENS,
        passed=frozenset({"verbosity", "web_search_options"}),
        quirks=(_openrouter,),
    ),
    "vllm": Preset("vllm"),
    "ollama": Preset(
        "ollama",
        dropped={"user": "Ollama ignores the end-user field"},
        refused={"tool_choice": "Ollama ignores tool_choice (only 'auto' is possible)",
                 "logit_bias": "Ollama ignores logit_bias", "n": "Ollama returns one choice only",
                 "logprobs": "Ollama returns no log probabilities", "top_logprobs": "Ollama returns no log "
                 "probabilities", "parallel_tool_calls": "Ollama can't be told to call at most one tool"},
        renamed=_MAX_TOKENS,
        quirks=(_ollama_images,),
    ),
}


def rules(preset: str) -> dict[str, str]:
    """field -> passed / dropped / renamed / refused, for every OpenAI chat field."""
    spec = PRESETS[preset]
    return {name: spec.rule(name) for name in OPENAI_CHAT_FIELDS}


def drops(preset: str, body: JsonObject) -> list[str]:
    """The fields of `body` (with a value) that `adapt_request` drops for `preset`, to be named to the client
    (`stream_options` is not: the gateway honours it)."""
    spec = PRESETS[preset]
    return [name for name, value in body.items()
            if value is not None and name != "stream_options" and spec.rule(name) == DROPPED]


def adapt_request(preset: str, body: JsonObject, model: str) -> JsonObject:
    """The OpenAI request `body` (already built for the backend) as `preset` takes it; raises BadRequest naming a
    field the provider would silently ignore. The input is not modified."""
    spec = PRESETS[preset]
    request = dict(body)
    for name in list(request):
        rule = spec.rule(name)
        value = request[name]
        if rule == REFUSED:
            if value is not None and value not in _DEFAULTS.get(name, ()):
                raise BadRequest(f"'{name}' is not supported on {preset} backends: {spec.reason(name)}",
                                 param=name)
            del request[name]
        elif rule == DROPPED:
            del request[name]
    for name, target in spec.renamed.items():
        if name in request:
            value = request.pop(name)
            if value is not None:
                request[target] = value  # max_completion_tokens wins over max_tokens, as on OpenAI
    for quirk in spec.quirks:
        quirk(request, model)
    return request
