"""ONNX sessions: provider choice, the IO-binding path (run on the CPU here), fallbacks."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from streamrec.serving.providers import CPU, providers_for
from streamrec.serving.ranking import Graph, ModelError


@pytest.fixture
def graph_path(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
                          [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel())])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path, w


def test_tensorrt_is_left_out_without_its_libraries(monkeypatch):
    # onnxruntime-gpu offers TensorRT whether or not libnvinfer is there; falling back from it would drop
    # the CUDA provider's options (TF32 off), so it is only asked for when it can load.
    monkeypatch.setattr("streamrec.serving.providers.tensorrt_installed", lambda: False)
    assert providers_for("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]) == [
        "CUDAExecutionProvider", CPU]


def test_provider_choice(monkeypatch):
    monkeypatch.setattr("streamrec.serving.providers.tensorrt_installed", lambda: True)
    assert providers_for("cpu", ["CUDAExecutionProvider", CPU]) == [CPU]
    assert providers_for("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert providers_for("cuda", [CPU]) == [CPU]  # no GPU build: falls back, logged and counted


@pytest.mark.parametrize("device", ["auto", "cuda", "cpu"])
def test_io_binding_path_equals_plain_run(graph_path, device):
    path, w = graph_path
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    plain = Graph(path, device, io_binding=False)
    bound = Graph(path, device, io_binding=True)
    np.testing.assert_allclose(bound.run({"x": x}), plain.run({"x": x}), atol=1e-6)
    np.testing.assert_allclose(plain.run({"x": x}), x @ w, atol=1e-5)
    if not bound.on_gpu:
        assert bound.provider == CPU


def test_unloadable_graph_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="bad.onnx"):
        Graph(bad, "cpu")


def test_gpu_error_at_run_time_falls_back_to_the_cpu_for_good(graph_path):
    from streamrec.serving import metrics

    path, w = graph_path
    g = Graph(path, "cpu", io_binding=True)
    g.on_gpu = True  # pretend the session runs on CUDA and the device fails

    def fail(feeds):
        raise RuntimeError("CUDA failure 700: an illegal memory access was encountered")

    g._run_bound = fail
    before = metrics.gpu_fallbacks._value.get()
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(g.run({"x": x}), x @ w, atol=1e-5)
    assert g.provider == CPU and not g.io_binding and not g.on_gpu
    assert metrics.gpu_fallbacks._value.get() == before + 1
    np.testing.assert_allclose(g.run({"x": x}), x @ w, atol=1e-5)  # stays on the CPU path
