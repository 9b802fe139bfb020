"""`streamrec bench features`: the worker against real Kafka and Redis.

Three measurements, each on topics and keys of its own:

1. throughput: N synthetic records (Zipf items, sessions, 5% duplicates, 1%
   malformed) are loaded into `events`, then the worker (1 and 2 processes)
   drains them; the rate is outputs (score requests + dead letters) per
   second between the first and the last output;
2. bare faust: an agent that only takes batches from the same topic, no
   work, as the ceiling the engine allows on this machine;
3. latency: events published at a fixed rate with their event time set at
   send; latency is the time until their score request is readable, which is
   after the features are committed to Redis (an upper bound of visibility).

Writes JSON and a PNG under ``<home>/bench/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from streamrec.console import make_console
from streamrec.harness.bench.baseline import materialise
from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.settings import Settings
from streamrec.stream import topics
from streamrec.stream.synthetic import synthetic_stream
from streamrec.stream.topics import create_topics, delete_topics

console = make_console(stderr=True)


def add_arguments(p) -> None:
    p.add_argument("--events", type=int, default=100_000, help="records for the throughput runs (default 100000)")
    p.add_argument("--rate", type=int, default=2000, help="offered events/s for the latency run (default 2000)")
    p.add_argument("--seconds", type=int, default=20, help="length of the latency run (default 20)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="worker process counts to run")
    p.add_argument("--engines", nargs="+", default=["faust", "confluent"], choices=["faust", "confluent"],
                   help="worker engines to measure (default both)")
    p.add_argument("--skip-bare", action="store_true", help="do not measure bare faust")
    p.add_argument("--baseline", metavar="REF",
                   help="also measure commit REF's worker (from git archive) on the same records, before each "
                        "throughput run of this code, and print the ratio")
    p.add_argument("--out", default=None, help="output folder (default <home>/bench)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- helpers
def fresh_namespace(settings: Settings, tag: str = "bench") -> Settings:
    """Settings with a topic and Redis prefix of their own, topics created: a benchmark run's sandbox."""
    run_id = uuid.uuid4().hex[:6]
    s = settings.replace(topic_prefix=f"{tag}{run_id}.", redis_prefix=f"{tag}{run_id}:")
    create_topics(s)
    return s


def drop_namespace(s: Settings) -> None:
    """Delete the topics and Redis keys of a `fresh_namespace`."""
    import redis

    delete_topics(s)
    from streamrec.security import redis_client

    r = redis_client(s)
    for batch in _chunks(r.scan_iter(match=f"{s.redis_prefix}*", count=5000), 5000):
        r.delete(*batch)


def _chunks(it, n):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


def _load(s: Settings, records) -> int:
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 20, "enable.idempotence": True,
                         "batch.num.messages": 10000, "partitioner": "murmur2_random", **topics.kafka_security(s)})
    topic = s.topic(topics.EVENTS)
    n = 0
    for r in records:
        while True:
            try:
                producer.produce(topic, r.value, key=r.key)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
    producer.flush(60)
    return n


def _outputs(s: Settings, consumer: Consumer) -> int:
    total = 0
    for name in (topics.SCORE_REQUESTS, topics.EVENTS_DLQ):
        topic = s.topic(name)
        for p in range(s.topic_partitions):
            low, high = topics.watermarks(consumer, TopicPartition(topic, p))
            total += high - low
    return total


def start_worker(s: Settings, processes: int = 1, port: int | None = None, engine: str = "faust",
                 code: Path | None = None) -> subprocess.Popen:
    """Start `streamrec worker` as a child process and wait until it is ready; ``code``: the folder of another
    commit's package to run instead of this one (`baseline.materialise`)."""
    port = port or _free_port()
    env = {**os.environ, **s.as_env(), "STREAMREC_WORKER_PORT": str(port), "STREAMREC_LOG_LEVEL": "WARNING"}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    # Its log into a file, not a pipe: a pipe nobody reads fills up and blocks the worker's next log line.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "worker", "--processes", str(processes),
                             "--engine", engine],
                            env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=code)
    deadline = time.monotonic() + 60
    ports = [port + i for i in range(processes)]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"worker exited: {log.read().decode(errors='replace')[-2000:]}")
        if all(_ready(p) for p in ports):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("worker did not become ready in 60 s")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_worker(proc: subprocess.Popen, timeout: float = 30) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class RssSampler(threading.Thread):
    """Peak resident memory of a process and its children."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                proc = psutil.Process(self.pid)
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self.done.wait(0.5)


# --------------------------------------------------------------------------- runs
def record_bytes(msg) -> int:
    """A Kafka record's payload: key, value and headers (before compression and batch overhead)."""
    return (len(msg.key() or b"") + len(msg.value() or b"")
            + sum(len(k) + len(v or b"") for k, v in (msg.headers() or [])))


def _redis_totals(client) -> dict:
    """Redis's counters since start: commands run (the scripts' inner calls included), the CPU time of the
    server process (commandstats would count a script's time twice: as the script's and its calls'), memory."""
    stats, cpu = client.info("commandstats"), client.info("cpu")
    return {"calls": sum(v["calls"] for v in stats.values()),
            "cpu_s": cpu["used_cpu_sys"] + cpu["used_cpu_user"], "used_memory": client.info("memory")["used_memory"]}


def per_event_costs(s: Settings, before: dict, events: int) -> dict:
    """What the worker cost per applied event: Redis commands, CPU and memory (a Redis that nothing else uses
    meanwhile), and the payload bytes of its input and output records."""
    from streamrec import security

    client = security.redis_client(s)
    after = _redis_totals(client)
    client.close()
    sizes = {name: [record_bytes(m) for m in topics.read_all(s, name)]
             for name in (topics.EVENTS, topics.SCORE_REQUESTS)}
    return {"redis_commands": round((after["calls"] - before["calls"]) / events, 1),
            "redis_cpu_us": round((after["cpu_s"] - before["cpu_s"]) * 1e6 / events, 1),
            "redis_bytes": round((after["used_memory"] - before["used_memory"]) / events),
            "kafka_bytes": {name: round(sum(v) / len(v)) if v else 0 for name, v in sizes.items()}}


def throughput(settings: Settings, n: int, processes: int, engine: str = "faust", code: Path | None = None) -> dict:
    from streamrec import security

    s = fresh_namespace(settings)
    try:
        records = list(synthetic_stream(n, seed=processes))
        _load(s, records)
        client = security.redis_client(s)
        redis_before = _redis_totals(client)
        client.close()
        expected = sum(1 for r in records if r.kind != "duplicate")
        consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "bench-watch",
                             **topics.kafka_security(s)})
        proc = start_worker(s, processes, engine=engine, code=code)
        rss = RssSampler(proc.pid)
        rss.start()
        first = None
        seen = 0
        deadline = time.monotonic() + max(120, n / 500)
        while time.monotonic() < deadline:
            seen = _outputs(s, consumer)
            now = time.perf_counter()
            if seen and first is None:
                first, first_seen = now, seen
            if seen >= expected:
                break
            time.sleep(0.1)
        last = time.perf_counter()
        rss.done.set()
        stop_worker(proc)
        consumer.close()
        rate = (seen - first_seen) / (last - first) if first and last > first else 0.0
        applied = sum(1 for r in records if r.kind == "valid")
        return {"engine": engine, "processes": processes, "records": n, "outputs": seen, "expected_outputs": expected,
                "events_per_s": round(rate), "peak_rss_mb": round(rss.peak / 2**20, 1),
                "per_event": per_event_costs(s, redis_before, applied)}
    finally:
        drop_namespace(s)


BARE_FAUST = r"""
import sys, time, faust
bootstrap, topic, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
app = faust.App(group, broker=f"kafka://{bootstrap}", web_enabled=False, consumer_auto_offset_reset="earliest",
                datadir="/tmp/streamrec-bare-faust")
t = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
state = {"count": 0, "first": None}
@app.agent(t)
async def bare(stream):
    async for batch in stream.take(2000, within=0.05):
        if state["first"] is None:
            state["first"] = time.perf_counter()
        state["count"] += len(batch)
        if state["count"] >= n:
            print(f"RESULT {state['count'] / (time.perf_counter() - state['first']):.0f}", flush=True)
            import os, signal
            os.kill(os.getpid(), signal.SIGTERM)  # stop from outside the agent
sys.argv = [sys.argv[0], "worker", "-l", "warn"]
app.main()
"""


def bare_faust(settings: Settings, n: int) -> dict:
    s = fresh_namespace(settings)
    try:
        _load(s, synthetic_stream(n, seed=7))
        proc = subprocess.run([sys.executable, "-c", BARE_FAUST, s.kafka_bootstrap, s.topic(topics.EVENTS),
                               f"bare-{uuid.uuid4().hex[:6]}", str(n)],
                              capture_output=True, text=True, timeout=max(180, n / 500))
        # faust routes print() through its logger, so look for the marker anywhere in the output.
        found = re.findall(r"RESULT (\d+)", proc.stdout + proc.stderr)
        return {"records": n, "events_per_s": int(found[0]) if found else None}
    finally:
        drop_namespace(s)


def latency(settings: Settings, rate: int, seconds: int, engine: str = "faust") -> dict:
    # The paced producer and the reader share this process: without a short GIL switch
    # interval the reader would wait up to 5 ms per hand-over and inflate every figure.
    sys.setswitchinterval(0.0005)
    s = fresh_namespace(settings)
    lat: list[tuple[float, float]] = []
    try:
        proc = start_worker(s, 1, engine=engine)
        consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                             "fetch.wait.max.ms": 5, **topics.kafka_security(s)})
        # Assigned, not subscribed: a group join would hold the first seconds of answers back.
        consumer.assign([TopicPartition(s.topic(topics.SCORE_REQUESTS), p, 0) for p in range(s.topic_partitions)])
        stop = threading.Event()
        warm: set[str] = set()
        t0 = time.time()

        def read():
            while not stop.is_set():
                # consume() waits for all 1,000 or the timeout: keep it short or it adds latency.
                for m in consumer.consume(1000, timeout=0.002):
                    if not m.error():
                        now = time.time()
                        req = json.loads(m.value())
                        if req["event_id"].startswith("warm-"):
                            warm.add(req["event_id"])
                        else:
                            lat.append((now - t0, now * 1000 - req["ts"]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 1, "enable.idempotence": True,
                             "partitioner": "murmur2_random", **topics.kafka_security(s)})
        total = rate * seconds
        records = synthetic_stream(total, seed=11, duplicate_rate=0, malformed_rate=0)
        topic = s.topic(topics.EVENTS)
        # Warm up until events come back promptly: the group has settled and faust fetches.
        deadline = time.monotonic() + 60
        for k in range(10**6):
            event_id = f"warm-{k}"
            producer.produce(topic, json.dumps({"event_id": event_id, "type": "view", "user_id": f"w{k}",
                                                "item_id": "w", "ts": int(time.time() * 1000)}).encode(),
                             key=f"w{k}")
            producer.flush(5)
            sent_at = time.monotonic()
            while event_id not in warm and time.monotonic() - sent_at < 1.0:
                time.sleep(0.005)
            if event_id in warm and time.monotonic() - sent_at < 0.2 or time.monotonic() > deadline:
                break
        # Encode up front and send in 5 ms ticks, so the load generator leaves the CPU to the worker.
        templates = []
        for r in records:
            body = json.dumps({k: v for k, v in r.event.items() if k != "ts"})
            templates.append((r.key, (body[:-1] + ', "ts": ').encode(), b"}"))
        t0 = time.time()
        start = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            now_ms = str(int(time.time() * 1000)).encode()
            for key, head, tail in templates[sent:due]:
                producer.produce(topic, head + now_ms + tail, key=key)
            sent = due
            producer.poll(0)
            time.sleep(0.005)
        producer.flush(30)
        deadline = time.monotonic() + 30
        while len(lat) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        reader.join()
        consumer.close()
        stop_worker(proc)
        values = np.array([v for _, v in lat]) if lat else np.array([np.nan])
        return {"engine": engine, "rate": rate, "seconds": seconds, "sent": total, "answered": len(lat),
                "p50_ms": round(float(np.percentile(values, 50)), 1),
                "p95_ms": round(float(np.percentile(values, 95)), 1),
                "p99_ms": round(float(np.percentile(values, 99)), 1), "series": lat}
    finally:
        drop_namespace(s)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for lat in result["latency"]:
        series = lat.pop("series")
        if series:
            t, v = zip(*series)
            a.plot(t, v, ".", markersize=1, alpha=0.5, label=lat["engine"])
            b.hist(v, bins=100, log=True, histtype="step", label=f"{lat['engine']}: p50 {lat['p50_ms']}, "
                                                               f"p99 {lat['p99_ms']} ms")
    rate = result["latency"][0]["rate"] if result["latency"] else 0
    a.set(title=f"event -> features applied and announced, {rate} ev/s", xlabel="s", ylabel="ms", yscale="log")
    b.set(title="latency distribution", xlabel="ms")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args) -> int:
    s = args.settings
    out, started = output_folder(args), run_started()
    result: dict = {"throughput": [], "latency": []}
    site = materialise(args.baseline) if args.baseline else None
    for engine in args.engines:
        for p in args.processes:
            base = None
            if site:
                with console.status(f"throughput of {args.baseline}, {engine}, {p} process(es)..."):
                    base = throughput(s, args.events, p, engine, code=site)
            with console.status(f"throughput, {engine}, {p} worker process(es), {args.events} records..."):
                r = throughput(s, args.events, p, engine)
            if base:
                r["baseline"] = {"ref": args.baseline, **base}
                r["ratio_to_baseline"] = round(r["events_per_s"] / max(base["events_per_s"], 1), 2)
                console.print(f"{args.baseline} ({engine}, {p} process(es)): {base['events_per_s']} events/s, "
                              f"{base['per_event']['redis_cpu_us']} µs of Redis CPU per event; "
                              f"this code / {args.baseline}: x{r['ratio_to_baseline']}")
            cost = r["per_event"]
            console.print(f"throughput ({engine}, {p} process(es)): {r['events_per_s']} events/s, "
                          f"peak RSS {r['peak_rss_mb']} MB; per event: {cost['redis_commands']} Redis commands, "
                          f"{cost['redis_cpu_us']} µs of Redis CPU, {cost['redis_bytes']} B of Redis memory, "
                          f"Kafka payload {cost['kafka_bytes']} B")
            result["throughput"].append(r)
    if not args.skip_bare:
        with console.status("bare faust, same records, no work..."):
            result["bare_faust"] = bare_faust(s, args.events)
        console.print(f"bare faust: {result['bare_faust']['events_per_s']} events/s")
        one = next((r for r in result["throughput"] if r["processes"] == 1 and r["engine"] == "faust"), None)
        if one and result["bare_faust"]["events_per_s"]:
            result["worker_vs_bare_faust"] = round(one["events_per_s"] / result["bare_faust"]["events_per_s"], 3)
    for engine in args.engines:
        with console.status(f"latency, {engine}, at {args.rate} events/s for {args.seconds} s..."):
            lat = latency(s, args.rate, args.seconds, engine)
        console.print(f"latency ({engine}) at {args.rate}/s: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
                      f"p99 {lat['p99_ms']} ms ({lat['answered']}/{lat['sent']} answered)")
        result["latency"].append(lat)
    _plot(result, out / "features.png")
    write_report(out, "features.json", result, started)
    console.print(f"wrote {out / 'features.json'} and {out / 'features.png'}")
    print(json.dumps(result, indent=2))
    return 0
