"""The sequence model's embedding tables train with sparse gradients (SparseAdam), so a table sized for
the catalog (`streamrec.hashing.buckets_for`) costs only the rows a step touches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from streamrec.hashing import IdHasher, buckets_for
from streamrec.trainer.fit import SparseAwareAdam
from streamrec.trainer.sasrec import SASRec
from streamrec.trainer.train import TrainConfig, train_sequence_model


def _model_and_batch(buckets: int = 5_000):
    torch.manual_seed(0)
    items = [f"i{k}" for k in range(40)]
    model = SASRec(item_buckets=buckets, cat_buckets=16, dim=16, layers=1, heads=1, max_len=8, dropout=0.0)
    model.set_catalog(items, [""] * len(items))
    # A planted chain: each item is followed by the next one.
    seqs = [[items[(s + k) % 40] for k in range(9)] for s in range(40)]
    data = model.training_data(seqs, {}, {item: k for k, item in enumerate(items)})
    return model, {k: torch.from_numpy(v) for k, v in data.items()}


def test_sparse_steps_reduce_the_loss_and_leave_untouched_rows_alone():
    model, batch = _model_and_batch()
    opt = SparseAwareAdam(model, lr=1e-2)
    assert len(opt.parts) == 2  # AdamW for the dense layers, SparseAdam for the tables
    before = model.items.weight.detach().clone()
    losses = [model.fit_batch(batch, opt) for _ in range(30)]
    assert model.items.weight.grad.is_sparse
    assert losses[-1] < 0.5 * losses[0]
    used = np.unique(model.catalog_items.numpy())
    untouched = np.setdiff1d(np.arange(model.items.num_embeddings), used)
    assert torch.equal(model.items.weight[untouched], before[untouched])


def test_optimizer_state_round_trips_for_a_resumed_run():
    model, batch = _model_and_batch()
    opt = SparseAwareAdam(model, lr=1e-2)
    model.fit_batch(batch, opt)
    again = SparseAwareAdam(model, lr=1e-2)
    again.load_state_dict(opt.state_dict())
    assert again.state_dict()["parts"][1]["state"].keys() == opt.state_dict()["parts"][1]["state"].keys()


def test_the_item_table_is_sized_from_the_training_catalog_when_asked(small_interactions):
    tiny = TrainConfig.tiny(epochs=1)
    sized = replace(tiny, seq={**tiny.seq, "item_buckets": "auto"})
    model, _, _, catalog = train_sequence_model(small_interactions, sized)
    assert model.items.num_embeddings == buckets_for(catalog) == model.item_hasher.buckets
    assert IdHasher(model.item_hasher.buckets)(catalog).tolist() == model.catalog_items.tolist()
    fixed, *_ = train_sequence_model(small_interactions, tiny)
    assert fixed.items.num_embeddings == tiny.seq["item_buckets"]
