"""The soak's boundedness rule (`streamrec.harness.soak.judge`) on synthetic series: plateau, leak, noise."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.harness.soak import BOUNDED, GROWING, TOO_SHORT, SoakConfig, flatten, judge, summarise


def _samples(value, seconds: float = 1800, every: float = 10, seed: int = 0) -> list[dict]:
    """A sample every ``every`` s whose judged measures all follow ``value(t, rng)``."""
    rng = np.random.default_rng(seed)
    out = []
    for t in np.arange(0, seconds, every):
        v = float(value(t, rng))
        out.append({"t_s": float(t), "rss_mb": {"worker": v, "scorer": v, "learner": v}, "redis_keys": v,
                    "redis_prefix_mb": v / 1000, "redis_used_memory_mb": v, "lag": {"worker": v, "scorer": v},
                    "learner_state_kb": v, "latency_ms": {"p50": 5.0, "p95": 7.0, "p99": 9.0, "n": 3}})
    return out


def _verdicts(samples, warmup_s=600) -> dict[str, str]:
    return {m: v["verdict"] for m, v in judge(samples, warmup_s).items()}


def test_a_series_that_rises_then_stays_flat_is_bounded():
    # Fills up during warm-up (keys until their TTL, buffers until their cap), then flat.
    samples = _samples(lambda t, rng: 20_000 * min(t / 500, 1.0))
    verdicts = _verdicts(samples)
    assert set(verdicts) == {"rss_mb.worker", "rss_mb.scorer", "rss_mb.learner", "redis_keys",
                             "redis_prefix_mb", "lag.worker", "lag.scorer", "learner_state_kb"}
    assert set(verdicts.values()) == {BOUNDED}


def test_a_linearly_growing_series_is_growing():
    samples = _samples(lambda t, rng: 1_000 + 10 * t)  # a leak: +10 per second, forever
    verdicts = _verdicts(samples)
    assert set(verdicts.values()) == {GROWING}
    report = judge(samples, 600)["redis_keys"]
    assert report["slope_per_h"] == pytest.approx(36_000, rel=1e-6)
    assert report["last_median"] > report["limit"]


def test_a_noisy_plateau_is_bounded_and_one_spike_does_not_change_that():
    def noisy(t, rng):
        spike = 5_000 if 1700 <= t < 1710 else 0  # one sample far off, at the very end
        return 20_000 + rng.normal(0, 200) + spike

    verdicts = _verdicts(_samples(noisy, seed=3))
    assert set(verdicts.values()) == {BOUNDED}


def test_a_slow_leak_under_the_noise_floor_passes_and_that_is_the_documented_limit():
    # +5 units over the whole run is below the 10 MB RSS floor: the rule cannot see it, on purpose.
    verdict = judge(_samples(lambda t, rng: 300 + 5 * t / 1800), 600)["rss_mb.worker"]
    assert verdict["verdict"] == BOUNDED
    assert verdict["slope_per_h"] > 0  # ...but the slope reported shows it


def test_too_few_samples_after_warm_up_says_so_instead_of_guessing():
    samples = _samples(lambda t, rng: 1.0, seconds=100, every=10)
    assert set(_verdicts(samples, warmup_s=60).values()) == {TOO_SHORT}
    assert judge(samples, warmup_s=1000) == {}


def test_missing_values_are_skipped_not_counted_as_zero():
    samples = _samples(lambda t, rng: 1000.0)
    for s in samples[:90]:
        s["learner_state_kb"] = float("nan")  # no checkpoint written yet
    verdict = judge(samples, 600)["learner_state_kb"]
    assert verdict["verdict"] == BOUNDED and verdict["samples"] == len(samples) - 90


def test_flatten_and_summary_give_start_end_and_max_per_measure():
    samples = _samples(lambda t, rng: t)
    assert flatten(samples[1])["rss_mb.scorer"] == 10.0
    summary = summarise(samples)
    assert summary["redis_keys"] == {"start": 0.0, "end": 1790.0, "max": 1790.0, "min": 0.0}
    assert summary["latency_ms.p99"]["max"] == 9.0


def test_defaults_scale_with_the_run_and_bad_flags_name_themselves():
    short, long = SoakConfig(minutes=1).resolved(), SoakConfig(minutes=30).resolved()
    assert (short.every_s, short.ttl_s, short.warmup_s) == (2.0, 10, 20.0)
    assert (long.every_s, long.ttl_s, long.warmup_s) == (10.0, 300, 600.0)
    with pytest.raises(ValueError, match="--minutes"):
        SoakConfig(minutes=0).resolved()
    with pytest.raises(ValueError, match="--warmup-s"):
        SoakConfig(minutes=1, warmup_s=90).resolved()


def test_markdown_report_has_a_row_and_a_verdict_per_measure_and_latency_over_time():
    from streamrec.harness.soak import markdown

    samples = _samples(lambda t, rng: 20_000 * min(t / 500, 1.0))
    for s in samples:
        s.update(events_per_s=30.0, load_1m=2.0)
    text = markdown({"samples": samples, "verdicts": judge(samples, 600), "summary": summarise(samples)})
    assert "| redis_keys | keys | 0.0 | 20,000.0 | 20,000.0 | bounded |" in text
    assert "| redis_used_memory_mb | MB |" in text and "not judged (context)" in text
    assert text.count(" | 5 | 7 | 9 | 30.0 | 2.0 |") == 6  # six spans of time, each with its latency
