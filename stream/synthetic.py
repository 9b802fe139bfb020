"""Realistic synthetic event streams for tests and benchmarks (numpy only).

Items follow a Zipf popularity; users browse in sessions of varied length
(geometric), mostly views with some clicks, carts and purchases; a share of
records are exact duplicates (same event id, as an app retrying would send)
and a share are malformed in assorted ways.

>>> stream = list(synthetic_stream(1000, seed=1))
>>> len(stream), sum(1 for r in stream if r.kind == "duplicate") > 0
(1000, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np

TYPES = np.array(["view", "click", "add_to_cart", "purchase"])
TYPE_P = np.array([0.80, 0.13, 0.05, 0.02])
MALFORMED = (
    b'{"event_id": "x", "type": "view",',                                      # broken JSON
    b'{"event_id": "x", "type": "teleport", "user_id": "u", "item_id": "i", "ts": 1767225600000}',
    b'{"event_id": "x", "type": "view", "user_id": "u", "ts": 1767225600000}',  # no item_id
    b'{"event_id": "x", "type": "view", "user_id": 7, "item_id": "i", "ts": 1767225600000}',
    b'{"event_id": "x", "type": "view", "user_id": "u", "item_id": "i", "ts": 1767225}',
    b'\xff\xfe{"event_id": "x"}',                                               # not UTF-8
    b"[]",
)


@dataclass(frozen=True)
class Record:
    """One record to publish: key, value bytes, and what it is meant to be."""

    key: str
    value: bytes
    kind: str  # valid | duplicate | malformed
    event: dict | None = None


def synthetic_stream(n: int, users: int = 5000, items: int = 20000, seed: int = 0,
                     duplicate_rate: float = 0.05, malformed_rate: float = 0.01,
                     start_ms: int | None = None, step_ms: float = 1.0, zipf_a: float = 1.2) -> Iterator[Record]:
    """`n` records in publishing order; event times advance `step_ms` per event from `start_ms`."""
    rng = np.random.default_rng(seed)
    start_ms = int(start_ms if start_ms is not None else 1_767_225_600_000)
    # Zipf ranks folded into the catalog; a random permutation so popular ids are not just "i0".
    perm = rng.permutation(items)
    sessions_left = np.zeros(users, dtype=np.int64)
    session_no = np.zeros(users, dtype=np.int64)
    recent: list[dict] = []
    for k in range(n):
        r = rng.random()
        if r < malformed_rate:
            yield Record(key=f"u{rng.integers(users)}", value=MALFORMED[k % len(MALFORMED)], kind="malformed")
            continue
        if r < malformed_rate + duplicate_rate and recent:
            ev = recent[int(rng.integers(len(recent)))]
            yield Record(key=ev["user_id"], value=json.dumps(ev).encode(), kind="duplicate", event=ev)
            continue
        u = int(rng.integers(users))
        if sessions_left[u] <= 0:
            sessions_left[u] = rng.geometric(1 / 8)
            session_no[u] += 1
        sessions_left[u] -= 1
        item = int(perm[min(rng.zipf(zipf_a) - 1, items - 1)])
        ev = {"event_id": f"e{seed}-{k}", "type": str(rng.choice(TYPES, p=TYPE_P)), "user_id": f"u{u}",
              "item_id": f"i{item}", "ts": start_ms + int(k * step_ms),
              "session_id": f"s{session_no[u]}"}
        recent.append(ev)
        if len(recent) > 1000:
            recent.pop(0)
        yield Record(key=ev["user_id"], value=json.dumps(ev).encode(), kind="valid", event=ev)
