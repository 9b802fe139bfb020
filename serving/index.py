"""Retrieval indexes: exact top-K by inner product over the item matrix.

Two interchangeable implementations of ``search(queries, k) -> (indices, scores)``:

- `ExactIndex`: numpy, on the CPU; fine up to about a million items.
- `DeviceIndex`: the same product and top-K as a two-node ONNX graph (MatMul, TopK) run by ONNX Runtime on
  the GPU. The item matrix is copied to the device once, when the model version loads, and stays there;
  each search sends only the user vectors and brings back ``k`` indices and scores per query.

`index_for` picks the device one when the sequence model's session runs on a GPU provider. Anything with the
same ``search`` (an ANN index for larger catalogs) can replace either (``SeqModel.index = ...``).
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from streamrec.serving import metrics
from streamrec.serving.candidates import top_k
from streamrec.serving.providers import CPU, session_providers

log = logging.getLogger(__name__)


class ExactIndex:
    """Exact inner-product top-K over an item matrix with numpy."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = queries @ self.vectors.T
        idx = top_k(scores, k)
        return idx, np.take_along_axis(scores, idx, axis=1)


def topk_graph(dim: int) -> bytes:
    """ONNX model: queries [b, dim], items [n, dim], k [1] -> scores [b, k], indices [b, k] (largest, sorted)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Gemm", ["queries", "items"], ["all_scores"], transB=1),
             helper.make_node("TopK", ["all_scores", "k"], ["scores", "indices"], axis=1, largest=1, sorted=1)]
    graph = helper.make_graph(
        nodes, "exact_topk",
        [helper.make_tensor_value_info("queries", TensorProto.FLOAT, ["batch", dim]),
         helper.make_tensor_value_info("items", TensorProto.FLOAT, ["n_items", dim]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k_out"]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", "k_out"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every ONNX Runtime the `serving` extra allows
    return model.SerializeToString()


class DeviceIndex:
    """Exact inner-product top-K on the device of an ONNX Runtime provider; the item matrix stays there."""

    def __init__(self, vectors: np.ndarray, providers: list[str]):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(topk_graph(self.vectors.shape[1]), sess_options=opts,
                                            providers=session_providers(providers))
        self.provider = self.session.get_providers()[0]
        self.where = "cpu" if self.provider == CPU else "cuda"
        self.items = ort.OrtValue.ortvalue_from_numpy(self.vectors, self.where, 0)  # copied to the device once

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), self.vectors.shape[0])
        if k <= 0 or queries.shape[0] == 0:
            return np.zeros((queries.shape[0], 0), dtype=np.int64), np.zeros((queries.shape[0], 0), np.float32)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("queries", ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(queries, dtype=np.float32), self.where, 0))
        binding.bind_ortvalue_input("items", self.items)
        binding.bind_cpu_input("k", np.array([k], dtype=np.int64))
        binding.bind_output("scores", self.where, 0)
        binding.bind_output("indices", self.where, 0)
        self.session.run_with_iobinding(binding)
        scores, indices = binding.copy_outputs_to_cpu()
        return indices, scores


def index_for(vectors: np.ndarray, on_gpu: bool, providers: list[str]):
    """The device index when the sequence model runs on a GPU, else numpy; a device that fails: numpy."""
    if not on_gpu:
        return ExactIndex(vectors)
    try:
        return DeviceIndex(vectors, providers)
    except Exception as exc:  # noqa: BLE001 - e.g. out of device memory: retrieval goes on, on the CPU
        log.warning("retrieval index on the GPU failed (%s); using numpy", exc)
        metrics.gpu_fallbacks.inc()
        return ExactIndex(vectors)
