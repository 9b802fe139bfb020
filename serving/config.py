"""Scorer configuration: the knobs of `streamrec serve`, with documented defaults.

The pattern of every service's config: a frozen dataclass whose defaults are
the settings' defaults, and `from_settings`, which takes ``STREAMREC_SCORER_*``
(`Settings.section`). Fields without a setting are tuning constants.

>>> ScorerConfig.from_settings(Settings(scorer_top_n=5)).top_n
5
>>> parse_arms("a=50:ranker@v1,b=50")
(Arm(name='a', weight=50.0, pins=(('ranker', 'v1'),), trending=False), Arm(name='b', weight=50.0, pins=(), trending=False))
>>> parse_arms("pop=1:trending")[0].trending
True
"""

from __future__ import annotations

from streamrec.settings import Settings

from dataclasses import dataclass, fields
from typing import Literal


class ConfigError(ValueError):
    """A scorer setting that cannot be used; the message names it and the fix."""


@dataclass(frozen=True)
class Arm:
    """One A/B arm: a share of users (by stable hash) and the model versions it pins.

    A model not pinned follows the live version announced on `model-versions`. A ``trending`` arm
    serves the trending items only (most viewed lately, minus what the user has seen), with no model
    and no co-visitation: the popularity baseline of an experiment.
    """

    name: str
    weight: float
    pins: tuple[tuple[str, str], ...] = ()
    trending: bool = False

    def pinned(self, model: str) -> str | None:
        return dict(self.pins).get(model)


DEFAULT_ARMS = (Arm("default", 100.0),)
TRENDING_ARM = "trending"
"""The arm option that makes it the popularity baseline (no models, trending items only)."""


def parse_arms(spec: str) -> tuple[Arm, ...]:
    """``"NAME=WEIGHT[:model@version[:model@version]|:trending],..."``; empty -> one arm "default"."""
    if not spec or not spec.strip():
        return DEFAULT_ARMS
    arms = []
    for part in spec.split(","):
        head, *pins = part.strip().split(":")
        name, sep, weight = head.partition("=")
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise ConfigError(f"scorer_ab_arms: weight {weight!r} of arm {name!r} is not a number; "
                              "write NAME=WEIGHT[:model@version]") from None
        parsed = []
        trending = TRENDING_ARM in pins
        for pin in pins:
            model, at, version = pin.partition("@")
            if pin == TRENDING_ARM:
                continue
            if not at or not model or not version:
                raise ConfigError(f"scorer_ab_arms: {pin!r} in arm {name!r} is not model@version "
                                  f"(or {TRENDING_ARM!r}, for the popularity baseline)")
            if trending:
                raise ConfigError(f"scorer_ab_arms: arm {name!r} is {TRENDING_ARM!r} and serves no model; "
                                  f"drop {pin!r} or {TRENDING_ARM!r}")
            parsed.append((model, version))
        if not name or w <= 0:
            raise ConfigError(f"scorer_ab_arms: arm {part!r} needs a name and a positive weight")
        arms.append(Arm(name, w, tuple(parsed), trending))
    if len({a.name for a in arms}) != len(arms):
        raise ConfigError(f"scorer_ab_arms: arm names repeat in {spec!r}")
    return tuple(arms)


# Defaults live in one place, the settings object (STREAMREC_*); these follow it.
_DEFAULTS = Settings()


@dataclass(frozen=True)
class ScorerConfig:
    """Everything the scorer needs beyond the shared settings."""

    batch_max: int = _DEFAULTS.scorer_batch_max
    """Most score requests scored together (one Redis round trip per phase, one ONNX run)."""
    batch_wait_ms: int = _DEFAULTS.scorer_batch_wait_ms
    """Longest the scorer waits to fill a batch."""
    top_n: int = _DEFAULTS.scorer_top_n
    """Items per recommendation."""
    seq_candidates: int = _DEFAULTS.scorer_seq_candidates
    """Candidates from the sequence model's retrieval (inner product top-K)."""
    covis_candidates: int = _DEFAULTS.scorer_covis_candidates
    """Co-visitation candidates per request, over the session's recent items."""
    trending_candidates: int = _DEFAULTS.scorer_trending_candidates
    content_candidates: int = _DEFAULTS.scorer_content_candidates
    """Items nearest the session's content profile (content model), else nearest the trigger item (sequence
    model item vectors) for cold users."""
    max_candidates: int = _DEFAULTS.scorer_max_candidates
    """Candidates ranked per request after the merge (the ranker's batch is requests x this)."""
    recent_items: int = _DEFAULTS.scorer_recent_items
    """How many of the session's newest items feed co-visitation."""
    history_items: int = _DEFAULTS.scorer_history_items
    """The user's newest items of earlier sessions before the session's in the sequence models' input."""
    exploration: Literal["off", "epsilon", "softmax"] = _DEFAULTS.scorer_exploration
    epsilon: float = _DEFAULTS.scorer_epsilon
    temperature: float = _DEFAULTS.scorer_temperature
    arms: tuple[Arm, ...] = DEFAULT_ARMS
    ab_salt: str = _DEFAULTS.scorer_ab_salt
    """Salt of the user -> arm hash: a new salt re-draws the arms' users (a fresh experiment)."""
    seq_model: str = _DEFAULTS.scorer_seq_model
    ranker_model: str = _DEFAULTS.scorer_ranker_model
    redis_timeout_s: float = _DEFAULTS.scorer_redis_timeout_s
    """Redis socket timeout: past it the batch is served degraded from the trending snapshot."""
    redis_retry_s: float = _DEFAULTS.scorer_redis_retry_s
    """After a Redis failure, how long batches go straight to the degraded path before trying again."""
    item_stats_ttl_s: float = _DEFAULTS.scorer_item_stats_ttl_s
    """How long item statistics, removals and co-visitation lists read from Redis are reused."""
    explain_messages: bool = _DEFAULTS.scorer_explain_messages
    """Explain every recommended item in the Kafka messages too (the HTTP API explains on ``?explain=true``)."""
    explain_top: int = _DEFAULTS.scorer_explain_top
    """Feature groups listed per explained item."""
    log_features: bool = _DEFAULTS.scorer_log_features
    """Log the ranker's inputs of the shown items in each recommendation (for the online trainer)."""
    graph_model: str = _DEFAULTS.scorer_graph_model
    """Registry name of the graph model."""
    graph_candidates: int = _DEFAULTS.scorer_graph_candidates
    """Candidates from the graph model (folded-in session vector, inner-product top-K); 0 = off."""
    click_memory: int = _DEFAULTS.scorer_click_memory
    """Recommendations remembered to attribute clicks to the candidate sources that proposed the item."""
    content_model: str = _DEFAULTS.scorer_content_model
    """Registry name of the content model (text + category + tags -> content vector)."""
    content_max_items: int = _DEFAULTS.scorer_content_max_items
    """Catalog items whose content vectors stay in memory."""
    content_profile_items: int = _DEFAULTS.scorer_content_profile_items
    """Newest session items in the session's content profile."""
    seed: int | None = None
    """Seed of the exploration sampler (tests); None = fresh entropy."""

    def __post_init__(self):
        if self.exploration not in ("off", "epsilon", "softmax"):
            raise ConfigError(f"scorer_exploration: {self.exploration!r}; use off, epsilon or softmax")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ConfigError(f"scorer_epsilon: {self.epsilon} is not in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"scorer_temperature: {self.temperature} must be > 0")
        if self.batch_max < 1 or self.top_n < 1:
            raise ConfigError("scorer_batch_max and scorer_top_n must be at least 1")
        if not 0 < len(self.ab_salt.encode()) <= 16:
            raise ConfigError(f"scorer_ab_salt: {self.ab_salt!r}; use 1 to 16 bytes")
        if self.explain_top < 1:
            raise ConfigError(f"scorer_explain_top: {self.explain_top}; list at least 1 feature group per item")

    @classmethod
    def from_settings(cls, settings, **overrides) -> "ScorerConfig":
        """``STREAMREC_SCORER_<FIELD>`` for each field (arms from ``scorer_ab_arms``), `overrides` over them."""
        values = settings.section("scorer", [f.name for f in fields(cls) if f.name != "arms"])
        values["arms"] = parse_arms(settings.scorer_ab_arms)
        return cls(**{**values, **overrides})
