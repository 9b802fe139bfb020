"""Subcommands of the serving package: `streamrec serve`."""

from __future__ import annotations


from streamrec.console import log_to_stderr, make_console

console = make_console(stderr=True)


def cmd_serve(args) -> int:
    from streamrec.health import PortInUse
    from streamrec.serving.config import ConfigError, ScorerConfig
    from streamrec.serving.scorer import Scorer

    log_to_stderr(args.settings.log_level)
    try:
        config = ScorerConfig.from_settings(args.settings)
        return Scorer(args.settings, config).run()
    except (PortInUse, ConfigError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the real-time scorer (score-requests -> ONNX ranking -> recommendations)",
                       description="Consume `score-requests`, read features from Redis, generate candidates "
                                   "(sequence model, co-visitation, trending, content), rank them with the "
                                   "DCN-V2 ONNX ranker, and produce one recommendation per request on "
                                   "`recommendations`. Follows `model-versions` and hot-swaps models. "
                                   "Health, readiness, metrics and GET /v1/recommendations/{user_id} on "
                                   "STREAMREC_SCORER_PORT; the device on STREAMREC_DEVICE.")
    p.set_defaults(func=cmd_serve)
