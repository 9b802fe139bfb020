"""Both models through the shared interface: learning, determinism, early stopping, checkpoint and resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from streamrec.trainer.dcn import DCNRanker
from streamrec.trainer.fit import FitConfig, fit
from streamrec.trainer.sasrec import SASRec
from streamrec.trainer.train import TrainConfig, train_ranker, train_sequence_model

TINY = TrainConfig.tiny()


def seq_data(inter):
    model = SASRec(**TINY.seq)
    catalog = inter.catalog()
    model.set_catalog(catalog, [inter.category(i) for i in catalog])
    seqs = [s for s in inter.sequences().values() if len(s) >= 2]
    data = model.training_data(seqs, inter.categories, {i: j for j, i in enumerate(catalog)})
    return model, data


def ranker_data(n=2000, seed=0):
    """Labels from a user x item interaction only an id-aware, non-linear model can learn."""
    rng = np.random.default_rng(seed)
    model = DCNRanker(**TINY.ranker)
    users = [f"u{i}" for i in rng.integers(0, 50, n)]
    items = [f"i{i}" for i in rng.integers(0, 50, n)]
    label = np.array([(int(u[1:]) + int(i[1:])) % 2 == 0
                      for u, i in zip(users, items)], dtype=np.float32)
    dense = rng.normal(size=(n, model.config["n_dense"])).astype(np.float32)
    return model, {"sparse": model.sparse_ids(users, items, ["c"] * n), "dense": dense, "label": label}


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("make", [seq_data, ranker_data], ids=["sasrec", "dcn"])
def test_training_loss_goes_down(make, small_interactions):
    model, data = make(small_interactions) if make is seq_data else make()
    result = fit(model, data, None, FitConfig(epochs=6, batch_size=32, lr=5e-3, patience=10, progress=False))
    assert result.train_loss[-1] < 0.8 * result.train_loss[0]
    assert result.samples_per_s > 0


def test_same_seed_same_weights_other_seed_other_weights(small_interactions):
    cfg = FitConfig(epochs=2, batch_size=32, progress=False, seed=3)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        model, data = seq_data(small_interactions)
        fit(model, data, None, replace(cfg, seed=seed))
        runs.append(weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_early_stopping_restores_the_best_epoch():
    model, data = ranker_data(600)
    _, val = ranker_data(300, seed=1)
    val["label"] = 1 - val["label"]  # validation that gets worse as training improves
    result = fit(model, data, val, FitConfig(epochs=30, batch_size=32, lr=1e-2, patience=2, progress=False))
    assert result.stopped_early and len(result.val_loss) <= result.best_epoch + 3 < 30
    assert model.eval_loss(val) == pytest.approx(result.best_val, rel=1e-5)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path, small_interactions):
    cfg = FitConfig(epochs=4, batch_size=32, progress=False, patience=10, seed=1)
    torch.manual_seed(1)
    full, data = seq_data(small_interactions)
    fit(full, data, None, cfg)

    torch.manual_seed(1)
    part, _ = seq_data(small_interactions)
    ckpt = str(tmp_path / "seq.pt")
    fit(part, data, None, replace(cfg, epochs=2, checkpoint=ckpt))
    torch.manual_seed(99)  # a fresh process: nothing but the checkpoint carries state
    resumed, _ = seq_data(small_interactions)
    result = fit(resumed, data, None, replace(cfg, checkpoint=ckpt, resume=True))
    assert len(result.train_loss) == 4
    for k, v in weights(full).items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k


def test_empty_and_single_item_histories_give_finite_user_vectors(small_interactions):
    model, _ = seq_data(small_interactions)
    model.eval()
    items, cats = model.encode_sequences([[], ["i1"], ["never-seen"] * 100], small_interactions.categories)
    with torch.no_grad():
        out = model(torch.from_numpy(items), torch.from_numpy(cats))
    assert out.shape == (3, TINY.seq["dim"]) and torch.isfinite(out).all()


def test_unseen_items_and_users_are_scored_without_retraining(trained):
    sparse = trained.dcn.sparse_ids(["brand-new-user"], ["brand-new-item"], ["c1"])
    dense = torch.zeros(1, trained.dcn.config["n_dense"])
    with torch.no_grad():
        p = trained.dcn(torch.from_numpy(sparse), dense)
    assert 0.0 < float(p) < 1.0


def test_trainers_refuse_data_without_signal(small_interactions):
    few = small_interactions.take(np.zeros(len(small_interactions), dtype=bool))
    with pytest.raises(ValueError, match="no user has 3 or more"):
        train_sequence_model(few, TINY)
    views_only = small_interactions.take(small_interactions.kind == "view")
    model, *_ = train_sequence_model(views_only, TINY)
    # Without impressions the ranker samples negatives by popularity: still two labels.
    ranker, (train, _, _), _ = train_ranker(views_only, model, TINY)
    assert 0.1 < train.label.mean() < 0.5
