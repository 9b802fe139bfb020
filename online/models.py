"""The online trainer's models: fine-tuning on joined slates, gating, export and publication.

Each model has a *live* copy (the version the scorer serves, loaded from the
registry's ``weights.pt``) and a *candidate* that is fine-tuned on fresh
training slates:

- the ranker (DCN-V2) with a propensity-weighted binary cross-entropy:
  label = the item got a reward, weight = ``min(1 / propensity, cap)`` times
  the reward (a purchase counts more than a click), normalised per batch;
- the sequence model with the top-K off-policy corrected REINFORCE loss
  (`streamrec.online.offpolicy.reinforce_topk_loss`), mixed with the
  supervised next-item loss (share ``rl_mix``) to keep it stable.

A candidate is gated against the live copy on held-out slates
(`streamrec.online.gate`); only an accepted one is exported (parity-checked),
published with its weights and announced, and becomes the new live copy.

The ranker's dense features are those the scorer computes, read from Redis
with the scorer's own code (`streamrec.serving.features`) when the slate
arrives; nothing here re-implements a feature formula.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from streamrec.registry import Registry
from streamrec.settings import Settings
from streamrec.online import metrics as m
from streamrec.online.attraction import MIN_CLICKS, attraction_offsets, calibrate, write_offsets
from streamrec.online.gate import Gate, GateConfig, GateDecision
from streamrec.online.joiner import Slate
from streamrec.online.offpolicy import reinforce_topk_loss
from streamrec.trainer.fit import SparseAwareAdam
from streamrec.trainer.weights import WEIGHTS, load_weights, save_weights

log = logging.getLogger(__name__)


_DEFAULTS = Settings()


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the settings' (`STREAMREC_LEARNER_*`), so a bare config trains like the learner."""

    lr: float = _DEFAULTS.learner_lr
    seq_lr: float = _DEFAULTS.learner_seq_lr
    embedding_lr: float = _DEFAULTS.learner_embedding_lr
    """SGD step per sample of the ranker's id embeddings (`DenseAdamSparseSGD`; 0: left as they are)."""
    rl_mix: float = _DEFAULTS.learner_rl_mix
    """Share of the REINFORCE loss in the sequence model's loss (the rest: next-item loss)."""
    weight_cap: float = _DEFAULTS.learner_weight_cap
    topk: int = 10
    batch: int = 64
    """Slates per micro-batch."""


class DenseAdamSparseSGD:
    """Adam for the ranker's dense layers, plain SGD with a per-sample rate for its id embeddings.

    Adam scales every coordinate's step to about ``lr`` whatever the gradient, so an embedding row seen a
    few dozen times takes full-size steps wherever its few noisy gradients point: measured in
    `streamrec bench online`, the learned per-item biases wandered (std 2.1) with no relation to the items'
    hidden appeal (correlation 0.07). SGD moves a row in proportion to its summed errors, which settle where
    the row's predicted click rate meets the observed one. ``rows`` (set per batch) turns the mean loss's
    gradient back into per-sample units, so ``embedding_lr`` does not depend on the batch size.
    """

    def __init__(self, model: torch.nn.Module, lr: float, embedding_lr: float):
        bias = getattr(model, "item_bias", None)
        # The per-item bias is not trained by gradient: `streamrec.online.attraction` sets it.
        owned = {id(bias.weight)} if bias is not None else set()
        sparse = [mod.weight for mod in model.modules()
                  if isinstance(mod, torch.nn.Embedding) and id(mod.weight) not in owned]
        ids = {id(p) for p in sparse} | owned
        self.dense = torch.optim.Adam([p for p in model.parameters() if id(p) not in ids], lr=lr)
        self.sparse = sparse
        self.embedding_lr = embedding_lr
        self.rows = 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        for p in self.sparse:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.dense.step()
        if not self.embedding_lr:  # the default: id embeddings stay as trained
            return
        for p in self.sparse:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.embedding_lr * self.rows)


class OnlineModels:
    """Live and candidate copies of the ranker and the sequence model."""

    def __init__(self, settings, cfg: TrainConfig, gate: GateConfig, names=("sasrec", "ranker")):
        self.settings = settings
        self.cfg = cfg
        self.gate = Gate(gate)
        self.seq_name, self.ranker_name = names
        self.registry = Registry(settings.registry_uri)
        self.live: dict[str, torch.nn.Module] = {}
        self.cand: dict[str, torch.nn.Module] = {}
        self.opt: dict[str, torch.optim.Optimizer] = {}
        self.version: dict[str, str] = {}
        self.catalog: list[str] = []
        self.categories: dict[str, str] = {}
        self.examination = np.ones(1)
        """Estimated chance that a user looks at each rank (position bias), see `estimate_examination`."""
        self.refreshed: torch.nn.Module | None = None
        """The live ranker with the fresh attraction offsets (`set_attraction`): what the gate tries when the
        fine-tuned candidate is rejected, so a network step that did not pay does not hold back the offsets."""

    # -- loading -------------------------------------------------------------------- #
    def load(self) -> list[str]:
        """Load the registry's current version of each model that has weights; returns the names loaded."""
        loaded = []
        for name in (self.seq_name, self.ranker_name):
            if name not in self.registry.models() or self.registry.current(name) is None:
                continue
            version = self.registry.current(name)
            meta = self.registry.meta(name, version)
            if WEIGHTS not in meta.files:
                log.warning("%s/%s has no %s (published before the online trainer existed); it will not be "
                            "fine-tuned: republish it with `streamrec train`", name, version, WEIGHTS)
                continue
            where = self.registry.location(name, version)
            model = load_weights(_read(f"{where}/{WEIGHTS}"))
            if meta.kind == "sasrec":
                self.catalog = [str(x) for x in np.load(_open(f"{where}/item_ids.npy"), allow_pickle=False)]
            self._set_live(name, model, version)
            loaded.append(name)
        return loaded

    def _set_live(self, name: str, model, version: str) -> None:
        model.eval()
        self.live[name] = model
        self.version[name] = version
        self.cand[name] = copy.deepcopy(model)
        self.opt[name] = self._optimizer(name, self.cand[name])

    def _optimizer(self, name: str, model):
        if name == self.seq_name:
            return SparseAwareAdam(model, lr=self.cfg.seq_lr)  # its item table has sparse gradients
        return DenseAdamSparseSGD(model, self.cfg.lr, self.cfg.embedding_lr)

    def set_attraction(self, slates: list[Slate], offsets: dict[str, float] | None = None) -> int:
        """Write the items' attraction (``offsets``, by default estimated from ``slates``) into the candidate
        ranker's per-item bias, at the scale against the ranker's own logit that ``slates`` support
        (`calibrate_ranker`); the same into a copy of the live ranker (`refreshed`)."""
        model = self.cand.get(self.ranker_name)
        if model is None or getattr(model, "item_bias", None) is None:
            return 0
        if offsets is None:
            offsets = attraction_offsets(slates, self.examination)
        self.refreshed = copy.deepcopy(self.live[self.ranker_name])
        for target in (self.refreshed, model):  # the candidate last: its fitted scales stay on the gauges
            scale = self.calibrate_ranker(target, slates, offsets) if offsets else 1.0
            n = write_offsets(target, {item: scale * o for item, o in offsets.items()})
        m.attraction_items.set(n)
        return n

    @torch.no_grad()
    def calibrate_ranker(self, model, slates: list[Slate], offsets: dict[str, float]) -> float:
        """Fit how much the attraction offsets and the ranker's own logit count (`attraction.calibrate`) on
        ``slates``; rescale the ranker's output layer by the fitted logit scale and return the offsets' scale.

        Without it the offsets were simply added to a logit whose scale came from elsewhere (at first, the
        sequence model's standardised score). A fit that is not usable (too few clicks, or a scale that is
        not positive) leaves the ranker as it is and adds the offsets unscaled.
        """
        f = self.flat(slates)
        if not f or (f["reward"] > 0).sum() < MIN_CLICKS:
            return 1.0
        model.eval()
        sparse = torch.from_numpy(model.sparse_ids(f["users"], f["items"], f["cats"]))
        own = model.logit(sparse, torch.from_numpy(f["dense"])) - (
            model.item_bias(sparse[:, 2]) + model.item_bias(sparse[:, 3])).squeeze(-1)
        offset = np.array([offsets.get(i, 0.0) for i in f["items"]])
        exam = self.examination[np.minimum(f["position"], len(self.examination) - 1)]
        weight = np.minimum(1.0 / np.maximum(f["propensity"], 1e-6), self.cfg.weight_cap)
        intercept, logit_scale, offset_scale = calibrate(own.numpy().astype(np.float64), offset, f["reward"] > 0,
                                                         exam, weight)
        if not (np.isfinite([intercept, logit_scale, offset_scale]).all() and logit_scale > 0 and offset_scale > 0):
            log.info("ranker calibration not used (intercept %.3g, logit scale %.3g, offset scale %.3g)",
                     intercept, logit_scale, offset_scale)
            return 1.0
        # logit' = intercept + scale * logit: the output layer is linear, so scale it and move its bias.
        model.head.weight.mul_(logit_scale)
        model.head.bias.mul_(logit_scale).add_(intercept)
        m.ranker_calibration.labels("logit_scale").set(logit_scale)
        m.ranker_calibration.labels("offset_scale").set(offset_scale)
        return offset_scale

    def learn_categories(self, slates: list[Slate]) -> None:
        for s in slates:
            for item, cat in zip(s.items, s.features.get("cats", ())):
                self.categories[item] = cat

    def estimate_examination(self, slates: list[Slate]) -> np.ndarray:
        """Position bias from the logs: reward rate per rank relative to rank 0, non-increasing, floored.

        Clicks at low ranks are rarer partly because fewer users look there;
        weighting a rewarded item by 1 / examination(rank) counts what it
        would have earned at the top (inverse propensity of being examined).
        The estimate also contains the live ranker's own ordering (better
        items on top), so it over-corrects a little: the cap bounds it.
        """
        width = max((len(s.items) for s in slates), default=0)
        if width == 0:
            return self.examination
        hits, shown = np.zeros(width), np.zeros(width)
        for s in slates:
            n = len(s.items)
            shown[:n] += 1
            hits[:n] += np.asarray(s.rewards) > 0
        rate = hits / np.maximum(shown, 1)
        if rate[0] <= 0 or hits.sum() < 50:
            return self.examination
        exam = np.minimum.accumulate(np.clip(rate / rate[0], 1.0 / self.cfg.weight_cap, 1.0))
        self.examination = exam
        return exam

    # -- arrays of slates ---------------------------------------------------------------- #
    @staticmethod
    def flat(slates: list[Slate]) -> dict[str, np.ndarray]:
        """Shown items of ``slates`` as flat arrays (only slates with ranker features)."""
        slates = [s for s in slates if s.features.get("dense") is not None and s.items]
        if not slates:
            return {}
        n = [len(s.items) for s in slates]
        return {"slate_of": np.repeat(np.arange(len(slates)), n),
                "users": [s.user_id for s in slates for _ in s.items],
                "items": [i for s in slates for i in s.items],
                "cats": [c for s in slates for c in s.features.get("cats", [""] * len(s.items))],
                "dense": np.array([row for s in slates for row in s.features["dense"]], dtype=np.float32),
                "reward": np.array([r for s in slates for r in s.rewards], dtype=np.float32),
                "propensity": np.array([p for s in slates for p in s.propensities], dtype=np.float32),
                "position": np.concatenate([np.arange(k) for k in n]),
                # the sequence model's input: the user's earlier items, then the session's
                "session": [s.features.get("history", []) + s.features.get("session", []) for s in slates]}

    # -- scoring (for the gate) ------------------------------------------------------------ #
    @torch.no_grad()
    def ranker_scores(self, model, f: dict) -> np.ndarray:
        model.eval()
        sparse = torch.from_numpy(model.sparse_ids(f["users"], f["items"], f["cats"]))
        return model.logit(sparse, torch.from_numpy(f["dense"])).numpy()

    @torch.no_grad()
    def seq_scores(self, model, f: dict) -> np.ndarray:
        model.eval()
        items, cats = model.encode_sequences(f["session"], self.categories)
        users = model(torch.from_numpy(items), torch.from_numpy(cats))[torch.from_numpy(f["slate_of"])]
        vecs = model.item_vectors(torch.from_numpy(model.item_hasher(f["items"])),
                                  torch.from_numpy(model.cat_hasher.first(f["cats"])))
        return (users * vecs).sum(-1).numpy()

    # -- training ------------------------------------------------------------------------- #
    def train(self, slates: list[Slate], only: str | None = None) -> dict[str, float]:
        """One optimisation step per model (or ``only`` one) on ``slates``; returns the losses."""
        f = self.flat(slates)
        if not f:
            return {}
        losses = {}
        if self.ranker_name in self.cand and only in (None, self.ranker_name):
            losses[self.ranker_name] = self._ranker_step(f)
        if self.seq_name in self.cand and self.catalog and only in (None, self.seq_name):
            loss = self._seq_step(f)
            if loss is not None:
                losses[self.seq_name] = loss
        for name, loss in losses.items():
            m.training_loss.labels(name).set(loss)
            m.train_steps.labels(name).inc()
        return losses

    def _ranker_step(self, f: dict) -> float:
        model = self.cand[self.ranker_name]
        if len(f["dense"]) >= 500:
            self._learn_dense_stats(model, f["dense"])
        reward = f["reward"]
        exam = self.examination[np.minimum(f["position"], len(self.examination) - 1)]
        # Position-based click model: a shown item is clicked when its rank is looked at (examination,
        # estimated from the logs) and it attracts. The rank enters the logit as the fixed offset
        # log(examination), so the ranker learns attraction alone and serves without it. (Weighting clicks by
        # 1 / examination instead gave a click at rank 9 ten times the weight of one at rank 0: measured, the
        # learned per-item biases were mostly that noise, correlation 0.2 with the items' hidden appeal.)
        # The weight keeps the slate's logged propensity (exploration) and the reward size, capped together.
        weight = np.minimum(np.maximum(reward, 1.0) / np.maximum(f["propensity"], 1e-6), self.cfg.weight_cap)
        weight = weight / weight.mean()
        batch = {"sparse": torch.from_numpy(model.sparse_ids(f["users"], f["items"], f["cats"])),
                 "dense": torch.from_numpy(f["dense"]), "label": torch.from_numpy((reward > 0).astype(np.float32)),
                 "weight": torch.from_numpy(weight.astype(np.float32)),
                 "offset": torch.from_numpy(np.log(exam).astype(np.float32))}
        opt = self.opt[self.ranker_name]
        opt.rows = len(weight)
        return model.fit_batch(batch, opt)

    @staticmethod
    def _learn_dense_stats(model, dense: np.ndarray) -> None:
        """Learn the scale of the live features once: all of them for a ranker that never saw data, then each
        feature that had not varied yet as soon as it does (it joins as a fresh input: until then the network
        saw it only as 0, so its weights for it are untrained)."""
        todo = ~model.varied_dense() if model.has_dense_stats() else None
        if todo is None or todo.any():  # a feature still constant here stays at `UNVARIED_STD`
            model.set_dense_stats(dense, only=todo)

    def next_item_data(self, model, sequences: list[list[str]], clicked: list[list[str]] = (),
                       index: dict[str, int] | None = None) -> dict | None:
        """Next-item training data: of each of ``sequences`` only its last item given the ones before (a
        slate's sequence ends with the item the user found by themselves, the view it answers, and the
        slates of one session repeat its earlier steps); of each of ``clicked`` every step. ``index``: the
        catalog's item -> row, when the caller has built it already."""
        if index is None:
            index = {item: i for i, item in enumerate(self.catalog)}
        # Items newer than the model's catalog cannot be softmax targets (they join at the next export).
        organic = [k for k in ([i for i in s if i in index] for s in sequences) if len(k) >= 2]
        seqs = organic + [s for s in clicked if len(s) >= 2]
        if not seqs:
            return None
        data = model.training_data(seqs, self.categories, index)
        data["target"][:len(organic), :-1] = -100
        return {k: torch.from_numpy(v) for k, v in data.items()}

    @torch.no_grad()
    def next_item_loss(self, model, f: dict) -> float | None:
        """The model's cross-entropy of each slate's last sequence item (the gate's `check_next_item`)."""
        data = self.next_item_data(model, f["session"])
        if data is None:
            return None
        model.eval()
        return float(model.loss(data))

    def _seq_step(self, f: dict) -> float | None:
        model = self.cand[self.seq_name]
        index = {item: i for i, item in enumerate(self.catalog)}
        rows = np.array([j for j, (item, r) in enumerate(zip(f["items"], f["reward"])) if r > 0 and item in index],
                        dtype=np.int64)
        sessions = [[i for i in f["session"][f["slate_of"][j]] if i in index] for j in rows]
        # The supervised part: the users' own next items (the pre-training objective on fresh data, which
        # follows their drifting tastes and keeps retrieval from drifting towards the shown items only),
        # and the clicked items after the sequence they were clicked in.
        sup_data = self.next_item_data(model, f["session"], [s + [f["items"][j]] for s, j in zip(sessions, rows)],
                                       index)
        if sup_data is None:
            return None
        model.train()
        opt = self.opt[self.seq_name]
        opt.zero_grad(set_to_none=True)
        sup = model.loss(sup_data)
        rl = torch.zeros(())
        if len(rows):
            items, cats = model.encode_sequences(sessions, self.categories)
            users = model(torch.from_numpy(items), torch.from_numpy(cats))
            logits = users @ model.catalog_vectors().T
            rl = reinforce_topk_loss(logits, torch.tensor([index[f["items"][j]] for j in rows]),
                                     torch.from_numpy(f["reward"][rows]),
                                     torch.from_numpy(np.clip(f["propensity"][rows], 1e-3, 1.0)), self.cfg.topk,
                                     self.cfg.weight_cap)
        loss = self.cfg.rl_mix * rl + (1.0 - self.cfg.rl_mix) * sup
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return float(loss.detach())

    # -- gate and publish -------------------------------------------------------------------- #
    def gate_models(self, holdout: list[Slate]) -> dict[str, GateDecision]:
        """Decide for each candidate on the held-out slates (nothing is published here)."""
        f = self.flat(holdout)
        out = {}
        exam_weight = None
        if f and len(self.examination) > 1:  # position bias estimated: judge what would be clicked if seen
            exam_weight = 1.0 / self.examination[np.minimum(f["position"], len(self.examination) - 1)]
        for name in self.cand:
            if not f:
                out[name] = GateDecision(False, "no held-out slates with features")
                continue
            score = self.ranker_scores if name == self.ranker_name else self.seq_scores
            live_scores = score(self.live[name], f)  # scored once: the fallback below compares with it too
            d = self.gate.decide(f["slate_of"], f["reward"], f["propensity"], live_scores,
                                 score(self.cand[name], f), exam_weight)
            if name == self.ranker_name and not d.accepted and self.refreshed is not None:
                fresh = self.gate.decide(f["slate_of"], f["reward"], f["propensity"], live_scores,
                                         score(self.refreshed, f), exam_weight)
                if fresh.accepted:  # publish the live network with the fresh offsets; fine-tune on from there
                    fresh.reason = f"not worse as the live network with fresh attraction (fine-tuned: {d.reason})"
                    self.cand[name], d = self.refreshed, fresh
                    self.opt[name] = self._optimizer(name, self.cand[name])
                    m.gate_fallbacks.inc()
            if name == self.ranker_name:
                self.refreshed = None
            if name == self.seq_name:
                live_loss, cand_loss = self.next_item_loss(self.live[name], f), self.next_item_loss(self.cand[name], f)
                if live_loss is not None and cand_loss is not None:
                    d = self.gate.check_next_item(d, live_loss, cand_loss)
            out[name] = d
            m.gate_decisions.labels(name, "accepted" if d.accepted else "rejected").inc()
            for policy, metrics in (("live", d.live), ("candidate", d.candidate)):
                for k, v in metrics.items():
                    m.gate_estimate.labels(name, policy, k).set(v)
        return out

    def publish(self, name: str, decision: GateDecision, data_window: dict, offsets: dict,
                send: bool = True) -> str:
        """Export the candidate (parity-checked), publish it with its weights, announce it; returns the version."""
        from streamrec.trainer.export import export_dcn, export_sasrec
        from streamrec.trainer.publish import publish

        model = self.cand[name]
        model.eval()
        with tempfile.TemporaryDirectory(prefix="streamrec-online-") as tmp:
            if name == self.seq_name:
                catalog = list(dict.fromkeys(self.catalog + sorted(self.categories)))
                model.set_catalog(catalog, [self.categories.get(i, "") for i in catalog])
                exported = export_sasrec(model, tmp, catalog, self.categories)
            else:
                exported = export_dcn(model, tmp)
            exported.files[WEIGHTS] = save_weights(model, tmp)
            hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
            metrics = {f"gate_{k}": v for k, v in decision.candidate.items()}
            meta, _ = publish(self.settings, name, exported, kind=model.kind, metrics=metrics,
                              data_window=data_window, hashing=hashing, kafka_offsets=offsets,
                              parent=self.version.get(name), send=send)
        if name == self.seq_name:
            self.catalog = catalog
        self.live[name] = copy.deepcopy(model)
        self.live[name].eval()
        self.version[name] = meta.version
        m.versions_published.labels(name).inc()
        return meta.version

    def reject(self, name: str) -> None:
        """Start the candidate over from the live model (a rejected one must not drift further)."""
        self._set_live(name, self.live[name], self.version[name])


def _open(path: str):
    import fsspec

    return fsspec.open(path, "rb").open()


def _read(path: str) -> bytes:
    with _open(path) as fh:
        return fh.read()


def now_s() -> float:
    return time.time()
