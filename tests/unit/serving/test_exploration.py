"""The serving policy: propensities are the sampler's real probabilities."""

from collections import Counter

import numpy as np
import pytest

from streamrec.serving.exploration import choose, slot_distribution

SCORES = np.array([2.0, 1.5, 1.0, 0.2, -0.5, 0.9])


@pytest.mark.parametrize("mode", ["off", "epsilon", "softmax"])
def test_slot_distributions_sum_to_one(mode):
    for placed in ([], [0], [0, 2, 5], [0, 1, 2, 3, 4]):
        p = slot_distribution(SCORES, placed, mode, epsilon=0.3, temperature=0.7)
        assert p.sum() == pytest.approx(1.0)
        assert (p[placed] == 0).all()


@pytest.mark.parametrize("mode", ["epsilon", "softmax"])
def test_propensity_equals_the_slot_probability_the_sampler_used(mode):
    rng = np.random.default_rng(3)
    for _ in range(200):
        idx, prop, _ = choose(SCORES, 4, mode, epsilon=0.3, temperature=0.7, rng=rng)
        assert len(set(idx.tolist())) == 4
        for slot in range(4):
            p = slot_distribution(SCORES, idx[:slot].tolist(), mode, epsilon=0.3, temperature=0.7)
            assert prop[slot] == pytest.approx(p[idx[slot]])


@pytest.mark.parametrize("mode", ["epsilon", "softmax"])
def test_sampling_frequencies_match_propensities(mode):
    rng = np.random.default_rng(5)
    n = 20_000
    first = Counter(int(choose(SCORES, 3, mode, epsilon=0.3, temperature=0.7, rng=rng)[0][0]) for _ in range(n))
    expected = slot_distribution(SCORES, [], mode, epsilon=0.3, temperature=0.7)
    for item, p in enumerate(expected):
        assert first[item] / n == pytest.approx(p, abs=0.015)


def test_off_is_greedy_with_propensity_one_and_explore_flags():
    idx, prop, explored = choose(SCORES, 3, "off")
    assert idx.tolist() == [0, 1, 2] and prop.tolist() == [1.0] * 3 and not explored.any()
    idx, prop, explored = choose(SCORES, 10, "epsilon", epsilon=1.0, rng=np.random.default_rng(0))
    assert sorted(idx.tolist()) == list(range(6))  # more slots than items: all of them, once
    assert choose(np.zeros(0), 5, "softmax")[0].size == 0


def test_softmax_extreme_scores_stay_finite():
    idx, prop, _ = choose(np.array([1e6, -1e6, 0.0]), 3, "softmax", temperature=0.01, rng=np.random.default_rng(0))
    assert np.isfinite(prop).all() and idx[0] == 0
