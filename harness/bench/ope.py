"""`streamrec bench ope`: the promotion gate's off-policy estimators on real logged data.

The Open Bandit Dataset (`streamrec.trainer.obd`) logs the same campaigns under a uniform random policy
and under Bernoulli Thompson sampling (BTS). From the random logs alone, `ips` and `snips` estimate the
click-through rate BTS would get, with weights capped as the gate caps them and uncapped; the BTS logs
say what it really got (its on-policy CTR). The error is relative, ``|estimate - on-policy| / on-policy``,
the measure of the dataset's authors, on the whole sample and as a mean over bootstrap resamples of the
random logs (their protocol). Writes ``bench-ope.json`` to ``--out`` and prints a table.

>>> relative_error(0.006, 0.005)
0.2
"""

from __future__ import annotations

import argparse
import datetime
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamrec.console import make_console
from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.online.gate import GateConfig
from streamrec.trainer.obd import (BTS_PRIOR, DEFAULT_ROOT, OBP_SEED, OBP_SIMULATIONS, Logs, OBDError,
                                   bts_action_dist, log_path, present_campaigns, read_logs)
from streamrec.online.offpolicy import Estimate, ips, snips

console = make_console(stderr=True)
ESTIMATORS = {"ips": ips, "snips": snips}
GATE_CAP = GateConfig().weight_cap


@dataclass(frozen=True)
class Published:
    """A mean relative error (and its standard deviation over bootstrap runs) published by the dataset's authors."""

    mean: float
    sd: float
    source: str


_OBP_EXAMPLE = ("Open Bandit Pipeline repository (st-tech/zr-obp, commit 8cbd5fa), examples/obd/README.md: small "
                "sample, campaign 'all', BTS estimated from the random logs, 30 bootstrap runs, seed 12345 "
                "(IPW and SNIPW, uncapped)")
PUBLISHED = {("all", "ips"): Published(0.311082, 0.311170, _OBP_EXAMPLE),
             ("all", "snips"): Published(0.311795, 0.334736, _OBP_EXAMPLE)}
"""What the authors published for the same estimators and data. The paper's own tables (Saito et al., NeurIPS
2021 Datasets and Benchmarks, Section 5) are on the full dataset and could not be retrieved where this was
written, so none of their numbers is here."""


def relative_error(estimate: float, truth: float) -> float:
    """``|estimate - truth| / truth``; NaN when the truth is 0 (no click at all), where it means nothing."""
    return abs(estimate - truth) / truth if truth > 0 else math.nan


def target_probability(dist: np.ndarray, logs: Logs, path: Path) -> np.ndarray:
    """Per logged row, the evaluation policy's probability of that item at that position."""
    if logs.item.max() >= len(dist):
        raise OBDError(f"{path}: item_id {logs.item.max()} is beyond the {len(dist)} items of the campaign's "
                       "BTS prior; is the file from another campaign?")
    return dist[logs.item, logs.position]


def estimate_rows(campaign: str, logs: Logs, target: np.ndarray, truth: float, resamples: list[np.ndarray]) -> list:
    """One row per estimator and weighting: the estimate on all of ``logs``, its relative error against
    ``truth``, and the mean and spread of that error over the bootstrap ``resamples`` (row indices)."""
    rows = []
    for name, estimator in ESTIMATORS.items():
        for cap in (GATE_CAP, math.inf):
            est: Estimate = estimator(logs.click, target, logs.propensity, cap)
            boot = [relative_error(estimator(logs.click[r], target[r], logs.propensity[r], cap).value, truth)
                    for r in resamples]
            rows.append({"campaign": campaign, "estimator": name, "cap": cap if math.isfinite(cap) else None,
                         "estimate": est.value, "ci_low": est.low, "ci_high": est.high, "ess": est.ess,
                         "on_policy_ctr": truth, "relative_error": relative_error(est.value, truth),
                         "bootstrap": {"runs": len(boot), "mean": _mean(boot), "sd": _sd(boot)},
                         "published": _published(campaign, name, cap)})
    return rows


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _sd(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def _published(campaign: str, estimator: str, cap: float) -> dict | None:
    """The authors' figure for this row: theirs are uncapped, so a capped row has none."""
    found = PUBLISHED.get((campaign, estimator))
    return asdict(found) if found and not math.isfinite(cap) else None


def evaluate_campaign(root: Path, campaign: str, n_sim: int, seed: int, n_boot: int, progress=None) -> tuple:
    """The campaign's summary and its estimate rows; ``progress`` is an optional rich `Progress`."""
    random_path, bts_path = log_path(root, "random", campaign), log_path(root, "bts", campaign)
    random_logs, bts_logs = read_logs(random_path), read_logs(bts_path)
    task = progress.add_task(f"{campaign}: BTS action distribution", total=n_sim) if progress else None
    dist = bts_action_dist(BTS_PRIOR[campaign], n_sim, seed,
                           (lambda k: progress.advance(task, k)) if progress else None)
    target = target_probability(dist, random_logs, random_path)
    # Resamples drawn once per campaign and shared, so each estimator is judged on the same ones.
    rng = np.random.default_rng([seed, len(random_logs)])
    resamples = [rng.integers(0, len(random_logs), len(random_logs)) for _ in range(n_boot)]
    weights = target / random_logs.propensity
    summary = {"campaign": campaign, "items": len(dist), "n_random": len(random_logs), "n_bts": len(bts_logs),
               "random_ctr": random_logs.ctr, "on_policy_ctr": bts_logs.ctr, "max_weight": float(weights.max()),
               "share_over_gate_cap": float((weights > GATE_CAP).mean()), "bts_action_dist": dist.tolist()}
    return summary, estimate_rows(campaign, random_logs, target, bts_logs.ctr, resamples)


def run(root: Path = DEFAULT_ROOT, n_sim: int = OBP_SIMULATIONS, seed: int = OBP_SEED, n_boot: int = 30,
        progress=None) -> dict:
    """Every campaign present under ``root``; returns the JSON report. Raises `OBDError` on missing data."""
    campaigns = present_campaigns(Path(root))
    summaries, rows = [], []
    for campaign in campaigns:
        summary, campaign_rows = evaluate_campaign(Path(root), campaign, n_sim, seed, n_boot, progress)
        summaries.append(summary)
        rows += campaign_rows
    return {"benchmark": "ope", "date": datetime.date.today().isoformat(), "data": str(root),
            "evaluation_policy": "bts", "behaviour_policy": "random", "n_sim": n_sim, "seed": seed,
            "bootstrap_runs": n_boot, "gate_cap": GATE_CAP, "campaigns": summaries, "rows": rows}


def render(report: dict):
    """The report as a rich table, one row per campaign, estimator and weighting."""
    from rich.table import Table

    table = Table(title=f"BTS click-through estimated from the random logs (Open Bandit Dataset, "
                        f"{report['n_sim']:,} BTS simulations, {report['bootstrap_runs']} bootstrap runs)")
    for col in ("campaign", "estimator", "weights", "estimate [95% CI]", "on-policy CTR", "rel. error",
                "bootstrap rel. error", "ESS", "published rel. error"):
        table.add_column(col, justify="left" if col in ("campaign", "estimator", "weights") else "right")
    for r in report["rows"]:
        boot, pub = r["bootstrap"], r["published"]
        table.add_row(r["campaign"], r["estimator"], f"cap {r['cap']:g}" if r["cap"] else "uncapped",
                      f"{r['estimate']:.5f} [{r['ci_low']:.5f}, {r['ci_high']:.5f}]", f"{r['on_policy_ctr']:.5f}",
                      f"{r['relative_error']:.3f}", _mean_sd(boot["mean"], boot["sd"]), f"{r['ess']:,.0f}",
                      _mean_sd(pub["mean"], pub["sd"]) if pub else "-")
    return table


def _mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def cmd_bench_ope(args) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    started = run_started()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console,
                      transient=True) as progress:
            report = run(Path(args.data), args.n_sim, args.seed, args.bootstrap, progress)
    except OBDError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    make_console().print(render(report))
    sources = sorted({pub["source"] for r in report["rows"] if (pub := r["published"])})
    for source in sources or ["none for these campaigns (see streamrec.harness.bench.ope.PUBLISHED)"]:
        console.print(f"published rel. error: {source}")
    out = output_folder(args)
    write_report(out, "bench-ope.json", report, started)
    console.print(f"wrote {out / 'bench-ope.json'}")
    return 0


def _at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def register_bench(bench_sub) -> None:
    """Add `streamrec bench ope`."""
    p = bench_sub.add_parser("ope", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                             help="the gate's IPS and SNIPS on the Open Bandit Dataset: BTS's CTR from random logs")
    p.add_argument("--data", default=str(DEFAULT_ROOT), help="folder with random/ and bts/ (streamrec data fetch obd)")
    p.add_argument("--n-sim", type=_at_least(1), default=OBP_SIMULATIONS,
                   help="Monte Carlo simulations of BTS for its action distribution (the authors' default)")
    p.add_argument("--seed", type=int, default=OBP_SEED, help="seed of the simulations and of the bootstrap")
    p.add_argument("--bootstrap", type=_at_least(0), default=30, help="bootstrap resamples of the random logs")
    p.add_argument("--out", default="bench-results", help="folder for the JSON")
    p.set_defaults(func=cmd_bench_ope)
