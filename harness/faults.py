"""The fault suite: `streamrec bench faults` and `pytest -m faults` run the same cases.

Each case runs on a Kafka broker and a Redis of the suite's own (`FaultStack`:
own home folder and ports, the Kafka jars linked from the shared home), never
the shared stack. A case starts the worker and the scorer as child processes
on topics and keys of its own, publishes a steady stream of realistic events
through the SDK (`EventPublisher`; users in sessions, Zipf items, 5% app
retries, 1% malformed records, from `synthetic_stream`), injects ONE fault
once a third of the stream is out, waits until the pipeline has answered,
then audits from Kafka and Redis alone (never from the services' counters):

- every record on `events` (what the broker acknowledged) is decoded as the
  worker must: each unique valid event must be applied to the features once
  (its event-id marker exists and its user's per-type counters in Redis equal
  the counts computed from the topic: fewer is a loss, more a double count),
  and answered by exactly one record on `recommendations` (by trigger event
  id); each malformed record must be in `events.dlq` once, with a reason;
- lost = applied or answered zero times, or a malformed record not in the
  DLQ; duplicated = every extra application, recommendation or dead letter.

Cases (`CASES`): the broker stopped, or killed -9, for 10 s; stopped twice,
the second time inside the recovery from the first; stopped for 25 s while
busy processes load every core (the group session expires); Redis stopped
for 15 s (the worker must turn unready and commit nothing meanwhile); kill -9
of the worker, of the scorer, and of the online trainer (an app clicks on
recommendations; the trainer's reward counts in its checkpoint must equal
those computed from Kafka: none lost, none twice); a second worker and scorer
join, then leave; the registry unwritable (chmod) or full (RLIMIT_FSIZE) while
a model is published; model files truncated, corrupted, with a wrong checksum,
a wrong input signature, or oversized (`Settings.model_max_bytes`). The last
two run with ranker@v1 live and check that it keeps serving.

Downtime is how long the fault kept the service away (for a restart: from the
kill until the new process is ready); recovery is the time from its return
until the recommendations topic grew again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from rich.table import Table

from streamrec.console import make_console
from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.harness.loop import Service, start_service, stop_service, wait_up
from streamrec.settings import Settings
from streamrec.stream import schemas, topics
from streamrec.stream.keys import Keys, marker_field, marker_windows
from streamrec.stream.synthetic import Record, synthetic_stream

console = make_console(stderr=True)
DEFAULT_EVENTS = Settings().fault_events  # 50,000, as the issue asks
DEFAULT_RATE = 2_000
"""Events/s the SDK offers: under the worker's ~4,400/s and the scorer's ~2,600/s, so a case
measures the fault, not a backlog; 50,000 events take 25 s."""


STALL_CAPTURE_S = 90.0
"""A case whose answers stop growing this long before all are in captures what its services are doing."""

QUIET = {"log_level": 2}
"""librdkafka logs every failed reconnect while a broker is down on purpose; keep it to critical."""


def free_port() -> int:
    """A free port on 127.0.0.1 below Linux's ephemeral range: a port the kernel hands out (bind to 0) can be
    taken while its server is down by a client's own connection to it (TCP connects to itself when source and
    destination port match), and the server then cannot start again (a fresh clone of 2026-12-07)."""
    return consecutive_free_ports(1)


def consecutive_free_ports(n: int) -> int:
    """The first of `n` consecutive free ports on 127.0.0.1, below Linux's ephemeral range (32768 and up), so
    that no client connection takes one between this check and the servers' start (a JVM takes seconds).

    Ports handed out are noted, with the asking process, in a file shared by this user's processes: two test
    workers starting stacks at once otherwise drew the same port (a fresh clone of 2026-12-08)."""
    import fcntl

    import psutil

    with open(Path(tempfile.gettempdir()) / f"streamrec-ports-{os.getuid()}.json", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        taken = {int(port): pid for port, pid in json.loads(f.read() or "{}").items() if psutil.pid_exists(pid)}
        for _ in range(500):
            first = random.randrange(20_000, 32_000 - n)
            ports = range(first, first + n)
            if all(p not in taken and _free(p) for p in ports):
                taken.update(dict.fromkeys(ports, os.getpid()))
                f.seek(0)
                f.truncate()
                f.write(json.dumps(taken))
                return first
    raise RuntimeError(f"no {n} consecutive free ports between 20000 and 32000")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------- the suite's own stack
class FaultStack:
    """A Kafka broker and a Redis of the suite's own, under ``home``, on free ports (faults may kill them)."""

    def __init__(self, home: Path, base: Settings | None = None):
        from streamrec.deploy.localstack import LocalStack, install_kafka

        base = base or Settings.from_env()
        libs = install_kafka(base.home_path, log=lambda m: None)  # the shared jars, fetched once
        (home / "kafka").mkdir(parents=True, exist_ok=True)
        if not (home / "kafka" / "libs").exists():
            os.symlink(libs, home / "kafka" / "libs")
        kafka, redis = free_port(), free_port()
        self.settings = base.replace(home=str(home), kafka_port=kafka, kafka_controller_port=free_port(),
                                     redis_port=redis, prometheus_port=free_port(),
                                     kafka_bootstrap=f"127.0.0.1:{kafka}", redis_url=f"redis://127.0.0.1:{redis}/0",
                                     kafka_heap="384m", topic_prefix="", redis_prefix="sr:")
        self.stack = LocalStack(self.settings)

    def up(self) -> None:
        self.stack.up(log=lambda m: None)

    def down(self) -> None:
        self.stack.down()

    def stop(self, name: str) -> None:
        """SIGTERM and wait for a clean exit (`LocalService.stop`)."""
        self.stack.services[name].stop()

    def kill(self, name: str) -> None:
        """kill -9 of the server's process group; the pid file stays behind, stale, as after a crash."""
        from streamrec.deploy.localstack import _alive

        service = self.stack.services[name]
        pid = service.pid()
        if pid is None:
            raise RuntimeError(f"{name} of the fault stack is not running")
        os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)

    def start(self, name: str) -> None:
        self.stack.services[name].start(timeout=120, log=lambda m: None)

    def freeze(self, name: str, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the server's process group: its connections stay open and nothing answers,
        as when a network partition cuts a broker off without closing anything."""
        pid = self.stack.services[name].pid()
        if pid is None:
            raise RuntimeError(f"{name} of the fault stack is not running")
        os.killpg(pid, signal.SIGSTOP if frozen else signal.SIGCONT)


# --------------------------------------------------------------------------- reading topics
def read_all(s: Settings, name: str, timeout: float = 120.0) -> list:
    """Every record now on a topic (all partitions, up to the high watermark)."""
    return topics.read_all(s, name, timeout, **QUIET)


class TopicCounter:
    """Records on some topics (sum of high - low watermarks), for waiting and for the timeline."""

    def __init__(self, s: Settings, *names: str):
        self.settings = s
        self.topics = [s.topic(n) for n in names]
        self.partitions = s.topic_partitions
        self.consumer = self._new_consumer()
        self._lock = threading.Lock()  # a case's sampler thread and its main thread both count

    def _new_consumer(self) -> Consumer:
        return Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "faults-count", **QUIET})

    def count(self) -> int | None:
        """None while the broker does not answer. A failed reading replaces the client: after a broker restart
        one can answer "Unknown partition" for many minutes while fresh ones read fine (RELIABILITY.md, fault 10:
        that stuck client, not the pipeline, held a case until pytest's time-out)."""
        with self._lock:
            return self._count()

    def _count(self) -> int | None:
        total = 0
        try:
            for topic in self.topics:
                for p in range(self.partitions):
                    low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=2, cached=False)
                    total += high - low
        except (KafkaException, RuntimeError):  # RuntimeError: the client is closed
            stale, self.consumer = self.consumer, self._new_consumer()
            threading.Thread(target=stale.close, daemon=True).start()  # a stuck client may not even close
            return None
        return total

    def close(self) -> None:
        with self._lock:
            self.consumer.close()


def committed(s: Settings, group: str) -> int | None:
    """Sum of a consumer group's committed offsets on `events` (None while the broker does not answer)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap, **QUIET})
    tps = [TopicPartition(s.topic(topics.EVENTS), p) for p in range(s.topic_partitions)]
    try:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result(10)
    except KafkaException:
        return None
    return sum(max(tp.offset, 0) for tp in result.topic_partitions)


def http_json(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return 0, {}


# --------------------------------------------------------------------------- the audit
@dataclass
class Audit:
    """What Kafka and Redis hold after a case, against what the acknowledged events demand."""

    acked: int = 0              # records on `events`
    valid: int = 0              # unique valid events among them
    malformed: int = 0
    applied_once: int = 0
    applied_lost: int = 0
    applied_twice: int = 0
    requested_once: int = 0     # score requests (the worker's output), for the details
    answered_once: int = 0
    answers_lost: int = 0
    answers_repeated: int = 0
    dlq: int = 0
    dlq_lost: int = 0
    dlq_repeated: int = 0
    dlq_without_reason: int = 0
    degraded: int = 0           # recommendations marked degraded
    models: dict = field(default_factory=dict)   # models@versions -> recommendations

    @property
    def lost(self) -> int:
        return self.applied_lost + self.answers_lost + self.dlq_lost

    @property
    def duplicated(self) -> int:
        return self.applied_twice + self.answers_repeated + self.dlq_repeated


def audit(s: Settings, redis_client) -> Audit:
    """Check every acknowledged event from Kafka and Redis (see the module docstring)."""
    lateness_ms = s.lateness_s * 1000
    a = Audit()
    valid: dict[str, str] = {}                     # event id -> user
    user_counts: dict[str, Counter] = defaultdict(Counter)
    malformed: set[tuple[int, int]] = set()
    newest: dict[str, int] = {}
    for m in read_all(s, topics.EVENTS):           # per partition, in offset order: each user's order
        a.acked += 1
        try:
            ev = schemas.decode_event(m.value())
        except schemas.EventError:
            malformed.add((m.partition(), m.offset()))
            continue
        if ev.event_id in valid:
            continue                               # an app's retry: deduplicated by the worker
        if ev.user_id in newest and ev.ts_ms < newest[ev.user_id] - lateness_ms:
            malformed.add((m.partition(), m.offset()))   # too late: a dead letter too
            continue
        newest[ev.user_id] = max(newest.get(ev.user_id, ev.ts_ms), ev.ts_ms)
        valid[ev.event_id] = ev.user_id
        user_counts[ev.user_id][ev.type] += 1
    a.valid, a.malformed = len(valid), len(malformed)

    requests = Counter(json.loads(m.value())["event_id"] for m in read_all(s, topics.SCORE_REQUESTS))
    a.requested_once = sum(1 for e in valid if requests[e] == 1)
    answers: Counter = Counter()
    for m in read_all(s, topics.RECOMMENDATIONS):
        rec = json.loads(m.value())
        answers[rec["trigger_event_id"]] += 1
        a.degraded += bool(rec.get("degraded"))
        label = ",".join(rec.get("models") or []) or "none"
        a.models[label] = a.models.get(label, 0) + 1
    a.answered_once = sum(1 for e in valid if answers[e] == 1)
    a.answers_lost = sum(1 for e in valid if answers[e] == 0)
    a.answers_repeated = sum(n - 1 for n in answers.values() if n > 1) + sum(
        n for e, n in answers.items() if e not in valid)

    sources: Counter = Counter()
    for m in read_all(s, topics.EVENTS_DLQ):
        h = dict(m.headers() or [])
        if not h.get(topics.DLQ_TOPIC, b"").decode().endswith(topics.EVENTS):
            continue
        if not h.get(topics.DLQ_REASON):
            a.dlq_without_reason += 1
        sources[(int(h[topics.DLQ_PARTITION]), int(h[topics.DLQ_OFFSET]))] += 1
    a.dlq = sum(1 for src in malformed if sources[src] >= 1 and src in sources)
    a.dlq_lost = len(malformed) - a.dlq
    a.dlq_repeated = sum(n - 1 for n in sources.values() if n > 1) + sum(
        n for src, n in sources.items() if src not in malformed)

    keys = Keys(s.redis_prefix)
    users = sorted(user_counts)
    pipe = redis_client.pipeline(transaction=False)
    for u in users:
        pipe.hgetall(keys.user(u))
    exact: set[str] = set()
    for u, h in zip(users, pipe.execute()):
        got = Counter({k.decode()[2:]: int(v) for k, v in h.items() if k.startswith(b"n:")})
        want = user_counts[u]
        a.applied_twice += sum(max(0, got[t] - want[t]) for t in set(got) | set(want))
        a.applied_lost += sum(max(0, want[t] - got[t]) for t in set(got) | set(want))
        if got == want:
            exact.add(u)
    ids = list(valid.items())
    now_s = redis_client.time()[0]
    for start in range(0, len(ids), 10_000):
        pipe = redis_client.pipeline(transaction=False)
        for e, u in ids[start:start + 10_000]:
            for window in marker_windows(keys, u, now_s, s.dedup_ttl_s):
                pipe.hexists(window, marker_field(e))
        found = pipe.execute()
        for k, (e, u) in enumerate(ids[start:start + 10_000]):
            a.applied_once += (found[2 * k] or found[2 * k + 1]) and u in exact
    return a


# --------------------------------------------------------------------------- the steady publisher
class SteadyPublisher:
    """Publishes records through the SDK at a steady rate, in a thread; counts what the broker acked."""

    def __init__(self, s: Settings, records: list[Record], rate: float):
        self.settings, self.records, self.rate = s, records, rate
        self.sent = 0
        self.acked = 0
        self.failures: list = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> "SteadyPublisher":
        self.thread.start()
        return self

    def _run(self) -> None:
        from streamrec.stream.sdk import EventPublisher, PublishError

        pub = EventPublisher(self.settings, **QUIET)
        started = time.monotonic()
        try:
            for k, r in enumerate(self.records):
                ahead = started + k / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                pub.send_raw(r.value, key=r.key, event_id=(r.event or {}).get("event_id", ""))
                self.sent += 1
            try:
                pub.close(timeout=300)  # no producer outlives the case's broker
            except PublishError as exc:
                self.failures = exc.failures
        finally:
            self.acked = pub.delivered
            self.done.set()

    def wait_sent(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < n and not self.done.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the publisher sent {self.sent} of {n} events in {timeout:.0f} s")
            time.sleep(0.05)


# --------------------------------------------------------------------------- one case's run
@dataclass
class CaseResult:
    case: str
    fault: str
    events: int = 0
    published: int = 0
    acked: int = 0
    valid: int = 0
    malformed: int = 0
    applied_once: int = 0
    answered_once: int = 0
    dlq: int = 0
    lost: int = 0
    duplicated: int = 0
    downtime_s: float = 0.0
    recovery_s: float | None = None
    wall_s: float = 0.0
    checks: dict = field(default_factory=dict)
    """Case-specific facts that must hold, by name."""
    details: dict = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        out = [f"{self.lost} lost"] if self.lost else []
        out += [f"{self.duplicated} duplicated"] if self.duplicated else []
        if self.applied_once != self.valid:
            out.append(f"{self.applied_once} of {self.valid} events applied exactly once")
        if self.answered_once != self.valid:
            out.append(f"{self.answered_once} of {self.valid} events answered exactly once")
        if self.dlq != self.malformed:
            out.append(f"{self.dlq} of {self.malformed} malformed records in the DLQ")
        if self.acked != self.published:
            out.append(f"{self.published - self.acked} event(s) not acknowledged by the broker")
        out += [f"check failed: {name}" for name, ok in self.checks.items() if not ok]
        return out

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "problems": self.problems}


class Run:
    """One case's namespace, services and stream on the fault stack."""

    def __init__(self, stack: FaultStack, case: str, events: int, rate: float, workdir: Path, **changes):
        from streamrec.stream.topics import create_topics

        tag = f"{case}{uuid.uuid4().hex[:4]}"
        self.stack = stack
        self.logdir = workdir / tag
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.settings = stack.settings.replace(topic_prefix=f"f{tag}.", redis_prefix=f"f{tag}:",
                                               registry_uri=str(self.logdir / "registry"), **changes)
        create_topics(self.settings)
        self.services: dict[str, Service] = {}
        # Event times follow the wall clock, as a live app's do.
        start_ms = int(time.time() * 1000)
        self.records = list(synthetic_stream(events, users=max(500, events // 20), items=max(2000, events // 5),
                                             seed=zlib.crc32(case.encode()) & 0xFFFF, start_ms=start_ms, step_ms=1000 / rate))
        self.publisher = SteadyPublisher(self.settings, self.records, rate)
        self.outputs = TopicCounter(self.settings, topics.RECOMMENDATIONS)
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.t0 = time.monotonic()
        self.captured = ""
        """Why the services' state was captured (`capture`), if it was."""

    # -- services ------------------------------------------------------------- #
    def start(self, name: str, **env) -> Service:
        """Start ``worker``, ``scorer`` (or ``worker2``...) as a child process, wait until ready."""
        role = name.rstrip("0123456789")
        port = free_port()
        env_port = {"worker": "STREAMREC_WORKER_PORT", "scorer": "STREAMREC_SCORER_PORT"}[role]
        command = {"worker": ["worker"], "scorer": ["serve"]}[role]
        svc = start_service(name, command, self.settings, port, self.logdir, **{env_port: str(port)}, **env)
        self.services[name] = svc
        wait_up(svc, timeout=120)
        return svc

    def kill(self, name: str) -> None:
        svc = self.services[name]
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait()

    def stop(self, name: str) -> int:
        return stop_service(self.services.pop(name))

    # -- stream and timeline --------------------------------------------------- #
    def begin(self) -> None:
        self.t0 = time.monotonic()
        self._sampler.start()
        self.publisher.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            n = self.outputs.count()
            if n is not None:
                self.timeline.append((time.monotonic() - self.t0, n))
            self._stop.wait(0.2)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def recovery_after(self, t_back: float) -> float | None:
        """Seconds from ``t_back`` until the recommendations topic grew again."""
        before = [n for t, n in self.timeline if t <= t_back]
        base = before[-1] if before else 0
        for t, n in self.timeline:
            if t > t_back and n > base:
                return round(t - t_back, 2)
        return None

    def finish(self, timeout: float = 600, extra: int = 0) -> None:
        """Wait for the publisher, then until every valid event (and ``extra`` more) has its answer."""
        self.publisher.thread.join(timeout)
        want = len({r.event["event_id"] for r in self.records if r.event}) + extra
        deadline = time.monotonic() + timeout
        last, grew_at = None, time.monotonic()
        while time.monotonic() < deadline:
            n = self.outputs.count()
            if n is not None and n >= want:
                break
            if n != last:
                last, grew_at = n, time.monotonic()
            elif time.monotonic() - grew_at > STALL_CAPTURE_S and not self.captured:
                self.capture(f"no new answer for {STALL_CAPTURE_S:g} s ({n} of {want})")
            time.sleep(0.5)
        time.sleep(2.0)  # let any repeat land too, so the audit sees it
        self._stop.set()
        self._sampler.join(5)

    def capture(self, why: str) -> None:
        """What each service is doing now, for a stall that a case would otherwise only time out on: a
        `py-spy dump` of every thread and the service's /metrics, into ``<logdir>/<service>-stall.txt``."""
        self.captured = why
        for name, svc in self.services.items():
            parts = [f"# {why}; {name} pid {svc.proc.pid}, exit code {svc.proc.poll()}"]
            try:
                py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
                dump = subprocess.run([py_spy or "py-spy", "dump", "--pid", str(svc.proc.pid)], capture_output=True,
                                      text=True, timeout=60)
                parts.append(dump.stdout + dump.stderr)
            except (OSError, subprocess.TimeoutExpired) as exc:
                parts.append(f"py-spy dump failed: {exc}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=10) as r:
                    parts.append(r.read().decode())
            except OSError as exc:
                parts.append(f"/metrics did not answer: {exc}")
            (self.logdir / f"{name}-stall.txt").write_text("\n".join(parts))

    def close(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join(5)
        for name in list(self.services):
            self.stop(name)
        self.outputs.close()

    def result(self, case: str, fault: str, downtime: float = 0.0, recovery: float | None = None,
               checks: dict | None = None, details: dict | None = None) -> CaseResult:
        from streamrec import security

        a = audit(self.settings, security.redis_client(self.settings))  # through the Sentinels when replicated
        return CaseResult(case=case, fault=fault, events=len(self.records), published=self.publisher.sent,
                          acked=self.publisher.acked, valid=a.valid, malformed=a.malformed,
                          applied_once=a.applied_once, answered_once=a.answered_once, dlq=a.dlq, lost=a.lost,
                          duplicated=a.duplicated, downtime_s=round(downtime, 2), recovery_s=recovery,
                          wall_s=round(self.now(), 1), checks=checks or {},
                          details={**(details or {}), "on_events_topic": a.acked,
                                   "score_requests_once": a.requested_once, "applied_lost": a.applied_lost,
                                   "applied_twice": a.applied_twice, "answers_lost": a.answers_lost,
                                   "answers_repeated": a.answers_repeated, "dlq_lost": a.dlq_lost,
                                   "dlq_repeated": a.dlq_repeated, "dlq_without_reason": a.dlq_without_reason,
                                   "degraded_recommendations": a.degraded, "models": a.models,
                                   "publish_failures": len(self.publisher.failures)})


# --------------------------------------------------------------------------- the cases
def _pipeline_case(stack: FaultStack, case: str, fault: str, events: int, rate: float, workdir: Path,
                   inject: Callable[[Run], dict], **changes) -> CaseResult:
    """Worker + scorer under a steady stream; ``inject`` runs at a third of it and returns
    {"down": s, "back": t, "checks": {...}, "details": {...}}."""
    run = Run(stack, case, events, rate, workdir, **changes)
    try:
        run.start("worker")
        run.start("scorer")
        run.begin()
        # A fault in a *running* pipeline: wait for the first answers (the worker has finished its start-up
        # recovery) before counting to a third. A stop inside a recovery is the broker-flap case.
        deadline = time.monotonic() + 120
        while not run.outputs.count() and time.monotonic() < deadline:
            time.sleep(0.2)
        run.publisher.wait_sent(len(run.records) // 3)
        outcome = inject(run)
        run.finish()
        recovery = run.recovery_after(outcome["back"]) if "back" in outcome else None
        # A stalled worker restarts itself in place (stream/watchdog.py; same pid), a stalled scorer replaces
        # its consumer: say when they did.
        def logs(pattern: str) -> str:
            return "".join(p.read_text(errors="replace") for p in run.logdir.glob(pattern))

        details = {**outcome.get("details", {}),
                   "worker_stall_restarts": logs("worker*.log").count("restarting the process in place"),
                   "scorer_consumer_renewals": logs("scorer*.log").count("the Kafka consumer stalled; replacing it"),
                   "scorer_producer_renewals": logs("scorer*.log").count("replacing the producer")}
        return run.result(case, fault, outcome.get("down", 0.0), recovery, outcome.get("checks"), details)
    finally:
        run.close()


def _broker_down(run: Run, kill: bool, seconds: float) -> None:
    (run.stack.kill if kill else run.stack.stop)("kafka")
    time.sleep(seconds)
    run.stack.start("kafka")


def _broker_outcome(run: Run, t: float) -> dict:
    back = run.now()
    return {"down": back - t, "back": back,
            "checks": {"worker alive": run.services["worker"].proc.poll() is None,
                       "scorer alive": run.services["scorer"].proc.poll() is None}}


def _broker_outage(kill: bool, seconds: float = 10.0):
    def inject(run: Run) -> dict:
        t = run.now()
        _broker_down(run, kill, seconds)
        return _broker_outcome(run, t)
    return inject


@contextlib.contextmanager
def cpu_load(processes: int):
    """Busy processes, one per core by default: the other jobs of a loaded machine."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def _broker_freeze(seconds: float = 20.0):
    """The broker frozen: clients get no answer and no error, for longer than the scorer's stall time."""
    def inject(run: Run) -> dict:
        t = run.now()
        run.stack.freeze("kafka")
        time.sleep(seconds)
        run.stack.freeze("kafka", frozen=False)
        return _broker_outcome(run, t)
    return inject


def _broker_outage_loaded(seconds: float = 25.0, after_s: float = 15.0):
    """The broker away for more than two group sessions (10 s each) while every core is busy, and the load kept
    on ``after_s`` into the recovery: slow restarts and an expired group together, as on a loaded machine."""
    def inject(run: Run) -> dict:
        with cpu_load(os.cpu_count() or 2):
            t = run.now()
            _broker_down(run, False, seconds)
            outcome = _broker_outcome(run, t)
            time.sleep(after_s)
        return outcome
    return inject


def _broker_flap(seconds: float = 10.0, again_after_s: float = 0.5):
    """The broker stops, comes back, and stops again ``again_after_s`` after the worker shows it is back (a new
    partition assignment, or new answers): the second stop lands inside the worker's recovery from the first."""
    def inject(run: Run) -> dict:
        log_path = run.logdir / "worker.log"

        def assignments() -> int:
            return log_path.read_text(errors="replace").count("events partitions assigned")

        t = run.now()
        run.stack.stop("kafka")
        time.sleep(seconds)
        seen, answered = assignments(), run.outputs.count() or 0
        run.stack.start("kafka")
        deadline = time.monotonic() + 180
        while assignments() <= seen and (run.outputs.count() or 0) <= answered:
            if time.monotonic() > deadline:
                break  # stalled: the second stop still lands, and the audit shows what is lost
            time.sleep(0.05)
        time.sleep(again_after_s)
        _broker_down(run, False, seconds)
        return _broker_outcome(run, t)
    return inject


def _redis_outage(seconds: float = 15.0):
    def inject(run: Run) -> dict:
        s = run.settings
        worker, scorer = run.services["worker"], run.services["scorer"]
        group = topics.group_id(s, topics.WORKER_GROUP)
        requests = TopicCounter(s, topics.SCORE_REQUESTS)
        t = run.now()
        run.stack.stop("redis")
        # The worker must notice and turn unready; from then on it may commit and answer nothing.
        deadline = time.monotonic() + seconds
        unready = False
        while time.monotonic() < deadline and not unready:
            unready = http_json(worker.port, "/readyz")[0] != 200
            time.sleep(0.2)
        time.sleep(1.0)  # the batch in hand fails; nothing after it is committed
        before = (committed(s, group), requests.count())
        scorer_said = False
        while time.monotonic() < deadline:
            status, body = http_json(scorer.port, "/readyz")
            scorer_said |= bool(body.get("degraded", {}).get("redis_down"))
            time.sleep(0.5)
        after = (committed(s, group), requests.count())
        worker_unready_at_end = http_json(worker.port, "/readyz")[0] != 200
        run.stack.start("redis")
        back = run.now()
        requests.close()
        return {"down": back - t, "back": back,
                "checks": {"worker turned unready": unready and worker_unready_at_end,
                           "worker committed nothing while Redis was down": before[0] == after[0],
                           "no score request while Redis was down": before[1] == after[1],
                           "worker alive": worker.proc.poll() is None},
                "details": {"scorer_readyz_said_redis_down": scorer_said,
                            "committed_during_outage": [before[0], after[0]]}}
    return inject


def _kill_service(name: str):
    def inject(run: Run) -> dict:
        # In the middle of a batch: wait until it is producing, then kill without warning.
        base = run.outputs.count() or 0
        deadline = time.monotonic() + 60
        while (run.outputs.count() or 0) <= base and time.monotonic() < deadline:
            time.sleep(0.05)
        t = run.now()
        run.kill(name)
        run.start(name)
        back = run.now()
        return {"down": back - t, "back": back}
    return inject


def _rebalance(run: Run) -> dict:
    run.start("worker2")
    run.start("scorer2")
    run.publisher.wait_sent(2 * len(run.records) // 3)
    t = run.now()
    codes = {n: run.stop(n) for n in ("scorer2", "worker2")}
    back = run.now()
    return {"down": 0.0, "back": back,
            "checks": {"joiners left cleanly (exit 0)": set(codes.values()) == {0}},
            "details": {"leave_s": round(back - t, 2)}}


# --------------------------------------------------------------------------- the online trainer
class FeedbackApp:
    """The app's side of the loop: clicks on some recommended items, with rec_id and position,
    through the SDK; one click in ten is sent twice (an app retry: same event id)."""

    def __init__(self, s: Settings, every: int = 4):
        self.settings, self.every = s, every
        self.sent = 0           # records, retries included
        self.acked = 0
        self.unique = 0         # distinct click events
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="feedback", daemon=True)
        from streamrec.stream.sdk import RecommendationConsumer

        self.recs = RecommendationConsumer(s)  # from now on: created before the stream starts

    def start(self) -> "FeedbackApp":
        self.thread.start()
        return self

    def _run(self) -> None:
        from streamrec.stream.sdk import EventPublisher

        pub = EventPublisher(self.settings, **QUIET)
        try:
            while not self.stop.is_set():
                rec = self.recs.poll(0.2)
                if rec is None or rec.trigger_event_id.startswith("fb-") or not rec.items:
                    continue
                k = zlib.crc32(rec.rec_id.encode())
                if k % self.every:
                    continue
                pos = k % len(rec.items)
                fields = dict(user_id=rec.user_id, item_id=rec.items[pos].item_id, rec_id=rec.rec_id, position=pos,
                              ts=int(rec.event_ts) + 100, event_id=f"fb-{rec.rec_id}")
                pub.click(**fields)
                self.sent += 1
                self.unique += 1
                if k % 10 == 0:
                    pub.click(**fields)
                    self.sent += 1
            pub.flush(60)
        finally:
            self.acked = pub.delivered
            self.recs.close()


def _expected_rewards(s: Settings, window_ms: int) -> Counter:
    """From Kafka alone: rewards the joiner must count (one per slate, item and kind inside the
    window), and the repeats it must recognise as duplicates."""
    slates = {}
    for m in read_all(s, topics.RECOMMENDATIONS):
        rec = json.loads(m.value())
        slates.setdefault(rec["rec_id"], (rec["created_ts"], [i["item_id"] for i in rec["items"]]))
    want: Counter = Counter()
    seen: set = set()
    for m in read_all(s, topics.EVENTS):
        try:
            ev = schemas.decode_event(m.value())
        except schemas.EventError:
            continue
        if not ev.rec_id or ev.rec_id not in slates or ev.type != "click":
            continue
        created, items = slates[ev.rec_id]
        if ev.ts_ms > created + window_ms or ev.item_id not in items:
            continue
        key = (ev.rec_id, ev.item_id, ev.type)
        if key in seen:
            want["duplicates"] += 1
        else:
            seen.add(key)
            want["reward:click"] += 1
    return want


def _learner_caught_up(s: Settings, checkpoint: Path) -> bool:
    ends = {}
    counter = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "faults-ends", **QUIET})
    try:
        for name in (topics.RECOMMENDATIONS, topics.EVENTS):
            for p in range(s.topic_partitions):
                ends[f"{s.topic(name)}:{p}"] = topics.watermarks(counter, TopicPartition(s.topic(name), p))[1]
    finally:
        counter.close()
    try:
        offsets = json.loads(checkpoint.read_text())["offsets"]
    except (OSError, ValueError, KeyError):
        return False
    return all(offsets.get(k, 0) >= v for k, v in ends.items() if v > 0)


def run_learner_case(stack: FaultStack, case: str, events: int, rate: float, workdir: Path) -> CaseResult:
    """Worker, scorer and online trainer; an app clicks on recommendations; the trainer is killed
    (-9) while it joins, restarted from its checkpoint; its reward counts must equal Kafka's."""
    window_ms = 600_000  # longer than the case: every click is inside the window
    run = Run(stack, case, events, rate, workdir)
    ckpt_dir = run.logdir / "learner"
    try:
        run.start("worker")
        run.start("scorer")
        learner_args = ["learn", "--checkpoint-dir", str(ckpt_dir), "--window-ms", str(window_ms), "--dry-run"]

        def start_learner() -> Service:
            port = free_port()
            svc = start_service("learner", learner_args, run.settings, port, run.logdir,
                                STREAMREC_LEARNER_PORT=str(port))
            run.services["learner"] = svc
            wait_up(svc, "/healthz", timeout=120)
            return svc

        start_learner()
        app = FeedbackApp(run.settings).start()
        run.begin()
        run.publisher.wait_sent(len(run.records) // 3)
        deadline = time.monotonic() + 60
        while app.sent < 200 and time.monotonic() < deadline:  # the trainer is busy joining clicks
            time.sleep(0.1)
        t = run.now()
        run.kill("learner")
        start_learner()
        back = run.now()
        run.finish()
        time.sleep(3.0)  # the app answers the last recommendations
        app.stop.set()
        app.thread.join(30)
        run.finish(extra=app.unique)  # the clicks are events too: each is answered
        ckpt = ckpt_dir / "learner.json"
        deadline = time.monotonic() + 600
        while not (caught_up := _learner_caught_up(run.settings, ckpt)) and time.monotonic() < deadline:
            time.sleep(1.0)
        code = run.stop("learner")
        counts = json.loads(ckpt.read_text())["joiner"]["counts"]
        want = _expected_rewards(run.settings, window_ms)
        got = {k: counts.get(k, 0) for k in ("reward:click", "duplicates")}
        checks = {"trainer caught up with the topics": caught_up,
                  "trainer stopped cleanly on SIGTERM (exit 0)": code == 0,
                  "every click reward counted once (none lost, none twice)": got["reward:click"] == want["reward:click"] > 0,
                  "every retried click recognised as a duplicate": got["duplicates"] == want["duplicates"]}
        result = run.result(case, "online trainer kill -9 while joining, restarted from its checkpoint",
                            back - t, None, checks,  # the trainer answers no topic: no recovery to time
                            {"rewards_expected": dict(want), "rewards_counted": got, "clicks_sent": app.sent,
                             "trainer_exit_code_on_sigterm": code})
        result.events += app.sent
        result.published += app.sent
        result.acked += app.acked
        return result
    finally:
        run.close()


PIPELINE_CASES: dict[str, tuple[str, Callable]] = {
    "broker-stop": ("Kafka broker stopped (SIGTERM) for 10 s, restarted", lambda: _broker_outage(kill=False)),
    "broker-kill": ("Kafka broker kill -9, down 10 s, restarted", lambda: _broker_outage(kill=True)),
    "broker-flap": ("Kafka broker stopped twice, the second time while the worker recovers from the first",
                    lambda: _broker_flap()),
    "broker-outage-loaded": ("Kafka broker stopped for 25 s (the group session expires) while busy processes "
                             "load every core", lambda: _broker_outage_loaded()),
    "broker-freeze": ("Kafka broker frozen (SIGSTOP) for 20 s, resumed (SIGCONT); the scorer's stall time 8 s",
                      lambda: _broker_freeze()),
    "redis-stop": ("Redis stopped for 15 s, restarted", lambda: _redis_outage()),
    "worker-kill": ("worker kill -9 mid-batch, restarted", lambda: _kill_service("worker")),
    "scorer-kill": ("scorer kill -9 mid-batch, restarted", lambda: _kill_service("scorer")),
    "rebalance": ("a second worker and scorer join, then leave", lambda: _rebalance),
}


CASE_SETTINGS = {"broker-freeze": {"scorer_stall_s": 8.0}}
"""Settings a case runs its services with: a frozen broker outlasts the scorer's stall time, so the scorer
replaces a producer the broker stopped answering."""


def run_pipeline_case(stack: FaultStack, case: str, events: int, rate: float, workdir: Path) -> CaseResult:
    fault, make = PIPELINE_CASES[case]
    return _pipeline_case(stack, case, fault, events, rate, workdir, make(), **CASE_SETTINGS.get(case, {}))


# --------------------------------------------------------------------------- registry and model cases
MODEL_CASES = ("registry-unwritable", "registry-full", "model-truncated", "model-corrupted",
               "model-wrong-checksum", "model-wrong-signature", "model-oversized")
CASES = (*PIPELINE_CASES, "learner-kill", "registry", "model-files")


def _export_ranker(workdir: Path, seed: int):
    """A small ranker of the trainer's class, exported (parity-checked)."""
    import torch

    from streamrec.trainer.export import export_dcn
    from streamrec.harness.bench.online import feature_ranker

    torch.manual_seed(seed)
    model = feature_ranker("item_log_views", buckets=2000)
    return model, export_dcn(model, workdir / f"ranker-{seed}")


def _publish_ranker(s: Settings, workdir: Path, version: str, send: bool = True):
    from streamrec.harness.bench.online import _publish

    model, exported = _export_ranker(workdir, seed=len(version))
    _publish(s, "ranker", model, exported, version)
    return exported


_PUBLISH_SCRIPT = """
import json, sys
from streamrec.registry import Registry
try:
    Registry(sys.argv[1]).publish("ranker", json.loads(sys.argv[2]), kind="dcn", version=sys.argv[3])
    print("")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def _publish_in_child(s: Settings, files: dict, version: str, fsize_limit: int | None = None,
                      unprivileged: bool = False) -> str:
    """Publish in a child process; returns the error it got ('' if it published).

    ``unprivileged``: when we are root, the child runs without the capabilities that let root
    ignore file modes (setpriv drops CAP_DAC_OVERRIDE...), so a chmod stops it as it would stop
    any service user. ``fsize_limit``: under RLIMIT_FSIZE, so writing past it fails with EFBIG,
    the way a full disk fails with ENOSPC (no root needed, unlike mounting a tiny tmpfs).
    """
    import shutil
    import subprocess
    import sys

    def limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killing signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    prefix = []
    if unprivileged and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            raise RuntimeError("running as root, a chmod does not stop a write; install util-linux's setpriv "
                               "(it drops CAP_DAC_OVERRIDE for the publishing child) or run as another user")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
    done = subprocess.run([*prefix, sys.executable, "-c", _PUBLISH_SCRIPT, s.registry_uri,
                           json.dumps({k: str(v) for k, v in files.items()}), version],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=limit if fsize_limit is not None else None)
    if done.returncode != 0:
        return f"child exited with {done.returncode}: {done.stderr[-500:]}"
    return done.stdout.strip()


def _damage(s: Settings, workdir: Path, kind: str, version: str, max_bytes: int):
    """Publish a good version, then damage it as ``kind`` says; returns its announcement."""
    import msgspec

    from streamrec.registry import META, FileEntry, Registry, _meta_decoder
    from streamrec.trainer.publish import announcement

    reg = Registry(s.registry_uri)
    model, exported = _export_ranker(workdir, seed=zlib.crc32(kind.encode()) & 0xFF)
    files = dict(exported.files)
    if kind == "model-oversized":
        pad = workdir / f"pad-{version}.bin"
        with open(pad, "wb") as f:
            f.truncate(max_bytes + 1)
        files["pad.bin"] = pad
    reg.publish("ranker", files, kind="dcn", version=version, signatures=exported.signatures,
                opset=exported.opset, extra=exported.extra,
                hashing={h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")})
    folder = Path(reg.location("ranker", version))
    onnx_file = folder / "model.onnx"
    if kind == "model-truncated":
        data = onnx_file.read_bytes()
        onnx_file.write_bytes(data[: len(data) // 2])
    elif kind == "model-corrupted":
        data = bytearray(onnx_file.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
        onnx_file.write_bytes(bytes(data))
    elif kind in ("model-wrong-checksum", "model-wrong-signature"):
        meta = _meta_decoder.decode((folder / META).read_bytes())
        if kind == "model-wrong-checksum":
            entry = meta.files["model.onnx"]
            meta.files["model.onnx"] = FileEntry(sha256="0" * 64, bytes=entry.bytes)
        else:
            sig = meta.signatures["model.onnx"]
            renamed = [msgspec.structs.replace(t, name=f"{t.name}_v0") for t in sig.inputs]
            meta.signatures["model.onnx"] = msgspec.structs.replace(sig, inputs=renamed)
        (folder / META).write_bytes(msgspec.json.format(msgspec.json.encode(meta), indent=2))
    return announcement(reg, "ranker", version)


EXPECTED_REASON = {"model-truncated": "corrupt", "model-corrupted": "corrupt", "model-wrong-checksum": "corrupt",
                   "model-wrong-signature": "declares", "model-oversized": "larger than"}


def _registry_case(run: Run) -> dict:
    """Publishing into an unwritable registry, then into a full one: fails cleanly, v1 keeps serving."""
    from streamrec.registry import Registry
    from streamrec.stream.topics import MODEL_VERSIONS

    s = run.settings
    reg = Registry(s.registry_uri)
    _, exported = _export_ranker(run.logdir, seed=7)
    announced = TopicCounter(s, MODEL_VERSIONS)
    before = announced.count()
    checks, details = {}, {}
    ranker_dir = Path(reg.root) / "ranker"
    # Unwritable: the model's folder is read-only (chmod 555) for the publishing process.
    mode = ranker_dir.stat().st_mode
    ranker_dir.chmod(0o555)
    try:
        details["unwritable_error"] = _publish_in_child(s, exported.files, "v2", unprivileged=True)
    finally:
        ranker_dir.chmod(mode)
    # Full: the files do not fit in what may still be written (64 KiB).
    details["full_error"] = _publish_in_child(s, exported.files, "v3", fsize_limit=64 * 1024)
    checks["unwritable: publish refused with a RegistryError"] = details["unwritable_error"].startswith(
        "RegistryError: could not publish")
    checks["full: publish refused with a RegistryError"] = details["full_error"].startswith(
        "RegistryError: could not publish")
    checks["no version, no staging folder left"] = sorted(p.name for p in ranker_dir.iterdir()
                                                          if not p.name.endswith(".json")) == ["v1"]
    checks["nothing announced"] = announced.count() == before
    announced.close()
    time.sleep(2.0)
    status, ready = http_json(run.services["scorer"].port, "/readyz")
    checks["scorer still serves ranker@v1"] = ready.get("arms", {}).get("default") == ["ranker@v1"]
    return {"checks": checks, "details": details}


def _model_files_case(max_bytes: int):
    def inject(run: Run) -> dict:
        from streamrec.trainer.publish import announce

        s = run.settings
        scorer = run.services["scorer"]
        checks, reasons = {}, {}
        for k, kind in enumerate(MODEL_CASES[2:]):
            version = f"bad{k}"
            announce(s, _damage(s, run.logdir, kind, version, max_bytes))
            deadline = time.monotonic() + 60
            reason = None
            while time.monotonic() < deadline and reason is None:
                refused = http_json(scorer.port, "/readyz")[1].get("refused", [])
                reason = next((r for r in refused if r.startswith(f"ranker/{version}:")), None)
                time.sleep(0.3)
            reasons[kind] = reason
            checks[f"{kind}: refused with a clear reason"] = bool(reason) and EXPECTED_REASON[kind] in reason
        ready = http_json(scorer.port, "/readyz")[1]
        checks["scorer still serves ranker@v1"] = ready.get("arms", {}).get("default") == ["ranker@v1"]
        return {"checks": checks, "details": {"refusals": reasons}}
    return inject


def run_model_case(stack: FaultStack, case: str, events: int, rate: float, workdir: Path) -> CaseResult:
    """Worker + scorer serving ranker@v1 under the steady stream while a publish fails or bad files come."""
    max_bytes = 8 << 20
    # Redis is not what these cases break: a read slower than the scorer's 0.25 s on a loaded machine would
    # serve the trending snapshot for a second, and a short case fits in that second (2,837 of 2,837 answers
    # degraded once, 2026-12-07), leaving nothing ranked by ranker@v1 to check.
    run = Run(stack, case, events, rate, workdir, scorer_redis_timeout_s=2.0)
    try:
        _publish_ranker(run.settings, run.logdir, "v1")
        run.start("worker")
        run.start("scorer", STREAMREC_MODEL_MAX_BYTES=str(max_bytes))
        run.begin()
        run.publisher.wait_sent(len(run.records) // 3)
        inject = _registry_case if case == "registry" else _model_files_case(max_bytes)
        outcome = inject(run)
        run.finish()
        result = run.result(case, "registry unwritable (chmod) then full (RLIMIT_FSIZE) while publishing"
                            if case == "registry" else "model files truncated, corrupted, wrong checksum, "
                            "wrong input signature, oversized", checks=outcome["checks"], details=outcome["details"])
        a_models = result.details["models"]
        # Degraded answers (Redis slower than the scorer's timeout on a loaded machine) use no model.
        result.checks["no recommendation from a version other than ranker@v1"] = set(a_models) <= {"ranker@v1", "none"}
        result.checks["recommendations ranked by ranker@v1"] = a_models.get("ranker@v1", 0) > 0
        return result
    finally:
        run.close()


# --------------------------------------------------------------------------- the suite
def run_case(stack: FaultStack, case: str, events: int, rate: float, workdir: Path) -> CaseResult:
    if case in PIPELINE_CASES:
        return run_pipeline_case(stack, case, events, rate, workdir)
    if case == "learner-kill":
        return run_learner_case(stack, case, events, rate, workdir)
    if case in ("registry", "model-files"):
        return run_model_case(stack, case, events, rate, workdir)
    raise ValueError(f"unknown fault case {case!r}; choose from {', '.join(CASES)}")


def table(results: list[CaseResult]) -> Table:
    t = Table(title="fault suite: every acknowledged event applied once and answered once (from Kafka and Redis)")
    for col in ("case", "published / acked", "applied once", "answered once", "dlq", "lost", "duplicated",
                "downtime s", "recovery s", "result"):
        t.add_column(col, justify="left" if col in ("case", "result") else "right")
    for r in results:
        t.add_row(r.case, f"{r.published:,} / {r.acked:,}", f"{r.applied_once:,} / {r.valid:,}",
                  f"{r.answered_once:,} / {r.valid:,}", f"{r.dlq:,} / {r.malformed:,}", f"{r.lost:,}",
                  f"{r.duplicated:,}", f"{r.downtime_s:.1f}", "-" if r.recovery_s is None else f"{r.recovery_s:.1f}",
                  "[green]pass[/]" if r.passed else "[red]FAIL[/]: " + "; ".join(r.problems))
    return t


def add_arguments(p) -> None:
    p.add_argument("--events", type=int, default=None,
                   help=f"events per case (default STREAMREC_FAULT_EVENTS, else {DEFAULT_EVENTS})")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help=f"events/s the SDK publishes (default {DEFAULT_RATE})")
    p.add_argument("--topology", choices=["single", "replicated"], default="single",
                   help="one broker and one Redis (default), or three brokers and a Redis primary, replica and "
                        "Sentinels, with the cases of streamrec.harness.replicated")
    p.add_argument("--cases", nargs="+", default=None,
                   help=f"cases to run (default all of the topology's); single: {', '.join(CASES)}; replicated: "
                        "leader-kill, controller-kill, broker-freeze, rolling-restart, redis-primary-kill, "
                        "learner-kill")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the cases this many times over, on the same stack (a rare failure needs many runs)")
    p.add_argument("--out", default=None, help="output folder (default <home>/bench)")
    p.set_defaults(func=cmd_bench_faults)


def cmd_bench_faults(args) -> int:
    base: Settings = args.settings
    args.events = args.events or base.fault_events
    if args.events < 1000:
        console.print("[red]error:[/] --events: at least 1000 so a fault lands in the middle of the stream")
        return 2
    make_stack, cases, run_one = _topology(args.topology)
    unknown = [c for c in args.cases or () if c not in cases]
    if unknown:
        console.print(f"[red]error:[/] --cases: {', '.join(unknown)} not a case of the {args.topology} topology; "
                      f"choose from {', '.join(cases)}")
        return 2
    args.cases = args.cases or list(cases)
    out, run = output_folder(args), run_started()
    results: list[CaseResult] = []
    stamp = time.strftime('%Y%m%dT%H%M%S')
    logs = out / f"faults-{stamp}"  # each case's service logs and registry, kept for a post-mortem
    with tempfile.TemporaryDirectory(prefix="streamrec-faults-") as tmp:
        stack = make_stack(Path(tmp) / "stack", base)
        try:
            with console.status("starting the fault suite's own Kafka and Redis..."):
                stack.up()
            for case in args.cases * max(1, args.repeat):
                started = time.monotonic()
                with console.status(f"case {case}: {args.events:,} events at {args.rate:,.0f}/s..."):
                    r = run_one(stack, case, args.events, args.rate, logs)
                console.print(f"{case}: {'pass' if r.passed else 'FAIL ' + '; '.join(r.problems)} "
                              f"({time.monotonic() - started:.0f} s)")
                results.append(r)
        finally:
            stack.down()
    make_console(width=200).print(table(results))
    path = write_report(out, f"faults-{stamp}.json", {"topology": args.topology, "events": args.events,
                                                      "rate": args.rate,
                                                      "cases": [r.as_dict() for r in results]}, run)
    console.print(f"results: {path}; service logs: {logs}")
    return 0 if all(r.passed for r in results) else 1


def _topology(name: str):
    """(the stack's class, its cases, the function that runs one) for ``--topology``."""
    if name == "replicated":
        from streamrec.harness.replicated import CASES as REPLICATED, ReplicatedFaultStack, run_replicated_case

        return ReplicatedFaultStack, REPLICATED, run_replicated_case
    return FaultStack, CASES, run_case


def register(sub) -> None:
    """No command of its own: `streamrec bench faults` (see `register_bench`)."""


def register_bench(bench_sub) -> None:
    p = bench_sub.add_parser("faults", help="fault suite: broker, Redis and service failures under load",
                             description="Runs each fault case on a Kafka and Redis of its own while the SDK "
                                         "publishes a steady stream, then checks from Kafka and Redis that every "
                                         "acknowledged event was applied once and answered once (or dead-lettered).")
    add_arguments(p)
