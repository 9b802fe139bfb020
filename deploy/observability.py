"""Grafana panels and Prometheus alert rules, defined once here.

`streamrec deploy grafana-dashboard` and `streamrec deploy prometheus-rules`
render them into ``deploy/grafana/dashboards/streamrec.json`` and
``deploy/prometheus/rules/streamrec.yml``; tests keep the committed files equal
to the rendering, run ``promtool`` on the rules, and evaluate every query
against a real Prometheus scraping real services, so no panel or alert can
refer to a metric that does not exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str
    severity: str
    summary: str
    runbook: str
    metrics: tuple[str, ...] = field(default=())
    """The metrics the expression reads (checked to exist against a real Prometheus)."""


def p99(metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[1m])))"


def p50(metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.5, sum by ({group}) (rate({metric}_bucket[1m])))"


ROWS: tuple[Row, ...] = (
    Row("Traffic", (
        Panel("Events applied by type (per s)",
              (("sum by (type) (rate(streamrec_worker_events_applied_total[1m]))", "{{type}}"),), "ops"),
        Panel("Dead letters by reason (per s)",
              (("sum by (reason) (rate(streamrec_worker_events_dead_lettered_total[1m]))", "{{reason}}"),), "ops"),
        Panel("Duplicates dropped (per s)",
              (("sum by (type) (rate(streamrec_worker_events_deduplicated_total[1m]))", "{{type}}"),), "ops"),
        Panel("Recommendations by arm (per s)",
              (("sum by (variant) (rate(streamrec_scorer_recommendations_total[1m]))", "{{variant}}"),), "ops"),
    )),
    Row("Latency", (
        Panel("Event to recommendation (scorer end to end)",
              ((p50("streamrec_scorer_end_to_end_seconds"), "p50"),
               (p99("streamrec_scorer_end_to_end_seconds"), "p99")), "s"),
        Panel("Scorer stages p99", ((p99("streamrec_scorer_stage_seconds", "stage"), "{{stage}}"),), "s"),
        Panel("Worker batch and Redis write p99",
              ((p99("streamrec_worker_batch_seconds"), "batch"),
               (p99("streamrec_worker_redis_write_seconds"), "redis write")), "s"),
        Panel("Event time lag at the worker p99", ((p99("streamrec_worker_event_time_lag_seconds"), "p99"),), "s"),
    )),
    Row("Model", (
        Panel("Model version per arm", (("max by (variant, model, version) (streamrec_scorer_model_version_info)",
                                         "{{variant}} {{model}}@{{version}}"),), kind="table"),
        Panel("Swaps and refused versions (last hour)",
              (("sum by (model) (increase(streamrec_scorer_swaps_total[1h]))", "swaps {{model}}"),
               ("sum by (model, reason) (increase(streamrec_scorer_refused_versions_total[1h]))",
                "refused {{model}} {{reason}}")), "short"),
        Panel("Degraded recommendations (per s)",
              (("sum by (mode) (rate(streamrec_scorer_degraded_total[1m]))", "{{mode}}"),), "ops"),
    )),
    Row("Online learning", (
        Panel("Rewards joined by type (per s)",
              (("sum by (type) (rate(streamrec_learner_rewards_total[1m]))", "{{type}}"),
               ("sum(rate(streamrec_learner_samples_joined_total[1m]))", "slates joined")), "ops"),
        Panel("Reward per slate by arm (joined rewards)",
              (("sum by (variant) (rate(streamrec_learner_arm_reward_total[5m])) "
                "/ sum by (variant) (rate(streamrec_learner_arm_slates_total[5m]))", "{{variant}}"),), "short"),
        Panel("Gate decisions (last hour)",
              (("sum by (model, decision) (increase(streamrec_learner_gate_decisions_total[1h]))",
                "{{model}} {{decision}}"),), "short"),
        Panel("Training loss", (("max by (model) (streamrec_learner_training_loss)", "{{model}}"),), "short"),
        Panel("Event to published model p99",
              ((p99("streamrec_learner_event_to_published_model_seconds").replace("[1m]", "[15m]"), "p99"),), "s"),
    )),
    # Customer segments (`streamrec segments`): the A/B view split by the user's segment ("none" = unsegmented).
    Row("Segments", (
        Panel("Recommendations by segment and arm (per s)",
              (("sum by (segment, variant) (rate(streamrec_scorer_recommendations_total[1m]))",
                "{{segment}} {{variant}}"),), "ops"),
        Panel("Reward per slate by segment and arm",
              (("sum by (segment, variant) (rate(streamrec_learner_arm_reward_total[5m])) "
                "/ sum by (segment, variant) (rate(streamrec_learner_arm_slates_total[5m]))",
                "{{segment}} {{variant}}"),), "short"),
        Panel("Click-through by segment and arm (slates clicked / slates joined)",
              (("sum by (segment, variant) (rate(streamrec_learner_arm_clicked_slates_total[5m])) "
                "/ sum by (segment, variant) (rate(streamrec_learner_arm_slates_total[5m]))",
                "{{segment}} {{variant}}"),), "percentunit"),
    )),
    Row("Resources", (
        Panel("Batch sizes p99", ((p99("streamrec_worker_batch_size"), "worker"),
                                  (p99("streamrec_scorer_batch_size"), "scorer")), "short"),
        Panel("Consumer lag per partition",
              (("sum by (partition) (streamrec_worker_consumer_lag)", "worker, partition {{partition}}"),
               ("sum by (partition) (streamrec_scorer_consumer_lag)", "scorer, partition {{partition}}")), "short"),
        Panel("Execution provider", (("max by (model, provider) (streamrec_scorer_provider_info)",
                                      "{{model}}: {{provider}}"),), kind="table"),
        Panel("Redis reachable", (("min by (job) (streamrec_worker_redis_up)", "worker"),
                                  ("min by (job) (streamrec_scorer_redis_up)", "scorer")), "short"),
        Panel("Candidates per request by source p99",
              ((p99("streamrec_scorer_candidates", "source"), "{{source}}"),), "short"),
    )),
)

ALERTS: tuple[Alert, ...] = (
    Alert("StreamrecServiceDown", 'up{job=~"streamrec-.*"} == 0', "1m", "critical",
          "{{ $labels.job }} on {{ $labels.instance }} is down",
          "The service does not answer /metrics. Check its logs and /healthz; on Kubernetes, the pod's events. "
          "Events wait in Kafka meanwhile: nothing is lost, latency grows until it is back.", ("up",)),
    Alert("StreamrecWorkerRedisDown", "max by (instance) (streamrec_worker_redis_up) == 0", "1m", "critical",
          "the stream worker cannot reach Redis",
          "The worker retries with backoff, stays unready and commits nothing, so no event is lost. "
          "Restore Redis (STREAMREC_REDIS_URL); the worker resumes by itself.", ("streamrec_worker_redis_up",)),
    Alert("StreamrecConsumerLagGrowing",
          "sum(streamrec_worker_consumer_lag) > 10000 and deriv(sum(streamrec_worker_consumer_lag)[10m:1m]) > 0",
          "10m", "warning", "the worker falls behind the events topic",
          "Events arrive faster than the workers apply them. Add workers (up to the partition count of "
          "`events`), or partitions and workers together; check Redis latency on the dashboard.",
          ("streamrec_worker_consumer_lag",)),
    Alert("StreamrecConsumerStalled",
          "(sum(increase(streamrec_scorer_consumer_renewals_total[15m])) or vector(0)) "
          "+ (sum(increase(streamrec_worker_consumer_renewals_total[15m])) or vector(0)) "
          "+ (sum(delta(streamrec_worker_stall_restarts[15m])) or vector(0)) > 0",
          "0m", "warning", "a worker or scorer consumer stalled and was replaced",
          "Records waited but no batch started for the stall time (STREAMREC_WORKER_STALL_S, "
          "STREAMREC_SCORER_STALL_S), usually after a broker outage, and the service recovered by itself: the "
          "faust worker restarted in place, the scorer or the confluent worker replaced its Kafka consumer. "
          "Nothing is lost or answered twice. Check the broker's health at that time; if it repeats with a "
          "healthy broker, see RELIABILITY.md faults 7 and 9.",
          ("streamrec_scorer_consumer_renewals_total", "streamrec_worker_consumer_renewals_total",
           "streamrec_worker_stall_restarts")),
    Alert("StreamrecDeadLetterRateHigh",
          "sum(rate(streamrec_worker_events_dead_lettered_total[5m])) "
          "/ clamp_min(sum(rate(streamrec_worker_events_in_total[5m])), 1e-9) > 0.05",
          "10m", "warning", "more than 5% of events go to the DLQ",
          "A producer sends invalid events. `streamrec dlq --last 20` shows the reasons with the field at "
          "fault; fix the producer. The records are kept in events.dlq with their original bytes.",
          ("streamrec_worker_events_dead_lettered_total", "streamrec_worker_events_in_total")),
    Alert("StreamrecEndToEndLatencyHigh",
          p99("streamrec_scorer_end_to_end_seconds").replace("[1m]", "[5m]") + " > 0.03",
          "10m", "warning", "p99 event-to-recommendation latency above 30 ms",
          "Look at the stage panel: Redis read, retrieval, ranking or produce. Scale scorers out by "
          "partitions, check Redis and broker load, or the provider (a GPU fallback shows there).",
          ("streamrec_scorer_end_to_end_seconds_bucket",)),
    Alert("StreamrecDegradedResponses", "sum(rate(streamrec_scorer_degraded_total[5m])) > 0", "5m", "warning",
          "the scorer serves degraded recommendations",
          "The scorer answers without models or without Redis (mode label). Check /readyz of the scorer, "
          "Redis, and whether a model was ever published (`streamrec models list`).",
          ("streamrec_scorer_degraded_total",)),
    Alert("StreamrecNoModelSwapWhileLearning",
          "sum(increase(streamrec_scorer_swaps_total[2h])) == 0 and on() max(up{job=\"streamrec-learner\"}) == 1",
          "10m", "warning", "the learner runs but no model was swapped in for 2 hours",
          "The online trainer's candidates are all rejected by the gate, or not published. The learner's "
          "gate panel and log give the estimates of each rejection; check the reward joining (rewards "
          "joined per second) and the registry volume.",
          ("streamrec_scorer_swaps_total", "up")),
    Alert("StreamrecModelVersionRefused", "sum(increase(streamrec_scorer_refused_versions_total[15m])) > 0", "0m",
          "warning", "the scorer refused a model version",
          "A published version failed its checksum, signature or warm-up; the previous one keeps serving. "
          "`streamrec models show NAME VERSION` and the scorer log say why; publish a fixed version or "
          "`streamrec models rollback NAME`.", ("streamrec_scorer_refused_versions_total",)),
)


# --------------------------------------------------------------------------- rendering
def grafana_dashboard() -> dict:
    """The dashboard as Grafana JSON (datasource uid `prometheus`, provisioned with it)."""
    panels, y, pid = [], 0, 1
    ds = {"type": "prometheus", "uid": "prometheus"}
    for row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        width = 24 // len(row.panels)
        for i, panel in enumerate(row.panels):
            panels.append({
                "id": pid, "type": panel.kind, "title": panel.title, "datasource": ds,
                "gridPos": {"h": 8, "w": width, "x": i * width, "y": y},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": [{"refId": chr(65 + k), "datasource": ds, "expr": expr, "legendFormat": legend}
                            for k, (expr, legend) in enumerate(panel.exprs)],
            })
            pid += 1
        y += 8
    return {"uid": "streamrec", "title": "streamrec", "schemaVersion": 39, "version": 1, "editable": True,
            "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "tags": ["streamrec"], "panels": panels}


def prometheus_rules() -> dict:
    return {"groups": [{"name": "streamrec", "rules": [
        {"alert": a.name, "expr": a.expr, "for": a.duration, "labels": {"severity": a.severity},
         "annotations": {"summary": a.summary, "runbook": a.runbook}} for a in ALERTS]}]}


def dashboard_text() -> str:
    return json.dumps(grafana_dashboard(), indent=2) + "\n"


def rules_text() -> str:
    import yaml  # a dev dependency: only needed to regenerate the committed file

    header = "# Generated by `streamrec deploy prometheus-rules`; a test keeps it in step with the code.\n"
    return header + yaml.safe_dump(prometheus_rules(), sort_keys=False, width=110)


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    return [(p.title, expr) for row in ROWS for p in row.panels for expr, _ in p.exprs]
