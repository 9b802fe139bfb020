"""The harness's subcommands: `streamrec simulate` and the benchmarks whose modules are heavy to import
(`bench features`, `serve`, `gpu`, `train`, `explain`, `online`, `scale`, `swap-stall`).

Arguments only: each benchmark's imports (onnxruntime, torch, faust) load when it runs, so every other
`streamrec` command starts without them. The lighter harness modules (`demo`, `soak`, `faults`, `bench.ope`)
register their own subcommands.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamrec.arguments import add_dataclass_args, from_args
from streamrec.console import log_to_stderr, make_console
from streamrec.harness.simulator import add_world_args

console = make_console(stderr=True)


def cmd_simulate(args) -> int:
    import signal

    from streamrec.harness.simulator import SimConfig, Simulation

    log_to_stderr(args.settings.log_level)
    cfg = from_args(SimConfig, args)
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
    from streamrec.harness.simulator import SimConfig

    p = sub.add_parser("simulate", help="simulated users acting through Kafka; reports the true reward per variant",
                       description="A seeded population with hidden drifting tastes publishes events through the "
                                   "SDK, reads the recommendation answering each, and clicks, adds to cart and "
                                   "buys by a hidden click model (position bias, fatigue). Publishes the catalog "
                                   "with new items over time. Prints the true reward per A/B variant as JSON.")
    add_dataclass_args(p, SimConfig)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_simulate)


def cmd_bench_serve(args) -> int:
    from streamrec.harness.bench.serve import run

    return run(args)


def _register_bench_serve(bench) -> None:
    # Arguments only: the benchmark's imports (onnxruntime...) load when it runs, so every other
    # `streamrec` command, the worker's included, starts without them.
    p = bench.add_parser("serve", help="scorer throughput and event-to-recommendation latency "
                                       "(through real Kafka/Redis), and the scorer core alone")
    p.add_argument("--only", choices=["core", "kafka", "pull"], default=None,
                   help="run one part (default: all); pull: GET /v1/recommendations/{user_id} over HTTP")
    p.add_argument("--candidates", type=int, default=200, help="candidates ranked per request (default 200)")
    p.add_argument("--batch", type=int, default=256, help="requests per batch (default 256)")
    p.add_argument("--core-seconds", type=float, default=10.0, help="length of the core run (default 10)")
    p.add_argument("--core-candidates", type=int, nargs="+", metavar="N",
                   help="core: run at each of these numbers of candidates (default: --candidates)")
    p.add_argument("--baseline", metavar="REF",
                   help="core: also run commit REF's scorer core (from git archive) on the same models, "
                        "alternated with this code's, and print the ratio")
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


def cmd_bench_online(args) -> int:
    from streamrec.harness.bench.online import cmd_bench_online as run

    return run(args)


def _register_bench_online(bench) -> None:
    # Arguments only: torch loads when the benchmark runs, not on every `streamrec` start.
    from streamrec.harness.simulator import SimConfig

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


def cmd_bench_scale(args) -> int:
    from streamrec.harness.bench.scale import run

    return run(args)


def _register_bench_scale(bench) -> None:
    # Arguments only: numpy and the feature store load when the benchmark runs.
    p = bench.add_parser(
        "scale", help="Redis memory of N users' state, built through the worker's feature-store batch path",
        description="Builds the Redis state of N users (about 20 events over 3 sessions each, on a catalog of "
                    "--items items) through the worker's own batch path: records decoded as the worker decodes "
                    "them and applied by RedisFeatureStore.apply in the worker's batches, with the default "
                    "TTLs and caps. Kafka is not needed: the events go straight into the store's batch path. "
                    "Reports INFO memory used_memory before and after (bytes and keys per user), MEMORY USAGE "
                    "sampled per key family, the build's events/s, and the figure for 1,000,000 users "
                    "(extrapolated linearly from a smaller run). used_memory is server-wide: use a Redis "
                    "nothing else writes to (STREAMREC_REDIS_URL). Writes <out>/bench-scale.json.")
    p.add_argument("--users", type=int, default=1_000_000, help="users (default 1000000)")
    p.add_argument("--items", type=int, default=100_000, help="catalog items (default 100000)")
    p.add_argument("--events-per-user", type=float, default=20.0, help="mean events per user (default 20)")
    p.add_argument("--sessions", type=int, default=3, help="sessions per user (default 3)")
    p.add_argument("--categories", type=int, default=500, help="item categories (default 500)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of item popularity (default 1.0)")
    p.add_argument("--cohort", type=int, default=50_000,
                   help="users generated together, their events in event-time order (default 50000)")
    p.add_argument("--batch", type=int, default=0,
                   help="events per apply call (default: the worker's, STREAMREC_WORKER_BATCH_MAX)")
    p.add_argument("--sample", type=int, default=1000, help="keys per family measured with MEMORY USAGE "
                                                            "(default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload (default 0)")
    p.add_argument("--no-catalog", action="store_true",
                   help="write no catalog metadata first (then the users' category affinities stay empty)")
    p.add_argument("--keep", action="store_true", help="leave the keys in Redis (default: deleted at the end)")
    p.add_argument("--out", default=None, help="output folder (default <home>/bench)")
    p.set_defaults(func=cmd_bench_scale)


def register_bench(bench) -> None:
    for register in BENCHES.values():
        try:
            register(bench)
        except ImportError as exc:  # an optional dependency (torch, faust) missing in this install
            if exc.name and exc.name.startswith("streamrec"):
                raise


def _register_bench_features(bench) -> None:
    from streamrec.harness.bench.features import add_arguments

    add_arguments(bench.add_parser("features", help="worker throughput and event-to-feature latency through real "
                                                    "Kafka/Redis"))


def _register_bench_gpu(bench) -> None:
    from streamrec.harness.bench import gpu

    gpu.register_bench(bench)


def _register_bench_train(bench) -> None:
    from streamrec.harness.bench import train  # needs the trainer extra (torch)

    train.register(bench)
    train.register_explain(bench)


def _register_bench_swap_stall(bench) -> None:
    from streamrec.harness.bench import swap  # arguments only: its imports load when it runs

    swap.register_bench(bench)


BENCHES = {"features": _register_bench_features, "serve": _register_bench_serve, "gpu": _register_bench_gpu,
           "train": _register_bench_train, "online": _register_bench_online, "scale": _register_bench_scale,
           "swap-stall": _register_bench_swap_stall}
"""Each benchmark's arguments, in the order `streamrec bench --help` lists them."""
