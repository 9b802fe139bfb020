"""Prometheus metrics of the online trainer, declared once (STYLE.md point 9)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

samples_joined = Counter("streamrec_learner_samples_joined_total", "Slates joined and closed (training samples)")
items_joined = Counter("streamrec_learner_items_joined_total", "Shown items in joined slates")
# The A/B view, per arm and customer segment (a segment id or "none": bounded, see schemas.MAX_SEGMENTS).
arm_slates = Counter("streamrec_learner_arm_slates_total", "Joined slates by A/B arm and customer segment",
                     ["variant", "segment"])
arm_reward = Counter("streamrec_learner_arm_reward_total", "Reward of joined slates by A/B arm and customer "
                     "segment (observed, inside the attribution window)", ["variant", "segment"])
arm_clicked_slates = Counter("streamrec_learner_arm_clicked_slates_total",
                             "Joined slates with at least one click, by A/B arm and customer segment "
                             "(click-through = this / arm_slates)", ["variant", "segment"])
rewards = Counter("streamrec_learner_rewards_total", "Interactions joined to a slate, by type", ["type"])
window_drops = Counter("streamrec_learner_window_drops_total",
                       "Interactions dropped: late (outside the attribution window), duplicate, unattributable",
                       ["reason"])
feature_sources = Counter("streamrec_learner_feature_sources_total",
                          "Slates by where their training features came from: served (logged by the scorer with "
                          "the recommendation), read_late (read from Redis on arrival, when the user may "
                          "already have reacted) or degraded (none: a degraded answer trains nothing)", ["source"])
filtered = Counter("streamrec_learner_filtered_slates_total", "Slates left out of training and gating", ["reason"])
attraction_items = Gauge("streamrec_learner_attraction_items",
                         "Items whose position-debiased attraction the candidate ranker carries (per-item bias)")
ranker_calibration = Gauge("streamrec_learner_ranker_calibration",
                           "Last fitted scales of the candidate ranker: its own logit and the attraction offsets",
                           ["term"])
training_loss = Gauge("streamrec_learner_training_loss", "Loss of the last micro-batch", ["model"])
train_steps = Counter("streamrec_learner_train_steps_total", "Optimisation steps", ["model"])
gate_decisions = Counter("streamrec_learner_gate_decisions_total", "Gate decisions", ["model", "decision"])
gate_fallbacks = Counter("streamrec_learner_gate_fallbacks_total",
                         "Fine-tuned ranker candidates rejected whose live network with the fresh attraction offsets "
                         "passed the gate instead (counted in the decisions as accepted)")
gate_estimate = Gauge("streamrec_learner_gate_estimate",
                      "Last gate's estimates (auc, snips, CI bounds; next_item_loss for the sequence model)",
                      ["model", "policy", "metric"])
versions_published = Counter("streamrec_learner_versions_published_total", "Model versions published", ["model"])
event_to_model = Histogram("streamrec_learner_event_to_published_model_seconds",
                           "From the newest event a published model trained on to its announcement",
                           buckets=(5, 10, 20, 30, 45, 60, 90, 120, 300, 600))
refresh_seconds = Histogram("streamrec_learner_refresh_seconds", "Gate + export + publish of one candidate",
                            ["model"], buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120))
lag_seconds = Gauge("streamrec_learner_watermark_lag_seconds", "Wall clock minus the joiner's event-time watermark")


def count_arm(slate) -> None:
    """A joined slate in the A/B view: slates, reward and clicked slates per arm and segment."""
    from streamrec.stream.schemas import segment_label

    labels = (slate.variant, segment_label(slate.segment))
    arm_slates.labels(*labels).inc()
    arm_reward.labels(*labels).inc(slate.reward)
    if slate.kinds.get("click"):
        arm_clicked_slates.labels(*labels).inc()


def count_join(before: dict, after: dict) -> None:
    """Move the joiner's counters' increase into the Prometheus counters."""
    for key, value in after.items():
        inc = value - before.get(key, 0)
        if inc <= 0:
            continue
        if key.startswith("reward:"):
            rewards.labels(key.split(":", 1)[1]).inc(inc)
        elif key in ("late", "duplicates", "unattributable", "pending_dropped", "evicted"):
            window_drops.labels(key).inc(inc)


def initialise(models: tuple[str, ...], arms: tuple[str, ...] = ("default",)) -> None:
    """Create the labelled series before their first event, so dashboards and alerts see them.
    The loss starts as NaN: no training step yet, which is not a loss of zero."""
    for kind in ("click", "add_to_cart", "purchase", "skip"):
        rewards.labels(kind)
    for arm in arms:
        for counter in (arm_slates, arm_reward, arm_clicked_slates):
            counter.labels(arm, "none")
    for reason in ("late", "duplicates", "unattributable", "pending_dropped", "evicted"):
        window_drops.labels(reason)
    for name in models:
        training_loss.labels(name).set(float("nan"))
        train_steps.labels(name)
        versions_published.labels(name)
        for decision in ("accepted", "rejected"):
            gate_decisions.labels(name, decision)
