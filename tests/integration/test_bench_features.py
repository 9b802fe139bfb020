"""`streamrec bench features`' throughput run against real Kafka and Redis: it drains every record and reports
what each event cost."""

from __future__ import annotations

import pytest

from streamrec.harness.bench.features import record_bytes, throughput
from streamrec.stream import topics

from .helpers import own_redis

pytestmark = pytest.mark.integration


def test_throughput_drains_every_record_and_reports_the_cost_per_event(settings, tmp_path):
    own, server = own_redis(settings, tmp_path)  # a Redis nothing else uses meanwhile, as the report assumes
    try:
        r = throughput(own, 2000, 1, engine="confluent")
    finally:
        server.stop()
    assert r["outputs"] == r["expected_outputs"] > 1500  # too few records to time: the rate is not checked
    cost = r["per_event"]
    # Every applied event runs the feature scripts (dozens of Redis calls inside them) and grows the state.
    assert cost["redis_commands"] >= 10 and cost["redis_cpu_us"] > 0 and cost["redis_bytes"] > 100
    # A score request carries the event and its source headers: larger than the event itself.
    assert cost["kafka_bytes"][topics.SCORE_REQUESTS] > cost["kafka_bytes"][topics.EVENTS] > 50


def test_a_baseline_commits_worker_drains_the_same_records(settings, tmp_path, monkeypatch):
    import psutil

    from streamrec.harness.bench import features
    from streamrec.harness.bench.baseline import materialise

    site = materialise("HEAD", root=tmp_path)
    seen = []
    start = features.start_worker

    def start_and_look(*args, **kwargs):
        proc = start(*args, **kwargs)
        child = psutil.Process(proc.pid)
        seen.append((child.cwd(), child.environ().get("PYTHONPATH")))
        return proc

    monkeypatch.setattr(features, "start_worker", start_and_look)
    r = throughput(settings, 1000, 1, engine="confluent", code=site)
    assert seen == [(str(site), str(site))]  # run from the commit's folder, importing it first
    assert r["outputs"] == r["expected_outputs"] > 700


def test_record_bytes_counts_key_value_and_headers(fresh_settings):
    from confluent_kafka import Producer

    s = fresh_settings
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, **topics.kafka_security(s)})
    producer.produce(s.topic(topics.CATALOG), value=b"12345", key=b"ab", headers=[("h", b"xyz")])
    assert producer.flush(30) == 0
    (msg,) = topics.read_all(s, topics.CATALOG)
    assert record_bytes(msg) == 2 + 5 + 1 + 3
