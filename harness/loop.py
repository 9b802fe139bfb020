"""The closed loop on this machine: what `streamrec demo` and `streamrec bench soak` both start.

`ClosedLoop` gives one run its own topics, Redis prefix and registry (so it
never sees another run's data), trains and publishes the initial models (the
same code as `streamrec bench online`), starts the worker, the scorer (three
A/B arms) and the online trainer as child processes, then drives them with
the simulated population (`streamrec.harness.simulator`) through Kafka only, while a
reader thread times every recommendation from its event's publish time.
Callers add their own view (the demo's table, the soak's sampler) and stop it
all with `ClosedLoop.stop`, which also stops the services cleanly; `stop_traffic`
and `wait_drained` first let a view show what the worker finished.
"""

from __future__ import annotations

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
from typing import Callable

from rich.console import Console

from streamrec.console import make_console
from streamrec.settings import Settings


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    log: str


@dataclass
class LiveStats:
    """What the recommendation reader saw: latency from event publish to recommendation received."""

    started: float = field(default_factory=time.monotonic)
    rec_latencies: deque = field(default_factory=lambda: deque(maxlen=5000))
    recommendations: int = 0
    bad_sent: int = 0
    last_rec: object = None


def metrics(port: int) -> dict[str, float]:
    """A service's Prometheus metrics as {name{labels}: value}; empty when it does not answer."""
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


def metric_sum(values: dict[str, float], name: str, having: str = "") -> float:
    return sum(v for k, v in values.items() if (k == name or k.startswith(name + "{")) and having in k)


def start_service(name: str, args: list[str], settings: Settings, port: int, logdir: Path, **env) -> Service:
    log = logdir / f"{name}.log"
    full_env = {**os.environ, **settings.as_env(), "STREAMREC_LOG_LEVEL": "INFO", **env}
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", *args], env=full_env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    return Service(name, port, proc, str(log))


def wait_up(svc: Service, path: str = "/readyz", timeout: float = 90) -> None:
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


def stop_service(svc: Service) -> int:
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGTERM)
        try:
            return svc.proc.wait(60)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
    return svc.proc.wait()


def wait_drained(port: int, done: Callable[[dict[str, float]], bool] = lambda worker: True, timeout: float = 20.0,
                 quiet_s: float = 1.5) -> bool:
    """Once nothing more is sent: wait until the worker answering on ``port`` has read it all (its count of
    records read stood still for ``quiet_s``) and ``done(its metrics)`` holds; False when ``timeout`` passed
    first."""
    deadline = time.monotonic() + timeout
    last, still_since = None, time.monotonic()
    while time.monotonic() < deadline:
        worker = metrics(port)
        read = metric_sum(worker, "streamrec_worker_events_in_total") if worker else None
        if read != last:
            last, still_since = read, time.monotonic()
        elif read is not None and time.monotonic() - still_since >= quiet_s and done(worker):
            return True
        time.sleep(0.25)
    return False


def recommendation_reader(settings: Settings, stats: LiveStats, stop: threading.Event) -> None:
    from streamrec.stream.sdk import RecommendationConsumer

    with RecommendationConsumer(settings) as recs:
        while not stop.is_set():
            rec = recs.poll(0.05)
            if rec is not None:
                stats.recommendations += 1
                stats.rec_latencies.append(time.time() * 1000 - rec.event_ts)
                stats.last_rec = rec


class ClosedLoop:
    """One run of the whole loop: own topics, Redis prefix and registry; services as child processes.

    ``kind`` names the run's folder (``<home>/<kind>/<run>``) and its prefixes; ``changes`` are
    settings the run's services get on top of ``base`` (the soak's short TTLs), ``learner_flags``
    extra `streamrec learn` flags (the soak's joiner bound).
    """

    def __init__(self, base: Settings, cfg, kind: str = "demo", console: Console | None = None,
                 learner_flags: tuple[str, ...] = (), **changes):
        from streamrec.harness.simulator import Simulation

        self.base, self.cfg, self.kind, self.learner_flags = base, cfg, kind, tuple(learner_flags)
        self.console = console or make_console()
        self.run_id = uuid.uuid4().hex[:6]
        self.logdir = base.home_path / kind / self.run_id
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.settings = base.replace(topic_prefix=f"{base.topic_prefix}{kind}{self.run_id}.",
                                     redis_prefix=f"{base.redis_prefix}{kind}{self.run_id}:",
                                     registry_uri=str(self.logdir / "registry"), **changes)
        self.services: dict[str, Service] = {}
        self.stats = LiveStats()
        self.sim = Simulation(self.settings, cfg)
        self.report: dict | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sim_thread: threading.Thread | None = None

    # -- setup ------------------------------------------------------------------- #
    def start_stack(self) -> None:
        """The local stack (started if needed) and this run's topics; raises StackError."""
        from streamrec.deploy.localstack import LocalStack
        from streamrec.stream.topics import create_topics

        with self.console.status("starting the local stack (Kafka, Redis)..."):
            LocalStack(self.base).up(log=lambda m: self.console.print(f"[dim]{m}[/]"))
            create_topics(self.settings)

    def start_services(self, seed: int, pretrain_steps: int | None = None) -> None:
        """Initial models (``pretrain_steps`` of the sequence model; default the bench's), then the worker, the
        scorer and the online trainer, waited until ready."""
        from streamrec.harness.bench.online import ARMS, LEARNER_FLAGS, PRETRAIN_STEPS, initial_models

        s, logdir = self.settings, self.logdir
        with self.console.status("training the initial models (SASRec on organic sessions) and publishing them..."):
            initial_models(s, self.sim.cfg, seed, logdir / "export", pretrain_steps or PRETRAIN_STEPS)
        self.services = {
            "worker": start_service("worker", ["worker"], s, s.worker_port, logdir),
            "scorer": start_service("scorer", ["serve"], s, s.scorer_port, logdir,
                                    STREAMREC_SCORER_AB_ARMS=ARMS, STREAMREC_SCORER_EXPLORATION="epsilon"),
            "learner": start_service("learner", ["learn", "--checkpoint-dir", str(self.learner_dir),
                                                 *LEARNER_FLAGS, *self.learner_flags],
                                     s, s.learner_port, logdir),
        }
        with self.console.status("starting the worker, the scorer and the online trainer..."):
            wait_up(self.services["worker"])
            wait_up(self.services["scorer"])
            wait_up(self.services["learner"], "/healthz")

    @property
    def learner_dir(self) -> Path:
        return self.logdir / "learner"

    # -- traffic ----------------------------------------------------------------- #
    def start_traffic(self, *extra: Callable[[Settings, LiveStats, threading.Event], None]) -> None:
        """The recommendation reader, the simulator and ``extra`` threads (each gets settings, stats, stop)."""
        def simulate() -> None:
            self.report = self.sim.run()

        self._threads = [threading.Thread(target=recommendation_reader, args=(self.settings, self.stats, self._stop),
                                          daemon=True)]
        self._threads += [threading.Thread(target=f, args=(self.settings, self.stats, self._stop), daemon=True)
                          for f in extra]
        self._sim_thread = threading.Thread(target=simulate, daemon=True)
        for t in [*self._threads, self._sim_thread]:
            t.start()
        self.stats.started = time.monotonic()

    @property
    def running(self) -> bool:
        """The simulation has not finished yet."""
        return self._sim_thread is not None and self._sim_thread.is_alive()

    def stop_traffic(self) -> None:
        """Stop the simulator and the traffic threads (each flushes what it sent); the services keep running."""
        self._stop.set()
        self.sim.stop()
        for t in [*self._threads, *([self._sim_thread] if self._sim_thread else [])]:
            t.join(10)

    def stop(self) -> dict[str, int]:
        """Stop the traffic, then the services (SIGTERM); their exit codes."""
        self.stop_traffic()
        return {name: stop_service(self.services[name]) for name in ("scorer", "learner", "worker")
                if name in self.services}
