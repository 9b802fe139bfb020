"""`streamrec bench soak` for half a minute on the real Kafka and Redis: the sample series and the verdicts.

Whether the services stay bounded is the 30-minute run's question (RELIABILITY.md); here the
series must be complete and sane, and `judge` must give a verdict for every judged measure.
"""

from __future__ import annotations

import json
import math

import pytest

from streamrec.harness.soak import BOUNDED, GROWING, TOO_SHORT, SoakConfig, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SERVICES = {"worker", "scorer", "learner"}


@pytest.fixture(scope="module")
def soak(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("soak")
    report = run_soak(settings, SoakConfig(minutes=0.5, users=40, items=80, rate=20, pretrain_steps=100), out_root=out, live=False)
    return report


def test_every_sample_has_every_measure_and_the_values_are_sane(soak):
    samples = soak["samples"]
    assert len(samples) >= 5  # one every 2 s for half a minute; a loaded machine takes longer per sample
    for s in samples:
        assert set(s["rss_mb"]) == SERVICES and all(v > 20 for v in s["rss_mb"].values())
        assert set(s["lag"]) == SERVICES
        assert math.isfinite(s["lag"]["worker"]) and math.isfinite(s["lag"]["scorer"])
        assert s["lag"]["worker"] >= 0 and s["lag"]["scorer"] >= 0
        assert s["redis_used_memory_mb"] > 0
        assert {"p50", "p95", "p99", "n"} <= set(s["latency_ms"])
    last = samples[-1]
    # The trainer's lag and state come from its checkpoint, written every 5 s: there by the end.
    assert math.isfinite(last["lag"]["learner"]) and last["learner_state_kb"] > 0
    # The population was served: keys under the run's prefix, recommendations timed.
    assert max(s["redis_keys"] for s in samples) > 40 and max(s["redis_prefix_mb"] for s in samples) > 0
    timed = [s["latency_ms"] for s in samples if s["latency_ms"]["n"] > 0]
    assert timed and all(0 < t["p50"] <= t["p99"] for t in timed)
    # The app-side reader saw every slate the simulated users got (and the answers to their clicks).
    assert sum(t["n"] for t in timed) <= soak["recommendations_received"]
    assert soak["recommendations_received"] >= soak["sim_counts"]["slates"] > 0


def test_judge_gives_a_verdict_per_judged_measure(soak):
    verdicts = soak["verdicts"]
    expected = ({f"rss_mb.{n}" for n in SERVICES} | {f"lag.{n}" for n in SERVICES}
                | {"redis_keys", "redis_prefix_mb", "learner_state_kb"})
    assert set(verdicts) == expected
    for measure, v in verdicts.items():
        assert v["verdict"] in {BOUNDED, GROWING, TOO_SHORT}, measure
        if v["verdict"] != TOO_SHORT:
            assert v["limit"] >= v["middle_median"] and math.isfinite(v["slope_per_h"])


def test_the_run_writes_json_and_png_says_what_it_changed_and_cleans_up(soak, settings):
    from pathlib import Path

    import redis

    from streamrec.stream.topics import admin_client

    out = Path(soak["out_dir"])
    on_disk = json.loads((out / "soak.json").read_text())
    assert len(on_disk["samples"]) == len(soak["samples"]) and on_disk["verdicts"].keys() == soak["verdicts"].keys()
    assert (out / "soak.png").stat().st_size > 10_000
    assert on_disk["settings_changed"]["dedup_ttl_s"] == 10 and on_disk["settings_changed"]["session_ttl_s"] == 10
    assert "10 s" in on_disk["ttl_note"]
    # ...and the in-memory caps, scaled to one TTL of recommendations at the full rate (20/s x 10 s).
    assert on_disk["settings_changed"]["scorer_click_memory"] == 200
    assert on_disk["settings_changed"]["learner --max-closed-slates"] == 200
    # Its own topics and keys, under this test session's prefixes, and none of them left behind.
    assert on_disk["topic_prefix"].startswith(settings.topic_prefix)
    assert on_disk["redis_prefix"].startswith(settings.redis_prefix)
    # Its keys went to a database of their own on the same server (so counting them is cheap).
    assert on_disk["redis_db"] not in (None, 0)
    assert all(s["redis_db_keys"] >= s["redis_keys"] for s in on_disk["samples"])
    own_db = redis.Redis.from_url(settings.redis_url.rsplit("/", 1)[0] + f"/{on_disk['redis_db']}")
    assert not list(own_db.scan_iter(match=f"{on_disk['redis_prefix']}*", count=10_000))
    topics = admin_client(settings).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(on_disk["topic_prefix"])]
