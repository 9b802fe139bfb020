"""Ranker samples from the replayed serving state: labels, held-out items, point-in-time features."""

import math

import numpy as np

from streamrec.settings import Settings
from streamrec.trainer.data import Interactions
from streamrec.trainer.dcn import DENSE_FEATURES
from streamrec.trainer.replayed_samples import SampleConfig, replayed_samples

COVIS = DENSE_FEATURES.index("covis_score")
VIEWS = DENSE_FEATURES.index("item_log_views")
MINUTE = 60_000


def _history() -> Interactions:
    """Three users view items in one session each; u1 and u2 both go a -> b, so b follows a."""
    rows = []
    for u, items, start in (("u1", "abcd", 0), ("u2", "abce", 1), ("u3", "xyzab", 2)):
        rows += [{"user_id": u, "item_id": i, "ts": (start * 10 + k) * MINUTE, "type": "view"}
                 for k, i in enumerate(items)]
    return Interactions.from_rows(rows)


def _samples(held_out=frozenset(), **kw):
    cfg = SampleConfig(candidate_negatives=3, popular_negatives=2, **kw)
    return replayed_samples(_history(), Settings(), set(held_out), cfg=cfg)


def _groups(s):
    starts = np.flatnonzero(s.label == 1.0)
    return [range(a, b) for a, b in zip(starts, list(starts[1:]) + [len(s)])]


def test_each_chosen_item_leads_a_group_of_negatives_it_is_not_among():
    s = _samples()
    groups = _groups(s)
    # every positive but each user's first (no request answered before it): 3 + 3 + 4
    assert len(groups) == 10
    with_negatives = 0
    for g in groups:
        chosen = s.items[g[0]]
        negatives = [s.items[j] for j in g[1:]]
        assert chosen not in negatives and len(set(negatives)) == len(negatives)
        assert len({s.users[j] for j in g}) == 1 and len({int(s.ts[j]) for j in g}) == 1
        with_negatives += bool(negatives)
    # u1 goes first: every item seen before its choices is in its own session, so nothing to set them against
    assert with_negatives == 7


def test_held_out_events_never_become_samples_but_still_move_time_on():
    s = _samples(held_out={("u1", 3), ("u2", 3), ("u2", 2)})
    chosen = [(s.users[g[0]], s.items[g[0]]) for g in _groups(s)]
    assert ("u1", "d") not in chosen and ("u2", "e") not in chosen and ("u2", "c") not in chosen
    assert ("u1", "c") in chosen
    # u3's b comes after everyone's a -> b: its co-visitation counts u1's and u2's transitions
    g = next(g for g in _groups(s) if (s.users[g[0]], s.items[g[0]]) == ("u3", "b"))
    assert s.dense[g[0], COVIS] > 0


def test_features_are_read_before_the_chosen_event():
    s = _samples()
    for g in _groups(s):
        user, item, ts = s.users[g[0]], s.items[g[0]], int(s.ts[g[0]])
        earlier = sum(1 for u, i, t in (("u1", "abcd", 0), ("u2", "abce", 1), ("u3", "xyzab", 2))
                      for k, it in enumerate(i) if it == item and (t * 10 + k) * MINUTE <= ts)
        # the request is the user's previous event: the chosen one is not counted yet
        assert math.isclose(s.dense[g[0], VIEWS], math.log1p(earlier), rel_tol=1e-6), (user, item)


def test_the_first_transition_has_no_co_visitation_and_the_shared_one_has():
    s = _samples()
    first_b = next(g for g in _groups(s) if (s.users[g[0]], s.items[g[0]]) == ("u1", "b"))
    second_b = next(g for g in _groups(s) if (s.users[g[0]], s.items[g[0]]) == ("u2", "b"))
    assert s.dense[first_b[0], COVIS] == 0.0
    assert s.dense[second_b[0], COVIS] > 0.0
    # the prefix the sequence score reads is the user's items before the choice
    assert s.prefixes[s.prefix[second_b[0]]] == ["a"]


def test_max_positives_samples_evenly():
    assert len(_groups(_samples(max_positives=5))) < 10
