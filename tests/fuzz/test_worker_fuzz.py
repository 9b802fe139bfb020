"""The real worker against 100,000 generated malformed events mixed with valid ones, on the
real Kafka and Redis: it never stops, every malformed record is in `events.dlq` with a
reason and the field at fault, and the valid events are applied exactly as the
reference computation says."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from streamrec.stream import topics
from streamrec.harness.bench.features import _free_port, start_worker, stop_worker
from streamrec.stream.keys import Keys
from streamrec.stream.schemas import _printable
from streamrec.stream.synthetic import Record

from ..integration.helpers import (check_counters, check_outputs, output_count, publish, read_topic, reference,
                                   wait_outputs)
from .strategies import fuzz_stream

pytestmark = [pytest.mark.fuzz, pytest.mark.integration]
# Just under the producers' default message.max.bytes (1,000,000): the dead letter adds headers.
NEAR_KAFKA_LIMIT = 999_700


def as_bytes(key) -> bytes | None:
    return (key.encode() if isinstance(key, str) else key) or None  # Kafka has no empty key


def near_limit_records() -> list[Record]:
    """Records the broker accepts but that are far over the event limit, one with a big key too."""
    return [Record(key="big-1", value=b"{" + b" " * (NEAR_KAFKA_LIMIT - 2) + b"}", kind="malformed"),
            Record(key=b"k" * 20_000, value=b"[" * (NEAR_KAFKA_LIMIT - 20_000), kind="malformed")]


@pytest.mark.parametrize("engine,malformed", [("faust", 100_000), ("confluent", 20_000)])
def test_worker_dead_letters_every_malformed_event_and_applies_the_valid_ones(fresh_settings, redis, engine,
                                                                              malformed):
    s = fresh_settings
    clock = time.monotonic()
    records, cases = fuzz_stream(malformed, valid_per_malformed=0.1, seed=len(engine))
    records = records[:100] + near_limit_records() + records[100:]
    exp = reference(records)
    assert sum(exp.dead.values()) == malformed + 2, "every generated case must be malformed"
    assert len(exp.answered) > malformed // 20
    generated = time.monotonic()
    publish(s, records)
    published = time.monotonic()
    port = _free_port()
    proc = start_worker(s, port=port, engine=engine)
    started = time.monotonic()
    try:
        assert wait_outputs(s, exp.outputs, timeout=400) == exp.outputs
        drained = time.monotonic()
        assert proc.poll() is None, "the worker stopped"
        assert output_count(s) == exp.outputs
    finally:
        assert stop_worker(proc) == 0, "the worker must still stop cleanly on SIGTERM"
    print(f"\n{engine}: {len(records)} records ({malformed} malformed): generate+reference "
          f"{generated - clock:.1f} s, publish {published - generated:.1f} s, worker start "
          f"{started - published:.1f} s, drain {drained - started:.1f} s "
          f"({len(records) / (drained - started):.0f} records/s)")
    check_outputs(s, exp, records)  # one score request per valid event, dead letters by reason
    check_counters(redis, Keys(s.redis_prefix), exp)

    # Each dead letter keeps the original key and bytes and names the field the generator broke.
    dead = read_topic(s, topics.EVENTS_DLQ)
    got = Counter()
    for m in dead:
        headers = dict(m.headers())
        assert headers[topics.DLQ_TOPIC].decode() == s.topic(topics.EVENTS)
        field = headers.get(topics.DLQ_FIELD)
        detail = headers[topics.DLQ_DETAIL].decode()
        named = "event" if field is None else _printable(field.decode())[:40]
        assert detail.startswith(named) and len(detail) <= 4000, (field, detail[:200])
        if m.value() is not None and len(m.value()) > 100_000:
            got[("near-limit", headers[topics.DLQ_REASON])] += 1
            continue
        got[(m.key() or None, m.value(), None if field is None else field.decode())] += 1
    want = Counter((as_bytes(c.key), c.value, None if c.field is None else c.field[:256]) for c in cases)
    want[("near-limit", b"too_large")] = 2
    assert got == want
