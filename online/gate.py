"""The promotion gate: a candidate model replaces the live one only if it is not worse.

Both are scored on the same recent held-out window of joined slates (never
trained on by the candidate). Two checks, both must pass:

- offline: AUC of the model's scores against "the item got a reward" on the
  shown items; the candidate may lose at most ``auc_tolerance``;
- off-policy: a self-normalised IPS estimate of the reward per shown item
  under each model's policy (softmax of its scores within the slate), with a
  95% confidence interval; the candidate is rejected when its estimate is
  below the live one by more than ``reward_tolerance`` (relative), or when
  its interval lies wholly below the live estimate. Each model's scores are
  divided by their spread over the window first, so the estimate judges the
  ordering (what the scorer serves), not how loud the scores are.

The sequence model has one more offline check (`check_next_item`): its
next-item loss on the held-out slates' own sequences, the item the user found
by themselves given the ones before it. It retrieves the candidates from the
whole catalog, and both checks above only see the items that were shown.

Position bias: without exploration the logged clicks sit mostly at the ranks
the live model chose, so both checks favour the live ordering whatever its
quality. ``exam_weight`` (per shown item, ``1 / examination(rank)``, see
`OnlineModels.estimate_examination`) counts a reward as what it would have
been worth had its rank been looked at: rewards are scaled by it in the SNIPS
estimate, and rewarded items weigh it in the AUC.

>>> import numpy as np
>>> slate = np.repeat(np.arange(50), 4)
>>> reward = np.tile([1.0, 0, 0, 0], 50)
>>> good, bad = np.tile([3.0, 0, 0, 0], 50), np.tile([0.0, 3, 3, 3], 50)
>>> g = Gate(GateConfig(min_samples=10))
>>> g.decide(slate, reward, np.ones(200), live=bad, candidate=good).accepted
True
>>> g.decide(slate, reward, np.ones(200), live=good, candidate=bad).reason
'auc 0.000 < live 1.000 - 0.01'
>>> g.decide(slate, reward, np.ones(200), live=10 * good, candidate=good).accepted  # louder is not better
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamrec.trainer.evaluate import auc
from streamrec.online.offpolicy import Estimate, normalised_propensity, slate_softmax, snips


@dataclass(frozen=True)
class GateConfig:
    min_samples: int = 200
    """Held-out shown items needed before any decision (fewer: rejected as 'too few')."""
    auc_tolerance: float = 0.01
    reward_tolerance: float = 0.02
    """Relative drop of the SNIPS estimate the candidate may show (noise)."""
    weight_cap: float = 10.0
    temperature: float = 1.0
    next_item_tolerance: float = 0.01
    """Relative rise of the sequence model's held-out next-item loss the candidate may show."""


@dataclass
class GateDecision:
    accepted: bool
    reason: str
    live: dict[str, float] = field(default_factory=dict)
    candidate: dict[str, float] = field(default_factory=dict)
    n: int = 0

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "reason": self.reason, "n": self.n, "live": self.live,
                "candidate": self.candidate}


class Gate:
    """Compares two score vectors of the same held-out shown items."""

    def __init__(self, cfg: GateConfig | None = None):
        self.cfg = cfg or GateConfig()

    def evaluate(self, slate_of: np.ndarray, reward: np.ndarray, propensity: np.ndarray,
                 scores: np.ndarray, exam_weight: np.ndarray | None = None) -> tuple[dict[str, float], Estimate]:
        """Offline metrics and the SNIPS estimate of one model on the window."""
        label = (reward > 0).astype(np.float64)
        # The scorer serves a model's ordering, not its scale: standardised scores keep a louder model (the
        # same ordering, a sharper softmax) from passing for a better one, or a calibrated one for a worse.
        spread = float(np.std(scores))
        target = slate_softmax(scores / spread if spread > 0 else scores, slate_of, self.cfg.temperature)
        logging = normalised_propensity(propensity, slate_of)
        if exam_weight is None:
            est = snips(reward, target, logging, self.cfg.weight_cap)
            area = auc(label, scores) if 0 < label.sum() < len(label) else 0.5
        else:
            est = snips(reward * exam_weight, target, logging, self.cfg.weight_cap)
            area = weighted_auc(label, scores, np.where(label > 0, exam_weight, 1.0))
        return {"auc": area, **est.as_dict()}, est

    def decide(self, slate_of: np.ndarray, reward: np.ndarray, propensity: np.ndarray, live: np.ndarray,
               candidate: np.ndarray, exam_weight: np.ndarray | None = None) -> GateDecision:
        """Accept the candidate when it is not worse than the live model on this window."""
        n = len(reward)
        if n < self.cfg.min_samples:
            return GateDecision(False, f"too few held-out samples ({n} < {self.cfg.min_samples})", n=n)
        lm, le = self.evaluate(slate_of, reward, propensity, live, exam_weight)
        cm, ce = self.evaluate(slate_of, reward, propensity, candidate, exam_weight)
        d = GateDecision(True, "not worse", lm, cm, n)
        if cm["auc"] < lm["auc"] - self.cfg.auc_tolerance:
            d.accepted, d.reason = False, f"auc {cm['auc']:.3f} < live {lm['auc']:.3f} - {self.cfg.auc_tolerance}"
        elif ce.value < le.value * (1.0 - self.cfg.reward_tolerance) - 1e-12:
            d.accepted, d.reason = False, (f"snips {ce.value:.4f} < live {le.value:.4f} "
                                           f"(-{self.cfg.reward_tolerance:.0%})")
        elif ce.high < le.value:
            d.accepted, d.reason = False, f"snips CI [{ce.low:.4f}, {ce.high:.4f}] below live {le.value:.4f}"
        return d

    def check_next_item(self, d: GateDecision, live_loss: float, candidate_loss: float) -> GateDecision:
        """Add the next-item losses (cross-entropy over the catalog) to ``d``, and reject a candidate whose
        loss rose by more than the tolerance: it reorders shown items at least as well, but it has drifted
        from what users browse, which is what its retrieval serves from.

        >>> g = Gate()
        >>> g.check_next_item(GateDecision(True, "not worse"), 5.00, 5.04).accepted
        True
        >>> g.check_next_item(GateDecision(True, "not worse"), 5.00, 5.10).reason
        'next-item loss 5.1000 > live 5.0000 (+1%)'
        """
        d.live["next_item_loss"], d.candidate["next_item_loss"] = live_loss, candidate_loss
        tol = self.cfg.next_item_tolerance
        if d.accepted and candidate_loss > live_loss * (1.0 + tol) + 1e-12:
            d.accepted, d.reason = False, f"next-item loss {candidate_loss:.4f} > live {live_loss:.4f} (+{tol:.0%})"
        return d


def weighted_auc(label: np.ndarray, score: np.ndarray, weight: np.ndarray) -> float:
    """AUC where each item counts ``weight`` times (ties count half); 0.5 without both classes.

    >>> weighted_auc(np.array([1, 0, 1]), np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 3.0]))
    0.25
    """
    label = np.asarray(label) > 0.5
    w = np.asarray(weight, dtype=np.float64)
    pos_w, neg_w = w[label].sum(), w[~label].sum()
    if pos_w <= 0 or neg_w <= 0:
        return 0.5
    order = np.argsort(score, kind="mergesort")
    s, lab, ws = np.asarray(score)[order], label[order], w[order]
    # Per distinct score: negative weight strictly below, plus half the negatives tied with it.
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    neg = np.where(lab, 0.0, ws)
    neg_tie = np.add.reduceat(neg, first)
    neg_below = np.concatenate([[0.0], np.cumsum(neg_tie)[:-1]])
    group = np.repeat(np.arange(len(first)), counts)
    credit = neg_below[group] + 0.5 * neg_tie[group]
    return float((ws[lab] * credit[lab]).sum() / (pos_w * neg_w))
