"""The configuration schema. Validated once at load; the hot path never sees these objects (see `runtime.py`)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .. import constants
from . import prompt_syntax as template_syntax
from .origin import Loc, Origin, dotted

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _parse_duration(value: object) -> object:
    """Accept `30`, `30s`, `500ms`, `2m`, `1h` and return seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected a duration such as 30s, 500ms, 2m or a number of seconds")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]


class _Strict(BaseModel):
    # hide_input_in_errors: what was written (a secret in the wrong place, say) never reaches an error's text
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ConfigProblems(ValueError):
    """Problems that only the whole config shows (references, duplicates), each at its own YAML path: raised by
    `Config`'s validator, whose own location is the top level; the loader adds each path's line."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{dotted(loc)}: {message}" for loc, message in problems))
        self.problems = problems


INLINE_SECRET = "a secret is never written in the config: use {env: NAME}, {file: PATH} or {command: [...]}"


class SecretRef(_Strict):
    """Where a secret comes from. The value itself never appears in configuration files or logs."""

    env: str | None = None
    file: Path | None = None
    command: list[str] | None = Field(
        None, min_length=1, description="A secret manager hook: this program (no shell) prints the secret, e.g. "
                                        "[vault, kv, get, -field=key, secret/openai]; run at load and each reload.")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: object) -> object:
        """`api_key: sk-...` gets a message that says what to write instead, and never repeats the value."""
        if not isinstance(data, dict | SecretRef):
            raise PydanticCustomError("inline_secret", INLINE_SECRET)
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if sum(source is not None for source in (self.env, self.file, self.command)) != 1:
            raise ValueError("give exactly one of `env`, `file` or `command`")
        return self


Window = Literal["minute", "hour", "day", "month"]
METRICS = ("requests", "input_tokens", "output_tokens", "total_tokens", "usd")


class LimitRule(_Strict):
    """One window and the most that may be used in it, per metric. Budgets are rules with `usd`."""

    window: Window
    requests: int | None = Field(None, ge=0)
    input_tokens: int | None = Field(None, ge=0)
    output_tokens: int | None = Field(None, ge=0)
    total_tokens: int | None = Field(None, ge=0)
    usd: float | None = Field(None, ge=0)
    on_store_error: Literal["fail_open", "fail_closed"] | None = Field(
        None, description="What to do when the limiter store can't be reached; `limits.on_store_error` if unset.")

    @model_validator(mode="after")
    def _some_metric(self) -> LimitRule:
        if all(getattr(self, metric) is None for metric in METRICS):
            raise ValueError(f"give at least one of {', '.join(METRICS)}")
        return self


Schema = Literal["openai", "anthropic", "azure-openai", "cohere", "bedrock-converse", "bedrock-anthropic", "gemini",
                 "vertex-gemini", "vertex-anthropic"]

PRESETS: dict[str, str] = {
    "mistral": "https://api.mistral.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together": "https://api.together.xyz/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "xai": "https://api.x.ai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "vllm": "http://127.0.0.1:8000/v1",
    "ollama": "http://127.0.0.1:11434/v1",
}
"""OpenAI-compatible providers by name, with their usual base URL (a `base_url` given in config wins)."""


class AwsSettings(_Strict):
    """Where Bedrock credentials come from; nothing set means botocore's default chain (environment variables,
    then the shared credentials/config files, then a web-identity token from AWS_WEB_IDENTITY_TOKEN_FILE)."""

    region: str
    profile: str | None = None
    credentials_file: Path | None = None
    config_file: Path | None = None
    web_identity_token_file: Path | None = None
    role_arn: str | None = None
    sts_endpoint: str | None = Field(None, description="For a private STS endpoint (and tests).")


class GcpSettings(_Strict):
    project: str | None = None
    location: str | None = Field(None, description="Vertex AI region, e.g. us-central1, or `global`.")
    service_account_file: Path | None = Field(
        None, description="Service-account JSON; without it, Application Default Credentials.")


class AzureEntra(_Strict):
    tenant_id: str
    client_id: str
    client_secret: SecretRef
    authority: str = "https://login.microsoftonline.com"


class AzureSettings(_Strict):
    api_version: str = "2024-10-21"
    responses_api_version: str = Field(
        "2025-04-01-preview", description="The api-version of Azure's Responses API (`/openai/responses`), which "
                                          "chat completions' `api_version` may predate.")
    deployment: str | None = Field(None, description="Deployment name; the route's backend model if unset.")
    entra: AzureEntra | None = Field(None, description="Entra ID (client credentials) instead of an `api-key`.")


class FetchGrant(_Strict):
    """Client URLs a provider may fetch with the gateway's own cloud identity: Bedrock reads `s3://` objects with
    the gateway's AWS role, Vertex reads `gs://` objects with its service account. Refused unless granted."""

    prefix: str = Field(description="`s3://bucket/` or `gs://bucket/path/`: a URL must start with it, case and "
                                    "all (a bucket prefix ends with `/`; one that does not names an object or a "
                                    "folder: `s3://b/a` grants `s3://b/a` and `s3://b/a/...`, not `s3://b/ab`).")
    bucket_owner: str | None = Field(
        None, description="S3 only: the AWS account id (12 digits) that must own the bucket; sent as Bedrock's "
                          "`bucketOwner`, so a bucket of the same name in another account is never read.")

    @model_validator(mode="after")
    def _shape(self) -> FetchGrant:
        scheme, _, rest = self.prefix.partition("://")
        if scheme not in ("s3", "gs") or not rest or "/" not in rest or rest.startswith("/"):
            raise ValueError("expected s3://bucket/ or gs://bucket/ (a bucket name, then `/`, then any path prefix)")
        if self.bucket_owner is not None and (scheme != "s3" or not re.fullmatch(r"\d{12}", self.bucket_owner)):
            raise ValueError("`bucket_owner` is an S3 bucket owner's 12-digit AWS account id")
        return self


class OutlierDetection(_Strict):
    """Envoy's passive health check on the backend's cluster: an ejected backend is skipped by every chain (moved to
    the end, in effect), and tried again after the ejection time; a chain whose backends are all ejected still sends
    (Envoy's panic mode), so nothing is dropped."""

    consecutive_5xx: int = Field(5, ge=1)
    consecutive_gateway_failure: int = Field(3, ge=1, description="502, 503, 504, resets and connect failures.")
    interval: Seconds = 5.0
    base_ejection_time: Seconds = 30.0
    max_ejection_time: Seconds = 300.0


class Backend(_Strict):
    id: str
    schema_: Schema = Field(alias="schema")
    base_url: str = Field(description="Defaults per schema/preset/region when omitted.")
    api_key: SecretRef | None = None
    preset: str | None = Field(None, description=f"OpenAI-compatible provider by name: {', '.join(PRESETS)}.")
    aws: AwsSettings | None = None
    gcp: GcpSettings | None = None
    azure: AzureSettings | None = None
    drop_fields: list[str] = Field(
        [], description="Top-level fields removed from the translated request for this backend, e.g. `temperature` "
                        "and `top_p` for the newest Claude models, which refuse them.")
    timeout: Seconds = Field(
        600.0, description="Whole-attempt limit (the OpenAI SDK default); a stream longer than this is cut.")
    connect_timeout: Seconds = 5.0
    first_byte_timeout: Seconds | None = Field(
        None, description="Longest wait for the response headers of one attempt; past it the attempt fails with a "
                          "504 (and the next backend is tried). For a stream this is the time to first byte.")
    stream_idle_timeout: Seconds | None = Field(
        None, description="Longest pause between two chunks of a stream already started; past it the stream ends "
                          "with an OpenAI-style error event (a started stream never switches backends).")
    ca_file: Path | None = Field(None, description="CA bundle for an https base URL; the system bundle by default.")
    connect_to: str | None = Field(
        None, description="Connect to this IP instead of resolving the base URL host; SNI and Host still use the host.")
    limits: list[LimitRule] = []
    fetch_urls: list[FetchGrant] = Field(
        [], description="`s3://` / `gs://` URLs in client requests this backend may receive (its provider fetches "
                        "them with the gateway's identity); any other such URL is a 400.")
    responses_api: bool | None = Field(
        None, description="The backend serves OpenAI's Responses API (`/v1/responses`) itself, so Responses clients' "
                          "requests reach it as they were written (model and credentials rewritten); otherwise the "
                          "gateway translates them. Unset: true for schema `openai` without a preset and for "
                          "`azure-openai`, false for everything else.")
    outlier_detection: OutlierDetection | None = Field(
        default_factory=lambda: OutlierDetection(),
        description="Envoy ejects the backend after consecutive failures; `null` turns it off.")

    @model_validator(mode="before")
    @classmethod
    def _default_base_url(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("base_url"):
            url = _default_url(data)
            if url:
                data = {**data, "base_url": url}
        return data

    @model_validator(mode="after")
    def _schema_settings(self) -> Backend:
        schema = self.schema_
        if self.preset is not None and (schema != "openai" or self.preset not in PRESETS):
            raise ValueError(f"`preset` applies to schema openai and is one of {', '.join(PRESETS)}")
        if schema.startswith("bedrock") and self.aws is None:
            raise ValueError("bedrock backends need `aws: {region: ...}`")
        if schema.startswith("vertex") and (self.gcp is None or not self.gcp.project or not self.gcp.location):
            raise ValueError("vertex backends need `gcp: {project: ..., location: ...}`")
        if self.responses_api and schema not in ("openai", "azure-openai"):
            raise ValueError("`responses_api` applies to schemas openai and azure-openai (OpenAI's own format)")
        return self

    @property
    def serves_responses(self) -> bool:
        """Responses API requests go to this backend natively (`responses_api`, or its schema's default)."""
        if self.responses_api is not None:
            return self.responses_api
        return self.schema_ == "azure-openai" or (self.schema_ == "openai" and self.preset is None)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter or digit")
        return value

    @field_validator("base_url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("a base URL carries no query or fragment")
        return value.rstrip("/")

    @property
    def scheme(self) -> str:
        return urlsplit(self.base_url).scheme

    @property
    def is_tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        default = 443 if self.is_tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    @property
    def base_path(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")


def _default_url(data: dict) -> str | None:
    schema = data.get("schema")
    preset = data.get("preset")
    region = (data.get("aws") or {}).get("region") if isinstance(data.get("aws"), dict) else None
    location = (data.get("gcp") or {}).get("location") if isinstance(data.get("gcp"), dict) else None
    if schema == "openai" and preset in PRESETS:
        return PRESETS[preset]
    if schema == "anthropic":
        return "https://api.anthropic.com"
    if schema == "cohere":
        return "https://api.cohere.com"
    if schema == "gemini":
        return "https://generativelanguage.googleapis.com"
    if isinstance(schema, str) and schema.startswith("bedrock") and region:
        return f"https://bedrock-runtime.{region}.amazonaws.com"
    if isinstance(schema, str) and schema.startswith("vertex") and location:
        host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        return f"https://{host}"
    return None


class ReasoningOverride(_Strict):
    style: Literal["budget", "adaptive", "none"] = Field(
        description="`budget`: thinking with a token budget; `adaptive`: adaptive thinking with an effort level; "
                    "`none`: no thinking (reasoning_effort is refused).")


class RouteBackend(_Strict):
    backend: str
    model: str = Field(min_length=1, description="The model name as the backend knows it; `*` in a wildcard route "
                                                 "passes on what the client's model name matched.")
    weight: float = Field(1.0, gt=0, description="Share of first attempts under the `weighted` policy.")
    max_input_tokens: int | None = Field(
        None, ge=1, description="Context window: the `cost` policy skips this backend for longer prompts.")
    reasoning: ReasoningOverride | None = Field(
        None, description="How this backend model thinks, where the gateway's model table is wrong or too old "
                          "(read by the Anthropic family: anthropic, bedrock-anthropic, vertex-anthropic).")


Policy = Literal["priority", "weighted", "latency", "cost"]

RETRY_EVENTS = ("connect-failure", "reset")
NEVER_RETRIED = (400, 401, 403, 404)


class RuleMatch(_Strict):
    """Every condition given must hold."""

    team: str | None = None
    key: str | None = Field(None, description="Virtual key id.")
    tags: list[str] = Field([], description="Any of these among the request's `x-babelgate-tags` (comma-separated).")
    headers: dict[str, str] = Field({}, description="Exact request header values.")
    metadata: dict[str, str] = Field({}, description="Exact values in the request body's `metadata` object.")

    @field_validator("headers")
    @classmethod
    def _lower_names(cls, value: dict[str, str]) -> dict[str, str]:
        return {name.lower(): wanted for name, wanted in value.items()}


class RouteRule(_Strict):
    """Requests matching `when` go down a sub-chain of the route's own backends."""

    when: RuleMatch
    backends: list[str] = Field(min_length=1, description="Backend ids from the route's `backends`, in order.")
    policy: Policy | None = Field(None, description="The route's policy if unset.")


class GuardrailSettings(_Strict):
    """One check on a route's requests and/or answers."""

    name: str = Field(min_length=1, description="Named in the 400 a block returns, and in the audit log.")
    pii: list[Literal["email", "phone", "card", "iban", "api_key"]] = Field(
        [], description="Personal data and secrets to look for (cards by Luhn check, IBANs by mod-97).")
    deny_words: list[str] = Field([], description="Words or phrases, matched case-insensitively.")
    deny_patterns: list[str] = Field([], description="Regular expressions (Python syntax), case-insensitive.")
    mode: Literal["block", "redact", "log"] = "block"
    apply_to: list[Literal["request", "response"]] = Field(["request"], min_length=1)

    @model_validator(mode="after")
    def _something_to_find(self) -> GuardrailSettings:
        if not (self.pii or self.deny_words or self.deny_patterns):
            raise ValueError("give at least one of pii, deny_words, deny_patterns")
        for pattern in self.deny_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"deny_patterns: {pattern!r} is not a regular expression: {exc}") from None
        return self


class SemanticCache(_Strict):
    """A route's semantic cache (`ext_proc/cache/semantic.py`): after an exact miss, a cached answer to a prompt
    whose embedding is close enough, everything else about the request being the same."""

    embeddings_model: str = Field(min_length=1, description="A route's model name or alias that serves "
                                                            "/v1/embeddings: the prompts' embeddings come from it, "
                                                            "through this gateway, with the caller's own key.")
    threshold: float = Field(0.95, gt=0, le=1, description="Cosine similarity a cached prompt needs to be a hit.")
    max_entries: int = Field(10_000, ge=1, le=10_000_000, description="Prompts the route's index keeps per "
                                                                      "process (the oldest go first).")
    embeddings_url: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$", description=(
        "Where the ext_proc servers reach this gateway's listener (e.g. http://envoy:8080), when not at "
        "`listener.host`:`listener.port`."))


class RouteCache(_Strict):
    """The route's exact response cache (`ext_proc/cache/`): an answer served again for the same request."""

    scope: Literal["key", "team", "global"] = Field("team", description="Who shares hits: each key, each team (keys "
                                                                        "without one: each key), or every caller.")
    ttl: Seconds = Field(300.0, description="How long an answer is served from the cache.")
    max_entry_bytes: int = Field(1 << 20, ge=1024, description="Larger answers are not cached.")
    deterministic_only: bool = Field(True, description="Only requests whose sampling can't vary (`temperature: 0`); "
                                                       "false: any request (`n > 1` never).")
    semantic: SemanticCache | None = Field(None, description="Also serve answers to similar prompts (needs "
                                                             "the exact cache; off unless given).")


class ModelRoute(_Strict):
    model: str = Field(min_length=1, description="The public model name clients send; `prefix/*` matches any name "
                                                 "that starts with `prefix/`.")
    aliases: list[str] = []
    backends: list[RouteBackend] = Field(min_length=1, description="Tried in this order; later ones on failure.")
    limits: list[LimitRule] = []
    policy: Policy = Field("priority", description="Which backend goes first: config order, weights, lowest "
                                                   "latency, or lowest price; the others follow as fallbacks.")
    sticky_header: str | None = Field(
        None, description="`weighted`: the same value of this header (e.g. x-request-id) always picks the same "
                          "backend; random otherwise.")
    exploration: float = Field(0.05, ge=0, le=1, description="`latency`: share of requests sent in random order.")
    rules: list[RouteRule] = []
    cache: RouteCache | None = Field(None, description="Serve repeated requests from the exact response cache "
                                                       "(chat completions, Anthropic Messages, Responses).")
    retry_on: list[int | Literal["connect-failure", "reset"]] = Field(
        [429, 500, 502, 503, 504, "connect-failure", "reset"],
        description="Outcomes that send the request to the next backend. 400, 401, 403 and 404 are refused: they "
                    "would fail the same way everywhere.")
    max_attempts: int | None = Field(None, ge=1, le=10, description="Attempts in all, retries included; the "
                                                                     "number of backends if unset.")
    deadline: Seconds | None = Field(None, description="The whole request, every attempt included; the sum of "
                                                       "the backends' timeouts if unset.")
    log_content: bool = Field(False, description="Prompts and completions of this route go into the request log.")
    guardrails: list[GuardrailSettings] = []
    max_prompt_chars: int | None = Field(None, ge=1, description="Characters of prompt text at most (400 past it).")
    max_messages: int | None = Field(None, ge=1, description="Messages per request at most (400 past it).")
    fields: Literal["lenient", "strict"] = Field(
        "lenient", description="`lenient`: a backend that can't serve a request leaves its order, a 400 only when "
                               "none can; `strict`: any backend of the request's chain refusing is a 400.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelRoute:
        ids = [b.backend for b in self.backends]
        if len(ids) != len(set(ids)):
            raise ValueError("a backend may appear only once in a route's chain")
        for rule in self.rules:
            unknown = [b for b in rule.backends if b not in ids]
            if unknown:
                raise ValueError(f"rule names backends that are not in this route: {', '.join(unknown)}")
            if len(rule.backends) != len(set(rule.backends)):
                raise ValueError("a backend may appear only once in a rule's chain")
        for outcome in self.retry_on:
            if isinstance(outcome, int) and (outcome in NEVER_RETRIED or not 400 <= outcome <= 599):
                raise ValueError(f"retry_on: {outcome} is not retried (400/401/403/404 fail the same everywhere; "
                                 "other 4xx and 5xx statuses may be listed)")
        if self.is_wildcard:
            prefix = self.model[:-1]
            if "*" in prefix or not prefix.endswith("/"):
                raise ValueError("a wildcard route is written `prefix/*`")
            if self.aliases:
                raise ValueError("a wildcard route has no aliases")
        elif "*" in self.model:
            raise ValueError("`*` may only end a wildcard route's model, as in `anthropic/*`")
        elif any("*" in b.model for b in self.backends):
            raise ValueError("a backend model with `*` needs a wildcard route (`prefix/*`) to fill it in")
        if self.sticky_header is not None:
            object.__setattr__(self, "sticky_header", self.sticky_header.lower())
        return self

    @property
    def is_wildcard(self) -> bool:
        return self.model.endswith("/*")


class CallLimit(_Strict):
    """At most `calls` MCP tool calls in one window."""

    window: Window
    calls: int = Field(ge=0)
    on_store_error: Literal["fail_open", "fail_closed"] | None = Field(
        None, description="What to do when the limiter store can't be reached; `limits.on_store_error` if unset.")


class ToolCallLimit(CallLimit):
    """Each key's calls of the tools `tool` (a namespaced-name glob) matches, counted per key and tool."""

    tool: str = Field(min_length=1, max_length=256)


class McpLimits(_Strict):
    per_key: list[CallLimit] = Field([], description="Every key's tool calls (all tools), unless the key has its "
                                                     "own `mcp_limits`.")
    per_team: list[CallLimit] = Field([], description="Every team's tool calls, all its keys together.")
    per_tool: list[ToolCallLimit] = Field([], description="Per key and tool: the first entry whose glob matches a "
                                                          "tool applies to it.")

    @property
    def configured(self) -> bool:
        return bool(self.per_key or self.per_team or self.per_tool)


def _allows_all(globs: list[str]) -> bool:
    return globs == ["*"]


class VirtualKey(_Strict):
    id: str
    hash: str = Field(description="`sha256:<hex>` of the key; the key itself is never stored.")
    models: list[str] = ["*"]
    expires_at: datetime | None = None
    team: str | None = None
    limits: list[LimitRule] | None = Field(None, description="Replaces `limits.per_key` for this key.")
    created_at: datetime | None = None
    user: str | None = Field(None, min_length=1, max_length=256, description=(
        "The end user this key belongs to: `limits.per_user` counts its requests as this user's."))
    asserts_users: bool = Field(False, description=(
        "The key's holder is trusted to name the end user of each request (a backend service that serves many "
        "users): the `limits.user_header` header, else the body's `user`, else the key's own `user`. Without it "
        "both are ignored for limits, so a key holder can't escape per-user limits by making up ids."))
    # `exclude_if`: a key that allows every MCP server and tool is stored (keys file, Redis) as it was before MCP.
    mcp_servers: list[str] = Field(["*"], exclude_if=_allows_all, description=(
        "MCP servers (`mcp.servers` names, fnmatch globs) whose tools, resources and prompts this key sees and calls."))
    mcp_tools: list[str] = Field(["*"], exclude_if=_allows_all, description=(
        "MCP tools this key sees and calls, by their namespaced name (e.g. `github__create_*`; fnmatch globs)."))
    mcp_limits: list[CallLimit] | None = Field(None, description="Replaces `mcp.limits.per_key` for this key.")
    prompts: list[str] = Field(["*"], exclude_if=_allows_all, description=(
        "Prompt templates (names, fnmatch globs) this key may use; a request naming another one gets 403."))

    @field_validator("hash")
    @classmethod
    def _hash_shape(cls, value: str) -> str:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
            raise ValueError("expected sha256:<64 lowercase hex digits> (see `babelgate keys create`)")
        return value

    @field_validator("id")
    @classmethod
    def _not_a_token_identity(cls, value: str) -> str:
        if value.startswith(constants.JWT_ID_PREFIX):
            raise ValueError(f"ids starting with {constants.JWT_ID_PREFIX!r} name JWT identities")
        return value


class JwtClaims(_Strict):
    """Which claims of a verified token say who is asking (claim names; `a.b` is not a path)."""

    subject: str = Field("sub", min_length=1, description="The identity: `jwt:<issuer name>:<value>` names it in "
                                                          "limits, telemetry and stored Responses.")
    team: str | None = Field(None, min_length=1, description="The team (team limits, routing rules); the issuer's "
                                                             "`team` when unset or absent from a token.")
    user: str | None = Field(None, min_length=1, description="The end user for `limits.per_user`; the subject "
                                                             "claim when unset.")
    models: str | None = Field(None, min_length=1, description=(
        "Models the token may use: a list of names, or one space-separated string (an OAuth `scope`); names that "
        "are no model of this gateway are ignored, and what remains is narrowed to the issuer's `models`. A token "
        "without the claim may use no model."))


class JwtIssuer(_Strict):
    """An identity provider whose tokens Envoy verifies (its `jwt_authn` filter) before the route stage maps their
    claims to an identity. Keys come from a JWKS file, read when Envoy's config is rendered, or from `jwks_uri`,
    fetched and cached by Envoy."""

    name: str = Field(description="Names the issuer in identities (`jwt:<name>:<subject>`) and Envoy's config.")
    issuer: str = Field(min_length=1, description="The `iss` its tokens carry, e.g. the OIDC issuer URL.")
    audiences: list[str] = Field(min_length=1, description="A token's `aud` must name one of these: a token the "
                                                           "provider issued for another application is refused.")
    jwks_file: Path | None = Field(None, description="A JWKS (JSON) file, put into Envoy's config at render time.")
    jwks_uri: str | None = Field(None, description="Where Envoy fetches the JWKS (the OIDC `jwks_uri`).")
    cache_duration: Seconds = Field(600.0, description="How long Envoy keeps a fetched JWKS.")
    jwks_ca_file: Path | None = Field(None, description="CA bundle for an https `jwks_uri`; the system bundle by "
                                                        "default.")
    forward: bool = Field(False, description="Keep the token in the request Envoy forwards; by default Envoy "
                                             "removes it once verified.")
    claims: JwtClaims = JwtClaims()
    team: str | None = Field(None, description="The team of this issuer's identities whose token names none.")
    models: list[str] = Field(["*"], description="The most any of its tokens may use (route model names or "
                                                 "aliases); `*` for every model.")
    limits: list[LimitRule] | None = Field(None, description="Each subject's limits (like a key's); "
                                                             "`limits.per_key` when unset.")
    asserts_users: bool = Field(False, description="Its tokens' holders may name the end user of each request "
                                                   "(see `VirtualKey.asserts_users`).")

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("use letters, digits, '_', '-' or '.', starting with a letter or digit")
        return value

    @field_validator("jwks_uri")
    @classmethod
    def _uri_shape(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected an https:// URL with a host (http:// only for a local test issuer)")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtIssuer:
        if (self.jwks_file is None) == (self.jwks_uri is None):
            raise ValueError("give exactly one of `jwks_file` or `jwks_uri`")
        return self


class JwtSettings(_Strict):
    issuers: list[JwtIssuer] = Field([], description="Identity providers whose tokens are accepted, side by side "
                                                     "with virtual keys.")


class ListenerTls(_Strict):
    """TLS on the client-facing listener (HTTP/2 and HTTP/1.1 offered by ALPN)."""

    cert_file: Path = Field(description="PEM certificate chain.")
    key_file: Path = Field(description="PEM private key.")


class Listener(_Strict):
    tls: ListenerTls | None = None
    host: str = "127.0.0.1"
    port: int = Field(constants.DEFAULT_LISTEN_PORT, ge=0, le=65535)
    admin_port: int = Field(constants.DEFAULT_ADMIN_PORT, ge=0, le=65535)
    max_connections: int = Field(50_000, ge=1, description="Envoy refuses client connections past this many.")
    trusted_proxy_hops: int = Field(0, ge=0, le=16, description=(
        "Proxies in front of Envoy whose X-Forwarded-For entries are believed: 0 means the client is the "
        "connection's peer; 1 the address a single load balancer in front put there."))


class ExtProcTls(_Strict):
    """Mutual TLS between Envoy and the ext_proc servers, for when they don't share a host (`babelgate certs` makes
    every file). The server serves only clients whose certificate `ca_file` signed; Envoy checks the server's
    certificate names `server_name`."""

    ca_file: Path = Field(description="PEM CA that signs both sides' certificates.")
    cert_file: Path = Field(description="The ext_proc server's certificate (its SAN is `server_name`).")
    key_file: Path
    client_cert_file: Path = Field(description="Envoy's client certificate (the rendered cluster presents it).")
    client_key_file: Path
    server_name: str = Field(constants.DEFAULT_EXT_PROC_SERVER_NAME, min_length=1, max_length=253,
                             pattern=r"^[A-Za-z0-9.-]+$")


class ExtProcServer(_Strict):
    """Where the ext_proc servers listen, and how they know the caller is Envoy: anything that can open an ext_proc
    stream can ask for provider credentials, so exactly one of these holds:
    - `socket_dir`: Unix sockets (mode 0600) in this directory, served to the server's own user (and root) only;
      Envoy on the same host connects to them (`babelgate up` does this);
    - `tls`: mutual TLS; only a client with a certificate from `tls.ca_file` is served;
    - `peers: mesh`: plaintext, because a service mesh authenticates and authorizes peers in front of the server
      (Istio: PeerAuthentication STRICT + AuthorizationPolicy, as `render --istio` emits them);
    - plaintext on a loopback address: any local process can reach it, so the server warns at start. A plaintext
      non-loopback address without `peers: mesh` is refused.
    """

    host: str = "127.0.0.1"
    port: int = Field(constants.DEFAULT_EXT_PROC_PORT, ge=0, le=65535)
    processes: int = Field(1, ge=1, le=64, description="One port each: port, port+1, ...")
    message_timeout: Seconds = 5.0
    socket_dir: Path | None = Field(None, description="Serve on Unix sockets here: ext_proc-0.sock, ext_proc-1.sock")
    tls: ExtProcTls | None = None
    peers: Literal["envoy", "mesh"] = Field("envoy", description="`mesh`: a service mesh authenticates peers.")
    health_port: int | None = Field(None, ge=1, le=65535, description=(
        "Also serve the gRPC health service alone, in plaintext, on this port (+ the process index) of `host`: "
        "for probes that can't present Envoy's certificate (Kubernetes' grpc probe, Docker's HEALTHCHECK)."))

    @model_validator(mode="after")
    def _one_channel(self) -> ExtProcServer:
        if self.socket_dir is not None and self.tls is not None:
            raise ValueError("give `socket_dir` (Envoy on the same host) or `tls` (across hosts), not both")
        return self

    def socket_path(self, index: int) -> Path:
        assert self.socket_dir is not None
        return self.socket_dir / f"ext_proc-{index}.sock"


class AdminCredential(_Strict):
    name: str = Field(description="Who holds it: named in the audit log for every call made with it.")
    secret: SecretRef


class AdminApi(_Strict):
    """The admin API (keys, routes, usage): gRPC on its own port of the first ext_proc process, and JSON over HTTP
    at `/admin/v1/...` on the listener through Envoy's gRPC-JSON transcoder."""

    port: int = Field(constants.DEFAULT_ADMIN_API_PORT, ge=0, le=65535,
                      description="On the ext_proc server's host; 0 picks a free port (reported with --report-ready).")
    credentials: list[AdminCredential] = Field(min_length=1, description="Each caller sends one as "
                                                                        "`Authorization: Bearer <secret>`.")
    via_envoy: bool = Field(False, description="Also serve the admin API (JSON and gRPC) on Envoy's client-facing "
                                               "listener: opt-in, since every client can then reach it.")


class RequestLimits(_Strict):
    max_body_bytes: int = Field(constants.DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    default_max_tokens: int = Field(constants.DEFAULT_ANTHROPIC_MAX_TOKENS, ge=1)
    max_json_depth: int = Field(64, ge=8, le=512, description="Nesting of the request body's JSON (tool schemas "
                                                              "included); deeper is a 400.")
    max_messages: int = Field(10_000, ge=1, description="Messages per request, every route (routes may allow fewer).")
    max_tools: int = Field(512, ge=1, description="Tools per request.")
    unbounded_output_tokens: int = Field(
        65_536, ge=1, description="What is reserved for a request a backend gets with no output limit (a model that "
                                  "decides its own length: Amazon Nova 2 at high reasoning effort); every other "
                                  "request carries one, the client's or `default_max_tokens`.")
    max_header_kb: int = Field(64, ge=8, le=8192, description="Request headers in all, enforced by Envoy (431).")


class Team(_Strict):
    id: str
    limits: list[LimitRule] = []
    mcp_servers: list[str] = Field(["*"], exclude_if=_allows_all, description=(
        "MCP servers its keys may use at most (globs); a key's own list narrows it further."))
    mcp_tools: list[str] = Field(["*"], exclude_if=_allows_all, description=(
        "MCP tools (namespaced names, globs) its keys may use at most."))
    prompts: list[str] = Field(["*"], exclude_if=_allows_all, description=(
        "Prompt templates (names, globs) its keys may use at most; a key's own list narrows it further."))


_MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class McpServer(_Strict):
    """One upstream MCP server: Streamable HTTP at `url`, or a stdio program (`command`) that the gateway runs behind
    its bridge. Credentials come from the config, never from the client."""

    name: str = Field(description="Letters, digits, `-`, `_`; names the server in allow-lists, logs and metrics.")
    url: str | None = Field(None, description="The server's Streamable HTTP endpoint, e.g. https://host/mcp.")
    command: list[str] | None = Field(None, min_length=1, description="A stdio server: program and arguments.")
    args: list[str] = []
    env: dict[str, SecretRef] = Field({}, description="Environment of a stdio server (secrets by reference).")
    headers: dict[str, SecretRef] = Field({}, description="Headers the gateway adds upstream, e.g. an API key.")
    bearer: SecretRef | None = Field(None, description="Sent upstream as `Authorization: Bearer <secret>`.")
    prefix: str | None = Field(None, description="Prefix of its tool and prompt names; the server's name if unset.")
    timeout: Seconds = Field(60.0, description="Longest wait for one answer of this server.")
    ca_file: Path | None = Field(None, description="CA bundle for an https `url`; the system bundle by default.")
    port: int | None = Field(None, ge=1, le=65535, description=(
        "A stdio server: the loopback port its bridge listens on (`mcp.bridge_host`). `babelgate up` picks a free "
        "one when unset; compose and Kubernetes renderings need it set."))

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _MCP_SERVER_NAME.match(value):
            raise ValueError("use 1-64 letters, digits, '-' or '_'")
        return value

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
                raise ValueError("expected an http:// or https:// URL with a host")
        return value

    @field_validator("headers")
    @classmethod
    def _lower_headers(cls, value: dict[str, SecretRef]) -> dict[str, SecretRef]:
        return {name.lower(): ref for name, ref in value.items()}

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.url is None) == (self.command is None):
            raise ValueError("give exactly one of `url` (Streamable HTTP) or `command` (stdio)")
        if self.args and self.command is None:
            raise ValueError("`args` go with `command`")
        if self.port is not None and self.command is None:
            raise ValueError("`port` goes with `command` (the stdio bridge's port); an HTTP server has its `url`")
        if self.env and self.command is None:
            raise ValueError("`env` goes with `command`")
        if self.prefix is not None and not _MCP_SERVER_NAME.match(self.prefix):
            raise ValueError("prefix: use 1-64 letters, digits, '-' or '_'")
        return self

    @property
    def name_prefix(self) -> str:
        return self.prefix if self.prefix is not None else self.name


class McpSettings(_Strict):
    """The gateway's own MCP endpoint: one virtual server over every `servers` entry (see `ext_proc/mcp/`)."""

    path: str = Field("/mcp", pattern=r"^/[A-Za-z0-9/_.-]*$", description="Where clients reach it on the listener.")
    separator: str = Field("__", min_length=1, max_length=8, pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Between a server's prefix and an upstream tool or prompt name: `github` + `create_issue` -> "
        "`github__create_issue`. No prefix may contain it."))
    list_ttl: Seconds = Field(300.0, description="Upstream lists are fetched again this long after the last fetch "
                                                 "(sooner on a `list_changed` notification).")
    page_size: int = Field(100, ge=1, le=10_000, description="Items per page of the gateway's own list answers.")
    max_argument_bytes: int = Field(1 << 20, ge=1024, description="A call's arguments, as JSON, at most.")
    max_result_bytes: int = Field(16 << 20, ge=1024, description="An upstream answer at most.")
    call_timeout: Seconds = Field(120.0, description="Longest a tool call may take end to end.")
    session_ttl: Seconds = Field(3600.0, description="A gateway session (`Mcp-Session-Id`) is forgotten after this "
                                                     "long unused.")
    bridge_host: str = Field("127.0.0.1", description=(
        "Where Envoy and the ext_proc servers reach the bridges of stdio servers (the host running `babelgate "
        "serve`: `127.0.0.1` with `babelgate up`, the babelgate service's name in compose or Kubernetes)."))
    limits: McpLimits = Field(default_factory=lambda: McpLimits(), description="Tool-call limits.")
    log_content: bool = Field(False, description="The request log keeps tool arguments and results (`prompt`, "
                                                 "`completion` columns); off: only names, sizes and outcomes.")
    guardrails: list[GuardrailSettings] = Field([], description=(
        "Checked on tool-call arguments (`apply_to: request`) and on every forwarded answer (`response`): tool "
        "results, prompts, resources."))
    servers: list[McpServer] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> McpSettings:
        names = [server.name for server in self.servers]
        if len(names) != len(set(names)):
            raise ValueError("each MCP server name must be unique")
        prefixes = [server.name_prefix for server in self.servers]
        if len(prefixes) != len(set(prefixes)):
            raise ValueError("each MCP server prefix must be unique (names from two servers would collide)")
        # The separator must first occur right after the prefix: `a_` with `__` would make `a___x` ambiguous.
        clashing = [prefix for prefix in prefixes if (prefix + self.separator).find(self.separator) != len(prefix)]
        if clashing:
            raise ValueError(f"prefix {clashing[0]!r} contains or runs into the separator {self.separator!r}: "
                             "namespaced names could not be told apart")
        return self


class Price(_Strict):
    """USD per million tokens for one backend model."""

    backend: str
    model: str
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0, description="Price of cached prompt tokens; `input` if unset.")


class RedisSettings(_Strict):
    url: str = Field(description="redis://host:port/db, rediss:// for TLS")
    password: SecretRef | None = None
    ca_file: Path | None = None
    key_prefix: str = "bg:"
    timeout: Seconds = Field(0.1, description="Per call; past it the store counts as unavailable.")
    cluster: bool = False
    leases: bool = Field(True, description=(
        "Each process takes a 1/64 share of a large limit (one that holds at least 8 such shares of a request, while "
        "the count is under half the limit) for half a second and admits requests under it without a round trip; "
        "never beyond the limit. False: every request asks Redis (a refusal can then never come early: see "
        "`limits/leases.py`)."))

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError("expected a redis:// or rediss:// URL")
        return value


class RoutingSettings(_Strict):
    cooldown_default: Seconds = Field(
        5.0, description="How long a backend cools after a 429 that names no wait (no retry-after or reset header).")
    cooldown_max: Seconds = Field(300.0, description="A provider's retry-after is honoured up to this long.")
    share_cooldowns: bool = Field(
        True, description="With `limits.redis` configured, cooldowns are shared by every process and replica.")
    latency_smoothing: float = Field(0.3, gt=0, le=1, description="Weight of the newest sample in the latency "
                                                                   "averages (EWMA).")
    retry_budget_percent: float = Field(100.0, gt=0, le=100, description=(
        "Failover attempts in flight, as a share of the requests in flight to a chain or backend (Envoy's retry "
        "budget): 100 lets every request fail over at once, whatever the concurrency."))
    min_retry_concurrency: int = Field(64, ge=1, description="Failover attempts always allowed in flight, however "
                                                             "few requests are active.")
    max_requests: int = Field(100_000, ge=1, description="Requests in flight to one backend or chain past which "
                                                         "Envoy answers 503 (its circuit breaker).")


class RequestLogSettings(_Strict):
    destination: str = Field(description="A directory, or s3://bucket/prefix for S3-compatible storage.")
    s3_endpoint: str | None = Field(None, description="e.g. http://minio:9000 for S3-compatible storage.")
    s3_region: str | None = None
    access_key: SecretRef | None = None
    secret_key: SecretRef | None = None
    batch_rows: int = Field(1000, ge=1, description="Rows per Parquet file at most.")
    flush_seconds: Seconds = Field(5.0, description="A partial batch is written this long after its first row.")
    queue_rows: int = Field(100_000, ge=1, description="Rows waiting at most; past it rows are dropped and counted.")


class MetricsSettings(_Strict):
    prometheus_port: int | None = Field(
        None, ge=1, le=65535, description="Server process n serves /metrics on this port + n.")
    prometheus_host: str = "127.0.0.1"
    otlp_endpoint: str | None = Field(None, description="e.g. http://collector:4318/v1/metrics (http/protobuf) or "
                                                        "http://collector:4317 (grpc).")
    otlp_protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"


class TraceSettings(_Strict):
    otlp_endpoint: str = Field(description="e.g. http://collector:4318/v1/traces (http/protobuf) or "
                                           "http://collector:4317 (grpc).")
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of new traces kept; a client's sampled "
                                                             "`traceparent` is always followed.")


class TelemetrySettings(_Strict):
    service_name: str = "babelgate"
    request_log: RequestLogSettings | None = None
    metrics: MetricsSettings = MetricsSettings()
    traces: TraceSettings | None = None
    access_log: str | None = Field(
        None, description="Envoy writes a JSON access log line per request, and one per upstream attempt, to this "
                          "path (e.g. /dev/stdout), with Babelgate's metadata: key, route, backend, model, tokens, "
                          "cost.")

    @property
    def enabled(self) -> bool:
        """Something consumes per-request reports (the route stage then also sees every final answer)."""
        metrics = self.metrics
        return (self.request_log is not None or self.traces is not None or metrics.prometheus_port is not None
                or metrics.otlp_endpoint is not None)


class ResponsesSettings(_Strict):
    """OpenAI's Responses API (`/v1/responses`): what the gateway keeps of responses created with `store: true`."""

    store: bool = Field(
        True, description="Keep responses created with `store: true` (OpenAI's default) for `previous_response_id`, "
                          "`GET /v1/responses/{id}` and its input items; false: nothing is kept and those answer "
                          "404. Kept in `limits.redis` when configured (every process and replica sees them), else "
                          "in this process's memory.")
    ttl: Seconds = Field(30 * 86400, description="How long a kept response lives (OpenAI keeps them 30 days).")
    max_in_memory: int = Field(10_000, ge=1, description="Responses kept in memory (without Redis), the oldest "
                                                         "forgotten first.")


class LimitSettings(_Strict):
    redis: RedisSettings | None = Field(None, description="Shared store; without it, an in-process store.")
    user_header: str = Field("x-user-id", description=(
        "Header naming the end user (else the body's `user`), read only for callers trusted to assert users "
        "(`asserts_users` on their key or issuer); everyone else's user is their key's `user` or token's claim."))
    chars_per_token: float = Field(4.0, gt=0, description="Prompt estimate when reserving: characters per token.")
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"
    per_key: list[LimitRule] = Field([], description="Every key's limits, unless the key has its own.")
    per_user: list[LimitRule] = Field([], description="Every end user's limits.")
    meter_streams_aside: bool = Field(True, description=(
        "A stream from an OpenAI backend on a direct route, whose client asked for its usage "
        "(`stream_options.include_usage`) and that nothing but the limits reads (no telemetry, access log, "
        "guardrail, schema or cache), goes from Envoy to the client without waiting for ext_proc: a second filter "
        "in Envoy's observability mode reads a copy of each chunk and settles the reservation from the stream's "
        "usage. False: the route stage reads each chunk in the stream's path."))

    @field_validator("user_header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class PromptTemplate(_Strict):
    """One version of a prompt template: written in the config (`prompts:`, read-only) or stored by the admin API.
    Its messages' text may hold `{{variable}}` placeholders, filled from the request (`templates/render.py`)."""

    name: str = Field(description="Lowercase letters, digits, `.`, `_`, `-` (at most 64); what requests name.")
    version: int | None = Field(None, ge=1, le=template_syntax.MAX_VERSIONS, description=(
        "In the config: 1 plus the previous entry of this name's version when unset."))
    labels: list[str] = Field([], max_length=template_syntax.MAX_LABELS, description=(
        "In the config: labels that resolve to this version (e.g. production); the admin API sets them apart."))
    description: str | None = Field(None, max_length=1024)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=template_syntax.MAX_MESSAGES)
    model: str | None = Field(None, min_length=1, max_length=256, description="A route's model name: what the "
                                                                             "request uses unless it names one.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = Field(None, description="OpenAI chat form, e.g. {type: json_schema, "
                                                                     "json_schema: {name, schema, strict}}.")
    variables: list[str] | None = Field(None, max_length=template_syntax.MAX_VARIABLES, description=(
        "Declared variables: when given, every placeholder must be one of them."))
    created_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not template_syntax.TEMPLATE_NAME.fullmatch(value):
            raise ValueError("1-64 characters: lowercase letters, digits, . _ -, starting with a letter or digit")
        return value

    @field_validator("labels")
    @classmethod
    def _label_shapes(cls, value: list[str]) -> list[str]:
        for label in value:
            if not template_syntax.LABEL.fullmatch(label) or label == template_syntax.LATEST:
                raise ValueError(f"label {label!r}: 1-32 lowercase letters, digits, _ or -, starting with a letter "
                                 f"(and not {template_syntax.LATEST!r}, which is implicit)")
        return value

    @field_validator("messages")
    @classmethod
    def _message_shapes(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, message in enumerate(value):
            problem = template_syntax.message_problem(message)
            if problem is not None:
                raise ValueError(f"messages[{index}]: {problem}")
        return value

    @field_validator("response_format")
    @classmethod
    def _format_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = template_syntax.response_format_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PromptTemplate:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        used = template_syntax.placeholders(self.messages)
        if len(used) > template_syntax.MAX_VARIABLES:
            raise ValueError(f"more than {template_syntax.MAX_VARIABLES} variables")
        if self.variables is not None:
            bad = [v for v in self.variables if not template_syntax.VARIABLE.fullmatch(v)]
            if bad:
                raise ValueError(f"variables: {bad[0]!r} is not a variable name (letters, digits, _)")
            undeclared = [v for v in used if v not in self.variables]
            if undeclared:
                raise ValueError(f"placeholder {{{{{undeclared[0]}}}}} is not among the declared variables")
        if len(self.model_dump_json(exclude={"labels", "created_at"})) > template_syntax.MAX_TEMPLATE_BYTES:
            raise ValueError(f"a template is at most {template_syntax.MAX_TEMPLATE_BYTES // 1024} KiB of JSON")
        return self


def _numbered_prompts(templates: list[PromptTemplate]) -> list[PromptTemplate]:
    """Versions left unset numbered per name (1 plus the previous entry's); a repeated version, or a label on two
    versions of one name, is a problem at its own path."""
    previous: dict[str, int] = {}
    versions: set[tuple[str, int]] = set()
    seen: dict[tuple[str, str], int] = {}
    problems: list[tuple[Loc, str]] = []
    numbered = []
    for index, template in enumerate(templates):
        version = template.version or previous.get(template.name, 0) + 1
        if (template.name, version) in versions:
            problems.append(((index, "version"), f"duplicate version {version} of prompt {template.name!r}"))
        versions.add((template.name, version))
        previous[template.name] = version
        for label in template.labels:
            if seen.setdefault((template.name, label), version) != version:
                problems.append(((index, "labels"), f"label {label!r} of prompt {template.name!r} is on two versions"))
        numbered.append(template if template.version == version else template.model_copy(update={"version": version}))
    if problems:
        raise ConfigProblems(problems)
    return numbered


PromptTemplates = Annotated[list[PromptTemplate], AfterValidator(_numbered_prompts)]


class Config(_Strict):
    listener: Listener = Listener()
    ext_proc: ExtProcServer = ExtProcServer()
    requests: RequestLimits = RequestLimits()
    backends: list[Backend] = Field(min_length=1)
    routes: list[ModelRoute] = Field(min_length=1)
    virtual_keys: list[VirtualKey] = []
    keys_file: Path | None = Field(None, description="YAML list of extra virtual keys (written by `babelgate keys`).")
    admin: AdminApi | None = None
    limits: LimitSettings = LimitSettings()
    teams: list[Team] = []
    prices: list[Price] = []
    routing: RoutingSettings = RoutingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    responses: ResponsesSettings = ResponsesSettings()
    jwt: JwtSettings = JwtSettings()
    mcp: McpSettings | None = None
    prompts: PromptTemplates = Field([], description="Prompt templates (read-only; the admin API stores others).")
    _origin: Origin | None = PrivateAttr(None)

    @property
    def limits_configured(self) -> bool:
        settings = self.limits
        return bool(settings.per_key or settings.per_user or any(k.limits for k in self.virtual_keys)
                    or any(t.limits for t in self.teams) or any(r.limits for r in self.routes)
                    or any(b.limits for b in self.backends) or any(i.limits for i in self.jwt.issuers)
                    or (self.mcp is not None and self.mcp.limits.configured)
                    or any(k.mcp_limits for k in self.virtual_keys))

    @property
    def origin(self) -> Origin:
        """Where this config was read, with its YAML lines (set by the loader; a config built in code has none)."""
        return self._origin or Origin()

    def located(self, origin: Origin) -> Config:
        """Record where this config was read: the loader calls it once, on the object it just validated."""
        self._origin = origin
        return self

    def model_names(self) -> dict[str, str]:
        """Every route's model name and alias -> the route's model name (a wildcard route's is `prefix/*`)."""
        return {name: route.model for route in self.routes for name in (route.model, *route.aliases)}

    @model_validator(mode="after")
    def _references(self) -> Config:
        names = self.model_names()
        problems = [*self._unique_ids(), *self._backend_references(), *self._admin_problems(),
                    *self._reasoning_conflicts(), *_key_model_problems(self.virtual_keys, names),
                    *_issuer_model_problems(self.jwt.issuers, names), *_prompt_model_problems(self.prompts, names),
                    *_semantic_model_problems(self.routes, names)]
        if problems:
            raise ConfigProblems(problems)
        keys = [_with_route_models(key, names) for key in self.virtual_keys]
        if any(new is not old for new, old in zip(keys, self.virtual_keys, strict=True)):
            object.__setattr__(self, "virtual_keys", keys)
        issuers = [_with_route_models(issuer, names) for issuer in self.jwt.issuers]
        if any(new is not old for new, old in zip(issuers, self.jwt.issuers, strict=True)):
            object.__setattr__(self, "jwt", self.jwt.model_copy(update={"issuers": issuers}))
        return self

    def _backend_references(self) -> list[tuple[Loc, str]]:
        known = {b.id for b in self.backends}
        problems: list[tuple[Loc, str]] = [
            (("routes", i, "backends", j, "backend"), f"unknown backend {entry.backend!r}")
            for i, route in enumerate(self.routes) for j, entry in enumerate(route.backends)
            if entry.backend not in known]
        problems += [(("prices", i, "backend"), f"unknown backend {price.backend!r}")
                     for i, price in enumerate(self.prices) if price.backend not in known]
        return problems

    def _reasoning_conflicts(self) -> list[tuple[Loc, str]]:
        """A reasoning override belongs to a backend model: two routes may not give one backend model two styles."""
        styles: dict[tuple[str, str], str] = {}
        problems: list[tuple[Loc, str]] = []
        for i, route in enumerate(self.routes):
            for j, entry in enumerate(route.backends):
                if entry.reasoning is None:
                    continue
                style = styles.setdefault((entry.backend, entry.model), entry.reasoning.style)
                if style != entry.reasoning.style:
                    problems.append((("routes", i, "backends", j, "reasoning", "style"),
                                     f"backend {entry.backend!r} model {entry.model!r} has reasoning style {style!r} "
                                     "in another route"))
        return problems

    def _unique_ids(self) -> list[tuple[Loc, str]]:
        names = [entry for i, route in enumerate(self.routes)
                 for entry in ((("routes", i, "model"), route.model),
                               *((("routes", i, "aliases", k), alias) for k, alias in enumerate(route.aliases)))]
        return [*_duplicates([(("backends", i, "id"), b.id) for i, b in enumerate(self.backends)], "backend id"),
                *_duplicates(names, "model name or alias"),
                *_duplicates([(("virtual_keys", i, "id"), k.id) for i, k in enumerate(self.virtual_keys)],
                             "virtual key id"),
                *_duplicates([(("virtual_keys", i, "hash"), k.hash) for i, k in enumerate(self.virtual_keys)],
                             "virtual key hash"),
                *_duplicates([(("teams", i, "id"), t.id) for i, t in enumerate(self.teams)], "team id"),
                *_duplicates([(("jwt", "issuers", i, "name"), j.name) for i, j in enumerate(self.jwt.issuers)],
                             "JWT issuer name"),
                *_duplicates([(("prices", i), f"{p.backend}/{p.model}") for i, p in enumerate(self.prices)],
                             "price entry")]

    def _admin_problems(self) -> list[tuple[Loc, str]]:
        if self.admin is None:
            return []
        problems: list[tuple[Loc, str]] = []
        if self.keys_file is None and self.limits.redis is None:
            problems.append((("admin",), "the admin API stores keys in Redis (`limits.redis`) or else in "
                                         "`keys_file`: configure one of them"))
        problems += _duplicates([(("admin", "credentials", i, "name"), c.name)
                                 for i, c in enumerate(self.admin.credentials)], "admin credential name")
        if self.admin.port == 0 and self.admin.via_envoy:
            problems.append((("admin", "port"), "admin.port 0 (a free port) can't be named in Envoy's config: give "
                                                "a port, or set admin.via_envoy: false"))
        return problems


def _duplicates(entries: list[tuple[Loc, str]], what: str) -> list[tuple[Loc, str]]:
    """Each repeat of a value, at its own path (the first occurrence is the one kept)."""
    seen: set[str] = set()
    found = []
    for loc, value in entries:
        if value in seen:
            found.append((loc, f"duplicate {what} {value!r}"))
        seen.add(value)
    return found


def _key_model_problems(keys: list[VirtualKey], names: dict[str, str]) -> list[tuple[Loc, str]]:
    return [(("virtual_keys", i, "models", j), f"key {key.id!r} allows unknown model {model!r} (give a route's "
                                               "model name or alias, or '*' for every model)")
            for i, key in enumerate(keys) for j, model in enumerate(key.models) if model != "*" and model not in names]


def _prompt_model_problems(prompts: list[PromptTemplate], names: dict[str, str]) -> list[tuple[Loc, str]]:
    """A template's default model must be one a route serves (a name, an alias, or under a wildcard route)."""
    prefixes = tuple(name[:-1] for name in names if name.endswith("/*"))
    return [(("prompts", i, "model"), f"template {template.name!r} names unknown model {template.model!r}")
            for i, template in enumerate(prompts)
            if template.model is not None and template.model not in names
            and not (template.model.startswith(prefixes) and prefixes)]


def _semantic_model_problems(routes: list[ModelRoute], names: dict[str, str]) -> list[tuple[Loc, str]]:
    """A semantic cache's embeddings model must be one a route serves (a name, an alias, or under a wildcard)."""
    prefixes = tuple(name[:-1] for name in names if name.endswith("/*"))
    return [(("routes", i, "cache", "semantic", "embeddings_model"),
             f"unknown embeddings model {model!r} (give a route's model name or alias)")
            for i, route in enumerate(routes) if route.cache is not None and route.cache.semantic is not None
            and (model := route.cache.semantic.embeddings_model) not in names
            and not (prefixes and model.startswith(prefixes))]


_Holder = TypeVar("_Holder", VirtualKey, JwtIssuer)


def _issuer_model_problems(issuers: list[JwtIssuer], names: dict[str, str]) -> list[tuple[Loc, str]]:
    return [(("jwt", "issuers", i, "models", j), f"issuer {issuer.name!r} allows unknown model {model!r} (give a "
                                                 "route's model name or alias, or '*' for every model)")
            for i, issuer in enumerate(issuers) for j, model in enumerate(issuer.models)
            if model != "*" and model not in names]


def _with_route_models(key: _Holder, names: dict[str, str]) -> _Holder:
    """A key (or issuer) that names a route by an alias allows the route (authorization compares route model
    names)."""
    models = route_models(key.models, names)
    return key if models == key.models else key.model_copy(update={"models": models})


def route_models(models: list[str], names: Mapping[str, str]) -> list[str]:
    """Aliases replaced by their route's model name, repeats dropped, order kept; '*' and unknown names as given."""
    return list(dict.fromkeys(names.get(model, model) for model in models))


def secret_refs(model: BaseModel, loc: Loc = ()) -> Iterator[tuple[Loc, SecretRef]]:
    """Every `SecretRef` in `model`, by its YAML path."""
    for name, info in type(model).model_fields.items():
        yield from _refs_in(getattr(model, name), (*loc, info.alias or name))


def _refs_in(value: object, loc: Loc) -> Iterator[tuple[Loc, SecretRef]]:
    if isinstance(value, SecretRef):
        yield loc, value
    elif isinstance(value, BaseModel):
        yield from secret_refs(value, loc)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _refs_in(item, (*loc, index))
    elif isinstance(value, dict):  # e.g. an MCP server's `headers: {name: SecretRef}`
        for key, item in value.items():
            yield from _refs_in(item, (*loc, key))
