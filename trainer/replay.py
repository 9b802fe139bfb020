"""Training data from the `events` topic: a replay between two times (``streamrec train --data kafka``).

Each partition is read from the first record whose Kafka timestamp is at or
after ``since`` (a record is appended after its event happened, so no event
in the window is skipped) up to the high watermark seen at start; events are
then kept by their own event time. Invalid records (the worker sends those to
``events.dlq``) are counted and reported, not silently dropped. The offsets
read are kept for meta.json, so a model says exactly what it learnt from.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamrec.console import make_console
from streamrec.settings import Settings
from streamrec.stream.schemas import EventError, decode_event
from streamrec.stream.topics import EVENTS, kafka_security
from streamrec.trainer.data import DataError, Interactions

console = make_console(stderr=True)


def parse_time(value: str | int | None, default: int) -> int:
    """Epoch ms from epoch ms (digits) or an ISO-8601 date-time (UTC when no zone); ``default`` when None."""
    if value is None or value == "":
        return default
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{text!r} is not epoch milliseconds or an ISO-8601 date-time",
                        column="--since/--until") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def replay_events(settings: Settings, since: str | int | None = None, until: str | int | None = None,
                  timeout: float = 10.0, categories: dict[str, str] | None = None) -> Interactions:
    """Read the events topic between ``since`` and ``until`` (event time) into `Interactions`."""
    topic = settings.topic(EVENTS)
    since_ms, until_ms = parse_time(since, 0), parse_time(until, int(time.time() * 1000))
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, **kafka_security(settings),
                         "group.id": f"streamrec-train-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise DataError(f"topic {topic!r} does not exist on {settings.kafka_bootstrap}; "
                            "create it with `streamrec topics create`", path=f"kafka:{topic}")
        wanted = [TopicPartition(topic, p, since_ms) if since_ms else TopicPartition(topic, p, OFFSET_BEGINNING)
                  for p in sorted(meta.partitions)]
        starts = consumer.offsets_for_times(wanted, timeout=timeout) if since_ms else wanted
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
                for p in meta.partitions}
        assign = [tp for tp in starts if tp.offset >= 0 or tp.offset == OFFSET_BEGINNING]
        pending = {tp.partition for tp in assign if ends[tp.partition][1] > max(tp.offset, ends[tp.partition][0])}
        rows, bad, offsets = [], 0, {}
        if pending:
            consumer.assign([tp for tp in assign if tp.partition in pending])
        deadline = time.monotonic() + max(timeout, 1.0)
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                if msg.error():
                    continue
                deadline = time.monotonic() + max(timeout, 1.0)  # progress: keep going
                p, off = msg.partition(), msg.offset()
                first, _ = offsets.get(p, (off, off))
                offsets[p] = (first, off)
                if off >= ends[p][1] - 1:
                    pending.discard(p)
                try:
                    ev = decode_event(msg.value())
                except EventError:
                    bad += 1
                    continue
                if since_ms <= ev.ts_ms <= until_ms:
                    rows.append({"user_id": ev.user_id, "ts": ev.ts_ms, "type": ev.type, "value": ev.value,
                                 "session_id": ev.session_id, "rec_id": ev.rec_id, "position": ev.position,
                                 **({"items": list(ev.items)} if ev.type == "impression" else {"item_id": ev.item_id})})
    finally:
        consumer.close()
    if bad:
        console.print(f"[yellow]{bad} invalid records skipped[/] (the worker routes them to the DLQ)")
    if not rows:
        raise DataError(f"no events between {since_ms} and {until_ms} (epoch ms)", path=f"kafka:{topic}")
    inter = Interactions.from_rows(rows, categories, source=f"kafka:{topic}")
    inter.kafka_offsets = {"topic": topic, "partitions": {str(p): {"first": a, "last": b} for p, (a, b) in
                                                          sorted(offsets.items())}}
    return inter
