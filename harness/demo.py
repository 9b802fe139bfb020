"""`streamrec demo`: the whole product on this machine, closed loop, shown live.

1. starts the local stack (Kafka, Redis) if needed, with topics of the demo's own;
2. trains the initial models: a SASRec sequence model on the simulated
   world's organic sessions, and a ranker that starts from the sequence score;
   exports, verifies and publishes them to the registry;
3. starts the worker, the scorer (three A/B arms: popularity, i.e. the
   trending items the user has not seen, the initial
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
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Group

from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from streamrec.console import make_console
from streamrec.harness.loop import ClosedLoop, LiveStats, Service, metric_sum, metrics, wait_drained
from streamrec.settings import Settings

console = make_console()


def _careless_app(settings: Settings, stats: LiveStats, stop: threading.Event) -> None:
    """An app with a bug: one malformed event every two seconds, to show the dead-letter queue."""
    from streamrec.stream.sdk import EventPublisher

    with EventPublisher(settings) as pub:
        while not stop.wait(2.0):
            pub.send_raw(b'{"event_id": "oops", "type": "view", "user_id": "app-bug", "ts": "yesterday"}',
                         key="app-bug")
            stats.bad_sent += 1
        pub.flush()


def _arm_rows(sim) -> list[tuple[str, int, float, float, float]]:
    """(arm, slates, click-through, true reward per slate, expected reward as a share of the best slates') so
    far, from the simulator's own tally."""
    tally = sim.tally
    if tally is None:
        return []
    totals: dict[str, list[float]] = {}
    for (variant, _), c in list(tally.cells.items()):
        t = totals.setdefault(variant, [0.0, 0.0, 0.0, 0.0, 0.0])
        for k, key in enumerate(("slates", "clicks", "reward", "expected", "best")):
            t[k] += c[key]
    return [(v, int(n), k / max(n, 1), r / max(n, 1), e / b if b > 0 else 0.0)
            for v, (n, k, r, e, b) in sorted(totals.items())]


def _view(sim, stats: LiveStats, services: dict[str, Service], seconds: float,
          last: dict[str, dict[str, float]], final: bool = False) -> Group:
    elapsed = min(time.monotonic() - stats.started, seconds)
    # A service busy past the scrape's 1 s timeout (the trainer, mid-fine-tune on 2 cores) shows its last
    # figures, not zeros.
    for name in ("worker", "scorer", "learner"):
        last[name] = metrics(services[name].port) or last.get(name, {})
    wm, sm, lm = last["worker"], last["scorer"], last["learner"]
    when = f"finished: {seconds:.0f} s of traffic" if final else f"{elapsed:4.0f} / {seconds:.0f} s"
    table = Table(title=f"streamrec demo — {when}", expand=True)
    table.add_column("what")
    table.add_column("value")
    events = sim.stats.get("events", 0) + sim.stats.get("interactions", 0)
    applied = metric_sum(wm, "streamrec_worker_events_applied_total")
    table.add_row("events applied to Redis features (worker)", f"{applied:,.0f}  ({applied / max(elapsed, 1):,.0f}/s)")
    table.add_row("dead letters (malformed events from a careless app)",
                  f"{metric_sum(wm, 'streamrec_worker_events_dead_lettered_total'):,.0f} of {stats.bad_sent} sent")
    table.add_row("recommendations (scorer -> Kafka -> app)", f"{stats.recommendations:,}")
    if stats.rec_latencies:
        lat = np.array(stats.rec_latencies)
        table.add_row("event -> recommendation received (ms)",
                      f"p50 {np.percentile(lat, 50):.0f}   p95 {np.percentile(lat, 95):.0f}   "
                      f"p99 {np.percentile(lat, 99):.0f}")
    table.add_row("rewards joined by the online trainer", f"{metric_sum(lm, 'streamrec_learner_rewards_total'):,.0f}")
    table.add_row("candidate models accepted / rejected by the gate",
                  f"{metric_sum(lm, 'streamrec_learner_gate_decisions_total', 'accepted'):,.0f} / "
                  f"{metric_sum(lm, 'streamrec_learner_gate_decisions_total', 'rejected'):,.0f}")
    table.add_row("model versions swapped into the scorer", f"{metric_sum(sm, 'streamrec_scorer_swaps_total'):,.0f}")
    arms = Table(title="true reward per arm (from the simulator's hidden model)", expand=True)
    for col in ("arm", "slates", "click-through", "reward / slate", "of the best slates' expected reward"):
        arms.add_column(col)
    for arm, n, ctr, reward, of_best in _arm_rows(sim):
        arms.add_row(arm, f"{n:,}", f"{ctr:.3f}", f"{reward:.3f}", f"{of_best:.0%}")
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
    from streamrec.deploy.localstack import StackError
    from streamrec.harness.simulator import SimConfig
    from streamrec.harness.simulator import world_of

    sys.setswitchinterval(0.0005)  # the simulator, the readers and the live view share the GIL
    cfg = SimConfig(users=args.users, items=300, seed=args.seed, rate=args.rate, seconds=args.seconds,
                    bucket_s=max(args.seconds / 12, 5), **world_of(args))
    loop = ClosedLoop(args.settings, cfg, kind="demo", console=console)
    settings, logdir = loop.settings, loop.logdir
    try:
        loop.start_stack()
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(f"Kafka {settings.kafka_bootstrap}, Redis {settings.redis_url}; topics prefixed "
                  f"[bold]{settings.topic_prefix}[/]; logs in {logdir}")
    code = 0
    try:
        loop.start_services(args.seed, args.pretrain_steps)
        loop.start_traffic(_careless_app)
        scraped: dict[str, dict[str, float]] = {}
        with Live(_view(loop.sim, loop.stats, loop.services, args.seconds, scraped), console=console,
                  refresh_per_second=2) as live:
            while loop.running:
                time.sleep(0.5)
                live.update(_view(loop.sim, loop.stats, loop.services, args.seconds, scraped))
            # The last frame counts what the worker finished, not what it was still reading: the traffic stops,
            # then the worker drains (every malformed event sent reaches the dead-letter topic).
            loop.stop_traffic()
            dead = "streamrec_worker_events_dead_lettered_total"
            if not wait_drained(loop.services["worker"].port,
                                lambda worker: metric_sum(worker, dead) >= loop.stats.bad_sent):
                console.print("[yellow]the worker had not drained 20 s after the traffic stopped[/]")
            live.update(_view(loop.sim, loop.stats, loop.services, args.seconds, scraped, final=True))
    except KeyboardInterrupt:
        console.print("interrupted; stopping")
    except RuntimeError as exc:
        console.print(f"[red]error:[/] {exc}")
        code = 1
    finally:
        for svc, exit_code in loop.stop().items():
            console.print(f"{svc} stopped (exit {exit_code})")
    report = loop.report
    if report:
        (logdir / "report.json").write_text(json.dumps(report, indent=2))
        _plot(report, logdir / "reward.png")
        console.print(f"reward over time per arm: {logdir / 'reward.png'}  (report: {logdir / 'report.json'})")
    return code


def register(sub) -> None:
    from streamrec.harness.simulator import add_world_args

    p = sub.add_parser("demo", help="run the whole product locally, closed loop, and show it live",
                       description="Starts the local stack, trains and publishes initial models, runs the worker, "
                                   "the scorer (three A/B arms) and the online trainer, and a simulated user "
                                   "population through Kafka; shows throughput, latency, true reward per arm and "
                                   "model swaps live; stops everything cleanly and writes a PNG of the reward.")
    p.add_argument("--seconds", type=float, default=120, help="how long the simulation runs (default 120)")
    p.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    p.add_argument("--rate", type=float, default=60, help="events per second the users publish at most (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated world")
    add_world_args(p)  # the world of `streamrec bench online`
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="training steps of the initial sequence model (default that of `streamrec bench online`); "
                        "fewer start sooner with a weaker frozen arm")
    p.set_defaults(func=cmd_demo)
