"""The semantic cache's vector index, in this process's memory: prompt vectors -> exact cache keys, one space per
namespace (`semantic_keys`), each entry with the time it was added.

Decisions worth knowing before changing this file:
- HNSW from `usearch` (an embedded library: Debian's Redis 7.0 has no vector search). Chosen over `hnswlib` because
  usearch ships wheels for this platform (hnswlib is a source distribution needing a C++ toolchain), removes entries
  and reuses their slots (an index bounded by eviction doesn't grow), and is maintained. Scale: an entry costs its
  vector (4 bytes a dimension: 6 KiB at 1,536) plus ~0.3 KiB of graph; searches stay around a millisecond up to
  millions of entries, but everything lives in RAM, per process, so `max_entries` bounds it.
- A space below `HNSW_FROM` entries is searched exactly (a matrix product over its vectors): at that size it is as
  fast, exact, and an HNSW index costs ~48 KiB even holding one vector (there may be a namespace per team and per
  tool set). Past it, the space builds its HNSW index once and keeps it.
- Bounds: each group (a route) keeps at most `max_entries` entries over all its spaces, the oldest going first;
  an entry older than the route's TTL is never returned and is purged when found or when it is the group's oldest.
  A space left empty is dropped. Nothing here is keyed by client text without one of these bounds.
- An exact key is in a space once: adding it again while it is fresh does nothing (a process reading its own entry
  back from the Redis journal, a repeated miss); once expired it is replaced.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from usearch.index import Index

Vector = npt.NDArray[np.float32]

HNSW_FROM = 256
"""Entries from which a space is searched through an HNSW index rather than exactly."""
NEIGHBOURS = 8
"""How many nearest entries a search considers (the cache tries them best first)."""


@dataclass(slots=True)
class _Space:
    dimensions: int
    keys: dict[str, int] = field(default_factory=dict)
    """Exact key -> label."""
    entries: dict[int, tuple[str, float]] = field(default_factory=dict)
    """Label -> (exact key, time added)."""
    vectors: dict[int, Vector] = field(default_factory=dict)
    """Label -> unit vector, while the space is small (no `hnsw`)."""
    hnsw: Index | None = None
    cursor: str = ""
    """The last Redis journal entry this process read for the space (`vector_journal`)."""

    def add(self, label: int, key: str, vector: Vector, at: float) -> None:
        self.keys[key] = label
        self.entries[label] = (key, at)
        if self.hnsw is not None:
            self.hnsw.add(label, vector)
            return
        self.vectors[label] = vector
        if len(self.vectors) >= HNSW_FROM:
            self.hnsw = _hnsw(self.dimensions)
            self.hnsw.add(np.fromiter(self.vectors, dtype=np.uint64, count=len(self.vectors)),
                          np.stack(list(self.vectors.values())))
            self.vectors = {}

    def remove(self, label: int) -> None:
        key, _ = self.entries.pop(label)
        del self.keys[key]
        if self.hnsw is not None:
            self.hnsw.remove(label)
        else:
            del self.vectors[label]

    def nearest(self, vector: Vector) -> list[tuple[int, float]]:
        """(label, cosine similarity) of the nearest entries, best first."""
        if self.hnsw is not None:
            found = self.hnsw.search(vector, NEIGHBOURS)
            return [(int(label), 1.0 - float(distance)) for label, distance in zip(found.keys, found.distances,
                                                                                   strict=True)]
        if not self.vectors:
            return []
        labels = list(self.vectors)
        similarities = np.stack(list(self.vectors.values())) @ vector
        best = np.argsort(-similarities)[:NEIGHBOURS]
        return [(labels[i], float(similarities[i])) for i in best]


class VectorIndex:
    def __init__(self) -> None:
        self._spaces: dict[str, _Space] = {}
        self._groups: dict[str, deque[tuple[str, int]]] = {}
        """Group -> its entries (namespace, label) in the order added; some may be gone already."""
        self._sizes: dict[str, int] = {}
        self._labels = itertools.count(1)

    def __len__(self) -> int:
        return sum(len(space.entries) for space in self._spaces.values())

    def add(self, group: str, namespace: str, key: str, vector: Vector, at: float, *, ttl: float,
            max_entries: int) -> None:
        """Remember that `vector` (any length; it is normalised here) was asked under `key` at `at`."""
        unit = _unit(vector)
        oldest = time.time() - ttl
        if at <= oldest:
            return
        space = self._spaces.get(namespace)
        if space is not None and space.dimensions != unit.shape[0]:  # the embeddings model changed its output
            self._drop(namespace)
            space = None
        label = space.keys.get(key) if space is not None else None
        if space is not None and label is not None:
            if space.entries[label][1] > oldest:
                return
            self._remove(group, namespace, label)
        space = self._spaces.get(namespace)
        if space is None:
            space = self._spaces[namespace] = _Space(unit.shape[0])
        label = next(self._labels)
        space.add(label, key, unit, at)
        self._groups.setdefault(group, deque()).append((namespace, label))
        self._sizes[group] = self._sizes.get(group, 0) + 1
        self._trim(group, ttl, max_entries)

    def search(self, group: str, namespace: str, vector: Vector, *, ttl: float,
               threshold: float) -> list[tuple[str, float]]:
        """(exact key, similarity) of the fresh entries at least `threshold` similar, best first."""
        space = self._spaces.get(namespace)
        unit = _unit(vector)
        if space is None or space.dimensions != unit.shape[0]:
            return []
        oldest = time.time() - ttl
        found: list[tuple[str, float]] = []
        for label, similarity in space.nearest(unit):
            entry = space.entries.get(label)
            if entry is None:
                continue
            if entry[1] <= oldest:
                self._remove(group, namespace, label)
            elif similarity >= threshold:
                found.append((entry[0], similarity))
        return found

    def cursor(self, namespace: str) -> str:
        space = self._spaces.get(namespace)
        return space.cursor if space is not None else ""

    def set_cursor(self, namespace: str, cursor: str) -> None:
        space = self._spaces.get(namespace)
        if space is not None:
            space.cursor = cursor

    def _trim(self, group: str, ttl: float, max_entries: int) -> None:
        """Drop the group's oldest entries while there are too many, or while the oldest has expired."""
        entries = self._groups[group]
        oldest = time.time() - ttl
        while entries:
            namespace, label = entries[0]
            space = self._spaces.get(namespace)
            entry = space.entries.get(label) if space is not None else None
            if entry is not None and self._sizes[group] <= max_entries and entry[1] > oldest:
                return
            entries.popleft()
            if entry is not None:
                self._remove(group, namespace, label)

    def _remove(self, group: str, namespace: str, label: int) -> None:
        """Forget one entry (its queue item, if still queued, is skipped when it reaches the front); a space left
        empty goes, its journal cursor with it (a later read starts again from the TTL's start)."""
        space = self._spaces[namespace]
        space.remove(label)
        self._sizes[group] -= 1
        if not space.entries:
            del self._spaces[namespace]

    def _drop(self, namespace: str) -> None:
        space = self._spaces.pop(namespace)
        for group, entries in self._groups.items():
            self._sizes[group] -= sum(1 for name, label in entries if name == namespace and label in space.entries)


def _hnsw(dimensions: int) -> Index:
    """An HNSW index; usearch is loaded the first time one is needed (most gateways never build one)."""
    import pyarrow  # noqa: F401  before usearch: its `numkong` loaded first makes pyarrow's dataset reads segfault
    from usearch.index import Index

    return Index(ndim=dimensions, metric="cos", dtype="f32")


def _unit(vector: Vector) -> Vector:
    flat = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(flat))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("an embedding must be finite and not all zeros")
    return flat / norm
