"""Interaction history as columns: what every importer produces and every model consumes.

One row per (user, item) interaction; an ``impression`` event becomes one row
per shown item with its ``position``, so the ranker can learn which shown
items were clicked (a click carries the impression's ``rec_id``).

>>> inter = Interactions.from_rows([
...     {"user_id": "u1", "item_id": "a", "ts": 1000, "type": "view"},
...     {"user_id": "u1", "item_id": "b", "ts": 2000, "type": "click"},
...     {"user_id": "u2", "item_id": "a", "ts": 1500, "type": "view"}])
>>> inter.summary().users, inter.summary().items, len(inter)
(2, 2, 3)
>>> inter.sequences()["u1"]
['a', 'b']
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

# Event types that say the user wanted the item (the sequence model's targets).
POSITIVE_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
UNKNOWN_CATEGORY = ""


class DataError(ValueError):
    """Input that cannot be used; the message names the file, line and column, and the fix."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 column: str | None = None):
        where = ":".join(str(x) for x in (path, line) if x is not None)
        col = f" column {column!r}:" if column else ""
        super().__init__(f"{where}:{col} {message}" if where or col else message)
        self.path, self.line, self.column = path, line, column


@dataclass(frozen=True)
class Summary:
    """What was loaded, shown before training."""

    users: int
    items: int
    interactions: int
    start_ms: int
    end_ms: int

    def span(self) -> str:
        """The time span as two ISO dates."""
        def iso(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        return f"{iso(self.start_ms)} .. {iso(self.end_ms)}"


_COLUMNS = ("user", "item", "ts", "kind", "value", "session", "rec_id", "position")


@dataclass
class Interactions:
    """Columnar interactions sorted by time, plus the item -> category map."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    session: np.ndarray
    rec_id: np.ndarray
    position: np.ndarray
    categories: dict[str, str] = field(default_factory=dict)
    source: str = ""
    kafka_offsets: dict | None = None
    """Per-partition offset range when replayed from the events topic."""

    def __post_init__(self) -> None:
        order = np.lexsort((np.arange(len(self.ts)), self.ts))  # stable by time
        for name in _COLUMNS:
            setattr(self, name, np.asarray(getattr(self, name))[order])

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_rows(cls, rows: Iterable[dict], categories: dict[str, str] | None = None,
                  source: str = "") -> "Interactions":
        """Build from event-like dicts (``user_id``, ``item_id`` or ``items``, ``ts`` in ms, ``type``...)."""
        cols: dict[str, list] = {c: [] for c in _COLUMNS}
        for r in rows:
            shown = r.get("items")
            items = shown if shown else [r["item_id"]]
            for pos, item in enumerate(items):
                cols["user"].append(str(r["user_id"]))
                cols["item"].append(str(item))
                cols["ts"].append(int(r["ts"]))
                cols["kind"].append(r.get("type", "view"))
                v = r.get("value")
                cols["value"].append(np.nan if v is None else float(v))
                cols["session"].append(r.get("session_id") or "")
                cols["rec_id"].append(r.get("rec_id") or "")
                p = r.get("position")
                cols["position"].append(pos if shown else (-1 if p is None else int(p)))
        return cls(user=np.array(cols["user"], dtype=object), item=np.array(cols["item"], dtype=object),
                   ts=np.array(cols["ts"], dtype=np.int64), kind=np.array(cols["kind"], dtype=object),
                   value=np.array(cols["value"], dtype=np.float64),
                   session=np.array(cols["session"], dtype=object),
                   rec_id=np.array(cols["rec_id"], dtype=object),
                   position=np.array(cols["position"], dtype=np.int64),
                   categories=dict(categories or {}), source=source)

    def take(self, mask: np.ndarray) -> "Interactions":
        """The rows where ``mask`` is true (same catalog)."""
        return Interactions(**{c: getattr(self, c)[mask] for c in _COLUMNS}, categories=self.categories,
                            source=self.source, kafka_offsets=self.kafka_offsets)

    def positives(self) -> "Interactions":
        """Only interactions that express interest (not impressions or skips)."""
        return self.take(np.isin(self.kind, POSITIVE_TYPES))

    def summary(self) -> Summary:
        """Users, items, interactions and time span."""
        if not len(self):
            return Summary(0, 0, 0, 0, 0)
        return Summary(users=len(set(self.user)), items=len(set(self.item)), interactions=len(self),
                       start_ms=int(self.ts[0]), end_ms=int(self.ts[-1]))

    def window(self) -> dict:
        """The data window for meta.json."""
        s = self.summary()
        return {"start_ms": s.start_ms, "end_ms": s.end_ms, "rows": s.interactions, "source": self.source}

    def catalog(self) -> list[str]:
        """Every item id known from interactions or the item file, sorted (the retrieval corpus)."""
        return sorted(set(self.item) | set(self.categories))

    def category(self, item: str) -> str:
        """The item's category, ``""`` when unknown."""
        return self.categories.get(item, UNKNOWN_CATEGORY)

    def sequences(self) -> dict[str, list[str]]:
        """Each user's positive items in time order (duplicates kept; they are signal)."""
        pos = self.positives()
        out: dict[str, list[str]] = {}
        for u, i in zip(pos.user, pos.item):
            out.setdefault(u, []).append(i)
        return out


def read_catalog(path: str | Path) -> list[dict]:
    """Catalog records from a CSV (item_id, category, title, description, tags joined by ``|``) or JSONL file."""
    path = Path(path)
    if not path.exists():
        raise DataError("catalog file not found", str(path))
    if path.suffix in (".jsonl", ".json"):
        out = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"not JSON: {exc}", str(path), n) from None
        return out
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "item_id" not in (reader.fieldnames or []):
            raise DataError(f"missing column; the header has {reader.fieldnames}", str(path), 1, "item_id")
        return [{**r, "tags": [t for t in (r.get("tags") or "").split("|") if t]} for r in reader]
