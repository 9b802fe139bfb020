"""Which events already have their output on Kafka, after a crash or a rebalance.

The worker writes each event's output (a score request, or a dead letter) to
the partition with the same number as the event's, with the source partition
and offset in the record headers. When a partition is (re)assigned and
consumption restarts from the committed offset, the records a previous owner
produced for offsets at or after it are found by reading the tail of those two
topics; the worker then skips producing them again. Redis writes need no such
help: they are idempotent on their own (see `streamrec.stream.features`).
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamrec.settings import Settings
from streamrec.stream import topics

log = logging.getLogger(__name__)
SOURCE_PARTITION = "streamrec.partition"
SOURCE_OFFSET = "streamrec.offset"


def source_headers(partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [(SOURCE_PARTITION, str(partition).encode()), (SOURCE_OFFSET, str(offset).encode())]


def header_offset(headers, source_partition: int) -> int | None:
    """The source offset in a record's headers if it came from events partition `source_partition`."""
    values = dict(headers or [])
    part = values.get(SOURCE_PARTITION) or values.get(topics.DLQ_PARTITION)
    off = values.get(SOURCE_OFFSET) or values.get(topics.DLQ_OFFSET)
    src_topic = values.get(topics.DLQ_TOPIC)
    if part is None or off is None:
        return None
    if src_topic is not None and not src_topic.decode().endswith(topics.EVENTS):
        return None
    if int(part) != source_partition:
        return None
    return int(off)


class OutputLedger:
    """Finds the source offsets >= a start offset already answered on the output topics."""

    def __init__(self, settings: Settings, chunk: int = 5000,
                 outputs: tuple[str, ...] = (topics.SCORE_REQUESTS, topics.EVENTS_DLQ)):
        self.settings = settings
        self.outputs = [settings.topic(name) for name in outputs]  # the scorer's: (RECOMMENDATIONS,)
        self.chunk = chunk
        self._consumer: Consumer | None = None

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer({
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"streamrec-ledger-{uuid.uuid4().hex[:8]}",  # never commits
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                **topics.kafka_security(self.settings),
            })
        return self._consumer

    def answered(self, partition: int, from_offset: int) -> set[int]:
        """Source offsets >= `from_offset` of events `partition` that already have an output."""
        found: set[int] = set()
        for topic in self.outputs:
            found |= self._scan(topic, partition, from_offset)
        if found:
            log.info("partition %d: %d event(s) from offset %d were answered before; not repeating them",
                     partition, len(found), from_offset)
        return found

    def wait_until_settled(self, partitions: list[int], quiet_s: float) -> None:
        """Return once the ends of these output partitions have not moved for `quiet_s`. A replaced
        producer's requests that reached a frozen broker are written only when it resumes, so the
        ledger must wait for them before anything is produced again. Only the partitions' owner writes
        to them, so any movement is those late records landing."""
        ends = None
        quiet_since = time.monotonic()
        while True:
            now = {(t, p): self._watermarks(TopicPartition(t, p))[1] for t in self.outputs for p in partitions}
            if now != ends:
                ends, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            time.sleep(min(0.5, quiet_s / 4))

    def _scan(self, topic: str, partition: int, from_offset: int) -> set[int]:
        low, high = self._watermarks(TopicPartition(topic, partition))
        found: set[int] = set()
        end, window = high, self.chunk
        # Read backwards in growing windows until a record older than from_offset shows up.
        while end > low:
            start = max(low, end - window)
            oldest = self._read(topic, partition, start, end, from_offset, found)
            if oldest is not None and oldest < from_offset:
                break
            end, window = start, window * 2
        return found

    def _watermarks(self, tp: TopicPartition, patience_s: float = 300.0) -> tuple[int, int]:
        # Right after a topic is created or the broker restarts, the partition may have no
        # leader yet ("not leader", "unknown partition"): wait for one rather than crash the
        # batch; nothing is committed meanwhile.
        deadline = time.monotonic() + patience_s
        delay = 0.1
        while True:
            try:
                return self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("watermarks of %s[%d] not available yet (%s); retrying", tp.topic, tp.partition,
                            exc.args[0].str() if exc.args else exc)
                # A client that lost the partition from its metadata (seen after a broker restart:
                # "Local: Unknown partition" for minutes) does not always learn it back: start afresh.
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _read(self, topic: str, partition: int, start: int, end: int, from_offset: int,
              found: set[int]) -> int | None:
        self.consumer.assign([TopicPartition(topic, partition, start)])
        oldest = None
        position = start
        while position < end:
            msgs = self.consumer.consume(min(10_000, end - position), timeout=5)
            if not msgs:
                break
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        position = end
                    continue
                position = msg.offset() + 1
                off = header_offset(msg.headers(), partition)
                if off is None:
                    continue
                oldest = off if oldest is None else min(oldest, off)
                if off >= from_offset:
                    found.add(off)
                if position >= end:
                    break
        self.consumer.unassign()
        return oldest

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
