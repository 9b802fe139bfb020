"""`streamrec learn`: the online trainer service.

Reads `recommendations` and `events` (manually assigned partitions, offsets
from its own checkpoint), joins interactions to slates (`joiner.Joiner`),
attaches the ranker's features to each slate when it arrives (read from Redis
with the scorer's code), and hands closed slates to a training thread, so
joining never waits on training. Every ``gate_every_samples`` shown items or
``gate_every_s`` seconds, the training thread gates the candidates on the
held-out slates (one slate in five, by rec_id, never trained on) and
publishes those that are not worse (`online/models.py: OnlineModels`).

Slates that look like a bot (rewards on most shown items, or a user whose
history does) are left out of training and gating, and counted.

Checkpoint (JSON, atomic): joiner state, the Kafka offsets it covers, the
sample buffers, the items' click counts (`attraction.ItemEvidence`) and the bot
filter's counts, written between poll batches; on
start the consumer seeks to those offsets, so a restart replays exactly what
the checkpoint does not cover: no reward is lost or counted twice. SIGTERM
finishes the batch in hand, writes the checkpoint and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import zlib
from collections import Counter, deque
from pathlib import Path

import msgspec
import numpy as np

from streamrec.health import HealthServer
from streamrec.security import check_services
from streamrec.settings import Settings
from streamrec.stream.schemas import SERVED_SESSION, decode_event
from streamrec.stream.topics import EVENTS, LEARNER_GROUP, RECOMMENDATIONS, group_id, kafka_security
from streamrec.online import metrics as m
from streamrec.online.attraction import ItemEvidence
from streamrec.online.joiner import Joiner, Slate
from streamrec.online.config import LearnerConfig

log = logging.getLogger(__name__)


class OnlineLearner:
    """The service: ``run()`` until ``stop()`` (or SIGTERM)."""

    def __init__(self, settings: Settings, cfg: LearnerConfig | None = None, port: int | None = None):
        self.settings = settings
        self.cfg = cfg or LearnerConfig()
        self.port = settings.learner_port if port is None else port
        from streamrec.online.models import OnlineModels

        self.models = OnlineModels(settings, self.cfg.train(), self.cfg.gate(),
                                   (self.cfg.seq_model, self.cfg.ranker_model))
        self.joiner = Joiner(self.cfg.join(), sources=())
        self.offsets: dict[str, int] = {}
        self.train_buf: deque[Slate] = deque(maxlen=self.cfg.buffer_slates)
        self.evidence = ItemEvidence(self.cfg.attraction_half_life_s)  # every training slate's clicks, per item
        self.holdout: deque[Slate] = deque(maxlen=self.cfg.holdout_slates)
        self.users: dict[str, list[int]] = {}  # user -> [slates, bot-like slates] (bounded below)
        self.fresh: list[Slate] = []  # closed training slates not yet trained on
        self.decisions: list[dict] = []
        self.published: list[dict] = []
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._consumer = None
        self._reader = None
        self.http: HealthServer | None = None
        self._last_gate = time.monotonic()
        self._since_gate = 0
        self._newest_trained = 0  # created_ts (ms) of the newest slate trained on
        self._ckpt = Path(self.cfg.checkpoint_dir) / "learner.json"

    # -- lifecycle ---------------------------------------------------------------------- #
    def start(self) -> None:
        from confluent_kafka import Consumer

        from streamrec.serving.config import parse_arms

        arms = tuple(a.name for a in parse_arms(self.settings.scorer_ab_arms))
        m.initialise((self.cfg.seq_model, self.cfg.ranker_model), arms)
        check_services(self.settings)  # a refused login or certificate stops here, with the setting to fix
        self._restore()
        loaded = self.models.load()
        log.info("online trainer: models loaded %s; joining from %s", loaded or "none",
                 "checkpoint" if self.offsets else self.cfg.start)
        self._consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap,
                                   "group.id": group_id(self.settings, LEARNER_GROUP), "enable.auto.commit": False,
                                   "auto.offset.reset": self.cfg.start, **kafka_security(self.settings)})
        self._assign()
        self.http = HealthServer(self.settings.http_host, self.port,
                                 checks={"consumer": lambda: self._consumer is not None,
                                         "models": lambda: bool(self.models.live)},
                                 port_setting="STREAMREC_LEARNER_PORT").start()
        self._trainer = threading.Thread(target=self._train_loop, name="learner-train", daemon=True)
        self._trainer.start()

    def _assign(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        parts = []
        default = OFFSET_BEGINNING if self.cfg.start == "earliest" else OFFSET_END
        for name in (RECOMMENDATIONS, EVENTS):
            topic = self.settings.topic(name)
            meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                parts.append(TopicPartition(topic, p, self.offsets.get(f"{topic}:{p}", default)))
        self._consumer.assign(parts)
        self._parts = parts
        self.joiner.expect(f"{tp.topic}:{tp.partition}" for tp in parts)

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.start()
        last_ckpt = time.monotonic()
        try:
            while not self._stop.is_set():
                self.poll_once()
                if time.monotonic() - last_ckpt >= self.cfg.checkpoint_every_s:
                    self.checkpoint()
                    last_ckpt = time.monotonic()
        finally:
            self.close()
        return 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self._wake.set()
        if getattr(self, "_trainer", None) is not None:
            self._trainer.join(120)
        self.checkpoint()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self.http is not None:
            self.http.stop()

    # -- joining ----------------------------------------------------------------------------- #
    def poll_once(self, timeout: float = 0.2) -> int:
        """Consume one batch, join it, hand closed slates to training; returns the records read."""
        msgs = self._consumer.consume(1000, timeout)
        msgs = [x for x in msgs if x.error() is None]
        if not msgs:
            self._accept(self._update_idle())
            return 0
        rec_topic = self.settings.topic(RECOMMENDATIONS)
        decoded = []
        for msg in msgs:
            is_rec = msg.topic() == rec_topic
            try:
                if not is_rec:
                    # Events that break the contract are the worker's to dead-letter; never join them.
                    decode_event(msg.value() or b"")
                decoded.append((is_rec, json.loads(msg.value())))
            except (ValueError, TypeError):  # EventError is a ValueError
                self.counts["undecodable"] += 1
                decoded.append((None, None))
        self._attach_features([v for is_rec, v in decoded if is_rec])
        before = dict(self.joiner.counts)
        closed: list[Slate] = []
        offsets = {}
        for msg, (is_rec, value) in zip(msgs, decoded):
            src = f"{msg.topic()}:{msg.partition()}"
            if is_rec is not None:
                closed += (self.joiner.add_recommendation(value, src) if is_rec
                           else self.joiner.add_interaction(value, src))
            offsets[src] = msg.offset() + 1
        with self._lock:
            self.offsets.update(offsets)
        closed += self._update_idle()
        m.count_join(before, self.joiner.counts)
        self._accept(closed)
        if self.joiner.watermark:
            m.lag_seconds.set(time.time() - self.joiner.watermark / 1000)
        return len(msgs)

    def _update_idle(self) -> list[Slate]:
        """Partitions caught up with their end stop holding the join's watermark back."""
        closed = []
        for tp in self._parts:
            src = f"{tp.topic}:{tp.partition}"
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # nothing fetched from it yet (an empty partition): ask the broker
                low, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            pos = self.offsets.get(src, max(low, 0))
            closed += self.joiner.set_idle(src, high >= 0 and pos >= high)
        return closed

    def _attach_features(self, recs: list[dict]) -> None:
        """Ranker features of each slate as the scorer saw them, plus the sequence model's input (the user's
        earlier items, then the session's).

        A recommendation that carries its served features (`ServedFeatures`) gives them point in time. For
        one without (older scorers, `STREAMREC_SCORER_LOG_FEATURES=false`) they are read from Redis now,
        which may already hold the user's reaction to the slate (counted as ``read_late``). The sequence
        score is always recomputed with the learner's live sequence model, on the served items if any.

        A degraded answer (the scorer could not read Redis and served its trending snapshot) trains nothing:
        it was not the arm's policy, and its features could only be read late. Its rewards still count.
        """
        for r in recs:
            if r.get("degraded"):
                r.pop("features", None)
                m.feature_sources.labels("degraded").inc()
                self.counts["features_degraded"] += 1
        recs = [r for r in recs if not r.get("degraded")]
        if not recs:
            return
        try:
            from streamrec.serving.features import FeatureReader, dense_matrix
            from streamrec.stream.keys import FeatureConfig, Keys
            from streamrec.stream.schemas import ScoreRequest
            from streamrec.trainer.dcn import DENSE_FEATURES

            if self._reader is None:
                from streamrec.stream.feature_store import redis_client
                self._reader = FeatureReader(redis_client(self.settings), Keys(self.settings.redis_prefix),
                                             FeatureConfig.from_settings(self.settings), stats_ttl_s=0.0,
                                             history_items=self.settings.scorer_history_items)
            reqs = [ScoreRequest(event_id=r.get("trigger_event_id", ""), user_id=r["user_id"],
                                 session_id=r.get("session_id", ""), item_id="", type="view",
                                 ts=int(r.get("event_ts") or r.get("created_ts") or 0), feature_version=0)
                    for r in recs]
            contexts, _ = self._reader.contexts(reqs, 1)
            served = [_served(r) for r in recs]
            # The sequence model's input: the user's earlier items, then the session's.
            parts = [(list(sv["history"]), list(sv["session"])) if sv else (c.history, c.session_items)
                     for sv, c in zip(served, contexts)]
            items = [it["item_id"] for r in recs for it in r.get("items", [])]
            stats = self._reader.item_stats(list(dict.fromkeys(items)))
            rows = np.array([stats.index[i] for i in items], dtype=np.int64)
            owner = np.repeat(np.arange(len(recs)), [len(r.get("items", [])) for r in recs])
            cats = [stats.categories[i] for i in rows]
            seq_score = None
            seq = self.models.live.get(self.cfg.seq_model)
            if seq is not None and len(items):
                flat = {"session": [h + s for h, s in parts], "slate_of": owner, "items": items, "cats": cats}
                seq_score = self.models.seq_scores(seq, flat)
            ranker = self.models.live.get(self.cfg.ranker_model)  # its own feature list (older rankers: fewer)
            names = DENSE_FEATURES[: ranker.config["n_dense"]] if ranker is not None else DENSE_FEATURES
            dense = dense_matrix(names, stats, rows, contexts, owner, seq_score)
        except Exception:  # noqa: BLE001 - Redis down: the slate still counts rewards, it just cannot train
            log.exception("could not read features for %d slates; they will count but not train", len(recs))
            self.counts["feature_errors"] += len(recs)
            for r in recs:  # the served ones lack categories and the learner's sequence score: not trainable
                r.pop("features", None)
            return
        start = 0
        for r, sv, (history, session) in zip(recs, served, parts):
            n = len(r.get("items", []))
            if sv:  # the served values replace those read now (the sequence score stays the learner's own)
                logged = np.asarray(sv["dense"], dtype=np.float32)
                for j, name in enumerate(names):
                    if name != "seq_score" and name in sv["names"]:
                        dense[start:start + n, j] = logged[:, sv["names"].index(name)]
            source = "served" if sv else "read_late"
            m.feature_sources.labels(source).inc()
            self.counts[f"features_{source}"] += 1
            r["features"] = {"dense": dense[start:start + n].tolist(), "cats": cats[start:start + n],
                             "session": session[-SERVED_SESSION:], "history": history}
            start += n

    def _accept(self, closed: list[Slate]) -> None:
        if not closed:
            return
        good = []
        need_shown = self.cfg.impressions == "required" or (
            self.cfg.impressions == "auto" and self.joiner.counts["impressions"] > 0)
        for s in closed:
            if need_shown and not s.shown:
                # Never displayed (e.g. the answer to a click that the app did not show): its items were not
                # passed over by the user, so they must not count as negatives.
                m.filtered.labels("not_shown").inc()
                self.counts["filtered_not_shown"] += 1
                continue
            m.samples_joined.inc()
            m.items_joined.inc(len(s.items))
            m.count_arm(s)
            rewarded = sum(1 for r in s.rewards if r > 0)
            user = self.users.setdefault(s.user_id, [0, 0])
            user[0] += 1
            bot_like = len(s.items) >= 3 and rewarded > self.cfg.bot_slate_share * len(s.items)
            user[1] += bot_like
            if bot_like or (user[0] >= self.cfg.bot_min_slates and user[1] > 0.5 * user[0]):
                m.filtered.labels("bot").inc()
                self.counts["filtered_bot"] += 1
                continue
            if not s.features:
                self.counts["no_features"] += 1
            good.append(s)
        if len(self.users) > 1_000_000:  # bounded: forget the quiet majority
            self.users = {u: c for u, c in self.users.items() if c[1]}
        with self._lock:
            for s in good:
                if zlib.crc32(s.rec_id.encode()) % self.cfg.holdout_every == 0:
                    self.holdout.append(s)
                else:
                    self.train_buf.append(s)
                    self.evidence.add((s,))
                    self.fresh.append(s)
                    self._since_gate += len(s.items)
            del self.fresh[:-self.cfg.buffer_slates]
        self._wake.set()

    # -- training thread ------------------------------------------------------------------ #
    def _train_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.train_round()
            except Exception:  # noqa: BLE001 - a failed round must not stop joining; it is logged
                log.exception("training round failed")

    def train_round(self, force_gate: bool = False) -> list[dict]:
        """Train on the fresh slates, then gate (and publish) when due; returns this round's decisions."""
        with self._lock:
            fresh, self.fresh = self.fresh, []
        if not self.models.live:
            return []
        self.models.learn_categories(fresh)
        with self._lock:
            buf = list(self.train_buf)
        exam = self.models.estimate_examination(buf)
        rng = np.random.default_rng(len(self.train_buf))
        for _ in range(self.cfg.epochs_per_round):
            order = rng.permutation(len(fresh))
            for start in range(0, len(order), self.cfg.batch):
                self.models.train([fresh[i] for i in order[start:start + self.cfg.batch]])
        if fresh:
            self._newest_trained = max(s.created_ts for s in fresh)
        due = (self._since_gate >= self.cfg.gate_every_samples
               or time.monotonic() - self._last_gate >= self.cfg.gate_every_s)
        if not (due or force_gate):
            return []
        # Only the candidate the gate judges needs the offsets and their fitted scales (a pass over the
        # whole buffer, about 0.3 s at 8,000 slates), after its training steps, so they fit what it became.
        with self._lock:
            offsets = self.evidence.offsets(exam)
        self.models.set_attraction(buf, offsets)
        return self.gate_and_publish()

    def replay(self, name: str) -> None:
        """Fine-tune a fresh candidate (a copy of the live model) on the newest ``replay_slates`` training
        slates. Bounded: the whole 8,000-slate buffer takes 12 s of one idle core for both models; on the loaded
        2-core bench nothing was published for up to 2 minutes after a rejection, fresh attraction included."""
        with self._lock:
            buf = list(self.train_buf)[-self.cfg.replay_slates:] if self.cfg.replay_slates > 0 else []
        t0 = time.perf_counter()
        rng = np.random.default_rng(len(buf))
        for _ in range(self.cfg.replay_epochs):
            order = rng.permutation(len(buf))
            for start in range(0, len(order), self.cfg.batch):
                if self._stop.is_set():
                    return
                self.models.train([buf[i] for i in order[start:start + self.cfg.batch]], only=name)
        log.info("candidate %s restarted from the live model and replayed %d slates in %.1f s", name, len(buf),
                 time.perf_counter() - t0)

    def gate_and_publish(self) -> list[dict]:
        with self._lock:
            holdout = list(self.holdout)
            offsets = dict(self.offsets)
            self._since_gate = 0
        self._last_gate = time.monotonic()
        t0 = time.perf_counter()
        out = []
        for name, d in self.models.gate_models(holdout).items():
            rec = {"model": name, "ts": time.time(), **d.as_dict()}
            if d.accepted and not self.cfg.dry_run:
                window = {"slates_held_out": len(holdout), "newest_event_ms": self._newest_trained}
                rec["version"] = self.models.publish(name, d, window, offsets)
                newest = self._newest_trained
                if newest:
                    rec["event_to_model_s"] = time.time() - newest / 1000
                    m.event_to_model.observe(rec["event_to_model_s"])
                log.info("published %s/%s: %s", name, rec["version"], json.dumps(d.as_dict()))
                self.published.append(rec)
            elif not d.accepted:
                log.info("rejected candidate %s: %s; live %s candidate %s", name, d.reason, d.live, d.candidate)
                if d.n >= self.cfg.min_gate_samples:
                    self.models.reject(name)
                    self.replay(name)
            m.refresh_seconds.labels(name).observe(time.perf_counter() - t0)
            self.decisions.append(rec)
            out.append(rec)
        del self.decisions[:-100]
        return out

    # -- checkpoint ----------------------------------------------------------------------------- #
    def checkpoint(self) -> None:
        """Write joiner state, offsets and buffers atomically (called between poll batches).

        Only the joining thread, which calls this, changes what is written; the lock only cuts the buffers
        consistently against the training thread, which takes ``fresh``. The slates go to the encoder as they
        are: msgspec encodes the dataclasses directly, where converting them to lists and dicts first took
        fifteen times as long (1.0 s against 0.07 s for full buffers, every 5 s, under the lock).
        """
        with self._lock:
            state = {"offsets": dict(self.offsets), "joiner": self.joiner.state(), "counts": dict(self.counts),
                     "train": list(self.train_buf), "holdout": list(self.holdout),
                     "fresh": [s.rec_id for s in self.fresh], "users": self.users,
                     "evidence": self.evidence.state()}
        self._ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._ckpt.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(state))  # several times faster than json for 100 MB states
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self._ckpt)

    def _restore(self) -> None:
        if not self._ckpt.exists():
            return
        state = msgspec.json.decode(self._ckpt.read_bytes())
        self.offsets = {k: int(v) for k, v in state["offsets"].items()}
        self.joiner = Joiner.from_state(state["joiner"], self.cfg.join())
        self.counts = Counter(state.get("counts", {}))
        self.train_buf.extend(Slate(**s) for s in state.get("train", []))
        self.holdout.extend(Slate(**s) for s in state.get("holdout", []))
        fresh = set(state.get("fresh", []))
        self.fresh = [s for s in self.train_buf if s.rec_id in fresh]
        self.users = {u: list(c) for u, c in state.get("users", {}).items()}
        if "evidence" in state:
            self.evidence = ItemEvidence.from_state(state["evidence"], self.cfg.attraction_half_life_s)
        else:  # a checkpoint from before the evidence was kept: its buffer is what there is
            self.evidence.add(self.train_buf)
        log.info("restored checkpoint %s: watermark %s, %d open slates", self._ckpt, self.joiner.watermark,
                 len(self.joiner.open))


def _served(rec: dict) -> dict | None:
    """The recommendation's served features when they are whole (a row of every name per item), else None.

    >>> rec = {"items": [{"item_id": "a"}], "features": {"names": ["x", "y"], "dense": [[1.0, 2.0]], "session": []}}
    >>> _served(rec)["dense"]
    [[1.0, 2.0]]
    >>> _served({**rec, "features": {"names": ["x"], "dense": [[1.0, 2.0]]}}) is None
    True
    """
    sv = rec.get("features")
    if not isinstance(sv, dict):
        return None
    names, dense, session, history = sv.get("names"), sv.get("dense"), sv.get("session", []), sv.get("history", [])
    if not (isinstance(names, list) and isinstance(dense, list) and isinstance(session, list)
            and isinstance(history, list)
            and len(dense) == len(rec.get("items", []))
            and all(isinstance(row, list) and len(row) == len(names) for row in dense)):
        return None
    return {"names": names, "dense": dense, "session": session, "history": history}
