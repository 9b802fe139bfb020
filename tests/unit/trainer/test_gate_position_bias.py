"""The gate under position bias: logged clicks crowd the ranks the live model chose.

Each logged slate shows 4 items in the live model's order. Users look at rank
0 always and at rank 2 one time in five; the item the live model puts first is
clicked 30% of the times it is seen, the one at rank 2 always. Raw clicks then
favour the live order (0.3 per slate at rank 0 against 0.2 at rank 2), although
a candidate that puts the rank-2 item first would earn 1.0 per slate instead of 0.3.
"""

from __future__ import annotations

import numpy as np

from streamrec.trainer.evaluate import auc
from streamrec.online.gate import Gate, GateConfig, weighted_auc

SLATES = 200
EXAMINATION = np.array([1.0, 0.2, 0.2, 0.2])


def logged_window():
    rng = np.random.default_rng(0)
    slate_of = np.repeat(np.arange(SLATES), 4)
    position = np.tile(np.arange(4), SLATES)
    seen = rng.random(len(position)) < EXAMINATION[position]
    appeal = np.tile([0.3, 0.0, 1.0, 0.0], SLATES)
    reward = (seen & (rng.random(len(position)) < appeal)).astype(float)
    live = np.tile([3.0, 2.0, 1.0, 0.0], SLATES)
    candidate = np.tile([2.0, 1.0, 3.0, 0.0], SLATES)
    return slate_of, position, reward, live, candidate


def test_raw_clicks_keep_the_live_order_and_examination_weights_promote_the_better_one():
    slate_of, position, reward, live, candidate = logged_window()
    gate = Gate(GateConfig(min_samples=100))
    raw = gate.decide(slate_of, reward, np.ones(len(reward)), live, candidate)
    assert not raw.accepted  # the bias: the live ordering explains where clicks were logged
    debiased = gate.decide(slate_of, reward, np.ones(len(reward)), live, candidate,
                           exam_weight=1.0 / EXAMINATION[position])
    assert debiased.accepted, debiased.reason
    assert debiased.candidate["snips"] > debiased.live["snips"]
    # ... and the reverse swap (the better model live, the worse one as candidate) is still refused
    back = gate.decide(slate_of, reward, np.ones(len(reward)), candidate, live, exam_weight=1.0 / EXAMINATION[position])
    assert not back.accepted


def test_weighted_auc_equals_auc_with_unit_weights_and_counts_weights_as_repeats():
    rng = np.random.default_rng(1)
    label = rng.random(300) < 0.3
    score = rng.integers(0, 10, 300).astype(float)  # many ties
    assert np.isclose(weighted_auc(label, score, np.ones(300)), auc(label, score))
    weight = rng.integers(1, 4, 300)
    repeated = np.repeat(np.arange(300), weight)
    assert np.isclose(weighted_auc(label, score, weight.astype(float)), auc(label[repeated], score[repeated]))
