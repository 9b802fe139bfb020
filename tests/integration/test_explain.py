"""Explanations of served slates with real Redis features: honest against the ranker, stable across
runs and scorer instances, in plain words; and `GET /v1/recommendations/{user}?explain=true`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from streamrec.serving.config import ScorerConfig
from streamrec.serving.engine import Engine
from streamrec.serving.features import FeatureReader, dense_matrix
from streamrec.serving.models import ModelStore
from streamrec.serving.ranking import Ranker
from streamrec.serving.scorer import redis_client
from streamrec.stream.feature_store import RedisFeatureStore
from streamrec.stream.features import DecodedEvent, SourceEvent
from streamrec.stream.keys import FeatureConfig, Keys
from streamrec.stream.schemas import ScoreRequest, decode_event

from ..unit.serving.test_explain import ID_GROUPS, neutralised, publish_planted
from .test_scorer import Running

pytestmark = pytest.mark.integration
SHOES = [f"s{i}" for i in range(6)]
BOOKS = [f"b{i}" for i in range(6)]
MINUTE = 60_000


def load_features(s) -> ScoreRequest:
    """A crowd browsing shoes and books (co-visitation, views, clicks), then alice viewing three shoes
    in one session; returns the score request of alice's last view."""
    store = RedisFeatureStore(s)
    for item in SHOES + BOOKS:
        store.put_item_meta(item, {"category": "shoes" if item in SHOES else "books"})
    t0 = (int(time.time() * 1000) // MINUTE - 120) * MINUTE
    events, k = [], 0
    for c in range(6):
        for item in (SHOES[c], SHOES[(c + 1) % 6], BOOKS[c], BOOKS[(c + 1) % 6]):
            kind = "click" if (c + len(item)) % 3 == 0 or item in ("s3", "b1") else "view"
            events.append({"event_id": f"crowd{k}", "type": kind, "user_id": f"crowd{c}", "item_id": item,
                           "session_id": f"crowd{c}-s", "ts": t0 + k * MINUTE})
            k += 1
    for j, item in enumerate(("s0", "s1", "s2")):
        events.append({"event_id": f"alice{j}", "type": "view", "user_id": "alice", "item_id": item,
                       "session_id": "alice-s", "ts": t0 + (k + j) * MINUTE})
    batch = [DecodedEvent(SourceEvent("events", 0, n, e["user_id"].encode(), json.dumps(e).encode(), 0),
                          decode_event(json.dumps(e).encode())) for n, e in enumerate(events)]
    outcome = store.apply(batch)[-1]
    store.close()
    last = events[-1]
    return ScoreRequest(event_id=last["event_id"], user_id="alice", session_id=outcome.session_id,
                        item_id=last["item_id"], type="view", ts=last["ts"], feature_version=outcome.feature_version)


def engine_for(s, ranker, **config) -> Engine:
    """An engine of its own (reader, model store) serving ``ranker`` as the live ranker, no sequence model."""
    cfg = ScorerConfig(**{"seed": 0, "top_n": 5, "explain_top": 9, **config})
    models = ModelStore(s, cfg)
    models.live[cfg.ranker_model] = ranker
    return Engine(FeatureReader(redis_client(s, 2.0), Keys(s.redis_prefix), FeatureConfig.from_settings(s)), models,
                  cfg)


def explained(rec) -> list:
    return [(it.item_id, it.score, it.explanation) for it in rec.items]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain-int")
    model, folder, meta = publish_planted(str(tmp / "registry"), tmp)
    return model, folder, meta


def test_served_explanations_are_honest_stable_and_in_plain_words(settings, planted):
    s = settings.replace(redis_prefix=f"{settings.redis_prefix}explain:")
    request = load_features(s)
    model, folder, meta = planted
    ranker = Ranker(folder, meta, device="cpu")
    now = request.ts + 1000
    rec = engine_for(s, ranker).recommend([request], now_ms=now, explain=True)[0]
    assert ranker.name in rec.models and len(rec.items) == 5
    assert all(it.explanation for it in rec.items), explained(rec)

    # Stable: the same request again, and on a second scorer (its own reader, model store, ONNX session).
    again = engine_for(s, ranker).recommend([request], now_ms=now, explain=True)[0]
    other = engine_for(s, Ranker(folder, meta, device="cpu")).recommend([request], now_ms=now, explain=True)[0]
    assert explained(rec) == explained(again) == explained(other)

    # Honest: rebuild each item's inputs from Redis, neutralise the named group ourselves, ask the ranker.
    reader = FeatureReader(redis_client(s, 2.0), Keys(s.redis_prefix), FeatureConfig.from_settings(s))
    (ctx,), _ = reader.contexts([request], 10)
    assert ctx.affinity == {"shoes": 1.0}  # read from the worker's `a:<category>` fields, prefix dropped
    items = [it.item_id for it in rec.items]
    stats = reader.item_stats(items)
    rows = np.arange(len(items))
    dense = dense_matrix(ranker.dense_features, stats, rows, [ctx], np.zeros(len(items), dtype=np.int64))
    sparse = ranker.sparse(["alice"] * len(items), items, stats.categories)
    full = ranker.score(sparse, dense).astype(np.float64)
    for j, it in enumerate(rec.items):
        assert it.score == pytest.approx(full[j], abs=1e-5)
        for c in it.explanation:
            assert c.group in ID_GROUPS or c.group in ranker.dense_features
            s_, d_ = neutralised(model, ranker, c.group, sparse[j:j + 1], dense[j:j + 1])
            delta = full[j] - float(ranker.score(s_, d_)[0])
            assert (delta > 0) == (c.direction == "up") and c.effect == pytest.approx(delta, abs=2e-6), (it, c)

    # Plain words with the real counts: alice viewed three shoes in this session, never a book.
    texts = {(stats.categories[j], c.group, c.text) for j, it in enumerate(rec.items) for c in it.explanation}
    assert ("shoes", "category_affinity", "viewed 3 similar items (shoes) in this session") in texts, texts
    assert any(cat == "books" and group == "category_affinity" and text == "books is new to you"
               for cat, group, text in texts), texts


def test_messages_carry_explanations_only_when_the_setting_is_on(settings, planted):
    s = settings.replace(redis_prefix=f"{settings.redis_prefix}explain-msg:")
    request = load_features(s)
    _, folder, meta = planted
    ranker = Ranker(folder, meta, device="cpu")
    plain = engine_for(s, ranker).recommend([request])[0]
    assert all(it.explanation is None for it in plain.items)
    on = engine_for(s, ranker, explain_messages=True, explain_top=2).recommend([request])[0]
    assert all(1 <= len(it.explanation) <= 2 for it in on.items)


def test_pull_api_explains_on_request(settings, tmp_path):
    # Model names of its own: other tests' announcements on the session's `model-versions` are not followed.
    s = settings.replace(registry_uri=str(tmp_path / "registry"), redis_prefix=f"{settings.redis_prefix}explain-http:")
    load_features(s)
    publish_planted(s.registry_uri, tmp_path, settings=s, send=True, name="explain-ranker")
    running = Running(s, top_n=5, ranker_model="explain-ranker", seq_model="explain-no-seq")
    try:
        code, body = running.get("/v1/recommendations/alice?explain=true")
        rec = json.loads(body)
        assert code == 200 and "explain-ranker@v1" in rec["models"] and len(rec["items"]) == 5, body
        for item in rec["items"]:
            reasons = item["explanation"]
            assert 1 <= len(reasons) <= 3  # scorer_explain_top
            for c in reasons:
                assert set(c) == {"group", "direction", "effect", "text"} and c["direction"] in ("up", "down")
                assert (c["effect"] > 0) == (c["direction"] == "up") and c["text"]
        code, body = running.get("/v1/recommendations/alice")
        assert code == 200 and all("explanation" not in it for it in json.loads(body)["items"])
        code, body = running.get("/v1/recommendations/alice?explain=maybe")
        assert code == 400 and "explain" in json.loads(body)["error"]
        assert running.get("/v1/recommendations/alice?n=3")[0] == 400
    finally:
        assert running.stop() == 0
