"""`streamrec evaluate --served`: the slate the scorer would serve, scored on the leave-one-out test users.

The other rows of the leave-one-out table rank the whole catalog with one
candidate source each. What the product serves is the scorer's engine
(`streamrec.serving.engine.Engine`): co-visitation, sequence-model, graph,
content and trending candidates merged, ranked by the DCN-V2 ranker, and the
slate picked by the serving policy. This module runs that engine, the
production code path, offline:

1. Models: the models just trained are exported and published (ONNX, checked
   against torch) to a temporary registry, and loaded from it by the scorer's
   `ModelStore`, as the scorer loads an announced version: sequence model,
   ranker, and the graph model when one was trained. The content tower is not
   loaded (in production its vectors come from the catalog topic); without it the
   engine proposes, for cold users, the items nearest the trigger item in the
   sequence model's space, as a scorer without one does.
2. Features: the whole history (every user, every event type; one event per
   row, an impression row an impression of its one item) is replayed in time
   order into a `streamrec.stream.memory_store.MemoryFeatureStore`, which
   applies each event as the worker's scripts apply it to Redis (sessions, the
   user's recent, bought and affinity, item counts, co-visitation, trending).
   Right after each test user's last history event (the one before the held-out
   target), the engine gets that event's score request with a
   `streamrec.serving.memory_features.MemoryFeatureReader` over the state as of
   that event, as the scorer would have read Redis then.
3. Time: decay depends on a "now". The worker's writes use event time only;
   the live scorer decays co-visitation weights to its wall clock and computes
   item recency from the request's event time. Here "now" is an explicit input,
   the trigger event's time. (Decaying every list to one time scales them alike,
   so the choice changes no ranking.) Key TTLs, which Redis applies by the wall
   clock, are not applied: the replay keeps every key.
4. Policy: greedy (no exploration), the single default arm, slates of
   ``max(k)`` items; the slate's top K is scored with the metrics of
   `streamrec.trainer.evaluate` (a target not in the slate is a miss).

Sessions are the worker's own: a row's session id when the history has one,
else a new session after ``STREAMREC_SESSION_GAP_S`` (30 min) without events,
by event time. So a MovieLens user who rated in several sittings has several
sessions; the engine reads the current one, plus the newest items of earlier
ones as the sequence model's history (``scorer_history_items``), and never
recommends the current session's items (nor bought ones) again, though it may
recommend an item of an earlier session (the other rows exclude every history
item). Position-only timestamps (the Amazon sets: one second per position)
put a user's whole history in one session.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Sequence

from streamrec.serving.config import DEFAULT_ARMS, ScorerConfig
from streamrec.settings import Settings
from streamrec.stream.keys import FeatureConfig
from streamrec.stream.schemas import EVENT_CLASSES, Event, Recommendation
from streamrec.trainer.data import POSITIVE_TYPES, Interactions
from streamrec.trainer.evaluate import LeaveOneOut, Popularity, slate_metrics

ROW = "served"
"""The row of the served slate in the leave-one-out table."""


@dataclass
class Served:
    """The served slates of the test users (in the split's order) and how they were made."""

    slates: list[list[str]]
    config: ScorerConfig
    models: list[str]
    events: int
    seconds: float

    def describe(self) -> str:
        """One line for the table's reader: what the served row is."""
        return (f"{ROW}: the scorer's engine ({', '.join(self.models)}) on features replayed from the history "
                f"as the worker writes them, as of each test user's last history event; greedy policy "
                f"(no exploration), arm {self.config.arms[0].name!r}, slates of {self.config.top_n} items "
                f"({self.events:,} events replayed in {self.seconds:.0f} s)")


def served_config(settings: Settings, slate: int) -> ScorerConfig:
    """The scorer's configuration from ``settings``, with the evaluation's policy: greedy, one default arm,
    ``slate`` items, nothing logged or explained."""
    return ScorerConfig.from_settings(settings, top_n=slate, exploration="off", arms=DEFAULT_ARMS, seed=0,
                                      log_features=False, explain_messages=False)


def history_events(inter: Interactions) -> list[Event]:
    """One event per row, in the history's (time) order, with ids ``r<row>``. Rows of a type the event
    schema does not know are left out (the worker dead-letters them)."""
    out = []
    for k, (user, item, ts, kind, session) in enumerate(zip(inter.user, inter.item, inter.ts, inter.kind,
                                                            inter.session)):
        cls = EVENT_CLASSES.get(kind)
        if cls is None:
            continue
        what = {"items": [str(item)]} if kind == "impression" else {"item_id": str(item)}
        out.append(cls(event_id=f"r{k}", user_id=str(user), ts=int(ts), session_id=session or None, **what))
    return out


def trigger_events(events: Sequence[Event], split: LeaveOneOut) -> dict[int, int]:
    """``{index in events: index in split.users}`` of each test user's last history event: their
    second-last positive one (the last is the target)."""
    last_two: dict[str, list[int]] = {}
    for k, ev in enumerate(events):
        if ev.type in POSITIVE_TYPES:
            pair = last_two.setdefault(ev.user_id, [])
            pair.append(k)
            del pair[:-2]
    return {last_two[u][0]: j for j, u in enumerate(split.users)}


class ServedEngine:
    """The trained models published to a temporary registry, loaded by the scorer's `ModelStore`, and the
    production `Engine` over a `MemoryFeatureReader` of ``store`` (a `MemoryFeatureStore`). A context
    manager: the registry goes on exit."""

    def __init__(self, trained, settings: Settings, config: ScorerConfig, store):
        self.trained, self.settings, self.config, self.store = trained, settings, config, store

    def __enter__(self):
        from streamrec.registry import Registry
        from streamrec.serving.engine import Engine
        from streamrec.serving.memory_features import MemoryFeatureReader
        from streamrec.serving.models import ModelStore

        cfg = self.config
        self._tmp = tempfile.TemporaryDirectory(prefix="streamrec-served-")
        settings = self.settings.replace(registry_uri=self._tmp.name)
        self.models = ModelStore(settings, cfg)
        try:
            _publish(self.trained, settings, cfg)
            for ann in Registry(settings.registry_uri).announcements((cfg.seq_model, cfg.ranker_model, cfg.graph_model)):
                if not self.models.offer(ann):
                    raise RuntimeError(f"the scorer refused {ann.name}/{ann.version}: {self.models.refused[-1][2]}")
        except BaseException:
            self.__exit__()
            raise
        self.models.swap_pending()
        self.engine = Engine(MemoryFeatureReader(self.store, history_items=cfg.history_items), self.models, cfg)
        return self

    def __exit__(self, *exc) -> None:
        self.models.stop()
        self._tmp.cleanup()

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models.live.values()]


def _publish(trained, settings: Settings, cfg: ScorerConfig) -> None:
    """Export and publish the trained models under the names the scorer's configuration serves."""
    from streamrec.trainer.publish import publish_graph, publish_trained

    publish_trained(settings, trained, cfg.seq_model, cfg.ranker_model, send=False)
    if getattr(trained, "graph", None) is not None:
        metrics = getattr(trained, "loo_metrics", {}).get("graph", {})
        publish_graph(settings, trained.graph, trained.catalog, metrics=metrics, data_window=trained.window,
                      real_histories=trained.split.test_history, name=cfg.graph_model, send=False)


def _full_slate(rec: Recommendation) -> None:
    """A degraded answer (scoring failed, served from the trending snapshot) must not be scored as the engine's."""
    if rec.degraded:
        raise RuntimeError(f"the engine answered {rec.user_id}'s request degraded (scoring failed; see the log): "
                           "its slate is not the served one")


def served_slates(trained, inter: Interactions, settings: Settings, slate: int) -> Served:
    """The slate the scorer would serve each test user of ``trained.split``, right after their last history
    event (see the module docstring)."""
    from streamrec.serving.memory_features import replay_slates
    from streamrec.stream.memory_store import MemoryFeatureStore

    started = time.perf_counter()
    cfg = served_config(settings, slate)
    events = history_events(inter)
    at = trigger_events(events, trained.split)
    store = MemoryFeatureStore(FeatureConfig.from_settings(settings), inter.categories)
    with ServedEngine(trained, settings, cfg, store) as served:
        by_user = replay_slates(served.engine, store, events, at, check=_full_slate)
        names = served.model_names
    slates = [by_user[j] for j in range(len(trained.split.users))]
    return Served(slates, cfg, names, max(at, default=-1) + 1, time.perf_counter() - started)


def evaluate_served(trained, inter: Interactions, settings: Settings,
                    ks: Sequence[int]) -> tuple[dict[str, float], Served]:
    """The served row of the leave-one-out table (every metric at each of ``ks``), and the slates."""
    split, catalog = trained.split, trained.catalog
    served = served_slates(trained, inter, settings, max(ks))
    pop = Popularity(split.train, catalog).counts
    return slate_metrics(served.slates, split.test_target, catalog, ks, pop), served

