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
