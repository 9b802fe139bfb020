"""Off-policy learning and evaluation from logged slates: capped importance weights,
IPS and self-normalised IPS with a confidence interval, and the top-K off-policy corrected
REINFORCE loss (Chen et al., 2019, "Top-K Off-Policy Correction for a REINFORCE
Recommender System").

The logging policy is the scorer: each shown item carries its ``propensity``.
A target policy is scored on the same slates by the probability it gives each
shown item (a softmax over the slate's scores), so a policy that would have
put the rewarded items first gets a higher estimate.

>>> import numpy as np
>>> est = snips(rewards=np.array([1.0, 0.0, 0.0, 1.0]), target=np.array([0.4, 0.1, 0.1, 0.4]),
...             logging=np.full(4, 0.25), cap=10.0)
>>> round(est.value, 3), est.low < est.value < est.high
(0.8, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def capped_weights(target: np.ndarray, logging: np.ndarray, cap: float) -> np.ndarray:
    """``min(target / logging, cap)``; a zero logging propensity counts as tiny (weight = cap)."""
    return np.minimum(np.asarray(target, dtype=np.float64) / np.maximum(logging, 1e-9), cap)


@dataclass(frozen=True)
class Estimate:
    """An off-policy estimate of reward per shown item, with its 95% confidence interval."""

    value: float
    low: float
    high: float
    n: int
    ess: float
    """Effective sample size of the weights: small means the estimate leans on few samples."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}snips": self.value, f"{prefix}snips_low": self.low, f"{prefix}snips_high": self.high,
                f"{prefix}ess": self.ess}


def ips(rewards: np.ndarray, target: np.ndarray, logging: np.ndarray, cap: float = 10.0) -> Estimate:
    """Inverse propensity estimate ``mean(w r)`` and a normal 95% CI; unbiased when ``cap=math.inf``.

    Unlike `snips` it does not divide by the weights' own mean, so it keeps the target's scale when the
    weights average far from one (a few samples, or a target that favours rare actions), at more variance.

    >>> round(ips(np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([0.25, 0.5])).value, 6)
    1.0
    """
    r = np.asarray(rewards, dtype=np.float64)
    w = capped_weights(target, logging, cap)
    n = len(r)
    if n == 0:
        return Estimate(0.0, 0.0, 0.0, 0, 0.0)
    terms = w * r
    v = float(terms.mean())
    half = 1.96 * float(terms.std()) / math.sqrt(n)
    return Estimate(v, v - half, v + half, n, effective_sample_size(w))


def effective_sample_size(weights: np.ndarray) -> float:
    """``sum(w)^2 / sum(w^2)``: how many equally weighted samples the weights are worth (0 when all are 0)."""
    square = float((weights * weights).sum())
    return float(weights.sum()) ** 2 / square if square > 0 else 0.0


def snips(rewards: np.ndarray, target: np.ndarray, logging: np.ndarray, cap: float = 10.0) -> Estimate:
    """Self-normalised inverse propensity estimate ``sum(w r) / sum(w)`` and a delta-method 95% CI."""
    r = np.asarray(rewards, dtype=np.float64)
    w = capped_weights(target, logging, cap)
    n = len(r)
    if n == 0 or w.sum() <= 0:
        return Estimate(0.0, 0.0, 0.0, n, 0.0)
    v = float((w * r).sum() / w.sum())
    var = float((w * w * (r - v) ** 2).sum() / w.sum() ** 2)
    half = 1.96 * math.sqrt(var)
    return Estimate(v, v - half, v + half, n, effective_sample_size(w))


def slate_softmax(scores: np.ndarray, slate_of: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per item, the softmax of its score within its slate (``slate_of``: slate index of each item)."""
    s = np.asarray(scores, dtype=np.float64) / temperature
    out = np.empty_like(s)
    order = np.argsort(slate_of, kind="stable")
    bounds = np.flatnonzero(np.diff(slate_of[order])) + 1
    for grp in np.split(order, bounds):
        e = np.exp(s[grp] - s[grp].max())
        out[grp] = e / e.sum()
    return out


def normalised_propensity(propensity: np.ndarray, slate_of: np.ndarray) -> np.ndarray:
    """The logged propensities rescaled to sum to one within each slate (a distribution over the slate)."""
    p = np.maximum(np.asarray(propensity, dtype=np.float64), 1e-9)
    totals = np.bincount(slate_of, weights=p)
    return p / totals[slate_of]


def reinforce_topk_loss(logits, actions, rewards, behaviour, k: int, cap: float = 10.0):
    """Top-K off-policy corrected REINFORCE loss (torch), mean over the batch.

    ``logits`` [B, N] of the policy over N items, ``actions`` [B] the shown
    item indices, ``rewards`` [B], ``behaviour`` [B] the logging policy's
    probability of the action. The gradient of each term is
    ``-lambda_K * w * r * grad log pi(a|s)`` with ``w = min(pi/beta, cap)`` and
    ``lambda_K = K (1 - pi)^(K-1)``; both multipliers are held constant
    (detached), as in the paper.
    """
    import torch

    logp = torch.log_softmax(logits, dim=-1).gather(1, actions[:, None]).squeeze(1)
    with torch.no_grad():
        pi = logp.exp()
        w = torch.clamp(pi / behaviour.clamp_min(1e-9), max=cap)
        lam = k * (1.0 - pi).clamp_min(0.0) ** (k - 1)
    return -(lam * w * rewards * logp).mean()
