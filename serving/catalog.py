"""Item ids as dense integers: the scorer's hot path works on arrays of these, not on strings.

An item id becomes an integer the first time the scorer meets it (from a
model's item list, trending, co-visitation, content, a session) and stays
that integer until the catalog is reset. Models' item rows are mapped once
per model version (`ItemCatalog.of_model`), so a retrieval result is turned
into catalog ids by one numpy gather. Ids become strings again only for the
items that leave the scorer: the slate, the item statistics read from Redis.
A full catalog is replaced by an empty one between batches (`Engine`), so a
batch in flight keeps the catalog it started with.

>>> catalog = ItemCatalog()
>>> catalog.ids(["a", "b", "a"]).tolist(), catalog.names_of(np.array([1, 0]))
([0, 1, 0], ['b', 'a'])
"""

from __future__ import annotations

import threading
from itertools import repeat
from typing import Iterable, Sequence

import numpy as np


class ItemCatalog:
    """Interns item ids; safe for the scorer's concurrent batches (the Kafka loop and the HTTP API)."""

    def __init__(self, cap: int = 5_000_000):
        self.cap = cap
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self._models: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    @property
    def full(self) -> bool:
        return len(self.names) >= self.cap

    def ids(self, items: Iterable[str]) -> np.ndarray:
        """Catalog ids of ``items`` (int64), new ones interned. The lookups run in C; only new ids cost Python."""
        items = items if isinstance(items, (list, tuple)) else list(items)
        out = np.fromiter(map(self.index.get, items, repeat(-1)), dtype=np.int64, count=len(items))
        new = np.flatnonzero(out < 0)
        if len(new):
            with self._lock:
                index, names = self.index, self.names
                for j in new.tolist():
                    out[j] = index.setdefault(items[j], len(names))
                    if out[j] == len(names):
                        names.append(items[j])
        return out

    def names_of(self, ids: np.ndarray | Sequence[int]) -> list[str]:
        names = self.names
        return [names[j] for j in np.asarray(ids).tolist()]

    def of_model(self, model) -> np.ndarray:
        """Catalog id of each of a model's item rows (``model.item_ids``), computed once per version."""
        ids = self._models.get(model.name)
        if ids is None:
            ids = self.ids(model.item_ids)
            if len(self._models) >= 16:  # old versions: a live, previous and pinned few at most
                self._models.clear()
            self._models[model.name] = ids
        return ids
