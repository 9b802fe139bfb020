"""Content candidates against real Kafka and Redis: an item published to `catalog` after the scorer
started, that nobody ever interacted with, is recommended with reason `content` to a session of
similar items; a tombstone takes it back out."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from streamrec.stream import schemas, topics
from streamrec.stream.sdk import EventPublisher, RecommendationConsumer

from .test_scorer import Running, stack  # noqa: F401 - `stack` is a fixture (worker + fresh topics)

pytestmark = pytest.mark.integration

THEMES = {
    "kitchen": ("frying pan", "chef knife", "blender", "kettle", "cutting board", "wok"),
    "hiking": ("trail boots", "backpack", "tent", "trekking poles", "water bottle", "head torch"),
    "gaming": ("console", "controller", "headset", "gaming mouse", "keyboard", "monitor"),
}
CATALOG = [{"item_id": f"{theme[0]}{j}", "category": theme, "title": f"{noun.capitalize()}",
            "description": f"A {noun} for {theme} fans.", "tags": [theme]}
           for theme, nouns in THEMES.items() for j, noun in enumerate(nouns)]
NEW = {"item_id": "k-new", "category": "kitchen", "title": "Cast iron saucepan",
       "description": "A heavy saucepan for cooking in the kitchen.", "tags": ["kitchen", "cooking"]}


def publish_catalog(settings, records: list[dict], remove: tuple[str, ...] = ()) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **topics.kafka_security(settings)})
    topic = settings.topic(topics.CATALOG)
    for r in records:
        producer.produce(topic, schemas.encode(schemas.CatalogItem(**r)), key=r["item_id"].encode())
    for item in remove:
        producer.produce(topic, None, key=item.encode())
    assert producer.flush(30) == 0


def publish_content_ranker(settings, tmp_path) -> None:
    """A small DCN-V2 ranker whose training statistics say it learnt content_sim (untrained weights)."""
    import numpy as np

    from streamrec.trainer.dcn import DENSE_FEATURES, DCNRanker
    from streamrec.trainer.export import export_dcn
    from streamrec.trainer.publish import publish

    model = DCNRanker(user_buckets=64, item_buckets=64, cat_buckets=16, dim=4, hidden=(8,))
    model.set_dense_stats(np.random.default_rng(0).random((50, len(DENSE_FEATURES))))
    exported = export_dcn(model, tmp_path / "ranker")
    assert exported.extra["content_sim_trained"]
    hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
    publish(settings, "ranker", exported, kind=model.kind, metrics={}, data_window={}, hashing=hashing, version="vc")


def wait_content(running: Running, items: int, timeout: float = 60.0) -> dict:
    """The scorer's content status once its index holds ``items`` items (or the last status seen)."""
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = json.loads(running.get("/readyz")[1]).get("content", {})
        if status.get("items") == items:
            break
        time.sleep(0.1)
    return status


def test_new_catalog_item_is_recommended_by_content_before_anyone_clicked_it(stack, tmp_path):  # noqa: F811
    from streamrec.trainer.content import ContentTower, publish_content

    s = stack
    publish_catalog(s, CATALOG)
    meta, _, exported = publish_content(s, CATALOG, tower=ContentTower())
    assert exported.max_abs_diff["model.onnx"] <= 1e-4
    running = Running(s)
    try:
        status = wait_content(running, len(CATALOG))
        assert status == {"model": f"content@{meta.version}", "items": len(CATALOG), "embedded": 0}, status
        publish_catalog(s, [NEW])  # after the scorer started: only the scorer can embed it
        status = wait_content(running, len(CATALOG) + 1)
        assert status["items"] == len(CATALOG) + 1 and status["embedded"] == 1, status

        with RecommendationConsumer(s) as recs, EventPublisher(s) as pub:
            for item in ("k0", "k1"):
                pub.view("cook", item, session_id="s-cook")
            eid = pub.view("cook", "k2", session_id="s-cook")
            pub.flush()
            rec = recs.wait_for(eid, timeout=30)
            ids = [i.item_id for i in rec.items]
            reasons = {i.item_id: i.reason for i in rec.items}
            assert "k-new" in ids and reasons["k-new"] == "content", (ids, reasons)
            # A kitchen session: every kitchen item not seen yet ranks above every other theme's items.
            kitchen = [j for j, i in enumerate(ids) if i.startswith("k")]
            others = [j for j, i in enumerate(ids) if not i.startswith("k")]
            assert set(ids[: len(kitchen)]) == {"k3", "k4", "k5", "k-new"} and max(kitchen) < min(others), ids
            assert f"content@{meta.version}" in rec.models

            publish_catalog(s, [], remove=("k-new",))  # removed from the catalog: never proposed again
            assert wait_content(running, len(CATALOG))["items"] == len(CATALOG)
            eid = pub.view("cook", "k3", session_id="s-cook")
            pub.flush()
            rec = recs.wait_for(eid, timeout=30)
            assert "k-new" not in [i.item_id for i in rec.items]
            assert rec.items[0].reason == "content" and rec.items[0].item_id.startswith("k")

            # A ranker trained with content_sim: the scorer feeds each pair's cosine to the session profile.
            publish_content_ranker(s, tmp_path)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and json.loads(running.get("/readyz")[1])["arms"]["default"] != [
                    "ranker@vc"]:
                time.sleep(0.1)
            eid = pub.view("cook", "k4", session_id="s-cook")
            pub.flush()
            rec = recs.wait_for(eid, timeout=30)
            assert "ranker@vc" in rec.models
            users, items, _, dense = running.scorer.models.samples["dcn"]
            from streamrec.trainer.dcn import DENSE_FEATURES
            sim = dict(zip(items, dense[:, DENSE_FEATURES.index("content_sim")].tolist()))
            assert sim["k5"] > 0.5 and sim["k5"] > max(v for i, v in sim.items() if not i.startswith("k")), sim
    finally:
        assert running.stop() == 0
