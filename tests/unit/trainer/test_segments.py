"""Customer segments: the clustering (scikit-learn) and its quality measures, planted segments recovered
from a trained sequence model, the description, the command's errors and its per-segment metrics."""

from __future__ import annotations

import doctest
import json
import threading
import time
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from streamrec.trainer import segments as seg
from streamrec.trainer.data import Interactions
from streamrec.trainer.synth import SynthConfig, synthesize

PLANTED = SynthConfig(users=200, items=120, categories=12, sessions_per_user=6, segments=4, seed=0)


@pytest.fixture(scope="module")
def planted():
    """Synthetic users in 4 planted segments, and a sequence model trained on them for a few epochs."""
    import torch

    from streamrec.trainer.train import TrainConfig, train_sequence_model

    data = synthesize(PLANTED)
    inter = Interactions.from_rows(data.events, {r["item_id"]: r["category"] for r in data.items}, source="synth")
    cfg = TrainConfig.tiny(epochs=3).with_seed(0)
    cfg = replace(cfg, seq=dict(item_buckets=1024, cat_buckets=64, dim=16, max_len=20))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster on a shared machine, and the same everywhere
    try:
        model, *_ = train_sequence_model(inter, cfg)
    finally:
        torch.set_num_threads(threads)
    return data, inter, model


def test_docstring_examples():
    result = doctest.testmod(seg, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_kmeans_finds_separated_blobs_and_silhouette_matches_its_definition():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [6, 0], [0, 6]])
    truth = np.repeat(np.arange(3), 40)
    x = centres[truth] + rng.normal(scale=0.5, size=(120, 2))
    found = seg.kmeans(x, 3, seed=0)
    assert seg.adjusted_rand_index(found.labels, truth) == 1.0
    assert len(np.unique(found.labels)) == 3 and found.inertia > 0

    # The textbook silhouette, point by point, on a small sample.
    small, lab = x[::6], found.labels[::6]
    d = np.linalg.norm(small[:, None] - small[None], axis=-1)
    s = []
    for i in range(len(small)):
        same = (lab == lab[i]) & (np.arange(len(small)) != i)
        a = d[i, same].mean()
        b = min(d[i, lab == c].mean() for c in set(lab.tolist()) if c != lab[i])
        s.append((b - a) / max(a, b))
    assert seg.silhouette(small, lab) == pytest.approx(np.mean(s), abs=1e-9)
    assert np.isnan(seg.silhouette(small, np.zeros(len(small))))


def test_ari_purity_activity_quantiles_and_size_order():
    assert seg.adjusted_rand_index([0, 0, 1, 1, 2, 2], [5, 5, 7, 7, 9, 9]) == 1.0
    rng = np.random.default_rng(0)
    assert abs(seg.adjusted_rand_index(rng.integers(0, 4, 4000), rng.integers(0, 4, 4000))) < 0.01
    assert seg.purity([0, 0, 0, 1], ["a", "a", "b", "b"]) == 0.75
    labels = seg.activity_segments(np.arange(100), 4)
    assert np.bincount(labels).tolist() == [25, 25, 25, 25] and labels[0] == 0 and labels[-1] == 3
    assert seg.order_by_size(np.array([2, 2, 2, 0, 1, 1]), 3).tolist() == [0, 0, 0, 2, 1, 1]


def test_planted_segments_are_recovered_far_above_chance_and_the_activity_baseline(planted, tmp_path):
    data, inter, model = planted
    hist = seg.Histories.from_interactions(inter)
    result = seg.segment(hist, seg.TorchEncoder(model), seg.SegmentConfig(k=4), truth=data.truth["segment"])
    q = result.report["quality"]
    # Chance: ARI ~0, purity ~0.3 for 4 balanced groups; activity counts carry no taste at all.
    assert q["kmeans"]["ari_planted"] >= 0.5 and q["kmeans"]["purity_planted"] >= 0.75, q
    assert q["kmeans"]["ari_planted"] > q["activity"]["ari_planted"] + 0.4, q
    assert q["kmeans"]["silhouette"] > q["activity"]["silhouette"] + 0.2, q
    # A segment is named after its most over-represented category: for most segments, one of the
    # favourites of its planted majority (chance: 3 of 12 categories).
    planted_of = np.array([data.truth["segment"][u] for u in hist.users])
    named_right = 0
    for s in result.report["segments"]:
        majority = np.bincount(planted_of[result.labels == s["segment"]]).argmax()
        named_right += s["name"].split(" + ")[0] in data.truth["segment_categories"][majority]
        assert sum(c["share"] for c in s["top_categories"]) <= 1.0 + 1e-9
    assert named_right >= 3, result.report["segments"]
    sizes = [s["users"] for s in result.report["segments"]]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == PLANTED.users

    seg.plot(result, tmp_path / "segments.png")
    assert (tmp_path / "segments.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result.report)  # plain JSON types only


def test_description_counts_behaviour_per_segment():
    rows = [{"user_id": u, "item_id": i, "ts": 1_767_225_600_000 + k, "type": t}
            for k, (u, i, t) in enumerate([("a", "x", "view"), ("a", "x", "purchase"), ("a", "y", "view"),
                                           ("b", "z", "view"), ("b", "z", "click")])]
    hist = seg.Histories.from_interactions(Interactions.from_rows(rows, {"x": "shoes", "y": "shoes", "z": "hats"}))
    assert hist.users == ["a", "b"] and hist.activity.tolist() == [3, 2]
    described = seg.describe(hist, np.array([0, 1]))
    a, b = described
    assert a["users"] == 1 and a["conversion"] == 0.5 and a["click_rate"] == 0.0
    assert a["top_categories"][0] == {"category": "shoes", "share": 1.0, "lift": 1.67}
    assert b["click_rate"] == 1.0 and b["conversion"] == 0.0 and b["top_items"][0]["item_id"] == "z"
    assert b["name"] == "hats"


def test_bad_options_name_the_option_and_the_fix():
    with pytest.raises(seg.SegmentError, match=r"--k .*use 2 to 64"):
        seg.SegmentConfig(k=65).check()
    with pytest.raises(seg.SegmentError, match=r"--k: 5 segments need at least 5 users"):
        seg.kmeans(np.zeros((3, 2)), 5)
    with pytest.raises(seg.SegmentError, match="--every: 'soon'"):
        seg.parse_duration("soon")
    from streamrec.cli import main

    assert main(["segments", "--data", "redis", "--k", "1"]) == 2
    assert main(["segments", "--data", "redis", "--every=-5m"]) == 2


def test_learner_counts_reward_and_clicks_per_arm_and_segment():
    from prometheus_client import REGISTRY

    from streamrec.online import metrics as m
    from streamrec.online.joiner import JoinConfig, Joiner

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {s: value("streamrec_learner_arm_clicked_slates_total", variant="b", segment=s) for s in ("3", "none")}
    reward_before = value("streamrec_learner_arm_reward_total", variant="b", segment="3")
    j = Joiner(JoinConfig(window_ms=100))
    j.add_recommendation({"rec_id": "r1", "user_id": "u", "variant": "b", "segment": 3, "created_ts": 0,
                          "items": [{"item_id": "x"}, {"item_id": "y"}]})
    j.add_recommendation({"rec_id": "r2", "user_id": "v", "variant": "b", "created_ts": 0,
                          "items": [{"item_id": "x"}]})
    j.add_interaction({"event_id": "e1", "type": "purchase", "rec_id": "r1", "position": 1, "item_id": "y", "ts": 5})
    j.add_interaction({"event_id": "e2", "type": "click", "rec_id": "r1", "position": 0, "item_id": "x", "ts": 6})
    # The segment survives a checkpoint of the joiner.
    j = Joiner.from_state(json.loads(json.dumps(j.state())), JoinConfig(window_ms=100))
    closed = j.flush()
    assert {s.rec_id: s.segment for s in closed} == {"r1": 3, "r2": None}
    for s in closed:
        m.count_arm(s)
    assert value("streamrec_learner_arm_clicked_slates_total", variant="b", segment="3") == before["3"] + 1
    assert value("streamrec_learner_arm_clicked_slates_total", variant="b", segment="none") == before["none"]
    assert value("streamrec_learner_arm_reward_total", variant="b", segment="3") == reward_before + 6.0


def test_scheduled_runs_serve_health_and_metrics_and_stop_on_request(planted, tmp_path, monkeypatch):
    """`--every`: runs on schedule, counts failures without dying, /readyz after a success, stops at once."""
    from streamrec.cli import build_parser
    from streamrec.settings import Settings

    data, inter, model = planted
    args = build_parser().parse_args(["segments", "--data", "unused", "--k", "4", "--out", str(tmp_path),
                                      "--no-redis", "--every", "1h"])
    args.settings = Settings()
    calls = []

    def fake_histories(a, min_items):
        calls.append(1)
        if len(calls) == 1:
            raise seg.SegmentError("--data: nothing there yet")  # a failed run: counted, retried
        return seg.Histories.from_interactions(inter)

    monkeypatch.setattr(seg, "load_histories", fake_histories)
    monkeypatch.setattr(seg, "load_encoder", lambda s, name: seg.TorchEncoder(model))
    service = seg.SegmentService(args, every_s=0.05, port=0)
    thread = threading.Thread(target=service.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while service.last_ok is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.last_ok is not None
        base = f"http://127.0.0.1:{service.port}"
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            assert r.status == 200
        body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'streamrec_segments_runs_total{outcome="error"} 1.0' in body
        assert 'streamrec_segments_silhouette{method="kmeans"}' in body
        assert 'streamrec_segments_users{segment="0"}' in body
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()
    report = json.loads((tmp_path / "segments.json").read_text())
    assert report["k"] == 4 and report["users"] == PLANTED.users and "redis" not in report
