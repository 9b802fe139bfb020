"""The feature store's scripts on a real Redis: idempotent, order-free decay, sessions by event time."""

from __future__ import annotations

import json
import random

import pytest

from streamrec.stream.feature_store import RedisFeatureStore
from streamrec.stream.features import DecodedEvent, SourceEvent, decayed
from streamrec.stream.keys import FeatureConfig, Keys, marker_field, marker_windows
from streamrec.stream.schemas import decode_event
from streamrec.stream.synthetic import synthetic_stream

pytestmark = pytest.mark.integration
T0 = 1_767_225_600_000
MIN = 60_000


def decoded(events: list[dict], partition: int = 0, first_offset: int = 0) -> list[DecodedEvent]:
    return [DecodedEvent(SourceEvent("events", partition, first_offset + i, e["user_id"].encode(),
                                     json.dumps(e).encode(), e["ts"] if isinstance(e["ts"], int) else 0),
                         decode_event(json.dumps(e).encode())) for i, e in enumerate(events)]


def dump(redis, prefix: str) -> dict:
    """Every key under a prefix with its content, prefix removed, for comparing two stores."""
    out = {}
    for key in redis.scan_iter(match=prefix + "*", count=1000):
        kind = redis.type(key).decode()
        name = key.decode()[len(prefix):]
        if kind == "hash":
            value = {k: v for k, v in redis.hgetall(key).items()}
        elif kind == "zset":
            value = {m: round(s, 6) for m, s in redis.zrange(key, 0, -1, withscores=True)}
        elif kind == "set":
            value = redis.smembers(key)
        else:
            value = redis.get(key)
        out[name] = value
    return out


@pytest.fixture
def stores(settings, redis):
    made = []

    def make(tag: str) -> RedisFeatureStore:
        store = RedisFeatureStore(settings.replace(redis_prefix=f"{settings.redis_prefix}{tag}:"))
        made.append(store)
        return store

    yield make
    for store in made:
        for key in redis.scan_iter(match=store.keys.prefix + "*", count=1000):
            redis.delete(key)


def test_replaying_a_batch_changes_nothing(stores, redis):
    store = stores("replay")
    batch = decoded([r.event for r in synthetic_stream(500, users=20, items=50, seed=8, malformed_rate=0)])
    first = store.apply(batch)
    before = dump(redis, store.keys.prefix)
    again = store.apply(batch)  # the same records from the same offsets: a crash replay
    assert {o.status for o in again} <= {"replay", "dup"}
    assert [o.effective for o in again if o.status == "replay"] == [o.status for o in first if o.status != "dup"]
    after = dump(redis, store.keys.prefix)
    assert before.keys() == after.keys()
    assert {k: v for k, v in before.items() if ":ev:" not in k} == {k: v for k, v in after.items() if ":ev:" not in k}


def test_duplicate_event_id_from_another_offset_is_dropped(stores, redis):
    store = stores("dup")
    ev = {"event_id": "e1", "type": "click", "user_id": "u", "item_id": "i", "ts": T0}
    assert store.apply(decoded([ev]))[0].status == "applied"
    assert store.apply(decoded([ev], first_offset=10))[0].status == "dup"
    assert int(redis.hget(store.keys.item_stats("i"), "n:click")) == 1


def test_an_event_id_is_remembered_in_its_window_and_the_next_one_then_forgotten(stores, redis):
    store = stores("window")
    ttl = store.config.marker_ttl_s
    ev = {"event_id": "e1", "type": "click", "user_id": "u", "item_id": "i", "ts": T0}
    first = store.apply(decoded([ev]))[0]
    now_s = redis.time()[0]
    current, before = marker_windows(store.keys, "u", now_s, ttl)
    assert redis.hexists(current, marker_field("e1")) and not redis.hexists(current, "e1")
    assert redis.expiretime(current) == (now_s // ttl + 2) * ttl  # gone once no later window reads it
    # A window later, the marker is in the window before the current one: still found.
    redis.rename(current, before)
    assert store.apply(decoded([ev], first_offset=10))[0].status == "dup"
    replay = store.apply(decoded([ev]))[0]
    assert (replay.status, replay.session_id, replay.feature_version) == ("replay", first.session_id,
                                                                          first.feature_version)
    # Two windows later nothing remembers it: the same id is a new event.
    redis.delete(before)
    assert store.apply(decoded([ev], first_offset=20))[0].status == "applied"


def test_a_marker_written_before_digests_is_still_honoured(stores, redis):
    """Markers keyed by the event id itself, with the decision as a word, stay valid through an upgrade."""
    store = stores("upgrade")
    ev = {"event_id": "old-1", "type": "click", "user_id": "u", "item_id": "i", "ts": T0}
    [record] = decoded([ev], first_offset=5)
    current, _ = marker_windows(store.keys, "u", redis.time()[0], store.config.marker_ttl_s)
    redis.hset(current, "old-1", "\x1f".join(["applied", record.src, "s123", "a\x1eb", "7"]))
    replay = store.apply([record])[0]
    assert (replay.status, replay.first, replay.session_id, replay.neighbours, replay.feature_version) == \
        ("replay", "applied", "s123", ["a", "b"], 7)
    assert store.apply(decoded([ev], first_offset=9))[0].status == "dup"
    assert not redis.exists(store.keys.user("u"))  # the user phase ran for neither


def test_one_batch_leaves_the_state_that_event_by_event_batches_leave(stores, redis):
    """The scripts read each hash once and write it once per call: a user's many events in one call must
    end in the same state as the same events one call each."""
    batch = decoded([r.event for r in synthetic_stream(600, users=6, items=40, seed=3, malformed_rate=0)])
    whole, single = stores("whole"), stores("single")
    statuses = [o.status for o in whole.apply(batch)]
    assert statuses == [single.apply([d])[0].status for d in batch]
    assert {"applied", "dup"} <= set(statuses)
    assert dump(redis, whole.keys.prefix) == dump(redis, single.keys.prefix)


def test_decay_does_not_depend_on_arrival_order(stores, redis):
    cfg = FeatureConfig()
    events = [{"event_id": f"e{i}", "type": "view", "user_id": f"u{i % 3}", "item_id": "hot",
               "ts": T0 + random.Random(i).randint(0, 4 * 3600_000)} for i in range(60)]
    shuffled = random.Random(1).sample(events, len(events))
    in_order, out_of_order = stores("ordered"), stores("shuffled")
    in_order.apply(decoded(sorted(events, key=lambda e: e["ts"])))
    out_of_order.apply(decoded(shuffled))
    now = T0 + 5 * 3600_000
    values = []
    for store in (in_order, out_of_order):
        stats = {k.decode(): float(v) for k, v in redis.hgetall(store.keys.item_stats("hot")).items()}
        values.append(decayed(stats["d:view"], stats["_L"], now, cfg.item_half_life_ms))
        top = redis.zrevrange(store.keys.trending, 0, 0)
        assert top == [b"hot"]
    direct = sum(2 ** (-(now - e["ts"]) / cfg.item_half_life_ms) for e in events)
    assert values[0] == pytest.approx(direct, rel=1e-9)
    assert values[1] == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("one_batch", [True, False])
def test_a_landmark_far_behind_is_moved_and_the_decayed_values_kept(stores, redis, one_batch):
    """Past 40 half-lives the item's decayed counts are rescaled to a new landmark (every `d:` field, also
    those of types this call does not touch): their value at any time stays the direct sum."""
    cfg = FeatureConfig()
    store = stores(f"rescale{one_batch}")
    day = 24 * 3600_000
    events = [{"event_id": f"r{i}", "type": kind, "user_id": f"u{i}", "item_id": "x", "ts": T0 + i * 25 * day}
              for i, kind in enumerate(["add_to_cart", "view", "view"])]  # 50 days: 50 item half-lives
    batches = [decoded(events)] if one_batch else [decoded([e], first_offset=i) for i, e in enumerate(events)]
    for batch in batches:
        store.apply(batch)
    stats = {k.decode(): float(v) for k, v in redis.hgetall(store.keys.item_stats("x")).items()}
    now = T0 + 60 * day
    assert stats["_L"] > T0
    for kind in ("add_to_cart", "view"):
        direct = sum(2 ** (-(now - e["ts"]) / cfg.item_half_life_ms) for e in events if e["type"] == kind)
        assert decayed(stats[f"d:{kind}"], stats["_L"], now, cfg.item_half_life_ms) == pytest.approx(direct, rel=1e-9)


def test_sessions_follow_event_time_gaps_and_late_events_join_their_session(stores, redis):
    store = stores("sessions")
    keys: Keys = store.keys
    ev = lambda i, ts, item: {"event_id": f"s{i}", "type": "view", "user_id": "u", "item_id": item, "ts": ts}  # noqa: E731
    outcomes = store.apply(decoded([ev(1, T0, "a"), ev(2, T0 + 10 * MIN, "b"), ev(3, T0 + 60 * MIN, "c")]))
    first, second = outcomes[0].session_id, outcomes[2].session_id
    assert outcomes[1].session_id == first != second  # a 50-minute gap starts a new session
    # A late event stamped between a and b belongs to the first session, not the current one.
    late = store.apply(decoded([ev(4, T0 + 5 * MIN, "d")], first_offset=3))[0]
    assert late.status == "applied" and late.session_id == first
    seq = [m.split(b"\x1f")[0] for m in redis.zrange(keys.session_seq("u", first), 0, -1)]
    assert seq == [b"a", b"d", b"b"]
    assert late.neighbours == ["a"]  # only what came before it in event time
    assert redis.zscore(keys.covis("a"), "d") is not None


def test_events_older_than_the_lateness_are_refused(stores):
    store = stores("late")
    cfg = store.config
    ev = lambda i, ts: {"event_id": f"l{i}", "type": "view", "user_id": "u", "item_id": "x", "ts": ts}  # noqa: E731
    store.apply(decoded([ev(1, T0 + cfg.lateness_ms + 10 * MIN)]))
    out = store.apply(decoded([ev(2, T0 + 11 * MIN), ev(3, T0)], first_offset=1))
    assert [o.status for o in out] == ["applied", "too_late"]


@pytest.fixture
def redis_cluster(tmp_path):
    """A real three-node Redis Cluster on loopback (redis-server in cluster mode)."""
    import shutil
    import socket
    import subprocess
    import time

    import redis as redis_lib

    def free_port() -> int:
        # The cluster bus listens on port + 10000, so stay low and check both.
        import random

        while True:
            port = random.randint(20000, 29999)
            try:
                for p in (port, port + 10000):
                    with socket.socket() as sock:
                        sock.bind(("127.0.0.1", p))
                return port
            except OSError:
                continue

    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    ports = [free_port() for _ in range(3)]
    procs = []
    for port in ports:
        folder = tmp_path / str(port)
        folder.mkdir()
        procs.append(subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                                       "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"],
                                      cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis_lib.Redis(port=port).ping()
                    break
                except redis_lib.ConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
        deadline = time.monotonic() + 20
        while redis_lib.Redis(port=ports[0], decode_responses=True).cluster("info").get("cluster_state") != "ok":
            assert time.monotonic() < deadline, "cluster did not form"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_redis_cluster_holds_the_same_features_as_one_server(settings, stores, redis, redis_cluster):
    from redis.cluster import RedisCluster

    records = [r for r in synthetic_stream(1500, users=80, items=200, seed=6, malformed_rate=0)]
    batch = decoded([r.event for r in records])
    on_cluster = RedisFeatureStore(settings.replace(redis_url=redis_cluster, redis_cluster=True))
    single = stores("single")
    for k in range(0, len(batch), 300):
        assert [o.status for o in on_cluster.apply(batch[k:k + 300])] == \
               [o.status for o in single.apply(batch[k:k + 300])]
    on_cluster.put_item_meta("i1", {"category": "c"})
    single.put_item_meta("i1", {"category": "c"})
    cluster_client = RedisCluster.from_url(redis_cluster)
    assert dump(cluster_client, on_cluster.keys.prefix) == dump(redis, single.keys.prefix)
    assert on_cluster.forget("u1", T0 + 10**9) > 0
    assert not [k for k in cluster_client.scan_iter(match=on_cluster.keys.prefix + "{u:u1}:*")
                if not k.endswith(b":forgotten")]
