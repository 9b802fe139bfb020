"""Reward joining: recommendations + the interactions carrying their ``rec_id`` -> training samples.

A slate (one recommendation) stays open for ``window_ms`` of event time after
it was created; interactions with its ``rec_id`` and a ``position`` that
arrive meanwhile add their reward (weights per type, e.g. click 1,
add_to_cart 2, purchase 5, skip 0) to the item at that position; the same
``(rec_id, item, type)`` counts once (duplicates from retries or replays are
ignored). An ``impression`` event with the slate's ``rec_id`` marks it as
shown (displayed by the app), as does any interaction; the learner can
leave out slates nobody saw (`LearnerConfig.impressions`). An interaction
may arrive before its recommendation (the two topics are read independently): it waits, bounded, in a pending buffer. When the
event-time watermark passes the end of a slate's window, the slate is closed
and emitted as a `Slate` sample; an interaction for a slate closed already,
or older than the window, is counted as late and dropped.

Time is event time only, never the wall clock: the watermark is the oldest of
the newest timestamps of each source (a topic partition: recommendations'
``created_ts``, events' ``ts``) that still has records to deliver, so a
partition read ahead of another cannot close slates early; a source marked
idle (caught up with its end) does not hold the watermark back, so replaying the same records from a checkpoint gives the same
samples: that is what makes a restart neither lose nor double-count rewards.
The whole state is plain data (`state()` / `from_state()`), saved together
with the Kafka offsets it covers.

>>> j = Joiner(JoinConfig(window_ms=1000))
>>> j.add_recommendation({"rec_id": "r1", "user_id": "u", "session_id": "s", "variant": "a",
...     "created_ts": 0, "items": [{"item_id": "x", "propensity": 0.5}, {"item_id": "y", "propensity": 0.2}]})
[]
>>> j.add_interaction({"event_id": "e1", "type": "click", "rec_id": "r1", "position": 1, "item_id": "y", "ts": 10})
[]
>>> j.add_interaction({"event_id": "e2", "type": "view", "item_id": "z", "ts": 2000})
[]
>>> [s.rewards for s in j.add_recommendation({"rec_id": "r2", "user_id": "u", "created_ts": 1500, "items": []})]
[[0.0, 1.0]]
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import msgspec


@dataclass(frozen=True)
class JoinConfig:
    """Attribution window, reward weights and memory bounds of the joiner."""

    window_ms: int = 30_000
    click: float = 1.0
    add_to_cart: float = 2.0
    purchase: float = 5.0
    skip: float = 0.0
    max_open: int = 100_000
    """Open slates kept at most; beyond it the oldest are closed early (counted)."""
    max_pending: int = 50_000
    """Interactions waiting for their recommendation, at most; beyond it the oldest are dropped (counted)."""
    max_closed: int = 200_000
    """Closed rec_ids remembered to recognise late interactions."""

    def weight(self, kind: str) -> float | None:
        """Reward weight of an interaction type, None for types that are not feedback on a slate."""
        return {"click": self.click, "add_to_cart": self.add_to_cart, "purchase": self.purchase,
                "skip": self.skip}.get(kind)


@dataclass
class Slate:
    """One joined recommendation: what was shown, with what propensity, and the reward per item."""

    rec_id: str
    user_id: str
    session_id: str
    variant: str
    created_ts: int
    items: list[str]
    propensities: list[float]
    scores: list[float]
    reasons: list[str]
    models: list[str]
    trigger_event_id: str = ""
    rewards: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    """Interactions joined, by type."""
    seen: list[str] = field(default_factory=list)
    """Keys ``item|type`` already counted (dedup)."""
    shown: bool = False
    """An `impression` event or an interaction carried this slate's rec_id: the app displayed it."""
    features: dict = field(default_factory=dict)
    """What the consumer attached when the slate opened (the learner: ranker features, session items)."""
    segment: int | None = None
    """The user's customer segment on the recommendation (None: none stored)."""

    @property
    def reward(self) -> float:
        return float(sum(self.rewards))


class Joiner:
    """The join state machine; feed it decoded records, collect closed `Slate` samples."""

    def __init__(self, cfg: JoinConfig | None = None, sources=("rec", "ev")):
        self.cfg = cfg or JoinConfig()
        self.open: OrderedDict[str, Slate] = OrderedDict()  # in arrival order (eviction takes the oldest)
        self._due: list[tuple[int, str]] = []  # heap of (created_ts, rec_id) of open slates
        self.pending: OrderedDict[str, list[dict]] = OrderedDict()  # rec_id -> interactions before the rec
        self.closed: OrderedDict[str, None] = OrderedDict()
        self.watermark = 0
        self.newest = {src: 0 for src in sources}
        self.idle: set[str] = set()
        self._out: list[Slate] = []
        self.counts: Counter = Counter()
        """joined, duplicates, late, evicted, pending_dropped, slates, rewards by type (reward:<type>)..."""

    # -- input ------------------------------------------------------------------ #
    def expect(self, sources) -> None:
        """Sources (e.g. topic partitions) the watermark must wait for, besides those seen."""
        for src in sources:
            self.newest.setdefault(src, 0)

    def set_idle(self, source: str, idle: bool) -> list[Slate]:
        """Mark a source caught up (it no longer holds the watermark back) or busy again."""
        if idle:
            self.idle.add(source)
        else:
            self.idle.discard(source)
        self._advance(source, 0)
        return self.drain()

    def add_recommendation(self, rec: dict, source: str = "rec") -> list[Slate]:
        """Open a slate for a recommendation (a dict as on the topic); returns slates closed by time."""
        rid = rec["rec_id"]
        if rid in self.open or rid in self.closed:
            self.counts["duplicate_recommendations"] += 1
            return []
        items = rec.get("items", [])
        slate = Slate(rec_id=rid, user_id=rec.get("user_id", ""), session_id=rec.get("session_id", ""),
                      variant=rec.get("variant", "default"), created_ts=int(rec.get("created_ts") or 0),
                      items=[i["item_id"] for i in items],
                      propensities=[float(i.get("propensity", 1.0)) for i in items],
                      scores=[float(i.get("score", 0.0)) for i in items],
                      reasons=[str(i.get("reason", "")) for i in items], models=list(rec.get("models", [])),
                      trigger_event_id=rec.get("trigger_event_id", ""), rewards=[0.0] * len(items),
                      features=rec.get("features") or {}, segment=rec.get("segment"))
        self.open[rid] = slate
        heapq.heappush(self._due, (slate.created_ts, rid))
        self.counts["slates"] += 1
        for ev in self.pending.pop(rid, []):
            self._apply(slate, ev)
        while len(self.open) > self.cfg.max_open:
            self.counts["evicted"] += 1
            self._close(next(iter(self.open)))
        if len(self._due) > 2 * self.cfg.max_open + 16:  # evicted entries: rebuild, keep it bounded
            self._due = [(s.created_ts, r) for r, s in self.open.items()]
            heapq.heapify(self._due)
        self._advance(source, slate.created_ts)
        return self.drain()

    def add_interaction(self, ev: dict, source: str = "ev") -> list[Slate]:
        """Apply an event (a dict as on the topic); returns slates closed by the time it carries."""
        ts = _ts(ev.get("ts"))
        self._advance(source, ts)
        self._interaction(ev, ts)
        return self.drain()

    def _interaction(self, ev: dict, ts: int) -> None:
        rid = ev.get("rec_id")
        if not rid or (self.cfg.weight(ev.get("type", "")) is None and ev.get("type") != "impression"):
            return
        if rid in self.closed or ts < self.watermark - self.cfg.window_ms:
            self.counts["late"] += 1
            return
        slate = self.open.get(rid)
        if slate is None:
            self.pending.setdefault(rid, []).append(ev)
            self.counts["pending"] += 1
            while len(self.pending) > self.cfg.max_pending:
                self.counts["pending_dropped"] += len(self.pending.popitem(last=False)[1])
            return
        if ts > slate.created_ts + self.cfg.window_ms:
            self.counts["late"] += 1
            return
        self._apply(slate, ev)

    def _apply(self, slate: Slate, ev: dict) -> None:
        kind = ev["type"]
        slate.shown = True
        if kind == "impression":
            self.counts["impressions"] += 1
            return
        pos = ev.get("position")
        item = ev.get("item_id")
        if pos is None or not 0 <= pos < len(slate.items) or (item is not None and slate.items[pos] != item):
            # Position missing or inconsistent: attribute by item id when it is on the slate.
            if item in slate.items:
                pos = slate.items.index(item)
            else:
                self.counts["unattributable"] += 1
                return
        key = f"{slate.items[pos]}|{kind}"
        if key in slate.seen:
            self.counts["duplicates"] += 1
            return
        slate.seen.append(key)
        slate.rewards[pos] += self.cfg.weight(kind)
        slate.kinds[kind] = slate.kinds.get(kind, 0) + 1
        self.counts["joined"] += 1
        self.counts[f"reward:{kind}"] += 1

    # -- time ---------------------------------------------------------------------- #
    def _advance(self, stream: str, ts: int) -> None:
        if ts > self.newest.get(stream, 0):
            self.newest[stream] = ts
        busy = [t for src, t in self.newest.items() if src not in self.idle]
        ts = min(busy) if busy else max(self.newest.values(), default=0)
        if ts <= self.watermark:
            return
        self.watermark = ts
        horizon = ts - self.cfg.window_ms
        # Slates arrive out of creation order (several partitions): close by creation time.
        while self._due and self._due[0][0] <= horizon:
            _, rid = heapq.heappop(self._due)
            if rid in self.open:  # else closed already by the memory bound
                self._close(rid)
        # Pending interactions whose slate never came within the window are dropped as late.
        # (oldest first: the buffer is in arrival order, close enough to event order to stop early)
        while self.pending:
            rid, evs = next(iter(self.pending.items()))
            if max(_ts(e.get("ts")) for e in evs) >= horizon:
                break
            self.counts["late"] += len(self.pending.pop(rid))

    def _close(self, rid: str) -> None:
        slate = self.open.pop(rid)
        self.closed[rid] = None
        while len(self.closed) > self.cfg.max_closed:
            self.closed.popitem(last=False)
        self._out.append(slate)

    def drain(self) -> list[Slate]:
        """Slates closed since the last drain (by time or by the memory bound)."""
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Slate]:
        """Close every open slate now (end of a run)."""
        for rid in list(self.open):
            self._close(rid)
        self._due = []
        return self.drain()

    # -- checkpoint -------------------------------------------------------------- #
    def state(self) -> dict:
        """Everything needed to continue exactly where this joiner is (JSON-serialisable)."""
        return {"watermark": self.watermark, "newest": self.newest, "counts": dict(self.counts),
                # msgspec converts dataclasses ~3x faster than asdict: a long attribution window
                # at a high rate holds tens of thousands of open slates.
                "open": msgspec.to_builtins(list(self.open.values())), "pending": list(self.pending.items()),
                "closed": list(self.closed), "unreported": msgspec.to_builtins(self._out)}

    @classmethod
    def from_state(cls, state: dict, cfg: JoinConfig | None = None) -> "Joiner":
        j = cls(cfg)
        j.watermark = int(state["watermark"])
        j.newest = {k: int(v) for k, v in state["newest"].items()}
        j.counts = Counter(state["counts"])
        j.open = OrderedDict((s["rec_id"], Slate(**s)) for s in state["open"])
        j._due = [(s.created_ts, rid) for rid, s in j.open.items()]
        heapq.heapify(j._due)
        j.pending = OrderedDict((r, evs) for r, evs in state["pending"])
        j.closed = OrderedDict((r, None) for r in state["closed"])
        j._out = [Slate(**s) for s in state.get("unreported", [])]
        return j


def _ts(ts) -> int:
    if isinstance(ts, (int, float)):
        return int(ts)
    if isinstance(ts, str) and ts:
        from datetime import datetime
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
    return 0
