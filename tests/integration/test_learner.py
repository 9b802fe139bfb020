"""The online trainer against real Kafka and Redis: joining from the topics, and a restart in the
middle of an attribution window that neither loses nor double-counts a reward."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer, TopicPartition

from streamrec.stream import topics
from streamrec.online.joiner import Joiner
from streamrec.online.learner import LearnerConfig, OnlineLearner
from tests.unit.trainer.test_online_learning import ITEMS, publish_models

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000


def records():
    """(topic, key, value) in production order: 60 slates, clicks, carts, purchases, duplicates."""
    recs, evs = [], []
    for k in range(60):
        created = T0 + k * 100
        items = [ITEMS[(k + j) % len(ITEMS)] for j in range(5)]
        recs.append({"rec_id": f"r{k}", "user_id": f"u{k % 10}", "session_id": "s", "trigger_event_id": f"t{k}",
                     "variant": "a" if k % 2 else "b", "created_ts": created, "event_ts": created,
                     "items": [{"item_id": i, "score": 1.0, "propensity": 0.5, "reason": "seq"} for i in items]})
        if k % 2 == 0:
            pos = k % 5
            evs.append({"event_id": f"c{k}", "type": "click", "user_id": f"u{k % 10}", "item_id": items[pos],
                        "ts": created + 50, "rec_id": f"r{k}", "position": pos})
            if k % 6 == 0:  # a purchase well inside the window, after the restart for slates 30..39
                evs.append({"event_id": f"p{k}", "type": "purchase", "user_id": f"u{k % 10}", "item_id": items[pos],
                            "ts": created + 1500, "rec_id": f"r{k}", "position": pos})
    return recs, evs


def produce(s, name, values, key):
    p = Producer({"bootstrap.servers": s.kafka_bootstrap})
    for v in values:
        p.produce(s.topic(name), json.dumps(v).encode(), key=v[key].encode())
    assert p.flush(30) == 0


def consume_all(learner, s, timeout=60.0):
    """Poll until the learner's offsets reach every partition's end."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "probe"})
    ends = {}
    for name in (topics.RECOMMENDATIONS, topics.EVENTS):
        t = s.topic(name)
        for p in c.list_topics(t, timeout=10).topics[t].partitions:
            ends[f"{t}:{p}"] = topics.watermarks(c, TopicPartition(t, p))[1]
    c.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        learner.poll_once(0.2)
        if all(learner.offsets.get(k, 0) >= v for k, v in ends.items() if v > 0):
            return
    raise AssertionError(f"learner stuck at {learner.offsets}, ends {ends}")


def test_restart_in_the_middle_of_a_window_neither_loses_nor_double_counts(fresh_settings, tmp_path):
    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    publish_models(s, tmp_path)
    cfg = LearnerConfig(window_ms=2000, dry_run=True, gate_every_s=3600, gate_every_samples=10**9,
                        checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every_s=3600)
    recs, evs = records()
    cut_ts = T0 + 40 * 100  # first part: everything before slate 40
    first_evs = [e for e in evs if e["ts"] < cut_ts]
    later_evs = [e for e in evs if e["ts"] >= cut_ts]
    dup = [e for e in first_evs if e["type"] == "click"][-3:]  # re-sent after the restart (retries)

    produce(s, topics.RECOMMENDATIONS, recs[:40], "user_id")
    produce(s, topics.EVENTS, first_evs, "user_id")
    one = OnlineLearner(s, cfg, port=0)
    one.start()
    consume_all(one, s)
    one.stop()
    one.close()  # SIGTERM path: finish, checkpoint
    assert one.joiner.open, "the restart must happen with slates still inside their window"
    open_at_restart = set(one.joiner.open)

    produce(s, topics.RECOMMENDATIONS, recs[40:], "user_id")
    produce(s, topics.EVENTS, later_evs + dup, "user_id")
    two = OnlineLearner(s, cfg, port=0)
    two.start()
    assert two.joiner.open.keys() == open_at_restart
    consume_all(two, s)
    two.stop()
    two.close()

    ref = Joiner(cfg.join())
    closed = []
    for r in recs:
        closed += ref.add_recommendation(r)
    for e in evs + dup:
        closed += ref.add_interaction(e)
    expected = {sl.rec_id: sl.rewards for sl in closed + ref.flush()}
    got = {sl.rec_id: sl.rewards for sl in list(two.train_buf) + list(two.holdout) + list(two.joiner.flush())}
    assert got == expected
    for kind in ("click", "purchase"):
        assert two.joiner.counts[f"reward:{kind}"] == ref.counts[f"reward:{kind}"] > 0
    # The three retried clicks were read (consume_all) and added nothing (the rewards above): refused as
    # duplicates while their slate was open, or as late once event time had closed it. Which of the two
    # depends on how the consumer interleaves the partitions (2 duplicates and 1 late in one run of 2026-12-07).
    assert two.joiner.counts["duplicates"] + two.joiner.counts["late"] >= 3
    assert len(two.train_buf) + len(two.holdout) >= 40, "slates must close as the watermark passes"
    # Features were read from Redis (the scorer's code) for every slate, even with no worker data.
    assert all(len(sl.features["dense"]) == len(sl.items) for sl in two.train_buf)


def test_learn_command_serves_health_and_metrics_and_stops_cleanly_on_sigterm(fresh_settings, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from streamrec.harness.bench.features import _free_port

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    publish_models(s, tmp_path)
    port = _free_port()
    env = {**os.environ, **s.as_env(), "STREAMREC_LEARNER_PORT": str(port), "STREAMREC_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "learn", "--checkpoint-dir", str(tmp_path / "ck"),
                             "--dry-run"], env=env, stderr=subprocess.PIPE)
    try:
        body = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        recs, evs = records()
        produce(s, topics.RECOMMENDATIONS, recs, "user_id")
        # Malformed events on the topic (the worker dead-letters them) must not stop the learner.
        bad = Producer({"bootstrap.servers": s.kafka_bootstrap})
        for raw in (b'{"event_id": "x", "type": "click", "user_id": "u", "item_id": "i", "rec_id": "r",'
                    b' "ts": "yesterday"}', b"not json", b"\xff\xfe"):
            bad.produce(s.topic(topics.EVENTS), raw, key=b"u")
        assert bad.flush(30) == 0
        produce(s, topics.EVENTS, evs, "user_id")
        deadline = time.monotonic() + 120  # its own wait: a slow start on a loaded machine must not eat it
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                body = r.read().decode()
            if 'streamrec_learner_rewards_total{type="purchase"} 10.0' in body:
                break
            time.sleep(0.3)
        assert 'streamrec_learner_rewards_total{type="click"} 30.0' in body
        assert "streamrec_learner_samples_joined_total" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc == 0, proc.stderr.read().decode()[-2000:]
    assert (tmp_path / "ck" / "learner.json").exists()


def test_trains_on_the_features_served_with_the_slate_not_on_those_read_after_the_click(fresh_settings, tmp_path):
    """By the time a slate reaches the learner, Redis already holds the user's reaction to it (the clicked
    item is in the session, its counts include the click). Served features are used instead; a slate
    without them falls back to reading Redis, and is counted as such. A degraded answer (the scorer served its
    trending snapshot without reading Redis) trains nothing."""
    from streamrec.trainer.dcn import DENSE_FEATURES

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    publish_models(s, tmp_path)
    cfg = LearnerConfig(window_ms=500, dry_run=True, gate_every_s=3600, gate_every_samples=10**9,
                        checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every_s=3600)
    names = list(DENSE_FEATURES)
    logged = [[100.0 + 10 * row + col for col in range(len(names))] for row in range(3)]
    served_session, served_history = [ITEMS[5], ITEMS[6]], [ITEMS[7]]
    recs = []
    for k, features in enumerate(({"names": names, "dense": logged, "session": served_session,
                                   "history": served_history}, None, None)):
        rec = {"rec_id": f"r{k}", "user_id": "u1", "session_id": "s", "trigger_event_id": f"t{k}", "variant": "a",
               "created_ts": T0 + k, "event_ts": T0 + k,
               "items": [{"item_id": i, "score": 1.0, "propensity": 1.0, "reason": "seq"} for i in ITEMS[:3]]}
        if features:
            rec["features"] = features
        if k == 2:
            rec["degraded"] = True
        recs.append(rec)
    produce(s, topics.RECOMMENDATIONS, recs, "user_id")
    produce(s, topics.EVENTS, [{"event_id": "late", "type": "view", "user_id": "u1", "item_id": ITEMS[9],
                                "ts": T0 + 60_000}], "user_id")  # moves the watermark past both windows
    learner = OnlineLearner(s, cfg, port=0)
    learner.start()
    consume_all(learner, s)
    learner.stop()
    learner.close()
    slates = {sl.rec_id: sl for sl in list(learner.train_buf) + list(learner.holdout) + learner.joiner.flush()}
    assert set(slates) == {"r0", "r1", "r2"}
    assert learner.counts["features_served"] == 1 and learner.counts["features_read_late"] == 1
    assert learner.counts["features_degraded"] == 1 and not slates["r2"].features
    served = slates["r0"].features
    assert served["session"] == served_session and served["history"] == served_history
    seq = names.index("seq_score")
    for row, want in zip(served["dense"], logged):
        assert [x for j, x in enumerate(row) if j != seq] == [x for j, x in enumerate(want) if j != seq]
        # The sequence score is the learner's own model's, on the served session.
        assert row[seq] != want[seq] and abs(row[seq]) < 100
    late = slates["r1"].features
    # read from Redis, which knows nothing of u1
    assert late["session"] == [] and late["history"] == [] and len(late["dense"]) == 3
    assert late["dense"][0][names.index("item_log_views")] != logged[0][names.index("item_log_views")]
