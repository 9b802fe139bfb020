"""Reward joining: out-of-order and duplicate interactions, late drops, bounded memory, checkpoints."""

from __future__ import annotations

import doctest
import json
import random

from streamrec.online import joiner
from streamrec.online.joiner import JoinConfig, Joiner


def rec(rid: str, ts: int, items=("a", "b", "c"), variant="v"):
    return {"rec_id": rid, "user_id": "u", "session_id": "s", "variant": variant, "created_ts": ts,
            "trigger_event_id": f"t-{rid}",
            "items": [{"item_id": i, "propensity": 0.5, "score": 1.0, "reason": "seq"} for i in items]}


def ev(eid: str, kind: str, rid: str | None, pos: int | None, item: str, ts: int):
    return {"event_id": eid, "type": kind, "user_id": "u", "item_id": item, "ts": ts, "rec_id": rid,
            "position": pos}


def test_doctests():
    assert doctest.testmod(joiner).failed == 0


def test_rewards_weighted_by_type_and_position():
    j = Joiner(JoinConfig(window_ms=100))
    j.add_recommendation(rec("r1", 0))
    j.add_interaction(ev("e1", "click", "r1", 2, "c", 5))
    j.add_interaction(ev("e2", "add_to_cart", "r1", 2, "c", 6))
    j.add_interaction(ev("e3", "purchase", "r1", 2, "c", 7))
    j.add_interaction(ev("e4", "skip", "r1", 0, "a", 8))
    j.add_interaction(ev("e5", "view", None, None, "z", 101))
    out = j.add_recommendation(rec("r9", 200))  # both topics past r1's window
    assert [s.rewards for s in out] == [[0.0, 0.0, 8.0]]
    assert j.counts["reward:click"] == 1 and j.counts["reward:purchase"] == 1 and j.counts["reward:skip"] == 1


def test_interaction_before_its_recommendation_is_joined():
    j = Joiner(JoinConfig(window_ms=100))
    j.add_interaction(ev("e1", "click", "r1", 1, "b", 10))
    j.add_recommendation(rec("r1", 5))
    assert [s.rewards for s in j.flush()] == [[0.0, 1.0, 0.0]]


def test_duplicates_count_once():
    j = Joiner(JoinConfig(window_ms=100))
    j.add_recommendation(rec("r1", 0))
    for _ in range(3):
        j.add_interaction(ev("e1", "click", "r1", 0, "a", 5))
    j.add_interaction(ev("e9", "click", "r1", 0, "a", 6))  # same click re-sent with a new id
    j.add_recommendation(rec("r1", 0))  # replayed recommendation
    assert [s.rewards for s in j.flush()] == [[1.0, 0.0, 0.0]]
    assert j.counts["duplicates"] == 3 and j.counts["duplicate_recommendations"] == 1


def test_late_interactions_are_counted_and_dropped():
    j = Joiner(JoinConfig(window_ms=100))
    j.add_recommendation(rec("r1", 0))
    j.add_recommendation(rec("r2", 150))
    closed = j.add_interaction(ev("e1", "click", "r1", 0, "a", 160))  # r1 closed at watermark 150
    assert [s.rec_id for s in closed] == ["r1"] and j.counts["late"] == 1
    j.add_interaction(ev("e2", "click", "r2", 0, "a", 240))  # inside r2's window
    j.add_interaction(ev("e3", "click", "r2", 1, "b", 30))  # older than watermark - window
    assert [s.rewards for s in j.flush()] == [[1.0, 0.0, 0.0]]
    assert j.counts["late"] == 2
    # A click whose slate never arrives is dropped as late once the window passes.
    j2 = Joiner(JoinConfig(window_ms=100))
    j2.add_interaction(ev("e1", "click", "ghost", 0, "a", 0))
    j2.add_interaction(ev("e2", "view", None, None, "a", 500))
    j2.add_recommendation(rec("r5", 500))
    assert not j2.pending and j2.counts["late"] == 1


def test_memory_is_bounded():
    j = Joiner(JoinConfig(window_ms=10**9, max_open=50, max_pending=20, max_closed=30))
    for i in range(200):
        j.add_recommendation(rec(f"r{i}", i))
        j.add_interaction(ev(f"x{i}", "click", f"missing{i}", 0, "a", i))
    assert len(j.open) <= 50 and len(j.pending) <= 20 and len(j.closed) <= 30
    assert j.counts["evicted"] == 150 and j.counts["pending_dropped"] == 180


def _stream(n=300, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = i * 10
        out.append(("rec", rec(f"r{i}", t)))
        for k in range(rng.randint(0, 2)):
            lag = rng.randint(-15, 80)  # negative: the interaction overtakes its recommendation
            out.append(("ev", ev(f"e{i}-{k}", rng.choice(["click", "add_to_cart", "purchase"]), f"r{i}",
                                 rng.randint(0, 2), None, t + lag)))
    # out of order: shuffle locally
    for i in range(0, len(out) - 3, 3):
        if rng.random() < 0.5:
            out[i], out[i + 2] = out[i + 2], out[i]
    return out


def _feed(j, records):
    got = []
    for kind, r in records:
        got += j.add_recommendation(r) if kind == "rec" else j.add_interaction({**r, "item_id": None})
    return got


def test_checkpoint_restart_neither_loses_nor_double_counts():
    records = _stream()
    ref = Joiner(JoinConfig(window_ms=100))
    expected = _feed(ref, records) + ref.flush()
    a = Joiner(JoinConfig(window_ms=100))
    first = _feed(a, records[:217])
    state = json.loads(json.dumps(a.state()))  # through JSON, as on disk
    b = Joiner.from_state(state, JoinConfig(window_ms=100))
    rest = _feed(b, records[217:]) + b.flush()
    assert [(s.rec_id, s.rewards) for s in first + rest] == [(s.rec_id, s.rewards) for s in expected]
    assert b.counts == ref.counts
    assert sum(s.reward for s in expected) > 0


def test_one_topic_read_far_ahead_of_the_other_loses_nothing():
    records = _stream(100, seed=5)
    ref = Joiner(JoinConfig(window_ms=100))
    expected = _feed(ref, records) + ref.flush()
    ahead = Joiner(JoinConfig(window_ms=100))
    got = _feed(ahead, [r for r in records if r[0] == "ev"] + [r for r in records if r[0] == "rec"]) + ahead.flush()
    assert sorted((s.rec_id, s.rewards) for s in got) == sorted((s.rec_id, s.rewards) for s in expected)


def impression(eid: str, rid: str, ts: int, items=("a", "b", "c")):
    return {"event_id": eid, "type": "impression", "user_id": "u", "items": list(items), "rec_id": rid, "ts": ts}


def test_an_impression_or_an_interaction_marks_a_slate_shown_and_adds_no_reward():
    j = Joiner(JoinConfig(window_ms=100))
    j.add_interaction(impression("i0", "r1", 3))  # before its recommendation: waits in pending
    for rid in ("r1", "r2", "r3"):
        j.add_recommendation(rec(rid, 0))
    j.add_interaction(impression("i2", "r2", 4))
    j.add_interaction(ev("e3", "click", "r3", 1, "b", 5))  # clicked without an impression: shown all the same
    j.add_interaction(ev("e4", "view", None, None, "z", 201))
    closed = {s.rec_id: s for s in j.add_recommendation(rec("r9", 200))}
    assert {rid: (s.shown, s.rewards) for rid, s in closed.items()} == {
        "r1": (True, [0.0, 0.0, 0.0]), "r2": (True, [0.0, 0.0, 0.0]), "r3": (True, [0.0, 1.0, 0.0])}
    assert j.counts["impressions"] == 2 and j.counts["joined"] == 1
    j.add_interaction(impression("i9", "r1", 250))  # its slate is closed: late
    assert j.counts["late"] == 1
    assert not j.flush()[0].shown  # r9: nobody said it was displayed


def test_shown_survives_a_checkpoint():
    j = Joiner(JoinConfig(window_ms=100))
    j.add_recommendation(rec("r1", 0))
    j.add_interaction(impression("i1", "r1", 2))
    again = Joiner.from_state(json.loads(json.dumps(j.state())), JoinConfig(window_ms=100))
    assert again.flush()[0].shown and again.counts["impressions"] == 1
