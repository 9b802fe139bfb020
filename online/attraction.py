"""How well each item sells when it is shown: its attraction under the position-based click model.

A shown item is clicked when the user looks at its rank (examination, estimated from the logs by
`OnlineModels.estimate_examination`) and it attracts them. Over the joined training slates (all of
them so far, each fading with its age: `ItemEvidence`), an item's attraction relative to the average one is

    (clicks + prior * rate) / (examinations + prior) / rate

where examinations sums the examination probability of every rank the item was shown at, rate is the
clicks-per-examination of all items, and ``prior`` examinations of an average item shrink items seen
rarely towards 1. Its log is a logit offset, which the online trainer writes into the ranker's per-item
bias (`DCNRanker(item_bias=True)`), so the next exported version ranks by it.

How much the offset counts against the rest of the ranker is then fitted, not assumed (`calibrate`): the
intercept, a scale of the ranker's own logit and a scale of the offset that maximise the likelihood of the
recent clicks under the same position-based model. In an offline replay of the simulator's world
(`docs/analysis/offline_loop.py`, four seeds) the fit turned the sequence score down (about 0.2, offsets
about 1.7) and took the online arm's click rate from 0.547 (offsets at scale 1) to 0.577. In the live
bench it turned the ranker's logit up instead, and the lift pooled over three user splits did not change
beyond noise (BENCHMARKS.md, "Slates nobody saw"); it stays because the served scores are then calibrated
click log-odds rather than a sum of terms on unrelated scales.

Why not learn the offset by gradient descent like the other weights: measured in `streamrec bench online`,
per-item rows fitted by SGD or Adam inside the DCN took up whatever the dense features left over, and their
correlation with the simulator's hidden item appeal was -0.2 to 0.2, while this estimate on the same
slates reached 0.44 to 0.56 (what 8,000 slates allow: the items' raw position-corrected click rates reach
about 0.6). The estimate is a function of the training slates alone, so it survives a restart with
the checkpoint of their counts and never sees the gate's held-out slates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PRIOR_EXAMINATIONS = 5.0
"""Examinations of an average item added to every item (the shrinkage towards no offset). 20 shrank the
offsets to a third of the hidden appeal's spread (one run each: online arm +9% against +13% at 5; runs
vary by about 5 points)."""
MIN_CLICKS = 50
"""Below this many clicks in the buffer the estimate is not used (the offsets stay as they are)."""


def attraction_offsets(slates: Sequence, examination: np.ndarray,
                       prior: float = PRIOR_EXAMINATIONS) -> dict[str, float]:
    """Item -> log relative attraction from joined slates (``items`` and ``rewards`` in rank order).

    >>> from types import SimpleNamespace as S
    >>> slates = [S(items=["a", "b"], rewards=[1.0, 0.0])] * 40 + [S(items=["b", "a"], rewards=[0.0, 0.0])] * 40
    >>> off = attraction_offsets(slates * 2, np.array([1.0, 0.5]))
    >>> off["a"] > 0 > off["b"]
    True
    """
    evidence = ItemEvidence(half_life_s=0.0)
    evidence.add(slates)
    return evidence.offsets(examination, prior)


class ItemEvidence:
    """Every item's shown and clicked counts per rank over all the slates it was given, not only the
    training buffer's, fading with a half-life of event time (``half_life_s``; 0: never fades).

    An item's attraction is measured by its clicks, and they are few: in the bench's fewer-clicks world
    an item gets a handful in the 8,000 slates of the buffer. In an offline replay of four worlds
    (`docs/analysis/offline_loop.py`), keeping all the evidence instead raised the offsets' correlation
    with the hidden appeal from 0.40-0.48 to 0.44-0.58 (lower in one world) and the online arm's expected
    reward per slate in every world, by 0.007 to 0.021; live, over eight worlds, the online arm's lift went
    from +15.4% to +19.1%, with overlapping intervals (BENCHMARKS.md, "More evidence per item").

    The counts are kept per rank because the examination of a rank is re-estimated as the logs grow; the
    memory is items x ranks, whatever the traffic: items whose counts faded away are dropped, and at most
    `MAX_ITEMS` are kept.

    >>> from types import SimpleNamespace as S
    >>> ev = ItemEvidence(half_life_s=60.0)
    >>> ev.add([S(items=["a", "b"], rewards=[1.0, 0.0], created_ts=1_000)] * 120)
    >>> ev.add([S(items=["c", "a"], rewards=[0.0, 0.0], created_ts=61_000)] * 120)  # one half-life later
    >>> round(ev.shown["a"][0], 1), round(ev.shown["a"][1], 1)  # the 120 at rank 0 now weigh 60
    (60.0, 120.0)
    >>> off = ev.offsets(np.array([1.0, 0.5]))
    >>> off["a"] > 0 > off["c"]
    True
    >>> ItemEvidence.from_state(ev.state()).offsets(np.array([1.0, 0.5])) == off
    True
    """

    MAX_ITEMS = 100_000
    """Items kept (about 80 MB): past a tenth more, the least shown are forgotten."""

    def __init__(self, half_life_s: float = 3600.0):
        self.half_life_s = half_life_s
        self.now_ms = 0  # the newest event time added; counts are weighed as of then
        self.shown: dict[str, list[float]] = {}
        self.clicked: dict[str, list[float]] = {}

    def add(self, slates: Sequence) -> None:
        for s in slates:
            weight = 1.0
            if self.half_life_s > 0:
                ts = int(getattr(s, "created_ts", 0) or 0)
                age_s = (self.now_ms - ts) / 1000.0  # < 0: newer than the counts' clock
                if age_s < -self.half_life_s / 500:  # move the clock in steps, not for every slate
                    self._fade(-age_s)
                    self.now_ms, age_s = ts, 0.0
                weight = 0.5 ** (age_s / self.half_life_s)  # a late slate counts as faded as its age says
            for pos, (item, reward) in enumerate(zip(s.items, s.rewards)):
                shown = self.shown.get(item)
                if shown is None:
                    shown = self.shown[item] = []
                    self.clicked[item] = []
                if len(shown) <= pos:
                    shown.extend([0.0] * (pos + 1 - len(shown)))
                    self.clicked[item].extend([0.0] * (pos + 1 - len(self.clicked[item])))
                shown[pos] += weight
                self.clicked[item][pos] += weight * (reward > 0)
        if len(self.shown) > 1.1 * self.MAX_ITEMS:
            keep = sorted(self.shown, key=lambda i: sum(self.shown[i]), reverse=True)[: self.MAX_ITEMS]
            self.shown = {i: self.shown[i] for i in keep}
            self.clicked = {i: self.clicked[i] for i in keep}

    def _fade(self, elapsed_s: float) -> None:
        factor = 0.5 ** (elapsed_s / self.half_life_s)
        for item in list(self.shown):
            shown = [x * factor for x in self.shown[item]]
            if sum(shown) < 1e-3:
                del self.shown[item], self.clicked[item]
                continue
            self.shown[item], self.clicked[item] = shown, [x * factor for x in self.clicked[item]]

    def offsets(self, examination: np.ndarray, prior: float = PRIOR_EXAMINATIONS) -> dict[str, float]:
        """Item -> log relative attraction (see the module's docstring); {} below `MIN_CLICKS` clicks."""
        if not self.shown:
            return {}
        items = list(self.shown)
        width = max(len(v) for v in self.shown.values())
        exam = np.asarray(examination, dtype=np.float64)
        exam = np.concatenate([exam, np.full(max(width - len(exam), 0), exam[-1])])[:width]
        shown = np.array([v + [0.0] * (width - len(v)) for v in self.shown.values()])
        clicks = np.array([sum(self.clicked[i]) for i in items])
        exams = shown @ exam
        total_clicks, total_exams = clicks.sum(), exams.sum()
        if total_clicks < MIN_CLICKS or total_exams <= 0:
            return {}
        rate = total_clicks / total_exams
        offsets = np.log((clicks + prior * rate) / (exams + prior) / rate)
        return dict(zip(items, offsets.tolist()))

    def state(self) -> dict:
        return {"half_life_s": self.half_life_s, "now_ms": self.now_ms, "shown": self.shown, "clicked": self.clicked}

    @classmethod
    def from_state(cls, state: dict, half_life_s: float | None = None) -> "ItemEvidence":
        """The counts of `state`, fading from now on with ``half_life_s`` (default: as they were kept)."""
        ev = cls(state.get("half_life_s", 3600.0) if half_life_s is None else half_life_s)
        ev.now_ms = int(state.get("now_ms", 0))
        ev.shown = {k: list(v) for k, v in state.get("shown", {}).items()}
        ev.clicked = {k: list(v) for k, v in state.get("clicked", {}).items()}
        return ev


def write_offsets(model, offsets: dict[str, float], sweeps: int = 100) -> int:
    """Set the ranker's per-item bias rows so that each item's two hash rows sum to its offset.

    Items that share a row (hash collisions: about 9 pairs among 300 items in 20,000 buckets) get the
    least-squares compromise, by a few damped Jacobi sweeps, rather than whichever was written last.
    """
    if getattr(model, "item_bias", None) is None or not offsets:
        return 0
    import torch

    items = list(offsets)
    target = np.array([offsets[i] for i in items], dtype=np.float64)
    hashed = model.item_hasher(items)
    rows, inverse = np.unique(hashed.reshape(-1), return_inverse=True)
    a, b = inverse.reshape(-1, 2).T
    uses = np.bincount(a, minlength=len(rows)) + np.bincount(b, minlength=len(rows))
    value = np.zeros(len(rows))
    for _ in range(sweeps):
        resid = target - value[a] - value[b]
        value += 0.5 * (np.bincount(a, resid, len(rows)) + np.bincount(b, resid, len(rows))) / uses
    with torch.no_grad():
        model.item_bias.weight[torch.from_numpy(rows), 0] = torch.from_numpy(value).to(model.item_bias.weight.dtype)
    return len(items)


def calibrate(logit: np.ndarray, offset: np.ndarray, clicked: np.ndarray, examination: np.ndarray,
              weight: np.ndarray | None = None, ridge: float = 1e-3, steps: int = 25) -> tuple[float, float, float]:
    """``(intercept, logit scale, offset scale)`` maximising the position-based likelihood of ``clicked``.

    Each shown item is clicked with probability ``sigmoid(c + a * logit + g * offset + log(examination))``
    (the ranker's training model: the rank's examination as a fixed logit offset); a logistic regression
    with three coefficients, solved by iteratively reweighted least squares (small ``ridge`` towards 0).

    >>> rng = np.random.default_rng(0)
    >>> z, b = rng.normal(size=20_000), rng.normal(size=20_000)
    >>> exam = np.where(rng.random(20_000) < 0.5, 1.0, 0.5)
    >>> y = rng.random(20_000) < 1 / (1 + np.exp(-(-0.5 + 0.3 * z + 1.5 * b + np.log(exam))))
    >>> [round(x, 1) for x in calibrate(z, b, y, exam)]
    [-0.5, 0.3, 1.5]
    """
    x = np.stack([np.ones_like(logit), logit, offset], axis=1).astype(np.float64)
    y = np.asarray(clicked, dtype=np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    fixed = np.log(np.asarray(examination, dtype=np.float64))
    theta = np.zeros(3)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ theta + fixed)))
        hess = (x * (w * p * (1.0 - p))[:, None]).T @ x + ridge * np.eye(3)
        step = np.linalg.solve(hess, x.T @ (w * (y - p)) - ridge * theta)
        theta += step
        if np.abs(step).max() < 1e-6:
            break
    return float(theta[0]), float(theta[1]), float(theta[2])
