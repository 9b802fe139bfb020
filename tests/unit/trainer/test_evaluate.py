"""Metrics and baselines against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from streamrec.trainer.evaluate import (CoVisitation, LeaveOneOut, LogisticRegression, Popularity, auc,
                                        evaluate_scorer, logloss, ranking_metrics, target_ranks)


def test_leave_one_out_by_time():
    split = LeaveOneOut.split({"a": ["1", "2", "3", "4"], "b": ["1", "2"], "c": ["9"]})
    assert split.users == ["a"]
    assert split.train == [["1", "2"], ["1", "2"]]  # b is too short to evaluate but still trains
    assert (split.val_history, split.val_target) == ([["1", "2"]], ["3"])
    assert (split.test_history, split.test_target) == ([["1", "2", "3"]], ["4"])


def test_ranks_exclude_seen_items_but_not_the_target_and_ties_count_against():
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    scores = np.array([[9.0, 5.0, 5.0, 1.0]])
    assert target_ranks(scores, [["a"]], ["b"], index).tolist() == [1]       # a excluded; c ties with b
    assert target_ranks(scores, [["a", "b"]], ["b"], index).tolist() == [1]  # the target is never excluded
    assert target_ranks(scores, [[]], ["a"], index).tolist() == [0]


def test_ranking_metrics_by_hand():
    m = ranking_metrics(np.array([0, 1, 10]), k=10)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / np.log2(3)) / 3)
    assert m["MRR@10"] == pytest.approx((1 + 0.5) / 3)


def test_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).astype(float)
    s = np.round(rng.normal(size=60) + y, 1)  # rounding makes ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert auc(y, s) == pytest.approx(np.mean(pairs))
    assert np.isnan(auc(np.ones(3), np.arange(3)))


def test_logloss_and_logistic_regression_learn_a_linear_rule():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 3))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1])))).astype(float)
    p = LogisticRegression().fit(x, y).predict(x)
    assert auc(y, p) > 0.8
    assert logloss(y, p) < logloss(y, np.full_like(p, y.mean()))


def test_baselines_rank_as_designed():
    catalog = ["a", "b", "c", "d"]
    train = [["a", "b"], ["a", "b"], ["c", "d"], ["a"]]
    pop = Popularity(train, catalog)
    assert pop([["x"]])[0].tolist() == [3, 2, 1, 1]
    covis = CoVisitation(train, catalog)
    scores = covis([["c"]])[0]
    assert scores.argmax() == 3  # d co-occurs with c, though it is less popular than a and b
    metrics, top = evaluate_scorer(covis, [["c"], ["a"]], ["d", "b"], catalog, k=2)
    assert metrics["HR@2"] == 1.0 and metrics["MRR@2"] == 1.0 and top.shape == (2, 2)
