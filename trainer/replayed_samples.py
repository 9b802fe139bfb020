"""Ranker samples for histories without impressions, built from what the scorer would have seen.

A log of views, ratings or purchases says what each user chose next, not what
they were shown. The ranker must still learn to order the scorer's candidates,
so each chosen item is set against items the scorer would have proposed in its
place, with the features the scorer would have computed then:

1. the whole history is replayed in time order into a
   `streamrec.stream.memory_store.MemoryFeatureStore` (the worker's writes),
   read through the scorer's own `MemoryFeatureReader`;
2. before each sampled positive event, the context of the user's previous event
   (the score request the scorer answered just before the choice) is read;
3. the candidates are the top of each source at that moment: the session's
   co-visitation list, the sequence model's top items for the user (when a
   model is given) and trending. A choice outside them is no sample: the
   ranker orders the candidates and cannot serve what is not among them.
   Negatives are drawn from the same candidates;
4. the dense features of the chosen item and of every negative come from
   `streamrec.serving.features.dense_matrix` on the same reads, with the
   co-visitation weights the engine would pass (``covis_score``).

Both shortcuts tried first failed on ML-100K (`streamrec evaluate --served`,
2026-12-07). Negatives drawn by popularity alone taught the ranker that popular
items are unlikely choices: the slate lost half the hits of either source alone.
Negatives from the top of each source, set against choices from anywhere,
taught it that a strong co-visitation or sequence score means "not chosen"
(the best candidates look better than a choice the sources missed): worse
still. Sampling is conditional on the candidates, as serving is.

Held-out events (each evaluated user's last two positives) are applied to the
state, as time passes for everyone, but never become samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from streamrec.serving.candidates import CovisTable, covisitation
from streamrec.serving.features import dense_matrix
from streamrec.trainer.data import POSITIVE_TYPES, Interactions
from streamrec.trainer.dcn import DENSE_FEATURES
from streamrec.trainer.features import RankerSamples


@dataclass(frozen=True)
class SampleConfig:
    """How many samples, and which negatives."""

    max_positives: int = 40_000
    """Positive events sampled at most (evenly at random); the replay itself covers every event."""
    candidate_negatives: int = 6
    """Negatives drawn from the candidates."""
    source_top: int = 50
    """The candidates: the top this many of each source that the scorer could serve."""
    seed: int = 0


def replayed_samples(inter: Interactions, settings, held_out: set[tuple[str, int]], seq_model=None,
                     catalog: Sequence[str] = (), cfg: SampleConfig = SampleConfig()) -> RankerSamples:
    """Labelled candidates with serving-time features (see the module docstring).

    ``settings``: the worker's and the scorer's settings (session gap, decay, candidate counts);
    ``held_out``: (user, n) for the user's n-th positive event (0-based) that must not become a sample;
    ``seq_model``: a trained `SASRec` over ``catalog`` whose top items join the negatives' sources.
    """
    from streamrec.serving.config import ScorerConfig
    from streamrec.serving.memory_features import MemoryFeatureReader
    from streamrec.stream.keys import FeatureConfig
    from streamrec.stream.memory_store import MemoryFeatureStore
    from streamrec.trainer.served_eval import history_events

    rng = np.random.default_rng(cfg.seed)
    scorer = ScorerConfig.from_settings(settings)
    events = history_events(inter)
    positives = sum(ev.type in POSITIVE_TYPES for ev in events)
    keep = min(1.0, cfg.max_positives / max(positives, 1))
    store = MemoryFeatureStore(FeatureConfig.from_settings(settings), inter.categories)
    reader = MemoryFeatureReader(store, history_items=scorer.history_items)
    retrieve = None
    if seq_model is not None:
        retrieve = _retriever(seq_model, list(catalog), inter.categories, scorer.seq_candidates)
    out = _Collector()
    last_request, count = {}, {}
    for ev in events:
        positive = ev.type in POSITIVE_TYPES
        n = count.get(ev.user_id, 0)
        request = last_request.get(ev.user_id)
        if positive and request is not None and (ev.user_id, n) not in held_out and rng.random() < keep:
            _emit(out, reader, request, ev.item_id, retrieve, scorer, cfg, rng)
        last_request[ev.user_id] = store.apply(ev)
        if positive:
            count[ev.user_id] = n + 1
    return out.samples()


def _retriever(model, catalog: list[str], categories: dict[str, str], k: int):
    """The sequence model's top-``k`` catalog items for one history (as the scorer retrieves them)."""
    import torch

    model.eval()
    with torch.no_grad():
        vectors = model.catalog_vectors().numpy()
    ids = catalog

    def top(history: list[str]) -> list[str]:
        items, cats = model.encode_sequences([history], categories)
        with torch.no_grad():
            user = model(torch.from_numpy(items), torch.from_numpy(cats)).numpy()[0]
        scores = vectors @ user
        best = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        return [ids[j] for j in best[np.argsort(-scores[best])]]
    return top


def _emit(out: "_Collector", reader, request, chosen: str, retrieve, scorer, cfg: SampleConfig,
          rng: np.random.Generator) -> None:
    """The chosen item and its negatives, with the features as of ``request`` (``scorer``: a `ScorerConfig`)."""
    (ctx,), trending = reader.contexts([request], scorer.trending_candidates)
    recent = ctx.recent(scorer.recent_items)
    table = CovisTable(reader.covisitation(recent, scorer.covis_candidates, request.ts))
    cv = covisitation(table, recent, scorer.covis_candidates)
    exclude = ctx.seen | {request.item_id}  # what the scorer never serves
    sources = [cv.items, [i for i, _ in trending]]
    if retrieve is not None and ctx.sequence:
        sources.append(retrieve(ctx.sequence))
    candidates = dict.fromkeys(i for items in sources for i in _top_unseen(items, exclude, cfg.source_top))
    if chosen not in candidates:
        return
    pool = [i for i in candidates if i != chosen]
    if not pool:
        return
    negatives = [pool[j] for j in rng.permutation(len(pool))[:cfg.candidate_negatives]]
    items = [chosen, *negatives]
    stats = reader.item_stats(list(dict.fromkeys(items)))
    rows = np.array([stats.index[i] for i in items], dtype=np.int64)
    weights = dict(zip(cv.items, cv.scores))
    covis = np.array([weights.get(i, 0.0) for i in items])
    dense = dense_matrix(DENSE_FEATURES, stats, rows, [ctx], np.zeros(len(items), dtype=np.int64),
                         covis_score=covis)
    out.add(request.user_id, items, [stats.categories[r] for r in rows], request.ts, dense, ctx.sequence)


def _top_unseen(items: Sequence[str], exclude: set[str], n: int) -> list[str]:
    """The first ``n`` of ``items`` (best first) that the scorer could serve."""
    out = []
    for item in items:
        if item not in exclude:
            out.append(item)
            if len(out) == n:
                break
    return out


class _Collector:
    """Rows of `RankerSamples`, one group (chosen item first, then its negatives) at a time."""

    def __init__(self):
        self.users, self.items, self.cats, self.ts, self.label, self.dense, self.prefix = [], [], [], [], [], [], []
        self.prefixes: list[list[str]] = []

    def add(self, user: str, items: list[str], cats: list[str], ts: int, dense: np.ndarray,
            sequence: list[str]) -> None:
        self.prefixes.append(list(sequence))
        k = len(items)
        self.users += [user] * k
        self.items += items
        self.cats += cats
        self.ts += [ts] * k
        self.label += [1.0] + [0.0] * (k - 1)
        self.dense.append(dense)
        self.prefix += [len(self.prefixes) - 1] * k

    def samples(self) -> RankerSamples:
        dense = np.concatenate(self.dense) if self.dense else np.zeros((0, len(DENSE_FEATURES)), np.float32)
        return RankerSamples(self.users, self.items, self.cats, np.array(self.ts, dtype=np.int64),
                             np.array(self.label, dtype=np.float32), dense.astype(np.float32),
                             np.array(self.prefix, dtype=np.int64), self.prefixes)
