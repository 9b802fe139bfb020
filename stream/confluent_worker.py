"""The stream worker on a plain confluent-kafka consumer.

Same processors, same guarantees as the faust engine (`streamrec.stream.worker`):
a batch is applied to Redis and answered on Kafka before its offsets are
committed. It skips faust's per-event machinery, which on this project's
2-core machine is the worker's main cost; `streamrec bench features --engine`
measures both. Select it with ``streamrec worker --engine confluent``; engines
are not mixed within one running consumer group (their group protocols
differ), but either can resume from the other's committed offsets.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from confluent_kafka import Consumer, KafkaError

from streamrec.settings import Settings
from streamrec.stream import topics
from streamrec.stream import worker_metrics as metrics
from streamrec.stream.feature_store import Stopping
from streamrec.stream.features import SourceEvent
from streamrec.stream.worker import WorkerService

log = logging.getLogger(__name__)
GIVE_UP_AFTER_S = 20.0  # on SIGTERM, how long a batch stuck on Redis may keep the process


class ConfluentWorker(WorkerService):
    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.stopping = threading.Event()
        self.assigned = threading.Event()
        self.events_topic = settings.topic(topics.EVENTS)
        self.catalog_topic = settings.topic(topics.CATALOG)
        self.consumer = self._new_consumer()  # a stalled one is replaced (`self.watch`, RELIABILITY.md fault 9)

    def _new_consumer(self) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": self.group_id(),
            "client.id": self.group_id(),  # the broker's logs and quotas name the worker, not "rdkafka"
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Range splits each topic on its own, so `events` partitions spread over the workers
            # (a sticky assignor balancing counts could hand one worker only `catalog`).
            "partition.assignment.strategy": "range",
            "fetch.wait.max.ms": 10,
            **topics.FAST_FAILOVER,
            **topics.kafka_security(self.settings),
        })

    def _subscribe(self) -> None:
        self.consumer.subscribe([self.events_topic, self.catalog_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def consuming(self) -> bool:
        return self.assigned.is_set() and not self.stopping.is_set()

    def _on_assign(self, consumer, partitions) -> None:
        mine = {tp.partition for tp in partitions if tp.topic == self.events_topic}
        metrics.assigned_partitions.set(len(mine))
        log.info("events partitions assigned: %s", sorted(mine))
        self.owned = mine
        self.processor.partitions_assigned()
        self.watch.assigned()
        self.assigned.set()

    def _on_revoke(self, consumer, partitions) -> None:
        # Called inside consume(), so no batch is in hand: everything processed is committed.
        metrics.assigned_partitions.set(0)
        self.owned = set()

    def _stop(self, *_) -> None:
        self.stopping.set()
        self.http.stopping = True
        # A batch waiting for Redis gives up after a while; what it did not finish is not committed.
        give_up = threading.Timer(GIVE_UP_AFTER_S, self.processor.store.stop_event.set)
        give_up.daemon = True  # else the process waits out the timer after a clean stop
        give_up.start()

    def consume(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        s = self.settings
        self._subscribe()
        self.watch.start(self.stopping)  # also sets the lag gauges
        code = 0
        try:
            while not self.stopping.is_set():
                if self.watch.wanted.is_set():
                    self.assigned.clear()  # not ready until the new consumer has its partitions
                    self.owned = set()
                    self.consumer = self.watch.renew(self.consumer, self._new_consumer)
                    self._subscribe()
                msgs = self.consumer.consume(s.worker_batch_max, timeout=s.worker_batch_wait_ms / 1000)
                events, catalog = [], []
                for m in msgs:
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("consume: %s", m.error())
                        continue
                    ts = m.timestamp()[1]
                    record = SourceEvent(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                         ts if ts > 0 else int(time.time() * 1000))
                    (events if m.topic() == self.events_topic else catalog).append(record)
                if not (events or catalog):
                    continue
                try:
                    with self.watch.batch():
                        if catalog:
                            self.catalog.process(catalog)
                        self.processor.process(events)
                except Stopping:
                    break  # not committed: the next owner replays it, idempotently
                self.consumer.commit(asynchronous=False)
        finally:
            self.consumer.close()  # leaves the group at once, so partitions move without delay
        return code
