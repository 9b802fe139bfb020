"""Graph candidates live: a published graph model (LightGCN arrays) is loaded by the scorer through
`model-versions`, its candidates reach recommendations with reason `graph`, and a click on one of them
is counted for the sources that proposed it (real Kafka, Redis and worker)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamrec.stream.sdk import EventPublisher, RecommendationConsumer

from .test_scorer import ITEMS, Running, metric, stack, traffic  # noqa: F401 - `stack` is a fixture

pytestmark = pytest.mark.integration


def publish_graph_model(settings, tmp_path, version: str = "g1"):
    """A small LightGCN on a ring of items (each item linked to its neighbours), exported and published."""
    import torch

    from streamrec.trainer.graph import LightGCN, export_graph
    from streamrec.trainer.publish import publish

    torch.manual_seed(0)
    users = np.repeat(np.arange(len(ITEMS)), 3)
    items = np.array([(u + d) % len(ITEMS) for u in range(len(ITEMS)) for d in range(3)])
    model = LightGCN(len(ITEMS), len(ITEMS), dim=8, layers=2)
    model.set_graph(users, items)
    exported = export_graph(model, tmp_path / f"graph-{version}", ITEMS)
    return publish(settings, "graph", exported, kind=model.kind, metrics={"HR@10": 0.5}, data_window={},
                   hashing={}, version=version)[1]


def test_graph_candidates_reach_recommendations_and_clicks_are_attributed(stack, tmp_path):
    s = stack
    publish_graph_model(s, tmp_path)
    with EventPublisher(s) as pub:
        traffic(pub, 30, prefix="warm")
    # Co-visitation off: on a 40-item catalog it alone would fill every slate ahead of the graph.
    running = Running(s, covis_candidates=0)
    try:
        with RecommendationConsumer(s) as recs, EventPublisher(s) as pub:
            sent = traffic(pub, 12, prefix="g")
            pub.flush()
            answers = [recs.wait_for(eid, timeout=30) for eid, *_ in sent]
            with_graph = [r for r in answers if any(i.reason == "graph" for i in r.items)]
            assert with_graph, [[i.reason for i in r.items] for r in answers]
            assert all("graph@g1" in r.models for r in with_graph)
            # The user clicks a graph-proposed item of their slate: the click carries the rec_id.
            rec = with_graph[0]
            clicked = next(i.item_id for i in rec.items if i.reason == "graph")
            before = _click_counts(running)
            eid = pub.click(rec.user_id, clicked, rec_id=rec.rec_id, session_id=rec.session_id)
            pub.flush()
            recs.wait_for(eid, timeout=30)
        after = _click_counts(running)  # deltas: the counters are process-wide
        assert after["clicks"] - before["clicks"] == 1
        assert after["graph"] - before["graph"] == 1
        # Without co-visitation and a sequence model, only the graph and the crowd could have proposed it.
        assert all(after[src] == before[src] for src in ("seq", "covisit", "content")), (before, after)
        status = json.loads(running.get("/readyz")[1])
        assert status["providers"].get("graph") == "numpy"
    finally:
        assert running.stop() == 0


def _click_counts(running) -> dict[str, float]:
    body = running.get("/metrics")[1]
    out = {src: metric(body, "streamrec_scorer_proposed_clicks_total", source=src)
           for src in ("seq", "covisit", "content", "graph", "trending")}
    out["clicks"] = metric(body, "streamrec_scorer_attributed_clicks_total")
    return out
