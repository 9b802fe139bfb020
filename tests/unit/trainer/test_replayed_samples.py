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
    return replayed_samples(_history(), Settings(), set(held_out), cfg=SampleConfig(candidate_negatives=3, **kw))


def _groups(s):
    starts = np.flatnonzero(s.label == 1.0)
    return [range(a, b) for a, b in zip(starts, list(starts[1:]) + [len(s)])]


def _chosen(s):
    return [(s.users[g[0]], s.items[g[0]]) for g in _groups(s)]


def test_a_choice_is_a_sample_only_when_it_was_among_the_candidates():
    s = _samples()
    # Without a sequence model the candidates are co-visitation and trending. u1 goes first: nothing it
    # chose was a candidate. u2's b and c follow u1's a -> b -> c; its e was nobody's candidate. u3's
    # a was trending and its b follows a; x, y, z were nobody's.
    assert _chosen(s) == [("u2", "b"), ("u2", "c"), ("u3", "a"), ("u3", "b")]
    for g in _groups(s):
        negatives = [s.items[j] for j in g[1:]]
        assert negatives and s.items[g[0]] not in negatives and len(set(negatives)) == len(negatives)
        assert len({s.users[j] for j in g}) == 1 and len({int(s.ts[j]) for j in g}) == 1


def test_negatives_are_candidates_the_user_had_not_seen_in_the_session():
    s = _samples()
    g = _groups(s)[1]  # u2 chose c after a, b: d (u1's next item, trending) was the other candidate
    assert [s.items[j] for j in g] == ["c", "d"]


def test_held_out_events_never_become_samples_but_still_move_time_on():
    s = _samples(held_out={("u2", 1)})
    assert ("u2", "b") not in _chosen(s) and ("u2", "c") in _chosen(s)
    # u3's b comes after everyone's a -> b: its co-visitation counts u1's and u2's transitions
    g = _groups(s)[_chosen(s).index(("u3", "b"))]
    assert s.dense[g[0], COVIS] > _samples().dense[_groups(_samples())[0][0], COVIS] > 0


def test_features_are_read_before_the_chosen_event():
    s = _samples()
    for g in _groups(s):
        item, ts = s.items[g[0]], int(s.ts[g[0]])
        earlier = sum(1 for items, t in (("abcd", 0), ("abce", 1), ("xyzab", 2))
                      for k, it in enumerate(items) if it == item and (t * 10 + k) * MINUTE <= ts)
        # the request is the user's previous event: the chosen one is not counted yet
        assert math.isclose(s.dense[g[0], VIEWS], math.log1p(earlier), rel_tol=1e-6), item


def test_the_sequence_input_is_the_users_items_before_the_choice():
    s = _samples()
    assert [s.prefixes[s.prefix[g[0]]] for g in _groups(s)] == [["a"], ["a", "b"], ["x", "y", "z"],
                                                                   ["x", "y", "z", "a"]]


def test_max_positives_samples_evenly():
    assert len(_groups(_samples(max_positives=4))) < 4
