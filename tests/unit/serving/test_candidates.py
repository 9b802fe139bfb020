"""Candidate merge, de-duplication and filtering; top-K; co-visitation summing."""

import numpy as np

from streamrec.serving.candidates import CovisTable, Source, covisitation, merge, top_k


def test_merge_keeps_first_reason_dedups_and_filters():
    c = merge([Source("covisit", ["a", "b"], reasons=["covisit:x", "covisit:y"]),
               Source("seq", ["b", "c", "bought", "d"]),
               Source("trending", ["d", "e", "removed", "a"])],
              exclude={"bought", "removed"}, limit=100)
    assert c.items == ["a", "b", "c", "d", "e"]
    assert c.reasons == ["covisit:x", "covisit:y", "seq", "seq", "trending"]
    assert c.counts() == {"covisit": 2, "seq": 2, "trending": 1}


def test_merge_limit_and_empty_sources():
    assert merge([], set()).items == []
    c = merge([Source("trending", [f"i{k}" for k in range(50)])], set(), limit=7)
    assert len(c) == 7 and c.items[-1] == "i6"


def test_covisitation_sums_over_recent_items_and_names_the_newest_source():
    table = CovisTable({"x": [("b", 3.0), ("a", 1.0)], "y": [("a", 2.5), ("c", 0.5)], "z": []})
    src = covisitation(table, ["x", "y", "z", "unknown"], limit=10)
    assert src.items == ["a", "b", "c"]
    assert src.scores == [3.5, 3.0, 0.5]
    assert src.reasons == ["covisit:x", "covisit:x", "covisit:y"]  # x is the newest recent item
    one = covisitation(table, ["x", "z"], limit=1)
    assert one.items == ["b"] and one.reasons == ["covisit:x"] and one.scores == [3.0]
    assert covisitation(table, ["z"], limit=5).items == []
    tie = covisitation(CovisTable({"x": [("p", 1.0)], "y": [("q", 1.0)]}), ["x", "y"], limit=5)
    assert tie.items == ["p", "q"]


def test_top_k_matches_full_sort():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 300))
    got = top_k(scores, 20)
    want = np.argsort(-scores, axis=1)[:, :20]
    assert (got == want).all()
    assert top_k(scores[:, :3], 10).shape == (5, 3)
    assert top_k(scores, 0).shape == (5, 0)
