"""The worker's writes replayed in memory, read through the scorer's reader interface, on hand-made histories.

What the in-memory state must equal is the worker's Redis; that is checked against a real worker
in tests/integration/test_served_replay.py. Here: the rules, one by one, computed by hand.
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

from streamrec.serving import features as serving_features
from streamrec.serving.memory_features import MemoryFeatureReader
from streamrec.stream import memory_store
from streamrec.stream.features import expected_decayed
from streamrec.stream.keys import FeatureConfig
from streamrec.stream.memory_store import MemoryFeatureStore
from streamrec.stream.schemas import EVENT_CLASSES, ScoreRequest

T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 60 * MIN
_ids = itertools.count()


def ev(kind: str, user: str, item: str, ts: int, session: str | None = None):
    what = {"items": [item]} if kind == "impression" else {"item_id": item}
    return EVENT_CLASSES[kind](event_id=f"e{next(_ids)}", user_id=user, ts=ts, session_id=session, **what)


def replay(events, categories=None, **config) -> tuple[MemoryFeatureStore, list[ScoreRequest]]:
    store = MemoryFeatureStore(FeatureConfig(**config), categories)
    return store, [store.apply(e) for e in events]


def test_docstring_examples():
    for module in (memory_store, serving_features):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_sessions_follow_the_workers_gap_rule_and_named_sessions_are_kept():
    store, reqs = replay([ev("view", "u", "a", T0), ev("view", "u", "b", T0 + 30 * MIN),  # a gap of exactly 30 min
                          ev("view", "u", "c", T0 + 61 * MIN),  # 31 min: a new session
                          ev("view", "v", "a", T0, session="web-1"), ev("view", "v", "b", T0 + 5 * HOUR, "web-1")])
    assert [r.session_id for r in reqs] == [f"s{T0}", f"s{T0}", f"s{T0 + 61 * MIN}", "web-1", "web-1"]
    assert [r.feature_version for r in reqs] == [1, 2, 3, 1, 2]
    (ctx,), _ = MemoryFeatureReader(store, history_items=5).contexts([reqs[2]], 5)
    assert ctx.session_items == ["c"] and ctx.history == ["a", "b"] and ctx.seen == {"c"}
    assert ctx.session_positive == 1 and ctx.user_positive == 3 and ctx.known


def test_events_out_of_time_order_are_refused():
    store = MemoryFeatureStore()
    store.apply(ev("view", "u", "a", T0 + MIN))
    with pytest.raises(ValueError, match="older than user u's newest"):
        store.apply(ev("view", "u", "b", T0))


def test_session_sequence_order_cap_and_what_is_never_recommended_again():
    events = [ev("purchase", "u", "tv", T0 - 5 * HOUR)]  # bought in an earlier session
    events += [ev("view", "u", f"i{k:02d}", T0 + k * 1000) for k in range(60)]  # past the cap of 50 members
    events += [ev("view", "u", "z", T0 + 60_000), ev("view", "u", "y", T0 + 60_000),  # a tie: bytes order y < z
               ev("view", "u", "i55", T0 + 61_000), ev("skip", "u", "s", T0 + 62_000),
               ev("impression", "u", "shown", T0 + 63_000)]
    store, reqs = replay(events)
    (ctx,), _ = MemoryFeatureReader(store).contexts([reqs[-1]], 5)
    # 64 members with an item, the newest 50 kept: i14.. (i55 moved to its latest position), then y, z, s.
    assert ctx.session_items == [f"i{k:02d}" for k in range(14, 60) if k != 55] + ["y", "z", "i55", "s"]
    assert ctx.seen == set(ctx.session_items) | {"tv"}
    assert ctx.session_positive == 63 and ctx.user_positive == 64  # skips and impressions are not positive


def test_covisitation_links_the_sessions_previous_positive_items_with_decayed_weights():
    cfg = FeatureConfig()
    events = [ev("view", "u", "a", T0), ev("skip", "u", "s", T0 + MIN), ev("click", "u", "b", T0 + 2 * MIN),
              ev("view", "u", "a", T0 + 3 * MIN),  # a again: a -> a is no link, b -> a is
              ev("purchase", "u", "c", T0 + 4 * MIN),
              ev("view", "w", "b", T0 + HOUR), ev("view", "w", "c", T0 + HOUR + MIN)]
    store, reqs = replay(events)
    now = T0 + 3 * 86_400_000
    covis = MemoryFeatureReader(store).covisitation(["a", "b", "s", "c"], 10, now)
    hl = cfg.covis_half_life_ms
    assert [m for m, _ in covis["a"]] == ["c", "b"]  # purchase weighs 5, click 2
    assert dict(covis["a"]) == pytest.approx({"b": expected_decayed([(T0 + 2 * MIN, 2.0)], now, hl),
                                              "c": expected_decayed([(T0 + 4 * MIN, 5.0)], now, hl)}, rel=1e-12)
    assert dict(covis["b"]) == pytest.approx({
        "c": expected_decayed([(T0 + 4 * MIN, 5.0), (T0 + HOUR + MIN, 1.0)], now, hl),
        "a": expected_decayed([(T0 + 3 * MIN, 1.0)], now, hl)}, rel=1e-12)
    assert covis["s"] == [] and covis["c"] == []  # a skip is never a previous item; c has no successor


def test_only_the_five_newest_distinct_previous_items_are_linked():
    events = [ev("view", "u", f"p{k}", T0 + k * MIN) for k in range(7)] + [ev("view", "u", "x", T0 + 10 * MIN)]
    store, _ = replay(events)
    linked = {p for p, c in store.covis.items() if "x" in c.values}
    assert linked == {"p2", "p3", "p4", "p5", "p6"}


def test_trending_orders_by_decayed_weight_across_a_rescale():
    cfg = FeatureConfig()
    hl = cfg.trending_half_life_ms
    events = [ev("view", "u", "old", T0), ev("purchase", "u", "old", T0 + MIN)]
    events += [ev("view", f"v{k}", "new", T0 + 50 * HOUR + k * MIN) for k in range(3)]  # 50 h: past 40 half-lives
    events += [ev("click", "w", "mid", T0 + 50 * HOUR + 5 * MIN)]
    store, _ = replay(events)
    assert store.trending.landmark == T0 + 50 * HOUR  # the landmark moved
    _, trending = MemoryFeatureReader(store).contexts([], 10)
    assert [i for i, _ in trending] == ["new", "mid", "old"]
    now = T0 + 51 * HOUR
    want = {"new": expected_decayed([(T0 + 50 * HOUR + k * MIN, 1.0) for k in range(3)], now, hl),
            "mid": expected_decayed([(T0 + 50 * HOUR + 5 * MIN, 2.0)], now, hl),
            "old": expected_decayed([(T0, 1.0), (T0 + MIN, 5.0)], now, hl)}
    factor = math.pow(2, -(now - store.trending.landmark) / hl)  # raw scores are at the landmark's scale
    assert {i: s * factor for i, s in trending} == pytest.approx(want, rel=1e-9)


def test_item_stats_count_every_event_type_and_categories_come_from_the_catalog():
    events = [ev("view", "u", "a", T0), ev("click", "u", "a", T0 + MIN), ev("impression", "u", "a", T0 + 2 * MIN),
              ev("impression", "u", "b", T0 + 2 * MIN), ev("rating", "v", "a", T0 + 3 * MIN)]
    store, _ = replay(events, categories={"a": "books"})
    stats = MemoryFeatureReader(store).item_stats(["a", "b", "never"])
    assert stats.views.tolist() == [3.0, 0.0, 0.0]  # every positive interaction
    assert stats.clicks.tolist() == [1.0, 0.0, 0.0] and stats.impressions.tolist() == [1.0, 1.0, 0.0]
    assert stats.last_ts[:2].tolist() == [T0 + 3 * MIN, T0 + 2 * MIN] and np.isnan(stats.last_ts[2])
    assert stats.categories == ["books", "", ""] and not stats.removed.any()
    assert MemoryFeatureReader(store).item_stats(["a"], with_stats=False).views.tolist() == [0.0]


def test_category_affinity_is_the_decayed_share_of_positive_weight():
    hl = FeatureConfig().affinity_half_life_ms
    events = [ev("view", "u", "a", T0), ev("purchase", "u", "b", T0 + 86_400_000), ev("skip", "u", "a", T0 + 2),
              ev("view", "u", "c", T0 + 2 * 86_400_000)]  # c has no category: no affinity
    events.sort(key=lambda e: e.ts)
    store, reqs = replay(events, categories={"a": "books", "b": "games"})
    (ctx,), _ = MemoryFeatureReader(store).contexts([reqs[-1]], 1)
    books = expected_decayed([(T0, 1.0)], T0, hl)
    games = expected_decayed([(T0 + 86_400_000, 5.0)], T0, hl)
    assert ctx.affinity == pytest.approx({"books": books / (books + games), "games": games / (books + games)})


def test_a_user_never_seen_is_cold():
    store, _ = replay([ev("view", "u", "a", T0)])
    request = ScoreRequest(event_id="x", user_id="stranger", session_id="s1", item_id="a", type="view", ts=T0,
                           feature_version=1)
    (ctx,), trending = MemoryFeatureReader(store, history_items=3).contexts([request], 5)
    assert not ctx.known and ctx.session_items == [] and ctx.history == [] and trending == [("a", 1.0)]
