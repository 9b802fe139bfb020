"""The serving policy: pick the top-N slate from ranked scores, with optional exploration.

Every chosen item carries its *propensity*: the probability that the policy
put that item at that rank, given the items already placed above it. The
online trainer divides by it (inverse propensity weighting), so it must be
exactly the probability the sampler used.

- ``off``: greedy top-N; every propensity is 1.
- ``epsilon``: slot by slot, the best remaining item with probability
  ``1 - epsilon``, else an item drawn uniformly from the remaining ones.
  Propensity = ``(1 - epsilon) * [best] + epsilon / remaining``.
- ``softmax``: Plackett-Luce sampling without replacement with probabilities
  ``exp(score / temperature)``; drawn with the Gumbel-top-k trick.
  Propensity = ``exp(s_k / T) / sum over the items not yet placed``.

>>> rng = np.random.default_rng(0)
>>> idx, prop, explored = choose(np.array([0.1, 0.9, 0.5]), 2, "off", rng=rng)
>>> idx.tolist(), prop.tolist(), explored.tolist()
([1, 2], [1.0, 1.0], [False, False])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Mode = str  # "off" | "epsilon" | "softmax"
Pick = tuple[np.ndarray, np.ndarray, np.ndarray]
"""A slate: indices into the scores, each item's propensity, whether it was explored."""


def choose_all(scores: Sequence[np.ndarray], n: int, mode: Mode = "off", *, epsilon: float = 0.1,
               temperature: float = 1.0, rng: np.random.Generator | None = None) -> list[Pick]:
    """`choose` for each of a batch's score arrays, in order. Greedy slates are picked for the whole batch
    at once (`greedy_slates`); exploring ones draw from ``rng`` request by request, as `choose` does.

    >>> [idx.tolist() for idx, _, _ in choose_all([np.array([0.1, 0.9, 0.5]), np.array([2.0])], 2)]
    [[1, 2], [0]]
    """
    if mode != "off":
        return [choose(s, n, mode, epsilon=epsilon, temperature=temperature, rng=rng) for s in scores]
    return [(idx, np.ones(len(idx)), np.zeros(len(idx), bool)) for idx in greedy_slates(scores, n)]


def greedy_slates(scores: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
    """Per score array, the indices of its ``n`` best scores, best first, ties in index order: exactly
    ``np.argsort(-s, kind="stable")[:n]``, for the whole batch in a few numpy calls (a full sort per
    request costs more than the rest of its slate)."""
    sizes = np.fromiter(map(len, scores), dtype=np.int64, count=len(scores))
    width = int(sizes.max(initial=0))
    k = min(n, width)
    if k <= 0:
        return [np.zeros(0, np.int64) for _ in scores]
    table = np.full((len(scores), width), -np.inf)
    table[np.arange(width) < sizes[:, None]] = np.concatenate(scores)
    if np.isnan(table).any():  # NaN sorts last in argsort, but compares false: the reference handles it
        return [np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")[:n] for s in scores]
    part = np.argpartition(-table, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(table, part, axis=1).min(axis=1)  # each row's k-th best score
    rows, cols = np.nonzero(table >= kth[:, None])  # the k best and every tie with the k-th, in index order
    order = np.lexsort((cols, -table[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(len(scores)))
    return [cols[b:b + m] for b, m in zip(starts.tolist(), np.minimum(sizes, n).tolist())]


def choose(scores: np.ndarray, n: int, mode: Mode = "off", *, epsilon: float = 0.1, temperature: float = 1.0,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``scores`` of the slate, each item's propensity, and whether it was explored
    (chosen although it was not the greedy pick for its slot)."""
    scores = np.asarray(scores, dtype=np.float64)
    m = scores.shape[0]
    n = min(n, m)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
    greedy = np.argsort(-scores, kind="stable")
    if mode == "off":
        return greedy[:n].astype(np.int64), np.ones(n), np.zeros(n, bool)
    rng = rng or np.random.default_rng()
    if mode == "epsilon":
        return _epsilon(greedy, n, epsilon, rng)
    if mode == "softmax":
        return _softmax(scores, greedy, n, temperature, rng)
    raise ValueError(f"exploration mode {mode!r}; use off, epsilon or softmax")


def _epsilon(greedy: np.ndarray, n: int, epsilon: float, rng: np.random.Generator):
    remaining = list(greedy)  # best first
    idx, prop, explored = np.empty(n, np.int64), np.empty(n), np.zeros(n, bool)
    explore = rng.random(n) < epsilon
    for slot in range(n):
        r = len(remaining)
        pos = int(rng.integers(r)) if explore[slot] else 0
        idx[slot] = remaining.pop(pos)
        prop[slot] = (1.0 - epsilon) * (pos == 0) + epsilon / r
        explored[slot] = pos != 0
    return idx, prop, explored


def _softmax(scores: np.ndarray, greedy: np.ndarray, n: int, temperature: float, rng: np.random.Generator):
    logits = scores / temperature
    # exp never overflows, and never underflows to 0 (a 0/0 propensity); below e^-700 is "never" anyway.
    logits = np.maximum(logits - logits.max(), -700.0)
    gumbel = logits - np.log(-np.log(rng.random(logits.shape[0]).clip(1e-300, 1.0)))
    idx = np.argsort(-gumbel, kind="stable")[:n].astype(np.int64)
    w = np.exp(logits)
    # Mass not yet placed at each slot, by additions only (a total minus a running sum cancels).
    unplaced = np.ones(w.shape[0], bool)
    unplaced[idx] = False
    remaining = w[unplaced].sum() + np.cumsum(w[idx][::-1])[::-1]
    prop = w[idx] / remaining
    explored = idx != greedy[:n]
    return idx, np.minimum(prop, 1.0), explored


def slot_distribution(scores: np.ndarray, placed: list[int], mode: Mode, *, epsilon: float = 0.1,
                      temperature: float = 1.0) -> np.ndarray:
    """The probability of each item for the next slot given the items ``placed`` above it
    (zero for placed items). Sums to 1; used by tests and off-policy evaluation."""
    scores = np.asarray(scores, dtype=np.float64)
    free = np.ones(scores.shape[0], bool)
    free[placed] = False
    p = np.zeros(scores.shape[0])
    if not free.any():
        return p
    order = [i for i in np.argsort(-scores, kind="stable") if free[i]]
    if mode == "off":
        p[order[0]] = 1.0
    elif mode == "epsilon":
        p[free] = epsilon / free.sum()
        p[order[0]] += 1.0 - epsilon
    else:
        logits = scores / temperature
        w = np.where(free, np.exp(np.maximum(logits - logits.max(), -700.0)), 0.0)
        p = w / w.sum()
    return p
