"""Subcommands of the serving package: `streamrec serve` and `streamrec bench serve`."""

from __future__ import annotations

import logging

from streamrec.console import make_console

console = make_console(stderr=True)


def cmd_serve(args) -> int:
    from streamrec.health import PortInUse
    from streamrec.serving.config import ConfigError, ScorerConfig
    from streamrec.serving.scorer import Scorer

    logging.basicConfig(level=args.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


def cmd_bench_serve(args) -> int:
    from streamrec.serving.bench import run

    return run(args)


def register_bench(bench) -> None:
    # Arguments only: the benchmark's imports (onnxruntime...) load when it runs, so every other
    # `streamrec` command, the worker's included, starts without them.
    p = bench.add_parser("serve", help="scorer throughput and event-to-recommendation latency "
                                       "(through real Kafka/Redis), and the scorer core alone")
    p.add_argument("--only", choices=["core", "kafka", "pull"], default=None,
                   help="run one part (default: all); pull: GET /v1/recommendations/{user_id} over HTTP")
    p.add_argument("--candidates", type=int, default=200, help="candidates ranked per request (default 200)")
    p.add_argument("--batch", type=int, default=256, help="requests per batch (default 256)")
    p.add_argument("--core-seconds", type=float, default=10.0, help="length of the core run (default 10)")
    p.add_argument("--requests", type=int, default=20_000, help="score requests for the throughput run")
    p.add_argument("--rate", type=int, default=500, help="offered requests/s for the latency run (default 500)")
    p.add_argument("--seconds", type=int, default=20, help="length of the latency run (default 20)")
    p.add_argument("--events", type=int, default=50_000, help="events applied to Redis first (default 50000)")
    p.add_argument("--swaps", type=int, default=5,
                   help="rounds of fresh versions of both models announced during a second latency run; "
                        "0: no swap run (default 5)")
    p.add_argument("--swap-seconds", type=int, default=30, help="length of the swap run (default 30)")
    p.add_argument("--pull-rate", type=int, default=100,
                   help="offered requests/s for the pull API run, length --seconds (default 100)")
    p.add_argument("--pull-connections", type=int, default=4,
                   help="keep-alive client connections of the pull API run (default 4)")
    p.add_argument("--with-worker", action="store_true",
                   help="also measure event -> recommendation with a real worker in front (same rate)")
    p.add_argument("--registry", default=None, help="registry with the models (default STREAMREC_REGISTRY_URI)")
    p.add_argument("--out", default=None, help="output folder (default <home>/bench)")
    p.set_defaults(func=cmd_bench_serve)
    from streamrec.serving import bench_gpu

    bench_gpu.register_bench(bench)
