"""Reading a compacted topic from its beginning, then following it: what the scorer's two followers share.

`ModelStore` follows `model-versions` (which model versions to serve) and `CatalogFollower` follows
`catalog` (the items to embed). Both read every record from offset 0 on every partition, need to know
when they have read what the topic held when they started (the scorer is ready only then), and may
start over (a new content model re-reads the catalog).
"""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streamrec.settings import Settings
from streamrec.stream import topics


class CompactedTopicReader:
    """A consumer assigned to every partition of ``topic`` from offset 0, outside any group's offsets."""

    def __init__(self, settings: Settings, topic: str, group: str):
        """``topic``: the topic's name without the prefix; ``group``: the consumer group's name without it
        (no offset is ever committed; the group names the client in the broker's logs)."""
        self.topic = settings.topic(topic)
        self.consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                                  "group.id": f"{settings.topic_prefix}{group}", "enable.auto.commit": False,
                                  "enable.partition.eof": True, **topics.kafka_security(settings)})
        self.partitions = list(self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
        self.ends = {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                     for p in self.partitions}
        """Each partition's end offset when the reader started: what `read_all_at_start` waits for."""
        self._read_to_end: set[int] = set()
        self.rewind()

    def rewind(self) -> None:
        """Start over from the beginning of every partition."""
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in self.partitions])
        self._read_to_end = {p for p, end in self.ends.items() if end == 0}

    @property
    def read_all_at_start(self) -> bool:
        """Whether every record the topic held when the reader started has been read."""
        return len(self._read_to_end) >= len(self.ends)

    def consume(self, max_records: int, timeout: float) -> list[Message]:
        """The next records (errors and end-of-partition markers left out)."""
        records = []
        for msg in self.consumer.consume(max_records, timeout=timeout):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    self._read_to_end.add(msg.partition())
                continue
            if msg.offset() + 1 >= self.ends.get(msg.partition(), 0):
                self._read_to_end.add(msg.partition())
            records.append(msg)
        return records

    def close(self) -> None:
        self.consumer.close()
