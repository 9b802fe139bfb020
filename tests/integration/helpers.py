"""Helpers for worker tests: publish records, read outputs back, and the reference model
that computes from the events alone what Redis must hold."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from streamrec.settings import Settings
from streamrec.stream import schemas, topics
from streamrec.harness.bench.features import _load
from streamrec.stream.keys import TYPE_WEIGHTS, FeatureConfig
from streamrec.stream.ledger import SOURCE_OFFSET, SOURCE_PARTITION
from streamrec.stream.synthetic import Record

publish = _load


def own_redis(settings: Settings, home, **changes) -> tuple[Settings, object]:
    """A redis-server of the test's own under ``home`` on a free port, started, for tests that stop or pause
    Redis (the shared one serves every other test): the settings that point at it, and the server."""
    import socket

    from streamrec.deploy.localstack import RedisService

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    own = settings.replace(home=str(home), redis_port=port, redis_url=f"redis://127.0.0.1:{port}/0", **changes)
    server = RedisService(own)
    server.start(timeout=30, log=lambda m: None)
    return own, server


def read_topic(s: Settings, name: str, timeout: float = 60.0) -> list:
    """Every record now on a topic (all partitions, up to the high watermark)."""
    return topics.read_all(s, name, timeout)


def output_count(s: Settings) -> int:
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "test-count",
                         **topics.kafka_security(s)})
    total = 0
    for name in (topics.SCORE_REQUESTS, topics.EVENTS_DLQ):
        topic = s.topic(name)
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
            low, high = topics.watermarks(consumer, TopicPartition(topic, p))
            total += high - low
    consumer.close()
    return total


def wait_outputs(s: Settings, expected: int, timeout: float = 180.0, at_least: bool = False) -> int:
    """Wait until the output topics hold `expected` records (or more when `at_least`)."""
    deadline = time.monotonic() + timeout
    n = output_count(s)
    while time.monotonic() < deadline:
        n = output_count(s)
        if n >= expected:
            return n
        time.sleep(0.25)
    return n


@dataclass
class Expected:
    """What the worker must produce and store, computed directly from the records."""

    answered: set = field(default_factory=set)          # event ids that need a score request
    dead: Counter = field(default_factory=Counter)      # reason -> count
    user_counts: dict = field(default_factory=lambda: defaultdict(Counter))
    item_counts: dict = field(default_factory=lambda: defaultdict(Counter))
    session_counts: dict = field(default_factory=lambda: defaultdict(Counter))
    trending_hours: dict = field(default_factory=lambda: defaultdict(float))
    applied_events: list = field(default_factory=list)

    @property
    def outputs(self) -> int:
        return len(self.answered) + sum(self.dead.values())


def reference(records: list[Record], cfg: FeatureConfig | None = None) -> Expected:
    """Apply the contract's rules to records in publishing order (one user = one partition,
    so this is the order the worker sees each user's events in)."""
    cfg = cfg or FeatureConfig()
    exp = Expected()
    seen: set[str] = set()
    max_ts: dict[str, int] = {}
    for r in records:
        try:
            ev = schemas.decode_event(r.value)
        except schemas.EventError as e:
            exp.dead[e.reason] += 1
            continue
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        t = ev.ts_ms
        if ev.user_id in max_ts and t < max_ts[ev.user_id] - cfg.lateness_ms:
            exp.dead["too_late"] += 1
            continue
        max_ts[ev.user_id] = max(max_ts.get(ev.user_id, t), t)
        exp.answered.add(ev.event_id)
        exp.applied_events.append(ev)
        exp.user_counts[ev.user_id][ev.type] += 1
        for item in dict.fromkeys(ev.item_ids):
            exp.item_counts[item][ev.type] += 1
        if ev.session_id:
            exp.session_counts[(ev.user_id, ev.session_id)][ev.type] += 1
        w = TYPE_WEIGHTS[ev.type]
        if w > 0:
            exp.trending_hours[(t // 3_600_000, ev.item_id)] += w
    return exp


def check_outputs(s: Settings, exp: Expected, records: list[Record]) -> None:
    """Every expected event has exactly one score request; dead letters match by reason."""
    requests = read_topic(s, topics.SCORE_REQUESTS)
    ids = Counter(json.loads(m.value())["event_id"] for m in requests)
    twice = [e for e, n in ids.items() if n > 1]
    assert not twice, f"{len(twice)} event(s) answered more than once, e.g. {twice[:3]}"
    missing = exp.answered - set(ids)
    assert not missing, f"{len(missing)} event(s) never answered, e.g. {sorted(missing)[:3]}"
    assert set(ids) == exp.answered
    for m in requests:  # answered on the partition of the event, with its source offset
        headers = dict(m.headers())
        assert int(headers[SOURCE_PARTITION]) == m.partition()
        assert SOURCE_OFFSET in headers
    dead = read_topic(s, topics.EVENTS_DLQ)
    reasons = Counter(dict(m.headers())[topics.DLQ_REASON].decode() for m in dead)
    assert reasons == exp.dead, f"dead letters {reasons} != expected {exp.dead}"
    sources = Counter((dict(m.headers())[topics.DLQ_PARTITION], dict(m.headers())[topics.DLQ_OFFSET]) for m in dead)
    assert max(sources.values(), default=1) == 1, "a record was dead-lettered twice"


def check_counters(redis, keys, exp: Expected) -> None:
    """Raw counters in Redis equal the counts computed from the events."""
    pipe = redis.pipeline(transaction=False)
    users = sorted(exp.user_counts)
    items = sorted(exp.item_counts)
    for u in users:
        pipe.hgetall(keys.user(u))
    for i in items:
        pipe.hgetall(keys.item_stats(i))
    got = pipe.execute()
    for u, h in zip(users, got[:len(users)]):
        counts = {k.decode()[2:]: int(v) for k, v in h.items() if k.startswith(b"n:")}
        assert counts == dict(exp.user_counts[u]), f"user {u}: {counts} != {dict(exp.user_counts[u])}"
    for i, h in zip(items, got[len(users):]):
        counts = {k.decode()[2:]: int(v) for k, v in h.items() if k.startswith(b"n:")}
        assert counts == dict(exp.item_counts[i]), f"item {i}: {counts} != {dict(exp.item_counts[i])}"
    hours = defaultdict(dict)
    for (hour, item), w in exp.trending_hours.items():
        hours[hour][item] = w
    for hour, weights in hours.items():
        stored = {k.decode(): v for k, v in redis.zrange(keys.trending_hour(hour), 0, -1, withscores=True)}
        assert stored.keys() == weights.keys()
        for item, w in weights.items():
            assert abs(stored[item] - w) < 1e-6, f"trending hour {hour} item {item}: {stored[item]} != {w}"


def set_consumer_quota(s: Settings, client_id: str, bytes_per_s: int | None) -> None:
    """Throttle (or, with None, stop throttling) the fetches of a Kafka client id, with Kafka's own
    ConfigCommand against the local broker: the one way to make a live consumer stop receiving records."""
    import subprocess

    from streamrec.deploy.localstack import install_kafka

    libs = install_kafka(s.home_path, log=lambda m: None)
    change = (["--add-config", f"consumer_byte_rate={bytes_per_s}"] if bytes_per_s is not None
              else ["--delete-config", "consumer_byte_rate"])
    proc = subprocess.run(["java", "-Xmx256m", "-cp", f"{libs}/*", "kafka.admin.ConfigCommand", "--bootstrap-server",
                           s.kafka_bootstrap, "--alter", *change, "--entity-type", "clients", "--entity-name",
                           client_id], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ConfigCommand failed: {proc.stdout}{proc.stderr}"
