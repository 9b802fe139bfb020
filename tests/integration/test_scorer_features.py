"""Feature reads of the scorer: the same answers from one Redis server and from a Redis Cluster."""

from __future__ import annotations

import pytest

from streamrec.serving.features import FeatureReader
from streamrec.serving.scorer import redis_client
from streamrec.stream.feature_store import RedisFeatureStore
from streamrec.stream.features import DecodedEvent, SourceEvent
from streamrec.stream.keys import Keys
from streamrec.stream.schemas import ScoreRequest, decode_event
from streamrec.stream.synthetic import synthetic_stream

from .test_feature_store import redis_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def load(store: RedisFeatureStore, n: int = 1500) -> list[ScoreRequest]:
    batch = [DecodedEvent(SourceEvent("events", 0, k, r.key.encode(), r.value, 0), decode_event(r.value))
             for k, r in enumerate(synthetic_stream(n, users=60, items=80, seed=9, duplicate_rate=0,
                                                    malformed_rate=0))]
    outcomes = store.apply(batch)
    store.put_item_meta("i1", {"category": "shoes"})
    store.remove_item("i2")
    return [ScoreRequest(event_id=d.event.event_id, user_id=d.event.user_id, session_id=o.session_id,
                         item_id=d.event.item_id, type=d.event.type, ts=d.event.ts_ms, feature_version=o.feature_version)
            for d, o in list(zip(batch, outcomes))[-40:]]


def read_all(reader: FeatureReader, requests: list[ScoreRequest]):
    contexts, trending = reader.contexts(requests, 30)
    recent = sorted({i for c in contexts for i in c.recent(3)})
    now = max(r.ts for r in requests)
    covis = reader.covisitation(recent, 10, now, [i for c in contexts for i in c.session_items])
    items = sorted({i for i, _ in trending} | {"i1", "i2"})
    stats = reader.item_stats(items)
    return ([(c.session_items, c.history, c.session_positive, c.user_positive, c.known, sorted(c.affinity.items()))
             for c in contexts], trending, covis, stats.removed.tolist(), stats.views.tolist(),
            stats.categories, items)


def test_cluster_and_single_server_give_the_same_features(settings, redis_cluster):  # noqa: F811
    single = settings.replace(redis_prefix=f"{settings.redis_prefix}sf1:")
    cluster = settings.replace(redis_prefix=f"{settings.redis_prefix}sf2:", redis_url=redis_cluster,
                               redis_cluster=True)
    answers = []
    for s in (single, cluster):
        store = RedisFeatureStore(s)
        requests = load(store)
        store.close()
        answers.append(read_all(FeatureReader(redis_client(s, 2.0), Keys(s.redis_prefix), history_items=5),
                                requests))
    one, many = answers
    assert one == many
    contexts, trending, covis, removed, views, cats, items = one
    assert all(c[4] and c[0] for c in contexts) and trending and any(covis.values())
    assert any(c[1] for c in contexts) and all(len(c[1]) <= 5 and not set(c[1]) & set(c[0]) for c in contexts)
    assert removed[items.index("i2")] and cats[items.index("i1")] == "shoes"


def test_items_bought_in_an_earlier_session_stay_filtered(settings, redis):
    import json

    s = settings.replace(redis_prefix=f"{settings.redis_prefix}bought:")
    store = RedisFeatureStore(s)
    t0 = 1_767_225_600_000
    events = [{"event_id": "b1", "type": "purchase", "user_id": "buyer", "item_id": "tv", "ts": t0},
              {"event_id": "b2", "type": "view", "user_id": "buyer", "item_id": "radio", "ts": t0 + 3 * 3600_000}]
    batch = [DecodedEvent(SourceEvent("events", 0, k, b"buyer", json.dumps(e).encode(), 0),
                          decode_event(json.dumps(e).encode())) for k, e in enumerate(events)]
    first, later = store.apply(batch)
    assert first.session_id != later.session_id  # three hours apart: a new session
    request = ScoreRequest(event_id="b2", user_id="buyer", session_id=later.session_id, item_id="radio",
                           type="view", ts=t0 + 3 * 3600_000, feature_version=later.feature_version)
    (ctx,), _ = FeatureReader(redis_client(s, 2.0), Keys(s.redis_prefix)).contexts([request], 5)
    assert ctx.session_items == ["radio"] and ctx.seen == {"radio", "tv"}
    store.close()


def test_a_returning_user_s_earlier_items_come_before_the_session_s(settings, redis):
    import json

    s = settings.replace(redis_prefix=f"{settings.redis_prefix}history:")
    store = RedisFeatureStore(s)
    t0, hour = 1_767_225_600_000, 3600_000
    visits = [("a", 0), ("b", 1), ("c", 2), ("a", 3), ("d", 4),  # first session, "a" seen twice
              ("e", 3 * hour), ("c", 3 * hour + 1)]  # a new session, three hours later, "c" again
    events = [{"event_id": f"h{k}", "type": "view", "user_id": "back", "item_id": item, "ts": t0 + dt}
              for k, (item, dt) in enumerate(visits)]
    batch = [DecodedEvent(SourceEvent("events", 0, k, b"back", json.dumps(e).encode(), 0),
                          decode_event(json.dumps(e).encode())) for k, e in enumerate(events)]
    outcomes = store.apply(batch)
    assert outcomes[0].session_id != outcomes[-1].session_id
    last = outcomes[-1]
    request = ScoreRequest(event_id="h6", user_id="back", session_id=last.session_id, item_id="c", type="view",
                           ts=t0 + 3 * hour + 1, feature_version=last.feature_version)

    def context(history_items: int):
        reader = FeatureReader(redis_client(s, 2.0), Keys(s.redis_prefix), history_items=history_items)
        (ctx,), _ = reader.contexts([request], 5)
        return ctx

    full, capped, off = context(20), context(2), context(0)
    store.close()
    # Earlier items by their last visit, oldest first, without the session's own ("c" was seen again now).
    assert full.session_items == ["e", "c"] and full.history == ["b", "a", "d"]
    assert full.sequence == ["b", "a", "d", "e", "c"]
    assert capped.history == ["a", "d"] and capped.sequence == ["a", "d", "e", "c"]
    assert off.history == [] and off.sequence == ["e", "c"]
    assert full.seen == {"e", "c"}  # earlier items are not filtered out of recommendations, only the session's
