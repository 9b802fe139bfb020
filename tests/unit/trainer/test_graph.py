"""The LightGCN graph model: finds a planted graph signal, is deterministic, exports arrays with parity."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.registry import Registry
from streamrec.serving.graph import GraphModel
from streamrec.trainer.evaluate import LeaveOneOut, Popularity, evaluate_scorer
from streamrec.trainer.graph import (GraphConfig, GraphExportError, LightGCN, export_graph, graph_parity,
                                     graph_scorer, train_graph)

GROUPS, PER_GROUP, USERS = 6, 15, 180


def planted_communities(seed: int = 0) -> dict[str, list[str]]:
    """Users of a group interact with items of their group only, in random order (no sequential
    pattern); item popularity is drawn independently of the groups, so popularity cannot find it."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.5, GROUPS * PER_GROUP) + 1.0  # popular items in every group
    seqs = {}
    for u in range(USERS):
        g = u % GROUPS
        items = np.arange(g * PER_GROUP, (g + 1) * PER_GROUP)
        p = weights[items] / weights[items].sum()
        seqs[f"u{u}"] = [f"i{j}" for j in rng.choice(items, size=8, replace=False, p=p)]
    return seqs


@pytest.fixture(scope="module")
def community_model():
    split = LeaveOneOut.split(planted_communities())
    catalog = [f"i{j}" for j in range(GROUPS * PER_GROUP)]
    model, result = train_graph(split, catalog, GraphConfig(dim=16, epochs=60, batch_size=512, progress=False))
    return split, catalog, model, result


def test_graph_model_finds_the_planted_communities_that_popularity_cannot(community_model):
    split, catalog, model, result = community_model
    args = (split.test_history, split.test_target, catalog)
    graph, _ = evaluate_scorer(graph_scorer(model, catalog), *args)
    pop, _ = evaluate_scorer(Popularity(split.train, catalog), *args)
    # 7 of a group's 15 items are seen; the target is one of the 8 others: the graph puts them on top.
    assert graph["HR@10"] > 0.9 and graph["HR@10"] > pop["HR@10"] + 0.4, (graph, pop)
    assert graph["NDCG@10"] > pop["NDCG@10"] + 0.2
    assert result.train_loss[-1] < result.train_loss[0]  # BPR loss went down
    assert result.best_epoch >= 0 and len(result.val_loss) == len(result.train_loss)


def test_same_seed_same_model_and_early_stopping():
    split = LeaveOneOut.split(planted_communities(seed=1))
    catalog = sorted({i for s in split.train for i in s} | set(split.test_target) | set(split.val_target))
    cfg = GraphConfig(dim=8, epochs=200, batch_size=512, lr=0.05, patience=2, progress=False)
    a, ra = train_graph(split, catalog, cfg)
    b, _ = train_graph(split, catalog, cfg)
    assert np.array_equal(a.item_vectors().numpy(), b.item_vectors().numpy())
    assert ra.stopped_early and len(ra.train_loss) < cfg.epochs


def test_fold_in_is_lightgcn_for_a_new_user_node():
    """The served fold-in is LightGCN's representation of a user node added to the graph with the session's
    items as edges and no embedding of its own; the only difference, that node's effect on its neighbours'
    degrees and layers, is second order: 1% on a small graph."""
    import torch

    rng = np.random.default_rng(0)
    n_users, n_items = 200, 10
    users = np.repeat(np.arange(n_users), 3)
    items = np.concatenate([rng.choice(n_items, 3, replace=False) for _ in range(n_users)])
    torch.manual_seed(0)
    model = LightGCN(n_users, n_items, dim=8, layers=3, decay=1.0)
    model.set_graph(users, items)
    grown = LightGCN(n_users + 1, n_items, dim=8, layers=3)
    with torch.no_grad():
        grown.embedding.weight[:n_users] = model.embedding.weight[:n_users]
        grown.embedding.weight[n_users] = 0.0
        grown.embedding.weight[n_users + 1:] = model.embedding.weight[n_users:]
        grown.set_graph(np.concatenate([users, [n_users, n_users]]), np.concatenate([items, [1, 2]]))
        folded = model(*model.history_inputs([[1, 2]]))[0]
        new_user = grown.propagate()[0][n_users]
    assert float((folded - new_user).norm() / new_user.norm()) < 0.02


def test_export_parity_and_the_scorer_loads_what_was_published(community_model, tmp_path):
    split, catalog, model, _ = community_model
    exported = export_graph(model, tmp_path / "export", catalog, split.test_history)
    assert exported.max_abs_diff["arrays"] <= 1e-4
    reg = Registry(tmp_path / "registry")
    meta = reg.publish("graph", exported.files, kind=model.kind, extra=exported.extra, version="v1")
    served = GraphModel(reg.location("graph", "v1"), reg.verify("graph", "v1"))
    served.warm_up()
    histories = split.test_history[:32] + [[], [catalog[0]], ["never-seen-item", catalog[1]]]
    expected = graph_scorer(model, catalog)(histories)
    got = served.user_vectors(histories) @ served.vectors.T
    assert served.item_ids == catalog and meta.kind == "lightgcn"
    assert np.max(np.abs(got - expected)) <= 1e-4
    idx, _ = served.retrieve(served.user_vectors(split.test_history[:4]), 10)
    assert idx.shape == (4, 10)
    # A damaged array no longer matches torch: the export refuses it.
    fold = np.load(tmp_path / "export" / "fold_vectors.npy")
    np.save(tmp_path / "export" / "fold_vectors.npy", fold + 1e-3)
    with pytest.raises(GraphExportError, match="differ from torch"):
        graph_parity(model, tmp_path / "export", catalog)


@pytest.mark.parametrize("name", ["streamrec.trainer.graph", "streamrec.serving.graph"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
