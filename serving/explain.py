"""Why the ranker scored an item as it did: the feature groups that pushed its score up or down.

Method: leave-one-group-out on the batch. For the items of the slates asked
about, the ranker runs once more on copies of their inputs in which one
feature group at a time is set to its baseline; a group's effect is the score
with the group minus the score without it (a probability delta, positive =
pushed up). Every copy goes through ONE ONNX run of ``items x (groups + 1)``
rows, and only when an explanation is asked for (``?explain=true`` or
`Settings.scorer_explain_messages`).

Why this and not gradient x input exported as a second ONNX output: that would
need every ranker re-exported with a new signature (and a gradient the
TorchScript exporter does not build for us), it is a local linearisation, so
the sign it states need not be what happens when the feature is taken away
(DCN-V2's cross layers multiply features together), and it means little for
hashed ids. Leave-one-out is honest by construction: the stated effect *is*
how the served score moves when the group is neutralised, it works with every
version already in the registry, and its cost is one batched run over the
slate (top_n items, not the 200 candidates).

Baselines ("neutralised"): a dense feature takes its training mean
(``meta.json`` ``extra.dense_baseline``, written by `export_dcn`; after the
ranker's standardisation that is 0, "average"); a version without it falls
back to the feature's no-information value declared in `FEATURES` (what a new
item or a new user reads). Hashed-id groups take bucket 0, the padding row
with a zero embedding ("unknown id").

Groups come from the served version's own meta (``dense_features``,
``sparse_fields``) looked up in the one table below, so a feature added
later (content similarity, segment popularity...) is explained as soon as a
ranker is trained on it: by its pattern's words, or by a generic sentence.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from streamrec.serving.features import NEVER_HOURS
from streamrec.stream.schemas import Contribution

log = logging.getLogger(__name__)
MIN_EFFECT = 1e-4
"""Score deltas smaller than this (a probability) are noise, not a reason."""


@dataclass(frozen=True)
class ItemFacts:
    """What the sentences quote about one (request, item) pair besides the feature's own value."""

    category: str = ""
    similar_in_session: int = 0
    """Items of the same category the user interacted with in this session."""
    category_share: float | None = None
    """Share of the user's (decayed) history in this category."""


Render = Callable[[bool, "float | None", ItemFacts], str]
"""(pushed up?, the feature's raw value or None for ids, facts) -> plain words."""


# --- plain words ----------------------------------------------------------------- #
def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _age(hours: float) -> str:
    if hours < 1:
        return f"{max(1, round(hours * 60))} min"
    if hours < 48:
        return f"{round(hours)} h"
    return f"{round(hours / 24)} days"


def _cat(f: ItemFacts) -> str:
    return f.category or "its category"


def _views(up: bool, v, f: ItemFacts) -> str:
    n = max(0, round(math.expm1(v)))
    if up:
        return f"popular right now ({_plural(n, 'recent interaction')})"
    return "no interactions yet" if n == 0 else f"few interactions so far ({n})"


def _ctr(up: bool, v, f: ItemFacts) -> str:
    return f"{'often' if up else 'rarely'} clicked when shown ({v:.0%} of impressions)"


def _recency(up: bool, v, f: ItemFacts) -> str:
    hours = math.expm1(v)
    if hours >= NEVER_HOURS * 0.999:
        return "new: nobody has interacted with it yet" if up else "nobody has interacted with it yet"
    return f"active right now (last interaction {_age(hours)} ago)" if up else \
        f"quiet lately (last interaction {_age(hours)} ago)"


def _session_length(up: bool, v, f: ItemFacts) -> str:
    n = max(0, round(math.expm1(v)))
    return f"{'suits' if up else 'less suited to'} a session of {_plural(n, 'interaction')} like yours"


def _affinity(up: bool, v, f: ItemFacts) -> str:
    share = f" ({f.category_share:.0%} of your history)" if f.category_share is not None else ""
    if up and f.similar_in_session:
        return f"viewed {_plural(f.similar_in_session, 'similar item')} ({_cat(f)}) in this session"
    if up:
        return f"you often choose {_cat(f)}{share}"
    return f"you seldom choose {_cat(f)}{share}" if share else f"{_cat(f)} is new to you"


def _seq(up: bool, v, f: ItemFacts) -> str:
    return "follows on from what you viewed" if up else "does not follow on from what you viewed"


def _covis(up: bool, v, f: ItemFacts) -> str:
    return "often chosen right after what you viewed" if up else "seldom chosen right after what you viewed"


def _user(up: bool, v, f: ItemFacts) -> str:
    return "matches your taste as learnt from your past" if up else "unlike your taste as learnt from your past"


def _item(up: bool, v, f: ItemFacts) -> str:
    return "well liked overall" if up else "often passed over"


def _category(up: bool, v, f: ItemFacts) -> str:
    return f"{_cat(f)} items do well" if up else f"{_cat(f)} items do less well"


def _segment(up: bool, v, f: ItemFacts) -> str:
    return "popular in your segment" if up else "less popular in your segment"


def _content(up: bool, v, f: ItemFacts) -> str:
    return "similar in content to what you viewed" if up else "unlike what you viewed in content"


def _generic(name: str) -> Render:
    words = name.replace("_", " ")

    def render(up: bool, v, f: ItemFacts) -> str:
        value = "" if v is None else f" ({v:.3g})"
        return f"{words}{value} {'raised' if up else 'lowered'} the score"

    return render


# --- the one table ---------------------------------------------------------------- #
@dataclass(frozen=True)
class Feature:
    """A dense feature's words and its no-information value (fallback baseline)."""

    render: Render
    neutral: float = 0.0


FEATURES: dict[str, Feature] = {
    "item_log_views": Feature(_views, 0.0),                        # never interacted with
    "item_ctr": Feature(_ctr, 0.1),                                # the smoothing prior (0 + 1) / (0 + 10)
    "item_recency": Feature(_recency, math.log1p(NEVER_HOURS)),    # never interacted with
    "session_length": Feature(_session_length, 0.0),               # a new session
    "category_affinity": Feature(_affinity, 0.1),                  # a user with no history
    "seq_score": Feature(_seq, 0.0),                               # no sequence model
    "covis_score": Feature(_covis, 0.0),                           # never co-visited with the session's items
}
"""Dense features by name. Serving's `features.DENSE_FEATURES` and the trainer's (`trainer/dcn.py`) list the
same names: the trainer's is what a version is trained on (copied into its meta), serving's what the scorer can
compute; explanations follow the version's meta."""
PATTERNS: tuple[tuple[str, Feature], ...] = (
    ("*segment*", Feature(_segment)),
    ("*content*", Feature(_content)),
    ("*text*", Feature(_content)),
)
"""Words for features added later, by name pattern; anything else gets a generic sentence."""
ID_GROUPS: dict[str, tuple[str, Render]] = {
    "user_h1": ("user", _user), "user_h2": ("user", _user),
    "item_h1": ("item", _item), "item_h2": ("item", _item),
    "category": ("category", _category),
}
"""Sparse (hashed id) fields of the ranker's ``sparse`` input, by the group they belong to."""
SPARSE_FIELDS = ("user_h1", "user_h2", "item_h1", "item_h2", "category")
"""Column order of ``sparse`` when a version's meta does not list it (`Ranker.sparse` builds this order)."""


def feature_words(name: str) -> Feature:
    """The table's entry for a dense feature: exact name, then pattern, then generic."""
    if name in FEATURES:
        return FEATURES[name]
    for pattern, feature in PATTERNS:
        if fnmatch.fnmatch(name, pattern):
            return feature
    return Feature(_generic(name))


@dataclass(frozen=True)
class Group:
    """One feature group of a served ranker: its input columns and their baseline."""

    name: str
    render: Render
    sparse_cols: tuple[int, ...] = ()
    dense_cols: tuple[int, ...] = ()
    baseline: tuple[float, ...] = ()
    """Per dense column: the value that neutralises it."""
    baseline_source: str = "unknown id"


def groups_of(meta, dense_features: Sequence[str]) -> list[Group]:
    """The feature groups of a ranker version, from its meta and the table above."""
    extra = getattr(meta, "extra", {}) or {}
    means = extra.get("dense_baseline") or {}
    sparse_fields = list(extra.get("sparse_fields") or SPARSE_FIELDS)
    ids: dict[str, list[int]] = defaultdict(list)
    renders: dict[str, Render] = {}
    for col, field_name in enumerate(sparse_fields):
        group, render = ID_GROUPS.get(field_name, (field_name, _generic(field_name)))
        ids[group].append(col)
        renders[group] = render
    out = [Group(g, renders[g], sparse_cols=tuple(cols)) for g, cols in ids.items()]
    for col, name in enumerate(dense_features):
        words = feature_words(name)
        if name in means:
            value, source = float(means[name]), "training mean"
        else:
            value, source = words.neutral, "declared neutral value"
        out.append(Group(name, words.render, dense_cols=(col,), baseline=(value,), baseline_source=source))
    return out


class Explainer:
    """Leave-one-group-out attributions for one loaded ranker version (`streamrec.serving.ranking.Ranker`)."""

    def __init__(self, ranker):
        self.ranker = ranker
        self.groups = groups_of(ranker.meta, ranker.dense_features)
        fallback = [g.name for g in self.groups if g.baseline_source == "declared neutral value"]
        if fallback:
            log.info("%s: no training means in meta.json for %s; explaining against their declared "
                     "no-information values", ranker.name, fallback)

    def neutralise(self, group: Group, sparse: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the inputs with ``group`` at its baseline."""
        sparse, dense = sparse.copy(), dense.copy()
        if group.sparse_cols:
            sparse[:, list(group.sparse_cols)] = 0
        if group.dense_cols:
            dense[:, list(group.dense_cols)] = np.asarray(group.baseline, dtype=dense.dtype)
        return sparse, dense

    def effects(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """``[groups, n]`` score deltas (score minus score with the group neutralised), one ranker run."""
        n, g = sparse.shape[0], len(self.groups)
        if n == 0:
            return np.zeros((g, 0))
        copies = [(sparse, dense)] + [self.neutralise(grp, sparse, dense) for grp in self.groups]
        prob = self.ranker.score(np.concatenate([s for s, _ in copies]),
                                 np.concatenate([d for _, d in copies])).astype(np.float64).reshape(g + 1, n)
        return prob[0][None, :] - prob[1:]

    def explain(self, sparse: np.ndarray, dense: np.ndarray, facts: Sequence[ItemFacts],
                top: int = 3) -> list[list[Contribution]]:
        """Per row: up to ``top`` groups by effect size (largest first; ties by name), in plain words."""
        effect = self.effects(sparse, dense)
        # Largest |effect| first, ties by group name: a stable sort over groups already in name order.
        by_name = np.array(sorted(range(len(self.groups)), key=lambda g: self.groups[g].name), dtype=np.int64)
        order = by_name[np.argsort(-np.abs(effect[by_name]), axis=0, kind="stable")[:max(top, 0)]]
        out = []
        for j, fact in enumerate(facts):
            reasons = []
            for g in order[:, j].tolist():
                e = float(effect[g, j])
                if abs(e) < MIN_EFFECT:
                    break
                grp = self.groups[g]
                value = float(dense[j, grp.dense_cols[0]]) if grp.dense_cols else None
                reasons.append(Contribution(group=grp.name, direction="up" if e > 0 else "down",
                                            effect=round(e, 6), text=grp.render(e > 0, value, fact)))
            out.append(reasons)
        return out


_explainers: "weakref.WeakKeyDictionary[object, Explainer]" = weakref.WeakKeyDictionary()


def explainer_for(ranker) -> Explainer:
    """The explainer of a loaded ranker (built once per version, dropped with it)."""
    ex = _explainers.get(ranker)
    if ex is None:
        ex = _explainers[ranker] = Explainer(ranker)
    return ex


class RankedInputs(NamedTuple):
    """One request's ranker inputs, one row per candidate (in the request's candidate order)."""

    ranker: object
    sparse: np.ndarray
    dense: np.ndarray
    categories: list[str]


def explain_slates(recs: Sequence, candidates: Sequence, ranked: Sequence[RankedInputs | None],
                   contexts: Sequence, categories: dict[str, str], top: int) -> int:
    """Fill ``explanation`` of every ranked item of ``recs`` in place; one ranker run per ranker.

    ``candidates``, ``ranked`` and ``contexts`` are per request, as the engine
    built them (`Candidates`, `RankedInputs` or None when no ranker scored the
    request, `RequestContext`); ``categories``: known categories of session
    items. Returns the number of items explained.
    """
    jobs: dict[object, list] = defaultdict(list)
    for rec, cand, inputs, ctx in zip(recs, candidates, ranked, contexts):
        if inputs is None:
            continue
        pos = {item: j for j, item in enumerate(cand.items)}
        in_session = Counter(categories.get(i, "") for i in ctx.session_items)
        for item in rec.items:
            j = pos.get(item.item_id)
            if j is None:
                continue
            cat = inputs.categories[j]
            facts = ItemFacts(category=cat, similar_in_session=in_session[cat] if cat else 0,
                              category_share=ctx.affinity.get(cat) if cat else None)
            jobs[inputs.ranker].append((item, inputs.sparse[j], inputs.dense[j], facts))
    for ranker, rows in jobs.items():
        reasons = explainer_for(ranker).explain(np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows]),
                                                [r[3] for r in rows], top)
        for (item, *_), why in zip(rows, reasons):
            item.explanation = why
    return sum(len(rows) for rows in jobs.values())
