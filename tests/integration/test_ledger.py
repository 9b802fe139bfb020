"""The output ledger against real Kafka: what it finds answered, and waiting for late records to land."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from streamrec.stream import topics
from streamrec.stream.ledger import OutputLedger, source_headers

pytestmark = pytest.mark.integration


def _producer(s) -> Producer:
    return Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 0, **topics.kafka_security(s)})


def test_answered_names_the_source_offsets_on_the_output_partition(fresh_settings):
    s = fresh_settings
    out = s.topic(topics.RECOMMENDATIONS)
    producer = _producer(s)
    for offset in (3, 4, 7, 9):
        producer.produce(out, value=b"r", partition=1, headers=source_headers(1, offset))
    producer.produce(out, value=b"r", partition=1, headers=source_headers(2, 5))  # another source partition
    assert producer.flush(30) == 0
    ledger = OutputLedger(s, outputs=(topics.RECOMMENDATIONS,))
    try:
        assert ledger.answered(1, 4) == {4, 7, 9}
        assert ledger.answered(1, 10) == set()
        assert ledger.answered(0, 0) == set()
    finally:
        ledger.close()


def test_wait_until_settled_returns_only_after_the_partition_stops_growing(fresh_settings):
    """A replaced producer's records can land seconds after the broker is back; the ledger must not be read
    before they have."""
    s = fresh_settings
    out = s.topic(topics.RECOMMENDATIONS)
    last_ack: list[float] = []

    def trickle() -> None:
        producer = _producer(s)
        for offset in range(8):
            producer.produce(out, value=b"r", partition=0, headers=source_headers(0, offset))
            producer.flush(30)
            last_ack.append(time.monotonic())
            time.sleep(0.4)

    writer = threading.Thread(target=trickle)
    ledger = OutputLedger(s, outputs=(topics.RECOMMENDATIONS,))
    try:
        writer.start()
        while not last_ack:  # the partition is growing
            time.sleep(0.05)
        ledger.wait_until_settled([0], quiet_s=1.5)
        landed = len(last_ack)
        writer.join()
        assert landed == 8, "it returned while records were still landing"
        assert ledger.answered(0, 0) == set(range(8))
    finally:
        writer.join()
        ledger.close()


def test_watermarks_answer_for_a_fresh_topic_and_give_up_on_a_missing_one(fresh_settings):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    s = fresh_settings
    producer = _producer(s)
    for _ in range(3):
        producer.produce(s.topic(topics.CATALOG), key=b"k", value=b"x", partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "wm", **topics.kafka_security(s)})
    try:
        assert topics.watermarks(consumer, TopicPartition(s.topic(topics.CATALOG), 0)) == (0, 3)
        started = time.monotonic()
        with pytest.raises(KafkaException):  # retried for its patience, then the error surfaces
            topics.watermarks(consumer, TopicPartition(s.topic("no-such-topic"), 0), patience_s=1.0)
        assert time.monotonic() - started >= 1.0
    finally:
        consumer.close()
