"""The scoring core: a batch of score requests in, one recommendation per request out.

No Kafka here (the service in `streamrec.serving.scorer` feeds it; the HTTP
pull API and the core benchmark call it directly). Per batch:

1. features round trip 1 (sessions, users' earlier items, trending) -> contexts;
2. sequence model: user vectors for the batch in one ONNX run (input: the
   user's earlier items, then the session's), exact top-K;
   co-visitation of each session's recent items (round trip 2);
   content: items whose content vectors (text, category, tags) are nearest the
   session's recent items, new catalog items included (without a content
   model: items nearest the trigger item in the sequence model, for cold users);
3. merge, de-duplicate, filter (session items, removed items: round trip 3);
4. ranker: every (request, candidate) pair of the batch in one ONNX run;
5. the serving policy picks the slate and each item's propensity.

An A/B arm marked ``trending`` (the popularity baseline) skips 2 and 4: its
slate is the trending items the user has not seen.

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
from streamrec.serving.candidates import (CONTENT, GRAPH, SEQ, TRENDING, Candidates, ClickAttribution, CovisTable,
                                          Source, covisitation, merge, proposers)
from streamrec.serving.config import ScorerConfig
from streamrec.serving.content import ContentIndex, content_similar, session_profiles
from streamrec.serving.exploration import choose
from streamrec.serving.explain import RankedInputs, explain_slates
from streamrec.serving.features import FeatureReader, RequestContext, dense_matrix
from streamrec.serving.models import ModelStore
from streamrec.stream.schemas import SERVED_SESSION, Recommendation, RecommendedItem, ScoreRequest, ServedFeatures

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
        self.clicks = ClickAttribution(config.click_memory)
        self.content_index = ContentIndex(config.content_max_items)
        """Content vectors of the catalog, kept current by the scorer's `CatalogFollower`."""

    # ------------------------------------------------------------------ #
    def recommend(self, requests: Sequence[ScoreRequest], now_ms: int | None = None,
                  explain: bool | None = None, log_features: bool | None = None) -> list[Recommendation]:
        """One recommendation per request, in order. Never raises for Redis or model trouble.

        ``explain``: attach the ranker's feature attributions to each ranked item
        (`streamrec.serving.explain`); None follows ``config.explain_messages``. ``log_features``: put the
        ranker's inputs in each answer for the online trainer; None follows ``config.log_features`` (the
        HTTP pull API says False: its answers never reach the trainer).
        """
        explain = self.config.explain_messages if explain is None else explain
        log_features = self.config.log_features if log_features is None else log_features
        if not requests:
            return []
        self._attribute_clicks(requests)
        now_ms = now_ms or int(time.time() * 1000)
        if time.monotonic() >= self._redis_retry_at:
            try:
                return self._full(requests, now_ms, explain, log_features)
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
    def _full(self, requests: Sequence[ScoreRequest], now_ms: int, explain: bool = False,
              log_features: bool = False) -> list[Recommendation]:
        cfg = self.config
        t0 = time.perf_counter()
        trending_n = max(cfg.trending_candidates, cfg.top_n * 5)
        contexts, trending = self.reader.contexts(requests, trending_n)
        self.redis_ok = True
        metrics.redis_up.set(1)
        if trending:
            self.snapshot, self.snapshot_at = trending, time.monotonic()
        arms = [ab.arm_of(r.user_id, cfg.arms, cfg.ab_salt) for r in requests]
        # Round trip 2: co-visitation of recent items (not for trending arms), categories of the sequence
        # models' input items (the user's earlier items and the session's).
        recent = list(dict.fromkeys(i for c, a in zip(contexts, arms) if not a.trending
                                    for i in c.recent(cfg.recent_items)))
        sequence_items = [i for c in contexts for i in c.sequence]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, arm in enumerate(arms):
            groups[arm.name].append(i)
        models = {arm.name: self.models.models_for(arm) for arm in arms}
        any_seq = any(m[0] is not None for m in models.values())
        covis = CovisTable(self.reader.covisitation(recent, cfg.covis_candidates, now_ms,
                                                    sequence_items if any_seq or explain else ()))
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
            seqs = [contexts[i].sequence for i in idx]
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
            if cold and cfg.content_candidates and not len(self.content_index):
                trig = [requests[i].item_id for i in cold]
                tv = seq.item_vectors(trig, [cats.get(t, "") for t in trig])
                near, _ = seq.index.search(tv, cfg.content_candidates + 1)
                for j, i in enumerate(cold):
                    sources[i].append(Source(CONTENT, ids[near[j]].tolist()))
        graphs = self._graph_sources(contexts, groups, arms, sources) if cfg.graph_candidates else {}
        content_used: set[int] = set()
        content_model = self.models.content() if len(self.content_index) else None
        if cfg.content_candidates and content_model is not None:
            similar = content_similar(self.content_index, [c.recent(cfg.content_profile_items) for c in contexts],
                                      [cfg.content_candidates + len(c.seen) for c in contexts])
            for i, (items, sims) in enumerate(similar):
                if items and not arms[i].trending:
                    sources[i].append(Source(CONTENT, items, sims))
                    content_used.add(i)
        cands: list[Candidates] = []
        all_sources: list[list[Source]] = []
        covis_weights: list[dict[str, float]] = [{} for _ in requests]  # the ranker's covis_score input
        for i, ctx in enumerate(contexts):
            exclude = ctx.seen | {ctx.request.item_id}
            if arms[i].trending:  # the popularity baseline: the crowd only
                all_sources.append([trend_src])
                cands.append(merge(all_sources[i], exclude, cfg.max_candidates))
                continue
            cv = covisitation(covis, ctx.recent(cfg.recent_items), cfg.covis_candidates)
            covis_weights[i] = dict(zip(cv.items, cv.scores))
            # Priority of reasons: the session's own co-visitation, then the models, then the crowd.
            all_sources.append([cv, *sources[i], trend_src])
            cands.append(merge(all_sources[i], exclude, cfg.max_candidates))
        t2 = time.perf_counter()
        metrics.observe_stage("retrieval", t2 - t1)

        # Round trip 3: removed items, stats and categories for the ranker.
        unique = list(dict.fromkeys(chain.from_iterable(c.items for c in cands)))
        # A trending arm ranks nothing, but its slates train the online trainer too: with feature logging
        # on, its candidates get the live ranker's inputs (logged only), so the trainer never has to read
        # them back from Redis after the user reacted.
        log_only = self.models.live.get(self.models.config.ranker_model) if log_features else None
        rankers = {arm.name: (log_only, False) if arm.trending else (models[arm.name][1], True) for arm in arms}
        any_ranker = any(r is not None for r, _ in rankers.values())
        stats = self.reader.item_stats(unique, with_stats=any_ranker)
        if stats.removed.any():
            gone = {unique[j] for j in np.flatnonzero(stats.removed)}
            cands = [_drop(c, gone) for c in cands]
        t3 = time.perf_counter()
        metrics.observe_stage("redis_read", t3 - t2)

        scores: list[np.ndarray] = [_source_scores(c) for c in cands]
        profiles = unique_vecs = None
        ranked: list[RankedInputs | None] = [None] * len(requests)
        served: list[tuple[list[str], np.ndarray] | None] = [None] * len(requests)
        for arm_name, idx in groups.items():
            seq = models[arm_name][0]
            ranker, rank = rankers[arm_name]
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
            content_sim = None
            if content_model is not None and ranker.meta.extra.get("content_sim_trained") \
                    and "content_sim" in ranker.dense_features:
                if profiles is None:  # once per batch: sessions' content profiles, candidates' vectors
                    profiles = session_profiles(self.content_index,
                                                [c.recent(cfg.content_profile_items) for c in contexts])
                    unique_vecs = self.content_index.vectors_of(unique)[0]
                content_sim = np.einsum("nd,nd->n", profiles[np.asarray(idx)][owner], unique_vecs[rows])
            covis_score = None
            if "covis_score" in ranker.dense_features:
                weights = [covis_weights[i] for i in idx]
                covis_score = np.fromiter((weights[o].get(it, 0.0) for o, it in zip(owner.tolist(), items)),
                                          dtype=np.float64, count=len(items))
            dense = dense_matrix(ranker.dense_features, stats, rows, sub, owner, seq_score, content_sim, covis_score)
            bounds = np.cumsum([0] + sizes)
            if not rank:
                for k, i in enumerate(idx):
                    served[i] = (ranker.dense_features, dense[bounds[k]:bounds[k + 1]])
                continue
            users = [requests[i].user_id for i in idx]
            sparse = np.concatenate([ranker.users(users)[owner], ranker.items(unique)[rows],
                                     ranker.cats(stats.categories)[rows]], axis=1)
            prob = ranker.score(sparse, dense)
            cats = stats.categories
            self.models.samples["dcn"] = ([users[o] for o in owner[:256].tolist()], items[:256],
                                          [cats[r] for r in rows[:256].tolist()], dense[:256])
            for k, i in enumerate(idx):
                scores[i] = prob[bounds[k]:bounds[k + 1]]
                if log_features:
                    served[i] = (ranker.dense_features, dense[bounds[k]:bounds[k + 1]])
                if explain:  # keep each request's ranker inputs for the explanation run
                    b, e = bounds[k], bounds[k + 1]
                    ranked[i] = RankedInputs(ranker, sparse[b:e], dense[b:e], [cats[r] for r in rows[b:e].tolist()])
        t4 = time.perf_counter()
        metrics.observe_stage("ranking", t4 - t3)

        out = []
        for i, r in enumerate(requests):
            seq, ranker = models[arms[i].name]
            used = [m.name for m in (seq, ranker) if m is not None]
            if arms[i].name in graphs:
                used.append(graphs[arms[i].name])
            if i in content_used:
                used.append(content_model.name)
            if not used and not arms[i].trending:
                metrics.degraded.labels("no_model").inc()
            if not contexts[i].known:
                metrics.degraded.labels("cold_start").inc()
            if i % 8 == 0:  # a sample describes the distribution; counting every request costs throughput
                for source, n in cands[i].counts().items():
                    metrics.candidates.labels(source).observe(n)
            rec = self._slate(r, cands[i], scores[i], used, arms[i].name, now_ms, degraded=False,
                              segment=contexts[i].segment, served=served[i], context=contexts[i])
            self.clicks.remember(rec.rec_id, proposers(all_sources[i], [it.item_id for it in rec.items]))
            out.append(rec)
        if explain:
            explain_slates(out, cands, ranked, contexts, self.reader.categories, cfg.explain_top)
            metrics.observe_stage("explain", time.perf_counter() - t4)
        return out

    def _graph_sources(self, contexts, groups: dict[str, list[int]], arms, sources) -> dict[str, str]:
        """Append the graph model's candidates (folded-in session vector, top-K) to each request's sources;
        returns the graph model's name per arm that has one."""
        cfg = self.config
        used = {}
        for arm_name, idx in groups.items():
            graph = self.models.graph_for(next(a for a in arms if a.name == arm_name))
            if graph is None:
                continue
            used[arm_name] = graph.name
            seqs = [contexts[i].sequence for i in idx]
            self.models.samples[graph.kind] = (seqs[:64],)
            vecs = graph.user_vectors(seqs)
            extra = max(len(contexts[i].seen) for i in idx)
            top, _scores = graph.retrieve(vecs, cfg.graph_candidates + extra)
            ids = graph.item_array
            for j, i in enumerate(idx):
                if vecs[j].any():  # no item of the session is in the graph: nothing to propose
                    sources[i].append(Source(GRAPH, ids[top[j]].tolist()))
        return used

    def _attribute_clicks(self, requests: Sequence[ScoreRequest]) -> None:
        """Count, per candidate source, the clicked items of remembered recommendations it proposed."""
        for r in requests:
            if r.type != "click" or not r.rec_id:
                continue
            by = self.clicks.clicked(r.rec_id, r.item_id)
            if by is None:
                continue
            metrics.attributed_clicks.inc()
            for source in by:
                metrics.proposed_clicks.labels(source).inc()

    def _degraded(self, requests: Sequence[ScoreRequest], now_ms: int, mode: str) -> list[Recommendation]:
        """Redis is down (or scoring failed): the last trending snapshot, minus the trigger item."""
        src = Source(TRENDING, [i for i, _ in self.snapshot], [s for _, s in self.snapshot])
        out = []
        for r in requests:
            c = merge([src], {r.item_id}, self.config.max_candidates)
            metrics.degraded.labels(mode).inc()
            arm = ab.arm_of(r.user_id, self.config.arms, self.config.ab_salt)
            out.append(self._slate(r, c, _source_scores(c), [], arm.name, now_ms, degraded=True))
        return out

    def _slate(self, r: ScoreRequest, c: Candidates, scores: np.ndarray, models: list[str], variant: str,
               now_ms: int, degraded: bool, segment: int | None = None,
               served: tuple[list[str], np.ndarray] | None = None, context: RequestContext | None = None
               ) -> Recommendation:
        """The answer: the top of ``scores`` (or a sample of it when exploring); ``served``: the ranker's
        dense feature names and rows of the candidates, logged for the chosen items with the sequence model's
        input items from ``context``."""
        cfg = self.config
        idx, prop, explored = choose(scores, cfg.top_n, cfg.exploration, epsilon=cfg.epsilon,
                                     temperature=cfg.temperature, rng=self.rng)
        items = [RecommendedItem(item_id=c.items[j], score=float(scores[j]), propensity=float(p),
                                 reason="explore" if e else c.reasons[j])
                 for j, p, e in zip(idx.tolist(), prop.tolist(), explored.tolist())]
        features = None
        if served is not None:
            names, rows = served
            session, history = (context.session_items, context.history) if context is not None else ([], [])
            # 5 decimals keep the message short (a float32's repr in float64 takes 18 digits), far below noise.
            features = ServedFeatures(names=list(names), session=list(session[-SERVED_SESSION:]),
                                      history=list(history), dense=np.round(rows[idx].astype(np.float64), 5).tolist())
        return Recommendation(rec_id=uuid.uuid4().hex, user_id=r.user_id, session_id=r.session_id,
                              trigger_event_id=r.event_id, items=items, models=models, variant=variant,
                              event_ts=r.ts, created_ts=int(time.time() * 1000), degraded=degraded,
                              segment=segment, features=features)


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
