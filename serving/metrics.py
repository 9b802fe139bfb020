"""Prometheus metrics of the scorer, declared once (names carry their unit)."""

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30)
_STAGE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

requests = Counter("streamrec_scorer_requests_total", "Score requests read from score-requests")
recommendations = Counter("streamrec_scorer_recommendations_total", "Recommendations produced and acknowledged",
                          ["variant", "segment"])  # segment: a customer segment id or "none" (bounded)
failed = Counter("streamrec_scorer_failed_requests_total",
                 "Requests not scored normally: unreadable, or answered from the snapshot after an error",
                 ["reason"])
degraded = Counter("streamrec_scorer_degraded_total", "Recommendations served in a degraded mode", ["mode"])
end_to_end = Histogram("streamrec_scorer_end_to_end_seconds",
                       "Event time to recommendation acknowledged by the broker", buckets=_LAT)
onnx_seconds = Counter("streamrec_scorer_onnx_seconds_total", "Time inside ONNX Runtime, per graph", ["graph"])
stage = Histogram("streamrec_scorer_stage_seconds", "Time per batch in each stage", ["stage"], buckets=_STAGE)
batch_size = Histogram("streamrec_scorer_batch_size", "Requests per batch",
                       buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))
candidates = Histogram("streamrec_scorer_candidates", "Candidates per request by source", ["source"],
                       buckets=(0, 1, 5, 10, 25, 50, 100, 200, 500, 1000))
provider = Gauge("streamrec_scorer_provider_info", "1 for the execution provider in use per model",
                 ["model", "provider"])
model_version = Gauge("streamrec_scorer_model_version_info", "1 for the version each arm serves",
                      ["variant", "model", "version"])
swaps = Counter("streamrec_scorer_swaps_total", "Model versions swapped in", ["model"])
refused = Counter("streamrec_scorer_refused_versions_total", "Model versions refused", ["model", "reason"])
gpu_fallbacks = Counter("streamrec_scorer_gpu_fallbacks_total", "Times a GPU provider was replaced by the CPU")
redis_up = Gauge("streamrec_scorer_redis_up", "1 while Redis answers the scorer")
consumer_lag = Gauge("streamrec_scorer_consumer_lag", "Score requests not yet answered per partition this "
                     "scorer owns", ["partition"])
consumer_renewals = Counter("streamrec_scorer_consumer_renewals_total",
                            "Times the scorer replaced its Kafka consumer after it stalled")
producer_renewals = Counter("streamrec_scorer_producer_renewals_total",
                            "Producers replaced because the broker acknowledged nothing for STREAMREC_SCORER_STALL_S")
# Share of clicked items each candidate source proposed = proposed_clicks{source} / attributed_clicks.
attributed_clicks = Counter("streamrec_scorer_attributed_clicks_total",
                            "Clicks on items of a recommendation the scorer remembers (by rec_id)")
proposed_clicks = Counter("streamrec_scorer_proposed_clicks_total",
                          "Clicked recommended items that each candidate source had proposed "
                          "(an item proposed by several sources counts for each)", ["source"])
CANDIDATE_SOURCES = ("seq", "covisit", "trending", "content", "graph")


def observe_stage(name: str, seconds: float) -> None:
    stage.labels(name).observe(seconds)


DEGRADED_MODES = ("no_model", "cold_start", "redis_down", "scoring_error")


def initialise(models: tuple[str, ...]) -> None:
    """Create the labelled series at zero, so dashboards and alerts see them before they happen."""
    for mode in DEGRADED_MODES:
        degraded.labels(mode)
    for source in CANDIDATE_SOURCES:
        proposed_clicks.labels(source)
    for name in models:
        swaps.labels(name)
        refused.labels(name, "RegistryError")  # what a failed checksum or signature check raises
