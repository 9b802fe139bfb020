"""The scoring core: a batch of score requests in, one recommendation per request out.

No Kafka here (the service in `streamrec.serving.scorer` feeds it; the HTTP
pull API and the core benchmark call it directly). Per batch:

1. features round trip 1 (sessions, users, trending) -> contexts;
2. sequence model: user vectors for the batch in one ONNX run, exact top-K;
   co-visitation of each session's recent items (round trip 2);
   content: items nearest the trigger item, for cold users;
3. merge, de-duplicate, filter (session items, removed items: round trip 3);
4. ranker: every (request, candidate) pair of the batch in one ONNX run;
5. the serving policy picks the slate and each item's propensity.

Degraded modes: no model -> candidates scored by their source (co-visitation
weight, then trending); Redis failing -> the in-memory trending snapshot,
``degraded=true``; a user Redis knows nothing of -> cold start (trending and
content).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from itertools import chain
from typing import Sequence

import numpy as np

from streamrec.serving import ab, metrics
from streamrec.serving.candidates import (CONTENT, SEQ, TRENDING, Candidates, CovisTable, Source, covisitation,
                                          merge)
from streamrec.serving.config import ScorerConfig
from streamrec.serving.exploration import choose
from streamrec.serving.features import FeatureReader, dense_matrix
from streamrec.serving.models import ModelStore
from streamrec.stream.schemas import Recommendation, RecommendedItem, ScoreRequest

log = logging.getLogger(__name__)


class Engine:
    """Scores batches; thread-safe for concurrent `recommend` calls (Kafka loop and HTTP)."""

    def __init__(self, reader: FeatureReader, models: ModelStore, config: ScorerConfig):
        self.reader = reader
        self.models = models
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.snapshot: list[tuple[str, float]] = []
        self.snapshot_at = 0.0
        self.redis_ok = True
        self._redis_retry_at = 0.0

    # ------------------------------------------------------------------ #
    def recommend(self, requests: Sequence[ScoreRequest], now_ms: int | None = None) -> list[Recommendation]:
        """One recommendation per request, in order. Never raises for Redis or model trouble."""
        if not requests:
            return []
        now_ms = now_ms or int(time.time() * 1000)
        if time.monotonic() >= self._redis_retry_at:
            try:
                return self._full(requests, now_ms)
            except Exception as exc:  # noqa: BLE001 - every request gets an answer, whatever failed
                if _is_redis_error(exc):
                    log.warning("Redis unavailable (%s); serving the trending snapshot", exc)
                    self.redis_ok = False
                    metrics.redis_up.set(0)
                    self._redis_retry_at = time.monotonic() + self.config.redis_retry_s
                else:  # a bug or a model failing at run time: answer from the snapshot, loudly
                    log.exception("scoring a batch of %d failed; serving the trending snapshot", len(requests))
                    metrics.failed.labels(type(exc).__name__).inc(len(requests))
                    return self._degraded(requests, now_ms, "scoring_error")
        return self._degraded(requests, now_ms, "redis_down")

    # ------------------------------------------------------------------ #
    def _full(self, requests: Sequence[ScoreRequest], now_ms: int) -> list[Recommendation]:
        cfg = self.config
        t0 = time.perf_counter()
        trending_n = max(cfg.trending_candidates, cfg.top_n * 5)
        contexts, trending = self.reader.contexts(requests, trending_n)
        self.redis_ok = True
        metrics.redis_up.set(1)
        if trending:
            self.snapshot, self.snapshot_at = trending, time.monotonic()
        # Round trip 2: co-visitation of recent items, categories of session items.
        recent = list(dict.fromkeys(i for c in contexts for i in c.recent(cfg.recent_items)))
        session_items = [i for c in contexts for i in c.session_items]
        arms = [ab.arm_of(r.user_id, cfg.arms) for r in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, arm in enumerate(arms):
            groups[arm.name].append(i)
        models = {arm.name: self.models.models_for(arm) for arm in arms}
        any_seq = any(m[0] is not None for m in models.values())
        covis = CovisTable(self.reader.covisitation(recent, cfg.covis_candidates, now_ms,
                                                    session_items if any_seq else ()))
        t1 = time.perf_counter()
        metrics.observe_stage("redis_read", t1 - t0)

        # Candidates per request.
        trend_src = Source(TRENDING, [i for i, _ in trending], [s for _, s in trending])
        sources: list[list[Source]] = [[] for _ in requests]
        user_vecs: dict[int, np.ndarray] = {}
        for arm_name, idx in groups.items():
            seq, _ = models[arm_name]
            if seq is None:
                continue
            cats = self.reader.categories
            seqs = [contexts[i].session_items for i in idx]
            vecs = seq.user_vectors(seqs, cats)
            self.models.samples["sasrec"] = (seqs[:64], cats)
            extra = max(len(contexts[i].seen) for i in idx)
            top, _scores = seq.retrieve(vecs, cfg.seq_candidates + extra)
            ids = seq.item_array
            for j, i in enumerate(idx):
                user_vecs[i] = vecs[j]
                sources[i].append(Source(SEQ, ids[top[j]].tolist()))
            cold = [i for i in idx if requests[i].item_id
                    and (not contexts[i].known or len(contexts[i].session_items) <= 1)]
            if cold and cfg.content_candidates:
                trig = [requests[i].item_id for i in cold]
                tv = seq.item_vectors(trig, [cats.get(t, "") for t in trig])
                near, _ = seq.index.search(tv, cfg.content_candidates + 1)
                for j, i in enumerate(cold):
                    sources[i].append(Source(CONTENT, ids[near[j]].tolist()))
        cands: list[Candidates] = []
        for i, ctx in enumerate(contexts):
            cv = covisitation(covis, ctx.recent(cfg.recent_items), cfg.covis_candidates)
            exclude = ctx.seen | {ctx.request.item_id}
            # Priority of reasons: the session's own co-visitation, then the model, then the crowd.
            cands.append(merge([cv, *sources[i], trend_src], exclude, cfg.max_candidates))
        t2 = time.perf_counter()
        metrics.observe_stage("retrieval", t2 - t1)

        # Round trip 3: removed items, stats and categories for the ranker.
        unique = list(dict.fromkeys(chain.from_iterable(c.items for c in cands)))
        any_ranker = any(m[1] is not None for m in models.values())
        stats = self.reader.item_stats(unique, with_stats=any_ranker)
        if stats.removed.any():
            gone = {unique[j] for j in np.flatnonzero(stats.removed)}
            cands = [_drop(c, gone) for c in cands]
        t3 = time.perf_counter()
        metrics.observe_stage("redis_read", t3 - t2)

        scores: list[np.ndarray] = [_source_scores(c) for c in cands]
        for arm_name, idx in groups.items():
            seq, ranker = models[arm_name]
            if ranker is None:
                continue
            sizes = [len(cands[i]) for i in idx]
            if not sum(sizes):
                continue
            owner = np.repeat(np.arange(len(idx)), sizes)
            items = list(chain.from_iterable(cands[i].items for i in idx))
            # Everything per pair is gathered from per-item and per-request arrays (no Python per pair).
            rows = np.fromiter(map(stats.index.__getitem__, items), dtype=np.int64, count=len(items))
            sub = [contexts[i] for i in idx]
            seq_score = None
            if seq is not None and "seq_score" in ranker.dense_features:
                uv = np.stack([user_vecs[i] for i in idx])
                iv = seq.item_vectors(unique, stats.categories)
                seq_score = np.einsum("nd,nd->n", uv[owner], iv[rows])
            dense = dense_matrix(ranker.dense_features, stats, rows, sub, owner, seq_score)
            users = [requests[i].user_id for i in idx]
            sparse = np.concatenate([ranker.users(users)[owner], ranker.items(unique)[rows],
                                     ranker.cats(stats.categories)[rows]], axis=1)
            prob = ranker.score(sparse, dense)
            cats = stats.categories
            self.models.samples["dcn"] = ([users[o] for o in owner[:256].tolist()], items[:256],
                                          [cats[r] for r in rows[:256].tolist()], dense[:256])
            bounds = np.cumsum([0] + sizes)
            for k, i in enumerate(idx):
                scores[i] = prob[bounds[k]:bounds[k + 1]]
        t4 = time.perf_counter()
        metrics.observe_stage("ranking", t4 - t3)

        out = []
        for i, r in enumerate(requests):
            seq, ranker = models[arms[i].name]
            used = [m.name for m in (seq, ranker) if m is not None]
            if not used:
                metrics.degraded.labels("no_model").inc()
            if not contexts[i].known:
                metrics.degraded.labels("cold_start").inc()
            if i % 8 == 0:  # a sample describes the distribution; counting every request costs throughput
                for source, n in cands[i].counts().items():
                    metrics.candidates.labels(source).observe(n)
            out.append(self._slate(r, cands[i], scores[i], used, arms[i].name, now_ms, degraded=False))
        return out

    def _degraded(self, requests: Sequence[ScoreRequest], now_ms: int, mode: str) -> list[Recommendation]:
        """Redis is down (or scoring failed): the last trending snapshot, minus the trigger item."""
        src = Source(TRENDING, [i for i, _ in self.snapshot], [s for _, s in self.snapshot])
        out = []
        for r in requests:
            c = merge([src], {r.item_id}, self.config.max_candidates)
            metrics.degraded.labels(mode).inc()
            out.append(self._slate(r, c, _source_scores(c), [], ab.arm_of(r.user_id, self.config.arms).name,
                                   now_ms, degraded=True))
        return out

    def _slate(self, r: ScoreRequest, c: Candidates, scores: np.ndarray, models: list[str], variant: str,
               now_ms: int, degraded: bool) -> Recommendation:
        cfg = self.config
        idx, prop, explored = choose(scores, cfg.top_n, cfg.exploration, epsilon=cfg.epsilon,
                                     temperature=cfg.temperature, rng=self.rng)
        items = [RecommendedItem(item_id=c.items[j], score=float(scores[j]), propensity=float(p),
                                 reason="explore" if e else c.reasons[j])
                 for j, p, e in zip(idx.tolist(), prop.tolist(), explored.tolist())]
        return Recommendation(rec_id=uuid.uuid4().hex, user_id=r.user_id, session_id=r.session_id,
                              trigger_event_id=r.event_id, items=items, models=models, variant=variant,
                              event_ts=r.ts, created_ts=int(time.time() * 1000), degraded=degraded)


def _drop(c: Candidates, gone: set[str]) -> Candidates:
    keep = [j for j, it in enumerate(c.items) if it not in gone]
    return Candidates([c.items[j] for j in keep], [c.reasons[j] for j in keep])


def _source_scores(c: Candidates) -> np.ndarray:
    """Without a ranker: the merge order is the ranking (1, 1/2, 1/3, ...)."""
    return 1.0 / np.arange(1, len(c) + 1, dtype=np.float64)


def _is_redis_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            redis.exceptions.BusyLoadingError, redis.exceptions.RedisClusterException,
                            redis.exceptions.ClusterDownError, OSError))
