"""Prometheus metrics of the stream worker, declared once."""

from prometheus_client import Counter, Gauge, Histogram

events_in = Counter("streamrec_worker_events_in_total", "Records read from the events topic")
applied = Counter("streamrec_worker_events_applied_total", "Events applied to Redis", ["type"])
deduplicated = Counter("streamrec_worker_events_deduplicated_total",
                       "Events dropped as duplicates of an event id already applied", ["type"])
dead_lettered = Counter("streamrec_worker_events_dead_lettered_total", "Records sent to the DLQ", ["reason"])
score_requests = Counter("streamrec_worker_score_requests_total", "Score requests produced")
catalog_updates = Counter("streamrec_worker_catalog_updates_total", "Catalog records applied", ["kind"])
batch_size = Histogram("streamrec_worker_batch_size", "Records per batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
batch_seconds = Histogram("streamrec_worker_batch_seconds", "Time to apply and answer one batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
redis_write = Histogram("streamrec_worker_redis_write_seconds", "Redis write time per batch (both phases)",
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
event_lag = Histogram("streamrec_worker_event_time_lag_seconds", "Now minus event time when applied",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 3600))
consumer_lag = Gauge("streamrec_worker_consumer_lag", "Records not yet processed per partition", ["partition"])
redis_up = Gauge("streamrec_worker_redis_up", "1 while Redis answers the worker")
stall_restarts = Gauge("streamrec_worker_stall_restarts",
                       "Times this worker restarted itself in place after its consumer stalled")
consumer_renewals = Counter("streamrec_worker_consumer_renewals_total",
                            "Times the confluent engine replaced its Kafka consumer after it stalled")
assigned_partitions = Gauge("streamrec_worker_assigned_partitions", "Partitions of `events` this process owns")


def initialise() -> None:
    """Create every labelled series at zero, so dashboards and alerts see them before the first event."""
    from streamrec.stream.schemas import EVENT_TYPES

    for t in EVENT_TYPES:
        applied.labels(t)
        deduplicated.labels(t)
    for reason in ("bad_json", "not_utf8", "too_large", "invalid", "invalid_field", "missing_field",
                   "unknown_field", "unknown_type", "bad_ts", "future_ts", "too_late", "forgotten_user"):
        dead_lettered.labels(reason)
    for kind in ("upserted", "removed"):
        catalog_updates.labels(kind)
