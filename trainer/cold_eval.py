"""Cold-item evaluation: can the content tower recommend items that nobody interacted with in training?

Protocol (``streamrec evaluate --cold``):

1. A seeded share of the items that have interactions is held out entirely:
   every interaction with them is removed from what the scorers may learn from
   (the *cold* items); the rest is the warm history.
2. Test users: those with a positive interaction on a cold item and at least
   one on a warm item. Each user's history is their warm positives in time
   order; the target is the first cold item they interacted with.
3. Every scorer ranks all cold items for each user (the question a
   newly-published item poses: who should see it); the user's other cold
   items are left out of the ranking (neither credit nor penalty); ties count
   against the scorer. HR@K and NDCG@K (and MRR@K) from
   `streamrec.trainer.evaluate.ranking_metrics`.

Scorers: the content tower (cosine between the user's content profile,
`streamrec.trainer.content.profile_vectors`, and each cold item's content
vector), its parts alone (text only, category only), popularity (a cold item
has none of its own, so it gets its category's share of the warm
interactions, ties broken at random), and random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from streamrec.trainer.data import DataError, Interactions, read_catalog
from streamrec.trainer.evaluate import ranking_metrics, target_ranks

PROFILE_ITEMS = 20
"""How many of the user's newest warm items make their content profile."""


@dataclass
class ColdSplit:
    """Cold items, and per test user: the warm history and the cold target (item ids)."""

    cold: list[str]
    users: list[str]
    histories: list[list[str]]
    targets: list[str]
    other_cold: list[list[str]]
    """Each user's other cold items: left out of their ranking."""
    warm: Interactions = field(repr=False, default=None)

    @classmethod
    def make(cls, inter: Interactions, share: float = 0.2, seed: int = 0) -> "ColdSplit":
        if not 0.0 < share < 1.0:
            raise ValueError(f"cold share {share} must be between 0 and 1 (e.g. 0.2: a fifth of the items)")
        pos = inter.positives()
        items = sorted(set(pos.item))
        if len(items) < 10:
            raise DataError(f"only {len(items)} items have positive interactions; the cold-item evaluation "
                            "needs at least 10")
        rng = np.random.default_rng(seed)
        cold = sorted(rng.choice(items, size=max(1, int(round(share * len(items)))), replace=False).tolist())
        is_cold = np.isin(pos.item, cold)
        warm_of: dict[str, list[str]] = {}
        cold_of: dict[str, list[str]] = {}
        for u, i, c in zip(pos.user, pos.item, is_cold):
            (cold_of if c else warm_of).setdefault(u, []).append(i)
        users = [u for u in cold_of if u in warm_of]
        targets = [cold_of[u][0] for u in users]
        others = [sorted(set(cold_of[u]) - {t}) for u, t in zip(users, targets)]
        return cls(cold=cold, users=users, histories=[warm_of[u] for u in users], targets=targets,
                   other_cold=others, warm=pos.take(~is_cold))


Scorer = Callable[[ColdSplit], np.ndarray]
"""A split -> scores ``[users, cold items]``."""


def content_scorer(vectors: dict[str, np.ndarray], part: slice | None = None, decay: float = 0.8) -> Scorer:
    """Cosine between each user's content profile and each cold item (optionally on a slice of the vector)."""
    from streamrec.trainer.content import profile_vectors

    def score(split: ColdSplit) -> np.ndarray:
        ids = sorted(set(vectors))
        row = {i: r for r, i in enumerate(ids)}
        mat = np.stack([vectors[i] for i in ids]).astype(np.float32)
        if part is not None:  # one part of the tower, at unit length again
            mat = mat[:, part]
            mat = mat / np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
        hist = [[row[i] for i in h[-PROFILE_ITEMS:] if i in row] for h in split.histories]
        prof = profile_vectors(mat, hist, decay)
        return prof @ mat[[row[c] for c in split.cold]].T

    return score


def category_popularity(categories: dict[str, str], seed: int = 0) -> Scorer:
    """Each cold item scores its category's count of warm positives (ties broken at random)."""

    def score(split: ColdSplit) -> np.ndarray:
        counts: dict[str, int] = {}
        for i in split.warm.item:
            c = categories.get(i, "")
            counts[c] = counts.get(c, 0) + 1
        base = np.array([counts.get(categories.get(c, ""), 0) for c in split.cold], dtype=np.float64)
        jitter = np.random.default_rng(seed).random(len(split.cold)) * 0.5  # < 1: never reorders categories
        return np.broadcast_to(base + jitter, (len(split.users), len(split.cold)))

    return score


def random_scorer(seed: int = 0) -> Scorer:
    return lambda split: np.random.default_rng(seed).random((len(split.users), len(split.cold)))


def evaluate_cold(split: ColdSplit, scorers: dict[str, Scorer], k: int | Sequence[int] = 10
                  ) -> dict[str, dict[str, float]]:
    """Metrics per scorer (``HR@k``, ``NDCG@k``, ``MRR@k`` for each cutoff), all ranking the cold items."""
    index = {c: j for j, c in enumerate(split.cold)}
    ks = [k] if isinstance(k, int) else list(k)
    out = {}
    for name, scorer in scorers.items():
        scores = np.asarray(scorer(split), dtype=np.float64)
        ranks = target_ranks(scores, split.other_cold, split.targets, index)
        out[name] = {m: v for c in ks for m, v in ranking_metrics(ranks, c).items()}
    return out


def tower_parts(dim_text: int, dim_side: int) -> dict[str, slice]:
    """Slices of the content vector holding each part (see `streamrec.trainer.content.ContentTower`)."""
    return {"text": slice(0, dim_text), "category": slice(dim_text, dim_text + dim_side),
            "tags": slice(dim_text + dim_side, dim_text + 2 * dim_side)}


def cold_table(inter: Interactions, items: Sequence[dict], share: float = 0.2, seed: int = 0,
               k: int | Sequence[int] = 10,
               tower=None, progress: bool = False) -> tuple[ColdSplit, dict[str, dict[str, float]]]:
    """Build the split, embed the catalog with the content tower, and evaluate every scorer."""
    from streamrec.trainer.content import SIDE_DIM, TEXT_DIM, ContentTower, metas_of

    split = ColdSplit.make(inter, share, seed)
    if not split.users:
        raise DataError("no user interacted with both a cold and a warm item; use more data or a larger share")
    known = {r["item_id"] for r in items}
    missing = sorted(set(split.cold) - known)
    if missing:
        raise DataError(f"{len(missing)} cold items have no catalog record (e.g. {missing[0]!r}); pass the "
                        "catalog with --items (CSV item_id,category,title,description,tags or JSONL)")
    tower = tower or ContentTower(seed=seed)
    ids, metas = metas_of(items)
    vecs = tower.encode(metas, progress=progress)
    vectors = dict(zip(ids, vecs))
    side = tower.config["side_dim"]
    parts = tower_parts(TEXT_DIM, side)
    categories = {i: str(m.get("category") or "") for i, m in zip(ids, metas)}
    categories.update({i: c for i, c in inter.categories.items() if i not in categories})
    scorers = {"content tower (text + category + tags)": content_scorer(vectors),
               "content: text only": content_scorer(vectors, parts["text"]),
               "content: category only": content_scorer(vectors, parts["category"]),
               "popularity (of the category)": category_popularity(categories, seed),
               "random": random_scorer(seed)}
    return split, evaluate_cold(split, scorers, k)



def cmd_evaluate_cold(args, load_data, console, print_table) -> int:
    """`streamrec evaluate --cold`: the cold-item table for ``--data`` with the catalog of ``--items``."""
    from rich.table import Table

    try:
        inter = load_data(args)
        items_path = args.items or (Path(args.data) / "items.csv" if Path(args.data).is_dir()
                                    else Path(args.data).with_name("items.csv"))
        items = read_catalog(items_path)
        ks = sorted(set(getattr(args, "k", None) or [10]))
        split, results = cold_table(inter, items, share=args.cold_share, seed=args.seed, k=ks,
                                    progress=not args.no_progress)
    except (DataError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    table = Table(title=f"cold items: {len(split.cold):,} items held out of training ({args.cold_share:.0%}), "
                        f"ranked for {len(split.users):,} users")
    table.add_column("model", justify="left")
    table.add_column("K", justify="right")
    for col in ("HR", "NDCG", "MRR"):
        table.add_column(col, justify="right")
    for k in ks:
        for name, m in results.items():
            table.add_row(name, str(k), *(f"{m[f'{c}@{k}']:.4f}" for c in ("HR", "NDCG", "MRR")))
    print_table(table)
    return 0
