"""The offline replay behind BENCHMARKS.md's attraction figures runs and reports what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "analysis" / "offline_loop.py"


def test_offline_loop_reports_every_arm_and_the_fitted_scales():
    out = subprocess.run([sys.executable, str(SCRIPT), "--slates", "1200", "--policy", "fit", "--refresh", "100",
                          "--pretrain-steps", "150", "--history", "20"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    report = json.loads(out)
    assert set(report["ctr"]) == {"popularity", "frozen", "online"}
    assert all(0 < c < 1 for c in report["ctr"].values())
    seq_scale, offset_scale = report["scales"]
    assert offset_scale > 0 and seq_scale > 0
    assert all(r > 0 for r in report["expected_reward"].values())
    # The oracle ranks by the hidden appeal, so its top items are more appealing than the frozen arm's.
    oracle = json.loads(subprocess.run([sys.executable, str(SCRIPT), "--slates", "1200", "--policy", "oracle",
                                        "--pretrain-steps", "150"],
                                       capture_output=True, text=True, timeout=300, check=True).stdout)
    assert oracle["top3_appeal"]["online"] > oracle["top3_appeal"]["frozen"] + 0.5


def test_truth_policy_shows_the_items_the_hidden_model_likes_best():
    # The ceiling of any learner: every item by its true attraction (taste match plus appeal) for the user now.
    truth = json.loads(subprocess.run([sys.executable, str(SCRIPT), "--slates", "1200", "--policy", "truth",
                                       "--pretrain-steps", "150", "--appeal", "0.5", "--attraction-bias", "-3"],
                                      capture_output=True, text=True, timeout=300, check=True).stdout)
    logit = {arm: truth["top3_appeal"][arm] + truth["top3_taste"][arm] for arm in truth["top3_appeal"]}
    assert logit["online"] > max(logit["frozen"], logit["popularity"]) + 0.5


def _replay_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("offline_loop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_joint_fit_tells_the_ranks_effect_from_the_items_where_click_rates_per_rank_cannot():
    import numpy as np

    rng = np.random.default_rng(0)
    items, ranks, n = 60, 10, 60_000
    effect = rng.normal(size=items)
    exam = 1.0 / (1.0 + np.arange(ranks)) ** 0.8
    z = rng.normal(size=n)
    item = rng.integers(items, size=n)
    # Half the impressions from a ranker that puts the better items on top (as every arm but popularity
    # does), half at random ranks (what lets the two effects be told apart).
    order = np.argsort(np.argsort(-effect))  # 0 for the best item
    rank = np.where(np.arange(n) < n // 2, np.minimum(order[item] * ranks // items, ranks - 1),
                    rng.integers(ranks, size=n))
    # The fit's click model: the rank's examination as a logit offset (close to a factor at low click rates).
    p = 1.0 / (1.0 + np.exp(-(-1.5 + 0.5 * z + effect[item] + np.log(exam[rank]))))
    clicked = rng.random(n) < p
    offsets, z_scale, fitted = _replay_module().fit_joint(z, np.array([f"i{k}" for k in item]), clicked, rank)
    naive = np.array([clicked[rank == r].mean() for r in range(ranks)]) / clicked[rank == 0].mean()
    assert fitted[0] == 1.0 and np.all(np.diff(fitted) <= 0)
    # The click rate per rank also holds the ranker's ordering: too steep. The joint fit is much closer.
    assert np.abs(fitted - exam).mean() < 0.5 * np.abs(naive - exam).mean()
    assert np.corrcoef([offsets[f"i{k}"] for k in range(items)], effect)[0, 1] > 0.9
    assert 0.3 < z_scale < 0.7


def test_the_replay_runs_like_the_live_bench_and_reports_its_estimates():
    out = json.loads(subprocess.run([sys.executable, str(SCRIPT), "--slates", "1500", "--policy", "joint",
                                     "--refresh", "100", "--pretrain-steps", "150", "--pool", "live", "--score",
                                     "raw"], capture_output=True, text=True, timeout=300, check=True).stdout)
    assert (out["pool"], out["score"]) == ("live", "raw")
    assert out["examination"][0] == 1.0 and out["examination"] == sorted(out["examination"], reverse=True)
    assert -1.0 <= out["offset_appeal_corr"] <= 1.0
    assert out["scales"][0] > 0 and all(0 < c < 1 for c in out["ctr"].values())
