"""`streamrec bench serve`: the scorer through real Kafka and Redis, and its core alone.

The measurements:

1. core: the scoring engine without Kafka or Redis (features from memory),
   batches of ``--batch`` requests, ``--candidates`` per request, on the
   device of ``STREAMREC_DEVICE``: requests/s and the time per stage. This
   is the one to run on a GPU (``--candidates 1000``).
2. throughput: features written to Redis by the worker's own feature store,
   then ``--requests`` score requests loaded at once into `score-requests`;
   a `streamrec serve` subprocess answers them; the rate is recommendations
   per second between the first produced request and the last answer.
3. latency: score requests produced at ``--rate`` per second for
   ``--seconds`` with their event time set at send; latency is the time until
   the answering recommendation is read back from `recommendations`. With
   ``--with-worker``, also events at the same rate through a real worker:
   event time -> recommendation, the whole path an app sees.
4. swaps: with ``--swaps N`` (default 5), another ``--swap-seconds`` at the same
   rate while N fresh versions of both models are announced at even intervals;
   latency of the requests sent while a version loads and swaps in (and 1 s
   after) against the others of the same run, plus any request failed,
   degraded or unanswered: DESIGN's swap target.
5. pull: ``GET /v1/recommendations/{user_id}`` over HTTP at ``--pull-rate``
   per second for ``--seconds``, for users whose features are in Redis, from
   ``--pull-connections`` keep-alive clients; latency runs from the moment a
   request was due to its last byte read (a slow answer delays the next
   request of its connection, and that wait counts), and the scorer process's
   CPU time per request.

Models are the current versions of ``sasrec`` and ``ranker`` in
``--registry`` (default STREAMREC_REGISTRY_URI), announced on the benchmark's
own `model-versions` topic; with none there, the scorer runs without models
(trending and co-visitation) and the JSON says so. Writes JSON and a PNG
under ``<home>/bench/``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from streamrec.console import make_console
from streamrec.harness.bench.baseline import materialise, run_core
from streamrec.harness.bench.core import bench_config, core
from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.registry import Announcement, Registry
from streamrec.runtime import tune_gc
from streamrec.serving.config import ScorerConfig
from streamrec.settings import Settings
from streamrec.stream import topics
from streamrec.stream.schemas import ScoreRequest, encode
from streamrec.harness.bench.features import drop_namespace, fresh_namespace, record_bytes

console = make_console(stderr=True)


# --------------------------------------------------------------------------- through Kafka
def _features(s: Settings, events: int) -> list[tuple[str, str, str]]:
    """Apply synthetic events with the worker's feature store; returns (user, session, item) triples."""
    from streamrec.stream.feature_store import RedisFeatureStore
    from streamrec.stream.features import DecodedEvent, SourceEvent
    from streamrec.stream.schemas import decode_event
    from streamrec.stream.synthetic import synthetic_stream

    store = RedisFeatureStore(s)
    triples = []
    batch = []
    for k, r in enumerate(synthetic_stream(events, users=2000, items=1000, seed=3, duplicate_rate=0,
                                           malformed_rate=0)):
        src = SourceEvent(s.topic(topics.EVENTS), 0, k, r.key.encode(), r.value, int(time.time() * 1000))
        batch.append(DecodedEvent(src, decode_event(r.value)))
        if len(batch) == 2000:
            triples += [(d.event.user_id, o.session_id, d.event.item_id) for d, o in zip(batch, store.apply(batch))]
            batch = []
    if batch:
        triples += [(d.event.user_id, o.session_id, d.event.item_id) for d, o in zip(batch, store.apply(batch))]
    store.close()
    return triples


def _start_scorer(s: Settings, registry_uri: str, cfg: ScorerConfig, port: int) -> subprocess.Popen:
    env = {**os.environ, **s.as_env(), "STREAMREC_SCORER_PORT": str(port), "STREAMREC_LOG_LEVEL": "WARNING",
           "STREAMREC_REGISTRY_URI": registry_uri,
           "STREAMREC_BENCH_SCORER": json.dumps({"max_candidates": cfg.max_candidates,
                                                 "seq_candidates": cfg.seq_candidates,
                                                 "covis_candidates": cfg.covis_candidates,
                                                 "trending_candidates": cfg.trending_candidates,
                                                 "batch_max": cfg.batch_max})}
    code = ("import json, os, sys\n"
            "from streamrec.settings import Settings\n"
            "from streamrec.serving.config import ScorerConfig\n"
            "from streamrec.serving.scorer import Scorer\n"
            "cfg = json.loads(os.environ.pop('STREAMREC_BENCH_SCORER'))\n"
            "sys.exit(Scorer(Settings.from_env(), ScorerConfig(**cfg)).run())\n")
    log = tempfile.TemporaryFile()  # not a pipe: one nobody reads fills up and blocks the scorer's logging
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"scorer exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("scorer did not become ready in 120 s")


class _Reader:
    """Reads `recommendations` from the end, recording (seconds since start, latency ms) per answer."""

    def __init__(self, s: Settings):
        topic = s.topic(topics.RECOMMENDATIONS)
        self.consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"sb-{uuid.uuid4().hex[:6]}",
                                  "fetch.wait.max.ms": 5, "enable.auto.commit": False, **topics.kafka_security(s)})
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, self.consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in parts])
        self.series: list[tuple[float, float]] = []
        self.bytes = 0
        """Payload bytes of the recommendations read (key, value, headers)."""
        self.last = 0.0
        self.t0 = time.time()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            # consume() returns only when it has num_messages or the timeout passed: a short
            # timeout keeps that wait out of the measured latency.
            for m in self.consumer.consume(1000, timeout=0.002):
                if m.error():
                    continue
                now = time.time()
                self.bytes += record_bytes(m)
                ts = json.loads(m.value())["event_ts"]
                self.series.append((now - self.t0, now * 1000 - ts))
                self.last = now

    def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.series) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.thread.join()
        self.consumer.close()


def _producer(s: Settings) -> Producer:
    return Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 1, "enable.idempotence": True,
                     "partitioner": "murmur2_random", **topics.kafka_security(s)})


def _paced(producer: Producer, topic: str, rate: int, total: int, request, first: int = 0, on_tick=None) -> None:
    """Produce ``total`` score requests at ``rate`` per second (``request(k)`` -> key, value), numbered from
    ``first``; ``on_tick(k)`` runs every 500 requests."""
    t0 = time.perf_counter()
    for k in range(total):
        due = t0 + k / rate
        while (wait := due - time.perf_counter()) > 0:
            producer.poll(min(wait, 0.002))
        key, value = request(first + k)
        producer.produce(topic, value, key=key)
        if on_tick and k % 500 == 0:
            on_tick(k)
    producer.flush(30)


def fresh_versions(registry_uri: str, anns: list[Announcement], copies: int, root: Path) -> list[list[Announcement]]:
    """``copies`` new versions of each announced model in a scratch registry at ``root``: the same files under
    new version labels, so the scorer loads, verifies and warms each one up as it would a trained version."""
    source, scratch = Registry(registry_uri), Registry(root)
    rounds: list[list[Announcement]] = [[] for _ in range(copies)]
    with tempfile.TemporaryDirectory(prefix="streamrec-swap-") as tmp:
        for ann in anns:
            meta = source.meta(ann.name, ann.version)
            folder = Path(source.location(ann.name, ann.version)) if source.local else Path(tmp, ann.name)
            if not source.local:
                source.fs.get(source.location(ann.name, ann.version).rstrip("/") + "/", str(folder), recursive=True)
            for k in range(copies):
                version = f"{ann.version[:32]}-swap{k}"
                scratch.publish(ann.name, {f: folder / f for f in meta.files}, kind=meta.kind, version=version,
                                parent=ann.version, metrics=meta.metrics, signatures=meta.signatures,
                                opset=meta.opset, hashing=meta.hashing, extra=meta.extra)
                rounds[k].append(Announcement(name=ann.name, version=version, uri=scratch.location(ann.name, version),
                                              sha256=scratch.digest(ann.name, version), metrics=meta.metrics))
    return rounds


def split_by_windows(series: list[tuple[float, float]], windows: list[tuple[float, float]]) -> tuple[list, list]:
    """Latencies of the answers whose request was sent inside one of ``windows`` (seconds, the reader's clock)
    and of the others. ``series`` holds (seconds at receipt, latency ms), so a request was sent at
    receipt - latency.

    >>> split_by_windows([(1.0, 100.0), (2.5, 100.0), (5.0, 10.0)], [(2.0, 3.0)])
    ([100.0], [100.0, 10.0])
    """
    inside, outside = [], []
    for received, ms in series:
        sent = received - ms / 1000
        (inside if any(a <= sent <= b for a, b in windows) else outside).append(ms)
    return inside, outside


def _percentiles(values: list[float]) -> dict:
    v = np.array(values) if values else np.array([np.nan])
    return {"n": len(values), **{f"p{q}_ms": round(float(np.percentile(v, q)), 1) for q in (50, 95, 99)}}


def during_swaps(s: Settings, producer: Producer, port: int, rounds: list[list[Announcement]], rate: int,
                 seconds: int, request, first: int) -> dict:
    """Score requests at ``rate`` for ``seconds`` while each round of versions is announced, at even
    intervals. A swap window runs from the announcement until the scorer's swap counter shows every model of
    the round swapped in, plus 1 s for the requests queued meanwhile to drain."""
    from streamrec.harness.loop import metric_sum, metrics

    def scorer(name: str) -> float:
        return metric_sum(metrics(port), name)

    before = {m: scorer(m) for m in ("streamrec_scorer_failed_requests_total", "streamrec_scorer_degraded_total",
                                     "streamrec_scorer_refused_versions_total")}
    reader = _Reader(s)
    windows: list[tuple[float, float]] = []
    loads: list[float] = []
    stop = threading.Event()
    topic = s.topic(topics.MODEL_VERSIONS)

    def announce() -> None:
        period = seconds / len(rounds)
        start = time.time()
        for k, round_ in enumerate(rounds):
            if stop.wait(max(0.0, start + (k + 0.3) * period - time.time())):
                return
            swapped = scorer("streamrec_scorer_swaps_total")
            t_ann = time.time()
            for ann in round_:
                producer.produce(topic, ann.encode(), key=ann.name.encode())
            producer.flush(10)
            while not (done := scorer("streamrec_scorer_swaps_total") >= swapped + len(round_)) \
                    and time.time() < t_ann + 30:
                time.sleep(0.05)
            if done:
                loads.append(round(time.time() - t_ann, 2))
            # a round that never swapped in still counts as a window: its requests are not steady
            windows.append((t_ann - reader.t0, time.time() + 1.0 - reader.t0))

    thread = threading.Thread(target=announce, name="announce", daemon=True)
    with console.status(f"swaps: {rate} requests/s for {seconds} s, {len(rounds)} rounds of new versions..."):
        thread.start()
        _paced(producer, s.topic(topics.SCORE_REQUESTS), rate, rate * seconds, request, first)
        stop.set()
        thread.join()
        reader.wait(rate * seconds, 60)
    reader.close()
    inside, outside = split_by_windows(reader.series, windows)
    during, steady = _percentiles(inside), _percentiles(outside)
    after = {m: scorer(m) - v for m, v in before.items()}
    return {"rate": rate, "seconds": seconds, "sent": rate * seconds, "answered": len(reader.series),
            "rounds": len(rounds), "models_per_round": len(rounds[0]), "swapped": len(loads),
            "announce_to_swapped_s": loads, "windows_s": [[round(a, 2), round(b, 2)] for a, b in windows],
            "during_swaps": during, "steady": steady,
            "p99_ratio": round(during["p99_ms"] / steady["p99_ms"], 2) if inside and outside else None,
            "failed": after["streamrec_scorer_failed_requests_total"],
            "degraded": after["streamrec_scorer_degraded_total"],
            "refused_versions": after["streamrec_scorer_refused_versions_total"], "series": reader.series}


def _summary(reader: "_Reader", rate: int, seconds: int, total: int) -> dict:
    p = _percentiles([v for _, v in reader.series])
    return {"rate": rate, "seconds": seconds, "sent": total, "answered": len(reader.series),
            "bytes_per_recommendation": round(reader.bytes / len(reader.series)) if reader.series else 0,
            "p50_ms": p["p50_ms"], "p95_ms": p["p95_ms"], "p99_ms": p["p99_ms"], "series": reader.series}


def _with_worker(s: Settings, rate: int, seconds: int) -> dict:
    """Events (not score requests) at ``rate``: event time -> recommendation, through a real worker."""
    from streamrec.harness.bench.features import start_worker, stop_worker
    from streamrec.stream.synthetic import synthetic_stream

    worker = start_worker(s, 1)
    try:
        producer = _producer(s)
        reader = _Reader(s)
        total = rate * seconds
        topic = s.topic(topics.EVENTS)
        warm = rate * 2
        records = synthetic_stream(total + warm, users=2000, items=1000, seed=5, duplicate_rate=0, malformed_rate=0)
        with console.status("warming up the worker (its group join and first fetches are not measured)..."):
            for _ in range(warm):
                r = next(records)
                producer.produce(topic, json.dumps(dict(r.event, ts=int(time.time() * 1000))).encode(), key=r.key)
            producer.flush(30)
            reader.wait(warm, 60)
            time.sleep(1.0)
            reader.series.clear()
        with console.status(f"event -> recommendation through the worker: {rate} events/s for {seconds} s..."):
            t0 = time.perf_counter()
            for k, r in enumerate(records):
                due = t0 + k / rate
                while (wait := due - time.perf_counter()) > 0:
                    producer.poll(min(wait, 0.002))
                ev = dict(r.event, ts=int(time.time() * 1000))
                producer.produce(topic, json.dumps(ev).encode(), key=r.key)
            producer.flush(30)
            reader.wait(total, 60)
        out = _summary(reader, rate, seconds, total)
        out.pop("series")
        reader.close()
        return out
    finally:
        stop_worker(worker)


def _scorer_on_features(s: Settings, registry_uri: str, cfg: ScorerConfig, events: int):
    """Features of ``events`` events in Redis, the registry's models announced, a scorer started on them;
    returns (the events' (user, session, item) triples, the announcements, the producer, the scorer's
    process, its HTTP port)."""
    from streamrec.harness.bench.features import _free_port

    with console.status(f"writing features of {events} events to Redis..."):
        triples = _features(s, events)
    anns = Registry(registry_uri).announcements()
    producer = _producer(s)
    for ann in anns:
        producer.produce(s.topic(topics.MODEL_VERSIONS), ann.encode(), key=ann.name.encode())
    producer.flush(10)
    with console.status("starting the scorer..."):
        port = _free_port()
        proc = _start_scorer(s, registry_uri, cfg, port)
    return triples, anns, producer, proc, port


def _stop_scorer(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then kill -9 after 30 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def through_kafka(settings: Settings, registry_uri: str, cfg: ScorerConfig, events: int, n: int, rate: int,
                  seconds: int, with_worker: bool = False, swaps: int = 0, swap_seconds: int = 30) -> dict:
    import psutil

    sys.setswitchinterval(0.0005)  # the paced producer and the reader share this process
    tune_gc(settings.gc_gen0)  # the reader's own collector pauses would count as the scorer's latency
    s = fresh_namespace(settings, "sbench")
    proc = None
    try:
        triples, anns, producer, proc, port = _scorer_on_features(s, registry_uri, cfg, events)
        rss = psutil.Process(proc.pid)
        topic = s.topic(topics.SCORE_REQUESTS)
        rng = np.random.default_rng(0)

        def request(k: int) -> tuple[bytes, bytes]:
            user, session, item = triples[int(rng.integers(len(triples)))]
            r = ScoreRequest(event_id=f"r{k}", user_id=user, session_id=session, item_id=item, type="view",
                             ts=int(time.time() * 1000), feature_version=1)
            return user.encode(), encode(r)

        # Throughput: everything at once.
        reader = _Reader(s)
        with console.status(f"throughput: {n} score requests..."):
            start = time.time()
            for k in range(n):
                key, value = request(k)
                while True:
                    try:
                        producer.produce(topic, value, key=key)
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.flush(60)
            reader.wait(n, 120)
        answered = len(reader.series)
        thr = {"requests": n, "answered": answered,
               "requests_per_s": round(answered / max(reader.last - start, 1e-9)) if answered else 0}
        reader.close()
        # Latency at a fixed offered rate.
        reader = _Reader(s)
        peak_rss = 0

        def sample_rss(_k: int) -> None:
            nonlocal peak_rss
            peak_rss = max(peak_rss, rss.memory_info().rss)

        with console.status(f"latency: {rate} requests/s for {seconds} s..."):
            total = rate * seconds
            _paced(producer, topic, rate, total, request, n, sample_rss)
            reader.wait(total, 60)
        lat = _summary(reader, rate, seconds, total)
        reader.close()
        result = {"throughput": thr, "latency": lat, "models": [f"{a.name}@{a.version}" for a in anns],
                  "scorer_peak_rss_mb": round(peak_rss / 2**20)}
        if swaps and anns:
            with tempfile.TemporaryDirectory(prefix="streamrec-swap-registry-") as scratch:
                with console.status(f"publishing {swaps} fresh versions of each model to a scratch registry..."):
                    rounds = fresh_versions(registry_uri, anns, swaps, Path(scratch))
                result["swaps"] = during_swaps(s, producer, port, rounds, rate, swap_seconds, request, n + total)
        if with_worker:
            result["latency_with_worker"] = _with_worker(s, rate, seconds)
        return result
    finally:
        _stop_scorer(proc)
        drop_namespace(s)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swaps = result.get("kafka", {}).get("swaps")
    fig, axes = plt.subplots(1, 3 if swaps else 2, figsize=(16 if swaps else 11, 4))
    a, b = axes[0], axes[1]
    if swaps:
        c = axes[2]
        series = swaps.pop("series")
        if series:
            t, v = zip(*series)
            c.plot(t, v, ",", alpha=0.6)
            c.set_yscale("log")
        for k, (start, end) in enumerate(swaps["windows_s"]):
            c.axvspan(start, end, color="orange", alpha=0.25, lw=0, label="loading and swapping in" if k == 0 else None)
        c.set(title=f"during {swaps['swapped']} swaps: p99 {swaps['during_swaps']['p99_ms']} ms vs "
                    f"{swaps['steady']['p99_ms']} ms", xlabel="s", ylabel="ms")
        c.legend(loc="upper right")
    lat = result.get("kafka", {}).get("latency")
    if lat:
        series = lat.pop("series")
        if series:
            t, v = zip(*series)
            a.plot(t, v, ",", alpha=0.6)
            a.set_yscale("log")
            b.hist(v, bins=100, log=True)
        a.set(title=f"score request -> recommendation, {lat['rate']}/s", xlabel="s", ylabel="ms")
        b.set(title="latency distribution", xlabel="ms")
        for q, colour in (("p50_ms", "orange"), ("p99_ms", "red")):
            b.axvline(lat[q], color=colour, label=q)
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pull_api(settings: Settings, registry_uri: str, cfg: ScorerConfig, events: int, rate: int, seconds: int,
             connections: int = 4) -> dict:
    """The scorer's pull API: ``rate`` GETs per second for ``seconds`` over ``connections`` keep-alive
    connections (a client reconnects when the server closes); latency from each request's due time."""
    s = fresh_namespace(settings, "spull")
    proc = None
    try:
        triples, anns, producer, proc, port = _scorer_on_features(s, registry_uri, cfg, events)
        users = sorted({user for user, _, _ in triples})
        rng = np.random.default_rng(0)
        total = rate * seconds
        warm = min(total, rate * 2)
        paths = [f"/v1/recommendations/{users[int(k)]}" for k in rng.integers(len(users), size=warm + total)]
        latencies: list[list[float]] = [[] for _ in range(connections)]
        failures: list[str] = []

        def client(c: int, first: int, n: int, t0: float, record: bool) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for k in range(c, n, connections):
                due = t0 + k / rate
                while (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
                try:
                    conn.request("GET", paths[first + k])
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 200:
                        failures.append(f"{response.status} {body[:200]!r}")
                    if response.will_close:
                        conn.close()
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(repr(exc))
                    conn.close()
                if record:
                    latencies[c].append((time.perf_counter() - due) * 1000)
            conn.close()

        def load(first: int, n: int, record: bool) -> float:
            t0 = time.perf_counter() + 0.05
            threads = [threading.Thread(target=client, args=(c, first, n, t0, record), daemon=True)
                       for c in range(connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.perf_counter() - t0

        with console.status(f"pull API: warming up, {warm} requests..."):
            load(0, warm, False)
        failures.clear()
        import psutil

        scorer = psutil.Process(proc.pid)
        cpu0 = sum(scorer.cpu_times()[:2])
        with console.status(f"pull API: {rate} requests/s for {seconds} s over {connections} connections..."):
            took = load(warm, total, True)
        cpu_ms = (sum(scorer.cpu_times()[:2]) - cpu0) * 1000
        values = [v for per in latencies for v in per]
        p = _percentiles(values)
        return {"rate": rate, "seconds": seconds, "connections": connections, "sent": total,
                "answered_200": total - len(failures), "failures": failures[:5],
                "achieved_per_s": round(total / took, 1), "p50_ms": p["p50_ms"], "p95_ms": p["p95_ms"],
                "p99_ms": p["p99_ms"], "max_ms": round(max(values), 1) if values else None,
                "scorer_cpu_ms_per_request": round(cpu_ms / total, 2),
                "models": [f"{a.name}@{a.version}" for a in anns]}
    finally:
        _stop_scorer(proc)
        drop_namespace(s)


def core_runs(s: Settings, registry_uri: str, candidates: list[int], batch: int, seconds: float,
              baseline: str | None) -> dict:
    """The core at each number of candidates; with ``baseline``, that commit's core alternated with this
    code's (baseline, current, baseline, current), and the ratio of the medians."""
    site = materialise(baseline) if baseline else None
    out: dict = {"baseline": baseline, "runs": {}}
    for n in candidates:
        runs: dict[str, list[dict]] = {"current": [], "baseline": []}
        for _ in range(2 if site else 1):
            if site:
                with console.status(f"core of {baseline}: {n} candidates..."):
                    runs["baseline"].append(run_core(site, registry_uri, n, batch, seconds))
            with console.status(f"core: {n} candidates, batches of {batch}..."):
                runs["current"].append(core(s, registry_uri, n, batch, seconds))
        out["runs"][n] = summary = _core_summary(runs)
        console.print(f"core: {summary['requests_per_s']} requests/s at {n} candidates "
                      f"({runs['current'][0]['providers'] or 'no models'}); us/request: "
                      f"{summary['us_per_request_in_onnx']} in ONNX Runtime, "
                      f"{summary['us_per_request_outside_onnx']} outside, by stage {summary['us_per_request_by_stage']}"
                      + (f"; {baseline}: {summary['baseline_requests_per_s']} requests/s, "
                         f"ratio {summary['ratio_to_baseline']}" if site else ""))
    return out


def _core_summary(runs: dict[str, list[dict]]) -> dict:
    """Medians of the current runs (the last run's stage split), and the ratio to the baseline's median."""
    current, base = runs["current"], runs["baseline"]
    out = {**current[-1], "requests_per_s": statistics.median(r["requests_per_s"] for r in current),
           "runs_requests_per_s": [r["requests_per_s"] for r in current]}
    if base:
        out["baseline_requests_per_s"] = statistics.median(r["requests_per_s"] for r in base)
        out["baseline_runs"] = base
        out["ratio_to_baseline"] = round(out["requests_per_s"] / out["baseline_requests_per_s"], 2)
    return out


def run(args) -> int:
    s = args.settings
    registry_uri = args.registry or s.registry_uri
    out, started = output_folder(args), run_started()
    result: dict = {"device": s.device}
    if args.only in (None, "core"):
        result["core"] = core_runs(s, registry_uri, args.core_candidates or [args.candidates], args.batch,
                                   args.core_seconds, args.baseline)
    if args.only in (None, "kafka"):
        cfg = bench_config(args.candidates, args.batch)
        result["kafka"] = through_kafka(s, registry_uri, cfg, args.events, args.requests, args.rate, args.seconds,
                                        args.with_worker, args.swaps, args.swap_seconds)
        k = result["kafka"]
        lat = k["latency"]
        console.print(f"through Kafka: {k['throughput']['requests_per_s']} requests/s "
                      f"({k['throughput']['answered']}/{k['throughput']['requests']}); at {lat['rate']}/s "
                      f"p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms "
                      f"({lat['answered']}/{lat['sent']}); {lat['bytes_per_recommendation']} B per recommendation; "
                      f"scorer RSS {k['scorer_peak_rss_mb']} MB")
        if "swaps" in k:
            w = k["swaps"]
            console.print(f"during {w['swapped']} of {w['rounds']} swaps of {w['models_per_round']} models at "
                          f"{w['rate']}/s: p99 {w['during_swaps']['p99_ms']} ms against {w['steady']['p99_ms']} ms "
                          f"steady (x{w['p99_ratio']}); announce -> swapped {w['announce_to_swapped_s']} s; "
                          f"{w['answered']}/{w['sent']} answered, {w['failed']:.0f} failed, {w['degraded']:.0f} "
                          f"degraded, {w['refused_versions']:.0f} versions refused")
        elif args.swaps:
            console.print("swaps: skipped, the registry has no models to swap")
        if "latency_with_worker" in k:
            w = k["latency_with_worker"]
            console.print(f"event -> recommendation through the worker at {w['rate']}/s: p50 {w['p50_ms']} ms, "
                          f"p95 {w['p95_ms']} ms, p99 {w['p99_ms']} ms ({w['answered']}/{w['sent']})")
    if args.only in (None, "pull"):
        cfg = bench_config(args.candidates, args.batch)
        result["pull"] = pull_api(s, registry_uri, cfg, args.events, args.pull_rate, args.seconds,
                                  args.pull_connections)
        p = result["pull"]
        console.print(f"pull API at {p['rate']}/s over {p['connections']} connections: p50 {p['p50_ms']} ms, "
                      f"p95 {p['p95_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms, scorer CPU "
                      f"{p['scorer_cpu_ms_per_request']} ms/request "
                      f"({p['answered_200']}/{p['sent']} answered 200; {p['models'] or 'no models'})")
        for failure in p["failures"]:
            console.print(f"[red]failed:[/] {failure}")
    _plot(result, out / "serve.png")
    write_report(out, "serve.json", result, started)
    console.print(f"wrote {out / 'serve.json'} and {out / 'serve.png'}")
    return 0
