"""`streamrec bench gpu`: the scorer's GPU path against its CPU path, on one machine, features from memory.

What the issue asks to prove on a machine with an NVIDIA GPU (onnxruntime-gpu installed), in one run:

1. parity: every graph of the registry's current versions (sequence encoder, item encoder, ranker) gives the
   same outputs on the CUDA provider with IO binding as on the CPU provider, within 1e-4, on real and random
   batches (unseen ids, empty and length-1 sequences); retrieval on the device (`DeviceIndex`) returns the
   numpy scores; the whole engine answers the same requests with the same slates and scores.
2. throughput: requests/s of the scoring engine at ``--candidates`` (default 1,000) on each device; ranker
   rows/s; exact retrieval time for catalogs of 100,000 and 1,000,000 items.
3. memory: process RSS and device memory with a 100,000-item catalog loaded.

Writes ``bench-gpu.json`` and ``bench-gpu.png`` to ``--out``. On a machine without a GPU it runs CPU
against CPU (the report says which providers ran), which is what the test suite checks.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamrec.console import make_console
from streamrec.harness.bench.report import output_folder, run_started, write_report

console = make_console(stderr=True)
ATOL = 1e-4


def _store(registry_uri: str, device: str, candidates: int = 200, batch: int = 256):
    from streamrec.harness.bench.core import bench_config
    from streamrec.registry import Registry
    from streamrec.serving.models import ModelStore
    from streamrec.settings import Settings

    store = ModelStore(Settings(registry_uri=registry_uri, device=device), bench_config(candidates, batch))
    for ann in Registry(registry_uri).announcements():
        store.offer(ann)
    store.swap_pending()
    if store.refused:
        raise RuntimeError(f"models refused on {device}: {store.refused}")
    return store


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def parity(registry_uri: str, device: str, seed: int = 0) -> dict:
    """Largest absolute difference between ``device`` and the CPU for each graph, retrieval and the engine."""
    from streamrec.harness.bench.core import MemoryFeatures, bench_config
    from streamrec.serving.engine import Engine
    from streamrec.serving.index import ExactIndex
    from streamrec.stream.schemas import ScoreRequest

    rng = np.random.default_rng(seed)
    cpu, dev = _store(registry_uri, "cpu"), _store(registry_uri, device)
    out: dict = {"providers": {n: m.provider for n, m in dev.live.items()}, "max_abs_diff": {}}
    seq_c, seq_d = cpu.live.get("sasrec"), dev.live.get("sasrec")
    if seq_c is not None:
        items = seq_c.item_ids
        real = [[items[j] for j in rng.integers(0, len(items), int(rng.integers(2, 60)))] for _ in range(256)]
        odd = [[], [items[0]], ["never-seen-item"], [f"unseen-{k}" for k in range(80)]]
        hist = real + odd
        vc, vd = seq_c.user_vectors(hist, {}), seq_d.user_vectors(hist, {})
        out["max_abs_diff"]["sasrec/encoder.onnx"] = _diff(vc, vd)
        probe = [f"new-item-{k}" for k in range(64)]
        out["max_abs_diff"]["sasrec/item_encoder.onnx"] = _diff(seq_c.item_vectors(probe, [""] * 64),
                                                                seq_d.item_vectors(probe, [""] * 64))
        idx_d, sc_d = seq_d.retrieve(vc, 200)
        idx_c, sc_c = ExactIndex(seq_c.vectors).search(vc, 200)
        out["max_abs_diff"]["retrieval scores"] = _diff(sc_c, sc_d)
        out["retrieval_same_items"] = float(np.mean([len(set(a) & set(b)) / max(len(a), 1)
                                                     for a, b in zip(idx_c.tolist(), idx_d.tolist())]))
        out["retrieval_index"] = type(seq_d.index).__name__
    rk_c, rk_d = cpu.live.get("ranker"), dev.live.get("ranker")
    if rk_c is not None:
        n = 4096
        pool = (seq_c.item_ids if seq_c is not None else []) + [f"unseen-{k}" for k in range(500)]
        users = [f"u{int(k)}" for k in rng.integers(0, 10_000, n)]
        its = [pool[int(k)] for k in rng.integers(0, len(pool), n)]
        cats = [f"c{int(k)}" for k in rng.integers(0, 15, n)]
        sparse = rk_c.sparse(users, its, cats)
        dense = np.abs(rng.normal(size=(n, len(rk_c.dense_features)))).astype(np.float32)
        out["max_abs_diff"]["ranker/model.onnx"] = _diff(rk_c.score(sparse, dense), rk_d.score(sparse, dense))
    # The whole engine: same requests, same features -> same slates and scores.
    cfg = bench_config(200, 64)
    items = list(seq_c.item_ids) if seq_c is not None else [f"i{k}" for k in range(2000)]
    feats = MemoryFeatures(items, seed=seed)
    now = int(time.time() * 1000)
    reqs = [ScoreRequest(event_id=f"e{k}", user_id=f"u{k}", session_id=str(k), item_id=items[k % len(items)],
                         type="view", ts=now, feature_version=1) for k in range(64)]
    rc = Engine(feats, cpu, cfg).recommend(reqs, now_ms=now)
    rd = Engine(feats, dev, cfg).recommend(reqs, now_ms=now)
    same = [[i.item_id for i in a.items] == [i.item_id for i in b.items] for a, b in zip(rc, rd)]
    score_diff = [abs(x.score - y.score) for a, b in zip(rc, rd) for x, y in zip(a.items, b.items)
                  if x.item_id == y.item_id]
    out["engine_same_slates"] = float(np.mean(same))
    out["max_abs_diff"]["engine item scores"] = float(max(score_diff, default=0.0))
    out["within_atol"] = all(v <= ATOL for v in out["max_abs_diff"].values())
    return out


def _timed(fn, seconds: float) -> tuple[int, float]:
    fn()  # warm-up (kernels, allocator)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n, time.perf_counter() - start


def ranker_rows_per_s(registry_uri: str, device: str, rows: int, seconds: float) -> float:
    rk = _store(registry_uri, device).live.get("ranker")
    if rk is None:
        return 0.0
    rng = np.random.default_rng(1)
    sparse = rk.sparse([f"u{k % 1000}" for k in range(rows)], [f"i{k % 5000}" for k in range(rows)],
                       [f"c{k % 12}" for k in range(rows)])
    dense = np.abs(rng.normal(size=(rows, len(rk.dense_features)))).astype(np.float32)
    n, elapsed = _timed(lambda: rk.score(sparse, dense), seconds)
    return n * rows / elapsed


def retrieval(device: str, items: int, dim: int, batch: int, k: int, seconds: float) -> dict:
    """Milliseconds per batch of exact top-``k`` over ``items`` random vectors: numpy and the device index."""
    from streamrec.serving.index import DeviceIndex, ExactIndex
    from streamrec.serving.providers import providers_for

    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(items, dim)).astype(np.float32)
    queries = rng.normal(size=(batch, dim)).astype(np.float32)
    out = {"items": items, "dim": dim, "batch": batch, "k": k}
    for name, index in (("numpy", ExactIndex(vectors)), (device, DeviceIndex(vectors, providers_for(device)))):
        n, elapsed = _timed(lambda: index.search(queries, k), seconds)
        out[f"{name}_ms_per_batch"] = round(elapsed / n * 1000, 3)
    return out


def _device_memory_mb() -> float | None:
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout
        return float(text.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def memory_with_catalog(registry_uri: str, device: str, items: int) -> dict:
    """RSS and device memory that loading a sequence model with ``items`` catalog items adds.

    Measured in a fresh interpreter, so memory freed by the other measures cannot hide the growth.
    """
    code = ("import json, sys\n"
            "try:\n    import torch\nexcept ImportError:\n    pass\n"
            "from streamrec.harness.bench.gpu import _memory_here\n"
            "print(json.dumps(_memory_here(sys.argv[1], sys.argv[2], int(sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, registry_uri, device, str(items)], capture_output=True,
                          text=True, timeout=300)
    if done.returncode:
        return {"items": items, "error": done.stderr.strip().splitlines()[-1:] or ["exit %d" % done.returncode]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_here(registry_uri: str, device: str, items: int) -> dict:
    import onnxruntime  # noqa: F401 - loaded before the baseline: the runtime is not the catalog's cost
    import psutil

    from streamrec.registry import Registry
    from streamrec.serving.ranking import SeqModel

    reg = Registry(registry_uri)
    version = reg.resolve("sasrec")
    meta = reg.meta("sasrec", version)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "sasrec")
        shutil.copytree(Path(reg.location("sasrec", version)), folder)
        dim = np.load(folder / "item_vectors.npy").shape[1]
        np.save(folder / "item_vectors.npy", np.random.default_rng(3).normal(size=(items, dim)).astype(np.float32))
        np.save(folder / "item_ids.npy", np.array([f"item-{k}" for k in range(items)], dtype=str))
        proc = psutil.Process()
        rss0, dev0 = proc.memory_info().rss, _device_memory_mb()
        model = SeqModel(folder, meta, device)
        vecs = model.user_vectors([[f"item-{k}" for k in range(j, j + 20)] for j in range(256)], {})
        model.retrieve(vecs, 500)
        rss1, dev1 = proc.memory_info().rss, _device_memory_mb()
        return {"items": items, "dim": dim, "rss_mb_added": round((rss1 - rss0) / 2**20, 1),
                "rss_mb_total": round(rss1 / 2**20, 1),
                "device_mb_added": None if dev0 is None or dev1 is None else round(dev1 - dev0, 1),
                "index": type(model.index).__name__, "provider": model.provider}


def run(registry_uri: str, device: str, candidates: int, batch: int, seconds: float,
        catalog_sizes: tuple[int, ...]) -> dict:
    import onnxruntime as ort

    from streamrec.harness.bench.core import core
    from streamrec.settings import Settings

    report: dict = {"bench": "gpu", "device": device, "onnxruntime": ort.__version__,
                    "available_providers": ort.get_available_providers(),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "gpu": _gpu_name()}
    console.print("[bold]parity[/bold] CPU vs", device)
    report["parity"] = parity(registry_uri, device)
    report["core"] = {}
    for dev in ("cpu", device):
        console.print(f"[bold]engine core[/bold] on {dev}: {candidates} candidates, batch {batch}")
        report["core"][dev] = core(Settings(registry_uri=registry_uri, device=dev), registry_uri,
                                   candidates=candidates, batch=batch, seconds=seconds)
    rows = batch * candidates
    report["ranker_rows_per_s"] = {dev: round(ranker_rows_per_s(registry_uri, dev, rows, seconds / 2))
                                   for dev in ("cpu", device)}
    report["retrieval"] = []
    for n in catalog_sizes:
        console.print(f"[bold]retrieval[/bold] {n:,} items")
        report["retrieval"].append(retrieval(device, n, 64, batch, 500, seconds / 2))
    report["memory_100k_items"] = memory_with_catalog(registry_uri, device, 100_000)
    return report


def _gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devs = list(report["core"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].bar(devs, [report["core"][d]["requests_per_s"] for d in devs], color=["tab:gray", "tab:green"])
    axes[0].set_title(f"engine requests/s ({report['core'][devs[0]]['candidates']} candidates)")
    axes[1].bar(devs, [report["ranker_rows_per_s"][d] / 1e6 for d in devs], color=["tab:gray", "tab:green"])
    axes[1].set_title("ranker M rows/s")
    r = report["retrieval"]
    x = np.arange(len(r))
    axes[2].bar(x - 0.2, [e["numpy_ms_per_batch"] for e in r], 0.4, label="numpy", color="tab:gray")
    axes[2].bar(x + 0.2, [e[f"{report['device']}_ms_per_batch"] for e in r], 0.4, label=report["device"],
                color="tab:green")
    axes[2].set_xticks(x, [f"{e['items']:,}" for e in r])
    axes[2].set_yscale("log")
    axes[2].set_title(f"exact top-{r[0]['k'] if r else ''} ms per batch of {r[0]['batch'] if r else ''}")
    axes[2].legend()
    fig.suptitle(f"{report.get('gpu') or 'no GPU'} vs {report['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_bench_gpu(args) -> int:
    from streamrec.settings import Settings

    import onnxruntime as ort

    from streamrec.serving.providers import CUDA

    registry = args.registry or Settings.from_env().registry_uri
    started = run_started()
    if args.device == "cuda" and CUDA not in ort.get_available_providers():
        console.print(f"[red]--device cuda: this onnxruntime offers {ort.get_available_providers()}, no CUDA. "
                      "Install the `gpu` extra (onnxruntime-gpu) on a machine with an NVIDIA GPU, or run "
                      "--device cpu to compare the CPU with itself.[/red]")
        return 2
    report = run(registry, args.device, args.candidates, args.batch, args.seconds,
                 tuple(int(n) for n in args.catalog_sizes))
    out = output_folder(args)
    write_report(out, "bench-gpu.json", report, started)
    plot(report, out / "bench-gpu.png")
    print(json.dumps(report, indent=2))
    ok = report["parity"]["within_atol"]
    console.print(f"parity within {ATOL}: {'yes' if ok else 'NO'}; wrote {out / 'bench-gpu.json'}")
    return 0 if ok else 1


def register_bench(bench) -> None:
    import argparse

    p = bench.add_parser("gpu", formatter_class=argparse.ArgumentDefaultsHelpFormatter, help="the scorer on the GPU against the CPU: parity within 1e-4, requests/s, "
                                     "retrieval, memory (features from memory; needs onnxruntime-gpu)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="device to compare with the CPU")
    p.add_argument("--registry", default=None, help="registry with sasrec and ranker; None means STREAMREC_REGISTRY_URI")
    p.add_argument("--candidates", type=int, default=1000, help="candidates ranked per request")
    p.add_argument("--batch", type=int, default=256, help="requests per batch")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    p.add_argument("--catalog-sizes", nargs="+", default=["100000", "1000000"], help="retrieval catalog sizes")
    p.add_argument("--out", default="bench-results", help="folder for the JSON and the PNG")
    p.set_defaults(func=cmd_bench_gpu)
