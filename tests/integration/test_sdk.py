"""The SDK round trip through a real broker."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from streamrec.stream import schemas, topics
from streamrec.stream.schemas import EventError
from streamrec.stream.sdk import EventPublisher, PublishError, RecommendationConsumer

from .helpers import read_topic

pytestmark = pytest.mark.integration


def test_every_event_type_goes_through_the_broker_keyed_by_user(fresh_settings):
    with EventPublisher(fresh_settings) as pub:
        ids = [
            pub.view("u1", "i1", session_id="s1", context={"device": "mobile"}),
            pub.click("u1", "i1", rec_id="r1", position=2),
            pub.add_to_cart("u2", "i2"),
            pub.purchase("u2", "i2", value=19.99),
            pub.skip("u3", "i3"),
            pub.rating("u3", "i3", 4.5),
            pub.impression("u3", ["i4", "i5"], ts="2026-01-01T10:00:00Z"),
        ]
    assert pub.delivered == 7
    msgs = read_topic(fresh_settings, topics.EVENTS)
    decoded = {schemas.decode_event(m.value()).event_id: (m.key(), schemas.decode_event(m.value())) for m in msgs}
    assert set(decoded) == set(ids)
    key, click = decoded[ids[1]]
    assert key == b"u1" and click.type == "click" and click.rec_id == "r1" and click.position == 2
    assert decoded[ids[6]][1].item_ids == ("i4", "i5")
    # One user's events share a partition, so their order is kept.
    parts = {m.key(): set() for m in msgs}
    for m in msgs:
        parts[m.key()].add(m.partition())
    assert all(len(p) == 1 for p in parts.values())


def test_invalid_events_are_refused_before_they_leave(fresh_settings):
    with EventPublisher(fresh_settings) as pub:
        with pytest.raises(EventError, match="ts"):
            pub.view("u1", "i1", ts=123)
        with pytest.raises(EventError, match="type"):
            pub.publish("like", user_id="u1", item_id="i1")
        with pytest.raises(EventError, match="items"):
            pub.view("u1", "i1", items=["x"])
        with pytest.raises(EventError, match="user_id"):
            pub.view("", "i1")
    assert pub.delivered == 0


def test_delivery_failures_are_surfaced(fresh_settings):
    # A topic that does not exist (auto-create is off) cannot take the event.
    pub = EventPublisher(fresh_settings, **{"message.timeout.ms": 2000})
    pub.topic = fresh_settings.topic("no-such-topic")
    pub.view("u1", "i1")
    with pytest.raises(PublishError, match="1 event"):
        pub.flush(timeout=10)


def test_wait_for_finds_the_answer_among_others(fresh_settings):
    def rec(trigger: str) -> bytes:
        return schemas.encode(schemas.Recommendation(
            rec_id=f"r-{trigger}", user_id="u1", session_id="s1", trigger_event_id=trigger,
            items=[schemas.RecommendedItem(item_id="i9", score=0.5, propensity=1.0, reason="trending")]))

    with RecommendationConsumer(fresh_settings) as recs:
        producer = Producer({"bootstrap.servers": fresh_settings.kafka_bootstrap})
        for trigger in ("e1", "e2", "e3"):
            producer.produce(fresh_settings.topic(topics.RECOMMENDATIONS), rec(trigger), key="u1")
        producer.flush(10)
        assert recs.wait_for("e3", timeout=20).rec_id == "r-e3"
        assert recs.wait_for("e1", timeout=1).rec_id == "r-e1"  # kept while waiting for e3
        assert recs.poll(1).trigger_event_id == "e2"
        with pytest.raises(TimeoutError, match="e4"):
            recs.wait_for("e4", timeout=1)
