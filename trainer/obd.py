"""The Open Bandit Dataset sample (`streamrec data fetch obd`): its logs, and the Bernoulli Thompson
sampling (BTS) policy that logged half of them, replayed from the prior its authors published.

The dataset logs the same fashion campaigns of the ZOZOTOWN site under two policies, uniform random
and BTS, in ``<root>/<policy>/<campaign>/<campaign>.csv``. Each row is one shown item: its
``item_id``, its ``position`` (1, 2, 3: left to right), ``click`` and ``propensity_score``, the logging
policy's probability of showing that item at that position.

Source of the policy: Saito, Aihara, Matsutani, Narita, "Open Bandit Dataset and Pipeline: Towards
Realistic and Reproducible Off-Policy Evaluation" (NeurIPS 2021 Datasets and Benchmarks), and the Open
Bandit Pipeline (st-tech/zr-obp, ``obp/policy/conf/prior_bts.yaml``, the production Beta priors).

>>> dist = bts_action_dist(BTS_PRIOR["men"], n_sim=2_000)
>>> dist.shape, bool(np.allclose(dist.sum(axis=0), 1.0))  # one item per slot in every simulation
((34, 3), True)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from streamrec.trainer.datasets import DEFAULT_ROOT as DATA_ROOT

DEFAULT_ROOT = DATA_ROOT / "obd" / "obd"
"""Where `streamrec data fetch obd` puts the sample: the folder that holds ``random/`` and ``bts/``."""
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
SLOTS = 3
"""Items shown together (positions) on the site's recommendation panel."""
OBP_SEED = 12345
OBP_SIMULATIONS = 100_000
"""The Monte Carlo seed and size the dataset's authors use for BTS's action distribution (their README
and OPE benchmark; their obd example script uses 1,000,000)."""
_FETCH_HINT = "run `streamrec data fetch obd`, or pass --data with the folder that holds random/ and bts/"
_COLUMNS = ("item_id", "position", "click", "propensity_score")


class OBDError(ValueError):
    """The sample is missing or a file is not in the dataset's format; the message names the file and the fix."""


@dataclass(frozen=True)
class BetaPrior:
    """Per item, the Beta(alpha, beta) belief about its click rate that BTS samples from."""

    alpha: tuple[int, ...]
    beta: tuple[int, ...]


# The priors BTS ran with in production (counts of clicks and of non-clicks), per campaign.
BTS_PRIOR: dict[str, BetaPrior] = {
    "all": BetaPrior(
        alpha=(47, 8, 62, 142, 3, 14, 7, 857, 12, 15, 6, 100, 48, 23, 71, 61, 13, 16, 518, 30, 7, 4, 23, 8, 10, 11,
               11, 18, 121, 11, 11, 10, 14, 9, 204, 58, 3, 19, 42, 1013, 2, 328, 15, 31, 14, 138, 45, 55, 23, 38,
               10, 401, 52, 6, 3, 6, 5, 32, 35, 133, 52, 820, 43, 195, 8, 42, 40, 4, 32, 30, 9, 22, 6, 23, 5, 54,
               8, 22, 65, 246),
        beta=(12198, 3566, 15993, 35522, 2367, 4609, 3171, 181745, 4372, 4951, 3100, 24665, 13210, 7061, 18061,
              17449, 5644, 6787, 111326, 8776, 3334, 2271, 7389, 2659, 3665, 4724, 3561, 5085, 27407, 4601, 4756,
              4120, 4736, 3788, 45292, 14719, 2189, 5589, 11995, 222255, 2308, 70034, 4801, 8274, 5421, 31912,
              12213, 13576, 6230, 10382, 4141, 85731, 12811, 2707, 2250, 2668, 2886, 9581, 9465, 28336, 12062,
              162793, 12107, 41240, 3162, 11604, 10818, 2923, 8897, 8654, 4000, 6580, 3174, 6766, 2602, 14506,
              3968, 7523, 16532, 51964)),
    "men": BetaPrior(
        alpha=(47, 8, 62, 142, 3, 6, 100, 48, 23, 71, 61, 13, 16, 518, 30, 7, 4, 23, 8, 10, 11, 11, 18, 121, 11, 4,
               32, 30, 9, 22, 6, 23, 5, 54),
        beta=(12198, 3566, 15993, 35522, 2367, 3100, 24665, 13210, 7061, 18061, 17449, 5644, 6787, 111326, 8776,
              3334, 2271, 7389, 2659, 3665, 4724, 3561, 5085, 27407, 4601, 2923, 8897, 8654, 4000, 6580, 3174,
              6766, 2602, 14506)),
    "women": BetaPrior(
        alpha=(12, 7, 984, 13, 15, 15, 11, 14, 9, 200, 72, 3, 14, 49, 1278, 3, 325, 14, 27, 14, 169, 48, 47, 18,
               40, 12, 447, 46, 5, 3, 5, 7, 35, 34, 99, 30, 880, 51, 182, 6, 45, 39, 10, 24, 72, 229),
        beta=(3612, 3173, 204484, 4517, 4765, 5331, 4131, 4728, 4028, 44280, 17918, 2309, 4339, 12922, 270771,
              2480, 68475, 5129, 7367, 5819, 38026, 13047, 11604, 5394, 10912, 4439, 94485, 10700, 2679, 2319,
              2578, 3288, 9566, 9775, 20120, 7317, 172026, 13673, 37329, 3365, 10911, 10734, 4278, 7574, 16826,
              47462)),
}


@dataclass(frozen=True)
class Logs:
    """One policy's logs of one campaign, one entry per shown item."""

    item: np.ndarray
    position: np.ndarray
    """0-based slot (the file's 1, 2, 3 minus one)."""
    click: np.ndarray
    propensity: np.ndarray

    def __len__(self) -> int:
        return len(self.click)

    def take(self, rows: np.ndarray) -> Logs:
        """The logs restricted to (or resampled at) ``rows``."""
        return Logs(self.item[rows], self.position[rows], self.click[rows], self.propensity[rows])

    @property
    def ctr(self) -> float:
        """Mean click: the logging policy's own (on-policy) click-through rate."""
        return float(self.click.mean()) if len(self) else 0.0


def log_path(root: Path, policy: str, campaign: str) -> Path:
    return Path(root) / policy / campaign / f"{campaign}.csv"


def present_campaigns(root: Path) -> list[str]:
    """Campaigns with logs under ``root``, each with both policies' files; raises `OBDError` when there is none,
    or when a campaign has one policy's file without the other's."""
    found = []
    for campaign in CAMPAIGNS:
        paths = [log_path(root, policy, campaign) for policy in POLICIES]
        missing = [p for p in paths if not p.is_file()]
        if len(missing) == len(paths):
            continue
        if missing:
            raise OBDError(f"{missing[0]}: not found (its campaign {campaign!r} is half there); {_FETCH_HINT}")
        found.append(campaign)
    if not found:
        raise OBDError(f"{log_path(root, 'random', 'men')}: not found, no Open Bandit Dataset logs under {root}; "
                       f"{_FETCH_HINT}")
    return found


def read_logs(path: Path) -> Logs:
    """Read one ``<campaign>.csv`` of the dataset (other columns, such as user features, are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise OBDError(f"{path}: not found; {_FETCH_HINT}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        absent = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise OBDError(f"{path}: no column {', '.join(absent)}; is it an Open Bandit Dataset log? {_FETCH_HINT}")
        try:
            rows = np.array([[float(r[c]) for c in _COLUMNS] for r in reader], dtype=np.float64).reshape(-1, 4)
        except ValueError as exc:
            raise OBDError(f"{path}: {exc}; the file is damaged, {_FETCH_HINT}") from None
    logs = Logs(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64) - 1, rows[:, 2], rows[:, 3])
    _check(path, logs)
    return logs


def _check(path: Path, logs: Logs) -> None:
    """Values outside the dataset's ranges would silently skew an estimate: refuse them by name."""
    if not len(logs):
        raise OBDError(f"{path}: no rows; {_FETCH_HINT}")
    if logs.position.min() < 0 or logs.position.max() >= SLOTS:
        raise OBDError(f"{path}: position must be 1..{SLOTS}, found "
                       f"{logs.position.min() + 1}..{logs.position.max() + 1}")
    if logs.item.min() < 0:
        raise OBDError(f"{path}: item_id must be >= 0, found {logs.item.min()}")
    if not ((logs.propensity > 0) & (logs.propensity <= 1)).all():
        raise OBDError(f"{path}: propensity_score must be in (0, 1], found "
                       f"{logs.propensity.min()}..{logs.propensity.max()}")


def bts_action_dist(prior: BetaPrior, n_sim: int = OBP_SIMULATIONS, seed: int = OBP_SEED,
                    progress: Callable[[int], None] | None = None, chunk: int = 10_000) -> np.ndarray:
    """``[items, SLOTS]``: the probability that BTS shows each item in each slot, by Monte Carlo.

    Each simulation draws one click rate per item from its Beta prior and shows the ``SLOTS`` highest,
    best first, as the production policy did. ``progress`` is called with the simulations done per chunk.
    """
    alpha, beta = np.asarray(prior.alpha, np.float64), np.asarray(prior.beta, np.float64)
    items = len(alpha)
    # numpy's legacy generator, as the dataset's authors use: for the same seed, the same draws in the same order
    # (drawing a chunk at once consumes the stream as one simulation after another), so the same distribution.
    rng = np.random.RandomState(seed)
    counts = np.zeros(items * SLOTS)
    for start in range(0, n_sim, chunk):
        size = min(chunk, n_sim - start)
        draws = rng.beta(np.broadcast_to(alpha, (size, items)), np.broadcast_to(beta, (size, items)))
        shown = np.argsort(draws, axis=1)[:, ::-1][:, :SLOTS]
        counts += np.bincount((shown * SLOTS + np.arange(SLOTS)).ravel(), minlength=items * SLOTS)
        if progress:
            progress(size)
    return counts.reshape(items, SLOTS) / n_sim
