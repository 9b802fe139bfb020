"""The promotion gate: a candidate model replaces the live one only if it is not worse.

Both are scored on the same recent held-out window of joined slates (never
trained on by the candidate). Two checks, both must pass:

- offline: AUC of the model's scores against "the item got a reward" on the
  shown items; the candidate may lose at most ``auc_tolerance``;
- off-policy: a self-normalised IPS estimate of the reward per shown item
  under each model's policy (softmax of its scores within the slate), with a
  95% confidence interval; the candidate is rejected when its estimate is
  below the live one by more than ``reward_tolerance`` (relative), or when
  its interval lies wholly below the live estimate.

>>> import numpy as np
>>> slate = np.repeat(np.arange(50), 4)
>>> reward = np.tile([1.0, 0, 0, 0], 50)
>>> good, bad = np.tile([3.0, 0, 0, 0], 50), np.tile([0.0, 3, 3, 3], 50)
>>> g = Gate(GateConfig(min_samples=10))
>>> g.decide(slate, reward, np.ones(200), live=bad, candidate=good).accepted
True
>>> g.decide(slate, reward, np.ones(200), live=good, candidate=bad).reason
'auc 0.000 < live 1.000 - 0.01'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamrec.trainer.evaluate import auc
from streamrec.trainer.offpolicy import Estimate, normalised_propensity, slate_softmax, snips


@dataclass(frozen=True)
class GateConfig:
    min_samples: int = 200
    """Held-out shown items needed before any decision (fewer: rejected as 'too few')."""
    auc_tolerance: float = 0.01
    reward_tolerance: float = 0.02
    """Relative drop of the SNIPS estimate the candidate may show (noise)."""
    weight_cap: float = 10.0
    temperature: float = 1.0


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
                 scores: np.ndarray) -> tuple[dict[str, float], Estimate]:
        """Offline metrics and the SNIPS estimate of one model on the window."""
        label = (reward > 0).astype(np.float64)
        target = slate_softmax(scores, slate_of, self.cfg.temperature)
        logging = normalised_propensity(propensity, slate_of)
        est = snips(reward, target, logging, self.cfg.weight_cap)
        metrics = {"auc": auc(label, scores) if 0 < label.sum() < len(label) else 0.5, **est.as_dict()}
        return metrics, est

    def decide(self, slate_of: np.ndarray, reward: np.ndarray, propensity: np.ndarray, live: np.ndarray,
               candidate: np.ndarray) -> GateDecision:
        """Accept the candidate when it is not worse than the live model on this window."""
        n = len(reward)
        if n < self.cfg.min_samples:
            return GateDecision(False, f"too few held-out samples ({n} < {self.cfg.min_samples})", n=n)
        lm, le = self.evaluate(slate_of, reward, propensity, live)
        cm, ce = self.evaluate(slate_of, reward, propensity, candidate)
        d = GateDecision(True, "not worse", lm, cm, n)
        if cm["auc"] < lm["auc"] - self.cfg.auc_tolerance:
            d.accepted, d.reason = False, f"auc {cm['auc']:.3f} < live {lm['auc']:.3f} - {self.cfg.auc_tolerance}"
        elif ce.value < le.value * (1.0 - self.cfg.reward_tolerance) - 1e-12:
            d.accepted, d.reason = False, (f"snips {ce.value:.4f} < live {le.value:.4f} "
                                           f"(-{self.cfg.reward_tolerance:.0%})")
        elif ce.high < le.value:
            d.accepted, d.reason = False, f"snips CI [{ce.low:.4f}, {ce.high:.4f}] below live {le.value:.4f}"
        return d
