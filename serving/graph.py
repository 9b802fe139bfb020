"""The graph model as the scorer runs it: numpy arrays only (no ONNX graph, no torch).

A `graph` version (kind ``lightgcn``, trained by `streamrec.trainer.graph`) ships

- ``item_vectors.npy`` ``[n, dim]``: each item's LightGCN representation after
  propagation (the mean of its layer embeddings), the side a user vector is
  scored against;
- ``fold_vectors.npy`` ``[n, dim]``: each item's contribution to the vector of
  a user who interacted with it (see `fold_in`);
- ``item_ids.npy``: the item id of each row.

Users at serve time are anonymous sessions, not nodes of the training graph,
so a user's vector is *folded in*: LightGCN's representation of a user node
added to the graph with edges to the session's items and no embedding of its
own, ignoring that node's (second-order) effect on the other nodes. With
layer embeddings ``e^(k)``, ``e_u^(k) = sum_i e_i^(k-1) / sqrt(|N_u| |N_i|)``,
so ``e_u = 1/(L+1) sum_k e_u^(k) = 1/sqrt(|N_u|) sum_i fold_i`` with
``fold_i = sum_{k<L} e_i^(k) / ((L+1) sqrt(|N_i|))``. The scorer weights the
session's items by recency (``decay`` per step back, 1.0 = the exact fold-in)
and normalises by the square root of the summed weights.

>>> fold = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
>>> fold_in(fold, [[0, 1], [1], []], decay=1.0).astype(float).round(3).tolist()
[[0.707, 0.707], [0.0, 1.0], [0.0, 0.0]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from streamrec.registry import ModelMeta, VersionFiles
from streamrec.serving.candidates import top_k
from streamrec.serving.ranking import ModelError, load_array, version_files

KIND = "lightgcn"


def fold_in(fold: np.ndarray, rows: Sequence[Sequence[int]], decay: float = 1.0) -> np.ndarray:
    """``[len(rows), dim]`` user vectors from each history's item rows (oldest first; empty -> zeros).

    The newest item weighs 1, the one before ``decay``, then ``decay**2``...;
    the sum is divided by ``sqrt(sum of weights)`` (``sqrt(|N_u|)`` when decay is 1).
    """
    out = np.zeros((len(rows), fold.shape[1]), dtype=np.float32)
    for r, hist in enumerate(rows):
        if len(hist):
            w = decay ** np.arange(len(hist) - 1, -1, -1, dtype=np.float64)
            out[r] = (w @ fold[np.asarray(hist, dtype=np.int64)].astype(np.float64)) / np.sqrt(w.sum())
    return out


class GraphModel:
    """A loaded graph version: folded-in user vectors and exact inner-product retrieval."""

    kind = KIND

    def __init__(self, folder: str | Path | VersionFiles, meta: ModelMeta, device: str = "cpu",
                 io_binding: bool | None = None):
        files = version_files(folder)
        self.meta = meta
        self.name = f"{meta.name}@{meta.version}"
        self.vectors = np.ascontiguousarray(load_array(files, "item_vectors.npy"), np.float32)
        self.fold = np.ascontiguousarray(load_array(files, "fold_vectors.npy"), np.float32)
        self.item_ids = [str(x) for x in load_array(files, "item_ids.npy")]
        if not (self.vectors.shape == self.fold.shape and self.vectors.shape[0] == len(self.item_ids)):
            raise ModelError(f"{self.name}: item_vectors {self.vectors.shape}, fold_vectors {self.fold.shape} "
                             f"and {len(self.item_ids)} item ids do not match")
        self.row_of = {item: i for i, item in enumerate(self.item_ids)}
        self.history = int(meta.extra.get("history", 20))
        self.decay = float(meta.extra.get("decay", 1.0))
        self.provider = "numpy"

    def user_vectors(self, sequences: Sequence[Sequence[str]]) -> np.ndarray:
        """Folded-in vectors of item sequences (oldest first); items the graph never saw are skipped."""
        get = self.row_of.get
        rows = [[r for r in (get(i) for i in list(seq)[-self.history:]) if r is not None] for seq in sequences]
        return fold_in(self.fold, rows, self.decay)

    def retrieve(self, user_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product with the propagated item vectors: (indices, scores)."""
        scores = user_vecs @ self.vectors.T
        idx = top_k(scores, k)
        return idx, np.take_along_axis(scores, idx, axis=1)

    def warm_up(self) -> None:
        """Score a small batch once and check the outputs are finite."""
        vecs = self.user_vectors([self.item_ids[:5], [], ["never-seen-item"]])
        _, scores = self.retrieve(vecs, 5)
        if not (np.isfinite(vecs).all() and np.isfinite(scores).all()):
            raise ModelError(f"{self.name}: warm-up gave non-finite user vectors or scores")
