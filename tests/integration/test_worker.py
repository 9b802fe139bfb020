"""The stream worker against real Kafka and Redis: exactly once in effect, through crashes."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from streamrec.harness.bench.features import start_worker, stop_worker
from streamrec.harness.faults import free_port  # below the ephemeral range
from streamrec.stream import topics
from streamrec.stream.features import decayed, expected_decayed
from streamrec.stream.keys import FeatureConfig, Keys
from streamrec.stream.synthetic import Record, synthetic_stream

from .helpers import (check_counters, check_outputs, output_count, own_redis, publish, read_topic, reference,
                      set_consumer_quota, wait_outputs)

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000



def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith(name + "_created"))


def rec(ev: dict) -> Record:
    return Record(key=ev["user_id"], value=json.dumps(ev).encode(), kind="valid", event=ev)


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_features_equal_the_direct_computation(fresh_settings, redis, engine):
    s = fresh_settings
    records = list(synthetic_stream(6000, users=300, items=500, seed=42))
    # Out of order within the allowed lateness, then one beyond it, for one user.
    records += [rec({"event_id": "late-ok", "type": "click", "user_id": "u1", "item_id": "i7",
                     "ts": T0 + 10_000, "session_id": "s1"}),
                rec({"event_id": "newest", "type": "view", "user_id": "u1", "item_id": "i8", "ts": T0 + 8 * 3600_000}),
                rec({"event_id": "too-late", "type": "view", "user_id": "u1", "item_id": "i9", "ts": T0 + 60_000})]
    exp = reference(records)
    assert exp.dead["too_late"] == 1 and exp.dead["bad_json"] > 0 and len(exp.answered) > 5000
    publish(s, records)
    port = free_port()
    proc = start_worker(s, port=port, engine=engine)
    try:
        assert wait_outputs(s, exp.outputs) == exp.outputs
        time.sleep(1.0)  # nothing more may come
        assert output_count(s) == exp.outputs
        assert metric(port, "streamrec_worker_events_deduplicated_total") == sum(
            1 for r in records if r.kind == "duplicate")
    finally:
        assert stop_worker(proc) == 0, "SIGTERM must end the worker cleanly"
    check_outputs(s, exp, records)
    keys = Keys(s.redis_prefix)
    check_counters(redis, keys, exp)
    # Decayed views of the most popular item equal the decayed sum of its views, by event time.
    item = max(exp.item_counts, key=lambda i: exp.item_counts[i]["view"])
    stats = {k.decode(): float(v) for k, v in redis.hgetall(keys.item_stats(item)).items()}
    now = T0 + 10 * 3600_000
    got = decayed(stats["d:view"], stats["_L"], now, FeatureConfig().item_half_life_ms)
    want = expected_decayed([(e.ts_ms, 1.0) for e in exp.applied_events
                             if e.type == "view" and e.item_id == item], now, FeatureConfig().item_half_life_ms)
    assert got == pytest.approx(want, rel=1e-9)
    # Session counts for sessions the app named.
    for (user, session), counts in list(exp.session_counts.items())[:50]:
        stored = {k.decode()[2:]: int(v) for k, v in redis.hgetall(keys.session(user, session)).items()
                  if k.startswith(b"n:")}
        assert stored == dict(counts)
    # The dead letters keep the original bytes.
    dead = {dict(m.headers())[topics.DLQ_REASON].decode(): m.value() for m in read_topic(s, topics.EVENTS_DLQ)}
    assert json.loads(dead["too_late"])["event_id"] == "too-late"


@pytest.mark.parametrize("engine,events", [("faust", 15_000), ("confluent", 15_000)])
def test_kill_9_in_the_middle_of_a_stream(fresh_settings, redis, engine, events):
    s = fresh_settings
    records = list(synthetic_stream(events, users=5000, items=20000, seed=9))
    exp = reference(records)
    publish(s, records)
    port = free_port()
    proc = start_worker(s, port=port, engine=engine)
    # Wait until the worker is well into the stream, then kill it without warning.
    reached = wait_outputs(s, exp.outputs // 3, timeout=300)
    assert reached < exp.outputs, "the worker finished before it could be killed; use more events"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = start_worker(s, port=port, engine=engine)
    try:
        assert wait_outputs(s, exp.outputs, timeout=400) == exp.outputs
        time.sleep(1.0)
        assert output_count(s) == exp.outputs
    finally:
        stop_worker(proc)
    check_outputs(s, exp, records)
    check_counters(redis, Keys(s.redis_prefix), exp)


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_two_workers_share_partitions_and_one_takes_over(fresh_settings, redis, engine):
    s = fresh_settings
    records = list(synthetic_stream(30_000, users=2000, items=3000, seed=5))
    exp = reference(records)
    ports = [free_port(), free_port()]
    procs = [start_worker(s, port=p, engine=engine) for p in ports]
    deadline = time.monotonic() + 60  # the group settles: every partition owned by one of the two
    while True:
        owned = [metric(p, "streamrec_worker_assigned_partitions") for p in ports]
        if sum(owned) == s.topic_partitions and min(owned) > 0:
            break
        assert time.monotonic() < deadline, f"partitions were not shared out: {owned}"
        time.sleep(0.2)
    publish(s, records)
    try:
        wait_outputs(s, exp.outputs // 3, timeout=300)
        assert all(metric(p, "streamrec_worker_events_in_total") > 0 for p in ports), "both must get partitions"
        assert stop_worker(procs[0]) == 0
        assert wait_outputs(s, exp.outputs, timeout=300) == exp.outputs
        time.sleep(1.0)
        assert output_count(s) == exp.outputs
    finally:
        for p in procs:
            stop_worker(p)
    check_outputs(s, exp, records)
    check_counters(redis, Keys(s.redis_prefix), exp)


def test_wait_drained_returns_once_the_worker_has_read_everything_sent(fresh_settings, redis):
    """What the demo's last frame waits for: a count of records read that stands still, then the counters are
    final (every record read, every bad one dead-lettered), not a snapshot of a worker still reading."""
    from streamrec.harness.loop import metric_sum, metrics, wait_drained

    s = fresh_settings
    records = list(synthetic_stream(3000, users=100, items=200, seed=7))
    dead = sum(reference(records).dead.values())
    assert dead > 0
    port = free_port()
    proc = start_worker(s, port=port)
    try:
        publish(s, records)
        # (read > 0: a worker that has not fetched yet stands still too)
        assert wait_drained(port, lambda worker: metric_sum(worker, "streamrec_worker_events_in_total") > 0,
                            timeout=120)
        final = metrics(port)
        assert metric_sum(final, "streamrec_worker_events_in_total") == len(records)
        assert metric_sum(final, "streamrec_worker_events_dead_lettered_total") == dead
    finally:
        assert stop_worker(proc) == 0


def test_catalog_updates_removals_and_bad_records(fresh_settings, redis):
    from confluent_kafka import Producer

    s = fresh_settings
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    topic = s.topic(topics.CATALOG)
    producer.produce(topic, json.dumps({"item_id": "i1", "category": "shoes", "tags": ["red", "running"],
                                        "title": "Runner", "price": 59.0}).encode(), key="i1")
    producer.produce(topic, None, key="never-existed")  # a tombstone for an unknown item
    producer.produce(topic, b'{"item_id": 3}', key="i3")
    producer.flush(10)
    port = free_port()
    proc = start_worker(s, port=port)
    keys = Keys(s.redis_prefix)
    try:
        deadline = time.monotonic() + 60
        # The three records sit on different catalog partitions: wait for each, not for one of them.
        while time.monotonic() < deadline and not (redis.sismember(keys.removed, "never-existed")
                                                   and redis.exists(keys.item_meta("i1"))):
            time.sleep(0.2)
        assert redis.hgetall(keys.item_meta("i1"))[b"category"] == b"shoes"
        assert redis.sismember(keys.removed, "never-existed")
        # A later event for the catalogued item feeds the user's category affinity.
        publish(s, [rec({"event_id": "c1", "type": "purchase", "user_id": "shopper", "item_id": "i1", "ts": T0})])
        assert wait_outputs(s, 2, timeout=60) >= 2
        affinity = redis.hgetall(keys.affinity("shopper"))
        assert float(affinity[b"a:shoes"]) > 0
        assert proc.poll() is None, "bad catalog records must not stop the worker"
    finally:
        stop_worker(proc)
    dead = read_topic(s, topics.EVENTS_DLQ)
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert headers[topics.DLQ_TOPIC].decode() == topic and b"item_id" in headers[topics.DLQ_DETAIL]


def test_forget_deletes_the_user_and_drops_their_older_events(fresh_settings, redis):
    from streamrec.cli import main

    s = fresh_settings
    keys = Keys(s.redis_prefix)
    publish(s, [rec({"event_id": f"f{i}", "type": "view", "user_id": "alice", "item_id": f"i{i}",
                     "ts": T0 + i}) for i in range(5)])
    port = free_port()
    proc = start_worker(s, port=port)
    try:
        wait_outputs(s, 5, timeout=60)
        assert redis.exists(keys.user("alice"))
        env = {k: v for k, v in s.as_env().items()}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            assert main(["forget", "alice"]) == 0
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        left = [k for k in redis.scan_iter(match=keys.user_base("alice").replace("{", "\\{").replace("}", "\\}") + "*")]
        assert [k for k in left if not k.endswith(b":forgotten")] == []
        audit = redis.lrange(keys.forget_audit, 0, -1)
        assert len(audit) == 1 and b"alice" not in audit[0]
        now = int(time.time() * 1000)
        publish(s, [rec({"event_id": "old", "type": "view", "user_id": "alice", "item_id": "i1", "ts": now - 60_000}),
                    rec({"event_id": "new", "type": "view", "user_id": "alice", "item_id": "i2", "ts": now + 1000})])
        assert wait_outputs(s, 7, timeout=60) == 7
    finally:
        stop_worker(proc)
    dead = read_topic(s, topics.EVENTS_DLQ)
    assert [dict(m.headers())[topics.DLQ_REASON] for m in dead] == [b"forgotten_user"]
    assert dead[0].value() in (b"", None), "a forgotten user's event must not be kept in the DLQ"
    assert int(redis.hget(keys.user("alice"), "n:view")) == 1


def committed(s, group: str) -> int:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    tps = [TopicPartition(s.topic(topics.EVENTS), p) for p in range(s.topic_partitions)]
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result(10)
    return sum(max(tp.offset, 0) for tp in result.topic_partitions)


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def test_redis_outage_makes_the_worker_wait_unready_and_resume(fresh_settings, tmp_path):
    import redis as redis_lib

    own, server = own_redis(fresh_settings, tmp_path)
    redis_port = own.redis_port
    records = list(synthetic_stream(4000, users=300, items=400, seed=3))
    first, second = records[:2000], records[2000:]
    exp_first = reference(first)
    port = free_port()
    proc = start_worker(own, port=port)
    group = topics.group_id(own, topics.WORKER_GROUP)
    try:
        publish(own, first)
        assert wait_outputs(own, exp_first.outputs) == exp_first.outputs
        time.sleep(2.5)  # let faust commit what it finished
        server.stop()
        publish(own, second)
        deadline = time.monotonic() + 30
        while ready(port):
            assert time.monotonic() < deadline, "worker stayed ready without Redis"
            time.sleep(0.2)
        before, outputs = committed(own, group), output_count(own)
        time.sleep(3)
        assert committed(own, group) == before, "offsets were committed while Redis was away"
        assert output_count(own) == outputs, "events were answered while Redis was away"
        assert proc.poll() is None, "the worker must wait for Redis, not exit"
        server.start(timeout=30, log=lambda m: None)  # same folder: the append-only file brings data back
        exp = reference(records)
        assert wait_outputs(own, exp.outputs) == exp.outputs
        deadline = time.monotonic() + 30
        while not ready(port):
            assert time.monotonic() < deadline, "worker did not become ready again"
            time.sleep(0.2)
        assert metric(port, "streamrec_worker_redis_up") == 1
    finally:
        stop_worker(proc)
        server.stop()
    check_outputs(own, exp, records)
    server.start(timeout=30, log=lambda m: None)
    try:
        check_counters(redis_lib.Redis(port=redis_port), Keys(own.redis_prefix), exp)
    finally:
        server.stop()


def test_lag_reading_behind_the_stall_watchdog(fresh_settings, redis):
    """The faust worker's watchdog acts on this reading: records waiting on partitions it owns or, owning none,
    on partitions whose group position no member moves (a consumer left without partitions by a broker outage)."""
    from confluent_kafka import Consumer, TopicPartition

    from streamrec.stream.worker import WorkerService

    s = fresh_settings.replace(worker_port=free_port())
    topic = s.topic(topics.EVENTS)
    publish(s, list(synthetic_stream(300, users=30, items=50, seed=5)))
    svc = WorkerService(s)
    try:
        svc.owned = set(range(s.topic_partitions))
        assert svc.watch._read(svc.owned) is True  # nothing processed, nothing committed: every record waits
        consumer = svc.watch.lag._watermark_client()
        highs = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in svc.owned}
        assert sum(highs.values()) >= 300
        svc.processor.last_offsets.update({p: h - 1 for p, h in highs.items()})
        assert svc.watch._read(svc.owned) is False  # all processed
        busiest = max(highs, key=highs.get)
        svc.processor.last_offsets[busiest] -= 1
        assert svc.watch._read(svc.owned) is True
        svc.owned = svc.owned - {busiest}
        assert svc.watch._read(svc.owned) is False  # that partition moved to another member: not this one's lag

        svc.owned = set()
        assert svc.watch._read(svc.owned) is False  # owns nothing: the first look at the group's positions
        assert svc.watch._read(svc.owned) is True  # records wait and no member moved the group's positions since

        member = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": svc.group_id(),
                           "enable.auto.commit": False})
        try:
            member.commit(offsets=[TopicPartition(topic, p, 1) for p in highs], asynchronous=False)
            assert svc.watch._read(svc.owned) is False  # a member is taking them
            assert svc.watch._read(svc.owned) is True  # ...and then stopped, with records still waiting
            member.commit(offsets=[TopicPartition(topic, p, h if p != busiest else 2) for p, h in highs.items()],
                          asynchronous=False)
            assert svc.watch._read(svc.owned) is False
            assert svc.watch._read(svc.owned) is True  # one partition is enough
            member.commit(offsets=[TopicPartition(topic, p, h) for p, h in highs.items()], asynchronous=False)
            assert svc.watch._read(svc.owned) is False
            assert svc.watch._read(svc.owned) is False  # nothing waits
        finally:
            member.close()
    finally:
        svc.watch.lag.close()
        svc.processor.close()


def started_on_a_third(s, events: int, seed: int, engine: str):
    """A worker that has answered the first third of a stream: the records, their reference, the rest to send,
    the worker's port and process."""
    records = list(synthetic_stream(events, users=events // 10, items=events // 6, seed=seed))
    first, rest = records[:events // 3], records[events // 3:]
    publish(s, first)
    port = free_port()
    proc = start_worker(s, port=port, engine=engine)
    wait_outputs(s, reference(first).outputs, timeout=120)
    return records, reference(records), rest, port, proc


def wait_recovered(port: int, metric_name: str, timeout: float) -> float:
    """The worker's recovery counter once it is at least 1 (or at the time-out); the process may be between its
    old image and the new one meanwhile."""
    deadline, count = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline and count < 1:
        try:
            count = metric(port, metric_name)
        except OSError:
            pass
        time.sleep(0.5)
    return count


@pytest.mark.parametrize("engine, recovery", [("faust", "streamrec_worker_stall_restarts"),
                                              ("confluent", "streamrec_worker_consumer_renewals_total")])
def test_a_stalled_consumer_recovers_and_answers_everything_once(fresh_settings, redis, engine, recovery):
    """Kafka's fetch quota stops the worker's consumer receiving records while the stream goes on (what the
    consumer's own stall after a broker outage looks like from outside): the faust engine restarts in place,
    the confluent engine replaces its consumer, and once fetches flow again every event is still applied and
    answered exactly once."""
    import threading

    s = fresh_settings.replace(worker_stall_s=4.0)
    records, exp, rest, port, proc = started_on_a_third(s, 3000, seed=13, engine=engine)
    client_id = topics.group_id(s, topics.WORKER_GROUP)  # the worker's Kafka client id (its group id)
    throttled = False
    try:
        set_consumer_quota(s, client_id, 1)
        throttled = True
        # The rest arrives slowly, so records are always waiting while fetches are held back.
        feeder = threading.Thread(target=lambda: [publish(s, rest[i:i + 100]) or time.sleep(0.5)
                                                  for i in range(0, len(rest), 100)])
        feeder.start()
        assert wait_recovered(port, recovery, timeout=120) >= 1, "the watchdog did not recover the stalled worker"
        assert proc.poll() is None  # the same process (pid): re-executed (faust), or with a new consumer
        feeder.join()
        set_consumer_quota(s, client_id, None)
        throttled = False
        assert wait_outputs(s, exp.outputs, timeout=300) == exp.outputs
        time.sleep(1.0)
        assert output_count(s) == exp.outputs
    finally:
        try:
            stop_worker(proc)
        finally:
            if throttled:
                set_consumer_quota(s, client_id, None)
    check_outputs(s, exp, records)
    check_counters(redis, Keys(s.redis_prefix), exp)


@pytest.mark.parametrize("engine", ["faust", "confluent"])
def test_a_batch_stuck_in_hand_restarts_the_worker_and_answers_everything_once(fresh_settings, tmp_path, engine):
    """Redis holds every write (CLIENT PAUSE ... WRITE) but answers PING: the batch in hand retries for ever and
    no other batch starts, the state in which the stall watch used to wait without end (RELIABILITY.md fault 10).
    After twice the stall time the worker restarts in place (same pid); once writes flow again every event is
    applied and answered exactly once, the replayed batch included. (A Redis of its own: the pause would hold
    every other test's writes.)"""
    import redis as redis_lib

    s, server = own_redis(fresh_settings, tmp_path, worker_stall_s=3.0)
    redis = redis_lib.Redis(port=s.redis_port)
    records, exp, rest, port, proc = started_on_a_third(s, 1500, seed=17, engine=engine)
    paused = False
    try:
        redis.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        paused = True
        publish(s, rest)
        restarts = wait_recovered(port, "streamrec_worker_stall_restarts", timeout=60)
        assert restarts >= 1, "the stall watch did not act on the batch stuck in hand"
        assert proc.poll() is None  # the same process, re-executed
        redis.execute_command("CLIENT", "UNPAUSE")
        paused = False
        assert wait_outputs(s, exp.outputs, timeout=300) == exp.outputs
        time.sleep(1.0)
        assert output_count(s) == exp.outputs
    finally:
        if paused:
            redis.execute_command("CLIENT", "UNPAUSE")
        stop_worker(proc)
    try:
        check_outputs(s, exp, records)
        check_counters(redis, Keys(s.redis_prefix), exp)
    finally:
        server.stop()
