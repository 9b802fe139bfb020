"""`streamrec bench scale` at a tiny scale: its figures add up against the Redis it measured.

The bench reads ``used_memory``, which is the whole server's, so this test gives it a redis-server of its own
(`helpers.own_redis`, as the worker's outage tests do): the shared one of the other test processes changes
under it.
"""

from __future__ import annotations

import json

import pytest

from streamrec.cli import build_parser
from streamrec.harness.bench.scale import EXPECTED_FAMILIES, family_of
from streamrec.settings import Settings

from .helpers import own_redis

pytestmark = pytest.mark.integration
USERS = 200


def test_family_of_follows_the_key_layout():
    p = "sr:"
    assert family_of("sr:{u:u1}:ev:abc", p) == "marker"
    assert family_of("sr:{u:u1}:s:s1767225600000", p) == "session.hash"
    assert family_of("sr:{u:u1}:s:s1767225600000:seq", p) == "session.seq"
    assert family_of("sr:{u:u1}:recent", p) == "user.recent"
    assert family_of("sr:{i:i7}:covis", p) == "item.covis"
    assert family_of("sr:{i:i7}:meta", p) == "catalog.meta"
    assert family_of("sr:{trending}:h:491000", p) == "trending.hour"
    assert family_of("sr:{trending}:decay", p) == "trending.decay"


def test_bench_scale_small_run_adds_up(tmp_path):
    own, server = own_redis(Settings(), tmp_path / "redis")
    try:
        import redis

        client = redis.Redis.from_url(own.redis_url)
        client.config_set("appendonly", "no")  # the AOF buffer would count in used_memory
        args = build_parser().parse_args(["bench", "scale", "--users", str(USERS), "--items", "2000",
                                          "--sample", "100000", "--keep", "--out", str(tmp_path / "out")])
        args.settings = own
        assert args.func(args) == 0
        report = json.loads((tmp_path / "out" / "bench-scale.json").read_text())

        # The workload: every event applied, about 20 per user, exactly 3 sessions each (the 30-minute gap).
        assert report["users"] == USERS
        assert report["statuses"] == {"applied": report["events"]}
        assert 15 <= report["events_per_user"] <= 25
        assert report["sessions"] == 3 * USERS
        families = report["families"]
        assert set(EXPECTED_FAMILIES) <= set(families), set(EXPECTED_FAMILIES) - set(families)
        # Markers: one hash per user and window; two where the run crossed into a new window.
        assert USERS <= families["marker"]["keys"] <= 2 * USERS
        assert families["marker"]["mean_elements"] * families["marker"]["keys"] == pytest.approx(report["events"],
                                                                                               rel=0.05)
        assert families["user.hash"]["keys"] == USERS
        assert all(v["keys"] > 0 and v["mean_bytes"] > 0 for v in families.values())

        # Bytes and keys per user are the used_memory delta and the key count over the users.
        assert report["keys_per_user"] > 0
        delta = report["memory"]["end"]["used_memory"] - report["memory"]["after_catalog"]["used_memory"]
        assert delta == report["used_memory_state_bytes"] > 0
        assert report["bytes_per_user"] == pytest.approx(delta / USERS, rel=1e-3)
        keys = {f: 0 for f in families}
        usage = 0
        for key in client.scan_iter(match="sr:*", count=1000):
            family = family_of(key.decode(), "sr:")
            keys[family] += 1
            if family != "catalog.meta":
                usage += client.memory_usage(key, samples=0)
        assert keys == {f: v["keys"] for f, v in families.items()}
        assert report["keys"] == sum(n for f, n in keys.items() if f != "catalog.meta")
        assert report["keys_per_user"] == pytest.approx(report["keys"] / USERS, rel=1e-3)
        # Every key was sampled here, so the families' sum is the exact sum of MEMORY USAGE...
        assert report["memory_usage_sum_bytes"] == pytest.approx(usage, rel=0.01)
        # ...which leaves out part of used_memory (the key tables' buckets, the expiry entries) but not most.
        assert 0.5 <= usage / delta <= 1.05, (usage, delta)
        # The Redis still holds what the bench measured (nothing else writes to it).
        assert client.info("memory")["used_memory"] == pytest.approx(report["memory"]["end"]["used_memory"],
                                                                     rel=0.05)
        ex = report["extrapolation_1m_users"]
        assert ex["linear_bytes"] == pytest.approx(report["bytes_per_user"] * 1_000_000, rel=1e-3)
        assert report["rate"]["events_per_s"] > 0
        assert report["run"]["load_start"] and report["run"]["load_end"]
        client.close()
    finally:
        server.stop()
