"""Training on a device (FitConfig.device, --device): the choice is checked, CPU runs stay deterministic,
the model always comes back on the CPU, and `bench train` records the device and the batch sizes.

This machine has no GPU: "auto" must resolve to the CPU here and "cuda" must fail with a clear message.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from streamrec.cli import main
from streamrec.trainer.base import resolve_device
from streamrec.trainer.fit import FitConfig, fit
from streamrec.trainer.train import TrainConfig

from .test_models import ranker_data, weights

GPU = torch.cuda.is_available()  # False here and in CI; the lead's GPU run takes the other branches


def test_cpu_resolves_and_unknown_names_are_rejected_naming_the_setting():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "CUDA", "", "cuda:0"):
        with pytest.raises(ValueError, match=r"FitConfig.device / --device .*use one of cpu, cuda, auto"):
            resolve_device(bad)


def test_auto_follows_the_gpu_and_cuda_without_one_says_what_to_use():
    assert resolve_device("auto").type == ("cuda" if GPU else "cpu")
    if GPU:
        assert resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(ValueError, match="no CUDA GPU.*use --device cpu or auto"):
        resolve_device("cuda")
    model, data = ranker_data(64)
    with pytest.raises(ValueError, match="use --device cpu or auto"):
        fit(model, data, None, FitConfig(epochs=1, progress=False, device="cuda"))


def test_cpu_and_auto_give_the_same_weights_and_the_model_ends_on_the_cpu():
    runs = []
    for device in ("cpu", "auto"):
        torch.manual_seed(5)
        model, data = ranker_data(400)
        _, val = ranker_data(100, seed=1)
        result = fit(model, data, val, FitConfig(epochs=2, batch_size=64, progress=False, seed=5, device=device))
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}
        assert not model.training and result.samples_per_s > 0
        # The restored best weights are the ones validated (eval on the CPU equals eval where it trained).
        assert model.eval_loss(val) == pytest.approx(result.best_val, rel=1e-4)
        runs.append(weights(model))
    if not GPU:  # auto is the CPU here: bit for bit the same run (a GPU draws dropout from its own generator)
        assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_checkpoints_hold_cpu_tensors_and_resume(tmp_path):
    model, data = ranker_data(200)
    cfg = FitConfig(epochs=1, batch_size=64, progress=False, checkpoint=str(tmp_path / "r.pt"), device="auto")
    fit(model, data, None, cfg)
    saved = torch.load(tmp_path / "r.pt", weights_only=False)  # no map_location: loads on a machine without GPU
    assert {v.device.type for v in [*saved["model"].values(), *saved["best_state"].values()]} == {"cpu"}
    resumed, _ = ranker_data(200)
    result = fit(resumed, data, None, replace(cfg, epochs=2, resume=True))
    assert len(result.train_loss) == 2 and next(resumed.parameters()).device.type == "cpu"


def test_bench_defaults_are_the_tiny_batch_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    tiny = TrainConfig.tiny()
    assert f"--seq-batch N sequence model batch size, in sequences (default: {tiny.seq_fit.batch_size})" in text
    assert f"--ranker-batch N ranker batch size, in samples (default: {tiny.ranker_fit.batch_size})" in text


def test_bench_rejects_a_zero_batch(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "train", "--seq-batch", "0"])
    assert exit_.value.code == 2
    assert "'0' is not a positive whole number of rows per batch" in capsys.readouterr().err


def test_bench_train_records_the_device_and_batch_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMREC_REGISTRY_URI", str(tmp_path / "registry"))
    out = tmp_path / "bench"
    assert main(["bench", "train", "--device", "cpu", "--users", "60", "--items", "40", "--epochs", "1",
                 "--seq-batch", "32", "--ranker-batch", "512", "--out", str(out)]) == 0
    report = json.loads((out / "bench-train.json").read_text())
    assert (report["device"], report["device_requested"], report["device_name"]) == ("cpu", "cpu", "cpu")
    assert report["sasrec"]["batch_size"] == 32 and report["ranker"]["batch_size"] == 512
    assert report["sasrec"]["sequences_per_s"] > 0 and report["ranker"]["samples_per_s"] > 0
    assert len(report["sasrec"]["epoch_s"]) == len(report["ranker"]["epoch_s"]) == 1


def test_train_command_takes_the_device(tmp_path, monkeypatch, capsys):
    """`streamrec train --device cuda`: trains on the GPU where there is one, else a clear error, exit 1."""
    monkeypatch.setenv("STREAMREC_REGISTRY_URI", str(tmp_path / "registry"))
    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--users", "30", "--items", "20", "--sessions", "2"]) == 0
    code = main(["train", "--data", str(data), "--device", "cuda", "--epochs", "1", "--dim", "8", "--max-len", "10",
                 "--item-buckets", "512", "--no-progress", "--no-publish"])
    if GPU:
        assert code == 0 and "dcn-v2" in capsys.readouterr().out
    else:
        assert code == 1 and "use --device cpu or auto" in capsys.readouterr().err
