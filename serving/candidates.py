"""Candidate generation: merge the sources, de-duplicate, filter. Pure functions, no I/O.

Each source proposes items with a score of its own and a reason
(``seq``, ``covisit:<item>``, ``trending``, ``content``, ``graph``). The merge keeps
each item once, under the reason of the first source that proposed it (the
sources are given in priority order), and drops items the user must not be
shown again: those of the session (the trigger item among them), those the
user ever bought, and those removed from the catalog.

The scorer merges a whole batch at once on catalog ids (`merge_batch`, items
as integers of `streamrec.serving.catalog.ItemCatalog`, reasons as codes of a
`ReasonTable`); `merge`, on item id strings, is the simple reference it is
tested against, and serves the degraded path.

>>> merge([Source("seq", ["a", "b"], [2.0, 1.0]), Source("trending", ["b", "c", "x"], [5.0, 4.0, 3.0])],
...       exclude={"x"}, limit=10)
Candidates(items=['a', 'b', 'c'], reasons=['seq', 'seq', 'trending'])
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import islice
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from streamrec.serving.catalog import ItemCatalog

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

    def chosen(self, idx: np.ndarray) -> tuple[list[str], list[str]]:
        """The items and reasons at positions ``idx``."""
        return [self.items[j] for j in idx.tolist()], [self.reasons[j] for j in idx.tolist()]

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
    """The co-visitation lists of a batch's recent items, with item ids as integers of a catalog (the
    scorer's own, or one for this table), so each request's lists are summed with a few numpy calls."""

    def __init__(self, lists: dict[str, Sequence[tuple[str, float]]], catalog: ItemCatalog | None = None):
        self.catalog = catalog if catalog is not None else ItemCatalog()
        self.lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for src, pairs in lists.items():
            if not pairs:
                continue
            ids = self.catalog.ids([p[0] for p in pairs])
            self.lists[src] = (ids, np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(pairs)))

    def summed(self, recents: Sequence[Sequence[str]], limit: int
               ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
        """For each session's recent items (newest first), the items they lead to, summed by item, best first,
        ties by first appearance, at most ``limit``; for the whole batch in one pass of numpy.

        Returns, per session, (catalog ids, summed weights, for each the position in ``via`` of the newest
        recent item leading to it), and ``via``: the recent items with a list, session after session.
        Weights are on a common time scale.
        """
        lists = [(q, src, self.lists[src]) for q, recent in enumerate(recents) for src in recent
                 if src in self.lists]
        via = [src for _, src, _ in lists]
        if not lists:
            empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
            return [empty] * len(recents), via
        lengths = [len(l[2][0]) for l in lists]
        origin = np.repeat(np.arange(len(lists)), lengths)
        owner = np.repeat(np.array([l[0] for l in lists]), lengths)
        key = owner * (max(len(self.catalog), 1)) + np.concatenate([l[2][0] for l in lists])
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        total = np.bincount(inverse, weights=np.concatenate([l[2][1] for l in lists]))
        session, ids = np.divmod(uniq, max(len(self.catalog), 1))
        order = np.lexsort((first, -total, session))  # by session, then total weight, then first appearance
        bounds = np.searchsorted(session[order], np.arange(len(recents) + 1))
        out = []
        for q in range(len(recents)):
            sel = order[bounds[q]:bounds[q + 1]][:limit]
            out.append((ids[sel], total[sel], origin[first[sel]]))
        return out, via


def covisitation(table: CovisTable, recent: Sequence[str], limit: int) -> Source:
    """Co-visited items of ``recent`` (newest first), summed by item, best first; the reason names the
    newest recent item that leads to the item."""
    ((ids, weights, origin),), via = table.summed([recent], limit)
    return Source(COVISIT, table.catalog.names_of(ids), weights.tolist(),
                  [f"{COVISIT}:{via[o]}" for o in origin.tolist()])


class ReasonTable:
    """A batch's reasons as small integers: the fixed sources first, then each ``covisit:<item>``.

    >>> reasons = ReasonTable()
    >>> reasons.code(GRAPH), reasons.code("covisit:a"), reasons.names[5], reasons.base[5]
    (3, 5, 'covisit:a', 'covisit')
    """

    def __init__(self):
        self.names: list[str] = [SEQ, TRENDING, CONTENT, GRAPH, COVISIT]
        self.base: list[str] = list(self.names)
        self._codes = {name: k for k, name in enumerate(self.names)}

    def code(self, name: str) -> int:
        k = self._codes.get(name)
        if k is None:
            k = self._codes[name] = len(self.names)
            self.names.append(name)
            self.base.append(name.split(":", 1)[0])
        return k

    def covisit_codes(self, via: Sequence[str]) -> np.ndarray:
        """The code of ``covisit:<v>`` for each of ``via``."""
        return np.array([self.code(f"{COVISIT}:{v}") for v in via], dtype=np.int64)


class IdSource(NamedTuple):
    """One source's items for one request, as catalog ids, best first; ``reasons``: a code per item where
    they differ (co-visitation), else None and ``reason`` for all; ``weights``: co-visitation's weights."""

    reason: int
    ids: np.ndarray
    reasons: np.ndarray | None = None
    weights: np.ndarray | None = None


@dataclass
class MergedBatch:
    """Every request's merged candidates, request after request: request ``i``'s are
    ``items[bounds[i]:bounds[i + 1]]``."""

    items: np.ndarray
    """Catalog ids."""
    reasons: np.ndarray
    """Reason code of each candidate (its first proposer's)."""
    covis: np.ndarray
    """Co-visitation weight of each candidate, 0 where the session's items do not lead to it."""
    bounds: np.ndarray
    proposals: list[tuple[np.ndarray, np.ndarray, list[int]]]
    """Per request, what its sources proposed in priority order, kept to say which proposed a served item:
    every proposed id, where each source's ids start, and each source's reason code."""

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def span(self, i: int) -> slice:
        return slice(int(self.bounds[i]), int(self.bounds[i + 1]))

    def sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def keep(self, mask: np.ndarray) -> "MergedBatch":
        """The candidates where ``mask`` (one flag per candidate) is true, in the same order."""
        kept = np.concatenate([[0], np.cumsum(mask)])
        return MergedBatch(self.items[mask], self.reasons[mask], self.covis[mask], kept[self.bounds],
                           self.proposals)

    def counts(self, i: int, reasons: ReasonTable) -> dict[str, int]:
        """Request ``i``'s candidates per source (``covisit:x`` counted as ``covisit``), for metrics."""
        out: dict[str, int] = {}
        codes = np.bincount(self.reasons[self.span(i)])
        for code in np.flatnonzero(codes).tolist():
            out[reasons.base[code]] = out.get(reasons.base[code], 0) + int(codes[code])
        return out

    def proposers(self, i: int, chosen: np.ndarray, reasons: ReasonTable) -> list[tuple[str, ...]]:
        """For each of ``chosen`` (catalog ids), every source (by base reason) of request ``i`` that proposed
        it, in the sources' order: one comparison matrix, not a set per source."""
        ids, starts, codes = self.proposals[i]
        if not len(ids) or not len(chosen):
            return [() for _ in range(len(chosen))]
        by_source = np.logical_or.reduceat(ids[None, :] == np.asarray(chosen)[:, None], starts, axis=1)
        names = tuple(reasons.base[c] for c in codes)
        bits = by_source.astype(np.int64) @ (1 << np.arange(len(codes), dtype=np.int64))
        return [_proposer_names(names, b) for b in bits.tolist()]


@lru_cache(maxsize=4096)
def _proposer_names(names: tuple[str, ...], bits: int) -> tuple[str, ...]:
    """The names whose bit is set in ``bits``, each once, in order (few distinct patterns: cached)."""
    return tuple(dict.fromkeys(name for k, name in enumerate(names) if bits >> k & 1))


def merge_batch(sources: Sequence[Sequence[IdSource]], exclude: Sequence[np.ndarray], limit: int,
                n_ids: int) -> MergedBatch:
    """`merge` of every request of a batch on catalog ids (below ``n_ids``): each request's sources in
    priority order, each item once under its first proposer's reason, without ``exclude[i]``, at most
    ``limit``; also each candidate's co-visitation weight.

    One pass of a few numpy calls per request, none per candidate: the first position of each id is found
    with a scratch table indexed by id. (A single sort over the whole batch's (request, id) keys does the
    same work about six times slower at 1,000 candidates.)
    """
    first = np.empty(n_ids, dtype=np.int64)  # scratch: the first position of an id in a request's sources
    weight = np.zeros(n_ids)  # scratch: co-visitation weight by id, cleared after each request
    positions = np.arange(max((sum(len(s.ids) for s in srcs) for srcs in sources), default=0))
    items, reasons, covis, proposals = [], [], [], []
    for srcs, excl in zip(sources, exclude):
        srcs = [s for s in srcs if len(s.ids)]
        ids = np.concatenate([s.ids for s in srcs]) if srcs else positions[:0]
        codes = np.concatenate([s.reasons if s.reasons is not None else np.full(len(s.ids), s.reason)
                                for s in srcs]) if srcs else positions[:0]
        keep = _first_occurrences(ids, excl, first, positions)[:limit]
        items.append(ids[keep])
        reasons.append(codes[keep])
        covis.append(_covis_weights([s for s in srcs if s.weights is not None], ids[keep], weight))
        proposals.append((ids, np.cumsum([0] + [len(s.ids) for s in srcs[:-1]]), [s.reason for s in srcs]))
    bounds = np.concatenate([[0], np.cumsum([len(k) for k in items])]).astype(np.int64)
    return MergedBatch(_flat(items, np.int64), _flat(reasons, np.int64), _flat(covis, np.float64), bounds,
                       proposals)


def _first_occurrences(ids: np.ndarray, exclude: np.ndarray, first: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Positions in ``ids`` of each id's first occurrence, excluded ids left out, in order (``first``: a
    scratch table indexed by id)."""
    pos = positions[:len(ids)]
    first[ids] = len(positions)
    np.minimum.at(first, ids, pos)  # ufunc.at: defined for repeated ids, unlike fancy assignment
    first[exclude] = -1
    return np.flatnonzero(first[ids] == pos)


def _covis_weights(covis: list[IdSource], kept: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The co-visitation weight of each of ``kept`` (``weight``: a zeroed scratch table, zeroed again)."""
    for s in covis:
        weight[s.ids] += s.weights
    out = weight[kept]
    for s in covis:
        weight[s.ids] = 0.0
    return out


def _flat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


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
