"""`streamrec bench gpu` on a machine without a GPU: the CPU against itself, so every check must come out
exact; on a GPU machine the same run compares CUDA with the CPU (BENCHMARKS.md). No timing asserted."""

import json

from streamrec.cli import main
from streamrec.settings import Settings
from streamrec.trainer.publish import publish_trained


def test_bench_gpu_on_the_cpu_reports_exact_parity_and_every_measure(trained, tmp_path):
    registry = tmp_path / "registry"
    publish_trained(Settings(registry_uri=str(registry)), trained, send=False)
    out = tmp_path / "out"
    code = main(["bench", "gpu", "--device", "cpu", "--registry", str(registry), "--candidates", "60",
                 "--batch", "16", "--seconds", "0.2", "--catalog-sizes", "3000", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "bench-gpu.json").read_text())
    parity = report["parity"]
    assert parity["within_atol"] and set(parity["max_abs_diff"]) == {
        "sasrec/encoder.onnx", "sasrec/item_encoder.onnx", "retrieval scores", "ranker/model.onnx",
        "engine item scores"}
    assert max(parity["max_abs_diff"].values()) == 0.0  # same provider on both sides: bit-identical
    assert parity["engine_same_slates"] == 1.0 and parity["retrieval_same_items"] == 1.0
    assert set(report["core"]) == {"cpu"} and report["core"]["cpu"]["candidates"] == 60
    assert report["core"]["cpu"]["models"] and report["ranker_rows_per_s"]["cpu"] > 0
    assert report["retrieval"][0]["items"] == 3000 and report["retrieval"][0]["numpy_ms_per_batch"] > 0
    mem = report["memory_100k_items"]
    assert mem["items"] == 100_000 and mem["index"] == "ExactIndex" and mem["rss_mb_added"] > 0
    assert (out / "bench-gpu.png").stat().st_size > 0


def test_bench_gpu_without_cuda_says_what_to_install_and_exits_2(tmp_path, monkeypatch, capsys):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert main(["bench", "gpu", "--registry", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime-gpu" in err and "--device cpu" in err
    assert not (tmp_path / "out").exists()
