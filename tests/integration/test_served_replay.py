"""The served-slate evaluation's in-memory features equal what the real worker writes to a real Redis.

One small history (every event type, named and derived sessions, ties in time, a session past its
cap, a span past trending's rescale) goes to Kafka and through the real worker into Redis, and
through `MemoryFeatureStore`. At two cuts of the stream the scorer's Redis reader and the
`MemoryFeatureReader` read the same requests and must agree: the score requests themselves (session
ids, feature versions), sessions, history, seen items, counts, affinity, trending, co-visitation lists
and weights, item statistics and categories. Decayed values agree within float tolerance; raw
trending scores agree up to one factor (each side's landmark is the first event it applied; the
worker applies partitions in its own order), so they are compared as ratios to the top score.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from confluent_kafka import Producer

from streamrec.serving.config import ScorerConfig
from streamrec.serving.features import FeatureReader
from streamrec.serving.memory_features import MemoryFeatureReader
from streamrec.serving.scorer import redis_client
from streamrec.stream import schemas, topics
from streamrec.harness.bench.features import start_worker, stop_worker
from streamrec.stream.keys import FeatureConfig, Keys
from streamrec.stream.memory_store import MemoryFeatureStore
from streamrec.stream.synthetic import Record
from streamrec.trainer.data import Interactions
from streamrec.trainer.served_eval import history_events

from .helpers import publish, read_topic, wait_outputs

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000
MIN = 60_000
HOUR = 60 * MIN
KINDS = ["view", "click", "add_to_cart", "purchase", "skip", "rating", "impression"]
GAPS = [0, 20_000, 10 * MIN, 29 * MIN, 45 * MIN, 5 * HOUR]


def history() -> Interactions:
    """Eight users on 20 items (16 with a category); users 0, 3 and 6 name their sessions."""
    rng = np.random.default_rng(5)
    items = [f"i{k}" for k in range(20)]
    rows = []
    for u in range(8):
        t, session = T0 + int(rng.integers(0, 2 * HOUR)), 0
        for _ in range(70 if u == 0 else int(rng.integers(25, 45))):
            gap = GAPS[int(rng.choice(6, p=[0.1, 0.3, 0.3, 0.1, 0.1, 0.1]))] if u else 20_000  # u0: one long session
            session += gap > 30 * MIN
            t += gap
            kind = KINDS[int(rng.choice(7, p=[0.45, 0.15, 0.08, 0.07, 0.08, 0.07, 0.10]))]
            picks = [items[int(j)] for j in rng.zipf(1.5, 3) % 20]
            row = {"user_id": f"u{u}", "ts": t, "type": kind, **({"items": picks} if kind == "impression"
                                                                  else {"item_id": picks[0]})}
            if u % 3 == 0:
                row["session_id"] = f"u{u}-s{session}"
            rows.append(row)
    rows += [{"user_id": "u1", "ts": T0 + 45 * HOUR, "type": "view", "item_id": "i1"},  # past 40 trending half-lives
             {"user_id": "u1", "ts": T0 + 45 * HOUR + MIN, "type": "purchase", "item_id": "i2"}]
    return Interactions.from_rows(rows, {i: f"c{k % 4}" for k, i in enumerate(items[:16])}, source="test")


def publish_catalog(s, categories: dict[str, str], redis) -> None:
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, **topics.kafka_security(s)})
    for item, category in categories.items():
        producer.produce(s.topic(topics.CATALOG), json.dumps({"item_id": item, "category": category}).encode(),
                         key=item)
    producer.flush(10)
    keys, deadline = Keys(s.redis_prefix), time.monotonic() + 60
    while time.monotonic() < deadline and not all(redis.exists(keys.item_meta(i)) for i in categories):
        time.sleep(0.2)
    assert all(redis.exists(keys.item_meta(i)) for i in categories), "the worker did not apply the catalog"


def last_per_user(requests) -> list:
    return list({r.user_id: r for r in requests}.values())


def assert_same_features(redis_reader: FeatureReader, memory: MemoryFeatureReader, worker_requests: list,
                         replayed: list, items: list[str], now_ms: int) -> None:
    from_redis, trend_redis = redis_reader.contexts(worker_requests, 1000)
    from_memory, trend_memory = memory.contexts(replayed, 1000)
    for a, b in zip(from_redis, from_memory, strict=True):
        assert (a.session_items, a.history, a.seen, a.session_positive, a.user_positive, a.known, a.segment) == \
               (b.session_items, b.history, b.seen, b.session_positive, b.user_positive, b.known, b.segment)
        assert a.affinity == pytest.approx(b.affinity, rel=1e-9, abs=1e-12)
    assert [i for i, _ in trend_redis] == [i for i, _ in trend_memory] and trend_memory
    assert [s / trend_redis[0][1] for _, s in trend_redis] == \
           pytest.approx([s / trend_memory[0][1] for _, s in trend_memory], rel=1e-9)
    cap = FeatureConfig().covis_cap
    covis_redis, covis_memory = redis_reader.covisitation(items, cap, now_ms), memory.covisitation(items, cap, now_ms)
    assert any(covis_memory.values())
    for item in items:
        assert [m for m, _ in covis_redis[item]] == [m for m, _ in covis_memory[item]], item
        assert [w for _, w in covis_redis[item]] == pytest.approx([w for _, w in covis_memory[item]], rel=1e-9)
    stats_redis, stats_memory = redis_reader.item_stats(items), memory.item_stats(items)
    for field in ("views", "clicks", "impressions", "last_ts", "removed"):
        np.testing.assert_array_equal(getattr(stats_redis, field), getattr(stats_memory, field), err_msg=field)
    assert stats_redis.categories == stats_memory.categories
    assert {i: redis_reader.categories.get(i, "") for i in items} == {i: memory.categories.get(i, "") for i in items}


def test_the_replayed_features_equal_the_workers(fresh_settings, redis):
    s = fresh_settings
    inter = history()
    events = history_events(inter)
    kinds = {e.type for e in events}
    assert kinds == set(KINDS) and len(events) > 300
    store = MemoryFeatureStore(FeatureConfig.from_settings(s), inter.categories)
    replayed: list = []
    history_items = ScorerConfig.from_settings(s).history_items
    items = inter.catalog()
    cuts = [len(events) // 2, len(events)]
    worker = start_worker(s)
    try:
        publish_catalog(s, inter.categories, redis)
        done = 0
        for cut in cuts:
            publish(s, [Record(key=e.user_id, value=schemas.encode(e), kind="valid") for e in events[done:cut]])
            replayed += [store.apply(e) for e in events[done:cut]]
            done = cut
            assert wait_outputs(s, cut) == cut
            answered = {r.event_id: r for r in (schemas.score_request_decoder.decode(m.value())
                                                 for m in read_topic(s, topics.SCORE_REQUESTS))}
            # The worker's own score requests: the same sessions (named or derived) and feature versions.
            assert [answered[r.event_id] for r in replayed] == replayed
            now_ms = events[cut - 1].ts_ms
            redis_reader = FeatureReader(redis_client(s, 2.0), Keys(s.redis_prefix), FeatureConfig.from_settings(s),
                                         history_items=history_items)
            memory = MemoryFeatureReader(store, history_items=history_items)
            last = last_per_user(replayed)
            assert_same_features(redis_reader, memory, [answered[r.event_id] for r in last], last, items, now_ms)
    finally:
        assert stop_worker(worker) == 0
    sessions = {r.session_id for r in replayed}
    assert any(sid.startswith("s") for sid in sessions) and any("-s" in sid for sid in sessions)
    assert max(len(session.seq) for user in store.users.values() for session in user.sessions.values()) == 50
    # Trending was rescaled on both sides.
    assert store.trending.landmark > T0 + 40 * HOUR
    assert float(redis.hget(Keys(s.redis_prefix).trending_hw, "_L")) > T0 + 40 * HOUR
