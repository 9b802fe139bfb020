"""A short closed loop: simulated users -> worker -> scorer (three A/B arms) -> learner -> registry -> scorer.

Checks the mechanics, not the lift (a lift needs minutes; see `streamrec bench online` in BENCHMARKS.md):
the learner publishes gated versions, the scorer hot-swaps them into the online arm only, the pinned
arms keep their versions, every arm's true reward is reported, and the learner trains on the features as
served, never on ones that already hold the user's reaction to the slate.
"""

from __future__ import annotations

import json

import pytest

from streamrec.trainer.online_bench import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_closed_loop_publishes_and_hot_swaps_into_the_online_arm_only(settings, tmp_path):
    # An initial sequence model of 200 steps, not the bench's 1,200: the mechanics do not need a good one.
    result = run_bench(settings, seconds=45, users=120, rate=40, warmup_s=0, seed=1, out=tmp_path,
                       log=lambda m: None, pretrain_steps=200)
    assert result["learner"]["exit_code"] == 0
    assert result["learner"]["versions_published"] >= 1
    models = result["models"]
    assert set(models) == {"popularity", "frozen", "online"}
    assert set(models["frozen"]) == {"ranker@v0", "sasrec@v0"}
    assert set(models["popularity"]) == set()  # trending items only: no model answers for that arm
    assert any(not m.endswith("@v0") for m in models["online"]), models["online"]
    for arm in ("popularity", "frozen", "online"):
        assert result["summary"][arm]["slates"] > 0
    assert result["learner"]["event_to_published_model_s_mean"] < 60
    # Point in time: a clicked item is never in the session its slate was trained with (read back from
    # Redis after the click, it would be in nearly every one: 96% in a run before feature logging).
    ckpt = json.loads(next(tmp_path.glob("learner-*/learner.json")).read_text())
    slates = [sl for sl in ckpt["train"] + ckpt["holdout"] if sl.get("features")]
    clicked = [(item, sl["features"]["session"]) for sl in slates for item, r in zip(sl["items"], sl["rewards"])
               if r > 0]
    assert len(clicked) >= 20
    assert [item for item, session in clicked if item in session] == []
    assert ckpt["counts"]["features_served"] > 0 and ckpt["counts"].get("features_read_late", 0) == 0
