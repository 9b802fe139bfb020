"""The replicated topology (`streamrec up --replicated`) on ports and a folder of its own: three KRaft brokers, a
Redis primary with a replica and three Sentinels. A worker loses nothing and answers nothing twice when the Redis
primary or a Kafka broker is killed under it."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from streamrec import security
from streamrec.deploy.localstack import LocalStack, install_kafka
from streamrec.harness.bench.features import start_worker, stop_worker
from streamrec.settings import Settings
from streamrec.stream import topics
from streamrec.stream.keys import Keys
from streamrec.stream.synthetic import synthetic_stream

from .helpers import check_counters, check_outputs, output_count, publish, reference, wait_outputs

pytestmark = [pytest.mark.integration, pytest.mark.stack]


def free_ports(n: int) -> int:
    """The first of `n` consecutive free ports."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n < 65000 and all(_free(first + k) for k in range(n)):
            return first
    raise RuntimeError(f"no {n} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    shared_home = Settings.from_env().home_path
    libs = install_kafka(shared_home, log=lambda m: None)  # fetched once, shared by every instance
    home = tmp_path_factory.mktemp("replicated")
    (home / "kafka").mkdir()
    os.symlink(libs, home / "kafka" / "libs")
    kafka, redis = free_ports(6), free_ports(5)
    base = Settings.from_env().replace(home=str(home), kafka_port=kafka, kafka_controller_port=kafka + 1,
                                       redis_port=redis, redis_replica_port=redis + 1, redis_sentinel_port=redis + 2,
                                       redis_url=f"redis://127.0.0.1:{redis}/0", kafka_heap="256m")
    stack = LocalStack(base)
    stack.up(replicated=True, timeout=180, log=lambda m: None)
    s = stack.replicated_settings().replace(topic_prefix="rep.", redis_prefix="rep:")
    topics.create_topics(s)
    yield stack, s
    stack.down()


def _primary_port(s: Settings) -> int:
    client = security.redis_client(s)
    try:
        return int(client.connection_pool.get_master_address()[1])
    finally:
        client.close()


def _restart_as_replica(stack: LocalStack, name: str, s: Settings) -> None:
    """Start a killed Redis again and wait until the Sentinels have made it a replica of the new primary."""
    svc = stack.services[name]
    svc.start(timeout=60, log=lambda m: None)
    client = security.redis_client(s.replace(redis_sentinels="", redis_url=f"redis://127.0.0.1:{svc.port}/0"))
    deadline = time.monotonic() + 60
    while client.info("replication")["role"] != "slave":
        assert time.monotonic() < deadline, f"{name} did not rejoin as a replica"
        time.sleep(0.5)
    client.close()


def test_topics_have_three_replicas_and_need_two_in_sync(replicated):
    stack, s = replicated
    infos = {i.name: i for i in topics.describe_topics(s)}
    assert {i.replication for i in infos.values()} == {3}
    assert all(i.configs.get("min.insync.replicas") == "2" for i in infos.values()), infos
    states = {st.name: st.state for st in stack.status()}
    assert all(states[n] == "running" for n in ("redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3",
                                                "kafka-1", "kafka-2", "kafka-3")), states


def _worker_through(s: Settings, seed: int, fault) -> None:
    """A confluent worker on a stream, `fault()` after the first third; then every event applied and answered
    exactly once, counted from Kafka and Redis."""
    records = list(synthetic_stream(3000, users=300, items=500, seed=seed))
    exp = reference(records)
    first, rest = records[:1000], records[1000:]
    publish(s, first)
    proc = start_worker(s, engine="confluent")
    try:
        wait_outputs(s, reference(first).outputs, timeout=120)
        fault()
        publish(s, rest)
        assert wait_outputs(s, exp.outputs, timeout=240) == exp.outputs
        time.sleep(1.0)
        assert output_count(s) == exp.outputs
    finally:
        assert stop_worker(proc) == 0
    check_outputs(s, exp, records)
    client = security.redis_client(s)
    check_counters(client, Keys(s.redis_prefix), exp)
    client.close()


def test_redis_primary_killed_the_sentinels_fail_over_and_nothing_is_lost(replicated, tmp_path):
    stack, base = replicated
    s = base.replace(topic_prefix="rf.", redis_prefix="rf:")
    topics.create_topics(s)
    before = _primary_port(s)
    name = next(n for n in ("redis", "redis-replica") if stack.services[n].port == before)

    def kill_primary():
        primary = security.redis_client(s)
        waits = primary.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        primary.close()
        assert waits > 0, "the worker committed batches without waiting for the replica"
        os.kill(stack.services[name].pid(), signal.SIGKILL)

    _worker_through(s, seed=21, fault=kill_primary)
    assert _primary_port(s) != before, "the Sentinels did not promote the replica"
    _restart_as_replica(stack, name, s)


def test_a_broker_killed_under_load_loses_no_acknowledged_event(replicated):
    stack, base = replicated
    s = base.replace(topic_prefix="bk.", redis_prefix="bk:")
    topics.create_topics(s)
    admin = topics.admin_client(s)
    meta = admin.list_topics(s.topic(topics.EVENTS), timeout=10).topics[s.topic(topics.EVENTS)]
    leaders = [p.leader for p in meta.partitions.values()]
    busiest = max(set(leaders), key=leaders.count)  # the broker that leads most partitions of `events`
    node = stack.services[f"kafka-{busiest}"]

    def kill_leader():
        os.kill(node.pid(), signal.SIGKILL)

    try:
        _worker_through(s, seed=22, fault=kill_leader)
    finally:
        node.start(timeout=180, log=lambda m: None)
