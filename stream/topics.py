"""Kafka topics (docs/architecture.md): names, keys, configs, and their creation.

Every other module takes topic names from here (through `Settings.topic`), so
a prefix change reaches everything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streamrec.settings import Settings

EVENTS = "events"
EVENTS_DLQ = "events.dlq"
SCORE_REQUESTS = "score-requests"
RECOMMENDATIONS = "recommendations"
CATALOG = "catalog"
MODEL_VERSIONS = "model-versions"

# Consumer groups, prefixed with STREAMREC_TOPIC_PREFIX like the topics (`group_id`).
WORKER_GROUP = "streamrec-worker"
SCORER_GROUP = "streamrec-scorer"
LEARNER_GROUP = "learner"

# Headers of a dead-letter record; its value is the original bytes, untouched.
DLQ_REASON = "streamrec.reason"
DLQ_DETAIL = "streamrec.detail"
DLQ_TOPIC = "streamrec.topic"
DLQ_PARTITION = "streamrec.partition"
DLQ_OFFSET = "streamrec.offset"
# The event field at fault, when one is (absent for broken JSON, bad UTF-8, oversized...).
DLQ_FIELD = "streamrec.field"


def group_id(settings: Settings, name: str) -> str:
    """The consumer group (and Kafka client id) of a service: WORKER_GROUP, SCORER_GROUP or LEARNER_GROUP."""
    return f"{settings.topic_prefix}{name}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    value: str
    compacted: bool = False
    configs: dict[str, str] = field(default_factory=dict)

    def kafka_configs(self) -> dict[str, str]:
        base = {"cleanup.policy": "compact"} if self.compacted else {}
        return {**base, **self.configs}


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(EVENTS, "user_id", "event JSON (input from apps)"),
    TopicSpec(EVENTS_DLQ, "original key", "original bytes; headers: reason, detail, field, topic, partition, offset",
              configs={"retention.ms": str(14 * 24 * 3600 * 1000)}),
    TopicSpec(SCORE_REQUESTS, "user_id", "score request JSON (internal)"),
    TopicSpec(RECOMMENDATIONS, "user_id", "recommendation JSON (output to apps)"),
    TopicSpec(CATALOG, "item_id", "item metadata JSON, tombstone = removed", compacted=True),
    TopicSpec(MODEL_VERSIONS, "model name", "name, version, uri, sha256, metrics", compacted=True,
              configs={"partitions": "1"}),
)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **kafka_security(settings)})


# Group members that crash hand their partitions over after 10 s rather than Kafka's default 45 s;
# heartbeats every 3 s keep a live but busy member in the group.
FAST_FAILOVER = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 3_000}


def kafka_security(settings: Settings) -> dict:
    """Client options shared by every producer, consumer and admin client (SASL, TLS; see
    `streamrec.security.kafka_options`)."""
    from streamrec.security import kafka_options

    return kafka_options(settings)


def _partitions(spec: TopicSpec, settings: Settings) -> int:
    # model-versions is read whole by every scorer; one partition keeps its order total.
    return int(spec.configs.get("partitions", settings.topic_partitions))


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create every topic that is missing; returns {topic: 'created' | 'exists'}.

    Idempotent: topics that already exist are left as they are.
    """
    admin = admin_client(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    result: dict[str, str] = {}
    new = []
    for spec in TOPICS:
        name = settings.topic(spec.name)
        if name in existing:
            result[name] = "exists"
            continue
        configs = {k: v for k, v in spec.kafka_configs().items() if k != "partitions"}
        if settings.topic_replication >= 3:  # acks=all then means two copies: one broker may go, nothing is lost
            configs.setdefault("min.insync.replicas", "2")
        new.append(NewTopic(name, num_partitions=_partitions(spec, settings),
                            replication_factor=settings.topic_replication, config=configs))
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result(timeout)
                result[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":  # raced with another creator
                    result[name] = "exists"
                else:
                    raise
        _wait_for_leaders(admin, [t.topic for t in new], timeout)
    return result


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """A created topic answers only once each partition has a leader; wait for that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=timeout).topics
        if all(n in meta and meta[n].partitions and all(p.leader >= 0 for p in meta[n].partitions.values())
               for n in names):
            return
        time.sleep(0.1)


def delete_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Delete this prefix's topics (used by tests to clean up after themselves)."""
    admin = admin_client(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    names = [settings.topic(s.name) for s in TOPICS if settings.topic(s.name) in existing]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=timeout).values():
            fut.result(timeout)
    return names


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    replication: int
    configs: dict[str, str]


def describe_topics(settings: Settings, timeout: float = 30.0) -> list[TopicInfo]:
    """This prefix's topics as they are on the broker, with their non-default configs."""
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout).topics
    names = [settings.topic(s.name) for s in TOPICS if settings.topic(s.name) in metadata]
    if not names:
        return []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    configs = {}
    for res, fut in admin.describe_configs(resources, request_timeout=timeout).items():
        entries = fut.result(timeout)
        configs[res.name] = {k: e.value for k, e in entries.items() if not e.is_default and e.value is not None}
    infos = []
    for n in names:
        parts = metadata[n].partitions
        replication = len(next(iter(parts.values())).replicas) if parts else 0
        infos.append(TopicInfo(n, len(parts), replication, configs.get(n, {})))
    return infos


# Errors that mean "this partition's leader is not settled yet", whatever flag the client set.
_LEADER_MOVING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._TIMED_OUT}


def watermarks(consumer, partition, patience_s: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets of `partition`, read from its leader.

    A partition created a moment ago can be listed with a leader before that broker acts as
    one ("not leader for partition"); such retriable errors are retried until `patience_s`.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return consumer.get_watermark_offsets(partition, timeout=10, cached=False)
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in _LEADER_MOVING) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_all(settings: Settings, name: str, timeout: float = 60.0, **client: object) -> list:
    """Every record now on a topic (all partitions, up to the high watermark), for audits and tests.

    Raises TimeoutError when a partition stops yielding before its high watermark. `client` adds
    confluent-kafka options (e.g. ``log_level``).
    """
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(name)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         **kafka_security(settings), **client})
    out = []
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        deadline = time.monotonic() + timeout
        for p in parts:
            low, high = watermarks(consumer, TopicPartition(topic, p))
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            position = low
            while position < high:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}[{p}] stalled at {position} of {high}")
                for m in consumer.consume(5000, timeout=1):
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            position = high
                        continue
                    out.append(m)
                    position = m.offset() + 1
    finally:
        consumer.close()
    return out
