"""The templates one runtime serves: the config's (`prompts:`, read-only) and the stored ones, merged once per
(re)load into plain tables, plus each key's and team's allow-list. Resolution reads only these tables.

A stored name that the config also defines is ignored here (the config's wins, as with virtual keys; the admin API
refuses to create one). References: `name` resolves the `production` label when set, else `latest` (the highest
version); `name@3` a version; `name@staging` a label (`latest` included).

Errors: a name the registry does not know is a 404 `prompt_not_found` (like an unknown model); a version or label it
does not have is a 400 `prompt_version_not_found`; a template the key's (or its team's) `prompts` globs exclude is a
403 `prompt_not_allowed`, checked first so a refused key learns nothing of what exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from ..config.models import Config, PromptTemplate
from ..config.prompt_syntax import DEFAULT_LABEL, LABEL, LATEST, TEMPLATE_NAME
from ..errors import BadRequest, Forbidden, NotFound
from .store import PromptStoreError, StoredPrompts, read_stored_prompts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PromptEntry:
    """One name: its versions and labels."""

    name: str
    versions: dict[int, PromptTemplate]
    labels: dict[str, int]
    from_config: bool

    @property
    def latest(self) -> int:
        return max(self.versions)

    def default_version(self) -> int:
        return self.labels.get(DEFAULT_LABEL, self.latest)


@dataclass(frozen=True, slots=True)
class PromptRegistry:
    entries: dict[str, PromptEntry] = field(default_factory=dict)
    key_globs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Virtual key id -> its `prompts` globs, for keys that do not allow every template."""
    team_globs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stored: StoredPrompts | None = None
    """What was read from the store, kept so a reload that can't read it serves the same templates."""

    def allowed(self, key_id: str, team: str | None, name: str) -> bool:
        for globs in (self.key_globs.get(key_id), self.team_globs.get(team) if team else None):
            if globs is not None and not any(fnmatchcase(name, glob) for glob in globs):
                return False
        return True

    def resolve(self, key_id: str, team: str | None, name: str, ref: str | None, param: str,
                ref_param: str | None = None) -> PromptTemplate:
        """The version `name[@ref]` names, for this key. `param` is where the request named the template,
        `ref_param` its version or label (`param` when unset)."""
        if not TEMPLATE_NAME.fullmatch(name):
            raise BadRequest(f"{name!r} is not a prompt template name (lowercase letters, digits, . _ -).",
                             param=param, code="invalid_prompt")
        if not self.allowed(key_id, team, name):
            raise Forbidden(f"This key may not use the prompt template {name!r}.", param=param,
                            code="prompt_not_allowed")
        return self.lookup(name, ref, param, ref_param)

    def lookup(self, name: str, ref: str | None, param: str = "prompt", ref_param: str | None = None
               ) -> PromptTemplate:
        """The version `name[@ref]` names, whoever asks."""
        entry = self.entries.get(name)
        if entry is None:
            raise NotFound(f"The prompt template {name!r} does not exist.", param=param, code="prompt_not_found")
        return entry.versions[_version(entry, ref, ref_param or param)]


def _version(entry: PromptEntry, ref: str | None, param: str) -> int:
    if ref is None or ref == "":
        return entry.default_version()
    if ref.isdigit():
        version = int(ref)
        if version not in entry.versions:
            raise BadRequest(f"The prompt template {entry.name!r} has no version {version} (latest: {entry.latest}).",
                             param=param, code="prompt_version_not_found")
        return version
    if ref == LATEST:
        return entry.latest
    if not LABEL.fullmatch(ref) or ref not in entry.labels:
        labels = ", ".join(sorted(entry.labels)) or "none"
        raise BadRequest(f"The prompt template {entry.name!r} has no label {ref[:64]!r} (labels: {labels}; or give "
                         f"a version number, or {LATEST!r}).", param=param, code="prompt_version_not_found")
    return entry.labels[ref]


def build_registry(config: Config, stored: StoredPrompts | None) -> PromptRegistry:
    entries = {name: PromptEntry(name, versions, labels, True) for name, (versions, labels) in
               _group(config.prompts, {}).items()}
    if stored is not None:
        shadowed = sorted({t.name for t in stored.templates if t.name in entries})
        if shadowed:
            log.warning("stored prompt templates %s are also in the config: the config's are served",
                        ", ".join(shadowed))
        own = [t for t in stored.templates if t.name not in entries]
        for name, (versions, labels) in _group(own, stored.labels).items():
            entries[name] = PromptEntry(name, versions, labels, False)
    return PromptRegistry(
        entries=entries,
        key_globs={k.id: tuple(k.prompts) for k in config.virtual_keys if "*" not in k.prompts},
        team_globs={t.id: tuple(t.prompts) for t in config.teams if "*" not in t.prompts},
        stored=stored)


def _group(templates: list[PromptTemplate], stored_labels: dict[str, dict[str, int]]
           ) -> dict[str, tuple[dict[int, PromptTemplate], dict[str, int]]]:
    """Name -> (version -> template, label -> version); a label must point at a version that exists."""
    grouped: dict[str, tuple[dict[int, PromptTemplate], dict[str, int]]] = {}
    for template in templates:
        versions, labels = grouped.setdefault(template.name, ({}, {}))
        versions[template.version or 1] = template
        labels.update((label, template.version or 1) for label in template.labels)
    for name, (versions, labels) in grouped.items():
        labels.update((label, version) for label, version in stored_labels.get(name, {}).items()
                      if version in versions)
    return grouped


def load_registry(config: Config, previous: PromptRegistry | None, read_store: bool) -> PromptRegistry:
    """The registry of a runtime being built: the config's templates and, with `read_store`, the stored ones. A store
    that can't be read now leaves the templates read before (an error line says so): a reload never drops them."""
    stored = None
    if read_store:
        try:
            stored = read_stored_prompts(config)
        except PromptStoreError as exc:
            stored = previous.stored if previous is not None else None
            log.error("%s; serving the stored prompt templates read before (%d)", exc,
                      len(stored.templates) if stored is not None else 0)
    return build_registry(config, stored)
