"""Offline training of both models on an interaction history, with evaluation against baselines.

>>> from streamrec.trainer.synth import SynthConfig, synthesize
>>> data = synthesize(SynthConfig(users=40, items=30, sessions_per_user=2, seed=3))
>>> inter = Interactions.from_rows(data.events, {r["item_id"]: r["category"] for r in data.items})
>>> cfg = TrainConfig.tiny(epochs=1)
>>> out = train_all(inter, cfg)
>>> sorted(out.seq_metrics), sorted(out.ranker_metrics)
(['co-visitation', 'popularity', 'sasrec'], ['dcn-v2', 'logistic regression'])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Sequence

import numpy as np
import torch

from streamrec.hashing import buckets_for
from streamrec.trainer.data import Interactions
from streamrec.trainer.dcn import DCNRanker
from streamrec.trainer.evaluate import (CoVisitation, LeaveOneOut, LogisticRegression, Popularity, auc,
                                        evaluate_scorer, logloss, ranking_metrics, target_ranks)
from streamrec.trainer.features import RankerSamples, add_content_sims, add_seq_scores, build_samples
from streamrec.trainer.fit import FitConfig, FitResult, fit
from streamrec.trainer.sasrec import SASRec


@dataclass
class TrainConfig:
    """Everything that shapes a training run (model sizes, optimisation, sampling, seed)."""

    seq: dict = field(default_factory=dict)
    """Keyword arguments of `SASRec`; ``item_buckets="auto"`` sizes the item table from the training catalog
    (`streamrec.hashing.buckets_for`). Not the default: on Amazon Toys it gained 0.0007 NDCG@10 on one seed
    (within noise) for a table 7.6 times larger in both exported graphs."""
    ranker: dict = field(default_factory=dict)
    """Keyword arguments of `DCNRanker`."""
    seq_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=30, batch_size=32, lr=2e-3, patience=5))
    ranker_fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=15, batch_size=256, lr=2e-3,
                                                                     patience=2))
    seq_refit_epochs: int = 0
    """After the best epoch is chosen, epochs of training that also learn each user's validation item (the
    newest transition before the test item, which is never trained on), at a quarter of the learning rate."""
    seq_select: str = "ndcg"
    """What picks the sequence model's best epoch: ``ndcg`` (validation NDCG@10, full ranking, as the
    test is scored) or ``loss`` (validation cross-entropy)."""
    negatives: int = 4
    """Negatives per positive for the ranker when the history has no impressions."""
    seed: int = 0

    @classmethod
    def tiny(cls, epochs: int = 1, **kw) -> "TrainConfig":
        """Small tables and few epochs: for tests and demos on small data."""
        return cls(seq=dict(item_buckets=4096, cat_buckets=256, dim=32, max_len=20),
                   ranker=dict(user_buckets=4096, item_buckets=4096, cat_buckets=256, dim=8),
                   seq_fit=FitConfig(epochs=epochs, batch_size=16, lr=3e-3, patience=5, progress=False),
                   ranker_fit=FitConfig(epochs=epochs, batch_size=256, lr=3e-3, patience=2, progress=False), **kw)

    def with_seed(self, seed: int) -> "TrainConfig":
        """The same config with every seed set to ``seed``."""
        return replace(self, seed=seed, seq_fit=replace(self.seq_fit, seed=seed),
                       ranker_fit=replace(self.ranker_fit, seed=seed))

    def on_device(self, device: str) -> "TrainConfig":
        """The same config training both models on ``device`` (cpu, cuda or auto; see `FitConfig.device`)."""
        return replace(self, seq_fit=replace(self.seq_fit, device=device),
                       ranker_fit=replace(self.ranker_fit, device=device))


@dataclass
class Trained:
    """Models, their training histories and the evaluation of both against baselines."""

    sasrec: SASRec
    dcn: DCNRanker | None
    """None when the ranker was left out (``train_all(ranker=False)``)."""
    catalog: list[str]
    categories: dict[str, str]
    seq_fit: FitResult
    ranker_fit: FitResult
    seq_metrics: dict[str, dict[str, float]]
    ranker_metrics: dict[str, dict[str, float]]
    split: LeaveOneOut
    top10: np.ndarray
    """Each test user's top-10 catalog indices from the sequence model."""
    window: dict
    kafka_offsets: dict | None = None


def train_sequence_model(inter: Interactions, cfg: TrainConfig) -> tuple[SASRec, LeaveOneOut, FitResult, list[str]]:
    """Fit SASRec on all but each user's last two items; the second-last drives early stopping."""
    torch.manual_seed(cfg.seed)
    split = LeaveOneOut.split(inter.sequences())
    if not split.users:
        raise ValueError("no user has 3 or more positive interactions: nothing to train or evaluate on")
    catalog = inter.catalog()
    index = {item: j for j, item in enumerate(catalog)}
    seq = dict(cfg.seq)
    if seq.get("item_buckets") == "auto":
        seq["item_buckets"] = buckets_for(catalog)
    model = SASRec(**seq)
    model.set_catalog(catalog, [inter.category(i) for i in catalog])
    train = model.training_data([s for s in split.train if len(s) >= 2], inter.categories, index, all_windows=True)
    val = model.training_data([h + [t] for h, t in zip(split.val_history, split.val_target)], inter.categories, index)
    val["target"][:, :-1] = -100  # validation scores only the held-out item
    score = None
    if cfg.seq_select == "ndcg":
        score = partial(validation_ndcg, histories=split.val_history, targets=split.val_target, catalog=catalog,
                        categories=inter.categories)
    result = fit(model, train, val, cfg.seq_fit, label="sasrec", val_score=score)
    if cfg.seq_refit_epochs:
        _refit_with_validation_items(model, split, inter, index, cfg, result)
    return model, split, result, catalog


def _refit_with_validation_items(model: SASRec, split: LeaveOneOut, inter: Interactions, index: dict[str, int],
                                 cfg: TrainConfig, result: FitResult) -> None:
    """Train on every transition before the test items, the validation items included: in a time-ordered
    split they are the newest behaviour the model may learn from. Its time counts as training time."""
    histories = [h + [t] for h, t in zip(split.val_history, split.val_target)]
    histories += split.train[len(split.users):]  # the short sequences, already whole
    full = model.training_data([s for s in histories if len(s) >= 2], inter.categories, index, all_windows=True)
    refit_cfg = replace(cfg.seq_fit, epochs=cfg.seq_refit_epochs, lr=cfg.seq_fit.lr / 4, checkpoint=None,
                        resume=False, patience=cfg.seq_refit_epochs)
    refit = fit(model, full, None, refit_cfg, label="sasrec refit")
    result.seconds += refit.seconds
    result.epoch_seconds += refit.epoch_seconds
    result.samples += refit.samples


def validation_ndcg(model: SASRec, histories: list[list[str]], targets: list[str], catalog: list[str],
                    categories: dict[str, str], batch: int = 1024) -> float:
    """NDCG@10 of ``model`` on held-out items, ranked as the test ranks them (full catalog, history masked)."""
    model.eval()
    score, index = sasrec_scorer(model, categories), {item: j for j, item in enumerate(catalog)}
    ranks = [target_ranks(score(histories[s:s + batch]), histories[s:s + batch], targets[s:s + batch], index)
             for s in range(0, len(targets), batch)]
    return ranking_metrics(np.concatenate(ranks), 10)["NDCG@10"] if ranks else 0.0


def sasrec_scorer(model: SASRec, categories: dict[str, str]):
    """A `ScoreFn` scoring the training catalog with the model."""
    item_vecs = model.catalog_vectors().detach()

    @torch.no_grad()
    def score(histories: list[list[str]]) -> np.ndarray:
        items, cats = model.encode_sequences(histories, categories)
        return (model(torch.from_numpy(items), torch.from_numpy(cats)) @ item_vecs.T).numpy()
    return score


def ranker_samples(inter: Interactions, sasrec: SASRec, cfg: TrainConfig, split: LeaveOneOut | None = None,
                   catalog: Sequence[str] = (), settings=None) -> RankerSamples:
    """The ranker's labelled candidates: the history's own impressions when it has them, else each chosen item
    against what the scorer would have proposed instead (`streamrec.trainer.replayed_samples`), never
    from ``split``'s held-out items."""
    if np.any(inter.kind == "impression"):
        return build_samples(inter, negatives=cfg.negatives, max_prefix=sasrec.max_len, seed=cfg.seed)
    from streamrec.settings import Settings
    from streamrec.trainer.replayed_samples import SampleConfig, replayed_samples

    split = split or LeaveOneOut.split(inter.sequences())  # the sequence model's split: same held-out items
    lengths = {u: len(h) + 1 for u, h in zip(split.users, split.test_history)}
    held_out = {(u, n - k) for u, n in lengths.items() for k in (1, 2)}
    return replayed_samples(inter, settings or Settings.from_env(), held_out, sasrec, catalog or inter.catalog(),
                            SampleConfig(seed=cfg.seed))


def train_ranker(inter: Interactions, sasrec: SASRec, cfg: TrainConfig,
                 content_vectors: dict[str, np.ndarray] | None = None, split: LeaveOneOut | None = None,
                 catalog: Sequence[str] = (), settings=None) -> tuple[DCNRanker, tuple, FitResult]:
    """Fit DCN-V2 on a time split of labelled candidates (`ranker_samples`); returns the model,
    (train, val, test), history.

    ``content_vectors`` (item -> content vector, `streamrec.trainer.content`) fill the ``content_sim``
    feature; without them it is 0 and the scorer feeds 0 too."""
    samples = ranker_samples(inter, sasrec, cfg, split, catalog, settings)
    if len(samples) < 10 or samples.label.min() == samples.label.max():
        raise ValueError(f"only {len(samples)} ranker samples with one label value; the ranker needs both "
                         "clicked and not-clicked candidates")
    add_seq_scores(samples, sasrec, inter.categories)
    if content_vectors:
        add_content_sims(samples, content_vectors)
    parts = samples.time_split()
    torch.manual_seed(cfg.seed)
    model = DCNRanker(**cfg.ranker)
    model.set_dense_stats(parts[0].dense)
    train, val = (_ranker_arrays(model, p) for p in parts[:2])
    result = fit(model, train, val, cfg.ranker_fit, label="dcn-v2")
    return model, parts, result


def _ranker_arrays(model: DCNRanker, s: RankerSamples) -> dict[str, np.ndarray]:
    return {"sparse": model.sparse_ids(s.users, s.items, s.cats), "dense": s.dense, "label": s.label}


@torch.no_grad()
def ranker_predict(model: DCNRanker, s: RankerSamples) -> np.ndarray:
    """Click probabilities for samples."""
    arrays = _ranker_arrays(model, s)
    return model(torch.from_numpy(arrays["sparse"]), torch.from_numpy(arrays["dense"])).numpy()


def _train_and_compare_ranker(inter: Interactions, sasrec: SASRec, cfg: TrainConfig, content_vectors,
                              split: LeaveOneOut, catalog: list[str], settings) -> tuple[DCNRanker, FitResult, dict]:
    """The ranker, its history, and its AUC and log loss against logistic regression on the test part."""
    dcn, (train, _, test), ranker_result = train_ranker(inter, sasrec, cfg, content_vectors, split, catalog, settings)
    lr = LogisticRegression().fit(train.dense, train.label)
    p_dcn, p_lr = ranker_predict(dcn, test), lr.predict(test.dense)
    ranker_metrics = {"dcn-v2": {"AUC": auc(test.label, p_dcn), "logloss": logloss(test.label, p_dcn)},
                      "logistic regression": {"AUC": auc(test.label, p_lr), "logloss": logloss(test.label, p_lr)}}
    return dcn, ranker_result, ranker_metrics


def train_all(inter: Interactions, cfg: TrainConfig, content_vectors: dict[str, np.ndarray] | None = None,
              settings=None, ranker: bool = True) -> Trained:
    """Train both models and evaluate them side by side with the baselines (``settings``: the worker's and
    scorer's, which shape the ranker's samples; default: from the environment). ``ranker=False`` stops
    after the sequence model: its figures do not depend on the ranker, which is trained after it."""
    sasrec, split, seq_result, catalog = train_sequence_model(inter, cfg)
    args = (split.test_history, split.test_target, catalog)
    seq_metrics, top10 = {}, None
    seq_metrics["sasrec"], top10 = evaluate_scorer(sasrec_scorer(sasrec, inter.categories), *args)
    seq_metrics["popularity"], _ = evaluate_scorer(Popularity(split.train, catalog), *args)
    seq_metrics["co-visitation"], _ = evaluate_scorer(CoVisitation(split.train, catalog), *args)
    dcn, ranker_result, ranker_metrics = None, FitResult(), {}
    if ranker:
        dcn, ranker_result, ranker_metrics = _train_and_compare_ranker(inter, sasrec, cfg, content_vectors, split,
                                                                       catalog, settings)
    return Trained(sasrec=sasrec, dcn=dcn, catalog=catalog, categories=inter.categories, seq_fit=seq_result,
                   ranker_fit=ranker_result, seq_metrics=seq_metrics, ranker_metrics=ranker_metrics, split=split,
                   top10=top10, window=inter.window(),
                   kafka_offsets=inter.kafka_offsets)
