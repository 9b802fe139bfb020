"""The worker's feature writes in memory: what the scripts in `stream/lua` do to Redis, one event at a time.

For offline work that needs the features the worker would have written as of a
moment of a history (the served-slate evaluation, `streamrec.trainer.served_eval`,
and benchmarks), with no Kafka and no Redis.
`streamrec.serving.memory_features.MemoryFeatureReader` serves this state to the
scorer's engine. An integration test (tests/integration/test_served_replay.py)
replays one history through the real worker into a real Redis and through this
class, and compares what the scorer's reader gets from both.

Reproduced, per event and in the scripts' order:

- the session: the event's ``session_id``, else the worker's derived one (a new
  session after ``session_gap_ms`` without events, id ``s<first ts>``); its
  counts, and its sequence of members ``item\\x1ftype\\x1ffv`` in Redis'
  sorted-set order (by time, ties by the member's bytes), capped at ``seq_cap``;
- the user: counts, feature version, recent items and bought items (latest time
  per item, capped at ``recent_cap``), category affinity (forward decay);
- each item: raw counts per event type and last event time;
- co-visitation: a positive event is the next item of the session's up to
  ``covis_neighbours`` previous distinct positive items; and trending. Both are
  forward-decayed sorted sets with the scripts' landmark, rescaling and caps.

Not reproduced, and why:

- deduplication, lateness, forget requests: a history replayed in time order has
  none of them (`MemoryFeatureStore.apply` refuses an event older than its user's newest);
- the replay guard (offsets), hourly trending windows, decayed item counts and CTR:
  the scorer reads none of them;
- key TTLs: Redis expires keys by the wall clock, which a replay does not have, so
  every key is kept (as when a worker replays a history faster than its TTLs);
- when caps are trimmed: the worker trims a session sequence, recent and bought
  items, a co-visitation list and trending once per script call (a batch), this
  class after every event (a batch of one), so a list past its cap may differ in
  its weakest members.

Raw forward-decayed scores depend on each key's landmark (its first event). A
worker reading several partitions may see another event first: weights decayed
to a time, and orders, agree; raw trending scores agree up to one factor.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Mapping

from streamrec.stream.keys import TYPE_WEIGHTS, FeatureConfig
from streamrec.stream.schemas import Event, ScoreRequest

SEP = "\x1f"
RESCALE_HALF_LIVES = 40
"""As `common.lua`: past this many half-lives from its landmark, a decayed key is rescaled."""


def _rank(member: str, score: float) -> tuple[float, bytes]:
    """Redis' sorted-set order: by score, ties by the member's bytes."""
    return score, member.encode()


def _drop_lowest(zset: dict) -> None:
    """ZREMRANGEBYRANK 0 0: remove the lowest-ranked member."""
    scores = list(zset.values())  # list and dict methods run in C: this runs for most events of a long replay
    low = min(scores)
    if scores.count(low) == 1:
        del zset[next(islice(zset, scores.index(low), None))]
    else:  # ties: the smallest member's bytes goes
        del zset[min((m for m, s in zset.items() if s == low), key=str.encode)]


def _lua_tostring(x: float) -> float:
    """A number after Lua's ``tostring`` (14 significant digits), as the scripts write rescaled hash fields."""
    return float(f"{x:.14g}")


class DecayedHash:
    """Forward-decayed values sharing one landmark (Lua ``hash_decay_add``): ``v`` stored at landmark ``L``
    is worth ``v * 2**(-(T - L) / half_life)`` at ``T``; past `RESCALE_HALF_LIVES` the landmark moves."""

    def __init__(self, half_life_ms: float):
        self.half_life_ms = half_life_ms
        self.values: dict[str, float] = {}
        self.landmark: int | None = None

    def add(self, name: str, weight: float, ts: int) -> None:
        """Add ``weight`` observed at ``ts``."""
        hl = self.half_life_ms
        if self.landmark is None:
            self.landmark = ts
        elif (ts - self.landmark) / hl > RESCALE_HALF_LIVES:
            f = math.pow(2, -(ts - self.landmark) / hl)
            self.values = {k: self._rescaled(v * f) for k, v in self.values.items()}
            self.landmark = ts
        self.values[name] = self.values.get(name, 0.0) + weight * math.pow(2, (ts - self.landmark) / hl)

    @staticmethod
    def _rescaled(value: float) -> float:
        return _lua_tostring(value)  # a hash field is rewritten as text by the script


class DecayedSet(DecayedHash):
    """A sorted set of forward-decayed scores (Lua ``zset_decay_add``), trimmed to its best ``cap`` members.

    >>> s = DecayedSet(half_life_ms=1000, cap=2)
    >>> s.add("a", 1.0, 0); s.add("b", 1.0, 1000); s.add("c", 3.0, 0)
    >>> s.top(5), s.landmark
    ([('c', 3.0), ('b', 2.0)], 0)
    """

    def __init__(self, half_life_ms: float, cap: int):
        super().__init__(half_life_ms)
        self.cap = cap

    def add(self, name: str, weight: float, ts: int) -> None:
        """Add ``weight`` observed at ``ts``, then drop the weakest member past the cap."""
        super().add(name, weight, ts)
        if len(self.values) > self.cap:
            _drop_lowest(self.values)

    @staticmethod
    def _rescaled(value: float) -> float:
        return value  # ZADD keeps the double

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` best (member, raw score), best first, as ZREVRANGE returns them."""
        return heapq.nlargest(n, self.values.items(), key=lambda kv: _rank(*kv))


def _latest(zset: dict[str, int], item: str, ts: int, cap: int) -> None:
    """``ZADD GT ts item`` then keep the ``cap`` newest (Redis drops the lowest-ranked)."""
    if ts > zset.get(item, -math.inf):
        zset[item] = ts
    if len(zset) > cap:
        _drop_lowest(zset)


def by_rank(zset: dict[str, int]) -> list[str]:
    """Members of a time-scored set in Redis' order (ZRANGE 0 -1: oldest first)."""
    return [m for m, _ in sorted(zset.items(), key=lambda kv: _rank(*kv))]


@dataclass
class Member:
    """One member of a session's sequence; ordered as Redis orders ``item\\x1ftype\\x1ffv`` by time."""

    ts: int
    key: bytes
    item: str
    type: str

    def __lt__(self, other: "Member") -> bool:
        return (self.ts, self.key) < (other.ts, other.key)


@dataclass
class Session:
    first_ts: int
    last_ts: int
    counts: Counter = field(default_factory=Counter)
    seq: list[Member] = field(default_factory=list)
    """Oldest first, at most ``seq_cap``."""


@dataclass
class UserState:
    max_ts: int
    counts: Counter = field(default_factory=Counter)
    fv: int = 0
    sessions: dict[str, Session] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    """Sessions that may still take a derived event: id -> last ts (the scripts' ``:sessions`` index)."""
    recent: dict[str, int] = field(default_factory=dict)
    bought: dict[str, int] = field(default_factory=dict)
    affinity: DecayedHash | None = None


class MemoryFeatureStore:
    """The feature state the worker keeps in Redis, built in memory from events applied in time order.

    ``categories``: the catalog's category per item, as the worker reads it from
    the item metadata (an item without one has none).
    """

    def __init__(self, config: FeatureConfig | None = None, categories: Mapping[str, str] | None = None):
        self.config = config or FeatureConfig()
        self.categories: dict[str, str] = dict(categories or {})
        self.users: dict[str, UserState] = {}
        self.item_counts: dict[str, Counter] = {}
        self.item_last: dict[str, int] = {}
        self.covis: dict[str, DecayedSet] = {}
        self.trending = DecayedSet(self.config.trending_half_life_ms, self.config.trending_cap)

    def apply(self, ev: Event) -> ScoreRequest:
        """Apply one event as the worker's user and item scripts do; returns the score request it emits."""
        t, item, weight = ev.ts_ms, ("" if ev.type == "impression" else ev.item_id), TYPE_WEIGHTS[ev.type]
        user = self.users.get(ev.user_id)
        if user is None:
            user = self.users[ev.user_id] = UserState(max_ts=t)
        elif t < user.max_ts:
            raise ValueError(f"event {ev.event_id}: ts {t} is older than user {ev.user_id}'s newest event "
                             f"({user.max_ts}); replay a history in time order")
        sid = ev.session_id or self._find_session(user, t)
        session = user.sessions.get(sid)
        if session is None:
            session = user.sessions[sid] = Session(first_ts=t, last_ts=t)
            user.live[sid] = t
        neighbours = self._neighbours(session, item) if weight > 0 and item else []
        self._write_session(session, sid, user, ev, item)
        self._write_user(user, ev, item, weight)
        self._write_items(ev, weight, neighbours)
        return ScoreRequest(event_id=ev.event_id, user_id=ev.user_id, session_id=sid, item_id=ev.item_id,
                            type=ev.type, ts=t, feature_version=user.fv, rec_id=ev.rec_id)

    # -- the user script ------------------------------------------------------- #
    def _find_session(self, user: UserState, t: int) -> str:
        """The session whose last event is within the gap before ``t`` (the latest started), else a new one."""
        gap = self.config.session_gap_ms
        # Events come in time order: a session idle for longer than the gap never takes one again.
        user.live = {sid: last for sid, last in user.live.items() if last >= t - gap}
        best = max(user.live, key=lambda sid: user.sessions[sid].first_ts, default=None)
        return best if best is not None else f"s{t}"

    def _neighbours(self, session: Session, item: str) -> list[str]:
        """The session's previous distinct positive items, newest first (ZREVRANGEBYSCORE ... LIMIT 3 * nb)."""
        nb = self.config.covis_neighbours
        seen, out = {item}, []
        for m in session.seq[::-1][:3 * nb]:
            if m.item not in seen and TYPE_WEIGHTS.get(m.type, 0) > 0:
                seen.add(m.item)
                out.append(m.item)
                if len(out) >= nb:
                    break
        return out

    def _write_session(self, session: Session, sid: str, user: UserState, ev: Event, item: str) -> None:
        t = ev.ts_ms
        session.counts[ev.type] += 1
        session.first_ts = min(session.first_ts, t)
        if t > session.last_ts:
            session.last_ts = t
        user.live[sid] = session.last_ts
        if item:
            key = SEP.join((item, ev.type, str(user.fv + 1))).encode()  # the version _write_user gives it
            bisect.insort(session.seq, Member(t, key, item, ev.type))
            del session.seq[:-self.config.seq_cap]

    def _write_user(self, user: UserState, ev: Event, item: str, weight: float) -> None:
        cfg, t = self.config, ev.ts_ms
        user.counts[ev.type] += 1
        user.max_ts = max(user.max_ts, t)
        user.fv += 1
        if ev.type == "purchase" and item:
            _latest(user.bought, item, t, cfg.recent_cap)
        if weight > 0 and item:
            _latest(user.recent, item, t, cfg.recent_cap)
            category = self.categories.get(item, "")
            if category:
                if user.affinity is None:
                    user.affinity = DecayedHash(cfg.affinity_half_life_ms)
                user.affinity.add(category, weight, t)

    # -- the item and trending scripts -------------------------------------------- #
    def _write_items(self, ev: Event, weight: float, neighbours: list[str]) -> None:
        t = ev.ts_ms
        for item in dict.fromkeys(ev.item_ids):  # an item listed twice counts once
            counts = self.item_counts.get(item)
            if counts is None:
                counts = self.item_counts[item] = Counter()
            counts[ev.type] += 1
            self.item_last[item] = max(self.item_last.get(item, t), t)
        if weight <= 0:
            return
        self.trending.add(ev.item_id, weight, t)
        cfg = self.config
        for prev in neighbours:
            covis = self.covis.get(prev)
            if covis is None:
                covis = self.covis[prev] = DecayedSet(cfg.covis_half_life_ms, cfg.covis_cap)
            covis.add(ev.item_id, weight, t)

