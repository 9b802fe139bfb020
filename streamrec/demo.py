"""`streamrec demo`: the whole product on this machine, closed loop, shown live.

1. starts the local stack (Kafka, Redis) if needed, with topics of the demo's own;
2. trains the initial models: a SASRec sequence model on the simulated
   world's organic sessions, and a ranker that starts from the sequence score
   (plus a popularity ranker for the baseline arm); exports, verifies and
   publishes them to the registry;
3. starts the worker, the scorer (three A/B arms: popularity, the initial
   models frozen, and the models the online trainer keeps improving) and the
   online trainer, as child processes;
4. runs the simulated population (hidden tastes, position-biased clicks)
   through Kafka only, plus an app that sometimes sends a malformed event;
5. shows live: events/s, features applied, dead letters, latency from event to
   recommendation, the true reward per arm, models published and swapped;
6. stops everything cleanly and writes a PNG of the reward per arm over time.
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
from pathlib import Path

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from streamrec.settings import Settings

console = Console()
ARMS = "popularity=1:ranker@pop:sasrec@v0,frozen=1:ranker@v0:sasrec@v0,online=1"


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    log: str


@dataclass
class LiveStats:
    started: float = field(default_factory=time.monotonic)
    rec_latencies: deque = field(default_factory=lambda: deque(maxlen=5000))
    recommendations: int = 0
    bad_sent: int = 0
    last_rec: object = None


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
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
    return out


def _sum(metrics: dict[str, float], name: str, having: str = "") -> float:
    return sum(v for k, v in metrics.items() if (k == name or k.startswith(name + "{")) and having in k)


def _start(name: str, args: list[str], settings: Settings, port: int, logdir: Path, **env) -> Service:
    log = logdir / f"{name}.log"
    full_env = {**os.environ, **settings.as_env(), "STREAMREC_LOG_LEVEL": "INFO", **env}
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", *args], env=full_env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    return Service(name, port, proc, str(log))


def _wait_up(svc: Service, path: str = "/readyz", timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise RuntimeError(f"{svc.name} exited; see {svc.log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{svc.port}{path}", timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{svc.name} not ready after {timeout:.0f} s; see {svc.log}")


def _stop(svc: Service) -> int:
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGTERM)
        try:
            return svc.proc.wait(60)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
    return svc.proc.wait()


def _initial_models(settings: Settings, world, seed: int, workdir: Path) -> None:
    """Train and publish what the arms start from (the same code as `streamrec bench online`)."""
    from streamrec.trainer.export import export_dcn, export_sasrec
    from streamrec.trainer.online_bench import _publish, feature_ranker, pretrained_sasrec

    cats = {i: f"cat{c}" for i, c in zip(world.item_ids, world.item_cat)}
    seq = pretrained_sasrec(world, seed)
    popularity, initial = feature_ranker("item_log_views"), feature_ranker("seq_score")
    _publish(settings, "sasrec", seq, export_sasrec(seq, workdir / "seq", world.item_ids, cats), "v0")
    _publish(settings, "ranker", popularity, export_dcn(popularity, workdir / "pop"), "pop")
    _publish(settings, "ranker", initial, export_dcn(initial, workdir / "v0"), "v0")


def _recommendation_reader(settings: Settings, stats: LiveStats, stop: threading.Event) -> None:
    from streamrec.stream.sdk import RecommendationConsumer

    with RecommendationConsumer(settings) as recs:
        while not stop.is_set():
            rec = recs.poll(0.05)
            if rec is not None:
                stats.recommendations += 1
                stats.rec_latencies.append(time.time() * 1000 - rec.event_ts)
                stats.last_rec = rec


def _careless_app(settings: Settings, stats: LiveStats, stop: threading.Event) -> None:
    """An app with a bug: one malformed event every two seconds, to show the dead-letter queue."""
    from streamrec.stream.sdk import EventPublisher

    with EventPublisher(settings) as pub:
        while not stop.wait(2.0):
            pub.send_raw(b'{"event_id": "oops", "type": "view", "user_id": "app-bug", "ts": "yesterday"}',
                         key="app-bug")
            stats.bad_sent += 1
        pub.flush()


def _arm_rows(sim) -> list[tuple[str, int, float, float]]:
    """(arm, slates, click-through, true reward per slate) so far, from the simulator's own tally."""
    tally = sim.tally
    if tally is None:
        return []
    totals: dict[str, list[float]] = {}
    for (variant, _), c in list(tally.cells.items()):
        t = totals.setdefault(variant, [0.0, 0.0, 0.0])
        t[0] += c["slates"]
        t[1] += c["clicks"]
        t[2] += c["reward"]
    return [(v, int(n), k / max(n, 1), r / max(n, 1)) for v, (n, k, r) in sorted(totals.items())]


def _view(sim, stats: LiveStats, services: dict[str, Service], seconds: float) -> Group:
    elapsed = time.monotonic() - stats.started
    wm, sm, lm = (_metrics(services[n].port) for n in ("worker", "scorer", "learner"))
    table = Table(title=f"streamrec demo — {elapsed:4.0f} / {seconds:.0f} s", expand=True)
    table.add_column("what")
    table.add_column("value")
    events = sim.stats.get("events", 0) + sim.stats.get("interactions", 0)
    applied = _sum(wm, "streamrec_worker_events_applied_total")
    table.add_row("events applied to Redis features (worker)", f"{applied:,.0f}  ({applied / max(elapsed, 1):,.0f}/s)")
    table.add_row("dead letters (malformed events from a careless app)",
                  f"{_sum(wm, 'streamrec_worker_events_dead_lettered_total'):,.0f} of {stats.bad_sent} sent")
    table.add_row("recommendations (scorer -> Kafka -> app)", f"{stats.recommendations:,}")
    if stats.rec_latencies:
        lat = np.array(stats.rec_latencies)
        table.add_row("event -> recommendation received (ms)",
                      f"p50 {np.percentile(lat, 50):.0f}   p95 {np.percentile(lat, 95):.0f}   "
                      f"p99 {np.percentile(lat, 99):.0f}")
    table.add_row("rewards joined by the online trainer", f"{_sum(lm, 'streamrec_learner_rewards_total'):,.0f}")
    table.add_row("candidate models accepted / rejected by the gate",
                  f"{_sum(lm, 'streamrec_learner_gate_decisions_total', 'accepted'):,.0f} / "
                  f"{_sum(lm, 'streamrec_learner_gate_decisions_total', 'rejected'):,.0f}")
    table.add_row("model versions swapped into the scorer", f"{_sum(sm, 'streamrec_scorer_swaps_total'):,.0f}")
    arms = Table(title="true reward per arm (from the simulator's hidden model)", expand=True)
    for col in ("arm", "slates", "click-through", "reward / slate"):
        arms.add_column(col)
    for arm, n, ctr, reward in _arm_rows(sim):
        arms.add_row(arm, f"{n:,}", f"{ctr:.3f}", f"{reward:.3f}")
    parts = [table, arms]
    rec = stats.last_rec
    if rec is not None:
        items = "\n".join(f"{i + 1:2d}. {it.item_id:<8} score {it.score:7.3f}  p {it.propensity:.2f}  {it.reason}"
                          for i, it in enumerate(rec.items[:5]))
        parts.append(Panel(f"{rec.user_id} · arm {rec.variant} · {', '.join(rec.models) or 'no model'}"
                           f"{' · DEGRADED' if rec.degraded else ''}\n{items}", title="latest recommendation"))
    return Group(*parts)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for arm, v in sorted(report["variants"].items()):
        b = [x for x in v["buckets"] if x["slates"] >= 5]
        ax.plot([x["t_s"] for x in b], [x["ctr"] for x in b], marker="o", label=arm)
    ax.set(title="click-through per arm over time (simulated users)", xlabel="s", ylabel="click-through")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cmd_demo(args) -> int:
    from streamrec.deploy.localstack import LocalStack, StackError
    from streamrec.simulator import SimConfig, Simulation, World
    from streamrec.stream.topics import create_topics

    sys.setswitchinterval(0.0005)  # the simulator, the readers and the live view share the GIL
    base: Settings = args.settings
    run = uuid.uuid4().hex[:6]
    logdir = base.home_path / "demo" / run
    logdir.mkdir(parents=True, exist_ok=True)
    settings = base.replace(topic_prefix=f"{base.topic_prefix}demo{run}.", redis_prefix=f"{base.redis_prefix}demo{run}:",
                            registry_uri=str(logdir / "registry"))
    try:
        with console.status("starting the local stack (Kafka, Redis)..."):
            LocalStack(base).up(log=lambda m: console.print(f"[dim]{m}[/]"))
            create_topics(settings)
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(f"Kafka {settings.kafka_bootstrap}, Redis {settings.redis_url}; topics prefixed "
                  f"[bold]{settings.topic_prefix}[/]; logs in {logdir}")
    cfg = SimConfig(users=args.users, items=300, seed=args.seed, rate=args.rate, seconds=args.seconds,
                    bucket_s=max(args.seconds / 12, 5))
    with console.status("training the initial models (SASRec on organic sessions) and publishing them..."):
        _initial_models(settings, World(cfg), args.seed, logdir / "export")
    services = {
        "worker": _start("worker", ["worker"], settings, settings.worker_port, logdir),
        "scorer": _start("scorer", ["serve"], settings, settings.scorer_port, logdir,
                         STREAMREC_SCORER_AB_ARMS=ARMS, STREAMREC_SCORER_EXPLORATION="epsilon"),
        "learner": _start("learner", ["learn", "--checkpoint-dir", str(logdir / "learner"), "--window-ms", "5000",
                                      "--gate-every-s", "10", "--gate-every-samples", "5000",
                                      "--min-gate-samples", "500"], settings, settings.learner_port, logdir),
    }
    stop, stats, code = threading.Event(), LiveStats(), 0
    sim = Simulation(settings, cfg)
    threads: list[threading.Thread] = []
    report = None
    try:
        with console.status("starting the worker, the scorer and the online trainer..."):
            _wait_up(services["worker"])
            _wait_up(services["scorer"])
            _wait_up(services["learner"], "/healthz")
        result: dict = {}
        threads = [threading.Thread(target=_recommendation_reader, args=(settings, stats, stop), daemon=True),
                   threading.Thread(target=_careless_app, args=(settings, stats, stop), daemon=True),
                   threading.Thread(target=lambda: result.update(report=sim.run()), daemon=True)]
        for t in threads:
            t.start()
        stats.started = time.monotonic()
        with Live(_view(sim, stats, services, args.seconds), console=console, refresh_per_second=2) as live:
            while threads[2].is_alive():
                time.sleep(0.5)
                live.update(_view(sim, stats, services, args.seconds))
        report = result.get("report")
    except KeyboardInterrupt:
        console.print("interrupted; stopping")
        sim.stop()
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        code = 1
    finally:
        stop.set()
        sim.stop()
        for t in threads:
            t.join(10)
        for svc in ("scorer", "learner", "worker"):
            console.print(f"{svc} stopped (exit {_stop(services[svc])})")
    if report:
        (logdir / "report.json").write_text(json.dumps(report, indent=2))
        _plot(report, logdir / "reward.png")
        console.print(f"reward over time per arm: {logdir / 'reward.png'}  (report: {logdir / 'report.json'})")
    return code


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole product locally, closed loop, and show it live",
                       description="Starts the local stack, trains and publishes initial models, runs the worker, "
                                   "the scorer (three A/B arms) and the online trainer, and a simulated user "
                                   "population through Kafka; shows throughput, latency, true reward per arm and "
                                   "model swaps live; stops everything cleanly and writes a PNG of the reward.")
    p.add_argument("--seconds", type=float, default=120, help="how long the simulation runs (default 120)")
    p.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    p.add_argument("--rate", type=float, default=60, help="events per second the users publish at most (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated world")
    p.set_defaults(func=cmd_demo)
