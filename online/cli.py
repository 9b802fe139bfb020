"""`streamrec learn`: the online trainer.

Registered by `streamrec.cli` through `register(subparsers)`; handlers get the
Settings object as ``args.settings`` and return an exit code. Heavy imports
(torch) happen inside the handlers, so `streamrec --help` stays fast.
"""

from __future__ import annotations

from streamrec.arguments import add_dataclass_args, given_args
from streamrec.console import log_to_stderr, make_console

console = make_console(stderr=True)


def cmd_learn(args) -> int:
    from streamrec.health import PortInUse
    from streamrec.online.learner import OnlineLearner
    from streamrec.online.config import LearnerConfig

    log_to_stderr(args.settings.log_level)
    try:  # settings (STREAMREC_LEARNER_*) first, flags given on the command line over them
        cfg = LearnerConfig.from_settings(args.settings, **given_args(LearnerConfig, args))
    except ValueError as exc:
        console.print(f"[red]error:[/] --{exc}")
        return 2
    try:
        return OnlineLearner(args.settings, cfg).run()
    except PortInUse as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


def register(sub) -> None:
    p = sub.add_parser("learn", help="run the online trainer (join rewards, fine-tune, gate, publish, hot-swap)",
                       description="Consume `recommendations` and `events`, join interactions to the slate that "
                                   "caused them by rec_id inside an attribution window, fine-tune the ranker "
                                   "(propensity-weighted) and the sequence model (off-policy REINFORCE mixed "
                                   "with next-item loss), gate each candidate against the live model on a "
                                   "recent held-out window, and publish only candidates that are not worse. "
                                   "Health and metrics on STREAMREC_LEARNER_PORT.")
    from streamrec.online.config import LearnerConfig
    add_dataclass_args(p, LearnerConfig, only_when_given=True)
    p.set_defaults(func=cmd_learn)
