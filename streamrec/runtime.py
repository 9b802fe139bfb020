"""Interpreter settings the long-running services share (the worker and the scorer).

Python's cyclic garbage collector runs a young-generation pass every 700
allocations and, every hundred or so of those, a full pass over every tracked
object. A service that allocates per event or request and keeps large caches
pays for that in its latency tail: in the scorer at 500 requests/s, full
passes of 70 to 107 ms (BENCHMARKS.md, "Latency at 500 requests/s"). Fewer,
larger young passes cut the number of full passes by the same factor; memory
is reclaimed by reference counting as before, only cycles wait longer.
"""

from __future__ import annotations

import gc


def tune_gc(gen0: int) -> None:
    """Collect the young generation every ``gen0`` allocations (0: leave Python's default)."""
    if gen0 > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0, gen1, gen2)
