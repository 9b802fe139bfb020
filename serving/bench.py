"""`streamrec bench serve` (being written)."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.set_defaults(func=lambda args: 1)
