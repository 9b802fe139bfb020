"""Feature logic as data: from a batch of decoded events to Redis script calls.

Nothing here does I/O, so any consuming engine (faust, a plain confluent-kafka
loop, a benchmark) drives the same logic through `FeatureStore`. A batch is
applied in two phases because Redis Cluster runs a script on one slot only:

1. per user (slot ``{u:USER}``): deduplication by event id, lateness,
   forget requests, session derivation by event time, session and user
   features. It returns each event's outcome and the session's previous items.
2. per item (slot ``{i:ITEM}``) and for trending (slot ``{trending}``): item
   statistics, co-visitation and trending, each guarded by the last applied
   offset of the source partition, so a replay after a crash adds nothing twice.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from streamrec.stream.keys import TYPE_WEIGHTS, FeatureConfig, Keys, marker_field
from streamrec.stream.schemas import Event


@dataclass(frozen=True)
class SourceEvent:
    """One Kafka record as the engine received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass
class DecodedEvent:
    source: SourceEvent
    event: Event
    category: str = ""

    @property
    def src(self) -> str:
        return f"{self.source.partition}:{self.source.offset}"


@dataclass
class Outcome:
    """What the user phase decided for one event."""

    status: str  # applied | replay | dup | too_late | forgotten
    session_id: str = ""
    neighbours: list[str] = field(default_factory=list)
    feature_version: int = 0
    first: str = ""  # for a replay: the decision taken the first time

    @property
    def effective(self) -> str:
        """The decision that counts: a replay repeats its first decision."""
        return self.first if self.status == "replay" else self.status

    @property
    def feeds_items(self) -> bool:
        return self.effective == "applied"


def script_config(cfg: FeatureConfig) -> dict:
    """The constants the Lua scripts need, under short names (baked into the scripts)."""
    return {
        "gap": cfg.session_gap_ms, "lateness": cfg.lateness_ms, "marker_ttl": cfg.marker_ttl_s,
        "session_ttl": cfg.session_ttl_s, "user_ttl": cfg.user_ttl_s, "item_ttl": cfg.item_ttl_s,
        "trend_ttl": cfg.trending_ttl_s, "window_ttl": cfg.window_ttl_s, "seq_cap": cfg.seq_cap,
        "recent_cap": cfg.recent_cap, "covis_cap": cfg.covis_cap, "nb": cfg.covis_neighbours,
        "trend_cap": cfg.trending_cap, "aff_hl": cfg.affinity_half_life_ms, "item_hl": cfg.item_half_life_ms,
        "trend_hl": cfg.trending_half_life_ms, "covis_hl": cfg.covis_half_life_ms,
        "ctr_a": cfg.ctr_prior_clicks, "ctr_b": cfg.ctr_prior_exposures, "weights": TYPE_WEIGHTS,
    }


def lua_literal(value) -> str:
    """A Python dict/number/str as a Lua literal, to bake constants into a script."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def _item_of(ev: Event) -> str:
    return "" if ev.type == "impression" else ev.item_id


def user_calls(batch: list[DecodedEvent], keys: Keys) -> list[tuple[str, str, list[int]]]:
    """Phase 1: one call per user: (key, JSON argument, indexes of its events in `batch`)."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(batch):
        by_user[d.event.user_id].append(i)
    calls = []
    for user, idx in by_user.items():
        events = [{
            "id": batch[i].event.event_id, "k": marker_field(batch[i].event.event_id),
            "type": batch[i].event.type, "ts": batch[i].event.ts_ms, "item": _item_of(batch[i].event), "sid": batch[i].event.session_id or "",
            "cat": batch[i].category, "w": TYPE_WEIGHTS[batch[i].event.type], "src": batch[i].src,
        } for i in idx]
        calls.append((keys.user_base(user), json.dumps(events), idx))
    return calls


def parse_user_result(raw: bytes | str | list) -> list[Outcome]:
    """Outcomes from the user phase's reply (JSON text, or the list a batched call decoded)."""
    out = []
    for r in (raw if isinstance(raw, list) else json.loads(raw)):
        nb = r.get("nb") or []
        out.append(Outcome(status=r["s"], session_id=r.get("sid", ""), feature_version=int(r.get("fv", 0)),
                           neighbours=nb if isinstance(nb, list) else [], first=r.get("first", "")))
    return out


def item_calls(batch: list[DecodedEvent], outcomes: list[Outcome], keys: Keys) -> list[tuple[str, str]]:
    """Phase 2: one call per item touched (its stats, and co-visitation it gains) plus trending."""
    stats: dict[str, list[dict]] = defaultdict(list)
    covis: dict[str, list[dict]] = defaultdict(list)
    trending: list[dict] = []
    # Offset order per partition is what the replay guard relies on.
    order = sorted(range(len(batch)), key=lambda i: (batch[i].source.partition, batch[i].source.offset))
    for i in order:
        d, o = batch[i], outcomes[i]
        if not o.feeds_items:
            continue
        ev, p, off, ts = d.event, d.source.partition, d.source.offset, d.event.ts_ms
        for item in dict.fromkeys(ev.item_ids):  # an item listed twice counts once
            stats[item].append({"p": p, "o": off, "type": ev.type, "ts": ts})
        w = TYPE_WEIGHTS[ev.type]
        if w > 0:
            trending.append({"p": p, "o": off, "item": ev.item_id, "ts": ts, "w": w})
            # Forward co-visitation: each earlier item of the session gains this one as "next".
            for prev in o.neighbours:
                covis[prev].append({"p": p, "o": off, "next": ev.item_id, "ts": ts, "w": w})
    calls = []
    for item in stats.keys() | covis.keys():
        calls.append((keys.item_base(item), json.dumps({"stats": stats.get(item, []),
                                                         "covis": covis.get(item, [])})))
    if trending:
        calls.append((keys.trending_base, json.dumps({"events": trending})))
    return calls


def decayed(value: float, landmark_ms: float, now_ms: float, half_life_ms: float) -> float:
    """The value of a forward-decayed quantity at `now_ms` (see `streamrec.stream.keys`).

    >>> round(decayed(8.0, 0, 2 * 3600_000, 3600_000), 3)
    2.0
    """
    return value * math.pow(2.0, -(now_ms - landmark_ms) / half_life_ms)


def expected_decayed(events: Iterable[tuple[float, float]], now_ms: float, half_life_ms: float) -> float:
    """Direct computation of a decayed sum from (event time, weight) pairs: the reference
    the store must match, whatever the order the events came in."""
    return sum(w * math.pow(2.0, -(now_ms - t) / half_life_ms) for t, w in events)
