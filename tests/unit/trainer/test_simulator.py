"""The hidden world of the simulator: seeded, a cascade click model with position bias and fatigue."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from streamrec.harness import simulator
from streamrec.harness.simulator import SimConfig, Tally, World


def test_doctests():
    assert doctest.testmod(simulator).failed == 0


def test_same_seed_same_world_and_choices():
    a, b = World(SimConfig(users=10, items=50, seed=3)), World(SimConfig(users=10, items=50, seed=3))
    ev_a = [a.next_event(u, 0)["item_id"] for u in a.users]
    ev_b = [b.next_event(u, 0)["item_id"] for u in b.users]
    assert ev_a == ev_b
    assert World(SimConfig(users=10, items=50, seed=4)).item_vecs.tobytes() != a.item_vecs.tobytes()


def test_position_bias_and_fatigue_lower_click_probability():
    w = World(SimConfig(users=3, items=40, seed=0))
    user = w.users[0]
    item = w.item_ids[int(np.argmax(w.item_vecs @ user.taste))]
    top = w.click_probs(user, [item])[0]
    low = w.click_probs(user, w.item_ids[:5] + [item])[-1]
    assert low < top
    user.clicks = 3
    assert w.click_probs(user, [item])[0] < top


def test_better_slate_has_higher_expected_reward():
    w = World(SimConfig(users=3, items=100, seed=0))
    user = w.users[1]
    order = np.argsort(-(w.item_vecs @ user.taste))
    best = [w.item_ids[i] for i in order[:10]]
    worst = [w.item_ids[i] for i in order[-10:]]
    assert w.expected_reward(user, best) > 2 * w.expected_reward(user, worst)


def test_react_uses_positions_of_the_slate_and_unknown_items_are_never_clicked():
    w = World(SimConfig(users=2, items=20, seed=0))
    user = w.users[0]
    for _ in range(50):
        for kind, item, pos in w.react(user, ["nope"] * 3 + w.item_ids[:5]):
            assert item != "nope" and pos >= 3
            assert kind in ("click", "add_to_cart", "purchase")


def test_new_items_join_the_catalog():
    w = World(SimConfig(users=1, items=5, seed=0))
    rec = w.add_item()
    assert rec["item_id"] == "sim-i5" and len(w.catalog()) == 6 and rec["category"].startswith("cat")


def test_tally_reports_per_variant_with_ci():
    t = Tally(bucket_s=10, t0=0.0)
    for i in range(20):
        t.add("a", i, realised=1.0 if i % 2 else 0.0, expected=0.5, clicked=bool(i % 2))
        t.add("b", i, realised=0.0, expected=0.1, clicked=False)
    rep = t.report()
    assert rep["a"]["total"]["ctr"] == 0.5 and rep["b"]["total"]["ctr"] == 0.0
    assert len(rep["a"]["buckets"]) == 2
    lo, hi = rep["a"]["total"]["reward_ci95"]
    assert lo < 0.5 < hi


def test_intervals_with_users_as_the_unit_are_wider_when_users_differ():
    """Two users, one who always clicks and one who never does: 40 slates look certain, 2 users do not."""
    from streamrec.harness.bench.online import summarise

    t = Tally(bucket_s=10, t0=0.0)
    for i in range(40):
        user = "u1" if i % 2 else "u2"
        t.add("a", i % 20, realised=float(user == "u1"), expected=0.5, clicked=user == "u1", user=user)
    report = {"variants": t.report(), "config": {"seconds": 20}}
    arm = summarise(report, warmup_s=0)["a"]
    assert arm["ctr"] == 0.5 and arm["users"] == 2
    slate_width = arm["ctr_ci95"][1] - arm["ctr_ci95"][0]
    user_width = arm["ctr_ci95_users"][1] - arm["ctr_ci95_users"][0]
    assert user_width > 2 * slate_width


@pytest.mark.parametrize("salt", [",", "s1,s1", "x" * 17, "s1,"])
def test_bench_online_refuses_bad_salts_before_starting_anything(salt, capsys):
    from argparse import Namespace

    from streamrec.harness.bench.online import cmd_bench_online

    assert cmd_bench_online(Namespace(out="/nonexistent-never-created", settings=None, salt=salt)) == 2
    assert "--salt" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["", "0,0", "x", "1,"])
def test_bench_online_refuses_bad_seeds_before_starting_anything(seed, capsys):
    from argparse import Namespace

    from streamrec.harness.bench.online import cmd_bench_online

    assert cmd_bench_online(Namespace(out="/nonexistent-never-created", settings=None, salt="s2", seed=seed)) == 2
    assert "--seed" in capsys.readouterr().err


def test_bots_click_everything_and_stay_out_of_the_population():
    w = World(SimConfig(users=3, items=20, seed=0, bots=2))
    assert len(w.users) == 5 and w.bots == {"sim-bot0", "sim-bot1"}
    bot = [u for u in w.users if u.user_id in w.bots][0]
    assert [p for _, _, p in w.react(bot, w.item_ids[:4])] == [0, 1, 2, 3]


def test_item_appeal_changes_clicks_but_not_browsing_or_the_rest_of_the_world():
    plain, appealing = World(SimConfig(users=20, items=60, seed=5, appeal=0.0)), World(
        SimConfig(users=20, items=60, seed=5, appeal=1.0))
    assert plain.item_vecs.tobytes() == appealing.item_vecs.tobytes()
    assert [u.taste.tobytes() for u in plain.users] == [u.taste.tobytes() for u in appealing.users]
    # Organic browsing (what a model trained on logs sees) is the same event for event.
    assert [plain.next_event(u, 0)["item_id"] for u in plain.users] == [
        appealing.next_event(u, 0)["item_id"] for u in appealing.users]
    assert not plain.item_appeal.any() and 0.7 < appealing.item_appeal.std() < 1.3
    user = appealing.users[0]
    best, worst = np.argmax(appealing.item_appeal), np.argmin(appealing.item_appeal)
    ids = [appealing.item_ids[best], appealing.item_ids[worst]]
    lift = appealing.attraction(user, ids) / plain.attraction(plain.users[0], ids)
    assert lift[0] > 1.0 > lift[1]


def test_best_slate_beats_any_other_and_leaves_out_the_session_and_retired_items():
    w = World(SimConfig(users=3, items=60, seed=4, retire_oldest=True))
    user = w.users[0]
    view = w.next_event(user, now_ms=0)["item_id"]
    w.retire_oldest()
    best = w.best_slate(user)
    assert view not in best and w.item_ids[0] not in best and len(set(best)) == 10
    rng = np.random.default_rng(0)
    listed = [i for i in w.item_ids[w.retired:] if i != view]
    for _ in range(50):
        other = list(rng.choice(listed, size=10, replace=False))
        assert w.expected_reward(user, best) >= w.expected_reward(user, other) - 1e-12
    # A clicked item joins the session's items; a new session starts with none.
    w.rng = np.random.default_rng(1)
    actions = []
    while not actions:
        actions = w.react(user, best)
    assert actions[0][1] in user.seen and actions[0][1] not in w.best_slate(user)
    w.start_session(user)
    assert user.seen == set()


def test_summary_reports_each_arm_against_the_best_slates_and_the_share_of_the_gap_closed():
    from streamrec.harness.bench.online import pooled, summarise

    t = Tally(bucket_s=10, t0=0.0)
    for i in range(40):
        for arm, expected in (("frozen", 0.5), ("online", 0.75), ("popularity", 0.4)):
            t.add(arm, i % 20, realised=expected, expected=expected, clicked=i % 2 == 0, user=f"{arm}{i % 4}",
                  best=1.0, degraded=arm == "online" and i < 10)
    s = summarise({"variants": t.report(), "config": {"seconds": 20}}, warmup_s=0)
    assert s["frozen"]["best_expected_reward_per_slate"] == 1.0
    assert s["online"]["degraded_share"] == 0.25 and s["frozen"]["degraded_share"] == 0.0
    assert s["online"]["expected_of_best"] == 0.75
    assert abs(s["online_share_of_frozen_gap_to_best"] - 0.5) < 1e-9
    assert abs(pooled({"a": s, "b": s})["online_share_of_frozen_gap_to_best"] - 0.5) < 1e-9


def test_demo_view_rows_show_each_arm_against_the_best_slates():
    from types import SimpleNamespace

    from streamrec.harness.demo import _arm_rows

    t = Tally(bucket_s=10, t0=0.0)
    t.add("frozen", 1, realised=1.0, expected=0.6, clicked=True, user="u1", best=1.2)
    t.add("frozen", 12, realised=0.0, expected=0.4, clicked=False, user="u2", best=0.8)
    assert _arm_rows(SimpleNamespace(tally=t)) == [("frozen", 2, 0.5, 0.5, 0.5)]
