"""The scorer service: `score-requests` in, `recommendations` out, offsets committed after the ack.

One loop: gather a micro-batch (at most ``batch_max`` requests, waiting at
most ``batch_wait_ms``), score it (`Engine`), produce one recommendation per
request keyed by user_id, wait until the broker acknowledged all of them
(retrying failures), then commit the batch's offsets. Each recommendation
goes to the partition with its request's number, the request's offset in its
headers (`stream.ledger`); a crash or rebalance between produce and commit
makes the next owner read that tail and skip what is answered: exactly one
recommendation per request, never zero, never two. Staged model
versions are swapped in between batches. SIGTERM finishes the batch in
hand, commits and exits 0. A consumer that stalls (librdkafka's, left
outside its group by a broker outage) is replaced (`ConsumerWatch`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from streamrec.runtime import tune_gc
from streamrec.serving import metrics
from streamrec.serving.config import TRENDING_ARM, ScorerConfig
from streamrec.serving.content import CatalogFollower
from streamrec.serving.engine import Engine
from streamrec.serving.features import FeatureReader
from streamrec.serving.http import ScorerHttp
from streamrec.serving.models import ModelStore
from streamrec import security
from streamrec.settings import Settings
from streamrec.stream import schemas, topics
from streamrec.stream.keys import FeatureConfig, Keys
from streamrec.stream.ledger import OutputLedger, source_headers
from streamrec.stream.watchdog import ConsumerWatch, LagReader

log = logging.getLogger(__name__)
RENEWAL_QUIET_S = 3.0
"""After a producer is replaced, how long the output partitions' ends must stand still before the
ledger is read: a frozen broker writes the old producer's requests only once it resumes."""


def redis_client(settings: Settings, timeout_s: float):
    """A Redis client with a short timeout (past it a batch is served degraded); cluster-aware
    when ``Settings.redis_cluster`` is on (the pipelines then split by slot)."""
    return security.redis_client(settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class _Abandoned(Exception):
    """Shutting down while the broker has not acknowledged a batch: its offsets stay uncommitted, so the next
    owner of the partition answers it (the ledger keeps whatever did land from being answered twice)."""


class Scorer:
    """Owns the consumer, producer, engine, model store and HTTP endpoints of one scorer process."""

    def __init__(self, settings: Settings, config: ScorerConfig | None = None, port: int | None = None,
                 io_binding: bool | None = None):
        self.settings = settings
        self.config = config or ScorerConfig.from_settings(settings)
        cfg = self.config
        self.redis = redis_client(settings, cfg.redis_timeout_s)
        self.reader = FeatureReader(self.redis, Keys(settings.redis_prefix), FeatureConfig.from_settings(settings),
                                    stats_ttl_s=cfg.item_stats_ttl_s, history_items=cfg.history_items)
        self.models = ModelStore(settings, cfg, io_binding=io_binding)
        self.engine = Engine(self.reader, self.models, cfg)
        self.catalog = CatalogFollower(settings, self.engine.content_index, self.models.content)
        self.topic_in = settings.topic(topics.SCORE_REQUESTS)
        self.topic_out = settings.topic(topics.RECOMMENDATIONS)
        self.group_id = topics.group_id(settings, topics.SCORER_GROUP)
        self.consumer = self._new_consumer()
        self.owned: set[int] = set()
        """Partitions of `score-requests` this process owns now."""
        self.producer = self._new_producer()
        self.stopping = threading.Event()
        self.consuming = threading.Event()
        self.batches = 0
        self._last_offsets: dict[tuple[str, int], int] = {}
        # Exactly one answer per request across crashes and rebalances, as the worker does: each
        # recommendation goes to the partition of its request's number with the request's offset
        # in its headers; a partition resumed at an unexpected offset first learns what is answered.
        self.ledger = OutputLedger(settings, outputs=(topics.RECOMMENDATIONS,))
        self._next_offset: dict[int, int] = {}
        self._answered: dict[int, set[int]] = {}
        self.http = ScorerHttp(self, settings.http_host, settings.scorer_port if port is None else port)
        # A consumer stalled after a broker outage is replaced (RELIABILITY.md, fault 9).
        self.watch = ConsumerWatch(LagReader(settings, self.group_id, self.topic_in, gauge=metrics.consumer_lag),
                                   settings.scorer_stall_s, owned=lambda: self.owned,
                                   positions=lambda: dict(self._next_offset), renewals=metrics.consumer_renewals,
                                   setting="STREAMREC_SCORER_STALL_S")

    # ------------------------------------------------------------------ #
    def run(self, install_signals: bool = True) -> int:
        """Serve until `stop()` (or SIGTERM/SIGINT); returns the exit code."""
        security.check_services(self.settings)  # a refused login or certificate stops here, clearly
        tune_gc(self.settings.gc_gen0)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        metrics.initialise((self.config.seq_model, self.config.ranker_model, self.config.graph_model))
        self.http.start()
        log.info("scorer: health and metrics on http://%s:%d", self.settings.http_host, self.http.port)
        self.models.start()
        self.catalog.start()  # content vectors of new catalog items, embedded here within seconds
        self.models.pin(self.config.arms)
        self._publish_versions()

        self._subscribe()
        self.watch.start(self.stopping)
        wait = self.config.batch_wait_ms / 1000
        try:
            while not self.stopping.is_set():
                if self.watch.wanted.is_set():
                    self.consuming.clear()  # not ready until the new consumer has its partitions
                    self.owned, self._last_offsets = set(), {}
                    self.consumer = self.watch.renew(self.consumer, self._new_consumer)
                    self._subscribe()
                msgs = self.consumer.consume(self.config.batch_max, timeout=max(wait, 0.001) if self.batches else 0.5)
                if msgs:
                    try:
                        self.process(msgs)
                    except _Abandoned as exc:
                        log.warning("stopping: %s; their requests stay uncommitted", exc)
                        break
                if self.models.swap_pending():
                    self._publish_versions()
        finally:
            self.http.stop()
            self._commit_last()
            self.consumer.close()
            self.producer.flush(10)
            self.models.stop()
            self.catalog.stop()
            self.watch.lag.close()
        return 0

    # -- the Kafka consumer --------------------------------------------------- #
    def _new_consumer(self) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "group.id": self.group_id,
            "client.id": self.group_id,  # the broker's logs and quotas name the scorer, not "rdkafka"
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 5,  # low latency: do not let the broker sit on a small fetch
            **topics.FAST_FAILOVER,
            **topics.kafka_security(self.settings),
        })

    def _subscribe(self) -> None:
        def assigned(consumer, parts):
            # Positions seen before this assignment may be stale: another scorer may have answered
            # past them without its commit landing. The next batch of each partition checks the ledger.
            self._next_offset.clear()
            self.owned = {tp.partition for tp in parts}
            self.watch.assigned()
            self.consuming.set()

        def revoked(consumer, parts):
            gone = {tp.partition for tp in parts}
            self.owned = self.owned - gone
            # Their next owner commits them now; a final commit of ours would only move them back.
            self._last_offsets = {tp: o for tp, o in self._last_offsets.items() if tp[1] not in gone}

        self.consumer.subscribe([self.topic_in], on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def _commit_last(self) -> None:
        if not self._last_offsets:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in self._last_offsets.items()],
                                 asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - e.g. partitions revoked meanwhile: the next owner re-answers
            log.warning("final commit failed: %s", exc)

    def stop(self) -> None:
        """Finish the batch in hand, commit, and leave the loop."""
        self.http.http.stopping = True
        self.stopping.set()

    # ------------------------------------------------------------------ #
    def process(self, msgs: list) -> None:
        """Score one batch of Kafka messages, produce, wait for the acks, commit."""
        with self.watch.batch():
            self._process(msgs)

    def _process(self, msgs: list) -> None:
        started = time.perf_counter()
        requests, sources, offsets = [], [], {}
        good = [m for m in msgs if not m.error()]
        for m in msgs:
            if m.error() and m.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", m.error())
        self._check_replays(good)
        for m in good:
            offsets[(m.topic(), m.partition())] = m.offset() + 1
            self._next_offset[m.partition()] = m.offset() + 1
            if m.offset() in self._answered.get(m.partition(), ()):
                continue  # answered before a crash or a rebalance: never twice
            try:
                requests.append(schemas.score_request_decoder.decode(m.value()))
                sources.append((m.partition(), m.offset()))
            except Exception as exc:  # noqa: BLE001 - the worker writes these; never block on one
                log.error("unreadable score request at %s/%d@%d: %s", m.topic(), m.partition(), m.offset(), exc)
                metrics.failed.labels("unreadable").inc()
        metrics.requests.inc(len(requests))
        metrics.batch_size.observe(len(requests))
        recs = self.engine.recommend(requests) if requests else []
        t_produce = time.perf_counter()
        self._produce(recs, sources)
        done = time.time()
        metrics.observe_stage("produce", time.perf_counter() - t_produce)
        for r in recs:
            metrics.recommendations.labels(r.variant, schemas.segment_label(r.segment)).inc()
            metrics.end_to_end.observe(max(0.0, done - r.event_ts / 1000))
        if offsets:
            # Asynchronous: the next batch need not wait for the broker; commits stay in order, and
            # `run` commits the last offsets synchronously before it closes the consumer.
            self._last_offsets.update(offsets)
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                 asynchronous=True)
        self.batches += 1
        metrics.observe_stage("batch", time.perf_counter() - started)

    def _check_replays(self, msgs: list) -> None:
        """A partition that starts (or restarts) at an offset we did not expect: learn which of
        its requests from there on already have their recommendation on the topic."""
        firsts: dict[int, int] = {}
        for m in msgs:
            firsts.setdefault(m.partition(), m.offset())
        for partition, offset in firsts.items():
            if self._next_offset.get(partition) != offset:
                self._answered[partition] = self.ledger.answered(partition, offset)

    def _new_producer(self) -> Producer:
        return Producer({
            "bootstrap.servers": self.settings.kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,  # the batch is already formed; a longer linger only adds latency
            "compression.type": "lz4",
            **topics.kafka_security(self.settings),
        })

    def _produce(self, recs: list, sources: list[tuple[int, int]]) -> None:
        """Produce every recommendation and return only when the broker has acknowledged all."""
        pending = [(r.user_id.encode(), schemas.encode(r), src) for r, src in zip(recs, sources)]
        delay = 0.1
        while pending:
            failed: list = []
            for record in pending:
                self._produce_one(record, failed)
            if not self._acknowledged():
                pending = self._renew_producer(pending, failed)
                continue
            if not failed:
                return
            log.warning("%d recommendation(s) not acknowledged (%s); retrying", len(failed), failed[0][1])
            pending = [rec for rec, _ in failed]
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _produce_one(self, record, failed: list) -> None:
        key, value, (partition, offset) = record

        def on_delivery(err, _msg):
            if err is not None:
                failed.append((record, err))

        while True:
            try:
                self.producer.produce(self.topic_out, value=value, key=key, partition=partition,
                                      headers=source_headers(partition, offset), on_delivery=on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _acknowledged(self) -> bool:
        """Wait until the broker has answered every record produced (an error is an answer too); False when
        it answered nothing more for `STREAMREC_SCORER_STALL_S` while records wait. Leaving then would let
        the batch's offsets be committed unanswered."""
        patience = max(self.settings.scorer_stall_s, 1.0)
        left, since = len(self.producer), time.monotonic()
        while left:
            now_left = self.producer.flush(min(patience, 5.0))
            if now_left < left:
                left, since = now_left, time.monotonic()
            elif time.monotonic() - since >= patience:
                return False
            if self.stopping.is_set() and time.monotonic() - since >= 5.0:
                raise _Abandoned(f"{now_left} recommendation(s) unacknowledged at shutdown")
        return True

    def _renew_producer(self, pending: list, failed: list) -> list:
        """A producer the broker stopped answering, even after it came back (librdkafka can keep a partition's
        leader unknown for minutes: issue #4976 of librdkafka), is replaced. What it held is produced again by
        the new one, except what the output topic already has (a record in flight may have landed)."""
        log.warning("the broker acknowledged nothing for %.0f s with %d recommendation(s) waiting; replacing "
                    "the producer", self.settings.scorer_stall_s, len(self.producer))
        metrics.producer_renewals.inc()
        self.producer.purge(in_queue=True, in_flight=True)
        self.producer.poll(0)  # the purged records' callbacks put them in `failed`
        self.producer = self._new_producer()
        unanswered = [rec for rec, _ in failed]
        first: dict[int, int] = {}
        for _, _, (partition, offset) in unanswered:
            first[partition] = min(offset, first.get(partition, offset))
        while True:  # the topic must be read before anything is produced again: the broker has to be back
            try:
                self.ledger.wait_until_settled(sorted(first), quiet_s=RENEWAL_QUIET_S)
                answered = {p: self.ledger.answered(p, o) for p, o in first.items()}
                break
            except Exception as exc:  # noqa: BLE001 - e.g. the broker still away: try again
                if self.stopping.is_set():
                    raise _Abandoned(f"{len(unanswered)} recommendation(s) unacknowledged at shutdown") from exc
                log.warning("reading what the output topic holds failed (%s); retrying", exc)
                time.sleep(1.0)
        return [rec for rec in unanswered if rec[2][1] not in answered[rec[2][0]]]

    def _publish_versions(self) -> None:
        metrics.model_version.clear()
        for arm in self.config.arms:
            for m in (*self.models.models_for(arm), self.models.graph_for(arm)):
                if m is not None:
                    metrics.model_version.labels(arm.name, m.meta.name, m.meta.version).set(1)

    # -- readiness -------------------------------------------------------- #
    def status(self) -> dict:
        """What /readyz shows beside the checks: degraded modes, models per arm (``["trending"]`` for the
        popularity baseline, which serves no model by design), refused versions."""
        arms, modelled = {}, []
        for arm in self.config.arms:
            if arm.trending:
                arms[arm.name] = [TRENDING_ARM]
                continue
            arms[arm.name] = [m.name for m in self.models.models_for(arm) if m is not None]
            modelled.append(arms[arm.name])
        providers = {name: m.provider for name, m in self.models.live.items()}
        return {
            "degraded": {"redis_down": not self.engine.redis_ok,
                         "no_model": bool(modelled) and not any(modelled),
                         "cpu_fallback": self.settings.device != "cpu" and any(
                             p == "CPUExecutionProvider" for p in providers.values())},
            "arms": arms, "providers": providers,
            "previous": {n: m.name for n, m in self.models.previous.items()},
            "refused": [f"{n}/{v}: {why[:200]}" for n, v, why in self.models.refused[-5:]],
            "content": {"model": self.catalog.seeded, "items": len(self.engine.content_index),
                        "embedded": self.catalog.embedded},
        }
