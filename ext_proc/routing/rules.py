"""Route rules: a request's team, key, tags, headers or body metadata send it down a sub-chain of the route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config.models import RouteRule

TAGS_HEADER = "x-babelgate-tags"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    key_id: str
    team: str | None
    headers: Mapping[str, str]
    metadata: Mapping[str, object]

    @property
    def tags(self) -> frozenset[str]:
        raw = self.headers.get(TAGS_HEADER, "")
        return frozenset(tag.strip() for tag in raw.split(",") if tag.strip())


@dataclass(frozen=True, slots=True)
class CompiledRule:
    backends: tuple[str, ...]
    policy: str
    team: str | None
    key: str | None
    tags: frozenset[str]
    headers: tuple[tuple[str, str], ...]
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, rule: RouteRule, route_policy: str) -> CompiledRule:
        when = rule.when
        return cls(backends=tuple(rule.backends), policy=rule.policy or route_policy, team=when.team, key=when.key,
                   tags=frozenset(when.tags), headers=tuple(when.headers.items()),
                   metadata=tuple(when.metadata.items()))

    def matches(self, facts: RequestFacts) -> bool:
        if self.team is not None and facts.team != self.team:
            return False
        if self.key is not None and facts.key_id != self.key:
            return False
        if self.tags and not self.tags & facts.tags:
            return False
        if any(facts.headers.get(name) != wanted for name, wanted in self.headers):
            return False
        return all(facts.metadata.get(name) == wanted for name, wanted in self.metadata)


def first_match(rules: tuple[CompiledRule, ...], facts: RequestFacts) -> CompiledRule | None:
    for rule in rules:
        if rule.matches(facts):
            return rule
    return None
