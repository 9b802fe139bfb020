"""The simulator against the live system: real Kafka, Redis, worker and scorer (no models: trending)."""

from __future__ import annotations

import json

import pytest

from streamrec.harness.simulator import SimConfig, Simulation
from streamrec.stream import topics
from streamrec.harness.bench.features import start_worker, stop_worker

from .helpers import read_topic

pytestmark = pytest.mark.integration


def test_simulated_users_act_through_kafka(fresh_settings, tmp_path):
    from .test_scorer import Running

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    worker = start_worker(s)
    scorer = Running(s)
    try:
        cfg = SimConfig(users=20, items=30, seed=1, rate=40, seconds=8, new_item_every_s=2, bucket_s=4,
                        attraction_bias=0.5)
        report = Simulation(s, cfg).run()
    finally:
        assert scorer.stop() == 0
        assert stop_worker(worker) == 0
    counts = report["counts"]
    assert counts["slates"] > 20 and counts.get("click", 0) > 0
    assert counts["new_items"] >= 2
    assert set(report["variants"]) == {"default"}
    assert report["variants"]["default"]["total"]["slates"] == counts["slates"]
    events = [json.loads(m.value()) for m in read_topic(s, topics.EVENTS)]
    clicks = [e for e in events if e["type"] == "click"]
    assert clicks and all(e.get("rec_id") and "position" in e for e in clicks)
    # Every slate a user was shown is logged as an impression of its items, and only those: the answers to
    # the users' own clicks were never displayed.
    shown = {e["rec_id"]: e["items"] for e in events if e["type"] == "impression"}
    assert len(shown) == counts["impression"] and 0 < counts["impression"] <= counts["slates"]
    recs = {r["rec_id"]: r for r in (json.loads(m.value()) for m in read_topic(s, topics.RECOMMENDATIONS))}
    assert all(items == [i["item_id"] for i in recs[rid]["items"]][:cfg.slate_seen] for rid, items in shown.items())
    click_ids = {e["event_id"] for e in clicks}
    assert not shown.keys() & {rid for rid, r in recs.items() if r["trigger_event_id"] in click_ids}
    assert {e["rec_id"] for e in clicks} <= shown.keys()
    catalog = {m.key().decode() for m in read_topic(s, topics.CATALOG)}
    assert {"sim-i0", "sim-i30", "sim-i31"} <= catalog
