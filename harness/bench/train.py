"""`streamrec bench train`: training throughput, export time, model sizes and quality on synthetic data.

Writes ``bench-train.json`` and ``bench-train.png`` to ``--out`` and prints
the JSON. Epochs are fixed (no early stopping) so throughput is comparable
between runs. ``--device`` trains on a GPU and ``--seq-batch`` / ``--ranker-batch``
set the batch sizes (a GPU only pays off at large batches); the JSON records the
device actually used and the batch sizes.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from streamrec.console import make_console
from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.trainer.cli import positive_int

console = make_console(stderr=True)
_BATCH = positive_int("rows per batch", "--seq-batch 256 --ranker-batch 4096")


def run(users: int, items: int, epochs: int, seed: int, dim: int, device_note: str = "", device: str = "cpu",
        seq_batch: int | None = None, ranker_batch: int | None = None) -> dict:
    """Train both models on a synthetic history and measure; returns the JSON report.

    ``seq_batch`` / ``ranker_batch`` default to `TrainConfig.tiny`'s batch sizes."""
    import os

    import torch

    from streamrec.trainer.base import resolve_device
    from streamrec.trainer.data import Interactions
    from streamrec.trainer.export import export_dcn, export_sasrec
    from streamrec.trainer.synth import SynthConfig, synthesize
    from streamrec.trainer.train import TrainConfig, train_all

    used = resolve_device(device)  # fails before the synthetic data is built

    t0 = time.perf_counter()
    data = synthesize(SynthConfig(users=users, items=items, seed=seed))
    inter = Interactions.from_rows(data.events, {r["item_id"]: r["category"] for r in data.items}, source="synth")
    synth_s = time.perf_counter() - t0
    base = TrainConfig.tiny()
    seq_batch, ranker_batch = seq_batch or base.seq_fit.batch_size, ranker_batch or base.ranker_fit.batch_size
    cfg = replace(base, seq={**base.seq, "dim": dim},
                  seq_fit=replace(base.seq_fit, epochs=epochs, patience=epochs, progress=True, batch_size=seq_batch),
                  ranker_fit=replace(base.ranker_fit, epochs=epochs, patience=epochs, progress=True,
                                     batch_size=ranker_batch)).with_seed(seed).on_device(device)
    t0 = time.perf_counter()
    trained = train_all(inter, cfg)
    total_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        seq = export_sasrec(trained.sasrec, f"{tmp}/seq", trained.catalog, trained.categories,
                            trained.split.test_history)
        dcn = export_dcn(trained.dcn, f"{tmp}/dcn")
        sizes = {f"sasrec/{k}": p.stat().st_size for k, p in seq.files.items()}
        sizes.update({f"ranker/{k}": p.stat().st_size for k, p in dcn.files.items()})
    return {
        "bench": "train", "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                                     f"torch {torch.__version__}, {torch.get_num_threads()} threads {device_note}",
        "device": used.type, "device_requested": device,
        "device_name": torch.cuda.get_device_name(used) if used.type == "cuda" else "cpu",
        "data": {"users": users, "items": items, "events": len(data.events), "seed": seed, "synth_s": synth_s,
                 "ranker_samples": trained.ranker_fit.samples // max(len(trained.ranker_fit.train_loss), 1)},
        "sasrec": {"sequences_per_s": trained.seq_fit.samples_per_s, "batch_size": seq_batch,
                   # Each training sequence carries up to max_len next-item targets (one softmax each).
                   "targets_per_s": trained.seq_fit.samples_per_s * _targets_per_sequence(trained),
                   "epochs": len(trained.seq_fit.train_loss), "epoch_s": trained.seq_fit.epoch_seconds,
                   "params_bytes": trained.sasrec.size_bytes(), "export_s": seq.seconds,
                   "parity_max_abs_diff": max(seq.max_abs_diff.values())},
        "ranker": {"samples_per_s": trained.ranker_fit.samples_per_s, "batch_size": ranker_batch,
                   "epochs": len(trained.ranker_fit.train_loss), "epoch_s": trained.ranker_fit.epoch_seconds,
                   "params_bytes": trained.dcn.size_bytes(), "export_s": dcn.seconds,
                   "parity_max_abs_diff": max(dcn.max_abs_diff.values())},
        "file_bytes": sizes, "total_train_s": total_s,
        "quality": {**trained.seq_metrics, **trained.ranker_metrics},
    }


def _targets_per_sequence(trained) -> float:
    m = trained.sasrec.max_len
    windows = [min(len(s) - 1 - k, m) for s in trained.split.train if len(s) >= 2
               for k in range(0, len(s) - 1, m)]
    return sum(windows) / max(len(windows), 1)


def plot(report: dict, path: Path) -> None:
    """Bar charts of NDCG@10 (sequence model vs baselines) and AUC (ranker vs LR)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = report["quality"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    seq = [k for k in q if "NDCG@10" in q[k]]
    a.bar(seq, [q[k]["NDCG@10"] for k in seq], color=["tab:blue", "tab:gray", "tab:gray"][:len(seq)])
    a.set_title("NDCG@10 (leave-one-out)")
    rk = [k for k in q if "AUC" in q[k]]
    b.bar(rk, [q[k]["AUC"] for k in rk], color=["tab:orange", "tab:gray"][:len(rk)])
    b.set_ylim(0.5, 1.0)
    b.set_title("AUC (time split)")
    fig.suptitle(f"synthetic {report['data']['users']} users x {report['data']['items']} items; "
                 f"sasrec {report['sasrec']['sequences_per_s']:,.0f} seq/s, "
                 f"dcn {report['ranker']['samples_per_s']:,.0f} samples/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_bench_train(args) -> int:
    """Run the benchmark and write JSON and PNG."""
    started = run_started()
    try:
        report = run(args.users, args.items, args.epochs, args.seed, args.dim, device=args.device,
                     seq_batch=args.seq_batch, ranker_batch=args.ranker_batch)
    except ValueError as exc:  # e.g. --device cuda without a GPU
        console.print(f"[red]error:[/] {exc}")
        return 1
    out = output_folder(args)
    write_report(out, "bench-train.json", report, started)
    plot(report, out / "bench-train.png")
    print(json.dumps(report, indent=2))
    console.print(f"wrote {out / 'bench-train.json'} and {out / 'bench-train.png'}")
    return 0


def register(bench_sub) -> None:
    """Add the `train` benchmark."""
    p = bench_sub.add_parser("train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                             help="training throughput, export time, model sizes, quality on synthetic data")
    p.add_argument("--users", type=int, default=2000, help="synthetic users")
    p.add_argument("--items", type=int, default=1000, help="synthetic items")
    p.add_argument("--epochs", type=int, default=5, help="epochs per model (fixed, no early stopping)")
    p.add_argument("--dim", type=int, default=32, help="sequence model embedding size")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="where both models train (auto = cuda when torch sees a GPU)")
    # Defaults: TrainConfig.tiny's batch sizes (written out so the CLI starts without importing torch;
    # tests/unit/trainer/test_fit_device.py checks they agree).
    p.add_argument("--seq-batch", type=_BATCH, default=16, metavar="N",
                   help="sequence model batch size, in sequences")
    p.add_argument("--ranker-batch", type=_BATCH, default=256, metavar="N",
                   help="ranker batch size, in samples")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and the PNG")
    p.set_defaults(func=cmd_bench_train)


# --------------------------------------------------------------------------- explanations
def explain_cost(repeats: int = 30, seed: int = 0) -> dict:
    """Time the ranker on a request's candidates against explaining the request's slate.

    A default-size DCN-V2 is exported and served by `serving.ranking.Ranker` on CPU; a request is 200
    candidates ranked and its top 10 explained (`serving.explain.Explainer`: one ONNX call over
    items x (groups + 1) rows, plus the words). Best and median milliseconds per call.
    """
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:  # the ranker's files, gone after the run
        return _explain_cost(Path(tmp), np.random.default_rng(seed), repeats)


def _explain_cost(tmp: Path, rng, repeats: int) -> dict:
    import numpy as np

    from streamrec.registry import Registry
    from streamrec.serving.explain import Explainer, ItemFacts
    from streamrec.serving.ranking import Ranker
    from streamrec.settings import Settings
    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.export import export_dcn
    from streamrec.trainer.publish import publish

    model = DCNRanker()
    model.set_dense_stats(np.abs(rng.normal(size=(1000, model.config["n_dense"]))).astype(np.float32))
    exported = export_dcn(model, tmp / "dcn")
    hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
    s = Settings().replace(registry_uri=str(tmp / "registry"))
    meta, _ = publish(s, "ranker", exported, kind="dcn", metrics={}, data_window={}, hashing=hashing,
                      version="v1", send=False)
    ranker = Ranker(Registry(s.registry_uri).location("ranker", "v1"), meta, device="cpu")
    explainer = Explainer(ranker)

    def inputs(n: int):
        sparse = ranker.sparse([f"u{k % 50}" for k in range(n)], [f"i{k}" for k in range(n)],
                               [f"c{k % 7}" for k in range(n)])
        return sparse, np.abs(rng.normal(size=(n, len(ranker.dense_features)))).astype(np.float32)

    def timed(fn, reps: int) -> tuple[float, float]:
        fn()  # warm-up
        runs = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return min(runs) * 1000, float(np.median(runs)) * 1000

    rows = []
    for requests in (1, 256):
        rank_sp, rank_d = inputs(requests * 200)
        ex_sp, ex_d = inputs(requests * 10)
        facts = [ItemFacts("c1", 2, 0.3)] * (requests * 10)
        reps = repeats if requests == 1 else max(3, repeats // 6)
        rb, rm = timed(lambda: ranker.score(rank_sp, rank_d), reps)
        eb, em = timed(lambda: explainer.explain(ex_sp, ex_d, facts, top=3), reps)
        rows.append({"requests": requests, "rank_rows": requests * 200, "rank_best_ms": rb, "rank_median_ms": rm,
                     "explain_rows": requests * 10 * (len(explainer.groups) + 1), "explain_best_ms": eb,
                     "explain_median_ms": em})
    return {"groups": len(explainer.groups), "rows": rows, "machine": platform.platform()}


def cmd_bench_explain(args) -> int:
    from rich.table import Table

    started = run_started()
    result = explain_cost(args.repeats, args.seed)
    table = Table(title=f"explanations vs ranking (default DCN-V2, CPU, {result['groups']} feature groups)")
    for col in ("requests", "ranking rows", "ranking best / median ms", "explaining rows",
                "explaining best / median ms"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(str(r["requests"]), f"{r['rank_rows']:,}", f"{r['rank_best_ms']:.2f} / {r['rank_median_ms']:.2f}",
                      f"{r['explain_rows']:,}", f"{r['explain_best_ms']:.2f} / {r['explain_median_ms']:.2f}")
    make_console().print(table)
    write_report(output_folder(args), "bench-explain.json", result, started)
    return 0


def register_explain(bench_sub) -> None:
    """Add the `explain` benchmark."""
    p = bench_sub.add_parser("explain", help="cost of ranker explanations against the ranking itself (CPU)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per measure (a sixth for the batch)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default="bench-results", help="folder for the JSON")
    p.set_defaults(func=cmd_bench_explain)
