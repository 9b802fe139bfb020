"""Offline evaluation with standard protocols, and the baselines it compares against.

Sequence model (and the graph model): leave-one-out by time (each user's last
item is the test target, the one before is validation), full ranking over the
whole catalog, items the user already interacted with excluded (except the
target). Metrics at each cutoff K, from the 0-based rank r of the one target:

- HR@K (hit rate): share of users with r < K;
- NDCG@K: mean of 1/log2(r + 2) over hits (0 otherwise); with one relevant
  item the ideal DCG is 1, so no further normalisation;
- MRR@K: mean of 1/(r + 1) over hits;
- precision@K: relevant items in the top K / K; with one target this is
  exactly HR@K / K;
- recall@K: relevant items in the top K / relevant items; with one target
  this is exactly HR@K;
- MAP@K: mean average precision; with one target the average precision is
  precision at the target's position, 1/(r + 1), so MAP@K equals MRR@K.

Beside them, two properties of the lists themselves (`list_metrics`):
coverage@K, the share of the catalog that appears in at least one user's
top K, and pop@K, the mean popularity of recommended items (training
interactions per item; compare with the catalog's mean, printed in the
table title: above it = biased towards popular items).
Baselines: popularity and item-to-item co-visitation.

Ranker: AUC and log loss on a time split, against logistic regression on the
same dense features.

>>> ranks = np.array([0, 3, 20])
>>> {k: round(v, 3) for k, v in ranking_metrics(ranks, k=10).items()}
{'HR@10': 0.667, 'NDCG@10': 0.477, 'MRR@10': 0.417}
>>> {k: round(v, 3) for k, v in ranking_metrics(ranks, k=5, extended=True).items()}
{'HR@5': 0.667, 'NDCG@5': 0.477, 'MRR@5': 0.417, 'P@5': 0.133, 'R@5': 0.667, 'MAP@5': 0.417}
>>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

ScoreFn = Callable[[list[list[str]]], np.ndarray]
"""Histories -> scores ``[len(histories), n_catalog]`` (higher is better)."""


@dataclass
class LeaveOneOut:
    """Per-user splits of time-ordered sequences."""

    users: list[str]
    train: list[list[str]]
    """All but the last two items (training sequences)."""
    val_history: list[list[str]]
    val_target: list[str]
    test_history: list[list[str]]
    test_target: list[str]

    @classmethod
    def split(cls, seqs: dict[str, list[str]], min_len: int = 3) -> "LeaveOneOut":
        """Users with at least ``min_len`` interactions; shorter ones only add training data."""
        users = [u for u, s in seqs.items() if len(s) >= min_len]
        short = [s for s in seqs.values() if 2 <= len(s) < min_len]
        return cls(users=users, train=[seqs[u][:-2] for u in users] + short,
                   val_history=[seqs[u][:-2] for u in users], val_target=[seqs[u][-2] for u in users],
                   test_history=[seqs[u][:-1] for u in users], test_target=[seqs[u][-1] for u in users])


def target_ranks(scores: np.ndarray, histories: list[list[str]], targets: list[str],
                 index: dict[str, int]) -> np.ndarray:
    """0-based rank of each target among all catalog items, seen items (but the target) excluded.

    Ties count against the model (an item scoring equal to the target ranks above it),
    so a constant scorer gets no credit.
    """
    scores = scores.astype(np.float64, copy=True)
    ranks = np.empty(len(targets), dtype=np.int64)
    for r, (hist, target) in enumerate(zip(histories, targets)):
        t = index[target]
        seen = [index[i] for i in set(hist) if i in index and i != target]
        scores[r, seen] = -np.inf
        ranks[r] = int(np.sum(scores[r] >= scores[r, t])) - 1
    return ranks


def ranking_metrics(ranks: np.ndarray, k: int = 10, extended: bool = False) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k from 0-based target ranks (one relevant item per user);
    with ``extended`` also P@k, R@k and MAP@k (definitions in the module docstring)."""
    hit = ranks < k
    out = {f"HR@{k}": float(hit.mean()) if len(ranks) else 0.0,
           f"NDCG@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0,
           f"MRR@{k}": float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()) if len(ranks) else 0.0}
    if extended:
        out.update({f"P@{k}": out[f"HR@{k}"] / k, f"R@{k}": out[f"HR@{k}"], f"MAP@{k}": out[f"MRR@{k}"]})
    return out


def list_metrics(tops: np.ndarray, k: int, n_catalog: int, popularity: np.ndarray | None = None) -> dict[str, float]:
    """coverage@k (share of the catalog in someone's top k) and, given per-item ``popularity``,
    pop@k (mean popularity of the recommended items, every slot counted).

    A slot of -1 is empty (a list shorter than k) and counts for neither.

    >>> list_metrics(np.array([[0, 1], [0, 2]]), 2, 4, np.array([10.0, 2.0, 0.0, 5.0]))
    {'coverage@2': 0.75, 'pop@2': 5.5}
    >>> list_metrics(np.array([[0, 1], [3, -1]]), 2, 4, np.array([10.0, 2.0, 0.0, 5.0]))
    {'coverage@2': 0.75, 'pop@2': 5.666666666666667}
    """
    top = np.asarray(tops)[:, :k]
    shown = top[top >= 0]
    out = {f"coverage@{k}": len(np.unique(shown)) / max(n_catalog, 1)}
    if popularity is not None:
        out[f"pop@{k}"] = float(popularity[shown].mean()) if shown.size else 0.0
    return out


def _cutoffs(k: int | Sequence[int]) -> list[int]:
    ks = [k] if isinstance(k, int) else sorted(set(int(x) for x in k))
    if not ks or min(ks) < 1:
        raise ValueError(f"k: cutoffs must be positive integers, got {k!r}")
    return ks


def _table_row(ranks: np.ndarray, tops: np.ndarray, ks: Sequence[int], n_catalog: int,
               popularity: np.ndarray | None) -> dict[str, float]:
    """Every metric of the module docstring at each cutoff, from target ranks and top lists."""
    metrics: dict[str, float] = {}
    for cut in ks:
        metrics.update(ranking_metrics(ranks, cut, extended=True))
        metrics.update(list_metrics(tops, cut, n_catalog, popularity))
    return metrics


def slate_metrics(slates: Sequence[Sequence[str]], targets: Sequence[str], catalog: list[str],
                  k: Sequence[int] = (10,), popularity: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of `evaluate_scorer` for lists fixed in advance (e.g. the slates a scorer served):
    a target's rank is its position in its list; a target not in the list is a miss.

    >>> m = slate_metrics([["a", "b"], ["c"]], ["b", "a"], ["a", "b", "c"], k=[2])
    >>> m["HR@2"], m["MRR@2"], m["coverage@2"]
    (0.5, 0.25, 1.0)
    """
    ks = _cutoffs(k)
    width = max(ks)
    index = {item: j for j, item in enumerate(catalog)}
    ranks = np.array([list(s[:width]).index(t) if t in s[:width] else width for s, t in zip(slates, targets)],
                     dtype=np.int64)
    tops = np.full((len(slates), width), -1, dtype=np.int64)
    for r, s in enumerate(slates):
        row = [index.get(i, -1) for i in s[:width]]
        tops[r, :len(row)] = row
    return _table_row(ranks, tops, ks, len(catalog), popularity)


def evaluate_scorer(score: ScoreFn, histories: list[list[str]], targets: list[str], catalog: list[str],
                    k: int | Sequence[int] = 10, batch: int = 256,
                    popularity: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of one scorer, plus each user's top catalog indices (for the CSV export).

    ``k`` an int: HR, NDCG and MRR at k, and the top-k lists (as before). ``k`` a
    list: every metric of the module docstring at each cutoff, coverage and
    pop@K (``popularity``: per catalog item, e.g. `Popularity.counts`), and
    lists of the largest cutoff.
    """
    ks = _cutoffs(k)
    width = max(ks)
    index = {item: j for j, item in enumerate(catalog)}
    ranks, tops = [], []
    for start in range(0, len(targets), batch):
        h, t = histories[start:start + batch], targets[start:start + batch]
        s = score(h)
        ranks.append(target_ranks(s, h, t, index))
        for r, hist in enumerate(h):  # top-k among unseen items, as a user would get them
            row = s[r].astype(np.float64, copy=True)
            row[[index[i] for i in set(hist) if i in index]] = -np.inf
            tops.append(np.argsort(-row, kind="stable")[:width])
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
    tops = np.array(tops, dtype=np.int64).reshape(len(tops), -1)
    if isinstance(k, int):
        return ranking_metrics(all_ranks, k), tops
    return _table_row(all_ranks, tops, ks, len(catalog), popularity), tops


def leave_one_out_table(scorers: dict[str, ScoreFn], split: "LeaveOneOut", catalog: list[str],
                        ks: Sequence[int] = (10,)) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Every metric at every cutoff for each named scorer on the split's test users; also their top lists."""
    pop = Popularity(split.train, catalog).counts
    rows, tops = {}, {}
    for name, scorer in scorers.items():
        rows[name], tops[name] = evaluate_scorer(scorer, split.test_history, split.test_target, catalog, list(ks),
                                                 popularity=pop)
    return rows, tops


class Popularity:
    """Baseline: every user gets the most interacted items of the training data."""

    def __init__(self, train: list[list[str]], catalog: list[str]):
        index = {item: j for j, item in enumerate(catalog)}
        self.counts = np.zeros(len(catalog))
        for seq in train:
            np.add.at(self.counts, [index[i] for i in seq], 1.0)

    def __call__(self, histories: list[list[str]]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))


class CoVisitation:
    """Baseline: items that co-occur (within ``window`` steps) with the user's last few items.

    Symmetric counts, the user's most recent item weighted most; popularity
    breaks ties so users without co-visited items still get a ranking.
    """

    def __init__(self, train: list[list[str]], catalog: list[str], window: int = 3, history: int = 3,
                 max_items: int = 30_000):
        if len(catalog) > max_items:
            raise ValueError(f"co-visitation baseline keeps a dense {len(catalog)}^2 matrix; "
                             f"catalog over {max_items} items")
        self.index = {item: j for j, item in enumerate(catalog)}
        n = len(catalog)
        self.counts = np.zeros((n, n), dtype=np.float32)
        self.pop = Popularity(train, catalog).counts
        self.history = history
        for seq in train:
            ids = np.array([self.index[i] for i in seq], dtype=np.int64)
            for d in range(1, window + 1):
                if len(ids) > d:
                    np.add.at(self.counts, (ids[:-d], ids[d:]), 1.0)
                    np.add.at(self.counts, (ids[d:], ids[:-d]), 1.0)

    def __call__(self, histories: list[list[str]]) -> np.ndarray:
        out = np.tile(1e-6 * self.pop / max(self.pop.max(), 1.0), (len(histories), 1))
        for r, hist in enumerate(histories):
            for age, item in enumerate(reversed(hist[-self.history:])):
                if item in self.index:
                    out[r] += self.counts[self.index[item]] * 0.5 ** age
        return out


# --------------------------------------------------------------------------- #
# Ranker metrics and baseline
# --------------------------------------------------------------------------- #
def auc(label: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count half), from ranks (Mann-Whitney U)."""
    label = np.asarray(label) > 0.5
    pos, neg = label.sum(), (~label).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = np.asarray(score)[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0
    ranks[order] = np.repeat(avg, counts) + 1
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def logloss(label: np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy."""
    p = np.clip(prob, eps, 1 - eps)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


class LogisticRegression:
    """Baseline ranker: L2-regularised logistic regression on standardised dense features (Newton's method)."""

    def __init__(self, l2: float = 1e-3, iters: int = 25):
        self.l2, self.iters = l2, iters

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LogisticRegression":
        """Fit on features ``x`` ``[n, f]`` and 0/1 labels ``y``."""
        self.mean, self.std = x.mean(0), np.maximum(x.std(0), 1e-6)
        z = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
        w = np.zeros(z.shape[1])
        reg = self.l2 * len(x) * np.eye(len(w))
        reg[-1, -1] = 0.0  # no penalty on the intercept
        for _ in range(self.iters):
            p = 1.0 / (1.0 + np.exp(-z @ w))
            grad = z.T @ (p - y) + reg @ w
            hess = (z * (p * (1 - p))[:, None]).T @ z + reg
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.w = w
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Click probabilities."""
        z = np.hstack([(x - self.mean) / self.std, np.ones((len(x), 1))])
        return 1.0 / (1.0 + np.exp(-z @ self.w))


class OnnxSequenceScorer:
    """A published sequence model, scored with ONNX Runtime only (as the scorer runs it, no torch).

    Item vectors come from the version's ``item_encoder.onnx``, so the
    evaluation catalog may hold items the model never saw.
    """

    def __init__(self, folder: str, meta, catalog: list[str], categories: dict[str, str]):
        import onnxruntime as ort

        from streamrec.hashing import IdHasher

        self.items = IdHasher(meta.hashing["item"]["buckets"], "item")
        self.cats = IdHasher(meta.hashing["cat"]["buckets"], "cat")
        self.max_len, self.categories = int(meta.extra["max_len"]), categories
        opts = dict(providers=["CPUExecutionProvider"])
        self.encoder = ort.InferenceSession(f"{folder}/encoder.onnx", **opts)
        item_encoder = ort.InferenceSession(f"{folder}/item_encoder.onnx", **opts)
        self.vectors = item_encoder.run(None, {"item_ids": self.items(catalog),
                                               "item_cats": self.cats.first([categories.get(i, "") for i in catalog])})[0]

    def __call__(self, histories: list[list[str]]) -> np.ndarray:
        from streamrec.hashing import encode_sequences

        items, cats = encode_sequences(histories, self.categories, self.items, self.cats, self.max_len)
        user = self.encoder.run(None, {"seq_items": items, "seq_cats": cats})[0]
        return user @ self.vectors.T


class PublishedGraphScorer:
    """A published graph model (kind ``lightgcn``), scored as the scorer runs it (numpy, no torch).

    Catalog items the graph never saw get no score (ranked last).
    """

    def __init__(self, folder: str, meta, catalog: list[str]):
        from streamrec.serving.graph import GraphModel

        self.model = GraphModel(folder, meta)
        rows = np.array([self.model.row_of.get(i, -1) for i in catalog], dtype=np.int64)
        self.known = rows >= 0
        self.vectors = np.zeros((len(catalog), self.model.vectors.shape[1]), dtype=np.float32)
        self.vectors[self.known] = self.model.vectors[rows[self.known]]

    def __call__(self, histories: list[list[str]]) -> np.ndarray:
        scores = self.model.user_vectors(histories) @ self.vectors.T
        scores[:, ~self.known] = -np.inf
        return scores
