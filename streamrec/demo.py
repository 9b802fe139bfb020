"""`streamrec demo`: the product end to end on this machine, shown live.

Starts the local stack (if needed), trains initial models on synthetic
history, starts the worker and the scorer as child processes, runs a
population of simulated shoppers that publish events through the SDK and read
the recommendation answering each, and shows what happens: events/s, features
applied, dead letters, latency from event to features and to recommendation,
the models serving, a shopper's live session and the last recommendation with
its reasons. Stops everything cleanly at the end (or on Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Consumer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from streamrec.settings import Settings
from streamrec.stream import topics

console = Console()


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen | None = None
    log: str = ""


@dataclass
class LiveStats:
    sent: int = 0
    bad_sent: int = 0
    started: float = field(default_factory=time.monotonic)
    latencies: deque = field(default_factory=lambda: deque(maxlen=5000))
    rec_latencies: deque = field(default_factory=lambda: deque(maxlen=5000))
    recommendations: int = 0
    last_rec: object = None
    recent_sent: deque = field(default_factory=lambda: deque(maxlen=50))


def _metrics(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.name + (("{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}")
                                 if sample.labels else "")
            out[key] = sample.value
    return out


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _start(name: str, args: list[str], settings: Settings, port: int, logdir) -> Service:
    log = logdir / f"{name}.log"
    env = {**os.environ, **settings.as_env(), "STREAMREC_LOG_LEVEL": "INFO"}
    out = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return Service(name, port, proc, str(log))


def _wait_ready(svc: Service, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"{svc.name} exited; see {svc.log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/readyz", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{svc.name} not ready after {timeout:.0f} s; see {svc.log}")


def _stop(svc: Service) -> int | None:
    if svc.proc is None or svc.proc.poll() is not None:
        return svc.proc.returncode if svc.proc else None
    svc.proc.send_signal(signal.SIGTERM)
    try:
        return svc.proc.wait(30)
    except subprocess.TimeoutExpired:
        svc.proc.kill()
        return svc.proc.wait()


def _shoppers(settings: Settings, stats: LiveStats, rate: float, stop: threading.Event, seed: int) -> None:
    """Simulated users browsing in sessions; a few malformed records show the DLQ at work."""
    from streamrec.stream.sdk import EventPublisher
    from streamrec.stream.synthetic import synthetic_stream

    records = synthetic_stream(10**9, users=2000, items=CATALOG_ITEMS, seed=seed, duplicate_rate=0.02,
                               malformed_rate=0.005)
    with EventPublisher(settings) as pub:
        start = time.perf_counter()
        for k, r in enumerate(records):
            if stop.is_set():
                break
            due = start + k / rate
            if (wait := due - time.perf_counter()) > 0:
                stop.wait(wait)
            if r.event is None:
                pub.send_raw(r.value, key=r.key)
                stats.bad_sent += 1
            else:
                ev = dict(r.event, ts=int(time.time() * 1000))  # event time = now, for latency
                pub.send_raw(json.dumps(ev).encode(), key=r.key, event_id=ev["event_id"])
                stats.recent_sent.append(ev)
            stats.sent += 1
        pub.flush()


def _latency_reader(settings: Settings, stats: LiveStats, stop: threading.Event) -> None:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"demo-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "latest", "fetch.wait.max.ms": 10, **topics.kafka_security(settings)})
    consumer.subscribe([settings.topic(topics.SCORE_REQUESTS)])
    while not stop.is_set():
        for m in consumer.consume(500, timeout=0.005):  # waits for all 500 or the timeout
            if not m.error():
                stats.latencies.append(time.time() * 1000 - json.loads(m.value())["ts"])
    consumer.close()


def _recommendation_reader(settings: Settings, stats: LiveStats, stop: threading.Event) -> None:
    from streamrec.stream.sdk import RecommendationConsumer

    with RecommendationConsumer(settings) as recs:
        while not stop.is_set():
            rec = recs.poll(0.05)
            if rec is not None:
                stats.recommendations += 1
                stats.rec_latencies.append(time.time() * 1000 - rec.event_ts)
                stats.last_rec = rec


def _percentiles(values) -> str:
    lat = np.array(values)
    return (f"p50 {np.percentile(lat, 50):.1f}   p95 {np.percentile(lat, 95):.1f}   "
            f"p99 {np.percentile(lat, 99):.1f}")


def _view(settings: Settings, stats: LiveStats, worker: Service, scorer: Service | None, seconds: float,
          redis) -> Group:
    from streamrec.stream.keys import Keys

    elapsed = time.monotonic() - stats.started
    m = _metrics(worker.port)
    applied = _sum(m, "streamrec_worker_events_applied_total")
    table = Table(title=f"streamrec demo — {elapsed:5.0f} / {seconds:.0f} s", expand=True)
    for col in ("what", "value"):
        table.add_column(col)
    table.add_row("events published (SDK -> Kafka)", f"{stats.sent:,}  ({stats.sent / max(elapsed, 1e-9):,.0f}/s)")
    table.add_row("features applied to Redis (worker)", f"{applied:,.0f}")
    table.add_row("duplicates dropped", f"{_sum(m, 'streamrec_worker_events_deduplicated_total'):,.0f}")
    table.add_row("dead-lettered (bad events)", f"{_sum(m, 'streamrec_worker_events_dead_lettered_total'):,.0f}"
                  f"  (malformed sent: {stats.bad_sent})")
    table.add_row("score requests produced", f"{_sum(m, 'streamrec_worker_score_requests_total'):,.0f}")
    if stats.latencies:
        table.add_row("event -> features applied (ms)", _percentiles(stats.latencies))
    if scorer is not None:
        sm = _metrics(scorer.port)
        table.add_row("recommendations received (scorer -> Kafka -> app)", f"{stats.recommendations:,}")
        if stats.rec_latencies:
            table.add_row("event -> recommendation received (ms)", _percentiles(stats.rec_latencies))
        table.add_row("degraded answers", f"{_sum(sm, 'streamrec_scorer_degraded_total'):,.0f}")
        table.add_row("model swaps", f"{_sum(sm, 'streamrec_scorer_swaps_total'):,.0f}")
    parts = [table]
    if stats.recent_sent:
        user = stats.recent_sent[-1]["user_id"]
        keys = Keys(settings.redis_prefix)
        try:
            info = {k.decode(): v.decode() for k, v in redis.hgetall(keys.user(user)).items()}
            session = info.get("cur", "")
            seq = redis.zrevrange(keys.session_seq(user, session), 0, 7) if session else []
            items = [s.decode().split("\x1f")[:2] for s in seq]
            trending = [t.decode() for t in redis.zrevrange(keys.trending, 0, 7)]
        except Exception:  # noqa: BLE001 - the view must survive a Redis hiccup
            info, items, trending = {}, [], []
        counts = ", ".join(f"{k[2:]} {v}" for k, v in sorted(info.items()) if k.startswith("n:"))
        body = (f"[bold]{user}[/] session {info.get('cur', '?')}: {counts}\n"
                f"recent: {' → '.join(f'{i} ({t})' for i, t in reversed(items)) or '-'}\n"
                f"trending now: {', '.join(trending) or '-'}")
        parts.append(Panel(body, title="live features of the latest shopper (Redis)"))
    rec = stats.last_rec
    if rec is not None:
        items = "\n".join(f"{i + 1:2d}. {it.item_id:<8} score {it.score:.3f}  p {it.propensity:.2f}  {it.reason}"
                          for i, it in enumerate(rec.items[:5]))
        parts.append(Panel(f"{rec.user_id} after {rec.trigger_event_id} · arm {rec.variant} · "
                           f"models {', '.join(rec.models) or 'none'}{' · DEGRADED' if rec.degraded else ''}\n"
                           + items, title="latest recommendation"))
    return Group(*parts)


def cmd_demo(args) -> int:
    import redis as redis_lib

    from streamrec.deploy.localstack import LocalStack, StackError
    from streamrec.stream.topics import create_topics

    base: Settings = args.settings
    sys.setswitchinterval(0.0005)  # shoppers, latency reader and the live view share the GIL
    run = uuid.uuid4().hex[:6]
    logdir = base.home_path / "demo" / run
    settings = base.replace(topic_prefix=f"{base.topic_prefix}demo{run}.", redis_prefix=f"{base.redis_prefix}demo{run}:",
                            registry_uri=str(logdir / "registry"))
    logdir.mkdir(parents=True, exist_ok=True)
    try:
        with console.status("starting the local stack (Kafka, Redis)..."):
            LocalStack(base).up(log=lambda m: console.print(f"[dim]{m}[/]"))
            create_topics(settings)
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(f"Kafka {settings.kafka_bootstrap}, Redis {settings.redis_url}; topics prefixed "
                  f"[bold]{settings.topic_prefix}[/]; logs in {logdir}")
    if not args.no_models and _train_initial_models(settings, logdir) != 0:
        console.print("[red]error:[/] training the initial models failed; see the output above")
        return 1
    worker = _start("worker", ["worker"], settings, settings.worker_port, logdir)
    scorer = _start("scorer", ["serve"], settings, settings.scorer_port, logdir)
    stop = threading.Event()
    stats = LiveStats()
    threads = []
    code = 0
    try:
        with console.status("starting the stream worker and the scorer..."):
            _wait_ready(worker)
            _wait_ready(scorer)
        threads = [threading.Thread(target=_latency_reader, args=(settings, stats, stop), daemon=True),
                   threading.Thread(target=_recommendation_reader, args=(settings, stats, stop), daemon=True),
                   threading.Thread(target=_shoppers, args=(settings, stats, args.rate, stop, args.seed), daemon=True)]
        for t in threads:
            t.start()
        stats.started = time.monotonic()
        redis = redis_lib.Redis.from_url(settings.redis_url)
        seconds = args.seconds
        with Live(_view(settings, stats, worker, scorer, seconds, redis), console=console,
                  refresh_per_second=2) as live:
            while time.monotonic() - stats.started < seconds:
                time.sleep(0.5)
                live.update(_view(settings, stats, worker, scorer, seconds, redis))
    except KeyboardInterrupt:
        console.print("interrupted; stopping")
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        code = 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for svc in (scorer, worker):
            console.print(f"{svc.name} stopped (exit {_stop(svc)})")
    return code


CATALOG_ITEMS = 1000


def _train_initial_models(settings: Settings, logdir) -> int:
    """Synthetic history, then `streamrec train` (SASRec + DCN-V2, exported, published, announced)."""
    data = logdir / "history"
    env = {**os.environ, **settings.as_env()}
    console.rule("training initial models on synthetic history")
    steps = [["data", "synth", "--users", "1500", "--items", str(CATALOG_ITEMS), "--out", str(data)],
             ["train", "--data", str(data / "events.jsonl"), "--epochs", "2"]]
    for step in steps:
        code = subprocess.call([sys.executable, "-m", "streamrec.cli", *step], env=env)
        if code != 0:
            return code
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole product locally with simulated users and show it live",
                       description="Starts the local stack and the services, runs simulated shoppers "
                                   "through the SDK, shows throughput, latency and live features, then "
                                   "stops everything cleanly.")
    p.add_argument("--seconds", type=float, default=60, help="how long to run (default 60)")
    p.add_argument("--rate", type=float, default=300, help="events per second from the shoppers (default 300)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated population")
    p.add_argument("--no-models", action="store_true",
                   help="skip training: the scorer serves trending and co-visitation (degraded, no model)")
    p.set_defaults(func=cmd_demo)
