"""The Python decoder and the shipped JSON Schema accept exactly the same events."""

from __future__ import annotations

import json
import string
from datetime import datetime

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from streamrec.stream import schemas
from streamrec.stream.schemas import EventError, decode_event

VALIDATOR = jsonschema.Draft202012Validator(schemas.shipped_event_schema())
ID_ALPHABET = string.ascii_letters + string.digits + "-_:.@é中"

ids = st.text(ID_ALPHABET, min_size=1, max_size=40)
epoch_ms = st.integers(schemas.MIN_TS_MS, schemas.MAX_TS_MS - 1)
iso_ts = st.builds(
    lambda dt, zone, frac: dt.replace(tzinfo=None).isoformat(timespec="microseconds" if frac else "seconds") + zone,
    # Local times: 2000-01-01T00:00+05:30 is still 1999 in UTC, below MIN_TS_MS (found by hypothesis).
    st.datetimes(min_value=datetime(2000, 1, 1, 6), max_value=datetime(2099, 12, 31)),
    st.sampled_from(["Z", "+00:00", "+05:30", "-08:00"]),
    st.booleans(),
)
context = st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=10),
                          st.one_of(st.text(max_size=20), st.booleans(), st.none(),
                                    st.floats(allow_nan=False, allow_infinity=False, width=32)),
                          max_size=16)


@st.composite
def valid_events(draw) -> dict:
    kind = draw(st.sampled_from(schemas.EVENT_TYPES))
    ev = {"event_id": draw(ids), "type": kind, "user_id": draw(ids), "ts": draw(st.one_of(epoch_ms, iso_ts))}
    if kind == "impression":
        ev["items"] = draw(st.lists(ids, min_size=1, max_size=20))
    else:
        ev["item_id"] = draw(ids)
    optional = {
        "session_id": ids, "rec_id": ids, "position": st.integers(0, 10_000),
        "dwell_ms": st.integers(0, 86_400_000), "value": st.floats(-1e6, 1e6, allow_nan=False),
        "context": context,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        ev[name] = draw(optional[name])
    return ev


WRONG_TYPES = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.just("k"), st.integers(), max_size=1),
                        st.booleans())


@st.composite
def invalid_events(draw) -> tuple[dict, str]:
    """A valid event with exactly one thing broken; returns (event, the field at fault)."""
    ev = draw(valid_events())
    item_field = "items" if ev["type"] == "impression" else "item_id"
    how = draw(st.sampled_from(["missing", "wrong_type", "unknown_field", "bad_ts", "bad_type",
                                "empty_id", "negative_position", "big_context", "whitespace_id"]))
    if how == "missing":
        field = draw(st.sampled_from(["event_id", "user_id", "ts", "type", item_field]))
        del ev[field]
    elif how == "wrong_type":
        field = draw(st.sampled_from(["event_id", "user_id", "ts", item_field, "position", "session_id"]))
        ev[field] = draw(WRONG_TYPES) if field != item_field or item_field == "item_id" else draw(
            st.one_of(st.text(min_size=1), st.integers()))
    elif how == "unknown_field":
        field = draw(st.text(string.ascii_lowercase, min_size=3, max_size=12).filter(
            lambda f: f not in schemas.Impression.__struct_fields__ and f != "type"))
        ev[field] = 1
    elif how == "bad_ts":
        field = "ts"
        ev["ts"] = draw(st.one_of(st.integers(max_value=schemas.MIN_TS_MS - 1),
                                  st.integers(min_value=schemas.MAX_TS_MS),
                                  st.sampled_from(["yesterday", "2026-01-01", "2026-01-01T10:00:00",
                                                   "1999-12-31T23:59:59Z", "2026-13-01T00:00:00Z"])))
    elif how == "bad_type":
        field = "type"
        ev["type"] = draw(st.text(string.ascii_lowercase, max_size=10).filter(lambda t: t not in schemas.EVENT_TYPES))
    elif how == "empty_id":
        field = draw(st.sampled_from(["event_id", "user_id"]))
        ev[field] = ""
    elif how == "whitespace_id":
        field = draw(st.sampled_from(["event_id", "user_id"]))
        ev[field] = "a b"
    elif how == "negative_position":
        field = "position"
        ev["position"] = draw(st.integers(max_value=-1))
    else:
        field = "context"
        ev["context"] = {f"k{i}": i for i in range(17)}
    return ev, field


@given(valid_events())
@hsettings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_every_valid_event_passes_both(ev):
    VALIDATOR.validate(ev)
    decoded = decode_event(json.dumps(ev).encode())
    assert decoded.type == ev["type"]
    assert decoded.user_id == ev["user_id"]
    assert schemas.MIN_TS_MS <= decoded.ts_ms < schemas.MAX_TS_MS + 86_400_000


@given(invalid_events())
@hsettings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_every_invalid_event_fails_both_and_names_the_field(case):
    ev, field = case
    assert not VALIDATOR.is_valid(ev), f"schema accepted {ev}"
    with pytest.raises(EventError) as err:
        decode_event(json.dumps(ev).encode())
    if field != "type":
        assert field in str(err.value), f"{err.value} does not name {field}"
    assert err.value.field in (field, "type") or field in str(err.value)


def test_shipped_schema_is_generated_from_the_code():
    assert schemas.shipped_event_schema() == schemas.event_json_schema(), \
        "stream/event.schema.json is stale: run `streamrec schema > stream/event.schema.json`"


GOOD = {"event_id": "e1", "type": "purchase", "user_id": "u1", "item_id": "i1", "ts": 1767225600000}


@pytest.mark.parametrize("data,reason,needle", [
    (json.dumps({**GOOD, "pad": "x" * 17000}).encode(), "too_large", "16 KiB"),
    (b'{"event_id":"\xff\xfe","type":"view"}', "not_utf8", "UTF-8"),
    (b'{"event_id": "e1", "type": "view",', "bad_json", "JSON"),
    (b"[1, 2]", "invalid", "object"),
    (json.dumps({**GOOD, "type": "like"}).encode(), "unknown_type", "expected one of"),
    (json.dumps({**GOOD, "ts": 1767225600}).encode(), "bad_ts", "epoch milliseconds"),
    (json.dumps({**GOOD, "ts": "2026-02-30T10:00:00Z"}).encode(), "bad_ts", "not a real calendar"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "missing_field", "user_id"),
    (json.dumps({**GOOD, "user_id": 7}).encode(), "invalid_field", "user_id"),
    (b'{"event_id":"e1","type":"view","user_id":"u","item_id":"i","ts":1767225600000,"value":NaN}',
     "bad_json", "JSON"),
])
def test_bad_input_has_a_reason_and_a_fix(data, reason, needle):
    with pytest.raises(EventError) as err:
        decode_event(data)
    assert err.value.reason == reason
    assert needle in str(err.value)


def test_iso_and_epoch_timestamps_mean_the_same_instant():
    iso = decode_event(json.dumps({**GOOD, "ts": "2026-01-01T00:00:00Z"}).encode())
    ms = decode_event(json.dumps({**GOOD, "ts": 1767225600000}).encode())
    offset = decode_event(json.dumps({**GOOD, "ts": "2026-01-01T01:00:00+01:00"}).encode())
    assert iso.ts_ms == ms.ts_ms == offset.ts_ms == 1767225600000


def test_recommendation_round_trip():
    rec = schemas.Recommendation(
        rec_id="r1", user_id="u1", session_id="s1", trigger_event_id="e1",
        items=[schemas.RecommendedItem(item_id="i2", score=0.9, propensity=0.5, reason="seq")],
        models=["ranker@3"], variant="A", event_ts=1, created_ts=2)
    assert schemas.recommendation_decoder.decode(schemas.encode(rec)) == rec


def test_impression_needs_items_not_item_id():
    ev = {**GOOD, "type": "impression"}
    with pytest.raises(EventError) as err:
        decode_event(json.dumps(ev).encode())
    assert err.value.field in ("items", "item_id")
    decoded = decode_event(json.dumps({**{k: v for k, v in ev.items() if k != "item_id"},
                                       "items": ["a", "b"]}).encode())
    assert decoded.item_ids == ("a", "b")
