"""The sequence model's best epoch is chosen by validation NDCG@10 (as the test is scored) by default."""

from __future__ import annotations

from dataclasses import replace

from streamrec.trainer.fit import FitConfig, fit
from streamrec.trainer.train import TrainConfig, train_sequence_model, validation_ndcg


def test_a_validation_score_picks_the_best_epoch_and_stops_early(small_interactions):
    cfg = TrainConfig.tiny(epochs=1)
    model, split, _, catalog = train_sequence_model(small_interactions, cfg)
    train = model.training_data([s for s in split.train if len(s) >= 2], small_interactions.categories,
                                {item: j for j, item in enumerate(catalog)})
    scores = iter([0.3, 0.5, 0.4, 0.2, 0.1, 0.0])  # best at the second epoch
    result = fit(model, train, None, FitConfig(epochs=6, batch_size=16, patience=2, progress=False),
                 val_score=lambda m: next(scores))
    assert result.val_score == [0.3, 0.5, 0.4, 0.2]
    assert (result.best_epoch, result.best_val, result.stopped_early) == (1, -0.5, True)


def test_the_default_selection_records_the_validation_ndcg_of_every_epoch(small_interactions):
    cfg = TrainConfig.tiny(epochs=3)
    model, split, result, catalog = train_sequence_model(small_interactions, cfg)
    assert len(result.val_score) == len(result.val_loss) == 3
    assert max(result.val_score) == -result.best_val == result.val_score[result.best_epoch]
    # The restored weights are the best epoch's.
    ndcg = validation_ndcg(model, split.val_history, split.val_target, catalog, small_interactions.categories)
    assert abs(ndcg - result.val_score[result.best_epoch]) < 1e-9
    by_loss = train_sequence_model(small_interactions, replace(cfg, seq_select="loss"))[2]
    assert by_loss.val_score == []


def test_a_refit_learns_the_validation_items_after_the_best_epoch(small_interactions):
    """`seq_refit_epochs`: after selection, training that includes each user's validation item, so the model
    puts it higher than the selected weights did; its time counts as training time."""
    import numpy as np

    from streamrec.trainer.train import sasrec_scorer

    cfg = TrainConfig.tiny(epochs=2)
    selected, split, plain, catalog = train_sequence_model(small_interactions, cfg)
    refitted, _, result, _ = train_sequence_model(small_interactions, replace(cfg, seq_refit_epochs=3))
    assert len(result.epoch_seconds) == len(plain.epoch_seconds) + 3
    assert result.seconds > plain.seconds
    index = {item: j for j, item in enumerate(catalog)}
    rows = np.arange(len(split.val_target))
    targets = [index[t] for t in split.val_target]

    def target_score(model) -> float:
        scores = sasrec_scorer(model, small_interactions.categories)(split.val_history)
        return float(np.mean(scores[rows, targets] - scores.mean(axis=1)))
    assert target_score(refitted) > target_score(selected)
