"""The `streamrec` command line: one entry point for every role.

Each package adds its own subcommands through a ``register(subparsers)``
function in its ``cli`` module (stream, trainer, serving); this file holds the
ones about the installation itself (config, the local stack, topics).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from rich.table import Table

from streamrec.console import make_console
from streamrec.settings import Settings, SettingsError, env_name, field_docs

console = make_console(stderr=True)
# Packages whose cli module registers subcommands; a package whose optional
# dependencies are missing (torch in the serving image) is skipped quietly.
SUBCOMMAND_MODULES = ("streamrec.stream.cli", "streamrec.serving.cli", "streamrec.trainer.cli",
                      "streamrec.online.cli", "streamrec.trainer.segments", "streamrec.harness.cli",
                      "streamrec.harness.bench.ope", "streamrec.harness.demo", "streamrec.harness.soak",
                      "streamrec.harness.faults")


def _settings(args) -> Settings:
    return args.settings


# --------------------------------------------------------------------------- #
def cmd_config(args) -> int:
    """Print the effective settings and where each comes from."""
    s = _settings(args)
    shown = s.redacted_env()  # passwords and tokens masked
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    defaults = field_docs()
    table = Table(title="streamrec settings")
    for col in ("variable", "value", "default"):
        table.add_column(col)
    for name, value in shown.items():
        table.add_row(name, repr(value), defaults[name])  # shown as the defaults are (ints, bools, strings)
    make_console().print(table)
    return 0


def cmd_up(args) -> int:
    from streamrec.deploy.localstack import LocalStack, StackError
    from streamrec.stream.topics import create_topics
    stack = LocalStack(_settings(args))
    clients = stack.replicated_settings() if args.replicated else stack.settings
    try:
        with console.status("starting the local stack (Kafka ~10 s on first start)..."):
            result = stack.up(with_prometheus=args.with_prometheus, timeout=args.timeout,
                              log=lambda m: console.print(f"[dim]{m}[/]"), replicated=args.replicated)
            if not args.no_topics:
                topics = create_topics(clients)
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    for name, what in result.items():
        svc = stack.services[name]
        console.print(f"[green]{name}[/] {what}: {svc.endpoint}  log {svc.log_file}")
    if not args.no_topics:
        created = [t for t, r in topics.items() if r == "created"]
        console.print(f"topics: {len(topics)} ready ({len(created)} created)")
    if args.replicated:
        console.print("the services and the SDK reach this topology with:")
        for name in ("kafka_bootstrap", "topic_replication", "redis_sentinels"):
            print(f"export {env_name(name)}={getattr(clients, name)}")
    return 0


def cmd_down(args) -> int:
    from streamrec.deploy.localstack import LocalStack
    for name, stopped in LocalStack(_settings(args)).down().items():
        console.print(f"{name}: {'stopped' if stopped else 'was not running'}")
    return 0


def cmd_status(args) -> int:
    from streamrec.deploy.localstack import LocalStack
    states = LocalStack(_settings(args)).status()
    if args.json:
        print(json.dumps([{**s.__dict__, "log": str(s.log)} for s in states], indent=2))
        return 0
    table = Table(title="local stack")
    for col in ("service", "state", "port", "pid", "log"):
        table.add_column(col)
    colour = {"running": "green", "stopped": "dim", "stale": "yellow", "foreign": "red", "starting": "yellow"}
    for s in states:
        table.add_row(s.name, f"[{colour.get(s.state, 'white')}]{s.state}[/]", str(s.port),
                      str(s.pid or "-"), str(s.log))
    make_console().print(table)
    return 0


def cmd_topics(args) -> int:
    from streamrec.stream.topics import create_topics, describe_topics
    s = _settings(args)
    if args.action == "create":
        for name, result in create_topics(s).items():
            console.print(f"{name}: {result}")
        return 0
    infos = describe_topics(s)
    if args.json:
        print(json.dumps([i.__dict__ for i in infos], indent=2))
        return 0
    table = Table(title=f"topics (prefix {s.topic_prefix!r})")
    for col in ("topic", "partitions", "replication", "configs"):
        table.add_column(col)
    for i in infos:
        table.add_row(i.name, str(i.partitions), str(i.replication),
                      ", ".join(f"{k}={v}" for k, v in sorted(i.configs.items())))
    make_console().print(table)
    return 0


def cmd_schema(args) -> int:
    from streamrec.stream.schemas import event_json_schema
    print(json.dumps(event_json_schema(), indent=2))
    return 0


def cmd_deploy(args) -> int:
    from streamrec.deploy.observability import dashboard_text, rules_text
    from streamrec.deploy.prometheus_config import compose_config_text
    render = {"prometheus-config": compose_config_text, "prometheus-rules": rules_text,
              "grafana-dashboard": dashboard_text}[args.what]
    print(render(), end="")
    return 0


# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Real-time streaming recommender. Settings come from STREAMREC_* variables "
                    "(see `streamrec config`).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("config", help="print the effective settings")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("up", help="start the local stack (Kafka, Redis, optionally Prometheus) and create topics")
    p.add_argument("--with-prometheus", action="store_true", help="also start Debian's prometheus")
    p.add_argument("--no-topics", action="store_true", help="do not create the topics")
    p.add_argument("--replicated", action="store_true",
                   help="three Kafka brokers (topics with 3 replicas, min.insync.replicas=2) and a Redis primary with "
                        "a replica and three Sentinels, instead of one broker and one Redis; prints the settings "
                        "that reach it")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each server (default 120)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the local stack cleanly")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="state, port, pid and log of each local server")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("topics", help="create or list the topics of this prefix")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--json", action="store_true", help="machine-readable output (list)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("schema", help="print the event JSON Schema (as shipped for non-Python producers)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("deploy", help="generate deployment files from the code")
    p.add_argument("what", choices=["prometheus-config", "prometheus-rules", "grafana-dashboard"],
                   help="prometheus-config: deploy/prometheus/prometheus.yml; prometheus-rules: "
                        "deploy/prometheus/rules/streamrec.yml; grafana-dashboard: "
                        "deploy/grafana/dashboards/streamrec.json")
    p.set_defaults(func=cmd_deploy)

    bench = sub.add_parser("bench", help="benchmarks against the real services; JSON and a PNG")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for module in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            if exc.name and exc.name.startswith("streamrec") and exc.name != module:
                raise
            continue  # optional dependency (torch, faust) missing in this install
        if hasattr(mod, "register"):  # some only add benchmarks (streamrec.harness.soak)
            mod.register(sub)
        if hasattr(mod, "register_bench"):
            mod.register_bench(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = Settings.from_env()
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/] {exc}")
        return 2
    from streamrec.security import SecurityError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SecurityError as exc:  # a refused login or certificate: the message names the setting to fix
        from rich.markup import escape

        console.print(f"[red]connection refused:[/] {escape(str(exc))}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
