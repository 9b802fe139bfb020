"""The ranker's online optimiser (Adam for the dense layers, per-sample SGD for the id embeddings) and the
per-item attraction the online trainer writes into the ranker's per-item bias."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from streamrec.online.attraction import ItemEvidence, attraction_offsets, write_offsets
from streamrec.harness.bench.online import feature_ranker
from streamrec.online.models import DenseAdamSparseSGD


def test_embeddings_take_plain_sgd_steps_in_per_sample_units():
    model = feature_ranker("seq_score", buckets=50)
    opt = DenseAdamSparseSGD(model, lr=1e-3, embedding_lr=0.1)
    before = model.items.weight.detach().clone()
    sparse = torch.tensor([[1, 2, 3, 4, 5]] * 8)
    dense = torch.zeros(8, len(model.dense_mean))
    opt.rows = 8
    opt.zero_grad()
    loss = model.loss({"sparse": sparse, "dense": dense, "label": torch.ones(8)})
    loss.backward()
    grad = model.items.weight.grad.detach().clone()
    opt.step()
    np.testing.assert_allclose((model.items.weight - before).detach().numpy(), (-0.1 * 8 * grad).numpy(), atol=1e-7)
    assert not model.item_bias.weight.any()  # the per-item bias is set from rewards, never by gradient


def test_attraction_from_position_biased_clicks_orders_items_by_hidden_appeal():
    """Slates with items at random ranks, clicked under a position-based model: the estimate recovers the
    items' appeal, and written into the ranker it orders them (other features equal)."""
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(40)]
    appeal = rng.normal(0, 1.0, 40)
    exam = 1.0 / (1.0 + np.arange(10)) ** 0.8
    slates = []
    for _ in range(3000):
        shown = rng.choice(40, 10, replace=False)
        p = exam / (1 + np.exp(-(appeal[shown] - 1.5)))
        slates.append(SimpleNamespace(items=[items[k] for k in shown], rewards=(rng.random(10) < p).astype(float)))
    offsets = attraction_offsets(slates, exam)
    est = np.array([offsets[i] for i in items])
    assert spearman(est, appeal) > 0.9
    model = feature_ranker("seq_score", buckets=2000)
    assert write_offsets(model, offsets) == 40
    with torch.no_grad():
        logit = model.logit(torch.from_numpy(model.sparse_ids(["u"] * 40, items, ["c"] * 40)),
                            torch.zeros(40, len(model.dense_mean))).numpy()
    assert spearman(logit, appeal) > 0.9


def test_too_few_clicks_leave_the_offsets_alone():
    slates = [SimpleNamespace(items=["a", "b"], rewards=[1.0, 0.0])] * 10
    assert attraction_offsets(slates, np.array([1.0, 0.5])) == {}


def test_item_evidence_fades_with_event_time_and_keeps_a_bounded_number_of_items(monkeypatch):
    ev = ItemEvidence(half_life_s=10.0)
    ev.add([SimpleNamespace(items=["old"], rewards=[1.0], created_ts=0)] * 80)
    ev.add([SimpleNamespace(items=["new", "old"], rewards=[1.0, 0.0], created_ts=30_000)] * 80)  # 3 half-lives on
    assert ev.clicked["old"][0] == np.float64(10.0) and ev.clicked["new"][0] == 80.0
    late = SimpleNamespace(items=["late"], rewards=[0.0], created_ts=20_000)  # arrives out of order: 1 half-life old
    ev.add([late])
    assert ev.shown["late"][0] == 0.5
    ev.add([SimpleNamespace(items=["quiet"], rewards=[0.0], created_ts=330_000)])  # 30 half-lives: all faded away
    assert set(ev.shown) == {"quiet"}
    monkeypatch.setattr(ItemEvidence, "MAX_ITEMS", 50)
    ev.add([SimpleNamespace(items=[f"x{k}", "kept"], rewards=[0.0, 1.0], created_ts=330_000) for k in range(200)])
    assert len(ev.shown) == 50 and "kept" in ev.shown


def spearman(a, b) -> float:
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    return float(np.corrcoef(rank(a), rank(b))[0, 1])
