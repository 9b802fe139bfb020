"""The worker's batch step, independent of the consuming engine.

`EventProcessor.process` takes a batch of Kafka records from `events`, and:
decodes them (bad ones become dead letters with a reason), applies the good
ones to Redis through the feature store, then produces one score request per
newly applied event (or a dead letter for a refused one) and waits until the
broker has them. Only when it returns may the engine commit the offsets.
Replayed records whose output a previous owner already produced are skipped
(`OutputLedger`), so each event is answered exactly once.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Producer

from streamrec.settings import Settings
from streamrec.stream import schemas, topics
from streamrec.stream import worker_metrics as metrics
from streamrec.stream.feature_store import RedisFeatureStore, Stopping
from streamrec.stream.features import DecodedEvent, SourceEvent
from streamrec.stream.keys import FeatureConfig
from streamrec.stream.ledger import OutputLedger, source_headers
from streamrec.stream.schemas import EventError, ScoreRequest

log = logging.getLogger(__name__)


def dead_letter_headers(src: SourceEvent, reason: str, detail: str,
                        field: str | None = None) -> list[tuple[str, bytes]]:
    headers = [(topics.DLQ_REASON, reason.encode()),
               (topics.DLQ_DETAIL, detail[:1000].encode("utf-8", "backslashreplace")),
               (topics.DLQ_TOPIC, src.topic.encode()), (topics.DLQ_PARTITION, str(src.partition).encode()),
               (topics.DLQ_OFFSET, str(src.offset).encode())]
    if field is not None:
        headers.append((topics.DLQ_FIELD, field[:256].encode("utf-8", "backslashreplace")))
    return headers


class EventProcessor:
    """Decode, apply, answer: one call per batch, safe to repeat after a crash."""

    def __init__(self, settings: Settings, store: RedisFeatureStore | None = None,
                 config: FeatureConfig | None = None):
        self.settings = settings
        self.config = config or FeatureConfig.from_settings(settings)
        self.store = store or RedisFeatureStore(settings, self.config, on_health=metrics.redis_up.set)
        self.events_topic = settings.topic(topics.EVENTS)
        self.score_topic = settings.topic(topics.SCORE_REQUESTS)
        self.dlq_topic = settings.topic(topics.EVENTS_DLQ)
        self.producer = Producer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
            **topics.kafka_security(settings),
        })
        self.ledger = OutputLedger(settings)
        self._next_offset: dict[int, int] = {}
        self._answered: dict[int, set[int]] = {}
        self.last_offsets: dict[int, int] = {}
        self._failed: list = []

    # ------------------------------------------------------------------ batch
    def process(self, batch: list[SourceEvent]) -> None:
        """Apply and answer a batch; returns only when the broker has every output."""
        if not batch:
            return
        started = time.perf_counter()
        self._check_replays(batch)
        outputs: list[tuple[str, bytes | None, bytes | None, int, list]] = []  # (topic, key, value, partition, headers)
        decoded = self._decode(batch, outputs)  # unreadable or future events: dead letters
        write_started = time.perf_counter()
        outcomes = self.store.apply(decoded)  # one Redis round trip: the features, exactly once in effect
        metrics.redis_write.observe(time.perf_counter() - write_started)
        self._answer(decoded, outcomes, outputs)  # score requests; too late or forgotten: dead letters
        self._produce(outputs)  # returns once the broker has acknowledged every output
        for src in batch:
            self.last_offsets[src.partition] = src.offset
        metrics.batch_size.observe(len(batch))
        metrics.batch_seconds.observe(time.perf_counter() - started)

    def _decode(self, batch: list[SourceEvent], outputs: list) -> list[DecodedEvent]:
        """The batch's readable events; each unreadable one, or one stamped in the future, is dead-lettered."""
        decoded: list[DecodedEvent] = []
        now_ms = time.time() * 1000
        for src in batch:
            metrics.events_in.inc()
            try:
                ev = schemas.decode_event(src.value or b"")
            except EventError as exc:
                self._dead(outputs, src, exc.reason, str(exc), field=exc.field)
                continue
            if ev.ts_ms > src.timestamp_ms + self.config.future_skew_ms:
                self._dead(outputs, src, "future_ts",
                           f"ts: {ev.ts_ms} is {(ev.ts_ms - src.timestamp_ms) / 1000:.0f} s after the "
                           "broker received the event; send event time in epoch milliseconds", field="ts")
                continue
            metrics.event_lag.observe(max(0.0, (now_ms - ev.ts_ms) / 1000))
            decoded.append(DecodedEvent(src, ev))
        return decoded

    def _answer(self, decoded: list[DecodedEvent], outcomes: list, outputs: list) -> None:
        """A score request for each applied event not answered before; a dead letter for one too late or of a
        forgotten user; nothing for a duplicate."""
        for d, outcome in zip(decoded, outcomes):
            ev, status = d.event, outcome.effective
            if outcome.status == "dup":
                metrics.deduplicated.labels(ev.type).inc()
            elif status == "applied":
                if outcome.status == "applied":
                    metrics.applied.labels(ev.type).inc()
                if not self._is_answered(d.source):
                    req = ScoreRequest(event_id=ev.event_id, user_id=ev.user_id, session_id=outcome.session_id,
                                       item_id=ev.item_id, type=ev.type, ts=ev.ts_ms,
                                       feature_version=outcome.feature_version, rec_id=ev.rec_id)
                    outputs.append((self.score_topic, d.source.key, schemas.encode(req), d.source.partition,
                                    source_headers(d.source.partition, d.source.offset)))
            elif status == "too_late":
                self._dead(outputs, d.source, "too_late",
                           f"ts: {ev.ts_ms} is more than {self.config.lateness_ms // 1000} s older than "
                           f"user {ev.user_id}'s newest event; send events sooner or raise STREAMREC_LATENESS_S",
                           field="ts")
            elif status == "forgotten":
                # The user asked to be forgotten: keep the record's place, not its content.
                self._dead(outputs, d.source, "forgotten_user",
                           "the user was forgotten; their older events are dropped", field="user_id",
                           keep_value=False)

    def _dead(self, outputs: list, src: SourceEvent, reason: str, detail: str, field: str | None = None,
              keep_value: bool = True) -> None:
        metrics.dead_lettered.labels(reason).inc()
        if self._is_answered(src):
            return
        outputs.append((self.dlq_topic, src.key, src.value if keep_value else b"", src.partition,
                        dead_letter_headers(src, reason, detail, field)))

    # ------------------------------------------------------------ replays
    def _check_replays(self, batch: list[SourceEvent]) -> None:
        """When a partition starts (or restarts) at an offset we did not expect, learn what
        a previous owner already answered from that offset on."""
        firsts: dict[int, int] = {}
        for src in batch:
            firsts.setdefault(src.partition, src.offset)
        for partition, offset in firsts.items():
            if self._next_offset.get(partition) != offset:
                self._answered[partition] = self.ledger.answered(partition, offset)
            for src in batch:
                if src.partition == partition:
                    self._next_offset[partition] = src.offset + 1

    def partitions_assigned(self) -> None:
        """A new assignment: positions seen before may be stale (another member may have answered
        past them without its commit landing), so the next batch of every partition checks the ledger."""
        self._next_offset.clear()

    def _is_answered(self, src: SourceEvent) -> bool:
        answered = self._answered.get(src.partition)
        return bool(answered) and src.offset in answered

    # ------------------------------------------------------------- produce
    def _produce(self, outputs: list) -> None:
        """Send every output and wait for the broker; retry failures until they go through."""
        pending = outputs
        delay = 0.1
        while pending:
            self._failed = []
            for topic, key, value, partition, headers in pending:
                self._produce_one(topic, key, value, partition, headers)
            # flush returns with outputs still queued while the broker is away: not acknowledged yet, so the
            # batch is not done (it used to return here and let the engine commit them unacknowledged).
            while self.producer.flush(30):
                if self.store.stop_event.is_set():
                    raise Stopping()
                log.warning("outputs not acknowledged after 30 s; waiting for the broker")
            if not self._failed:
                break
            if self.store.stop_event.is_set():
                raise Stopping()
            log.warning("%d output(s) not acknowledged (%s); retrying", len(self._failed), self._failed[0][1])
            pending = [o for o, _ in self._failed]
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        for topic, *_ in outputs:
            if topic == self.score_topic:
                metrics.score_requests.inc()

    def _produce_one(self, topic, key, value, partition, headers) -> None:
        record = (topic, key, value, partition, headers)

        def on_delivery(err, msg, record=record):
            if err is not None:
                self._failed.append((record, str(err)))

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=partition, headers=headers,
                                      on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def close(self) -> None:
        self.producer.flush(10)
        self.ledger.close()
        self.store.close()


class CatalogProcessor:
    """Applies `catalog` records: metadata into Redis, tombstones as removals."""

    def __init__(self, settings: Settings, store: RedisFeatureStore, producer: Producer):
        self.store = store
        self.producer = producer
        self.dlq_topic = settings.topic(topics.EVENTS_DLQ)

    def process(self, batch: list[SourceEvent]) -> None:
        for src in batch:
            item_id = (src.key or b"").decode("utf-8", "replace")
            if src.value is None:
                if item_id:
                    self.store.remove_item(item_id)
                    metrics.catalog_updates.labels("removed").inc()
                continue
            try:
                item = schemas.decode_catalog(src.value)
            except EventError as exc:
                self._dead(src, exc.reason, str(exc), exc.field)
                continue
            self.store.put_item_meta(item.item_id, item.redis_fields())
            metrics.catalog_updates.labels("upserted").inc()
        self.producer.flush(30)

    def _dead(self, src: SourceEvent, reason: str, detail: str, field: str | None = None) -> None:
        metrics.dead_lettered.labels(reason).inc()
        self.producer.produce(self.dlq_topic, value=src.value, key=src.key,
                              headers=dead_letter_headers(src, reason, detail, field))
