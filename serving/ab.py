"""A/B arms: each user is hashed to one arm, stably across processes and restarts.

BLAKE2b of the user id (not Python's salted ``hash``), so every scorer
replica and every restart puts a user in the same arm.

>>> from streamrec.serving.config import parse_arms
>>> arms = parse_arms("control=50,new=50:ranker@v2")
>>> arm_of("user-1", arms).name == arm_of("user-1", arms).name
True
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

from streamrec.serving.config import Arm

_BUCKETS = 10_000


def bucket(user_id: str, salt: str = "ab1") -> int:
    """The user's bucket in ``[0, 10000)``."""
    d = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(d, "little") % _BUCKETS


def arm_of(user_id: str, arms: tuple[Arm, ...], salt: str = "ab1") -> Arm:
    """The arm of a user: arms take consecutive shares of the buckets by weight."""
    if len(arms) == 1:
        return arms[0]
    total = sum(a.weight for a in arms)
    edges = [w / total * _BUCKETS for w in accumulate(a.weight for a in arms)]
    return arms[min(bisect_right(edges, bucket(user_id, salt)), len(arms) - 1)]
