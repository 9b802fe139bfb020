"""The scorer core alone: the engine on features from memory (no Kafka, no Redis).

The part of `streamrec bench serve` to run on a GPU: requests/s at a given
number of candidates, and the time per stage, with the models of a registry.
"""

from __future__ import annotations

import time

import numpy as np

from streamrec.registry import Registry
from streamrec.serving import metrics
from streamrec.serving.config import ScorerConfig
from streamrec.serving.engine import Engine
from streamrec.serving.features import ItemStats, RequestContext
from streamrec.serving.models import ModelStore
from streamrec.settings import Settings
from streamrec.stream.schemas import ScoreRequest

STAGES = ("redis_read", "retrieval", "ranking")


def bench_config(candidates: int, batch: int) -> ScorerConfig:
    """Source sizes that fill ``candidates`` after de-duplication."""
    return ScorerConfig(batch_max=batch, max_candidates=candidates, seq_candidates=candidates // 2 + 20,
                        covis_candidates=min(50, candidates // 4), trending_candidates=candidates, seed=0)


class MemoryFeatures:
    """The `FeatureReader` interface over synthetic in-memory features (no Redis)."""

    def __init__(self, items: list[str], seed: int = 0, sessions: int = 5000):
        rng = np.random.default_rng(seed)
        self.items = items
        n = len(items)
        self.categories = {it: f"c{k % 50}" for k, it in enumerate(items)}
        pop = rng.zipf(1.3, size=20 * sessions) % n
        self.sessions = [[items[j] for j in pop[k * 20: k * 20 + int(rng.integers(1, 20))]] for k in range(sessions)]
        order = np.argsort(-np.bincount(pop, minlength=n))
        self.trending = [(items[j], float(n - r)) for r, j in enumerate(order[:5000])]
        self.covis = {it: [(items[j], float(w)) for j, w in zip(rng.integers(0, n, 50), rng.random(50))]
                      for it in items}
        self.index = {it: k for k, it in enumerate(items)}
        self.views = rng.integers(0, 1000, n).astype(float)
        self.last_ts = time.time() * 1000 - rng.integers(0, 10**8, n)

    def contexts(self, requests, trending_n):
        out = []
        for r in requests:
            items = self.sessions[int(r.session_id) % len(self.sessions)]
            out.append(RequestContext(r, session_items=list(dict.fromkeys(items)), seen=set(items),
                                      session_positive=len(items), user_positive=3 * len(items),
                                      affinity={"c1": 0.5, "c2": 0.5}, known=True))
        return out, self.trending[:trending_n]

    def covisitation(self, items, per_item, now_ms, categories_of=()):
        return {it: self.covis.get(it, [])[:per_item] for it in items}

    def item_stats(self, items, with_stats=True):
        s = ItemStats.empty(items)
        rows = np.array([self.index.get(i, 0) for i in items])
        s.views, s.clicks, s.impressions = self.views[rows], self.views[rows] / 10, self.views[rows] * 2
        s.last_ts = self.last_ts[rows]
        s.categories = [self.categories.get(i, "") for i in items]
        return s


def _stage_sums() -> dict[str, float]:
    return {st: metrics.stage.labels(st)._sum.get() for st in STAGES}


def _onnx_seconds() -> float:
    """Seconds spent inside ONNX Runtime so far, every graph together."""
    return sum(sample.value for metric in metrics.onnx_seconds.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def core(settings: Settings, registry_uri: str, candidates: int, batch: int, seconds: float) -> dict:
    """Requests/s of the engine alone, features from memory."""
    cfg = bench_config(candidates, batch)
    store = ModelStore(settings, cfg)
    for ann in Registry(registry_uri).announcements():
        store.offer(ann)
    store.swap_pending()
    seq = store.live.get(cfg.seq_model)
    items = list(seq.item_ids) if seq is not None else [f"i{k}" for k in range(5000)]
    if len(items) < candidates * 2:  # enough distinct items to fill every request
        items += [f"x{k}" for k in range(candidates * 2 - len(items))]
    engine = Engine(MemoryFeatures(items), store, cfg)
    reqs = [ScoreRequest(event_id=f"e{k}", user_id=f"u{k}", session_id=str(k), item_id=items[k % len(items)],
                         type="view", ts=int(time.time() * 1000), feature_version=1) for k in range(batch)]
    engine.recommend(reqs)  # warm caches
    before, onnx_before, done = _stage_sums(), _onnx_seconds(), 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        recs = engine.recommend(reqs)
        done += len(recs)
    elapsed = time.perf_counter() - start
    after, onnx_us = _stage_sums(), (_onnx_seconds() - onnx_before) / done * 1e6
    per_req = {st: round((after[st] - before[st]) / done * 1e6, 1) for st in STAGES}
    return {"requests_per_s": round(done / elapsed), "batch": batch, "candidates": candidates,
            "us_per_request_in_onnx": round(onnx_us, 1),
            "us_per_request_outside_onnx": round(elapsed / done * 1e6 - onnx_us, 1),
            "models": [m.name for m in store.models_for(cfg.arms[0]) if m is not None],
            "providers": {n: m.provider for n, m in store.live.items()},
            "us_per_request_by_stage": per_req, "seconds": round(elapsed, 1)}
