"""Pure planning of feature writes: grouping, ordering, exclusions."""

from __future__ import annotations

import doctest
import json

import pytest

import streamrec.stream.features as features
import streamrec.stream.schemas as schemas
import streamrec.stream.synthetic as synthetic
from streamrec.stream.features import DecodedEvent, Outcome, SourceEvent
from streamrec.stream.keys import Keys

T0 = 1_767_225_600_000
KEYS = Keys("p:")


def dec(ev: dict, partition: int, offset: int) -> DecodedEvent:
    data = json.dumps(ev).encode()
    return DecodedEvent(SourceEvent("events", partition, offset, None, data, T0), schemas.decode_event(data))


def ev(i, user, item, type="view", **kw):
    return {"event_id": f"e{i}", "type": type, "user_id": user, "item_id": item, "ts": T0 + i, **kw}


@pytest.mark.parametrize("module", [features, schemas, synthetic])
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


def test_user_calls_group_by_user_in_batch_order():
    batch = [dec(ev(1, "a", "x"), 0, 1), dec(ev(2, "b", "y"), 1, 1), dec(ev(3, "a", "z"), 0, 2)]
    calls = features.user_calls(batch, KEYS)
    assert [(key, idx) for key, _, idx in calls] == [("p:{u:a}", [0, 2]), ("p:{u:b}", [1])]
    events = json.loads(calls[0][1])
    assert [e["id"] for e in events] == ["e1", "e3"] and events[0]["src"] == "0:1"


def test_item_calls_skip_refused_events_and_keep_offset_order():
    batch = [dec(ev(3, "a", "x", "click"), 0, 7), dec(ev(1, "b", "x"), 0, 5), dec(ev(2, "c", "y"), 1, 2)]
    outcomes = [Outcome("applied", neighbours=["w"]), Outcome("dup"), Outcome("too_late")]
    calls = dict(features.item_calls(batch, outcomes, KEYS))
    stats_x = json.loads(calls["p:{i:x}"])["stats"]
    assert [s["o"] for s in stats_x] == [7]
    assert "p:{i:y}" not in calls
    covis = json.loads(calls["p:{i:w}"])["covis"]
    assert covis == [{"p": 0, "o": 7, "next": "x", "ts": T0 + 3, "w": 2.0}]
    trending = json.loads(calls["p:{trending}"])["events"]
    assert [t["item"] for t in trending] == ["x"]


def test_replay_with_an_applied_first_decision_feeds_items_again():
    batch = [dec(ev(1, "a", "x"), 0, 1)]
    calls = dict(features.item_calls(batch, [Outcome("replay", first="applied")], KEYS))
    assert "p:{i:x}" in calls
    assert features.item_calls(batch, [Outcome("replay", first="too_late")], KEYS) == []


def test_impression_counts_each_item_once_and_adds_no_trend():
    data = json.dumps({"event_id": "i1", "type": "impression", "user_id": "a", "items": ["x", "y", "x"],
                       "ts": T0}).encode()
    batch = [DecodedEvent(SourceEvent("events", 0, 1, None, data, T0), schemas.decode_event(data))]
    calls = dict(features.item_calls(batch, [Outcome("applied")], KEYS))
    assert sorted(calls) == ["p:{i:x}", "p:{i:y}"]
    assert len(json.loads(calls["p:{i:x}"])["stats"]) == 1


def test_lua_literal():
    assert features.lua_literal({"a": 1, "b": {"c": 2.5}, "d": "x\"y"}) == '{a = 1, b = {c = 2.5}, d = "x\\"y"}'
