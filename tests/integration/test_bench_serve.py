"""`streamrec bench serve`'s swap and pull runs against real Kafka and Redis: fresh versions announced under traffic are
loaded and swapped in, and every request is answered and counted on one side of the swap windows."""

from __future__ import annotations

import pytest

from streamrec.registry import Registry
from streamrec.harness.bench.serve import pull_api, through_kafka
from streamrec.harness.bench.core import bench_config

from .test_scorer import build_models

pytestmark = pytest.mark.integration


def test_swap_run_swaps_fresh_versions_in_under_traffic_and_answers_every_request(fresh_settings, tmp_path):
    registry = tmp_path / "registry"
    s = fresh_settings.replace(registry_uri=str(registry))
    build_models(s, tmp_path, "v1", send=False)

    result = through_kafka(s, str(registry), bench_config(50, 64), events=2000, n=200, rate=100, seconds=2,
                           swaps=3, swap_seconds=6)

    swaps = result["swaps"]
    assert swaps["rounds"] == 3 and swaps["models_per_round"] == 2
    assert swaps["swapped"] == 3, swaps["announce_to_swapped_s"]  # each round's two models swapped in
    assert swaps["answered"] == swaps["sent"] == 600
    assert swaps["during_swaps"]["n"] + swaps["steady"]["n"] == 600
    assert swaps["during_swaps"]["n"] > 0 and swaps["steady"]["n"] > 0
    assert swaps["failed"] == 0 and swaps["refused_versions"] == 0
    assert swaps["p99_ratio"] == pytest.approx(swaps["during_swaps"]["p99_ms"] / swaps["steady"]["p99_ms"], abs=0.01)
    # the fresh versions went to a scratch registry that is gone; the user's registry holds only its own
    assert {name: Registry(registry).versions(name) for name in ("sasrec", "ranker")} == {"sasrec": ["v1"],
                                                                                         "ranker": ["v1"]}


def test_pull_run_answers_every_request_and_times_it(fresh_settings, tmp_path):
    """`--only pull`: the scorer started on the registry's models answers every paced GET with a 200."""
    registry = tmp_path / "registry"
    s = fresh_settings.replace(registry_uri=str(registry))
    build_models(s, tmp_path, "v1", send=False)

    result = pull_api(s, str(registry), bench_config(50, 64), events=2000, rate=20, seconds=2, connections=2)

    assert result["sent"] == 40 and result["answered_200"] == 40 and result["failures"] == []
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert sorted(result["models"]) == ["ranker@v1", "sasrec@v1"]
