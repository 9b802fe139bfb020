"""Shared small data and one trained pair of models for the trainer tests (trained once per session)."""

from __future__ import annotations

import pytest

from streamrec.trainer.data import Interactions
from streamrec.trainer.synth import SynthConfig, synthesize
from streamrec.trainer.train import TrainConfig, train_all

# Large enough for the planted signal to be learnt in seconds on 2 CPUs.
QUALITY_DATA = SynthConfig(users=300, items=200, seed=0)


def to_interactions(data) -> Interactions:
    return Interactions.from_rows(data.events, {r["item_id"]: r["category"] for r in data.items}, source="synth")


@pytest.fixture(scope="session")
def synth_data():
    return synthesize(QUALITY_DATA)


@pytest.fixture(scope="session")
def interactions(synth_data) -> Interactions:
    return to_interactions(synth_data)


@pytest.fixture(scope="session")
def trained(interactions):
    """Both models trained (15 epochs max, early stopping) and evaluated on the planted data."""
    return train_all(interactions, TrainConfig.tiny(epochs=15).with_seed(0))


@pytest.fixture(scope="session")
def small_interactions() -> Interactions:
    """A few thousand rows: for fast checks that do not need quality."""
    return to_interactions(synthesize(SynthConfig(users=40, items=30, sessions_per_user=3, seed=7)))
