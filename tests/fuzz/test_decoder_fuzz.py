"""The event decoder against 100,000+ generated malformed events: each is refused with an
`EventError` naming the field at fault, and nothing else ever escapes."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings as hsettings

from streamrec.stream import schemas
from streamrec.stream.schemas import EventError, decode_event

from .strategies import KINDS, Malformed, malformed_event, malformed_events, valid_event

pytestmark = pytest.mark.fuzz
# Whole-record faults have no field; each of these reasons says which one it was.
RECORD_REASONS = {"bad_json", "not_utf8", "too_large", "empty", "invalid", "too_deep"}
FIELD_REASONS = {"missing_field", "unknown_field", "unknown_type", "bad_ts", "invalid_field", "duplicate_key",
                 "too_deep"}


def refusal(case: Malformed) -> EventError:
    """Decode a malformed case; anything but an EventError propagates and fails the test."""
    try:
        ev = decode_event(case.value)
    except EventError as err:
        return err
    raise AssertionError(f"{case.kind} accepted: {case.value[:300]!r} -> {ev!r}")


def check_names_the_field(case: Malformed, err: EventError) -> None:
    message = str(err)
    if case.field is None:
        assert err.field is None and err.reason in RECORD_REASONS, (case.kind, err.reason, message[:200])
        assert message.startswith("event"), message[:200]
        return
    assert err.field == case.field, f"{case.kind}: expected field {case.field!r}, got {err.field!r}: {message[:200]}"
    assert err.reason in FIELD_REASONS, (case.kind, err.reason, message[:200])
    named = schemas._printable(case.field)
    assert message.startswith(named), f"message does not start with the field {named!r}: {message[:200]}"
    assert message.isprintable() and len(message) < 1000, repr(message[:300])


def test_100k_malformed_events_are_refused_naming_the_field():
    rnd = random.Random(20261128)
    kinds, reasons = Counter(), Counter()
    slowest = 0.0
    for _ in range(100_000):
        case = malformed_event(rnd)
        started = time.perf_counter()
        err = refusal(case)
        slowest = max(slowest, time.perf_counter() - started)
        check_names_the_field(case, err)
        kinds[case.kind] += 1
        reasons[err.reason] += 1
    assert set(kinds) == set(KINDS)
    assert sum(kinds.values()) == 100_000
    print(f"\nmalformed kinds: {dict(kinds)}\nreasons: {dict(reasons)}\nslowest decode: {slowest * 1e3:.2f} ms")


@given(malformed_events())
@hsettings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_every_malformed_event_names_its_field(case):
    check_names_the_field(case, refusal(case))


def test_mutations_start_from_events_that_are_valid():
    rnd = random.Random(3)
    for _ in range(2000):
        ev = valid_event(rnd)
        assert decode_event(json.dumps(ev).encode()).type == ev["type"]
        assert decode_event(json.dumps(ev, ensure_ascii=False).encode()).type == ev["type"]


GOOD = '"event_id": "e1", "type": "view", "user_id": "u1", "item_id": "i1", "ts": 1767225600000'


@pytest.mark.parametrize("text,field,where", [
    ('{%s, "user_id": "u2"}' % GOOD, "user_id", "user_id: duplicate key"),
    ('{"type": "click", %s}' % GOOD, "type", "type: duplicate key"),
    ('{%s, "ts": "garbage"}' % GOOD, "ts", "ts: duplicate key"),
    ('{%s, "context": {"device": "web", "device": "app"}}' % GOOD, "context", "context.device: duplicate key"),
])
def test_duplicate_keys_are_refused_naming_the_key(text, field, where):
    # msgspec (like Python's json) keeps the last value silently, other parsers the first.
    with pytest.raises(EventError) as err:
        decode_event(text.encode())
    assert (err.value.field, err.value.reason) == (field, "duplicate_key")
    assert str(err.value).startswith(where)


@pytest.mark.parametrize("char", ["\u0000", "\u0001", "\u001b", "\u007f", "\u001f"])
def test_ids_with_control_characters_are_refused(char):
    with pytest.raises(EventError) as err:
        decode_event(json.dumps({"event_id": "e1", "type": "view", "user_id": f"u{char}1", "item_id": "i1",
                                 "ts": 1767225600000}).encode())
    assert err.value.field == "user_id"


@pytest.mark.parametrize("data", [b"", b" ", b"\r\n"])
def test_an_empty_payload_says_so(data):
    with pytest.raises(EventError) as err:
        decode_event(data)
    assert err.value.reason == "empty" and "empty" in str(err.value)


def test_oversized_input_is_refused_by_size_before_parsing():
    # 1 MB of deep nesting or of invalid bytes costs no parsing: the size check comes first.
    for data in (b"[" * 1_000_000, b"\xff" * 1_000_000, b'{"a":' * 200_000):
        with pytest.raises(EventError) as err:
            decode_event(data)
        assert err.value.reason == "too_large"


def test_an_unprintable_unknown_field_is_escaped_in_the_message():
    with pytest.raises(EventError) as err:
        decode_event(('{%s, "x\\u0000\\u001b[2J": 1, "%s": 2}' % (GOOD, "k" * 500)).encode())
    assert err.value.field == "x\x00\x1b[2J"
    assert str(err.value).startswith("x\\x00\\x1b[2J: unknown field") and str(err.value).isprintable()
