"""ONNX export of both models, with a parity check against torch on every export.

torch 2.15 makes the torch.export-based ("dynamo") exporter the default, but
it needs the ``onnxscript`` package, which the trainer does not install; the
TorchScript exporter (``dynamo=False``) handles these models' dynamic batch
and sequence axes and needs nothing more, so it is used, at opset `OPSET`.
The opset is recorded in meta.json.

Every export is checked: ONNX Runtime output must equal torch output within
``atol`` on the given batches, or `ExportError` is raised and nothing is
published.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from streamrec.registry import Signature
from streamrec.trainer.base import RecModel
from streamrec.trainer.dcn import DENSE_FEATURES, SPARSE_FIELDS, DCNRanker
from streamrec.trainer.sasrec import ItemEncoder, SASRec

OPSET = 17
ATOL = 1e-4


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


@dataclass
class Exported:
    """Files written for one model version, their signatures, and timings."""

    files: dict[str, Path]
    signatures: dict[str, Signature]
    extra: dict
    opset: int = OPSET
    seconds: float = 0.0
    max_abs_diff: dict[str, float] = field(default_factory=dict)


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], signature: Signature, path: Path) -> None:
    """Export ``module`` with the names of ``signature``; every ``-1`` axis becomes dynamic."""
    dynamic = {t.name: {a: f"{t.name}_{a}" for a, n in enumerate(t.shape) if n == -1}
               for t in signature.inputs + signature.outputs}
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (see module docstring)
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=OPSET,
                          input_names=[t.name for t in signature.inputs],
                          output_names=[t.name for t in signature.outputs], dynamic_axes=dynamic)


def session(path: str | Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session (as the scorer would open it without a GPU)."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def parity(path: Path, module: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]], signature: Signature,
           atol: float = ATOL) -> float:
    """Largest |onnx - torch| over ``batches``; raises `ExportError` above ``atol``."""
    module.eval()
    sess = session(path)
    worst = 0.0
    for inputs in batches:
        expected = module(*inputs).numpy()
        got = sess.run(None, {t.name: x.numpy() for t, x in zip(signature.inputs, inputs)})[0]
        if got.shape != expected.shape:
            raise ExportError(f"{path.name}: ONNX output shape {got.shape} != torch {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
        worst = max(worst, diff)
        if not np.isfinite(got).all() or diff > atol:
            raise ExportError(f"{path.name}: ONNX differs from torch by {diff:.2e} (> {atol:g}) "
                              f"on inputs of shape {[tuple(x.shape) for x in inputs]}")
    return worst


def _random_batches(model: RecModel, shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, ...]]:
    return [model.example_inputs(b, l) for b, l in shapes]


def export_sasrec(model: SASRec, out_dir: str | Path, catalog: list[str], categories: dict[str, str],
                  real_histories: list[list[str]] | None = None) -> Exported:
    """Write ``encoder.onnx``, ``item_encoder.onnx``, ``item_vectors.npy`` and ``item_ids.npy``; check parity.

    Parity batches: random ids, length-1 and all-padding (empty) sequences, ids
    never seen in training, and ``real_histories`` when given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model.eval()
    sig, item_sig = model.signature(), model.item_signature()
    enc_path, item_path = out / "encoder.onnx", out / "item_encoder.onnx"
    export_onnx(model, model.example_inputs(2, 5), sig, enc_path)
    batches = _random_batches(model, [(3, 7), (1, 1), (5, model.max_len)])
    batches.append(tuple(torch.from_numpy(a) for a in model.encode_sequences([[], ["never-seen-item"]], {})))
    if real_histories:
        batches.append(tuple(torch.from_numpy(a) for a in model.encode_sequences(real_histories[:64], categories)))
    diffs = {"encoder.onnx": parity(enc_path, model, batches, sig)}

    item_module = ItemEncoder(model)
    ids = torch.from_numpy(model.item_hasher(catalog[:16] + ["never-seen-item"]))
    cats = torch.from_numpy(model.cat_hasher.first([categories.get(i, "") for i in catalog[:16]] + ["new-cat"]))
    export_onnx(item_module, (ids, cats), item_sig, item_path)
    diffs["item_encoder.onnx"] = parity(item_path, item_module, [(ids, cats), (ids[:1], cats[:1])], item_sig)

    with torch.no_grad():
        vectors = model.item_vectors(torch.from_numpy(model.item_hasher(catalog)),
                                     torch.from_numpy(model.cat_hasher.first([categories.get(i, "") for i in catalog])))
    np.save(out / "item_vectors.npy", vectors.numpy().astype(np.float32), allow_pickle=False)
    np.save(out / "item_ids.npy", np.array(catalog, dtype=str), allow_pickle=False)
    files = {p.name: p for p in (enc_path, item_path, out / "item_vectors.npy", out / "item_ids.npy")}
    extra = {"max_len": model.max_len, "dim": model.items.embedding_dim, "config": model.config,
             "padding": "left", "score": "dot(user_vec, item_vec)"}
    return Exported(files=files, signatures={"encoder.onnx": sig, "item_encoder.onnx": item_sig}, extra=extra,
                    seconds=time.perf_counter() - t0, max_abs_diff=diffs)


def export_dcn(model: DCNRanker, out_dir: str | Path,
               real_batch: tuple[np.ndarray, np.ndarray] | None = None) -> Exported:
    """Write ``model.onnx`` for the ranker; check parity on random, unseen-id and real batches."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model.eval()
    sig, path = model.signature(), out / "model.onnx"
    export_onnx(model, model.example_inputs(4), sig, path)
    batches = _random_batches(model, [(1, 0), (7, 0), (300, 0)])
    unseen = model.sparse_ids(["new-user"], ["new-item"], ["new-cat"])
    batches.append((torch.from_numpy(unseen), model.example_inputs(1)[1]))
    if real_batch is not None:
        batches.append(tuple(torch.from_numpy(np.ascontiguousarray(a[:512])) for a in real_batch))
    diffs = {"model.onnx": parity(path, model, batches, sig)}
    names = DENSE_FEATURES[: model.config["n_dense"]]  # a ranker of an older, shorter feature list keeps it
    extra = {"dense_features": list(names), "sparse_fields": list(SPARSE_FIELDS), "config": model.config}
    if "content_sim" in names:
        # content: fed by the scorer only when the ranker learnt it (a constant 0 in training would turn any
        # served value into an outlier after standardisation).
        extra["content_sim_trained"] = bool(model.varied_dense()[names.index("content_sim")])
    if model.has_dense_stats():
        # Explanations: the training mean is each dense feature's neutral value (standardised to 0);
        # a ranker that never learnt its statistics has no mean to offer.
        extra["dense_baseline"] = dict(zip(names, map(float, model.dense_mean.tolist())))
    return Exported(files={"model.onnx": path}, signatures={"model.onnx": sig}, extra=extra,
                    seconds=time.perf_counter() - t0, max_abs_diff=diffs)
