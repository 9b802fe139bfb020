"""The full leave-one-out table: precision, recall, MAP at several K, coverage and popularity bias."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.trainer.evaluate import (LeaveOneOut, Popularity, evaluate_scorer, leave_one_out_table, list_metrics,
                                        ranking_metrics)


def test_precision_recall_and_map_by_hand_with_one_target():
    ranks = np.array([0, 2, 7, 30])  # hits at K=5: ranks 0 and 2
    m = ranking_metrics(ranks, k=5, extended=True)
    assert m["HR@5"] == pytest.approx(0.5)
    assert m["P@5"] == pytest.approx(2 / (4 * 5))   # 2 relevant items in 4 lists of 5
    assert m["R@5"] == pytest.approx(0.5)           # each user has 1 relevant item
    assert m["MAP@5"] == pytest.approx((1 + 1 / 3) / 4)  # AP = precision at the target's position
    assert m["MAP@5"] == m["MRR@5"] and m["R@5"] == m["HR@5"] and m["P@5"] == m["HR@5"] / 5


def test_coverage_and_popularity_of_the_lists():
    tops = np.array([[0, 1, 2], [0, 1, 3], [0, 4, 5]])
    pop = np.array([100.0, 50.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert list_metrics(tops, 1, 10, pop) == {"coverage@1": 0.1, "pop@1": 100.0}
    m = list_metrics(tops, 3, 10, pop)
    assert m["coverage@3"] == pytest.approx(0.6)
    assert m["pop@3"] == pytest.approx((300 + 100 + 4) / 9)


def test_several_cutoffs_from_one_ranking_and_bad_cutoffs_refused():
    seqs = {f"u{u}": [f"i{(u + j) % 12}" for j in range(5)] for u in range(30)}
    split = LeaveOneOut.split(seqs)
    catalog = [f"i{j}" for j in range(12)]
    pop = Popularity(split.train, catalog)
    one, top10 = evaluate_scorer(pop, split.test_history, split.test_target, catalog, k=10)
    many, tops = evaluate_scorer(pop, split.test_history, split.test_target, catalog, k=[20, 5, 10],
                                 popularity=pop.counts)
    assert sorted(one) == ["HR@10", "MRR@10", "NDCG@10"] and top10.shape == (30, 10)
    assert tops.shape == (30, 12)  # the largest cutoff, capped by the catalog
    assert {k: many[k] for k in one} == one  # the single-K path and the list path agree
    assert many["HR@5"] <= many["HR@10"] <= many["HR@20"] == 1.0
    assert many["coverage@5"] <= many["coverage@10"] and many["pop@5"] >= many["pop@20"]
    rows, _ = leave_one_out_table({"popularity": pop}, split, catalog, [5])
    assert set(rows["popularity"]) == {"HR@5", "NDCG@5", "MRR@5", "P@5", "R@5", "MAP@5", "coverage@5", "pop@5"}
    for bad in ([0], []):
        with pytest.raises(ValueError, match="k: cutoffs"):
            evaluate_scorer(pop, split.test_history, split.test_target, catalog, k=bad)


def test_train_graph_publishes_it_and_evaluate_scores_the_published_arrays(tmp_path, capsys, monkeypatch,
                                                                         small_interactions):
    """`streamrec train --graph --k 5 10`: rows for sasrec, graph and the baselines at both cutoffs, the graph
    published as `graph`; `streamrec evaluate --model graph` (numpy, as served) reproduces its metrics."""
    import json

    from streamrec.cli import main

    monkeypatch.setenv("STREAMREC_REGISTRY_URI", str(tmp_path / "registry"))
    path = tmp_path / "events.jsonl"
    with open(path, "w") as f:
        for u, i, t in zip(small_interactions.user, small_interactions.item, small_interactions.ts):
            f.write(json.dumps({"event_id": f"{u}-{t}-{i}", "type": "view", "user_id": u, "item_id": i,
                                "ts": int(t)}) + "\n")
    assert main(["train", "--data", str(path), "--graph", "--k", "5", "10", "--epochs", "1", "--dim", "16",
                 "--graph-dim", "8", "--item-buckets", "2048", "--no-progress", "--no-announce"]) == 0
    table = capsys.readouterr().out
    for name in ("sasrec", "graph", "popularity", "co-visitation", "dcn-v2"):
        assert name in table, table
    for col in ("HR", "NDCG", "MRR", "P", "R", "MAP", "coverage", "pop"):
        assert f" {col} " in table, table
    assert main(["models", "show", "graph"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "lightgcn" and {"item_vectors.npy", "fold_vectors.npy"} <= set(shown["files"])
    assert main(["evaluate", "--data", str(path), "--model", "graph", "--k", "5"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if f"graph@{shown['version']}" in line)
    assert f"{shown['metrics']['HR@5']:.4f}" in row and f"{shown['metrics']['NDCG@5']:.4f}" in row
    with pytest.raises(SystemExit):
        main(["evaluate", "--data", str(path), "--k", "0"])
