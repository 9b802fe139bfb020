"""The retrieval indexes: the ONNX top-K graph returns what numpy returns (here on the CPU provider; the
same graph runs on CUDA in `streamrec bench gpu`)."""

import numpy as np
import pytest

from streamrec.serving import metrics
from streamrec.serving.index import DeviceIndex, ExactIndex, index_for
from streamrec.serving.ranking import SeqModel

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def vectors():
    return np.random.default_rng(0).normal(size=(5000, 32)).astype(np.float32)


def test_onnx_topk_equals_numpy_top_k(vectors):
    queries = np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)
    exact_idx, exact_scores = ExactIndex(vectors).search(queries, 100)
    dev_idx, dev_scores = DeviceIndex(vectors, CPU).search(queries, 100)
    assert dev_idx.shape == exact_idx.shape == (64, 100) and dev_idx.dtype == np.int64
    np.testing.assert_allclose(dev_scores, exact_scores, atol=1e-4)
    # Same items in the same order (random data has no exact ties).
    assert (dev_idx == exact_idx).mean() > 0.999
    np.testing.assert_allclose(np.take_along_axis(queries @ vectors.T, dev_idx, axis=1), dev_scores, atol=1e-4)


def test_k_larger_than_the_catalog_and_empty_queries(vectors):
    small = vectors[:7]
    idx, scores = DeviceIndex(small, CPU).search(vectors[:3], 50)
    assert idx.shape == (3, 7) and sorted(idx[0].tolist()) == list(range(7))
    idx, scores = DeviceIndex(small, CPU).search(np.zeros((0, 32), np.float32), 5)
    assert idx.shape == (0, 0)


def test_index_for_uses_numpy_off_the_gpu(vectors):
    assert isinstance(index_for(vectors, False, CPU), ExactIndex)
    assert isinstance(index_for(vectors, True, CPU), DeviceIndex)


class FailingIndex:
    def __init__(self, *args):
        raise RuntimeError("CUDA out of memory")


def test_a_device_that_fails_at_load_falls_back_to_numpy(vectors, monkeypatch):
    monkeypatch.setattr("streamrec.serving.index.DeviceIndex", FailingIndex)
    before = metrics.gpu_fallbacks._value.get()
    assert isinstance(index_for(vectors, True, CPU), ExactIndex)
    assert metrics.gpu_fallbacks._value.get() == before + 1


def test_a_device_error_during_retrieval_answers_from_numpy_from_then_on(vectors):
    class Broken:
        def search(self, queries, k):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    model = object.__new__(SeqModel)  # the retrieval fallback alone; loading is tested with real exports
    model.name, model.vectors, model.index = "sasrec@v1", vectors, Broken()
    queries = vectors[:4]
    idx, scores = model.retrieve(queries, 10)
    assert isinstance(model.index, ExactIndex)
    np.testing.assert_array_equal(idx, ExactIndex(vectors).search(queries, 10)[0])
