"""Configuration of `streamrec learn`: one dataclass with documented defaults.

Kept apart from the service so that registering the CLI flags imports neither
torch nor the learner's Prometheus metrics (they would show up on every other
service's /metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from streamrec.online.joiner import JoinConfig
from streamrec.settings import Settings


# Defaults live in one place, the settings object (STREAMREC_*); these follow it.
_DEFAULTS = Settings()


@dataclass(frozen=True)
class LearnerConfig:
    """Knobs of `streamrec learn`: ``STREAMREC_LEARNER_<FIELD>`` where the settings have one, and a flag of
    the same name for each (see `streamrec.serving.config` for the pattern)."""

    window_ms: int = _DEFAULTS.learner_window_ms
    """Attribution window: interactions later than this after their recommendation are dropped."""
    reward_click: float = _DEFAULTS.learner_reward_click
    reward_add_to_cart: float = _DEFAULTS.learner_reward_add_to_cart
    reward_purchase: float = _DEFAULTS.learner_reward_purchase
    reward_skip: float = _DEFAULTS.learner_reward_skip
    gate_every_samples: int = _DEFAULTS.learner_gate_every_samples
    """Gate (and maybe publish) after this many new shown items..."""
    gate_every_s: float = _DEFAULTS.learner_gate_every_s
    """...or this many seconds, whichever comes first."""
    holdout_every: int = 5
    """One slate in this many (by rec_id hash) is held out for the gate."""
    holdout_slates: int = 1000
    buffer_slates: int = 8000
    """Recent slates trained on (replays), and behind the fit of how much the attraction offsets count."""
    attraction_half_life_s: float = 3600.0
    """The items' attraction is estimated from every training slate they were shown in, each counting
    half as much per this many seconds of event time (0: never fades)."""
    max_closed_slates: int = 200_000
    """Closed rec_ids the joiner remembers to recognise late interactions (its memory bound)."""
    min_gate_samples: int = 200
    auc_tolerance: float = 0.01
    reward_tolerance: float = 0.02
    next_item_tolerance: float = 0.01
    """Relative rise of the sequence model's held-out next-item loss a candidate may show."""
    lr: float = _DEFAULTS.learner_lr
    seq_lr: float = _DEFAULTS.learner_seq_lr
    embedding_lr: float = _DEFAULTS.learner_embedding_lr
    rl_mix: float = _DEFAULTS.learner_rl_mix
    weight_cap: float = _DEFAULTS.learner_weight_cap
    topk: int = 10
    batch: int = 64
    epochs_per_round: int = 2
    """Passes over the fresh slates at each training round."""
    replay_epochs: int = 2
    """After a rejection the candidate restarts from the live model and replays recent training slates this
    often..."""
    replay_slates: int = 2000
    """...the newest this many (0: none), so that a rejection costs seconds, not a pass over the buffer."""
    impressions: str = _DEFAULTS.learner_impressions
    """auto, required or ignored: which slates count as shown (see `Settings.learner_impressions`)."""
    bot_slate_share: float = 0.5
    """A slate with rewards on more than this share of its items (3 items or more) is treated as a bot's."""
    bot_min_slates: int = 5
    checkpoint_dir: str = _DEFAULTS.learner_checkpoint_dir
    checkpoint_every_s: float = 5.0
    start: str = "earliest"
    """Where to start reading when there is no checkpoint: earliest or latest."""
    dry_run: bool = _DEFAULTS.learner_dry_run
    """Gate but never publish."""
    seq_model: str = "sasrec"
    ranker_model: str = "ranker"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> "LearnerConfig":
        """``STREAMREC_LEARNER_<FIELD>`` for each field that has one, `overrides` (the flags given) over them."""
        return cls(**{**settings.section("learner", [f.name for f in fields(cls)]), **overrides})

    def __post_init__(self):
        if self.impressions not in ("auto", "required", "ignored"):
            raise ValueError(f"impressions: {self.impressions!r}; use auto, required or ignored")

    def join(self) -> JoinConfig:
        return JoinConfig(window_ms=self.window_ms, click=self.reward_click, add_to_cart=self.reward_add_to_cart,
                          purchase=self.reward_purchase, skip=self.reward_skip, max_closed=self.max_closed_slates)

    def train(self):
        from streamrec.online.models import TrainConfig

        return TrainConfig(lr=self.lr, seq_lr=self.seq_lr, embedding_lr=self.embedding_lr, rl_mix=self.rl_mix, weight_cap=self.weight_cap,
                           topk=self.topk, batch=self.batch)

    def gate(self):
        from streamrec.online.gate import GateConfig

        return GateConfig(min_samples=self.min_gate_samples, auc_tolerance=self.auc_tolerance,
                          reward_tolerance=self.reward_tolerance, next_item_tolerance=self.next_item_tolerance,
                          weight_cap=self.weight_cap)
