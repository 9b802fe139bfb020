"""`streamrec bench online`: the closed loop, three A/B arms at once, true reward from the simulator.

Arms (the scorer's A/B variants, users split by stable hash):

- ``popularity``: popularity only, the scorer's ``trending`` arm: the most
  viewed items lately that the user has not seen, no model and no
  co-visitation;
- ``frozen``: the initial models, pinned (``ranker@v0``, ``sasrec@v0``);
- ``online``: follows the live versions that `streamrec learn` publishes.

The initial models: a sequence model pre-trained on organic browsing
sessions drawn from the simulator's world (what a shop would have in its
logs before launch), and a ranker that starts as "order by the sequence
model's score". The run: fresh topics and Redis prefix, a worker and a
learner as child processes, the scorer in this process, the simulator
driving them; the report is JSON plus a PNG (CTR per arm over time), with
the event-to-published-model seconds read from the learner's metrics.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch

from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.harness.simulator import SimConfig, Simulation, World
from streamrec.trainer.dcn import DENSE_FEATURES, DCNRanker
from streamrec.trainer.fit import SparseAwareAdam
from streamrec.trainer.sasrec import SASRec

ARMS = "popularity=1:trending,frozen=1:ranker@v0:sasrec@v0,online=1"
"""The three arms of `streamrec bench online` and of the demo."""
PRETRAIN_STEPS = 1200
"""Batches of 64 users' organic sessions the initial sequence model trains on: where its held-out loss
flattens (5.53 at 150, the count until 2026-11-29, which left the frozen arm under-trained; 5.44 at 600,
5.43 at 1,200, 5.40 at 2,400; about 18 s on the 2-core machine)."""
LEARNER_FLAGS = ("--window-ms", "5000", "--gate-every-s", "10", "--gate-every-samples", "5000",
                 "--min-gate-samples", "500")
"""`streamrec learn` flags of a short closed-loop run (bench and demo): a 5 s window, a gate every 10 s."""


def feature_ranker(feature: str, buckets: int = 20_000) -> DCNRanker:
    """A DCN-V2 whose logit is one standardised dense feature: a hand-set policy in the ranker's format.

    It carries a per-item bias (zero here), which the online trainer fills from rewards.
    """
    model = DCNRanker(user_buckets=buckets, item_buckets=buckets, cat_buckets=200, dim=8, hidden=(32,), dropout=0.0,
                      item_bias=True)
    with torch.no_grad():
        # Cross layers with zero weights pass x0 through, and the head reads the chosen feature only;
        # embeddings and the deep part keep their random start, so fine-tuning has gradients everywhere.
        for layer in model.cross:
            layer.lin.weight.zero_()
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[0, 3 * 8 + DENSE_FEATURES.index(feature)] = 1.0
    return model


def pretrained_sasrec(world: World, seed: int, steps: int = PRETRAIN_STEPS) -> SASRec:
    """The sequence model trained on organic sessions of the hidden world (no recommendations involved)."""
    torch.manual_seed(seed)
    cats = {i: f"cat{c}" for i, c in zip(world.item_ids, world.item_cat)}
    model = SASRec(item_buckets=20_000, cat_buckets=200, dim=16, layers=1, heads=1, max_len=20, dropout=0.1)
    model.set_catalog(world.item_ids, [cats[i] for i in world.item_ids])
    index = {i: k for k, i in enumerate(world.item_ids)}
    opt = SparseAwareAdam(model, lr=3e-3)
    for _ in range(steps):
        users = [world.users[int(world.rng.integers(len(world.users)))] for _ in range(64)]
        seqs = [[world.browse(u) for _ in range(8)] for u in users]
        data = model.training_data(seqs, cats, index)
        model.fit_batch({k: torch.from_numpy(v) for k, v in data.items()}, opt)
    return model


def initial_models(settings, cfg: SimConfig, seed: int, workdir: Path, steps: int = PRETRAIN_STEPS) -> None:
    """Train and publish what the model arms start from (``sasrec@v0``, ``ranker@v0``); the bench and the demo.

    The sequence model trains on a fresh `World` of ``cfg``, so the simulation's own world draws exactly
    what it would without this step.
    """
    from streamrec.trainer.export import export_dcn, export_sasrec

    world = World(cfg)
    cats = {i: f"cat{c}" for i, c in zip(world.item_ids, world.item_cat)}
    seq = pretrained_sasrec(world, seed, steps)
    initial = feature_ranker("seq_score")
    _publish(settings, "sasrec", seq, export_sasrec(seq, workdir / "seq", world.item_ids, cats), "v0")
    _publish(settings, "ranker", initial, export_dcn(initial, workdir / "v0"), "v0")


def _publish(settings, name, model, exported, version):
    from streamrec.trainer.publish import publish
    from streamrec.trainer.weights import WEIGHTS, save_weights

    exported.files[WEIGHTS] = save_weights(model, Path(exported.files[next(iter(exported.files))]).parent / "w")
    hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
    publish(settings, name, exported, kind=model.kind, metrics={}, data_window={"source": "bench online"},
            hashing=hashing, version=version)


def _ci(clicks: float, n: float) -> list[float]:
    p = clicks / max(n, 1.0)
    half = 1.96 * (p * (1 - p) / max(n, 1.0)) ** 0.5
    return [p - half, p + half]


def summarise(report: dict, warmup_s: float) -> dict:
    """Per arm after the warm-up: CTR with a 95% CI, realised and expected reward per slate."""
    out = {}
    for arm, v in report["variants"].items():
        # (the last bucket past the end holds only slates answered after the run stopped: left out)
        b = [x for x in v["buckets"] if warmup_s <= x["t_s"] < report["config"]["seconds"]]
        n = sum(x["slates"] for x in b)
        clicks = sum(x["clicks"] for x in b)
        out[arm] = {"slates": n, "ctr": clicks / max(n, 1), "ctr_ci95": _ci(clicks, n),
                    "reward_per_slate": sum(x["reward_per_slate"] * x["slates"] for x in b) / max(n, 1),
                    "expected_reward_per_slate": sum(x["expected_reward_per_slate"] * x["slates"] for x in b)
                    / max(n, 1),
                    "best_expected_reward_per_slate": sum(x.get("best_expected_reward_per_slate", 0.0) * x["slates"]
                                                          for x in b) / max(n, 1)}
        # a degraded slate (Redis slower than the scorer's timeout, say) is not the arm's policy: it dilutes the lift
        out[arm]["degraded_share"] = sum(x.get("degraded", 0) for x in b) / max(n, 1)
        best = out[arm]["best_expected_reward_per_slate"]
        out[arm]["expected_of_best"] = out[arm]["expected_reward_per_slate"] / best if best > 0 else None
        per_user: dict[str, list[int]] = {}
        for x in b:
            for user, (slates, clicks_u) in x.get("by_user", {}).items():
                acc = per_user.setdefault(user, [0, 0])
                acc[0] += slates
                acc[1] += clicks_u
        out[arm].update(users_ci(per_user))
    if "online" in out and "frozen" in out and out["frozen"]["ctr"] > 0:
        out["online_vs_frozen_ctr_lift"] = out["online"]["ctr"] / out["frozen"]["ctr"] - 1.0
        if "ctr_se_users" in out["online"] and "ctr_se_users" in out["frozen"]:
            out["online_minus_frozen_ctr_ci95_users"] = difference([out], "online", "frozen")["ci95"]
        share = gap_closed(out["frozen"].get("expected_of_best"), out["online"].get("expected_of_best"))
        if share is not None:
            out["online_share_of_frozen_gap_to_best"] = share
    return out


def gap_closed(frozen: float | None, online: float | None) -> float | None:
    """The share of the frozen arm's distance to the best slates (expected reward as a fraction of the best's)
    that the online arm closes: 0 is no better than frozen, 1 is as good as knowing the hidden model.

    >>> round(gap_closed(0.8, 0.9), 3)
    0.5
    """
    if frozen is None or online is None or frozen >= 1.0:
        return None
    return (online - frozen) / (1.0 - frozen)


def users_ci(per_user: dict[str, list[int]]) -> dict:
    """CTR's 95% interval with users as the unit (clustered): an arm is a fixed group of users, and slates of
    one user are not independent, so counting slates overstates the certainty.

    >>> r = users_ci({"a": [10, 5], "b": [10, 5], "c": [10, 1], "d": [10, 9]})
    >>> r["users"], round(r["ctr_se_users"], 3)
    (4, 0.163)
    """
    u = len(per_user)
    if u < 2:
        return {}
    n = np.array([v[0] for v in per_user.values()], dtype=float)
    c = np.array([v[1] for v in per_user.values()], dtype=float)
    p = c.sum() / max(n.sum(), 1.0)
    se = float(np.sqrt(u / (u - 1) * ((c - p * n) ** 2).sum()) / max(n.sum(), 1.0))
    return {"users": u, "ctr_se_users": se, "ctr_ci95_users": [p - 1.96 * se, p + 1.96 * se]}


def _scrape(port: int, tries: int = 4) -> str:
    """The learner's metrics. Patiently: while it trains, a loaded machine can keep its endpoint from answering
    for seconds, and a missed scrape would read as nothing published ("" after every try)."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as r:
                return r.read().decode()
        except OSError:
            time.sleep(1.0)
    return ""


def _metric(body: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def run_bench(settings, seconds: float, users: int, rate: float, warmup_s: float, seed: int, out: Path,
              bots: int = 0, exploration: str = "off", epsilon: float = 0.1, log=print,
              learner_args: tuple[str, ...] = (), world: dict | None = None, salt: str = "ab1",
              pretrain_steps: int = PRETRAIN_STEPS) -> dict:
    """``learner_args``: extra `streamrec learn` flags; ``world``: `SimConfig` overrides (drift, churn), all arms;
    ``salt``: of the user -> arm hash (each salt puts other users in each arm); ``pretrain_steps``: of the
    initial sequence model (fewer for a test of the mechanics)."""
    from streamrec.serving.config import ScorerConfig, parse_arms
    from streamrec.serving.scorer import Scorer
    from streamrec.harness.bench.features import _free_port, start_worker, stop_worker
    from streamrec.stream.topics import create_topics, delete_topics

    run = uuid.uuid4().hex[:6]
    s = settings.replace(topic_prefix=f"{settings.topic_prefix}bench-online-{run}.",
                         redis_prefix=f"{settings.redis_prefix}bo{run}:", registry_uri=str(out / f"registry-{run}"))
    create_topics(s)
    cfg = SimConfig(users=users, items=300, seed=seed, rate=rate, seconds=seconds, bucket_s=max(seconds / 12, 5),
                    bots=bots, **(world or {}))
    log("pre-training the sequence model on organic sessions...")
    initial_models(s, cfg, seed, out / f"export-{run}", pretrain_steps)
    worker = start_worker(s)
    port = _free_port()
    env = {**os.environ, **s.as_env(), "STREAMREC_LEARNER_PORT": str(port), "STREAMREC_LOG_LEVEL": "INFO"}
    learner = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "learn", "--checkpoint-dir",
                                str(out / f"learner-{run}"), *LEARNER_FLAGS, *learner_args],
                               env=env, stdout=subprocess.DEVNULL, stderr=open(out / f"learner-{run}.log", "w"))
    scorer = Scorer(s, ScorerConfig(arms=parse_arms(ARMS), ab_salt=salt, seed=seed, exploration=exploration,
                                    epsilon=epsilon), port=0)
    st = threading.Thread(target=scorer.run, kwargs={"install_signals": False}, daemon=True)
    st.start()
    metrics = ""
    try:
        time.sleep(3)
        log(f"simulating {users} users at {rate} events/s for {seconds:.0f} s (arms: {ARMS})")
        report = Simulation(s, cfg).run()
        metrics = _scrape(port)
    finally:
        scorer.stop()
        st.join(30)
        learner.terminate()
        learner_rc = learner.wait(120)
        stop_worker(worker)
        delete_topics(s)
    count = _metric(metrics, "streamrec_learner_event_to_published_model_seconds_count")
    result = {"config": report["config"], "arms": ARMS, "salt": salt, "exploration": exploration,
              "warmup_s": warmup_s,
              "learner_args": list(learner_args), "counts": report["counts"],
              "summary": summarise(report, warmup_s),
              "learner": {"exit_code": learner_rc,
                          "versions_published": _metric(metrics, "streamrec_learner_versions_published_total"),
                          "gate_rejections": sum(float(x.split()[-1]) for x in metrics.splitlines()
                                                 if x.startswith("streamrec_learner_gate_decisions_total")
                                                 and 'decision="rejected"' in x),
                          "event_to_published_model_s_mean":
                              _metric(metrics, "streamrec_learner_event_to_published_model_seconds_sum") / count
                              if count else None,
                          "refresh_s_sum": _metric(metrics, "streamrec_learner_refresh_seconds_sum"),
                          "refresh_count": _metric(metrics, "streamrec_learner_refresh_seconds_count")},
              "models": report["models"], "variants": report["variants"]}
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for arm, v in sorted(result["variants"].items()):
        t = [x["t_s"] for x in v["buckets"]]
        a.plot(t, [x["ctr"] for x in v["buckets"]], marker="o", label=arm)
        b.plot(t, [x["expected_reward_per_slate"] for x in v["buckets"]], marker="o", label=arm)
    best: dict[float, list[float]] = {}  # every arm's users, the slates the hidden model would pick
    for v in result["variants"].values():
        for x in v["buckets"]:
            best.setdefault(x["t_s"], []).append(x.get("best_expected_reward_per_slate", 0.0))
    if best:
        t = sorted(best)
        b.plot(t, [sum(best[x]) / len(best[x]) for x in t], linestyle="--", color="grey",
               label="best slates (knowing the hidden model)")
    for ax, title in ((a, "CTR (true, from the simulator)"), (b, "expected reward per slate (hidden model)")):
        ax.axvline(result["warmup_s"], color="grey", linestyle=":")
        ax.set_xlabel("seconds")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def difference(summaries: list[dict], hi: str, lo: str) -> dict:
    """Mean CTR difference of arm ``hi`` minus arm ``lo`` over independent splits, with its 95% interval from
    each split's user-clustered standard errors (one split: that split's difference)."""
    k = len(summaries)
    diffs = [s[hi]["ctr"] - s[lo]["ctr"] for s in summaries]
    se = sum(s[hi]["ctr_se_users"] ** 2 + s[lo]["ctr_se_users"] ** 2 for s in summaries) ** 0.5 / k
    mean = sum(diffs) / k
    return {"mean": mean, "ci95": [mean - 1.96 * se, mean + 1.96 * se], "by_split": diffs}


def pooled(summaries: dict[str, dict]) -> dict:
    """Several runs of one configuration pooled: user splits (salts), each an independent draw of which users
    are in which arm, so the group effect of any one split averages out, and worlds (seeds). Per arm the mean
    CTR; for online - frozen and frozen - popularity the mean difference, with a 95% interval from the runs'
    user-clustered standard errors (so, over several worlds, the interval of the mean over those worlds).

    >>> a = {"online": {"ctr": 0.55, "ctr_se_users": 0.01}, "frozen": {"ctr": 0.50, "ctr_se_users": 0.01},
    ...      "popularity": {"ctr": 0.45, "ctr_se_users": 0.01}}
    >>> b = {"online": {"ctr": 0.51, "ctr_se_users": 0.01}, "frozen": {"ctr": 0.50, "ctr_se_users": 0.01},
    ...      "popularity": {"ctr": 0.49, "ctr_se_users": 0.01}}
    >>> r = pooled({"s1": a, "s2": b})
    >>> round(r["online_minus_frozen"]["mean"], 3), round(r["online_vs_frozen_ctr_lift"], 3)
    (0.03, 0.06)
    >>> [round(x, 4) for x in r["online_minus_frozen"]["ci95"]]
    [0.0104, 0.0496]
    """
    k = len(summaries)
    arms = ("popularity", "frozen", "online")
    out: dict = {"splits": sorted(summaries),
                 "ctr": {a: sum(s[a]["ctr"] for s in summaries.values()) / k for a in arms}}
    for hi, lo in (("online", "frozen"), ("frozen", "popularity")):
        out[f"{hi}_minus_{lo}"] = difference(list(summaries.values()), hi, lo)
    out["online_vs_frozen_ctr_lift"] = out["ctr"]["online"] / out["ctr"]["frozen"] - 1.0
    if all(s[a].get("expected_of_best") is not None for s in summaries.values() for a in ("frozen", "online")):
        of_best = {a: sum(s[a]["expected_of_best"] for s in summaries.values()) / k for a in ("frozen", "online")}
        out["expected_of_best"] = of_best
        out["online_share_of_frozen_gap_to_best"] = gap_closed(of_best["frozen"], of_best["online"])
    return out


def cmd_bench_online(args) -> int:
    from streamrec.harness.simulator import world_of

    salts = args.salt.split(",")
    bad = [x for x in salts if not 0 < len(x.encode()) <= 16]
    if bad or len(set(salts)) != len(salts):
        print(f"error: --salt {args.salt!r}: give one salt or several distinct ones, comma-separated, each 1 to 16 "
              "bytes (e.g. s2,s3,s4)", file=sys.stderr)
        return 2
    try:
        seeds = [int(x) for x in str(args.seed).split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        print(f"error: --seed {args.seed!r}: give one whole number or several distinct ones, comma-separated "
              "(e.g. 0,1,2,3)", file=sys.stderr)
        return 2
    out = output_folder(args)
    results = {}
    runs = [(seed, salt) for seed in seeds for salt in salts]
    for seed, salt in runs:
        started = run_started()
        result = run_bench(args.settings, args.seconds, args.users, args.rate, args.warmup_s, seed, out,
                           bots=args.bots, exploration=args.exploration, epsilon=args.epsilon, salt=salt,
                           log=lambda m: print(m, file=sys.stderr),
                           learner_args=tuple(shlex.split(args.learner_args)),
                           world=world_of(args))
        key = salt if len(seeds) == 1 else f"seed{seed}" if len(salts) == 1 else f"seed{seed}-{salt}"
        name = "online" if len(runs) == 1 else f"online-{key}"
        write_report(out, f"{name}.json", result, started)
        plot(result, out / f"{name}.png")
        print(json.dumps({k: result[k] for k in ("salt", "summary", "learner", "counts")}, indent=2))
        print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}", file=sys.stderr)
        results[key] = result["summary"]
    if len(runs) > 1:
        summary = pooled(results)
        (out / "online-pooled.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps({"pooled": summary}, indent=2))
        print(f"wrote {out / 'online-pooled.json'}", file=sys.stderr)
    return 0
