"""Degraded modes of the scoring core against a real Redis: Redis down, unknown user."""

from __future__ import annotations

import time

import pytest
import redis as redis_lib

from streamrec.serving.config import ScorerConfig
from streamrec.serving.engine import Engine
from streamrec.serving.features import FeatureReader
from streamrec.serving.models import ModelStore
from streamrec.stream.keys import Keys
from streamrec.stream.schemas import ScoreRequest

pytestmark = pytest.mark.integration


def request(user: str, item: str, event_id: str = "e1") -> ScoreRequest:
    return ScoreRequest(event_id=event_id, user_id=user, session_id="s1", item_id=item, type="purchase",
                        ts=int(time.time() * 1000), feature_version=1)


def test_redis_down_serves_the_trending_snapshot_marked_degraded_then_recovers(fresh_settings, redis):
    s = fresh_settings
    keys = Keys(s.redis_prefix)
    redis.zadd(keys.trending, {f"t{i}": 100 - i for i in range(30)})
    redis.sadd(keys.removed, "t1")
    cfg = ScorerConfig(top_n=5, redis_retry_s=0.3)
    reader = FeatureReader(redis_lib.Redis.from_url(s.redis_url), keys)
    engine = Engine(reader, ModelStore(s, cfg), cfg)

    rec = engine.recommend([request("nobody", "t0")])[0]
    assert not rec.degraded and rec.models == []
    assert [i.item_id for i in rec.items] == ["t2", "t3", "t4", "t5", "t6"]  # bought t0 and removed t1 left out
    assert {i.reason for i in rec.items} == {"trending"}

    good = reader.client
    reader.client = redis_lib.Redis(host="127.0.0.1", port=1, socket_timeout=0.2, socket_connect_timeout=0.2)
    recs = engine.recommend([request("u1", "t3", "e2"), request("u2", "t0", "e3")])
    assert all(r.degraded for r in recs) and not engine.redis_ok
    assert [i.item_id for i in recs[0].items] == ["t0", "t1", "t2", "t4", "t5"]  # the snapshot, minus t3
    assert [r.trigger_event_id for r in recs] == ["e2", "e3"]

    reader.client = good
    time.sleep(0.35)
    rec = engine.recommend([request("u1", "t3", "e4")])[0]
    assert not rec.degraded and engine.redis_ok


def test_cold_start_with_models_uses_content_and_seq_and_ranks_with_the_ranker(fresh_settings, redis, tmp_path):
    from .test_scorer import ITEMS, build_models

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    keys = Keys(s.redis_prefix)
    redis.zadd(keys.trending, {f"t{i}": 100 - i for i in range(30)})
    cfg = ScorerConfig(top_n=8, exploration="epsilon", epsilon=0.5, seed=1, max_candidates=60)
    store = ModelStore(s, cfg)
    for ann in build_models(s, tmp_path, "v1", send=False):
        assert store.offer(ann)
    assert store.swap_pending() == ["sasrec@v1", "ranker@v1"]
    engine = Engine(FeatureReader(redis_lib.Redis.from_url(s.redis_url), keys), store, cfg)
    recs = engine.recommend([request("never-seen", ITEMS[3], "c1"), request("never-seen-2", "new-item", "c2")])
    for rec in recs:
        assert rec.models == ["sasrec@v1", "ranker@v1"] and len(rec.items) == 8
        reasons = {i.reason.split(":")[0] for i in rec.items}
        assert reasons <= {"content", "seq", "trending", "explore"}
        assert all(0 < i.propensity <= 1 for i in rec.items)
        assert rec.items[0].item_id != rec.trigger_event_id
    assert ITEMS[3] not in [i.item_id for i in recs[0].items]
    # A version whose graph does not load is refused; the live ones stay.
    bad = build_models(s, tmp_path / "bad", "v2", which=("ranker",), send=False)[0]
    (tmp_path / "registry" / "ranker" / "v2" / "meta.json").write_text("{}")
    assert not store.offer(bad)
    assert store.swap_pending() == [] and store.live["ranker"].name == "ranker@v1"
    # A model failing at run time: every request is still answered, from the snapshot, marked degraded.
    def broken(*_):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    store.live["ranker"].score = broken
    recs = engine.recommend([request("u9", ITEMS[1], "c3")])
    assert recs[0].degraded and recs[0].trigger_event_id == "c3" and len(recs[0].items) == 8


def test_ab_arms_bind_users_to_pinned_versions(fresh_settings, redis, tmp_path):
    from streamrec.serving import ab

    from .test_scorer import ITEMS, build_models

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    keys = Keys(s.redis_prefix)
    redis.zadd(keys.trending, {f"t{i}": 100 - i for i in range(30)})
    build_models(s, tmp_path, "v1", which=("ranker",), send=False)
    live = build_models(s, tmp_path, "v2", which=("ranker",), send=False)[0]
    from streamrec.serving.config import parse_arms

    cfg = ScorerConfig(arms=parse_arms("old=50:ranker@v1,new=50"), seed=0)
    store = ModelStore(s, cfg)
    store.offer(live)
    store.swap_pending()
    store.pin(cfg.arms)
    engine = Engine(FeatureReader(redis_lib.Redis.from_url(s.redis_url), keys), store, cfg)
    users = [f"user-{k}" for k in range(40)]
    recs = engine.recommend([request(u, ITEMS[k % len(ITEMS)], f"e{k}") for k, u in enumerate(users)])
    seen = set()
    for u, rec in zip(users, recs):
        arm = ab.arm_of(u, cfg.arms).name
        assert rec.variant == arm
        assert rec.models == (["ranker@v1"] if arm == "old" else ["ranker@v2"])
        seen.add(arm)
    assert seen == {"old", "new"}


def test_a_trending_arm_serves_the_crowd_s_unseen_items_while_the_other_arm_uses_its_models(fresh_settings, redis,
                                                                                            tmp_path):
    from streamrec.serving import ab
    from streamrec.serving.config import parse_arms

    from .test_scorer import ITEMS, build_models

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    keys = Keys(s.redis_prefix)
    redis.zadd(keys.trending, {f"t{i}": 100 - i for i in range(30)})
    # Co-visitation that a model arm would propose first: a trending arm must not.
    redis.zadd(keys.covis(ITEMS[0]), {ITEMS[1]: 50.0, ITEMS[2]: 40.0})
    cfg = ScorerConfig(arms=parse_arms("pop=1:trending,model=1"), top_n=5, seed=0)
    store = ModelStore(s, cfg)
    for ann in build_models(s, tmp_path, "v1", send=False):
        assert store.offer(ann)
    store.swap_pending()
    store.pin(cfg.arms)
    engine = Engine(FeatureReader(redis_lib.Redis.from_url(s.redis_url), keys), store, cfg)
    users = [f"user-{k}" for k in range(30)]
    recs = engine.recommend([request(u, ITEMS[0], f"e{k}") for k, u in enumerate(users)])
    arms = {ab.arm_of(u, cfg.arms).name for u in users}
    assert arms == {"pop", "model"}
    unlogged = engine.recommend([request(u, ITEMS[0], f"f{k}") for k, u in enumerate(users)], log_features=False)
    assert all(r.features is None for r in unlogged if r.variant == "pop")
    for u, rec in zip(users, recs):
        assert not rec.degraded
        if ab.arm_of(u, cfg.arms).name == "pop":
            assert rec.variant == "pop" and rec.models == []
            assert [i.item_id for i in rec.items] == ["t0", "t1", "t2", "t3", "t4"]
            assert {i.reason for i in rec.items} == {"trending"}
            # Unranked, yet logged with the live ranker's inputs, for the online trainer.
            assert rec.features.names == list(store.live["ranker"].dense_features)
            assert len(rec.features.dense) == 5 and rec.features.session == []
        else:
            assert rec.variant == "model" and rec.models == ["sasrec@v1", "ranker@v1"]
            assert {i.reason.split(":")[0] for i in rec.items} - {"trending"}, "the model arm proposes its own"


def test_readiness_names_a_trending_arm_and_does_not_call_it_degraded(fresh_settings, redis, tmp_path):
    from streamrec.serving.config import parse_arms
    from streamrec.serving.scorer import Scorer

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))

    def status(spec: str) -> dict:
        scorer = Scorer(s, ScorerConfig(arms=parse_arms(spec)), port=0)  # not run: no model was offered
        try:
            return scorer.status()
        finally:
            scorer.consumer.close()

    only_pop = status("pop=1:trending")
    assert only_pop["arms"] == {"pop": ["trending"]} and not only_pop["degraded"]["no_model"]
    both = status("pop=1:trending,model=1")
    assert both["arms"] == {"pop": ["trending"], "model": []} and both["degraded"]["no_model"]
