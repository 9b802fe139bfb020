"""The scorer's in-memory content index (no model needed): neighbours, new items merged into cached
neighbour lists at once, removals, bounded memory, and session profiles."""

from __future__ import annotations

import numpy as np

from streamrec.serving.content import ContentIndex, content_similar, session_profiles
from streamrec.trainer.content import profile_vectors


def unit(*v) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def index_of(vectors: dict[str, np.ndarray], **kw) -> ContentIndex:
    idx = ContentIndex(**kw)
    idx.upsert(list(vectors), np.stack(list(vectors.values())), [f"key-{i}" for i in vectors], bulk=True)
    return idx


VECS = {"a": unit(1, 0, 0), "a2": unit(0.9, 0.1, 0), "b": unit(0, 1, 0), "b2": unit(0.1, 0.9, 0),
        "c": unit(0, 0, 1)}


def test_neighbours_are_the_most_similar_items_without_the_item_itself():
    idx = index_of(VECS, neighbours=2)
    ids, sims = idx.neighbours(["a"])["a"]
    assert ids[0] == "a2" and "a" not in ids and len(ids) == 2 and sims[0] > sims[1]
    assert idx.neighbours(["unknown"]) == {}
    # Per session of a batch: each gets its own items; a session of both themes sums them (newest weighs more).
    (a_ids, _), (b_ids, _), (ab_ids, ab_sims) = content_similar(idx, [["a"], ["b"], ["b", "a"]], limit=[2, 2, 4])
    assert a_ids[0] == "a2" and b_ids[0] == "b2" and len(a_ids) == 2
    assert set(ab_ids[:2]) == {"a2", "b2"} and ab_ids[0] == "b2" and len(ab_ids) == len(set(ab_ids))


def test_a_new_item_joins_the_cached_lists_it_belongs_to_and_a_removed_one_leaves():
    idx = index_of(VECS, neighbours=2)
    before = idx.neighbours(["a", "b"])  # cached now
    assert before["a"][0] == ["a2", "b2"]
    idx.upsert(["new"], unit(0.95, 0.05, 0)[None], ["key-new"])
    after = idx.neighbours(["a", "b"])
    assert after["a"][0][:1] == ["new"] and "new" not in after["b"][0]
    (ids, sims), (none, _) = content_similar(idx, [["a"], ["unknown"]], limit=5)
    assert ids[0] == "new" and sims == sorted(sims, reverse=True) and none == []
    idx.remove("new")
    assert "new" not in idx.neighbours(["a"])["a"][0] and len(idx) == len(VECS)
    assert idx.vectors_of(["new", "a"])[1].tolist() == [False, True]


def test_a_changed_item_is_placed_again_and_its_fingerprint_kept():
    idx = index_of(VECS, neighbours=3)
    idx.neighbours(["a"])
    idx.upsert(["a2"], unit(0, 0, 1)[None], ["key-a2-v2"])  # a2's text changed: now like c
    ids, _ = idx.neighbours(["a"])["a"]
    assert ids.count("a2") <= 1 and ids[0] != "a2"
    assert idx.key_of("a2") == "key-a2-v2" and idx.key_of("zzz") is None


def test_memory_is_bounded_the_oldest_items_give_way():
    idx = ContentIndex(capacity=3)
    for j in range(5):
        idx.upsert([f"i{j}"], unit(1, j, 0)[None], [str(j)])
    assert len(idx) == 3 and idx.matrix.shape[0] <= 1024
    assert idx.vectors_of(["i0", "i1", "i2", "i3", "i4"])[1].tolist() == [False, False, True, True, True]
    idx.upsert(["wide"], np.ones((1, 5), np.float32) / np.sqrt(5), ["w"])  # another model width: start over
    assert len(idx) == 1 and idx.dim == 5


def test_session_profile_is_the_trainers_profile():
    idx = index_of(VECS)
    sessions = [["a", "b"], [], ["unknown", "c"]]  # newest first
    served = session_profiles(idx, sessions)
    rows = {k: r for r, k in enumerate(VECS)}
    mat = np.stack(list(VECS.values()))
    trained = profile_vectors(mat, [[rows["b"], rows["a"]], [], [rows["c"]]])  # oldest first
    assert np.allclose(served, trained, atol=1e-6)
    assert not served[1].any()


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("streamrec.serving.content", "streamrec.trainer.content"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, name
