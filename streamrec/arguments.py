"""Command-line flags from a config dataclass: one flag per field, read back into an instance.

Used by every subcommand whose options are a config dataclass (`streamrec learn`, `streamrec simulate`).
"""

from __future__ import annotations

import argparse
from dataclasses import fields


def add_dataclass_args(p, cls, skip=(), only_when_given: bool = False) -> None:
    """A flag per field; with `only_when_given` a flag not on the command line leaves no attribute,
    so settings (STREAMREC_LEARNER_*) can supply the value."""
    for f in fields(cls):
        if f.name in skip or f.type not in ("int", "float", "str", "bool"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = argparse.SUPPRESS if only_when_given else f.default
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=default, help=f"(default {f.default})")
        else:
            p.add_argument(flag, type={"int": int, "float": float, "str": str}[f.type], default=default,
                           metavar=f.name.upper(), help=f"(default {f.default})")


def given_args(cls, args) -> dict:
    """The values of `cls`'s fields that are on `args` (with `only_when_given`: those on the command line)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def from_args(cls, args, **extra):
    """An instance of `cls` from the flags `add_dataclass_args` added (those given, with `only_when_given`)."""
    return cls(**given_args(cls, args), **extra)
