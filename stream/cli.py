"""Subcommands of the stream package: worker, forget, dlq."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from streamrec.console import log_to_stderr, make_console
from streamrec.settings import Settings

console = make_console(stderr=True)


ENGINES = ("faust", "confluent")


def run_processes(settings: Settings, processes: int, engine: str = "faust") -> int:
    """Run N worker processes in one consumer group, each with its own HTTP port."""
    if processes <= 1:
        if engine == "confluent":
            from streamrec.stream.confluent_worker import ConfluentWorker

            return ConfluentWorker(settings).run()
        from streamrec.stream.worker import StreamWorker

        return StreamWorker(settings).run()
    children = []
    for i in range(processes):
        env = {**os.environ, **settings.as_env(), "STREAMREC_WORKER_PORT": str(settings.worker_port + i)}
        children.append(subprocess.Popen([sys.executable, "-m", "streamrec.cli", "worker", "--engine", engine],
                                         env=env))

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)


def cmd_worker(args) -> int:
    from streamrec.health import PortInUse

    log_to_stderr(args.settings.log_level)
    try:
        return run_processes(args.settings, args.processes, args.engine)
    except PortInUse as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2


def cmd_forget(args) -> int:
    from streamrec.stream.feature_store import RedisFeatureStore

    store = RedisFeatureStore(args.settings)
    deleted = store.forget(args.user_id, int(time.time() * 1000))
    console.print(f"forgot user {args.user_id!r}: {deleted} key(s) deleted; their older events will be dropped")
    return 0


def cmd_dlq(args) -> int:
    """Print the newest dead letters with their reasons."""
    from confluent_kafka import Consumer, TopicPartition

    from streamrec.stream import topics

    s = args.settings
    topic = s.topic(topics.EVENTS_DLQ)
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "streamrec-dlq-reader",
                         "enable.auto.commit": False, **topics.kafka_security(s)})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    assignment = []
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        assignment.append(TopicPartition(topic, p, max(low, high - args.last)))
    consumer.assign(assignment)
    shown = 0
    while msgs := consumer.consume(1000, timeout=2):
        for m in msgs:
            if m.error():
                continue
            headers = {k: v.decode(errors="replace") for k, v in (m.headers() or [])}
            print(json.dumps({"reason": headers.get(topics.DLQ_REASON), "field": headers.get(topics.DLQ_FIELD),
                              "detail": headers.get(topics.DLQ_DETAIL),
                              "source": f"{headers.get(topics.DLQ_TOPIC)}/{headers.get(topics.DLQ_PARTITION)}"
                                        f"@{headers.get(topics.DLQ_OFFSET)}",
                              "value": (m.value() or b"")[:200].decode(errors="replace")}))
            shown += 1
    consumer.close()
    console.print(f"{shown} dead letter(s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("worker", help="run the stream worker (events -> Redis features -> score requests)",
                       description="Consume `events` and `catalog` with faust, apply features to Redis "
                                   "exactly once, announce each applied event on `score-requests`, "
                                   "dead-letter bad ones. Health/metrics on STREAMREC_WORKER_PORT.")
    p.add_argument("--processes", type=int, default=1,
                   help="worker processes in one consumer group (ports WORKER_PORT, +1, ...); default 1")
    p.add_argument("--engine", choices=ENGINES, default="faust",
                   help="consuming engine: faust-streaming (default) or a plain confluent-kafka consumer")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("forget", help="delete every feature of a user and drop their older events",
                       description="Privacy: deletes all of USER_ID's keys (user, sessions, markers), "
                                   "records the request so the worker drops the user's older late events, "
                                   "and appends an audit entry holding only a hash of the id.")
    p.add_argument("user_id")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("dlq", help="print the newest dead letters with their reasons")
    p.add_argument("--last", type=int, default=20, help="records per partition (default 20)")
    p.set_defaults(func=cmd_dlq)
