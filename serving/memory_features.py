"""The scorer's feature reads served from memory: `FeatureReader`'s interface over a `MemoryFeatureStore`.

With it the production `Engine` scores a history offline, with no Kafka and no
Redis: `replay_slates` applies the history's events to a
`streamrec.stream.memory_store.MemoryFeatureStore` in time order, and right
after each chosen event asks the engine for the slate of the score request
the worker would have emitted for it, with the features as of that event.
Contexts are built by the Redis reader's own rules (`request_context`,
`stats_row`), so the two differ only in where the state comes from; an
integration test compares them on one history (tests/integration/test_served_replay.py).

Differences from the Redis reader, both on purpose: nothing is cached (the
Redis reader reuses item statistics and co-visitation lists read less than
``stats_ttl_s`` ago, wall-clock time a replay does not have), and every item
of the catalog has its category from the start (as when the catalog was
published before the events).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from streamrec.serving.features import (POSITIVE, SESSION_READ, STAT_FIELDS, ItemStats, RequestContext,
                                        request_context, stats_row)
from streamrec.stream.features import decayed
from streamrec.stream.memory_store import MemoryFeatureStore, by_rank
from streamrec.stream.schemas import Event, ScoreRequest

COUNTED = tuple(f.removeprefix("n:") for f in STAT_FIELDS[:-1])
"""The event types whose raw counts the scorer reads (``STAT_FIELDS`` before ``last_ts``)."""


class MemoryFeatureReader:
    """`streamrec.serving.features.FeatureReader` over a `MemoryFeatureStore`: the state after the last event
    the store applied."""

    def __init__(self, store: MemoryFeatureStore, seq_cap: int = SESSION_READ, history_items: int = 0):
        self.store = store
        self.seq_cap = seq_cap
        self.history_items = history_items
        self.categories: Mapping[str, str] = store.categories

    def contexts(self, requests: Sequence[ScoreRequest], trending_n: int) -> tuple[list[RequestContext],
                                                                                    list[tuple[str, float]]]:
        """Per-request session and user state, and the current trending items (best first)."""
        return [self._context(r) for r in requests], self.store.trending.top(trending_n)

    def _context(self, r: ScoreRequest) -> RequestContext:
        user = self.store.users.get(r.user_id)
        if user is None:  # a user Redis knows nothing of: the cold-start path
            return request_context(r, [], [], [], [], {})
        session = user.sessions.get(r.session_id)
        members = [m.item for m in session.seq[-self.seq_cap:]] if session else []
        h = self.history_items
        recent = by_rank(user.recent)[-(h + self.seq_cap):] if h > 0 else None
        return request_context(r, members, user.bought, [session.counts[t] for t in POSITIVE] if session else [],
                               [user.counts[t] for t in POSITIVE],
                               dict(user.affinity.values) if user.affinity else {}, recent, h)

    def covisitation(self, items: Sequence[str], per_item: int, now_ms: float,
                     categories_of: Sequence[str] = ()) -> dict[str, list[tuple[str, float]]]:
        """Co-visited next items of each of ``items``, weights decayed to ``now_ms`` (an explicit time:
        the live scorer passes its clock, a replay the request's event time)."""
        hl = self.store.config.covis_half_life_ms
        out = {}
        for item in items:
            covis = self.store.covis.get(item)
            out[item] = [(m, decayed(s, covis.landmark, now_ms, hl)) for m, s in covis.top(per_item)] if covis else []
        return out

    def item_stats(self, items: Sequence[str], with_stats: bool = True) -> ItemStats:
        """Statistics and categories of ``items`` (unique); nothing is removed from the catalog in a replay."""
        stats = ItemStats.empty(items)
        if not items or not with_stats:
            return stats
        counts, last = self.store.item_counts, self.store.item_last
        rows = [stats_row([float(c[t]) if c and t in c else np.nan for t in COUNTED]
                          + [float(last.get(i, np.nan))]) for i, c in ((i, counts.get(i)) for i in items)]
        stats.views, stats.clicks, stats.impressions, stats.last_ts = np.array(rows, dtype=np.float64).T.copy()
        stats.categories = [self.categories.get(i, "") for i in items]
        return stats


def replay_slates(engine, store: MemoryFeatureStore, events: Sequence[Event], at: Mapping[int, int],
                  check: Callable | None = None) -> dict[int, list[str]]:
    """Apply ``events`` to ``store`` in order and, right after each event whose index is a key of ``at``,
    ask ``engine`` (an `Engine` reading ``store``) for the slate of that event's score request at the event's
    time. Returns ``{at[index]: item ids of the slate}``; ``check`` sees each recommendation first."""
    slates: dict[int, list[str]] = {}
    last = max(at, default=-1)
    for k, ev in enumerate(events[:last + 1]):
        request = store.apply(ev)
        slot = at.get(k)
        if slot is None:
            continue
        (rec,) = engine.recommend([request], now_ms=request.ts)
        if check is not None:
            check(rec)
        slates[slot] = [it.item_id for it in rec.items]
    return slates
