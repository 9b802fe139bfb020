"""The core benchmark runs without Kafka, Redis or models (shape of its report only; no timing asserted)."""

from streamrec.harness.bench.core import bench_config, core
from streamrec.settings import Settings


def test_core_benchmark_reports_rate_and_stages_without_models(tmp_path):
    out = core(Settings(registry_uri=str(tmp_path)), str(tmp_path), candidates=40, batch=8, seconds=0.2)
    assert out["models"] == [] and out["requests_per_s"] > 0 and out["candidates"] == 40
    assert set(out["us_per_request_by_stage"]) == {"redis_read", "retrieval", "ranking"}
    cfg = bench_config(1000, 512)
    assert cfg.max_candidates == 1000 and cfg.batch_max == 512
