"""Client SDK for apps: publish events, read the recommendations that answer them.

>>> from streamrec.settings import Settings
>>> from streamrec.stream.sdk import EventPublisher, RecommendationConsumer
>>> settings = Settings.from_env()
>>> with RecommendationConsumer(settings) as recs, EventPublisher(settings) as pub:  # doctest: +SKIP
...     event_id = pub.view("user-1", "item-42")
...     pub.flush()
...     rec = recs.wait_for(event_id, timeout=5.0)
...     print([item.item_id for item in rec.items])
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamrec.settings import Settings
from streamrec.stream import schemas, topics
from streamrec.stream.schemas import Recommendation


class PublishError(RuntimeError):
    """The broker did not acknowledge some events; `failures` lists (event_id, error)."""

    def __init__(self, failures: list[tuple[str, str]]):
        self.failures = failures
        first = failures[0]
        super().__init__(f"{len(failures)} event(s) not delivered; first: {first[0]}: {first[1]}")


def now_ms() -> int:
    return int(time.time() * 1000)


class EventPublisher:
    """Publishes events to the `events` topic, keyed by user_id.

    Idempotent producer (no duplicates on retry, order kept per user); every
    event is validated before it leaves. Delivery failures are collected and
    raised by `flush()` / `close()`, so none passes unnoticed. A context manager
    that flushes on exit.
    """

    def __init__(self, settings: Settings, **producer_config):
        self.settings = settings
        self.topic = settings.topic(topics.EVENTS)
        self._config = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,  # a few ms of batching buys throughput; apps rarely notice
            "partitioner": "murmur2_random",  # the Java clients' choice: one user, one partition, any language
            "compression.type": "lz4",
            **topics.kafka_security(settings),
            **producer_config,
        }
        self._producer: Producer | None = None
        self._failures: list[tuple[str, str]] = []
        self.delivered = 0

    @property
    def producer(self) -> Producer:
        if self._producer is None:  # created lazily: constructing the SDK costs nothing
            self._producer = Producer(self._config)
        return self._producer

    # -- one call per event type -------------------------------------------------
    def view(self, user_id: str, item_id: str, **fields) -> str:
        return self.publish("view", user_id=user_id, item_id=item_id, **fields)

    def click(self, user_id: str, item_id: str, **fields) -> str:
        return self.publish("click", user_id=user_id, item_id=item_id, **fields)

    def add_to_cart(self, user_id: str, item_id: str, **fields) -> str:
        return self.publish("add_to_cart", user_id=user_id, item_id=item_id, **fields)

    def purchase(self, user_id: str, item_id: str, **fields) -> str:
        return self.publish("purchase", user_id=user_id, item_id=item_id, **fields)

    def skip(self, user_id: str, item_id: str, **fields) -> str:
        return self.publish("skip", user_id=user_id, item_id=item_id, **fields)

    def rating(self, user_id: str, item_id: str, value: float, **fields) -> str:
        return self.publish("rating", user_id=user_id, item_id=item_id, value=value, **fields)

    def impression(self, user_id: str, items: list[str], **fields) -> str:
        return self.publish("impression", user_id=user_id, items=list(items), **fields)

    def publish(self, type: str, **fields) -> str:
        """Validate and send one event; returns its event_id (generated if not given)."""
        fields.setdefault("event_id", uuid.uuid4().hex)
        fields.setdefault("ts", now_ms())
        cls = schemas.EVENT_CLASSES.get(type)
        if cls is None:
            raise schemas.EventError(f"type: {type!r} is not an event type; expected one of "
                                     + ", ".join(schemas.EVENT_TYPES), field="type", reason="unknown_type")
        # Round-trip through the decoder so the SDK applies exactly the broker-side rules.
        try:
            payload = schemas.encode(cls(**fields))
        except TypeError as exc:  # a field this event type does not have
            raise schemas.EventError(f"{type}: {exc}", reason="invalid_field") from None
        schemas.decode_event(payload)
        self.send_raw(payload, key=fields["user_id"], event_id=fields["event_id"])
        return fields["event_id"]

    def send_raw(self, payload: bytes, key: str | bytes | None, event_id: str = "") -> None:
        """Send bytes as they are (tests and replays use it to send bad events too)."""
        def on_delivery(err, msg, event_id=event_id):
            if err is not None:
                self._failures.append((event_id, str(err)))
            else:
                self.delivered += 1

        while True:
            try:
                self.producer.produce(self.topic, payload, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let the broker catch up
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every event to be acknowledged; raise PublishError for any that was not."""
        if self._producer is not None:
            # Short steps: a refused login or certificate (streamrec.security's error_cb) is raised
            # when a flush call returns, so the app hears of it at once rather than after `timeout`.
            deadline = time.monotonic() + timeout
            remaining = self._producer.flush(min(timeout, 0.5))
            while remaining and time.monotonic() < deadline:
                remaining = self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            if remaining:
                self._failures.append(("?", f"{remaining} event(s) still queued after {timeout} s"))
        if self._failures:
            failures, self._failures = self._failures, []
            raise PublishError(failures)

    def close(self, timeout: float = 30.0) -> None:
        """Flush (raising PublishError for anything not acknowledged), then release the producer: a producer
        left open keeps reconnecting to its brokers for as long as the process lives."""
        try:
            self.flush(timeout)
        finally:
            if self._producer is not None:
                producer, self._producer = self._producer, None
                producer.purge()  # what flush could not deliver is reported already
                producer.close()

    def __enter__(self) -> "EventPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecommendationConsumer:
    """Reads the `recommendations` topic.

    Without a ``group_id`` it reads every partition from the moment it was
    created (each app instance sees all recommendations made after it started,
    which is what `wait_for` needs). With a ``group_id`` it joins a consumer
    group and shares partitions with the group's other members.
    """

    def __init__(self, settings: Settings, group_id: str | None = None, from_beginning: bool = False,
                 buffer_size: int = 10_000):
        self.settings = settings
        self.topic = settings.topic(topics.RECOMMENDATIONS)
        self.group_id = group_id
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group_id or f"streamrec-sdk-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": group_id is not None,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            **topics.kafka_security(settings),
        })
        if group_id:
            self._consumer.subscribe([self.topic])
        else:
            self._assign_all(from_beginning)
        # Recommendations seen while waiting for another one, by trigger event id.
        self._pending: OrderedDict[str, Recommendation] = OrderedDict()
        self._buffer_size = buffer_size

    def _assign_all(self, from_beginning: bool) -> None:
        meta = self._consumer.list_topics(self.topic, timeout=10)
        parts = meta.topics[self.topic].partitions
        if not parts:
            raise RuntimeError(f"topic {self.topic} does not exist; run `streamrec topics create`")
        assignment = []
        for p in parts:
            low, high = self._watermarks(p)
            # Resolve "the end" now, so nothing produced after construction is missed.
            assignment.append(TopicPartition(self.topic, p, low if from_beginning else high))
        self._consumer.assign(assignment)

    def _watermarks(self, partition: int, timeout: float = 15.0) -> tuple[int, int]:
        # Right after a topic is created or a broker restarts, a partition may have no leader yet.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=5)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def poll(self, timeout: float = 1.0) -> Recommendation | None:
        """The next recommendation, or None after `timeout` seconds."""
        if self._pending:
            return self._pending.popitem(last=False)[1]
        return self._poll_topic(timeout)

    def _poll_topic(self, timeout: float) -> Recommendation | None:
        msg = self._consumer.poll(timeout)
        if msg is None:
            return None
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return None
            raise RuntimeError(f"consuming {self.topic}: {msg.error()}")
        return schemas.recommendation_decoder.decode(msg.value())

    def __iter__(self) -> Iterator[Recommendation]:
        while True:
            rec = self.poll(1.0)
            if rec is not None:
                yield rec

    def wait_for(self, event_id: str, timeout: float = 10.0) -> Recommendation:
        """The recommendation answering `event_id`; TimeoutError if none comes in time.

        Others that arrive meanwhile are kept (bounded) for later `wait_for`/`poll` calls.
        """
        if event_id in self._pending:
            return self._pending.pop(event_id)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            rec = self._poll_topic(min(left, 0.5))
            if rec is None:
                continue
            if rec.trigger_event_id == event_id:
                return rec
            self._pending[rec.trigger_event_id] = rec
            while len(self._pending) > self._buffer_size:
                self._pending.popitem(last=False)
        raise TimeoutError(f"no recommendation for event {event_id} within {timeout} s on {self.topic}")

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "RecommendationConsumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
