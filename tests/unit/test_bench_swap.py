"""`streamrec bench swap-stall`: the scoring engine measured while versions load, this code against a commit's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def test_swap_stall_measures_batches_inside_and_outside_load_windows_for_both_codes(tmp_path):
    from streamrec.harness.bench.swap import swap_stall
    from streamrec.registry import Registry
    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.export import export_dcn, export_sasrec
    from streamrec.trainer.sasrec import SASRec

    items = [f"i{k}" for k in range(60)]
    categories = {item: f"c{k % 5}" for k, item in enumerate(items)}
    reg = Registry(tmp_path / "reg")
    seq = SASRec(item_buckets=200, cat_buckets=20, dim=8, layers=1, heads=1, max_len=10)
    seq.set_catalog(items, [categories[i] for i in items])
    dcn = DCNRanker(user_buckets=100, item_buckets=200, cat_buckets=20, dim=4, hidden=(8,))
    for name, model, exported in (("sasrec", seq, export_sasrec(seq, tmp_path / "seq", items, categories)),
                                  ("ranker", dcn, export_dcn(dcn, tmp_path / "dcn"))):
        hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
        reg.publish(name, exported.files, kind=model.kind, version="v0", signatures=exported.signatures,
                    hashing=hashing, extra=exported.extra)
    out = swap_stall(str(tmp_path / "reg"), rounds=2, runs=1, baseline="HEAD", candidates=20, batch=2,
                     items=0, steady_s=0.3, gap_s=0.2, say=lambda _: None, baseline_root=tmp_path / "base",
                     load_nice=[10, 0])
    assert list(out["runs"]) == ["HEAD", "current, load nice 10", "current, load nice 0"]
    for label, (run,) in out["runs"].items():
        assert len(run["load_s"]) == 2 and run["loading"]["n"] > 0 and run["steady"]["n"] > 0
        assert run["p99_ratio"] == pytest.approx(run["loading"]["p99_ms"] / run["steady"]["p99_ms"], abs=0.01)
    assert out["runs"]["HEAD"][0]["code"].startswith(str(tmp_path / "base"))
    assert not out["runs"]["current, load nice 0"][0]["code"].startswith(str(tmp_path))
    assert "over_baseline" in out["summary"]["current, load nice 0"] and "over_baseline" not in out["summary"]["HEAD"]
