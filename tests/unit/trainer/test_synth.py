"""The synthetic history: seeded, valid events, and the planted structure is really there."""

from __future__ import annotations

from collections import Counter

import msgspec
import numpy as np

from streamrec.stream.schemas import decode_event
from streamrec.trainer.importers import load
from streamrec.trainer.synth import SynthConfig, synthesize, write_synth


def test_same_seed_same_events_other_seed_other_events():
    cfg = SynthConfig(users=20, items=40, seed=5)
    assert synthesize(cfg).events == synthesize(cfg).events
    assert synthesize(cfg).events != synthesize(SynthConfig(users=20, items=40, seed=6)).events


def test_every_event_passes_the_event_schema(synth_data):
    for e in synth_data.events[:3000]:
        decode_event(msgspec.json.encode(e))
    ts = [e["ts"] for e in synth_data.events]
    assert ts == sorted(ts)


def test_popularity_follows_a_power_law(synth_data):
    views = Counter(e["item_id"] for e in synth_data.events if e["type"] == "view")
    counts = np.array(sorted(views.values(), reverse=True))
    top10pct = counts[: len(counts) // 10].sum() / counts.sum()
    assert top10pct > 0.3  # uniform would give 0.1


def test_sessions_follow_the_planted_successors(synth_data):
    succ = dict(zip([r["item_id"] for r in synth_data.items], synth_data.truth["successor"]))
    by_session: dict[str, list[str]] = {}
    for e in synth_data.events:
        if e["type"] == "view":
            by_session.setdefault(e["session_id"], []).append(e["item_id"])
    pairs = [(a, b) for seq in by_session.values() for a, b in zip(seq, seq[1:])]
    share = np.mean([succ[a] == b for a, b in pairs])
    assert share > 0.3  # p_sequential minus interleaved clicks; by chance it would be ~1/200


def test_clicks_are_position_biased(synth_data):
    shown = sum(len(e["items"]) for e in synth_data.events if e["type"] == "impression")
    pos = Counter(e["position"] for e in synth_data.events if e["type"] == "click")
    assert shown > 0 and pos[0] > 2 * pos[5] > 0


def test_users_tastes_concentrate_on_few_categories(synth_data):
    cat = {r["item_id"]: r["category"] for r in synth_data.items}
    per_user: dict[str, Counter] = {}
    for e in synth_data.events:
        if e["type"] == "view":
            per_user.setdefault(e["user_id"], Counter())[cat[e["item_id"]]] += 1
    top3 = np.mean([sum(c for _, c in cnt.most_common(3)) / sum(cnt.values()) for cnt in per_user.values()])
    assert top3 > 0.5  # 3 of 12 categories: uniform would give 0.25


def test_written_files_load_back(tmp_path):
    data = synthesize(SynthConfig(users=10, items=20, sessions_per_user=2, seed=1))
    paths = write_synth(data, tmp_path)
    inter = load(tmp_path)
    assert inter.summary().users == 10
    assert len(inter.categories) == 20 and set(inter.categories.values()) <= set(data.truth["category"])
    n_rows = sum(len(e.get("items", [1])) for e in data.events)
    assert len(inter) == n_rows and paths["events"].exists()
