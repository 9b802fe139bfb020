"""The scoring core: a batch of score requests in, one recommendation per request out.

No Kafka here (the service in `streamrec.serving.scorer` feeds it; the HTTP
pull API and the core benchmark call it directly). `Engine._full` runs five
stages per batch, each a method with a typed output:

1. context (`BatchContext`): sessions, users' earlier items, trending (Redis
   round trip 1); each request's A/B arm and models; co-visitation of the
   recent items (round trip 2);
2. candidates (`BatchCandidates`): the sequence model's top-K (one ONNX run
   per arm), the graph model's, content (items whose content vectors are
   nearest the session's recent items, new catalog items included; without a
   content model, items nearest the trigger item for cold users),
   co-visitation and trending, merged and de-duplicated, seen items left out;
   from here on items are integers of the engine's `ItemCatalog` and every
   stage works on arrays over the whole batch (strings again only for the
   items read from Redis and those served);
3. item features (`BatchStats`): statistics and categories of the batch's
   unique candidates, removed items dropped (round trip 3);
4. ranking (`BatchRanking`): every (request, candidate) pair of an arm in one
   ONNX run of the ranker;
5. slate: the serving policy picks each slate and its propensities; with
   ``explain``, the ranker's feature attributions are attached.

An A/B arm marked ``trending`` (the popularity baseline) skips the models: its
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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from streamrec.serving import ab, metrics
from streamrec.serving.candidates import (CONTENT, COVISIT, GRAPH, SEQ, TRENDING, Candidates, ClickAttribution, CovisTable,
                                          IdSource, MergedBatch, ReasonTable, Source, merge, merge_batch)
from streamrec.serving.catalog import ItemCatalog
from streamrec.serving.config import Arm, ScorerConfig
from streamrec.serving.content import ContentIndex, ContentModel, content_similar, session_profiles
from streamrec.serving.exploration import Pick, choose, choose_all
from streamrec.serving.explain import RankedInputs, explain_slates
from streamrec.serving.features import FeatureReader, ItemStats, RequestContext, dense_matrix
from streamrec.serving.models import ModelStore
from streamrec.stream.schemas import SERVED_SESSION, Recommendation, RecommendedItem, ScoreRequest, ServedFeatures

log = logging.getLogger(__name__)



# The stages' outputs: each stage of `Engine._full` reads the ones before it.
@dataclass
class BatchContext:
    """Stage 1: what is known about each request before any model runs."""

    requests: Sequence[ScoreRequest]
    now_ms: int
    contexts: list[RequestContext]
    trending: list[tuple[str, float]]
    arms: list[Arm]
    groups: dict[str, list[int]]
    """Request indices per A/B arm: each model runs once per arm."""
    models: dict[str, tuple]
    """(sequence model, ranker) per arm; None where the arm has none."""
    covis: CovisTable
    catalog: ItemCatalog
    """Item ids as integers, for this batch (a full catalog is replaced between batches)."""
    reasons: ReasonTable = field(default_factory=ReasonTable)


@dataclass
class BatchCandidates:
    """Stage 2: each request's candidate sources (catalog ids), and their merge (what the ranker orders)."""

    sources: list[list[IdSource]]
    merged: MergedBatch | None = None
    """Every request's candidates with their reasons and co-visitation weights (the ranker's ``covis_score``)."""
    user_vecs: dict[int, np.ndarray] = field(default_factory=dict)
    """The sequence model's user vector per request index: the ranker's ``seq_score`` input."""
    graphs: dict[str, str] = field(default_factory=dict)
    """The graph model's name per arm that used one."""
    content_used: set[int] = field(default_factory=set)
    content_model: ContentModel | None = None


@dataclass
class BatchStats:
    """Stage 3: the batch's unique candidates with their statistics, and each arm's ranker."""

    unique: list[str]
    stats: ItemStats
    row_of: np.ndarray
    """The row in ``stats`` of each catalog id (-1 for ids that are not candidates)."""
    rankers: dict[str, tuple]
    """(ranker or None, whether it ranks) per arm: a trending arm's ranker only logs its inputs."""
    profiles: np.ndarray | None = None
    """Sessions' content profiles and the candidates' content vectors, computed once per batch if needed."""
    unique_vecs: np.ndarray | None = None


@dataclass
class BatchRanking:
    """Stage 4: each request's candidate scores, the ranker inputs to log, and those to explain."""

    scores: list[np.ndarray]
    served: list[tuple[list[str], np.ndarray] | None]
    inputs: list[RankedInputs | None]


class _Pairs:
    """An arm's (request, candidate) pairs, flat: one row per pair, in request order."""

    def __init__(self, idx: list[int], merged: MergedBatch, stats: BatchStats):
        self.idx = idx
        sizes = merged.sizes()[idx]
        self.owner = np.repeat(np.arange(len(idx)), sizes)
        """The position in ``idx`` of each pair's request."""
        if len(idx) == len(merged):  # one arm: the batch's arrays as they are
            self.items, self.covis = merged.items, merged.covis
        else:
            spans = [merged.span(i) for i in idx]
            self.items = np.concatenate([merged.items[sp] for sp in spans])
            self.covis = np.concatenate([merged.covis[sp] for sp in spans])
        self.rows = stats.row_of[self.items]
        """Each pair's item row in the batch's statistics."""
        self.bounds = np.concatenate([[0], np.cumsum(sizes)])

    def rows_of(self, array: np.ndarray, k: int) -> np.ndarray:
        """The rows of ``array`` that belong to the arm's ``k``-th request."""
        return array[self.bounds[k]:self.bounds[k + 1]]


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
        self.catalog = ItemCatalog()
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
        """The request path, stage by stage; each stage's time goes to `streamrec_scorer_stage_seconds`."""
        t0 = time.perf_counter()
        ctx = self._read_context(requests, now_ms, explain)  # Redis round trips 1 and 2
        t1 = _stage("redis_read", t0)
        cands = self._candidates(ctx)  # sequence, graph, content, co-visitation, trending; merged
        t2 = _stage("retrieval", t1)
        stats = self._item_stats(ctx, cands, log_features)  # round trip 3; removed items leave the candidates
        t3 = _stage("redis_read", t2)
        ranking = self._rank(ctx, cands, stats, explain, log_features)  # the ranker, one ONNX run per arm
        t4 = _stage("ranking", t3)
        cfg = self.config
        picks = choose_all(ranking.scores, cfg.top_n, cfg.exploration, epsilon=cfg.epsilon,
                           temperature=cfg.temperature, rng=self.rng)
        out = [self._answer(ctx, cands, ranking, picks[i], i) for i in range(len(requests))]
        if explain:
            merged = cands.merged
            candidates = [Candidates(ctx.catalog.names_of(merged.items[merged.span(i)])) for i in range(len(out))]
            explain_slates(out, candidates, ranking.inputs, ctx.contexts, self.reader.categories,
                           self.config.explain_top)
            _stage("explain", t4)
        return out

    # -- stage 1: context ---------------------------------------------------- #
    def _read_context(self, requests: Sequence[ScoreRequest], now_ms: int, explain: bool) -> BatchContext:
        """Sessions, users and trending (round trip 1); each request's arm and models; co-visitation of the
        recent items and categories of the sequence models' inputs (round trip 2)."""
        cfg = self.config
        contexts, trending = self.reader.contexts(requests, max(cfg.trending_candidates, cfg.top_n * 5))
        self.redis_ok = True
        metrics.redis_up.set(1)
        if trending:
            self.snapshot, self.snapshot_at = trending, time.monotonic()
        arms = [ab.arm_of(r.user_id, cfg.arms, cfg.ab_salt) for r in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, arm in enumerate(arms):
            groups[arm.name].append(i)
        models = {arm.name: self.models.models_for(arm) for arm in arms}
        any_seq = any(m[0] is not None for m in models.values())
        recent = list(dict.fromkeys(i for c, a in zip(contexts, arms) if not a.trending
                                    for i in c.recent(cfg.recent_items)))
        sequence_items = [i for c in contexts for i in c.sequence] if any_seq or explain else ()
        if self.catalog.full:  # bounded memory: batches in flight keep the catalog they started with
            self.catalog = ItemCatalog(self.catalog.cap)
        catalog = self.catalog
        covis = CovisTable(self.reader.covisitation(recent, cfg.covis_candidates, now_ms, sequence_items), catalog)
        return BatchContext(requests, now_ms, contexts, trending, arms, groups, models, covis, catalog)

    # -- stage 2: candidates ------------------------------------------------- #
    def _candidates(self, ctx: BatchContext) -> BatchCandidates:
        """Every source's candidates per request, merged in priority order: the session's own co-visitation,
        then the models, then the crowd. A trending arm (the popularity baseline) gets the crowd only."""
        cfg, catalog, reasons = self.config, ctx.catalog, ctx.reasons
        cands = BatchCandidates(sources=[[] for _ in ctx.requests])
        self._sequence_sources(ctx, cands)
        cands.graphs = self._graph_sources(ctx, cands.sources) if cfg.graph_candidates else {}
        self._content_sources(ctx, cands)
        trend_src = IdSource(reasons.code(TRENDING), catalog.ids([i for i, _ in ctx.trending]))
        exclude = []
        covis, via = ctx.covis.summed([[] if a.trending else c.recent(cfg.recent_items)
                                       for c, a in zip(ctx.contexts, ctx.arms)], cfg.covis_candidates)
        via_codes = reasons.covisit_codes(via)
        for i, c in enumerate(ctx.contexts):
            if ctx.arms[i].trending:
                sources = [trend_src]
            else:
                ids, weights, origin = covis[i]
                cv = IdSource(reasons.code(COVISIT), ids, via_codes[origin], weights)
                sources = [cv, *cands.sources[i], trend_src]
            cands.sources[i] = sources
            exclude.append(catalog.ids([*c.seen, c.request.item_id]))
        cands.merged = merge_batch(cands.sources, exclude, cfg.max_candidates, len(catalog))
        return cands

    def _sequence_sources(self, ctx: BatchContext, cands: BatchCandidates) -> None:
        """The sequence model's top-K per request (one ONNX run per arm). Without a content model, a cold
        user's candidates are the items nearest the trigger item in the sequence model's space."""
        cfg, cats = self.config, self.reader.categories
        for arm_name, idx in ctx.groups.items():
            seq = ctx.models[arm_name][0]
            if seq is None:
                continue
            seqs = [ctx.contexts[i].sequence for i in idx]
            vecs = seq.user_vectors(seqs, cats)
            self.models.samples["sasrec"] = (seqs[:64], cats)
            top, _ = seq.retrieve(vecs, cfg.seq_candidates + max(len(ctx.contexts[i].seen) for i in idx))
            top = ctx.catalog.of_model(seq)[top]
            for j, i in enumerate(idx):
                cands.user_vecs[i] = vecs[j]
                cands.sources[i].append(IdSource(ctx.reasons.code(SEQ), top[j]))
            cold = [i for i in idx if ctx.requests[i].item_id
                    and (not ctx.contexts[i].known or len(ctx.contexts[i].session_items) <= 1)]
            if cold and cfg.content_candidates and not len(self.content_index):
                trigger = [ctx.requests[i].item_id for i in cold]
                near, _ = seq.index.search(seq.item_vectors(trigger, [cats.get(t, "") for t in trigger]),
                                           cfg.content_candidates + 1)
                near = ctx.catalog.of_model(seq)[near]
                for j, i in enumerate(cold):
                    cands.sources[i].append(IdSource(ctx.reasons.code(CONTENT), near[j]))

    def _content_sources(self, ctx: BatchContext, cands: BatchCandidates) -> None:
        """Items whose content vectors are nearest each session's recent items, new catalog items included."""
        cfg = self.config
        cands.content_model = self.models.content() if len(self.content_index) else None
        if not cfg.content_candidates or cands.content_model is None:
            return
        similar = content_similar(self.content_index, [c.recent(cfg.content_profile_items) for c in ctx.contexts],
                                  [cfg.content_candidates + len(c.seen) for c in ctx.contexts])
        for i, (items, _sims) in enumerate(similar):
            if items and not ctx.arms[i].trending:
                cands.sources[i].append(IdSource(ctx.reasons.code(CONTENT), ctx.catalog.ids(items)))
                cands.content_used.add(i)

    def _graph_sources(self, ctx: BatchContext, sources: list[list[IdSource]]) -> dict[str, str]:
        """Append the graph model's candidates (folded-in session vector, top-K) to each request's sources;
        returns the graph model's name per arm that has one."""
        cfg, contexts = self.config, ctx.contexts
        used = {}
        for arm_name, idx in ctx.groups.items():
            graph = self.models.graph_for(ctx.arms[idx[0]])
            if graph is None:
                continue
            used[arm_name] = graph.name
            seqs = [contexts[i].sequence for i in idx]
            self.models.samples[graph.kind] = (seqs[:64],)
            vecs = graph.user_vectors(seqs)
            extra = max(len(contexts[i].seen) for i in idx)
            top, _scores = graph.retrieve(vecs, cfg.graph_candidates + extra)
            top = ctx.catalog.of_model(graph)[top]
            for j, i in enumerate(idx):
                if vecs[j].any():  # no item of the session is in the graph: nothing to propose
                    sources[i].append(IdSource(ctx.reasons.code(GRAPH), top[j]))
        return used

    # -- stage 3: item features ---------------------------------------------- #
    def _item_stats(self, ctx: BatchContext, cands: BatchCandidates, log_features: bool) -> BatchStats:
        """Statistics and categories of the batch's unique candidates (round trip 3); items removed from the
        catalog leave every candidate list. Also settles each arm's ranker: a trending arm ranks nothing,
        but with feature logging on its candidates get the live ranker's inputs (logged only), so the online
        trainer never has to read them back from Redis after the user reacted."""
        n_ids = len(ctx.catalog)
        is_candidate = np.zeros(n_ids, dtype=bool)
        is_candidate[cands.merged.items] = True
        unique_ids = np.flatnonzero(is_candidate)
        unique = ctx.catalog.names_of(unique_ids)
        log_only = self.models.live.get(self.models.config.ranker_model) if log_features else None
        rankers = {arm.name: (log_only, False) if arm.trending else (ctx.models[arm.name][1], True)
                   for arm in ctx.arms}
        stats = self.reader.item_stats(unique, with_stats=any(r is not None for r, _ in rankers.values()))
        if stats.removed.any():
            gone = np.zeros(n_ids, dtype=bool)
            gone[unique_ids[stats.removed]] = True
            cands.merged = cands.merged.keep(~gone[cands.merged.items])
        row_of = np.full(n_ids, -1, dtype=np.int64)
        row_of[unique_ids] = np.arange(len(unique_ids))
        return BatchStats(unique, stats, row_of, rankers)

    # -- stage 4: ranking ---------------------------------------------------- #
    def _rank(self, ctx: BatchContext, cands: BatchCandidates, stats: BatchStats, explain: bool,
              log_features: bool) -> BatchRanking:
        """The ranker's probability for every (request, candidate) pair, one ONNX run per arm; without a
        ranker the merge order is the ranking."""
        n, sizes = len(ctx.requests), cands.merged.sizes()
        ranking = BatchRanking([_source_scores(int(m)) for m in sizes], [None] * n, [None] * n)
        for arm_name, idx in ctx.groups.items():
            ranker, rank = stats.rankers[arm_name]
            if ranker is None:
                continue
            if not sizes[idx].sum():  # empty slates (a world's first view: its one trending item is the one seen)
                if log_features or not rank:  # log no rows, so no one reads their features back late
                    empty = np.zeros((0, len(ranker.dense_features)), dtype=np.float32)
                    for i in idx:
                        ranking.served[i] = (ranker.dense_features, empty)
                continue
            pairs = _Pairs(idx, cands.merged, stats)
            dense = self._dense_inputs(ctx, cands, stats, ranker, ctx.models[arm_name][0], pairs)
            for k, i in enumerate(idx):
                if log_features or not rank:
                    ranking.served[i] = (ranker.dense_features, pairs.rows_of(dense, k))
            if rank:
                self._score_pairs(ctx, stats, ranker, pairs, dense, ranking, explain)
        return ranking

    def _dense_inputs(self, ctx: BatchContext, cands: BatchCandidates, stats: BatchStats, ranker, seq,
                      pairs: "_Pairs") -> np.ndarray:
        """The ranker's dense features of every pair, gathered from per-item and per-request arrays."""
        idx, owner, rows = pairs.idx, pairs.owner, pairs.rows
        seq_score = content_sim = covis_score = None
        if seq is not None and "seq_score" in ranker.dense_features:
            # A product per request over its own rows: gathering a [pairs, dim] copy of both sides instead
            # moves ~130 MB per batch of 256 requests at 1,000 candidates, three to eight times slower.
            vecs = seq.item_vectors(stats.unique, stats.stats.categories)
            seq_score = np.concatenate([vecs[pairs.rows_of(rows, k)] @ cands.user_vecs[i] for k, i in enumerate(idx)])
        if cands.content_model is not None and ranker.meta.extra.get("content_sim_trained") \
                and "content_sim" in ranker.dense_features:
            if stats.profiles is None:  # once per batch: sessions' content profiles, candidates' vectors
                stats.profiles = session_profiles(self.content_index, [c.recent(self.config.content_profile_items)
                                                                       for c in ctx.contexts])
                stats.unique_vecs = self.content_index.vectors_of(stats.unique)[0]
            content_sim = np.einsum("nd,nd->n", stats.profiles[np.asarray(idx)][owner], stats.unique_vecs[rows])
        if "covis_score" in ranker.dense_features:
            covis_score = pairs.covis
        return dense_matrix(ranker.dense_features, stats.stats, rows, [ctx.contexts[i] for i in idx], owner,
                            seq_score, content_sim, covis_score)

    def _score_pairs(self, ctx: BatchContext, stats: BatchStats, ranker, pairs: "_Pairs", dense: np.ndarray,
                     ranking: BatchRanking, explain: bool) -> None:
        """One ONNX run over the arm's pairs; each request's slice of the probabilities becomes its scores."""
        owner, rows, cats = pairs.owner, pairs.rows, stats.stats.categories
        users = [ctx.requests[i].user_id for i in pairs.idx]
        per_item = np.concatenate([ranker.items(stats.unique), ranker.cats(cats)], axis=1)  # once per unique item
        per_user = ranker.users(users)
        sparse = np.empty((len(rows), per_user.shape[1] + per_item.shape[1]), dtype=np.int64)
        sparse[:, :per_user.shape[1]] = per_user[owner]
        sparse[:, per_user.shape[1]:] = per_item[rows]
        prob = ranker.score(sparse, dense)
        self.models.samples["dcn"] = ([users[o] for o in owner[:256].tolist()], ctx.catalog.names_of(pairs.items[:256]),
                                      [cats[r] for r in rows[:256].tolist()], dense[:256])
        for k, i in enumerate(pairs.idx):
            ranking.scores[i] = pairs.rows_of(prob, k)
            if explain:  # keep each request's ranker inputs for the explanation run
                b, e = pairs.bounds[k], pairs.bounds[k + 1]
                ranking.inputs[i] = RankedInputs(ranker, sparse[b:e], dense[b:e],
                                                 [cats[r] for r in rows[b:e].tolist()])

    # -- stage 5: slate ------------------------------------------------------ #
    def _answer(self, ctx: BatchContext, cands: BatchCandidates, ranking: BatchRanking, pick: Pick,
                i: int) -> Recommendation:
        """Request ``i``'s recommendation: its slate (``pick``), the models that made it, its degraded modes
        counted."""
        seq, ranker = ctx.models[ctx.arms[i].name]
        used = [m.name for m in (seq, ranker) if m is not None]
        if ctx.arms[i].name in cands.graphs:
            used.append(cands.graphs[ctx.arms[i].name])
        if i in cands.content_used:
            used.append(cands.content_model.name)
        if not used and not ctx.arms[i].trending:
            metrics.degraded.labels("no_model").inc()
        if not ctx.contexts[i].known:
            metrics.degraded.labels("cold_start").inc()
        merged, span = cands.merged, cands.merged.span(i)
        if i % 8 == 0:  # a sample describes the distribution; counting every request costs throughput
            for source, n in merged.counts(i, ctx.reasons).items():
                metrics.candidates.labels(source).observe(n)
        items, reasons = merged.items[span], merged.reasons[span]
        rec = self._slate(ctx.requests[i], ranking.scores[i], pick,
                          lambda chosen: (ctx.catalog.names_of(items[chosen]),
                                          [ctx.reasons.names[c] for c in reasons[chosen].tolist()]),
                          used, ctx.arms[i].name, ctx.now_ms, degraded=False, segment=ctx.contexts[i].segment,
                          served=ranking.served[i], context=ctx.contexts[i])
        self.clicks.remember(rec.rec_id, dict(zip((it.item_id for it in rec.items),
                                                  merged.proposers(i, items[pick[0]], ctx.reasons))))
        return rec

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
        cfg = self.config
        src = Source(TRENDING, [i for i, _ in self.snapshot], [s for _, s in self.snapshot])
        out = []
        for r in requests:
            c = merge([src], {r.item_id}, cfg.max_candidates)
            metrics.degraded.labels(mode).inc()
            arm = ab.arm_of(r.user_id, cfg.arms, cfg.ab_salt)
            scores = _source_scores(len(c))
            pick = choose(scores, cfg.top_n, cfg.exploration, epsilon=cfg.epsilon, temperature=cfg.temperature,
                          rng=self.rng)
            out.append(self._slate(r, scores, pick, c.chosen, [], arm.name, now_ms, degraded=True))
        return out

    def _slate(self, r: ScoreRequest, scores: np.ndarray, pick: Pick,
               candidates: Callable[[np.ndarray], tuple[list[str], list[str]]], models: list[str], variant: str,
               now_ms: int, degraded: bool, segment: int | None = None,
               served: tuple[list[str], np.ndarray] | None = None, context: RequestContext | None = None
               ) -> Recommendation:
        """The answer: ``pick``, the top of ``scores`` (or a sample of it when exploring); ``candidates``: the
        item ids and reasons of the chosen positions (only the served ones become strings); ``served``: the
        ranker's dense feature names and rows of the candidates, logged for the chosen items with the sequence
        model's input items from ``context``."""
        idx, prop, explored = pick
        ids, reasons = candidates(idx)
        items = [RecommendedItem(item_id=item, score=float(scores[j]), propensity=float(p),
                                 reason="explore" if e else why)
                 for item, why, j, p, e in zip(ids, reasons, idx.tolist(), prop.tolist(), explored.tolist())]
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


def _stage(name: str, since: float) -> float:
    """Record a stage's time since ``since``; returns now, the next stage's start."""
    now = time.perf_counter()
    metrics.observe_stage(name, now - since)
    return now


def _source_scores(n: int) -> np.ndarray:
    """Without a ranker: the merge order is the ranking (1, 1/2, 1/3, ...)."""
    return 1.0 / np.arange(1, n + 1, dtype=np.float64)


def _is_redis_error(exc: Exception) -> bool:
    import redis

    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            redis.exceptions.BusyLoadingError, redis.exceptions.RedisClusterException,
                            redis.exceptions.ClusterDownError, OSError))
