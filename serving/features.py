"""Feature assembly: everything a batch of requests needs from Redis, in pipelined round trips.

Round trip 1 (per request): the session's item sequence, the user's recent
items of earlier sessions, the session and user hashes, the user's category
affinities and customer segment; once per batch: trending.
Round trip 2: co-visitation of the sessions' recent items (with each item's
landmark, so weights of different items compare), and categories of
session items. Round trip 3 (after candidates are known): item statistics
and categories of every candidate, and which are removed from the catalog.

Key names come from `streamrec.stream.keys.Keys`; decayed values are read
with the same forward-decay rule the worker writes them with. The dense
ranker features are built batch-first (`dense_matrix`) with the definitions
of `streamrec.trainer.features` (which the ranker was trained on).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from streamrec.stream.keys import FeatureConfig, Keys
from streamrec.stream.schemas import MAX_SEGMENTS, ScoreRequest

SEP = "\x1f"
POSITIVE = ("view", "click", "add_to_cart", "purchase", "rating")
STAT_FIELDS = tuple(f"n:{t}" for t in POSITIVE) + ("n:impression", "last_ts")
NEVER_HOURS = 24 * 365.0
DENSE_FEATURES = ("item_log_views", "item_ctr", "item_recency", "session_length", "category_affinity",
                  "seq_score", "content_sim", "covis_score")
"""Dense features this scorer can compute; a ranker asking for others is refused at load."""
SESSION_READ = 50
"""Newest members of a session's sequence read per request."""


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _f(v, default: float = 0.0) -> float:
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def _segment(raw) -> int | None:
    """A stored segment id, or None when absent or not a valid id (never fails a request)."""
    try:
        seg = int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return seg if seg is not None and 0 <= seg < MAX_SEGMENTS else None


def _top(pipe, key: str, n: int) -> None:
    # A raw command: redis-py 8 re-encodes every score of a `zrevrange(withscores=True)` reply to
    # bytes and back (~2 us each); the raw reply is parsed by `_pairs` instead.
    pipe.execute_command("ZREVRANGE", key, 0, max(n - 1, 0), "WITHSCORES")


def _pairs(raw) -> list[tuple[bytes, float]]:
    """(member, score) pairs of a raw WITHSCORES reply, RESP2 (flat) or RESP3 (nested)."""
    if not raw:
        return []
    if isinstance(raw[0], (list, tuple)):
        return [(m, float(sc)) for m, sc in raw]
    return [(raw[j], float(raw[j + 1])) for j in range(0, len(raw), 2)]


@dataclass
class RequestContext:
    """What the scorer knows about one request's user and session after round trips 1-2."""

    request: ScoreRequest
    session_items: list[str] = field(default_factory=list)
    """The session's items, oldest first (each once, at its latest position)."""
    seen: set[str] = field(default_factory=set)
    """Items of this session, and items the user ever bought: never recommended again."""
    session_positive: int = 0
    user_positive: int = 0
    affinity: dict[str, float] = field(default_factory=dict)
    """Share of the user's (decayed) affinity per category."""
    known: bool = False
    """False for a user Redis has nothing on: the cold-start path."""
    segment: int | None = None
    """The user's customer segment (`streamrec segments`), None when none is stored."""
    history: list[str] = field(default_factory=list)
    """The user's newest items of earlier sessions (not in this one), oldest first."""

    def recent(self, n: int) -> list[str]:
        return self.session_items[-n:][::-1] if n > 0 else []

    @property
    def sequence(self) -> list[str]:
        """The sequence model's input: the user's earlier items, then the session's. The sequence models
        train on each user's whole history, so a returning user's first event in a new session is not
        read as a stranger's."""
        return self.history + self.session_items


@dataclass
class ItemStats:
    """Statistics of the batch's unique candidate items, one row each (numpy, batch-first)."""

    index: dict[str, int]
    views: np.ndarray
    clicks: np.ndarray
    impressions: np.ndarray
    last_ts: np.ndarray
    """Epoch ms of the last interaction; NaN when never."""
    categories: list[str]
    removed: np.ndarray

    @classmethod
    def empty(cls, items: Sequence[str]) -> "ItemStats":
        n = len(items)
        z = np.zeros(n)
        return cls({it: i for i, it in enumerate(items)}, z, z.copy(), z.copy(), np.full(n, np.nan), [""] * n,
                   np.zeros(n, bool))


def request_context(request: ScoreRequest, session_members: Sequence[str], bought: Iterable[str],
                    session_counts: Iterable[float], user_counts: Iterable[float], affinity: dict[str, float],
                    recent: Sequence[str] | None = None, history_items: int = 0,
                    segment: int | None = None) -> RequestContext:
    """A request's context from its user's state as the worker stores it (`streamrec.stream.keys`).

    ``session_members``: the item of each member of the session's sequence, oldest first (repeats
    included); ``session_counts`` / ``user_counts``: the positive counts of the session and user hashes;
    ``affinity``: decayed weight per category (any common scale); ``recent``: the user's recent items,
    oldest first (None: no history read). Shared by the Redis reader and the in-memory one
    (`streamrec.serving.memory_features`), so both build contexts by the same rules.
    """
    ctx = RequestContext(request)
    items: dict[str, None] = {}
    for item in session_members:
        items.pop(item, None)
        items[item] = None
    ctx.session_items = list(items)
    if recent is not None:
        # Dropping the session's items from the newest h + len(session) leaves the newest h others.
        h = history_items
        ctx.history = [i for i in recent[-(h + len(items)):] if i not in items][-h:]
    # Seen in this session or bought at any time: not recommended again.
    ctx.seen = set(items) | set(bought)
    ctx.session_positive = int(sum(session_counts))
    ctx.user_positive = int(sum(user_counts))
    ctx.known = ctx.user_positive > 0 or bool(items)
    total = sum(affinity.values())
    ctx.affinity = {c: v / total for c, v in affinity.items()} if total > 0 else {}
    ctx.segment = segment
    return ctx


def stats_row(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(views, clicks, impressions, last_ts) of an item from its ``STAT_FIELDS`` values (NaN: absent).

    >>> stats_row([3.0, 1.0, float("nan"), 0.0, 2.0, 7.0, 1767225600000.0])
    (6.0, 1.0, 7.0, 1767225600000.0)
    """
    counts = [0.0 if math.isnan(v) else v for v in values[:-2]]
    # views = every positive interaction, as the trainer counts them
    return (sum(counts), counts[POSITIVE.index("click")], 0.0 if math.isnan(values[-2]) else values[-2],
            values[-1])


class FeatureReader:
    """Reads features for batches of requests from Redis (a `redis.Redis` or cluster client)."""

    def __init__(self, client, keys: Keys, config: FeatureConfig | None = None, seq_cap: int = SESSION_READ,
                 stats_ttl_s: float = 1.0, history_items: int = 0):
        self.client = client
        self.history_items = history_items
        """The user's items of earlier sessions read before the session's (`RequestContext.history`)."""
        self.stats_ttl_s = stats_ttl_s
        self._stats: dict[str, tuple] = {}
        self._covis: dict[str, tuple] = {}
        self.keys = keys
        self.config = config or FeatureConfig()
        self.seq_cap = seq_cap
        self.categories: dict[str, str] = {}
        """Category of items already read (catalog metadata changes rarely)."""

    # -- round trip 1 --------------------------------------------------------- #
    def contexts(self, requests: Sequence[ScoreRequest], trending_n: int) -> tuple[list[RequestContext],
                                                                                    list[tuple[str, float]]]:
        """Per-request session and user state, and the current trending items (best first)."""
        k = self.keys
        h = self.history_items
        per = 7 if h > 0 else 6
        pipe = self.client.pipeline(transaction=False)
        for r in requests:
            pipe.zrange(k.session_seq(r.user_id, r.session_id), -self.seq_cap, -1)
            if h > 0:
                # By last event time; the newest are this session's own, so read past them.
                pipe.zrange(k.recent(r.user_id), -(h + self.seq_cap), -1)
            pipe.hmget(k.session(r.user_id, r.session_id), *(f"n:{t}" for t in POSITIVE))
            pipe.hmget(k.user(r.user_id), *(f"n:{t}" for t in POSITIVE))
            pipe.hgetall(k.affinity(r.user_id))
            pipe.zrange(k.bought(r.user_id), 0, -1)
            pipe.get(k.segment(r.user_id))
        _top(pipe, k.trending, trending_n)
        raw = pipe.execute()
        out = []
        for i, r in enumerate(requests):
            seq, *past, sess, user, aff, bought, segment = raw[per * i: per * i + per]
            # The worker writes one field ``a:<category>`` per category (beside the landmark ``_L``).
            affinity = {_s(c)[2:]: _f(v) for c, v in aff.items() if _s(c).startswith("a:")}
            out.append(request_context(
                r, [_s(m).split(SEP, 1)[0] for m in seq], map(_s, bought), map(_f, sess), map(_f, user),
                affinity, list(map(_s, past[0])) if past else None, h, _segment(segment)))
        trending = [(_s(m), s) for m, s in _pairs(raw[-1])]
        return out, trending

    # -- round trip 2 --------------------------------------------------------- #
    def covisitation(self, items: Sequence[str], per_item: int, now_ms: float,
                     categories_of: Sequence[str] = ()) -> dict[str, list[tuple[str, float]]]:
        """Co-visited next items of each item in ``items`` with weights decayed to ``now_ms``.

        Also reads the category of ``categories_of`` items not cached yet (same
        round trip). Lists read less than ``stats_ttl_s`` ago come from memory:
        the event that triggered a request only adds itself to its
        predecessors' lists, and it is never recommended back anyway.
        """
        k = self.keys
        hl = self.config.covis_half_life_ms
        missing = [i for i in dict.fromkeys(categories_of) if i not in self.categories]
        mono = time.monotonic()
        cache = self._covis
        stale = [i for i in items if (c := cache.get(i)) is None or c[0] < mono or c[3] < per_item]
        if stale or missing:
            pipe = self.client.pipeline(transaction=False)
            for item in stale:
                _top(pipe, k.covis(item), per_item)
                pipe.hget(k.item_hw(item), "_L")
            for item in missing:
                pipe.hget(k.item_meta(item), "category")
            raw = pipe.execute()
            for j, item in enumerate(stale):
                pairs, landmark = raw[2 * j], raw[2 * j + 1]
                cache[item] = (mono + self.stats_ttl_s, _f(landmark, now_ms),
                               [(_s(m), sc) for m, sc in _pairs(pairs)], per_item)
            for item, cat in zip(missing, raw[2 * len(stale):]):
                self.categories[item] = _s(cat) if cat is not None else ""
            if len(cache) > 1_000_000:
                cache.clear()
        out = {}
        for item in items:
            _, landmark, pairs, _ = cache[item]
            # Forward decay: stored = w * 2^((t - L)/hl); its value now is stored * 2^((L - now)/hl).
            f = math.pow(2.0, (landmark - now_ms) / hl)
            out[item] = [(m, sc * f) for m, sc in pairs[:per_item]]
        return out

    # -- round trip 3 --------------------------------------------------------- #
    def item_stats(self, items: Sequence[str], with_stats: bool = True) -> ItemStats:
        """Statistics, categories and removal flags of ``items`` (unique) in at most one round trip.

        Rows read less than ``stats_ttl_s`` ago come from memory: item
        statistics move slowly, and a batch's candidates repeat the previous
        batch's (the same trending and co-visited items), so this spares Redis
        most of the reads. A removal from the catalog takes effect within the TTL.
        """
        stats = ItemStats.empty(items)
        if not items:
            return stats
        now = time.monotonic()
        cache, get = self._stats, self._stats.get
        rows = [get(i) for i in items]
        missing = [i for i, r in zip(items, rows) if r is None or r[0] < now or (with_stats and r[2] is None)]
        if missing:
            self._read_stats(missing, with_stats, now + self.stats_ttl_s)
            rows = [get(i) for i in items]
        stats.removed = np.fromiter((r[1] for r in rows), dtype=bool, count=len(rows))
        if with_stats:
            block = np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), 4)
            stats.views, stats.clicks, stats.impressions, stats.last_ts = block.T.copy()
            stats.categories = [r[3] for r in rows]
        if len(cache) > 1_000_000:  # bounded memory on a huge catalog
            cache.clear()
        return stats

    def _read_stats(self, items: Sequence[str], with_stats: bool, expires: float) -> None:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.smismember(k.removed, list(items))
        if with_stats:
            for item in items:
                pipe.hmget(k.item_stats(item), *STAT_FIELDS)
                pipe.hget(k.item_meta(item), "category")
        raw = pipe.execute()
        removed = raw[0]
        for j, item in enumerate(items):
            row = None
            cat = ""
            if with_stats:
                row = stats_row([_f(v, np.nan) for v in raw[1 + 2 * j]])
                meta = raw[2 + 2 * j]
                cat = _s(meta) if meta is not None else ""
                self.categories[item] = cat
            self._stats[item] = (expires, bool(removed[j]), row, cat)


def dense_matrix(names: Sequence[str], stats: ItemStats, rows: np.ndarray, contexts: Sequence[RequestContext],
                 owner: np.ndarray, seq_score: np.ndarray | None = None,
                 content_sim: np.ndarray | None = None, covis_score: np.ndarray | None = None) -> np.ndarray:
    """The ranker's dense input ``[pairs, len(names)]`` for (request, candidate) pairs.

    ``rows``: each pair's row in ``stats``; ``owner``: each pair's index in
    ``contexts``; ``seq_score``: the sequence model's score per pair (0 without one);
    ``content_sim``: cosine of the item's content vector and the session's content profile (0 without
    a content model, `streamrec.serving.content`); ``covis_score``: log1p of the item's summed co-visitation
    weight from the session's recent items, as the co-visitation source sums it (0 where not co-visited).
    """
    m = rows.shape[0]
    now = np.array([c.request.ts for c in contexts], dtype=np.float64)[owner] if m else np.zeros(0)
    cols = {}
    for name in names:
        if name == "item_log_views":
            cols[name] = np.log1p(stats.views[rows])
        elif name == "item_ctr":
            cols[name] = (stats.clicks[rows] + 1.0) / (stats.impressions[rows] + 10.0)
        elif name == "item_recency":
            hours = (now - stats.last_ts[rows]) / 3_600_000
            cols[name] = np.log1p(np.where(np.isnan(hours), NEVER_HOURS, np.maximum(hours, 0.0)))
        elif name == "session_length":
            cols[name] = np.log1p(np.array([c.session_positive for c in contexts], dtype=np.float64))[owner]
        elif name == "category_affinity":
            # [requests, categories] affinity table, gathered per pair by (owner, category of the item).
            vocab: dict[str, int] = {}
            cat_idx = np.fromiter((vocab.setdefault(c, len(vocab)) for c in stats.categories), dtype=np.int64,
                                  count=len(stats.categories))
            table = np.zeros((len(contexts), len(vocab) + 1))
            for k, c in enumerate(contexts):
                for cat, share in c.affinity.items():
                    j = vocab.get(cat)
                    if j is not None:
                        table[k, j] = share
            ulen = np.array([c.user_positive for c in contexts], dtype=np.float64)[owner]
            share = table[owner, cat_idx[rows]] if m else np.zeros(0)
            cols[name] = (share * ulen + 0.1) / (ulen + 1.0)
        elif name == "seq_score":
            cols[name] = seq_score if seq_score is not None else np.zeros(m)
        elif name == "content_sim":
            cols[name] = content_sim if content_sim is not None else np.zeros(m)
        elif name == "covis_score":
            cols[name] = np.log1p(covis_score) if covis_score is not None else np.zeros(m)
        else:
            raise KeyError(f"dense feature {name!r} is not computed by the scorer; known: {', '.join(DENSE_FEATURES)}")
    if not names:
        return np.zeros((m, 0), dtype=np.float32)
    return np.stack([cols[n] for n in names], axis=1).astype(np.float32)
