"""`streamrec bench ope` on tiny Open Bandit Dataset files: the reader, the estimators against the formula
computed here independently, the BTS replay, the relative error, and the errors on missing data."""

from __future__ import annotations

import doctest
import importlib
import json
import math

import numpy as np
import pytest

from streamrec.cli import main
from streamrec.trainer.obd import BTS_PRIOR, BetaPrior, OBDError, bts_action_dist, log_path, read_logs
from streamrec.online.offpolicy import ips, snips
from streamrec.harness.bench.ope import GATE_CAP, relative_error, run

HEADER = ",timestamp,item_id,position,click,propensity_score,user_feature_0,user-item_affinity_0"


def write_log(path, rows):
    """An OBD-format file: ``rows`` of (item_id, position 1..3, click, propensity_score)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [f"{i},2019-11-24 00:0{i % 10}:00+00:00,{item},{pos},{click},{p!r},cef3,0.0"
                        for i, (item, pos, click, p) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def tiny_rows(seed: int, n: int = 400, items: int = 34):
    """Logged rows with known, unequal propensities (as a non-uniform logger would leave)."""
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(items)), int(rng.integers(1, 4)), int(rng.random() < 0.2),
             float(rng.uniform(0.005, 0.2))) for _ in range(n)]


def reference_ips(rows, target, cap):
    """The IPS formula, term by term: mean of min(pi(item, slot) / propensity, cap) * click."""
    return sum(min(target[item][pos - 1] / p, cap) * click for item, pos, click, p in rows) / len(rows)


def reference_snips(rows, target, cap):
    """The self-normalised formula: sum of w * click over sum of w."""
    w = [min(target[item][pos - 1] / p, cap) for item, pos, _, p in rows]
    return sum(wi * click for wi, (_, _, click, _) in zip(w, rows)) / sum(w)


def test_reader_gives_items_zero_based_slots_clicks_and_propensities(tmp_path):
    path = tmp_path / "random" / "men" / "men.csv"
    write_log(path, [(14, 3, 0, 1 / 34), (0, 1, 1, 0.5)])
    logs = read_logs(path)
    assert logs.item.tolist() == [14, 0]
    assert logs.position.tolist() == [2, 0]
    assert logs.click.tolist() == [0.0, 1.0]
    assert logs.propensity.tolist() == [1 / 34, 0.5]
    assert logs.ctr == 0.5


@pytest.mark.parametrize("cap", [GATE_CAP, 2.0, math.inf])
def test_ips_and_snips_equal_the_formula_to_1e9(cap):
    rows = tiny_rows(seed=1)
    target = np.random.default_rng(2).dirichlet(np.ones(34), size=3).T  # [items, slots], a column per slot
    item, pos, click, p = (np.array(c) for c in zip(*rows))
    pi = target[item, pos - 1]
    assert abs(ips(click, pi, p, cap).value - reference_ips(rows, target, cap)) < 1e-9
    assert abs(snips(click, pi, p, cap).value - reference_snips(rows, target, cap)) < 1e-9


def test_bts_replay_draws_one_simulation_after_another_like_the_production_policy():
    prior = BTS_PRIOR["men"]
    rng = np.random.RandomState(7)
    expected = np.zeros((34, 3))
    for _ in range(600):  # one draw per item, the three highest shown, best first
        shown = np.argsort(rng.beta(np.array(prior.alpha, float), np.array(prior.beta, float)))[::-1][:3]
        expected[shown, [0, 1, 2]] += 1
    got = bts_action_dist(prior, n_sim=600, seed=7, chunk=250)  # chunks must not change the draws
    assert np.array_equal(got, expected / 600)


def test_bts_shows_the_item_with_the_clearly_best_prior_first():
    dist = bts_action_dist(BetaPrior(alpha=(1, 900, 1, 1), beta=(999, 100, 999, 999)), n_sim=500)
    assert dist[1, 0] == 1.0 and dist[1, 1:].sum() == 0.0


def test_relative_error():
    assert relative_error(0.006, 0.005) == pytest.approx(0.2)
    assert relative_error(0.004, 0.005) == pytest.approx(0.2)
    assert relative_error(0.005, 0.005) == 0.0
    assert math.isnan(relative_error(0.001, 0.0))


def test_bench_estimates_bts_from_the_random_logs_and_scores_it_against_the_bts_logs(tmp_path):
    random_rows, bts_rows = tiny_rows(seed=3), tiny_rows(seed=4)
    write_log(log_path(tmp_path, "random", "men"), random_rows)
    write_log(log_path(tmp_path, "bts", "men"), bts_rows)
    report = run(tmp_path, n_sim=2_000, seed=5, n_boot=4)

    (campaign,) = report["campaigns"]
    assert campaign["campaign"] == "men" and campaign["n_random"] == len(random_rows)
    truth = sum(r[2] for r in bts_rows) / len(bts_rows)
    assert campaign["on_policy_ctr"] == pytest.approx(truth, abs=1e-12)
    assert np.array_equal(campaign["bts_action_dist"], bts_action_dist(BTS_PRIOR["men"], n_sim=2_000, seed=5))

    target = campaign["bts_action_dist"]
    reference = {"ips": reference_ips, "snips": reference_snips}
    assert [(r["estimator"], r["cap"]) for r in report["rows"]] == [
        ("ips", GATE_CAP), ("ips", None), ("snips", GATE_CAP), ("snips", None)]
    for row in report["rows"]:
        cap = row["cap"] or math.inf
        assert abs(row["estimate"] - reference[row["estimator"]](random_rows, target, cap)) < 1e-9
        assert row["relative_error"] == pytest.approx(abs(row["estimate"] - truth) / truth)
        assert row["bootstrap"]["runs"] == 4 and row["bootstrap"]["mean"] >= 0
        assert row["published"] is None  # the authors published figures for 'all' only


def test_cli_prints_the_table_and_writes_the_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # a narrower screen (as under xdist) wraps the cells' words
    for policy, seed in (("random", 3), ("bts", 4)):
        write_log(log_path(tmp_path / "obd", policy, "women"), tiny_rows(seed, items=46))
    code = main(["bench", "ope", "--data", str(tmp_path / "obd"), "--n-sim", "500", "--bootstrap", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "women" in out and "snips" in out and "uncapped" in out
    report = json.loads((tmp_path / "out" / "bench-ope.json").read_text())
    assert report["n_sim"] == 500 and len(report["rows"]) == 4


def test_missing_sample_names_the_file_and_the_fetch_command(tmp_path, capsys):
    with pytest.raises(OBDError) as err:
        run(tmp_path, n_sim=10, n_boot=0)
    assert str(log_path(tmp_path, "random", "men")) in str(err.value)
    assert "streamrec data fetch obd" in str(err.value)
    assert main(["bench", "ope", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "streamrec data fetch obd" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_half_a_campaign_names_the_missing_file(tmp_path):
    write_log(log_path(tmp_path, "random", "women"), tiny_rows(seed=3, items=46))
    with pytest.raises(OBDError, match="bts/women/women.csv: not found"):
        run(tmp_path, n_sim=10, n_boot=0)


def test_a_file_of_another_format_is_refused_by_column(tmp_path):
    path = tmp_path / "men.csv"
    path.write_text("item_id,position,click\n1,1,0\n")
    with pytest.raises(OBDError, match="no column propensity_score"):
        read_logs(path)


@pytest.mark.parametrize("name", ["streamrec.trainer.obd", "streamrec.harness.bench.ope",
                                  "streamrec.online.offpolicy"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
