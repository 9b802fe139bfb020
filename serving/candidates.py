"""Candidate generation: merge the sources, de-duplicate, filter. Pure functions, no I/O.

Each source proposes items with a score of its own and a reason
(``seq``, ``covisit:<item>``, ``trending``, ``content``, ``graph``). The merge keeps
each item once, under the reason of the first source that proposed it (the
sources are given in priority order), and drops items the user must not be
shown again: those of the session (the trigger item among them), those the
user ever bought, and those removed from the catalog.

>>> merge([Source("seq", ["a", "b"], [2.0, 1.0]), Source("trending", ["b", "c", "x"], [5.0, 4.0, 3.0])],
...       exclude={"x"}, limit=10)
Candidates(items=['a', 'b', 'c'], reasons=['seq', 'seq', 'trending'])
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterable, Sequence

import numpy as np

SEQ = "seq"
TRENDING = "trending"
CONTENT = "content"
COVISIT = "covisit"
GRAPH = "graph"


@dataclass
class Source:
    """Items proposed by one source, best first, with one reason for all or one per item."""

    reason: str
    items: Sequence[str]
    scores: Sequence[float] = ()
    reasons: Sequence[str] | None = None

    def reason_of(self, i: int) -> str:
        return self.reasons[i] if self.reasons is not None else self.reason


@dataclass
class Candidates:
    """The merged candidates of one request: item ids and the reason each was proposed."""

    items: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        """Candidates per source (``covisit:x`` counted as ``covisit``), for metrics."""
        out: dict[str, int] = {}
        for reason, n in Counter(self.reasons).items():  # counted in C; then a few distinct reasons
            source = reason.split(":", 1)[0]
            out[source] = out.get(source, 0) + n
        return out


def merge(sources: Iterable[Source], exclude: set[str] | frozenset[str] = frozenset(),
          limit: int = 1000) -> Candidates:
    """Union of ``sources`` in priority order, each item once, without ``exclude``, at most ``limit``."""
    items: list[str] = []
    reasons: list[str] = []
    for src in sources:
        items += src.items
        reasons += src.reasons if src.reasons is not None else [src.reason] * len(src.items)
    # dict operations run in C: order of first occurrence, and the reason of the first occurrence
    # (a dict built from the reversed pairs keeps the value written last, i.e. the first one).
    order = dict.fromkeys(items)
    for item in exclude:
        order.pop(item, None)
    kept = list(islice(order, limit))
    reason_of = dict(zip(reversed(items), reversed(reasons)))
    return Candidates(kept, list(map(reason_of.__getitem__, kept)))


class CovisTable:
    """The co-visitation lists of a batch's recent items, with item ids in one batch vocabulary,
    so each request's lists are summed with a few numpy calls instead of Python per pair."""

    def __init__(self, lists: dict[str, Sequence[tuple[str, float]]]):
        self.names: list[str] = []
        vocab: dict[str, int] = {}
        self.lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for src, pairs in lists.items():
            if not pairs:
                continue
            ids = np.fromiter((vocab.setdefault(p[0], len(vocab)) for p in pairs), dtype=np.int64,
                              count=len(pairs))
            self.lists[src] = (ids, np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(pairs)))
        self.names = list(vocab)


def covisitation(table: CovisTable, recent: Sequence[str], limit: int) -> Source:
    """Co-visited items of ``recent`` (the session's items, newest first), summed by item, best first.

    Weights are on a common time scale; the reason names the newest recent
    item that leads to the item.
    """
    lists = [(src, table.lists[src]) for src in recent if src in table.lists]
    if not lists:
        return Source(COVISIT, [], [])
    names = table.names
    if len(lists) == 1:  # the common case: one list, already sorted by Redis
        src, (ids, w) = lists[0]
        order = np.argsort(-w, kind="stable")[:limit]
        return Source(COVISIT, [names[i] for i in ids[order].tolist()], w[order].tolist(),
                      [f"{COVISIT}:{src}"] * len(order))
    ids = np.concatenate([l[1][0] for l in lists])
    weights = np.concatenate([l[1][1] for l in lists])
    origin = np.repeat(np.arange(len(lists)), [len(l[1][0]) for l in lists])
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    total = np.bincount(inverse, weights=weights)
    order = np.lexsort((first, -total))[:limit]  # by total weight, ties by first appearance
    return Source(COVISIT, [names[i] for i in uniq[order].tolist()], total[order].tolist(),
                  [f"{COVISIT}:{lists[o][0]}" for o in origin[first[order]].tolist()])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the ``k`` largest scores, best first (``scores``: [batch, n]).

    >>> top_k(np.array([[1.0, 5.0, 3.0]]), 2).tolist()
    [[1, 2]]
    """
    n = scores.shape[-1]
    k = min(k, n)
    if k <= 0:
        return np.zeros(scores.shape[:-1] + (0,), dtype=np.int64)
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k] if k < n else np.broadcast_to(
        np.arange(n), scores.shape).copy()
    order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def proposers(sources: Sequence[Source], items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """For each of ``items``, every source (by base reason) that proposed it, in the sources' order.

    >>> proposers([Source("seq", ["a", "b"]), Source("graph", ["b"])], ["b", "a", "z"])
    {'b': ('seq', 'graph'), 'a': ('seq',), 'z': ()}
    """
    sets = [(src.reason, set(src.items)) for src in sources if len(src.items)]
    return {item: tuple(dict.fromkeys(r for r, s in sets if item in s)) for item in items}


class ClickAttribution:
    """Bounded memory of recent recommendations: rec_id -> {item: sources that proposed it}.

    A click arrives later as a score request carrying the recommendation's
    ``rec_id``; `clicked` says which sources had proposed the clicked item, so
    the scorer can count, per source, the share of clicked items it proposed.
    The oldest recommendation is forgotten first once ``capacity`` is reached.

    >>> memory = ClickAttribution(capacity=1)
    >>> memory.remember("r1", {"a": ("seq", "graph")}); memory.remember("r2", {"b": ("trending",)})
    >>> memory.clicked("r1", "a"), memory.clicked("r2", "b"), memory.clicked("r2", "x")
    (None, ('trending',), None)
    """

    def __init__(self, capacity: int = 100_000):
        self.capacity = max(0, int(capacity))
        self._recs: OrderedDict[str, dict[str, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()  # the Kafka loop and the HTTP API both recommend

    def remember(self, rec_id: str, items: dict[str, tuple[str, ...]]) -> None:
        if not self.capacity:
            return
        with self._lock:
            self._recs[rec_id] = items
            while len(self._recs) > self.capacity:
                self._recs.popitem(last=False)

    def clicked(self, rec_id: str, item: str) -> tuple[str, ...] | None:
        """The sources that proposed ``item`` in recommendation ``rec_id``; None when not remembered."""
        with self._lock:
            items = self._recs.get(rec_id)
        return None if items is None else items.get(item)

    def __len__(self) -> int:
        return len(self._recs)
