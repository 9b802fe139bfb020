"""A short closed loop: simulated users -> worker -> scorer (three A/B arms) -> learner -> registry -> scorer.

Checks the mechanics, not the lift (a lift needs minutes; see `streamrec bench online` in BENCHMARKS.md):
the learner publishes gated versions, the scorer hot-swaps them into the online arm only, the pinned
arms keep their versions, and every arm's true reward is reported.
"""

from __future__ import annotations

import pytest

from streamrec.trainer.online_bench import run_bench

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_closed_loop_publishes_and_hot_swaps_into_the_online_arm_only(settings, tmp_path):
    result = run_bench(settings, seconds=45, users=120, rate=40, warmup_s=0, seed=1, out=tmp_path,
                       log=lambda m: None)
    assert result["learner"]["exit_code"] == 0
    assert result["learner"]["versions_published"] >= 1
    models = result["models"]
    assert set(models) == {"popularity", "frozen", "online"}
    assert set(models["frozen"]) == {"ranker@v0", "sasrec@v0"}
    assert set(models["popularity"]) == {"ranker@pop", "sasrec@v0"}
    assert any(not m.endswith(("@v0", "@pop")) for m in models["online"]), models["online"]
    for arm in ("popularity", "frozen", "online"):
        assert result["summary"][arm]["slates"] > 0
    assert result["learner"]["event_to_published_model_s_mean"] < 60
