"""`streamrec bench swap-stall`: how much loading a model version stalls the scoring thread, without Kafka or Redis.

Each measurement runs in a child process of its own: the scoring engine (`Engine` on `MemoryFeatures`, as in
`bench serve --only core`) scores a batch on the main thread every ``interval`` (twice a batch's own time, so
the thread is half busy, as a scorer at a steady rate) and calls `ModelStore.swap_pending` between batches as
the scorer's loop does, while a second thread loads fresh versions of the sequence model and the ranker, one
round after the other (`ModelStore.offer`, what the model-versions follower calls for each announcement). A
batch's latency counts from when it was due until it is scored; a batch is due ``interval`` after the one
before, or when that one ends if it ran late, so a stall (the GIL held by the loading thread, or the CPU
taken) delays the next batch too, and no backlog builds up beyond it. Reported: the latency of the batches
due inside a load window (from the start of a round's loading until both versions are swapped in, plus
`DRAIN_S`) against the others (steady), and the ratio of their p99.

``--baseline REF`` runs the same measurement on commit REF's code (laid out from `git archive` by
`streamrec.harness.bench.baseline`), alternated with this code's, on the same models in the same minutes:
this file runs as a script in the child, and imports whichever ``streamrec`` comes first on its path.

Without ``--registry`` the models are untrained sequence model and ranker of the trainer's default sizes
(13 MB graphs), exported and published to a scratch registry (needs torch); weights do not change a load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DRAIN_S = 0.1
"""How long after a swap the batches still count as inside the window (cold hash caches of the new version)."""


# -- the child: one measurement on whichever streamrec is importable --------------------------------------- #
def measure(registry: str, base: list[dict], rounds: list[list[dict]], candidates: int, batch: int,
            steady_s: float, gap_s: float, settings: dict | None = None) -> dict:
    import streamrec
    from streamrec.harness.bench.core import MemoryFeatures, bench_config
    from streamrec.registry import Announcement
    from streamrec.serving.engine import Engine
    from streamrec.serving.models import ModelStore
    from streamrec.settings import Settings
    from streamrec.stream.schemas import ScoreRequest

    cfg = bench_config(candidates, batch)
    store = ModelStore(Settings(registry_uri=registry, **(settings or {})), cfg)
    for ann in base:
        if not store.offer(Announcement(**ann)):
            raise RuntimeError(f"refused: {store.refused}")
    store.swap_pending()
    items = list(store.live[cfg.seq_model].item_ids)
    engine = Engine(MemoryFeatures(items), store, cfg)
    reqs = [ScoreRequest(event_id=f"e{k}", user_id=f"u{k}", session_id=str(k), item_id=items[k % len(items)],
                         type="view", ts=int(time.time() * 1000), feature_version=1) for k in range(batch)]
    service = []
    for _ in range(30):  # warm caches, and the batch's own time
        started = time.perf_counter()
        engine.recommend(reqs)
        service.append(time.perf_counter() - started)
    interval = max(0.002, 2 * statistics.median(service))

    done, windows, loads, refused = threading.Event(), [], [], []

    def load_rounds() -> None:
        try:
            time.sleep(steady_s)
            for rnd in rounds:
                started = time.perf_counter()
                for ann in rnd:
                    if not store.offer(Announcement(**ann)):
                        refused.append(store.refused[-1])
                loads.append(time.perf_counter() - started)
                while not all(getattr(store.live.get(a["name"]), "meta", None) is not None
                              and store.live[a["name"]].meta.version == a["version"] for a in rnd) and not refused:
                    time.sleep(0.0005)  # the main thread swaps them in between batches
                windows.append((started, time.perf_counter() + DRAIN_S))
                time.sleep(gap_s)
        finally:
            done.set()

    loader = threading.Thread(target=load_rounds, name="model-versions")
    latencies: list[tuple[float, float]] = []
    start = due = time.perf_counter()
    loader.start()
    while not done.is_set():
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # a thread holding the GIL when this sleep ends delays the batch: counted
        store.swap_pending()
        engine.recommend(reqs)
        end = time.perf_counter()
        latencies.append((due, end - due))
        due = max(due + interval, end)  # a late batch delays the next one, no backlog beyond it
    loader.join()
    if refused:
        raise RuntimeError(f"versions refused: {refused}")
    inside = [ms * 1e3 for due, ms in latencies if any(a <= due <= b for a, b in windows)]
    steady = [ms * 1e3 for due, ms in latencies if due > start + 0.2 and not any(a <= due <= b for a, b in windows)]
    out = {"code": streamrec.__file__, "interval_ms": round(interval * 1e3, 2),
           "batch_ms_median": round(statistics.median(service) * 1e3, 2), "batches": len(latencies),
           "steady": _percentiles(steady), "loading": _percentiles(inside),
           "load_s": [round(s, 3) for s in loads]}
    out["p99_ratio"] = round(out["loading"]["p99_ms"] / out["steady"]["p99_ms"], 2)
    out["max_ratio"] = round(out["loading"]["max_ms"] / out["steady"]["max_ms"], 2)
    return out


def _percentiles(values: list[float]) -> dict:
    import numpy as np

    v = np.array(values) if values else np.array([np.nan])
    return {"n": len(values), "mean_ms": round(float(v.mean()), 2),
            **{f"p{q}_ms": round(float(np.percentile(v, q)), 2) for q in (50, 99)}, "max_ms": round(float(v.max()), 2)}


# -- the parent: models, children, summary ------------------------------------------------------------------ #
def build_registry(root: Path, items: int, seed: int = 0) -> str:
    """A registry with an untrained sequence model and ranker of the trainer's default sizes."""
    import torch

    from streamrec.registry import Registry
    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.export import export_dcn, export_sasrec
    from streamrec.trainer.sasrec import SASRec

    torch.manual_seed(seed)
    catalog = [f"i{k}" for k in range(items)]
    categories = {item: f"c{k % 50}" for k, item in enumerate(catalog)}
    reg = Registry(root / "registry")
    seq = SASRec()
    seq.set_catalog(catalog, [categories[i] for i in catalog])
    for name, model, exported in (("sasrec", seq, export_sasrec(seq, root / "seq", catalog, categories)),
                                  ("ranker", (dcn := DCNRanker()), export_dcn(dcn, root / "dcn"))):
        hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
        reg.publish(name, exported.files, kind=model.kind, version="v0", signatures=exported.signatures,
                    opset=exported.opset, hashing=hashing, extra=exported.extra)
        reg.promote(name, "v0")
    return str(root / "registry")


def run_child(site: Path | None, config: dict) -> dict:
    """`measure` in a child process importing the commit laid out at ``site`` (None: this checkout)."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    # -P: the script's own folder stays off the path; the baseline runs from its folder, so the checkout's
    # `streamrec/` is not found first.
    done = subprocess.run([sys.executable, "-P", __file__, json.dumps(config)], cwd=site or Path.cwd(), env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"swap-stall child failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if site is not None and not result["code"].startswith(str(site)):
        raise RuntimeError(f"the baseline run imported {result['code']}, not the commit at {site}")
    return result


def swap_stall(registry: str | None, rounds: int, runs: int, baseline: str | None, candidates: int, batch: int,
               items: int, steady_s: float, gap_s: float, say=print, baseline_root: Path | None = None,
               load_nice: list[int] | None = None) -> dict:
    """``runs`` measurements of this code (and of commit ``baseline``, alternated), each loading ``rounds``
    rounds of fresh versions of the registry's current sequence model and ranker. ``load_nice``: one
    measurement of this code per value of `Settings.model_load_nice` in each run (default: the settings')."""
    from streamrec.harness.bench.baseline import DEFAULT_ROOT, materialise
    from streamrec.harness.bench.serve import fresh_versions
    from streamrec.registry import Registry

    site = materialise(baseline, baseline_root or DEFAULT_ROOT) if baseline else None
    with tempfile.TemporaryDirectory(prefix="streamrec-swap-stall-") as tmp:
        if registry is None:
            say(f"exporting an untrained sequence model and ranker ({items:,} items) to a scratch registry...")
            registry = build_registry(Path(tmp), items)
        anns = Registry(registry).announcements(("sasrec", "ranker"))
        if {a.name for a in anns} != {"sasrec", "ranker"}:
            raise RuntimeError(f"{registry} needs a sasrec and a ranker version; it has {[a.name for a in anns]}")
        # Fresh versions: the first is loaded before the clock starts, the others during the run.
        fresh = fresh_versions(registry, anns, rounds + 1, Path(tmp, "fresh"))
        config = {"registry": str(Path(tmp, "fresh")), "base": [_ann(a) for a in fresh[0]],
                  "rounds": [[_ann(a) for a in rnd] for rnd in fresh[1:]], "candidates": candidates,
                  "batch": batch, "steady_s": steady_s, "gap_s": gap_s}
        codes = [(baseline, site, {})] if site else []
        codes += [(f"current, load nice {n}", None, {"model_load_nice": n}) for n in load_nice] \
            if load_nice else [("current", None, {})]
        out: dict = {"registry": registry, "rounds": rounds, "baseline": baseline, "runs": {c[0]: [] for c in codes}}
        for k in range(runs):
            for label, where, settings in codes:
                result = run_child(where, {**config, "settings": settings})
                out["runs"][label].append(result)
                say(f"run {k + 1}/{runs} {label}: p99 "
                    f"{result['loading']['p99_ms']} ms while loading against {result['steady']['p99_ms']} ms steady "
                    f"(x{result['p99_ratio']}), max {result['loading']['max_ms']} against "
                    f"{result['steady']['max_ms']} ms; batch {result['batch_ms_median']} ms every "
                    f"{result['interval_ms']} ms; loads {result['load_s']} s")
    out["summary"] = summary = {label: _summary(rs) for label, rs in out["runs"].items()}
    if site:
        base = summary[baseline]
        for label, cur in summary.items():
            if label != baseline:
                cur["over_baseline"] = {key: round(cur[key] / base[key], 2) for key in
                                        ("p99_ratio", "loading_p99_ms", "loading_max_ms", "steady_p99_ms", "load_s")}
    return out


def _summary(runs: list[dict]) -> dict:
    med = statistics.median
    return {"p99_ratio": med(r["p99_ratio"] for r in runs), "p99_ratios": [r["p99_ratio"] for r in runs],
            "max_ratio": med(r["max_ratio"] for r in runs),
            "loading_p99_ms": med(r["loading"]["p99_ms"] for r in runs),
            "loading_max_ms": med(r["loading"]["max_ms"] for r in runs),
            "steady_p99_ms": med(r["steady"]["p99_ms"] for r in runs),
            "load_s": med(s for r in runs for s in r["load_s"])}


def _ann(ann) -> dict:
    return {"name": ann.name, "version": ann.version, "uri": ann.uri, "sha256": ann.sha256}


def run(args) -> int:
    from streamrec.console import make_console
    from streamrec.harness.bench.report import output_folder, run_started, write_report

    console = make_console(stderr=True)
    out, started = output_folder(args), run_started()
    result = swap_stall(args.registry, args.rounds, args.runs, args.baseline, args.candidates, args.batch,
                        args.items, args.steady_seconds, args.gap_seconds, say=console.print,
                        load_nice=args.load_nice)
    for label, s in result["summary"].items():
        console.print(f"{label}: p99 while loading / steady p99 x{s['p99_ratio']} (runs {s['p99_ratios']}), "
                      f"max x{s['max_ratio']}; p99 while loading {s['loading_p99_ms']} ms, steady "
                      f"{s['steady_p99_ms']} ms; load {s['load_s']} s"
                      + (f"; against {result['baseline']}: {s['over_baseline']}" if "over_baseline" in s else ""))
    write_report(out, "swap-stall.json", result, started)
    console.print(f"wrote {out / 'swap-stall.json'}")
    return 0


def register_bench(bench) -> None:
    p = bench.add_parser("swap-stall", help="how much loading model versions stalls the scoring thread "
                                            "(engine on in-memory features, no Kafka or Redis)")
    p.add_argument("--rounds", type=int, default=6, help="rounds of fresh versions of both models per run (default 6)")
    p.add_argument("--runs", type=int, default=2, help="runs of each code, alternated (default 2)")
    p.add_argument("--baseline", metavar="REF", help="also run commit REF's code (from git archive), alternated")
    p.add_argument("--load-nice", type=int, nargs="+", metavar="N",
                   help="run this code once per value of STREAMREC_MODEL_LOAD_NICE in each run, e.g. 10 0 "
                        "(default: the setting's default)")
    p.add_argument("--candidates", type=int, default=200, help="candidates ranked per request (default 200)")
    p.add_argument("--batch", type=int, default=4, help="requests per batch (default 4)")
    p.add_argument("--items", type=int, default=5000, help="catalog of the scratch models (default 5000)")
    p.add_argument("--steady-seconds", type=float, default=1.0, help="scoring before the first load (default 1)")
    p.add_argument("--gap-seconds", type=float, default=0.4, help="scoring between two rounds (default 0.4)")
    p.add_argument("--registry", default=None,
                   help="registry whose current sasrec and ranker are loaded (default: untrained models of the "
                        "trainer's default sizes, exported to a scratch registry)")
    p.add_argument("--out", default=None, help="output folder (default <home>/bench)")
    p.set_defaults(func=run)


if __name__ == "__main__":
    c = json.loads(sys.argv[1])
    print("RESULT", json.dumps(measure(c["registry"], c["base"], c["rounds"], c["candidates"], c["batch"],
                                       c["steady_s"], c["gap_s"], c.get("settings"))))
