"""The trainer's subcommands through `streamrec.cli.main`, as a user would run them."""

from __future__ import annotations

import csv
import json

import pytest

from streamrec.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMREC_REGISTRY_URI", str(tmp_path / "registry"))
    return tmp_path


@pytest.mark.parametrize("argv", [["train"], ["evaluate"], ["data"], ["data", "synth"], ["data", "show"],
                                  ["models"], ["bench", "train"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_synth_then_train_publishes_and_models_commands_work(env, capsys):
    data = env / "synth"
    assert main(["data", "synth", "--out", str(data), "--users", "40", "--items", "30", "--sessions", "3"]) == 0
    assert main(["data", "show", "--data", str(data)]) == 0
    top = env / "top.csv"
    assert main(["train", "--data", str(data), "--epochs", "1", "--dim", "16", "--max-len", "10",
                 "--item-buckets", "2048", "--no-progress", "--no-announce", "--top10", str(top),
                 "--checkpoint-dir", str(env / "ckpt")]) == 0
    printed = capsys.readouterr().out
    for row in ("sasrec", "popularity", "co-visitation", "dcn-v2", "logistic regression"):
        assert row in printed
    rows = list(csv.DictReader(top.open()))
    assert rows and {r["rank"] for r in rows} == {str(i) for i in range(1, 11)}
    assert (env / "ckpt" / "sasrec.pt").exists() and (env / "ckpt" / "ranker.pt").exists()

    assert main(["models", "list"]) == 0
    assert "sasrec" in capsys.readouterr().out
    assert main(["models", "show", "sasrec"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["current"] and shown["kind"] == "sasrec" and "encoder.onnx" in shown["files"]
    assert shown["opset"] == 17 and shown["hashing"]["item"]["buckets"] == 2048

    # The published ONNX model, scored without torch, reproduces the metrics measured in torch.
    onnx_top = env / "onnx-top.csv"
    assert main(["evaluate", "--data", str(data), "--model", "sasrec", "--top10", str(onnx_top)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if f"sasrec@{shown['version']}" in line)
    assert f"{shown['metrics']['NDCG@10']:.4f}" in row and f"{shown['metrics']['HR@10']:.4f}" in row
    assert onnx_top.read_text() == top.read_text()


def test_evaluate_without_the_ranker_prints_the_sequence_table_only(env, capsys):
    data = env / "synth"
    assert main(["data", "synth", "--out", str(data), "--users", "40", "--items", "30", "--sessions", "3"]) == 0
    assert main(["evaluate", "--data", str(data), "--epochs", "2", "--dim", "16", "--max-len", "10", "--no-graph",
                 "--no-ranker", "--no-progress"]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "sasrec" in out and "co-visitation" in out
    assert "validation loss / NDCG@10" in printed.err.replace("\n", "")  # the training summary
    assert "dcn-v2" not in out and "logistic regression" not in out
    assert main(["evaluate", "--data", str(data), "--no-ranker", "--served"]) == 2


def test_errors_are_reported_not_raised(env, capsys):
    bad = env / "u.data"
    bad.write_text("1\t2\tx\t881250949\n")
    assert main(["evaluate", "--data", str(bad)]) == 1
    assert "u.data:1: column 'rating'" in capsys.readouterr().err.replace("\n", "")
    assert main(["models", "show", "nothing"]) == 1
    assert main(["models", "rollback", "../x", "--no-announce"]) == 1
    assert main(["models", "promote", "x"]) == 2


def test_bench_train_writes_json_and_png(env, capsys):
    out = env / "bench"
    assert main(["bench", "train", "--users", "40", "--items", "30", "--epochs", "1", "--dim", "8",
                 "--out", str(out)]) == 0
    report = json.loads((out / "bench-train.json").read_text())
    assert report["sasrec"]["sequences_per_s"] > 0 and report["ranker"]["samples_per_s"] > 0
    assert report["sasrec"]["parity_max_abs_diff"] < 1e-4 and report["file_bytes"]["ranker/model.onnx"] > 0
    assert set(report["quality"]) == {"sasrec", "popularity", "co-visitation", "dcn-v2", "logistic regression"}
    assert (out / "bench-train.png").stat().st_size > 1000
