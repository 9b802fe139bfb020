"""`streamrec segments` against real Redis and Kafka: histories read from the feature store, the
segments written back, and a recommendation for a segmented user carries its segment, on the topic,
in the pull API and in the scorer's per-segment metric."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from confluent_kafka import Producer

from streamrec.cli import build_parser
from streamrec.stream import schemas, topics
from streamrec.stream.feature_store import RedisFeatureStore
from streamrec.stream.features import DecodedEvent, SourceEvent
from streamrec.stream.keys import Keys
from streamrec.stream.sdk import RecommendationConsumer
from streamrec.trainer import segments as seg
from streamrec.trainer.data import Interactions
from streamrec.trainer.synth import SynthConfig, synthesize

from .test_scorer import Running, metric

pytestmark = pytest.mark.integration
PLANTED = SynthConfig(users=40, items=60, categories=8, sessions_per_user=3, segments=4, seed=3)


def load_features(s, data) -> None:
    """The synthetic history in Redis exactly as the worker stores it, plus the catalog's categories."""
    store = RedisFeatureStore(s)
    raws = [json.dumps(e).encode() for e in data.events]
    batch = [DecodedEvent(SourceEvent("events", 0, k, e["user_id"].encode(), raw, e["ts"]), schemas.decode_event(raw))
             for k, (e, raw) in enumerate(zip(data.events, raws))]
    for start in range(0, len(batch), 1000):
        store.apply(batch[start:start + 1000])
    for item in data.items:
        store.put_item_meta(item["item_id"], {"category": item["category"]})
    store.close()


def publish_sequence_model(s, data, tmp_path) -> None:
    """A sequence model trained for a few epochs on the history, exported (parity-checked) and announced."""
    from streamrec.trainer.export import export_sasrec
    from streamrec.trainer.publish import publish
    from streamrec.trainer.train import TrainConfig, train_sequence_model

    categories = {r["item_id"]: r["category"] for r in data.items}
    inter = Interactions.from_rows(data.events, categories, source="synth")
    import torch

    cfg = TrainConfig.tiny(epochs=2).with_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a shared machine
    try:
        model, _, _, catalog = train_sequence_model(inter, replace(cfg, seq=dict(item_buckets=512, cat_buckets=32,
                                                                                   dim=16, max_len=20)))
    finally:
        torch.set_num_threads(threads)
    exported = export_sasrec(model, tmp_path / "seq", catalog, categories)
    hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
    publish(s, "sasrec", exported, kind="sasrec", metrics={}, data_window={}, hashing=hashing, version="v1")


def score_requests(s, users: list[str]) -> list[str]:
    """What the worker emits after applying an event: one score request per user (returns the event ids)."""
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    ids = []
    for k, user in enumerate(users):
        req = schemas.ScoreRequest(event_id=f"seg-{k}", user_id=user, session_id=f"{user}-s0", item_id="i1",
                                   type="view", ts=1_767_225_600_000, feature_version=1)
        producer.produce(s.topic(topics.SCORE_REQUESTS), key=user.encode(), value=schemas.encode(req))
        ids.append(req.event_id)
    assert producer.flush(30) == 0
    return ids


def test_segments_from_redis_reach_recommendations_and_metrics(fresh_settings, redis, tmp_path):
    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    data = synthesize(PLANTED)
    load_features(s, data)
    publish_sequence_model(s, data, tmp_path)

    args = build_parser().parse_args(["segments", "--data", "redis", "--k", "4", "--out", str(tmp_path / "out")])
    args.settings = s
    assert seg.cmd_segments(args) == 0
    report = json.loads((tmp_path / "out" / "segments.json").read_text())
    assert report["users"] == PLANTED.users and report["redis"]["users"] == PLANTED.users
    assert report["model"] == "sasrec@v1" and report["source"] == f"redis {s.redis_prefix!r}"
    assert set(report["quality"]) == {"kmeans", "activity"} and len(report["segments"]) == 4
    assert (tmp_path / "out" / "segments.png").stat().st_size > 10_000

    # What was read from Redis is each user's history (distinct items) with the worker's counts.
    keys = Keys(s.redis_prefix)
    hist = seg.Histories.from_redis(redis, keys)
    inter = Interactions.from_rows(data.events)
    assert hist.users == sorted(f"u{u}" for u in range(PLANTED.users))
    assert [set(x) for x in hist.sequences] == [set(inter.sequences()[u]) for u in hist.users]
    views = [sum(1 for e in data.events if e["user_id"] == u and e["type"] == "view") for u in hist.users]
    assert hist.counts["view"].tolist() == views and hist.categories["i0"] == data.items[0]["category"]

    segment_of = {u: int(redis.get(keys.segment(u))) for u in hist.users}
    assert sorted(set(segment_of.values())) == [0, 1, 2, 3]
    assert 0 < redis.ttl(keys.segment("u0")) <= s.segments_ttl_s

    running = Running(s)
    try:
        with RecommendationConsumer(s, from_beginning=True) as recs:
            known, stranger = score_requests(s, ["u0", "nobody-segmented"])
            rec = recs.wait_for(known, timeout=30)
            assert rec.user_id == "u0" and rec.segment == segment_of["u0"] and rec.items
            assert recs.wait_for(stranger, timeout=30).segment is None
        status, body = running.get("/v1/recommendations/u1")
        assert status == 200 and json.loads(body)["segment"] == segment_of["u1"]
        body = running.get("/metrics")[1]
        assert metric(body, "streamrec_scorer_recommendations_total", segment=str(segment_of["u0"])) >= 1
        assert metric(body, "streamrec_scorer_recommendations_total", segment="none") >= 1
    finally:
        assert running.stop() == 0
    # Another run re-segments the same users with the same ids (ordered by size, seeded).
    assert seg.cmd_segments(args) == 0
    assert {u: int(redis.get(keys.segment(u))) for u in hist.users} == segment_of
    assert np.isfinite(report["quality"]["kmeans"]["silhouette"])
