"""Token, request and spend limits: reserve before a request runs, settle with real usage after it.

One reservation covers every limit that applies to a request (its key or the key's team, the end user, the model
route, the first backend of its chain) in ONE atomic store call: either every limit admits it or none is touched.
The reservation travels to the attempt stage (as dynamic metadata), which settles the difference with real usage;
the route stage releases it when the final answer is a failure. Windows are fixed and UTC-aligned, so a reservation
that is never settled simply leaves with its window.

With a shared store, most requests under a large limit are admitted under a lease this process took ahead
(`leases.py`): the same counts, without a store round trip per request.

Backend limits are reserved against the chain's first backend. When Envoy fails over, settlement gives that
reservation back and charges the backend that actually answered (after the fact: failover is not refused).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from dataclasses import dataclass, field

import orjson

from ..auth.sealing import Sealer
from ..config.models import METRICS, CallLimit, Config, LimitRule, McpLimits
from ..constants import JWT_ID_PREFIX
from ..errors import RateLimited, Unavailable
from .estimate import FREE, MICRO, Price, Usage, cost_micro_usd
from .leases import Lease, Leases
from .store import Admission, Counter, LimitStore, StoreUnavailable
from .windows import duration_text, seconds_until, window_bounds

log = logging.getLogger(__name__)

WINDOW_GRACE_SECONDS = 120
"""Counters outlive their window a little, so a settlement arriving just after the window closes still lands."""
_TOKEN_METRICS = ("total_tokens", "input_tokens", "output_tokens")
_UNLIMITED = 1 << 62
CALLS = "calls"
"""MCP tool calls: counted one per call, like `requests`, but in counters of their own."""


@dataclass(frozen=True, slots=True)
class Rule:
    window: str
    metric: str
    limit: int
    """In the metric's unit; micro-USD for `usd`."""
    fail_open: bool


@dataclass(frozen=True, slots=True)
class Demand:
    input_tokens: int
    output_tokens: int
    usd_micro: int

    def amount(self, metric: str) -> int:
        return _amount(metric, self.input_tokens, self.output_tokens, self.usd_micro)


@dataclass(slots=True)
class Reservation:
    entries: list[tuple[str, str, int, bool]]
    """(counter key, metric, reserved amount, is a backend-scope counter)."""
    primary_backend: str
    recorded: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    leases: tuple[Lease, ...] | None = None
    """One per entry when admitted under leases (`leases.py`), in the process that admitted it; never encoded."""

    def encode(self) -> str:
        return orjson.dumps({"e": self.entries, "p": self.primary_backend, "r": self.recorded}).decode()

    @classmethod
    def decode(cls, text: str) -> Reservation:
        data = orjson.loads(text)
        return cls([tuple(e) for e in data["e"]], data["p"], data["r"])


@dataclass(slots=True)
class LimiterStats:
    store_errors: int = 0
    fail_open_admissions: int = 0
    fail_closed_refusals: int = 0
    refusals: int = 0
    settle_errors: int = 0
    unsealed_refusals: int = 0
    store_retries: int = 0


@dataclass(frozen=True, slots=True)
class LimitTables:
    key_rules: dict[str, tuple[Rule, ...]]
    default_key_rules: tuple[Rule, ...]
    team_rules: dict[str, tuple[Rule, ...]]
    user_rules: tuple[Rule, ...]
    route_rules: dict[str, tuple[Rule, ...]]
    backend_rules: dict[str, tuple[Rule, ...]]
    prices: dict[tuple[str, str], Price]
    issuer_rules: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    """JWT issuer name -> each of its subjects' rules (identities `jwt:<issuer>:<subject>`), where it has its own."""
    calls: CallTables = field(default_factory=lambda: CallTables({}, (), (), ()))

    @property
    def empty(self) -> bool:
        return not (self.key_rules or self.default_key_rules or self.team_rules or self.user_rules
                    or self.route_rules or self.backend_rules or any(self.issuer_rules.values())
                    or not self.calls.empty)

    def key_scope_rules(self, key_id: str) -> tuple[Rule, ...]:
        """A key's own rules, a token subject's issuer's, or else `limits.per_key`."""
        rules = self.key_rules.get(key_id)
        if rules is None and key_id.startswith(JWT_ID_PREFIX) and self.issuer_rules:
            rules = self.issuer_rules.get(key_id.split(":", 2)[1])
        return self.default_key_rules if rules is None else rules


@dataclass(frozen=True, slots=True)
class CallTables:
    """MCP tool-call limits: a key's own (else every key's), every team's, and per key and tool (first glob wins)."""

    key_rules: dict[str, tuple[Rule, ...]]
    default_key_rules: tuple[Rule, ...]
    team_rules: tuple[Rule, ...]
    tool_rules: tuple[tuple[re.Pattern[str], str, tuple[Rule, ...]], ...]
    """(compiled glob, the glob as written, rules)."""

    @property
    def empty(self) -> bool:
        return not (any(self.key_rules.values()) or self.default_key_rules or self.team_rules or self.tool_rules)


def _call_tables(config: Config, default_open: bool) -> CallTables:
    def rules(entries: list[CallLimit] | None) -> tuple[Rule, ...]:
        return tuple(Rule(entry.window, CALLS, entry.calls, default_open if entry.on_store_error is None
                          else entry.on_store_error == "fail_open") for entry in entries or ())

    limits = config.mcp.limits if config.mcp is not None else McpLimits()
    return CallTables(
        key_rules={k.id: rules(k.mcp_limits) for k in config.virtual_keys if k.mcp_limits is not None},
        default_key_rules=rules(limits.per_key),
        team_rules=rules(limits.per_team),
        tool_rules=tuple((re.compile(fnmatch.translate(entry.tool)), entry.tool, rules([entry]))
                         for entry in limits.per_tool),
    )


def compile_tables(config: Config) -> LimitTables:
    default_open = config.limits.on_store_error == "fail_open"

    def rules(entries: list[LimitRule] | None) -> tuple[Rule, ...]:
        compiled = []
        for entry in entries or ():
            fail_open = default_open if entry.on_store_error is None else entry.on_store_error == "fail_open"
            for metric in METRICS:
                value = getattr(entry, metric)
                if value is not None:
                    limit = math.floor(value * MICRO) if metric == "usd" else int(value)
                    compiled.append(Rule(entry.window, metric, limit, fail_open))
        return tuple(compiled)

    return LimitTables(
        key_rules={k.id: rules(k.limits) for k in config.virtual_keys if k.limits is not None},
        default_key_rules=rules(config.limits.per_key),
        team_rules={t.id: rules(t.limits) for t in config.teams if t.limits},
        user_rules=rules(config.limits.per_user),
        route_rules={r.model: rules(r.limits) for r in config.routes if r.limits},
        backend_rules={b.id: rules(b.limits) for b in config.backends if b.limits},
        prices={(p.backend, p.model): Price(p.input, p.output, p.input if p.cached_input is None else p.cached_input)
                for p in config.prices},
        issuer_rules={i.name: rules(i.limits) for i in config.jwt.issuers if i.limits is not None},
        calls=_call_tables(config, default_open),
    )


@dataclass
class Limiter:
    store: LimitStore
    tables: LimitTables
    prefix: str = "bg:"
    stats: LimiterStats = field(default_factory=LimiterStats)
    sealer: Sealer = field(default_factory=Sealer.from_environment)
    leases: Leases | None = None
    """Admission in this process under shares taken ahead from a shared store (`leases.py`); None: every request
    asks the store."""
    _in_outage: bool = False

    def seal(self, reservation: Reservation) -> str:
        """The reservation as the route stage hands it on: sealed, so only this deployment's processes can make
        the attempt stage adjust counters."""
        return self.sealer.seal(reservation.encode())

    def unseal(self, sealed: str) -> Reservation | None:
        text = self.sealer.open(sealed)
        if text is None:
            self.stats.unsealed_refusals += 1
            log.warning("a reservation with a seal this process can't verify was not settled (another deployment's "
                        "key, or forged; see BABELGATE_METADATA_KEY)")
            return None
        try:
            return Reservation.decode(text)
        except (ValueError, KeyError, TypeError):
            return None

    def price(self, backend: str, model: str) -> Price:
        return self.tables.prices.get((backend, model), FREE)

    def scopes(self, key_id: str, team: str | None, user: str | None, route: str,
               primary_backend: str) -> list[tuple[str, str, tuple[Rule, ...]]]:
        """(scope kind, scope id, rules) for every scope with limits that a request falls under."""
        tables = self.tables
        found = [("key", key_id, tables.key_scope_rules(key_id))]
        if team is not None:
            found.append(("team", team, tables.team_rules.get(team, ())))
        if user is not None:
            found.append(("user", user, tables.user_rules))
        found.append(("route", route, tables.route_rules.get(route, ())))
        found.append(("backend", primary_backend, tables.backend_rules.get(primary_backend, ())))
        return [scope for scope in found if scope[2]]

    def call_scopes(self, key_id: str, team: str | None, tool: str) -> list[tuple[str, str, tuple[Rule, ...]]]:
        """The scopes an MCP tool call counts in: the key's calls, its team's, and the key's calls of this tool."""
        calls = self.tables.calls
        found = [("mcp_key", key_id, calls.key_rules.get(key_id, calls.default_key_rules))]
        if team is not None:
            found.append(("mcp_team", team, calls.team_rules))
        for pattern, _glob, rules in calls.tool_rules:
            if pattern.match(tool):
                found.append(("mcp_tool", f"{key_id} {tool}", rules))
                break
        return [scope for scope in found if scope[2]]

    async def reserve(self, scopes: list[tuple[str, str, tuple[Rule, ...]]], demand: Demand,
                      primary_backend: str, now: float | None = None) -> Reservation | None:
        """Admit the request against every limit at once, or raise `RateLimited` naming the one that refused."""
        if not scopes:
            return None
        now = time.time() if now is None else now
        counters: list[Counter] = []
        entries: list[tuple[str, str, int, bool]] = []
        ends: list[int] = []
        fail_open = True
        for kind, scope_id, rules in scopes:
            for rule in rules:
                start, end = window_bounds(rule.window, now)
                key = self._key(kind, scope_id, rule.metric, rule.window, start)
                counters.append(Counter(key, rule.limit, math.ceil(end - now) + WINDOW_GRACE_SECONDS,
                                        _label(kind, scope_id, rule)))
                entries.append((key, rule.metric, demand.amount(rule.metric), kind == "backend"))
                ends.append(end)
                fail_open = fail_open and rule.fail_open
        amounts = [entry[2] for entry in entries]
        leases = self.leases
        if leases is not None and (held := leases.take(counters, amounts)) is not None:
            estimates = tuple(lease.used_estimate() for lease in held)
            return Reservation(entries, primary_backend, leases=held,
                               headers=_rate_headers([entry[1] for entry in entries], counters, estimates, ends, now))
        try:
            admission = await self._reserve(counters, amounts)
        except StoreUnavailable as exc:
            self._outage(exc)
            if not fail_open:
                self.stats.fail_closed_refusals += 1
                raise Unavailable("The rate limiter is unavailable and this request's limits fail closed; "
                                  "try again shortly.", code="rate_limiter_unavailable") from None
            self.stats.fail_open_admissions += 1
            return Reservation([], primary_backend, recorded=False)
        self._recovered()
        if not admission.admitted:
            self.stats.refusals += 1
            index = admission.refused_index or 0
            counter = counters[index]
            wait = seconds_until(ends[index], now)
            used = admission.used[index]
            never_fits = amounts[index] > counter.limit
            hint = (" This request alone needs more than the whole limit." if never_fits
                    else f" Retry after {wait}s.")
            metrics = [entry[1] for entry in entries]
            headers = _rate_headers(metrics, counters, admission.used, ends, now, refused=index)
            # Retrying a request that can never fit only repeats the refusal: no `retry-after` for it, and
            # `x-should-retry: false`, which the official SDKs obey before their own retry rules.
            advice = (("x-should-retry", "false"),) if never_fits else (("retry-after", str(wait)),)
            refusal = RateLimited(
                f"Rate limit reached for {counter.label}: limit {_shown(entries[index][1], counter.limit)}, "
                f"used {_shown(entries[index][1], used)}, "
                f"this request needs {_shown(entries[index][1], amounts[index])}.{hint}",
                headers=(*advice, *headers))
            refusal.scope = counter.label.partition(" ")[0]
            raise refusal
        if leases is not None:
            leases.offer(counters, amounts, admission.used)
        metrics = [entry[1] for entry in entries]
        return Reservation(entries, primary_backend,
                           headers=_rate_headers(metrics, counters, admission.used, ends, now))

    async def settle(self, reservation: Reservation, usage: Usage, serving_backend: str, serving_model: str,
                     now: float | None = None) -> None:
        """Replace the reserved amounts with what the request really used."""
        if not reservation.recorded:
            return
        cost = cost_micro_usd(usage, self.price(serving_backend, serving_model))
        moved = serving_backend != reservation.primary_backend
        keys, deltas = [], []
        held = reservation.leases
        for index, (key, metric, reserved, is_backend) in enumerate(reservation.entries):
            actual = 0 if (is_backend and moved) else _amount(metric, usage.input_tokens, usage.output_tokens, cost)
            if actual != reserved and (held is None or not held[index].settle(actual - reserved)):
                keys.append(key)
                deltas.append(actual - reserved)
        try:
            if keys:
                await self.store.adjust(keys, deltas)
            if moved:
                await self._charge_backend(serving_backend, usage, cost, time.time() if now is None else now)
        except StoreUnavailable as exc:
            self.stats.settle_errors += 1
            self._outage(exc)

    async def release(self, reservation: Reservation) -> None:
        """The request failed: give everything back."""
        if not reservation.recorded or not reservation.entries:
            return
        held = reservation.leases
        rest = [(key, -reserved) for index, (key, _, reserved, _) in enumerate(reservation.entries)
                if held is None or not held[index].settle(-reserved)]
        if not rest:
            return
        try:
            await self.store.adjust([key for key, _ in rest], [delta for _, delta in rest])
        except StoreUnavailable as exc:
            self.stats.settle_errors += 1
            self._outage(exc)

    async def close(self) -> None:
        """The process is stopping: leases give their unspent parts back."""
        if self.leases is not None:
            await self.leases.close()

    async def _charge_backend(self, backend: str, usage: Usage, cost: int, now: float) -> None:
        rules = self.tables.backend_rules.get(backend, ())
        if not rules:
            return
        counters, amounts = [], []
        for rule in rules:
            start, end = window_bounds(rule.window, now)
            key = self._key("backend", backend, rule.metric, rule.window, start)
            # Charged after the fact, so never refused: the limit is only consulted for later reservations.
            counters.append(Counter(key, _UNLIMITED, math.ceil(end - now) + WINDOW_GRACE_SECONDS, key))
            amounts.append(_amount(rule.metric, usage.input_tokens, usage.output_tokens, cost))
        await self.store.reserve(counters, amounts)

    def _key(self, kind: str, scope_id: str, metric: str, window: str, start: int) -> str:
        safe = scope_id.replace("{", "_").replace("}", "_")
        return f"{self.prefix}{{{kind}:{safe}}}:{metric}:{window}:{start}"

    async def _reserve(self, counters: list[Counter], amounts: list[int]) -> Admission:
        """One store call, and one more when it fails while the store was healthy: under CPU load a reply can miss
        its timeout now and then, and a lone miss should not refuse a `fail_closed` request. A timed-out call may
        have run, so the retry can count a reservation twice (over-counting, never over-admission). Once the store
        is known to be down, calls are not retried: every request would pay twice the timeout."""
        try:
            return await self.store.reserve(counters, amounts)
        except StoreUnavailable:
            if self._in_outage:
                raise
            self.stats.store_retries += 1
        return await self.store.reserve(counters, amounts)

    def _outage(self, exc: Exception) -> None:
        self.stats.store_errors += 1
        if not self._in_outage:
            self._in_outage = True
            log.warning("rate limiter store unavailable (%s); applying each limit's on_store_error policy until it "
                        "recovers", exc)

    def _recovered(self) -> None:
        if self._in_outage:
            self._in_outage = False
            log.warning("rate limiter store reachable again")


def _amount(metric: str, input_tokens: int, output_tokens: int, usd_micro: int) -> int:
    if metric == "requests" or metric == CALLS:
        return 1
    if metric == "input_tokens":
        return input_tokens
    if metric == "output_tokens":
        return output_tokens
    if metric == "total_tokens":
        return input_tokens + output_tokens
    return usd_micro


def _label(kind: str, scope_id: str, rule: Rule) -> str:
    return f"{kind} {scope_id!r}: {rule.metric} per {rule.window}"


def _shown(metric: str, value: int) -> str:
    return f"${value / MICRO:.6f}" if metric == "usd" else str(value)


def _rate_headers(metrics: list[str], counters: list[Counter], used: tuple[int, ...], ends: list[int], now: float,
                  refused: int | None = None) -> tuple[tuple[str, str], ...]:
    """OpenAI's x-ratelimit-* headers from the tightest token limit and the tightest request limit (or, on a
    refusal, the limit that refused when it is of that family)."""
    headers: list[tuple[str, str]] = []
    for family, family_metrics in (("tokens", _TOKEN_METRICS), ("requests", ("requests",))):
        best = None
        for index, counter in enumerate(counters):
            if metrics[index] not in family_metrics:
                continue
            remaining = max(0, counter.limit - used[index])
            if best is None or remaining < best[0] or index == refused:
                best = (remaining, counter.limit, ends[index])
                if index == refused:
                    break
        if best is not None:
            remaining, limit, end = best
            headers += [(f"x-ratelimit-limit-{family}", str(limit)),
                        (f"x-ratelimit-remaining-{family}", str(remaining)),
                        (f"x-ratelimit-reset-{family}", duration_text(seconds_until(end, now)))]
    return tuple(headers)
