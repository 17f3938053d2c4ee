"""The configuration compiled into the plain tables the hot path reads.

Built once per (re)load and swapped as a whole, so a request sees one consistent snapshot from start to end.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .. import providers
from ..auth.backend_credentials import credential_for
from ..auth.credentials import Credential, StaticCredential, check_environment, read_secret
from ..auth.jwt_claims import IssuerInfo, compile_issuers
from ..auth.virtual_keys import KeyInfo
from ..cache.store import AnswerCache, build_answer_cache
from ..config.chains import reasoning_styles, route_chain_sets, translation_kinds
from ..config.models import Backend, Config, ModelRoute, RouteCache, RoutingSettings
from ..guardrails.engine import Guardrail
from ..json_types import JsonObject
from ..limits.estimate import Price
from ..limits.limiter import Limiter
from ..limits.setup import build_limiter
from ..mcp.service import McpService, read_credentials, shared_key
from ..mcp.sessions import build_session_store
from ..providers import fetches, presets
from ..providers.metered_aside import meters_aside
from ..providers.translator import Translator
from ..routing.cooldowns import Cooldowns, shared_cooldowns
from ..routing.latency import LatencyAverages
from ..routing.rules import CompiledRule
from ..state.responses import ResponseStore, build_response_store
from ..telemetry.hub import Telemetry
from ..templates.registry import PromptRegistry, load_registry

if TYPE_CHECKING:
    from ..cache.semantic import SemanticIndex


@dataclass(frozen=True, slots=True)
class BackendInfo:
    id: str
    schema: str
    translator: Translator
    authority: str
    origin: str
    """scheme://authority, for URLs that credentials sign."""
    base_path: str
    credential: Credential
    settings: Backend
    secret_digest: str = ""
    """Of the API key read at load: a reload keeps the credential object only if neither settings nor key changed."""
    reasoning: dict[str, str] | None = None
    """Backend model -> the reasoning style a route's entry configures (`reasoning: {style}`); None when none
    does. A wildcard entry's model keeps its `*` (matched by `reasoning_style`)."""

    def chat_request(self, body: JsonObject, model: str, default_max_tokens: int,
                     dropped: list[str] | None = None) -> JsonObject:
        """The provider's translation, then the quirks of an OpenAI-compatible preset (Mistral, Groq, ...), then the
        backend's `drop_fields`. What it makes depends on the backend (preset, dropped fields), the model name and
        its reasoning style, not only on the schema (`config.chains.translation_kinds`). `dropped`, when given,
        gets the client's fields that did not go: the translator's table and its own, the preset's, `drop_fields`.
        Last, URLs the provider would fetch with the gateway's identity: refused unless `fetch_urls` grants them
        (`providers.fetches`)."""
        if dropped is not None:
            dropped.extend(self.translator.table_drops(body))
        reasoning = self.reasoning_style(model) if self.reasoning is not None else None
        upstream = self.translator.chat_request(body, model, default_max_tokens=default_max_tokens, dropped=dropped,
                                                reasoning=reasoning)
        if self.settings.preset is not None:
            if dropped is not None:
                dropped.extend(presets.drops(self.settings.preset, upstream))
            upstream = presets.adapt_request(self.settings.preset, upstream, model)
        for name in self.settings.drop_fields:
            if upstream.pop(name, None) is not None and dropped is not None and name in body:
                dropped.append(name)
        return fetches.checked(self.schema, self.settings.fetch_urls, body, upstream)

    def reasoning_style(self, model: str) -> str | None:
        """The configured reasoning style of `model` on this backend (a wildcard entry's `*` matches any part)."""
        styles = self.reasoning or {}
        style = styles.get(model)
        if style is None:
            for pattern, configured in styles.items():
                prefix, star, suffix = pattern.partition("*")
                if star and model.startswith(prefix) and model.endswith(suffix):
                    return configured
        return style


@dataclass(frozen=True, slots=True)
class ChainChoice:
    """What the route stage hands Envoy for one backend order."""

    order: tuple[str, ...]
    name: str
    """The chain header value (the Envoy route)."""
    direct: bool
    first_byte_ms: str | None
    """Per-try timeout for a stream sent down this order, as Envoy's header wants it; None when no backend of the
    order sets `first_byte_timeout`. Envoy applies one per-try timeout to every attempt of a request, so it is the
    largest `first_byte_timeout` among the order's backends (those without one accept it)."""


@dataclass(frozen=True, slots=True)
class RouteInfo:
    name: str
    backends: tuple[str, ...]
    """Config order."""
    backend_models: dict[str, str]
    policy: str
    weights: dict[str, float]
    windows: dict[str, int | None]
    prices: dict[str, tuple[float, float]]
    """Backend -> (USD per input token, USD per output token), where the price table has the backend's model."""
    sticky_header: str | None
    exploration: float
    rules: tuple[CompiledRule, ...]
    chains: dict[tuple[str, ...], ChainChoice]
    """Every order Envoy knows for this route (already cut to the route's attempt count)."""
    by_first: dict[tuple[tuple[str, ...], str], ChainChoice]
    """(candidate set, backend) -> an order of that set starting with that backend, for orders Envoy was not given
    (sets of many backends)."""
    attempts: dict[tuple[str, ...], int]
    """Orders are cut to this many backends, per candidate set (the route's backends, each rule's, and what can
    remain of them when backends can't serve a request: `config.chains.remaining_sets`)."""
    translations: tuple[tuple[BackendInfo, tuple[str, ...]], ...]
    """One backend per translation kind of the route (`config.chains.translation_kinds`), with the route's backends
    of that kind (itself first): the route stage translates the request once per kind up front, and a kind whose
    translator refuses it leaves the request's order. Backends of one kind share the translation (it is the same),
    and a direct route sends the one made here."""
    embeddings: bool
    """Every backend of the chain serves /v1/embeddings."""
    wildcard: bool
    log_content: bool = False
    guardrails: tuple[Guardrail, ...] = ()
    max_prompt_chars: int | None = None
    max_messages: int | None = None
    strict: bool = False
    """`fields: strict`: any candidate backend refusing the request is a 400, instead of leaving the order."""
    cache: RouteCache | None = None
    """The route's exact response cache settings; None: not cached."""
    ranks_by_latency: bool = False
    """The route or one of its rules ranks backends by latency: its attempts hand their samples to the route stage."""

    def backend_model(self, backend: str, requested: str) -> str:
        """The backend's model name; a wildcard route's `*` becomes what the client's name matched."""
        model = self.backend_models[backend]
        if self.wildcard and "*" in model:
            return model.replace("*", requested[len(self.name) - 1:])
        return model

    def chain_for(self, order: list[str] | tuple[str, ...], candidates: tuple[str, ...]) -> ChainChoice:
        """The Envoy route for this order; for an order Envoy was not given (a set of many backends), the given
        order with the same first backend, or that backend alone if the former would try a backend this request
        may not use (outside its rule's set, left out by the `cost` policy, or unable to serve the request).
        `candidates`: the backends the request may use (its rule's, less those that can't serve it)."""
        attempts = self.attempts.get(candidates)
        if attempts is None:  # what remained of a set of many kinds (`config.chains.remaining_sets`)
            return self.chains[(order[0],)]
        cut = tuple(order[:attempts])
        exact = self.chains.get(cut)
        if exact is not None:
            return exact
        similar = self.by_first[(candidates, cut[0])]
        if set(similar.order) <= set(order):
            return similar
        return self.chains.get((cut[0],), similar)


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    limiter: Limiter | None
    """None when no limit is configured: requests skip limiting entirely."""
    keys: dict[str, KeyInfo]
    routes: dict[str, RouteInfo]
    """Public model name or alias -> route."""
    wildcards: tuple[RouteInfo, ...]
    """`prefix/*` routes, longest prefix first."""
    health: BackendHealth
    telemetry: Telemetry
    prices: dict[tuple[str, str], Price]
    """(backend, backend model) -> price, for the cost reported in telemetry."""
    backends: dict[str, BackendInfo]
    public_models: tuple[str, ...]
    max_body_bytes: int
    default_max_tokens: int
    user_header: str
    chars_per_token: float
    access_logged: bool = False
    metered_aside: frozenset[str] = frozenset()
    """Backends whose direct routes have a twin where the stream meter settles a stream from a copy
    (`providers.metered_aside`)."""
    """Envoy's access logs are rendered: the stages hand them backend, model, tokens and cost as metadata."""
    responses: ResponseStore | None = None
    """Where Responses API answers created with `store: true` are kept; None when storing is off."""
    issuers: tuple[IssuerInfo, ...] = ()
    """JWT issuers whose verified tokens identify requests (besides virtual keys)."""
    mcp: McpService | None = None
    """The MCP endpoint's catalog, sessions and upstreams, when `mcp:` is configured."""
    prompts: PromptRegistry = field(default_factory=PromptRegistry)
    """Prompt templates: the config's and the stored ones (read at every build), and who may use which."""
    answers: AnswerCache | None = None
    """The exact response cache, when any route has `cache:`."""
    semantic: SemanticIndex | None = None
    """The semantic cache's index and embeddings client, when any route has `cache.semantic`."""


def compile_runtime(config: Config, *, load_secrets: bool = True, announce: bool = False,
                    health: BackendHealth | None = None, previous: Runtime | None = None,
                    telemetry: Telemetry | None = None) -> Runtime:
    """`previous`: the runtime a reload replaces. Its backend health, limiter store and unchanged credentials (with
    their refresh threads) carry over; what it had and this one drops is listed by `retired_by`."""
    if load_secrets:
        check_environment(config)
    backends: dict[str, BackendInfo] = {}
    styles = reasoning_styles(config)
    reasoning: dict[str, dict[str, str]] = {}
    for (backend_id, model), style in styles.items():
        reasoning.setdefault(backend_id, {})[model] = style
    for index, backend in enumerate(config.backends):
        credential: Credential = StaticCredential()
        digest = ""
        if load_secrets:
            where = config.origin.at(("backends", index, "api_key"))
            secret = read_secret(backend.api_key, where) if backend.api_key else None
            digest = hashlib.sha256(secret.encode()).hexdigest() if secret else ""
            old = previous.backends.get(backend.id) if previous is not None else None
            if old is not None and old.settings == backend and old.secret_digest == digest:
                credential = old.credential
            else:
                credential = credential_for(backend, secret)
        backends[backend.id] = BackendInfo(
            id=backend.id, schema=backend.schema_, translator=providers.for_schema(backend.schema_),
            authority=backend.authority, origin=f"{backend.scheme}://{backend.authority}", base_path=backend.base_path,
            credential=credential, settings=backend, secret_digest=digest, reasoning=reasoning.get(backend.id))
    if previous is not None:
        health = previous.health
        telemetry = telemetry or previous.telemetry

    routes: dict[str, RouteInfo] = {}
    wildcards: list[RouteInfo] = []
    for route in config.routes:
        info = _route_info(config, route, backends, styles)
        if info.wildcard:
            wildcards.append(info)
            continue
        for name in (route.model, *route.aliases):
            routes[name] = info
    wildcards.sort(key=lambda info: len(info.name), reverse=True)

    keys = {
        key.hash: KeyInfo(
            id=key.id, team=key.team,
            models=None if "*" in key.models else frozenset(key.models),
            expires_at=_utc(key.expires_at).timestamp() if key.expires_at else None,
            user=key.user, asserts_users=key.asserts_users,
            mcp_servers=tuple(key.mcp_servers), mcp_tools=tuple(key.mcp_tools))
        for key in config.virtual_keys
    }
    if health is None:
        health = BackendHealth(config.routing)
        redis = config.limits.redis
        if load_secrets and redis is not None and config.routing.share_cooldowns:
            where = config.origin.at(("limits", "redis", "password"))
            password = read_secret(redis.password, where) if redis.password else None
            health.cooldowns.share_through(shared_cooldowns(redis, password, health.cooldowns))
    earlier = (previous.config, previous.limiter) if previous is not None and previous.limiter is not None else None
    limiter = build_limiter(config, announce=announce, previous=earlier) if load_secrets else None
    return Runtime(config=config, limiter=limiter, responses=_response_store(config, previous, load_secrets),
                   keys=keys, routes=routes, wildcards=tuple(wildcards), backends=backends,
                   health=health, telemetry=telemetry or Telemetry(),
                   access_logged=config.telemetry.access_log is not None,
                   metered_aside=frozenset(b.id for b in config.backends if meters_aside(config, b)),
                   prices={(p.backend, p.model): Price(p.input, p.output, p.input if p.cached_input is None
                                                       else p.cached_input) for p in config.prices},
                   public_models=tuple(r.model for r in config.routes if not r.is_wildcard),
                   max_body_bytes=config.requests.max_body_bytes,
                   default_max_tokens=config.requests.default_max_tokens,
                   user_header=config.limits.user_header,
                   chars_per_token=config.limits.chars_per_token,
                   prompts=load_registry(config, previous.prompts if previous is not None else None, load_secrets),
                   issuers=compile_issuers(config), mcp=_mcp_service(config, previous, load_secrets),
                   answers=_answer_cache(config, previous, load_secrets),
                   semantic=_semantic_index(config, previous, load_secrets))


def _response_store(config: Config, previous: Runtime | None, load_secrets: bool) -> ResponseStore | None:
    """The Responses store; a reload keeps the one it had while its settings did not change (the in-memory one's
    responses with it)."""
    if not load_secrets:
        return None
    if (previous is not None and previous.config.responses == config.responses
            and previous.config.limits.redis == config.limits.redis):
        return previous.responses
    redis = config.limits.redis
    password = None
    if redis is not None and redis.password is not None:
        password = read_secret(redis.password, config.origin.at(("limits", "redis", "password")))
    return build_response_store(config.responses, redis, password)


def _answer_cache(config: Config, previous: Runtime | None, load_secrets: bool) -> AnswerCache | None:
    """The response cache; a reload keeps the one it had while Redis did not change (the in-memory one's answers
    with it)."""
    if not load_secrets or not any(route.cache is not None for route in config.routes):
        return None
    redis = config.limits.redis
    if previous is not None and previous.answers is not None and previous.config.limits.redis == redis:
        return previous.answers
    return build_answer_cache(redis, _redis_password(config))


def _semantic_index(config: Config, previous: Runtime | None, load_secrets: bool) -> SemanticIndex | None:
    """The semantic cache; a reload keeps the one it had while what it was built from did not change, and its
    entries while Redis did not."""
    urls = semantic_urls(config)
    if not load_secrets or not urls:
        return None
    # numpy, usearch and the embeddings client load with the first semantic route, not in every gateway process
    from ..cache.semantic import build_semantic_index
    from ..cache.vector_index import VectorIndex
    from ..cache.vector_journal import build_journal

    redis = config.limits.redis
    earlier = previous.semantic if previous is not None else None
    if earlier is None or previous is None or previous.config.limits.redis != redis:
        index = VectorIndex()
    elif (previous.config.listener, previous.config.ext_proc.message_timeout, semantic_urls(previous.config)) == (
            config.listener, config.ext_proc.message_timeout, urls):
        return earlier
    else:
        index = earlier.index
    journal = build_journal(redis, _redis_password(config)) if redis is not None else None
    return build_semantic_index(config, urls, index, journal)


def semantic_urls(config: Config) -> frozenset[str | None]:
    """The `embeddings_url` of every semantic route (None: the listener)."""
    return frozenset(route.cache.semantic.embeddings_url for route in config.routes
                     if route.cache is not None and route.cache.semantic is not None)


def _redis_password(config: Config) -> str | None:
    redis = config.limits.redis
    if redis is None or redis.password is None:
        return None
    return read_secret(redis.password, config.origin.at(("limits", "redis", "password")))


def _mcp_service(config: Config, previous: Runtime | None, load_secrets: bool) -> McpService | None:
    """The MCP side; a reload keeps the running one (its catalog and sessions) while `mcp:`, the teams' lists and
    Redis did not change."""
    if config.mcp is None or not load_secrets:
        return None
    if (previous is not None and previous.mcp is not None and previous.config.mcp == config.mcp
            and previous.config.teams == config.teams and previous.config.limits.redis == config.limits.redis):
        return previous.mcp
    redis = config.limits.redis
    password = None
    if redis is not None and redis.password is not None:
        password = read_secret(redis.password, config.origin.at(("limits", "redis", "password")))
    credentials = read_credentials(config.mcp, read_secret, lambda index: config.origin.at(("mcp", "servers", index)))
    earlier = previous.mcp if previous is not None else None
    if (earlier is not None and earlier.settings.session_ttl == config.mcp.session_ttl
            and previous is not None and previous.config.limits.redis == redis):
        sessions = earlier.hand_over_sessions()  # clients keep their sessions across the reload
    else:
        sessions = build_session_store(config.mcp.session_ttl, redis, password, processes=config.ext_proc.processes,
                                       key=shared_key("sessions"))
    teams = {team.id: team for team in config.teams}
    return McpService(config.mcp, sessions, credentials, shared_key("cursors"), teams,
                      wait_budget=config.ext_proc.message_timeout / 2)


def retired_by(old: Runtime, new: Runtime) -> list[object]:
    """What `old` holds and `new` no longer uses: credentials (refresh threads), the limiter's store and the
    Responses store."""
    kept = {id(b.credential) for b in new.backends.values()}
    retired: list[object] = [b.credential for b in old.backends.values() if id(b.credential) not in kept]
    if old.limiter is not None and (new.limiter is None or new.limiter.store is not old.limiter.store):
        retired.append(old.limiter.store)
    if old.responses is not None and new.responses is not old.responses:
        retired.append(old.responses)
    if old.mcp is not None and new.mcp is not old.mcp:
        retired.append(old.mcp)
    if old.answers is not None and new.answers is not old.answers:
        retired.append(old.answers)
    if old.semantic is not None and new.semantic is not old.semantic:
        retired.append(old.semantic)
    return retired


def find_route(runtime: Runtime, model: str) -> RouteInfo | None:
    route = runtime.routes.get(model)
    if route is not None or not runtime.wildcards:
        return route
    for candidate in runtime.wildcards:
        if model.startswith(candidate.name[:-1]) and len(model) > len(candidate.name) - 1:
            return candidate
    return None


class BackendHealth:
    """What this process knows of its backends beyond Envoy's own outlier detection; kept across config reloads."""

    def __init__(self, settings: RoutingSettings) -> None:
        self.cooldowns = Cooldowns(settings.cooldown_default, settings.cooldown_max)
        self.latency = LatencyAverages(settings.latency_smoothing)
        self.rng = random.Random()


def _route_info(config: Config, route: ModelRoute, backends: dict[str, BackendInfo],
                styles: dict[tuple[str, str], str]) -> RouteInfo:
    ids = tuple(entry.backend for entry in route.backends)
    models = {entry.backend: entry.model for entry in route.backends}
    kind_of = translation_kinds(config, route, styles)
    choices: dict[tuple[str, ...], ChainChoice] = {}
    by_first: dict[tuple[tuple[str, ...], str], ChainChoice] = {}
    chain_sets = route_chain_sets(route, kind_of)
    for candidates, table in chain_sets.items():
        for order, chain in table.items():
            choice = choices.setdefault(
                order, ChainChoice(order, chain.name, chain.direct, _first_byte_ms(order, backends)))
            by_first.setdefault((candidates, order[0]), choice)
    attempts = {candidates: min(len(candidates), route.max_attempts or len(candidates)) for candidates in chain_sets}
    prices = {p.backend: (p.input / 1e6, p.output / 1e6) for p in config.prices
              if p.backend in models and p.model == models[p.backend]}
    kinds: dict[object, list[str]] = {}
    for backend_id in ids:
        kinds.setdefault(kind_of[backend_id], []).append(backend_id)
    rules = tuple(CompiledRule.of(rule, route.policy) for rule in route.rules)
    return RouteInfo(
        name=route.model, backends=ids, backend_models=models, policy=route.policy,
        weights={entry.backend: entry.weight for entry in route.backends},
        windows={entry.backend: entry.max_input_tokens for entry in route.backends},
        prices=prices, sticky_header=route.sticky_header, exploration=route.exploration,
        rules=rules, chains=choices, by_first=by_first, attempts=attempts,
        translations=tuple((backends[same[0]], tuple(same)) for same in kinds.values()),
        embeddings=all(backends[b].translator.serves_embeddings for b in ids),
        wildcard=route.is_wildcard, log_content=route.log_content,
        guardrails=tuple(Guardrail.of(g) for g in route.guardrails), max_prompt_chars=route.max_prompt_chars,
        max_messages=route.max_messages, strict=route.fields == "strict", cache=route.cache,
        ranks_by_latency=len(ids) > 1 and "latency" in {route.policy, *(rule.policy for rule in rules)})


def _first_byte_ms(order: tuple[str, ...], backends: dict[str, BackendInfo]) -> str | None:
    limits = [limit for b in order if (limit := backends[b].settings.first_byte_timeout) is not None]
    return str(max(1, round(1000 * max(limits)))) if limits else None


def _utc(moment: datetime) -> datetime:
    """An expiry without a zone means UTC, whatever the server's local zone is."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
