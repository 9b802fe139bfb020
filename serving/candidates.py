"""Candidate generation: merge the sources, de-duplicate, filter. Pure functions, no I/O.

Each source proposes items with a score of its own and a reason
(``seq``, ``covisit:<item>``, ``trending``, ``content``). The merge keeps
each item once, under the reason of the first source that proposed it (the
sources are given in priority order), and drops items the user must not be
shown again: those seen or bought in the session (the trigger item among
them) and those removed from the catalog.

>>> merge([Source("seq", ["a", "b"], [2.0, 1.0]), Source("trending", ["b", "c", "x"], [5.0, 4.0, 3.0])],
...       exclude={"x"}, limit=10)
Candidates(items=['a', 'b', 'c'], reasons=['seq', 'seq', 'trending'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

SEQ = "seq"
TRENDING = "trending"
CONTENT = "content"
COVISIT = "covisit"


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
        for r in self.reasons:
            k = r.split(":", 1)[0]
            out[k] = out.get(k, 0) + 1
        return out


def merge(sources: Iterable[Source], exclude: set[str] | frozenset[str] = frozenset(),
          limit: int = 1000) -> Candidates:
    """Union of ``sources`` in priority order, each item once, without ``exclude``, at most ``limit``."""
    out = Candidates()
    seen = set(exclude)
    for src in sources:
        for i, item in enumerate(src.items):
            if item in seen:
                continue
            seen.add(item)
            out.items.append(item)
            out.reasons.append(src.reason_of(i))
            if len(out.items) >= limit:
                return out
    return out


def covisitation(neighbours: Sequence[tuple[str, Sequence[tuple[str, float]]]], limit: int) -> Source:
    """Co-visited items of several recent items, summed by item, best first.

    ``neighbours`` is ``[(recent item, [(next item, weight), ...]), ...]`` with
    weights already on a common time scale; the reason names the recent item
    that contributed most.
    """
    total: dict[str, float] = {}
    best: dict[str, tuple[float, str]] = {}
    for src_item, pairs in neighbours:
        for item, w in pairs:
            total[item] = total.get(item, 0.0) + w
            if item not in best or w > best[item][0]:
                best[item] = (w, src_item)
    ranked = sorted(total, key=lambda i: (-total[i], i))[:limit]
    return Source(COVISIT, ranked, [total[i] for i in ranked], [f"{COVISIT}:{best[i][1]}" for i in ranked])


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
