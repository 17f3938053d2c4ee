"""The semantic cache: after an exact miss on a route with `cache.semantic`, an answer cached for a similar enough
prompt (cosine similarity of embeddings at least the route's `threshold`), everything else about the request equal
(`semantic_keys`: same namespace).

Decisions worth knowing before changing this file:
- The index maps prompt vectors to EXACT cache keys; answers stay in the exact cache (`store.py`). A search's
  neighbours are tried best first, and the first whose answer is still cached is the hit. On a miss the request's
  own (vector -> exact key) is indexed at once: the answer the attempt stores later under that key makes it findable,
  and an entry whose answer never comes (an error, a cut stream) just misses until it is evicted or expires. So the
  attempt stage knows nothing of this.
- Scope as the exact cache's (`response_cache.scope_of`): never across teams or keys unless the route's scope is
  global. The namespace holds it, so another team's prompts are not even searched.
- With `limits.redis` every process shares entries through `vector_journal` (read before each search); without it
  each process has its own index (a prompt first asked of another process is a miss here).
- Failing is never the request failing: no embedding (the embeddings route down, refused, slow), Redis down, an
  index error — each is a miss, logged at warning and counted in `failures`. The whole step (embedding, catching
  up, search, reads) gets half of `ext_proc.message_timeout`, Envoy's bound on the body phase it runs in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..config.models import Config, RouteCache, SemanticCache
from ..limits.store import StoreUnavailable
from .embeddings import Embedder, EmbeddingsUnavailable, listener_embedder
from .semantic_keys import SemanticRequest
from .store import AnswerCache, CachedAnswer
from .vector_index import Vector, VectorIndex
from .vector_journal import VectorJournal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SemanticHit:
    key: str
    """The exact key the answer is cached under (another request's)."""
    answer: CachedAnswer
    similarity: float


class SemanticIndex:
    """One per runtime holding `cache.semantic` routes; a reload keeps its `index` while Redis is the same."""

    def __init__(self, index: VectorIndex, journal: VectorJournal | None, embedders: dict[str | None, Embedder],
                 budget: float) -> None:
        self.index = index
        self._journal = journal
        self._embedders = embedders
        self._budget = budget
        self.failures = 0
        """Look-ups that fell back to a miss because something failed."""

    async def look_up(self, answers: AnswerCache, settings: RouteCache, group: str, request: SemanticRequest,
                      own_key: str, headers: Mapping[str, str], *, read: bool = True) -> SemanticHit | None:
        """A cached answer to a similar prompt; None on a miss (this request's prompt is then indexed under
        `own_key`). `read=False` (the client asked to refresh): only index it."""
        assert settings.semantic is not None
        try:
            return await asyncio.wait_for(self._look_up(answers, settings, settings.semantic, group, request,
                                                        own_key, headers, read), self._budget)
        except (EmbeddingsUnavailable, StoreUnavailable, TimeoutError, ValueError) as exc:
            self.failures += 1
            log.warning("semantic cache skipped on route %r (%s: %s): served as a miss", group,
                        type(exc).__name__, exc)
        except Exception:  # a bug here must show, but never fail the request
            self.failures += 1
            log.exception("semantic cache failed on route %r: served as a miss", group)
        return None

    async def _look_up(self, answers: AnswerCache, settings: RouteCache, semantic: SemanticCache, group: str,
                       request: SemanticRequest, own_key: str, headers: Mapping[str, str],
                       read: bool) -> SemanticHit | None:
        embedder = self._embedders[semantic.embeddings_url]
        vector = await embedder.embed(semantic.embeddings_model, request.text, headers, self._budget)
        await self._catch_up(group, request.namespace, settings, semantic)
        if read:
            for key, similarity in self.index.search(group, request.namespace, vector, ttl=settings.ttl,
                                                     threshold=semantic.threshold):
                answer = await answers.get(key) if key != own_key else None
                if answer is not None:
                    return SemanticHit(key, answer, similarity)
        await self._add(group, request.namespace, own_key, vector, settings, semantic)
        return None

    async def _catch_up(self, group: str, namespace: str, settings: RouteCache, semantic: SemanticCache) -> None:
        """What other processes added to the namespace since this one last read it (Redis down: search what
        this process has)."""
        if self._journal is None:
            return
        try:
            entries, cursor = await self._journal.read(namespace, self.index.cursor(namespace),
                                                       time.time() - settings.ttl)
        except StoreUnavailable as exc:
            self.failures += 1
            log.warning("the shared semantic index could not be read (%s): searching this process's own", exc)
            return
        for entry in entries:
            self.index.add(group, namespace, entry.key, entry.vector, entry.at, ttl=settings.ttl,
                           max_entries=semantic.max_entries)
        self.index.set_cursor(namespace, cursor)

    async def _add(self, group: str, namespace: str, key: str, vector: Vector, settings: RouteCache,
                   semantic: SemanticCache) -> None:
        now = time.time()
        self.index.add(group, namespace, key, vector, now, ttl=settings.ttl, max_entries=semantic.max_entries)
        if self._journal is not None:
            await self._journal.append(namespace, vector, key, now, ttl=settings.ttl,
                                       max_entries=semantic.max_entries)

    async def close(self) -> None:
        for embedder in self._embedders.values():
            await embedder.close()
        if self._journal is not None:
            await self._journal.close()


def build_semantic_index(config: Config, urls: frozenset[str | None], index: VectorIndex,
                         journal: VectorJournal | None) -> SemanticIndex:
    """The index with an embedder for each of `urls` (the `embeddings_url` of every semantic route; None: the
    listener)."""
    embedders = {url: listener_embedder(config, url) for url in urls}
    return SemanticIndex(index, journal, embedders, config.ext_proc.message_timeout / 2)
