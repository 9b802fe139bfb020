"""`streamrec learn` (the online trainer), `streamrec simulate` and `streamrec bench online`.

Registered by `streamrec.cli` through `register(subparsers)`; handlers get the
Settings object as ``args.settings`` and return an exit code. Heavy imports
(torch) happen inside the handlers, so `streamrec --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging

from streamrec.console import make_console
from dataclasses import fields
from pathlib import Path

console = make_console(stderr=True)


def _add_dataclass_args(p, cls, skip=(), only_when_given: bool = False) -> None:
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


def _from_args(cls, args, **extra):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}, **extra)


def cmd_learn(args) -> int:
    from streamrec.health import PortInUse
    from streamrec.trainer.learner import OnlineLearner
    from streamrec.trainer.online_config import LearnerConfig

    logging.basicConfig(level=args.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Settings (STREAMREC_LEARNER_*) first, flags given on the command line over them.
    from_settings = {f.name: getattr(args.settings, "learner_" + f.name) for f in fields(LearnerConfig)
                     if hasattr(args.settings, "learner_" + f.name)}
    try:
        cfg = LearnerConfig(**{**from_settings, **{f.name: getattr(args, f.name) for f in fields(LearnerConfig)
                                                   if hasattr(args, f.name)}})
    except ValueError as exc:
        console.print(f"[red]error:[/] --{exc}")
        return 2
    try:
        return OnlineLearner(args.settings, cfg).run()
    except PortInUse as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


def cmd_simulate(args) -> int:
    import signal

    from streamrec.simulator import SimConfig, Simulation

    logging.basicConfig(level=args.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = _from_args(SimConfig, args)
    sim = Simulation(args.settings, cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sim.stop())
    report = sim.run()
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
        console.print(f"report written to {args.out}")
    print(text)
    return 0


def register(sub) -> None:
    from streamrec.simulator import SimConfig

    p = sub.add_parser("learn", help="run the online trainer (join rewards, fine-tune, gate, publish, hot-swap)",
                       description="Consume `recommendations` and `events`, join interactions to the slate that "
                                   "caused them by rec_id inside an attribution window, fine-tune the ranker "
                                   "(propensity-weighted) and the sequence model (off-policy REINFORCE mixed "
                                   "with next-item loss), gate each candidate against the live model on a "
                                   "recent held-out window, and publish only candidates that are not worse. "
                                   "Health and metrics on STREAMREC_LEARNER_PORT.")
    from streamrec.trainer.online_config import LearnerConfig
    _add_dataclass_args(p, LearnerConfig, only_when_given=True)
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("simulate", help="simulated users acting through Kafka; reports the true reward per variant",
                       description="A seeded population with hidden drifting tastes publishes events through the "
                                   "SDK, reads the recommendation answering each, and clicks, adds to cart and "
                                   "buys by a hidden click model (position bias, fatigue). Publishes the catalog "
                                   "with new items over time. Prints the true reward per A/B variant as JSON.")
    _add_dataclass_args(p, SimConfig)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_simulate)


# The world `streamrec bench online` and `streamrec demo` simulate unless told otherwise: items that sell
# better or worse when shown by a hidden appeal no browsing log reveals, and about one slate in three clicked.
# (`SimConfig`'s own intercept clicks more than half of all slates: most slates are clicked whatever they
# hold, which leaves a learner little to show.) BENCHMARKS.md measures the online trainer in this world.
BENCH_WORLD = {"attraction_bias": -3.5, "appeal": 0.75}


def add_world_args(p) -> None:
    """The simulated world's flags, shared by `streamrec bench online` and `streamrec demo`; `world_of` reads
    them back as `SimConfig` fields."""
    from streamrec.simulator import SimConfig

    p.add_argument("--drift", type=float, default=SimConfig.drift,
                   help=f"std of a user's taste step per session (default {SimConfig.drift})")
    p.add_argument("--new-item-every-s", type=float, default=SimConfig.new_item_every_s,
                   help=f"a new item joins the catalog this often, 0: never (default {SimConfig.new_item_every_s})")
    p.add_argument("--appeal", type=float, default=BENCH_WORLD["appeal"],
                   help="std of each item's hidden click appeal, unseen in organic browsing "
                        f"(default {BENCH_WORLD['appeal']})")
    p.add_argument("--attraction-bias", type=float, default=BENCH_WORLD["attraction_bias"],
                   help="intercept of the hidden click logit: lower, fewer clicks per slate (default "
                        f"{BENCH_WORLD['attraction_bias']}: about a third of the slates clicked; "
                        f"{SimConfig.attraction_bias}: more than half)")
    p.add_argument("--retire-oldest", action="store_true",
                   help="catalog turnover: each new item retires the oldest one (tombstone; default off)")


def world_of(args) -> dict:
    """The `SimConfig` fields that `add_world_args`' flags set."""
    return {"drift": args.drift, "new_item_every_s": args.new_item_every_s, "retire_oldest": args.retire_oldest,
            "appeal": args.appeal, "attraction_bias": args.attraction_bias}


def cmd_bench_online(args) -> int:
    from streamrec.trainer.online_bench import cmd_bench_online as run

    return run(args)


def register_bench(bench) -> None:
    # Arguments only: torch loads when the benchmark runs, not on every `streamrec` start.
    from streamrec.simulator import SimConfig

    p = bench.add_parser("online", help="closed loop: simulated users vs popularity, frozen and online-learning "
                                        "arms (the scorer's A/B variants); true reward per arm and its share of "
                                        "the best slates the hidden model allows, JSON and PNG")
    # 480 s: the items' click counts keep growing for longer than 240 s, and BENCHMARKS.md's target
    # figures were measured at this length.
    p.add_argument("--seconds", type=float, default=480.0, help="length of the simulation (default 480)")
    p.add_argument("--warmup-s", type=float, default=120.0, help="left out of the summary (default 120)")
    p.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    p.add_argument("--rate", type=float, default=60.0, help="events/s the population publishes at most (default 60)")
    p.add_argument("--bots", type=int, default=0, help="extra users that click everything (poisoned stream)")
    p.add_argument("--seed", default="0",
                   help="seed of the simulated world (tastes, appeal, users, the initial models). Several, "
                        "comma-separated (0,1,2,3): one run per world, pooled like several salts (default 0)")
    p.add_argument("--salt", default="s2",
                   help="salt of the user -> arm hash; another salt puts other users in each arm. Several, "
                        "comma-separated (s1,s2,s3): one run each, then the arms pooled over the splits "
                        "(default s2; the scorer's own default, ab1, happens to favour the online arm)")
    p.add_argument("--exploration", choices=["off", "epsilon", "softmax"], default="off",
                   help="the scorer's exploration in every arm (default off); logged propensities feed the IPS terms")
    p.add_argument("--epsilon", type=float, default=0.1, help="with --exploration epsilon (default 0.1)")
    add_world_args(p)
    p.add_argument("--learner-args", default="",
                   help="extra `streamrec learn` flags for the learner, e.g. \"--lr 0.01\"; a single flag "
                        "needs '=': --learner-args=--dry-run (default none)")
    p.add_argument("--out", default=None, help="output folder (default <home>/bench)")
    p.set_defaults(func=cmd_bench_online)
