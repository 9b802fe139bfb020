"""Stable id hashing shared by the trainer and the torch-free scorer.

Ids (users, items, categories) are strings of any kind; models see them as
rows of fixed-size embedding tables, so an id never seen in training still has
rows and is scored without re-exporting the model. Each id gets two
independent bucket indices (the two halves of one BLAKE2b digest); a model
sums the two rows, so two ids share a representation only when *both* hashes
collide (probability about 1/buckets**2 per pair).

Row 0 of every table is reserved for padding (the empty id ``""``), so
hashed indices are always in ``1 .. buckets-1``.

Python's ``hash()`` is salted per process; BLAKE2b is the same everywhere,
which is what lets a model trained in one process be served by another.

>>> h = IdHasher(1000)
>>> h(["item-1", "item-1", ""]).tolist()
[[358, 133], [358, 133], [0, 0]]
>>> h(["item-1"]).dtype
dtype('int64')
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Iterable

import numpy as np

PAD = ""
"""The padding id: always hashed to row 0 of every table."""

# One personalisation string per use keeps item and category hashes
# independent even when an item and a category share a name.
_VERSION = b"sr1"


# Bounded so a scorer with a large catalog stays within its memory budget (~40 MB).
@lru_cache(maxsize=1 << 18)
def _digest(key: str, namespace: str) -> tuple[int, int]:
    d = hashlib.blake2b(key.encode("utf-8"), digest_size=16,
                        person=(_VERSION + namespace.encode("utf-8"))[:16]).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


class IdHasher:
    """Maps string ids to two bucket indices in ``[1, buckets)``; ``""`` maps to ``[0, 0]``.

    ``namespace`` separates kinds of ids (``"item"``, ``"user"``, ``"cat"``) so
    their hashes are independent. The mapping depends only on the id, the
    namespace and ``buckets``: it is stable across processes and machines.
    """

    def __init__(self, buckets: int, namespace: str = "item"):
        if buckets < 2:
            raise ValueError(f"buckets must be at least 2 (row 0 is padding), got {buckets}")
        self.buckets = int(buckets)
        self.namespace = namespace

    def one(self, key: str) -> tuple[int, int]:
        """The two bucket indices of one id."""
        if key == PAD:
            return 0, 0
        a, b = _digest(key, self.namespace)
        m = self.buckets - 1
        return 1 + a % m, 1 + b % m

    def __call__(self, ids: Iterable[str]) -> np.ndarray:
        """Hash a batch of ids into an ``int64`` array of shape ``(n, 2)``."""
        ids = list(ids)
        out = np.zeros((len(ids), 2), dtype=np.int64)
        for i, key in enumerate(ids):
            out[i] = self.one(str(key))
        return out

    def first(self, ids: Iterable[str]) -> np.ndarray:
        """Only the first bucket index of each id, shape ``(n,)`` (for small tables like categories)."""
        return self(ids)[:, 0].copy()

    def describe(self) -> dict:
        """How to reproduce this hasher elsewhere (written into model meta.json)."""
        return {"scheme": "blake2b-128/2x64", "version": _VERSION.decode(),
                "namespace": self.namespace, "buckets": self.buckets}


def encode_sequences(seqs: list[list[str]], categories: dict[str, str], items: IdHasher, cats: IdHasher,
                     length: int) -> tuple[np.ndarray, np.ndarray]:
    """The sequence model's inputs: hashed items ``[n, length, 2]`` and categories ``[n, length]``.

    Left-padded with 0 and keeping the newest ``length`` items, as the
    trainer feeds them and as ``encoder.onnx`` expects them.

    >>> it, ct = encode_sequences([["a", "b"], []], {"a": "x"}, IdHasher(100), IdHasher(10, "cat"), 3)
    >>> it.shape, ct.shape, it[0, 0].tolist(), int(it[1].max()), int(ct[0, 2])
    ((2, 3, 2), (2, 3), [0, 0], 0, 0)
    """
    out_items = np.zeros((len(seqs), length, 2), dtype=np.int64)
    out_cats = np.zeros((len(seqs), length), dtype=np.int64)
    for r, seq in enumerate(seqs):
        seq = seq[-length:]
        if seq:
            out_items[r, length - len(seq):] = items(seq)
            out_cats[r, length - len(seq):] = cats.first([categories.get(i, "") for i in seq])
    return out_items, out_cats


def shared_share(hasher: IdHasher, ids: list[str]) -> float:
    """Share of the distinct ``ids`` with no row of their own: both of their rows are also rows of another id of ``ids``.

    An id with one row of its own can take any vector whatever its other row carries; one without
    moves whenever the ids it shares with are trained.
    """
    ids = list(dict.fromkeys(ids))
    rows = hasher(ids)
    owners = np.bincount(rows.ravel(), minlength=hasher.buckets)
    # An id whose two indices coincide owns that row alone (it counts it twice).
    alone = (owners[rows] == 1) | ((rows[:, :1] == rows[:, 1:]) & (owners[rows] == 2))
    return float((~alone).all(1).mean()) if len(ids) else 0.0


def buckets_for(ids: list[str], namespace: str = "item", max_shared: float = 0.005,
                cap: int = 1 << 22) -> int:
    """Rows for a table over ``ids``: doubling from 4 per id until at most ``max_shared`` of them lack a
    row of their own (`shared_share`), never more than ``cap`` (a 64-float table of ``cap`` rows is 1 GiB).

    >>> ids = [f"item-{i}" for i in range(1000)]
    >>> b = buckets_for(ids)
    >>> b, shared_share(IdHasher(b), ids) <= 0.005
    (32000, True)
    """
    buckets = max(2, 4 * len(set(ids)))
    while buckets < cap and shared_share(IdHasher(buckets, namespace), ids) > max_shared:
        buckets *= 2
    return min(buckets, cap)
