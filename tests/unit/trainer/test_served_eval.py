"""`streamrec evaluate --served`: the scorer's engine scored beside each candidate source, on a small history."""

from __future__ import annotations

import json
import re
import tempfile

import pytest

from streamrec.settings import Settings
from streamrec.trainer.evaluate import Popularity, slate_metrics

ROWS = ("sasrec", "graph", "popularity", "co-visitation", "served")
COLUMNS = ("HR", "NDCG", "MRR", "P", "R", "MAP", "coverage", "pop")


@pytest.fixture(scope="module")
def small_trained(small_interactions):
    """Tiny models (one epoch) with the graph model, as `streamrec evaluate` trains them."""
    from streamrec.trainer.graph import GraphConfig, train_graph
    from streamrec.trainer.train import TrainConfig, train_all

    trained = train_all(small_interactions, TrainConfig.tiny(epochs=1))
    trained.graph, _ = train_graph(trained.split, trained.catalog, GraphConfig(dim=8, epochs=1, progress=False))
    trained.loo_metrics = {}
    return trained


def table_rows(text: str) -> dict[tuple[str, int], tuple[str, ...]]:
    """(model, K) -> the metric cells of a printed leave-one-out table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 2 + len(COLUMNS) and cells[0] in ROWS:
            rows[(cells[0], int(cells[1]))] = tuple(cells[2:])
    return rows


def test_evaluate_served_prints_the_engines_row_beside_each_source(tmp_path, monkeypatch, capsys,
                                                                   small_interactions):
    from streamrec.cli import main

    monkeypatch.setenv("STREAMREC_REGISTRY_URI", str(tmp_path / "registry"))
    path = tmp_path / "events.jsonl"
    with open(path, "w") as f:
        for u, i, t, kind in zip(small_interactions.user, small_interactions.item, small_interactions.ts,
                                 small_interactions.kind):
            if kind != "impression":
                f.write(json.dumps({"event_id": f"{u}-{t}-{i}", "type": kind, "user_id": u, "item_id": i,
                                    "ts": int(t)}) + "\n")
    assert main(["evaluate", "--data", str(path), "--served", "--k", "5", "10", "--epochs", "1", "--dim", "16",
                 "--graph-dim", "8", "--item-buckets", "2048", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rows = table_rows(printed)
    assert {name for name, _ in rows} == set(ROWS) and {k for _, k in rows} == {5, 10}
    for k in (5, 10):
        for name in ROWS[:-1]:
            assert rows[("served", k)] != rows[(name, k)], f"served equals {name} at K={k}"
    line = next(line for line in printed.splitlines() if line.startswith("served:"))
    for words in ("greedy policy (no exploration)", "arm 'default'", "slates of 10 items", "sasrec@", "ranker@",
                  "graph@"):
        assert words in line
    assert not (tmp_path / "registry").exists()  # the served models go to a temporary registry only
    assert main(["evaluate", "--data", str(path), "--served", "--model", "sasrec"]) == 2


def test_the_served_row_is_the_engines_slates_at_each_test_users_last_history_event(small_trained,
                                                                                    small_interactions):
    """Direct `Engine.recommend` calls on the replayed features, made here, give the same slates and row."""
    from streamrec.registry import Registry
    from streamrec.serving.engine import Engine
    from streamrec.serving.memory_features import MemoryFeatureReader
    from streamrec.serving.models import ModelStore
    from streamrec.stream.keys import FeatureConfig
    from streamrec.stream.memory_store import MemoryFeatureStore
    from streamrec.trainer.publish import publish_graph, publish_trained
    from streamrec.trainer.served_eval import evaluate_served, history_events, served_config, trigger_events

    trained, inter, settings = small_trained, small_interactions, Settings()
    row, served = evaluate_served(trained, inter, settings, [5, 10])
    split = trained.split
    assert len(served.slates) == len(split.users) and all(0 < len(s) <= 10 for s in served.slates)
    assert served.config.exploration == "off" and [a.name for a in served.config.arms] == ["default"]

    cfg = served_config(settings, 10)
    events = history_events(inter)
    at = trigger_events(events, split)
    store = MemoryFeatureStore(FeatureConfig.from_settings(settings), inter.categories)
    direct: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory() as registry:
        own = settings.replace(registry_uri=registry)
        publish_trained(own, trained, send=False)
        publish_graph(own, trained.graph, trained.catalog, metrics={}, data_window={}, send=False)
        models = ModelStore(own, cfg)
        for ann in Registry(registry).announcements(("sasrec", "ranker", "graph")):
            assert models.offer(ann)
        models.swap_pending()
        engine = Engine(MemoryFeatureReader(store, history_items=cfg.history_items), models, cfg)
        for k, ev in enumerate(events[:max(at) + 1]):
            request = store.apply(ev)
            if k in at:
                j = at[k]
                assert request.user_id == split.users[j] and request.item_id == split.test_history[j][-1]
                (rec,) = engine.recommend([request], now_ms=request.ts)
                assert not rec.degraded and len(rec.models) == 3
                direct[j] = [item.item_id for item in rec.items]
        models.stop()
    slates = [direct[j] for j in range(len(split.users))]
    assert slates == served.slates
    pop = Popularity(split.train, trained.catalog).counts
    assert slate_metrics(slates, split.test_target, trained.catalog, [5, 10], pop) == row
