"""Training data replayed from a real events topic between two times, with the offsets it read."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from streamrec.stream.topics import EVENTS
from streamrec.trainer.data import DataError
from streamrec.trainer.replay import replay_events

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000


def test_replay_between_two_times_keeps_event_time_and_offsets(fresh_settings):
    producer = Producer({"bootstrap.servers": fresh_settings.kafka_bootstrap})
    topic = fresh_settings.topic(EVENTS)
    for i in range(30):
        ev = {"event_id": f"e{i}", "type": "view", "user_id": f"u{i % 3}", "item_id": f"i{i % 7}",
              "ts": T0 + i * 60_000}
        producer.produce(topic, key=ev["user_id"], value=json.dumps(ev).encode())
    producer.produce(topic, key=b"u0", value=b'{"not": "an event"}')
    producer.flush(10)

    inter = replay_events(fresh_settings, since=T0 + 10 * 60_000, until="2026-01-01T00:19:00Z")
    assert len(inter) == 10 and inter.ts.min() == T0 + 600_000 and inter.ts.max() == T0 + 19 * 60_000
    parts = inter.kafka_offsets["partitions"]
    assert inter.kafka_offsets["topic"] == topic and parts
    assert sum(p["last"] - p["first"] + 1 for p in parts.values()) == 31  # everything up to the end was read

    assert len(replay_events(fresh_settings)) == 30
    with pytest.raises(DataError, match="no events between"):
        replay_events(fresh_settings, since="2030-01-01T00:00:00Z")
