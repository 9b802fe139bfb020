"""`streamrec bench soak`: the whole loop at a steady rate for N minutes; does anything grow without bound?

It starts the closed loop (`streamrec.harness.loop.ClosedLoop`: simulator, worker,
scorer, online trainer, on their own topics, Redis prefix and free ports) and
every few seconds records:

- the RSS of each service process (psutil, children included);
- the run's Redis keys (``SCAN MATCH <prefix>*``: the Redis is shared with
  other users, so DBSIZE would count theirs) and their memory (sum of
  ``MEMORY USAGE`` of those keys); the instance's ``used_memory`` is recorded
  for context only, since others write to the same Redis;
- consumer lag per consumer group: committed offsets against the high
  watermarks (the worker's and the scorer's groups, read with the
  AdminClient), and for the online trainer, which keeps its offsets in its
  checkpoint instead of Kafka, the checkpoint's offsets; the checkpoint's size
  is the trainer's joining state;
- end-to-end latency percentiles: event published -> recommendation received
  by an app (the same reader as the demo).

Key count can only plateau inside the run if keys expire inside it: the
default TTLs are hours (event-id markers) and days (sessions), so the soak
gives its services shorter ones (``dedup_ttl_s`` and ``session_ttl_s``,
``--ttl-s``) and says so in its JSON. The simulated population is fixed (no
user churn) and the catalog is fixed unless ``--new-item-every-s`` says
otherwise, so user and item keys are bounded by the population and the
catalog, not by their 90-day TTLs, which a soak of minutes cannot show.
Likewise two in-memory caps that take hours to fill at a soak's load (the
online trainer's closed slates, the scorer's click attribution) are scaled
to one TTL of recommendations unless ``--default-caps`` is given.

After the run, `judge` gives one verdict per measure (rule in its docstring);
the JSON, a PNG (one panel per measure) and the verdicts land in
``<home>/bench/soak-<time>/``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Group

from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streamrec.console import make_console
from streamrec.harness.loop import ClosedLoop, metric_sum, metrics
from streamrec.settings import Settings
from streamrec.harness.bench.features import _free_port
from streamrec.stream.keys import glob_escape
from streamrec.stream import topics

console = make_console()

# Measures judged for boundedness: (relative tolerance, absolute tolerance = the measure's noise floor).
TOLERANCES: dict[str, tuple[float, float]] = {
    "rss_mb": (0.05, 10.0),
    "redis_keys": (0.05, 50.0),
    "redis_prefix_mb": (0.05, 0.5),
    "lag": (0.2, 500.0),
    "learner_state_kb": (0.10, 64.0),
}
BOUNDED, GROWING, TOO_SHORT = "bounded", "growing", "too few samples"


# --------------------------------------------------------------------------- #
# The rule
# --------------------------------------------------------------------------- #
def flatten(sample: dict) -> dict[str, float]:
    """One sample as {measure: value}: nested dicts become ``outer.inner`` (``rss_mb.worker``)."""
    out: dict[str, float] = {}
    for key, value in sample.items():
        if isinstance(value, dict):
            for inner, v in value.items():
                out[f"{key}.{inner}"] = v
        else:
            out[key] = value
    return out


def _tolerance(measure: str) -> tuple[float, float] | None:
    return TOLERANCES.get(measure.split(".")[0])


def judge(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    """A verdict per judged measure (RSS per service, Redis keys and bytes, lag per group, trainer state).

    Rule: drop the samples taken before ``warmup_s``; split the rest in three
    equal spans of time. A measure is **bounded** when the median of the last
    third is at most ``median(middle third) * (1 + rel) + abs``, with ``rel``
    and ``abs`` from `TOLERANCES` (``abs`` is the measure's noise floor: 10 MB
    of RSS, 50 keys, 0.5 MB of Redis, 500 messages of lag, 64 kB of trainer
    state). Otherwise it is **growing**: it kept rising after warm-up, as a
    leak, keys without a TTL or a consumer falling behind do. A third with
    fewer than 3 samples (or no finite value) gives **too few samples**.
    So a steady leak is caught when what it adds in a third of the judged
    span (the distance between the two medians) exceeds ``rel`` of the level
    plus ``abs``; slower leaks pass, and a longer run catches them.
    Medians make one spike harmless; comparing the middle third (not the
    first) to the last lets the early part of the plateau still settle.
    The least-squares slope per hour and its 24 h projection are reported,
    not judged: over minutes, noise makes them too loose to decide on.
    """
    kept = [s for s in samples if s["t_s"] >= warmup_s]
    verdicts: dict[str, dict] = {}
    if not kept:
        return {}
    t0, t1 = kept[0]["t_s"], kept[-1]["t_s"]
    span = max(t1 - t0, 1e-9)
    rows = [(s["t_s"], flatten(s)) for s in kept]
    measures = sorted({m for _, f in rows for m in f if _tolerance(m) is not None})
    for measure in measures:
        rel, abs_tol = _tolerance(measure)
        points = [(t, f.get(measure)) for t, f in rows]
        points = [(t, float(v)) for t, v in points if v is not None and math.isfinite(float(v))]
        middle = [v for t, v in points if span / 3 <= t - t0 < 2 * span / 3]
        last = [v for t, v in points if t - t0 >= 2 * span / 3]
        entry: dict = {"rule": f"median(last third) <= median(middle third) * {1 + rel:g} + {abs_tol:g}",
                       "samples": len(points)}
        if len(middle) < 3 or len(last) < 3:
            verdicts[measure] = {**entry, "verdict": TOO_SHORT}
            continue
        mid, end = float(np.median(middle)), float(np.median(last))
        limit = mid * (1 + rel) + abs_tol
        ts, vs = np.array([t for t, _ in points]), np.array([v for _, v in points])
        slope_h = float(np.polyfit(ts, vs, 1)[0] * 3600) if len(points) >= 2 and np.ptp(ts) > 0 else 0.0
        verdicts[measure] = {**entry, "verdict": BOUNDED if end <= limit else GROWING, "middle_median": mid,
                             "last_median": end, "limit": limit, "slope_per_h": slope_h,
                             "projected_24h": float(vs[-1] + 24 * slope_h)}
    return verdicts


def summarise(samples: list[dict]) -> dict[str, dict]:
    """Start, end, max (and min) of every measure, for the report's table."""
    series: dict[str, list[float]] = {}
    for s in samples:
        for k, v in flatten(s).items():
            if k != "t_s" and v is not None and math.isfinite(float(v)):
                series.setdefault(k, []).append(float(v))
    return {k: {"start": v[0], "end": v[-1], "max": max(v), "min": min(v)} for k, v in series.items()}


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #
def spare_db_url(url: str) -> str | None:
    """The same Redis server, on its highest-numbered empty database (None when there is none).

    The run's keys then have a database to themselves: counting them (SCAN of that database) costs
    nothing next to scanning a shared database of half a million keys every few seconds."""
    from urllib.parse import urlsplit

    import redis

    client = redis.Redis.from_url(url)
    try:
        count = int(client.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG not allowed for this user
        count = 16
    used = {int(name[2:]) for name in client.info("keyspace")}
    client.close()
    spare = [db for db in range(count - 1, 0, -1) if db not in used]
    return urlsplit(url)._replace(path=f"/{spare[0]}").geturl() if spare else None


def _rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


FAMILIES = ("marker", "session", "user", "item", "global")


def key_family(key: str) -> str:
    """Which row of the `stream.keys` table a key (without its prefix) belongs to.

    >>> [key_family(k) for k in ("{u:a}:ev:e1", "{u:a}:s:s1:seq", "{u:a}:recent", "{i:x}:covis", "{trending}:decay")]
    ['marker', 'session', 'user', 'item', 'global']
    """
    if key.startswith("{u:"):
        rest = key[key.find("}:") + 2:]
        return "marker" if rest.startswith("ev:") else "session" if rest.startswith("s:") else "user"
    return "item" if key.startswith("{i:") else "global"


class Sampler:
    """Reads every measure of one run; `sample` is called from the bench's main thread only."""

    def __init__(self, loop: ClosedLoop):
        import redis
        from confluent_kafka import Consumer

        from streamrec.stream.topics import admin_client, kafka_security

        self.loop = loop
        s = loop.settings
        self.redis = redis.Redis.from_url(s.redis_url)
        self.admin = admin_client(s)
        self.watermarks = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"{s.topic_prefix}soak-watch",
                                    "enable.auto.commit": False, **kafka_security(s)})
        self.groups = {"worker": topics.group_id(s, topics.WORKER_GROUP),
                       "scorer": topics.group_id(s, topics.SCORER_GROUP)}
        self._recs_seen = 0
        self.db_keys = 0
        self.family_keys: dict[str, int] = {}
        self.family_mb: dict[str, float] = {}
        self._last = (time.monotonic(), 0, 0)

    def close(self) -> None:
        self.watermarks.close()

    def _high(self, topic: str, partition: int) -> int:
        from confluent_kafka import TopicPartition

        return self.watermarks.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)[1]

    def _low(self, topic: str, partition: int) -> int:
        from confluent_kafka import TopicPartition

        return self.watermarks.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)[0]

    def group_lag(self, group: str) -> float:
        """Messages between the group's committed offsets and the high watermarks (no commit: from the start)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        result = futures[group].result(timeout=10)
        lag = 0
        for tp in result.topic_partitions or []:
            committed = tp.offset if tp.offset >= 0 else self._low(tp.topic, tp.partition)
            lag += max(self._high(tp.topic, tp.partition) - committed, 0)
        return float(lag)

    def learner_lag_and_state(self) -> tuple[float, float]:
        """The online trainer's lag from its checkpoint's offsets, and the checkpoint's size (kB)."""
        ckpt = self.loop.learner_dir / "learner.json"
        try:
            size = ckpt.stat().st_size
            with open(ckpt, "rb") as fh:  # megabytes of buffers follow: decode only the leading "offsets"
                head = fh.read(65_536).decode(errors="replace")
            offsets, _ = json.JSONDecoder().raw_decode(head, head.index("{", head.index('"offsets"')))
        except (OSError, ValueError):
            return float("nan"), float("nan")
        lag = 0
        for key, offset in offsets.items():
            topic, _, partition = key.rpartition(":")
            lag += max(self._high(topic, int(partition)) - int(offset), 0)
        return float(lag), size / 1024

    def redis_usage(self) -> tuple[int, float, float]:
        """(keys under the run's prefix, their MEMORY USAGE in MB, the instance's used_memory in MB);
        also the keys and MB per family of `stream.keys` (markers, sessions, users, items, global)."""
        prefix = self.loop.settings.redis_prefix
        keys = list(self.redis.scan_iter(match=f"{glob_escape(prefix)}*", count=10_000))
        sizes: list[int] = []
        for start in range(0, len(keys), 2000):
            pipe = self.redis.pipeline(transaction=False)
            for key in keys[start:start + 2000]:
                pipe.memory_usage(key)
            sizes += [v or 0 for v in pipe.execute()]
        self.family_keys = dict.fromkeys(FAMILIES, 0)
        family_bytes = dict.fromkeys(FAMILIES, 0)
        for key, size in zip(keys, sizes):
            family = key_family(key.decode(errors="replace")[len(prefix):])
            self.family_keys[family] += 1
            family_bytes[family] += size
        self.family_mb = {f: b / 2**20 for f, b in family_bytes.items()}
        used = self.redis.info("memory")["used_memory"]
        # The run's keys still alive and the database's size at one instant (MULTI/EXEC): with TTLs of
        # seconds, keys expire between a scan and a later DBSIZE (a fresh clone's soak saw more keys than
        # its database held).
        pipe = self.redis.pipeline(transaction=True)
        if keys:
            pipe.exists(*keys)
        pipe.dbsize()
        *alive, self.db_keys = pipe.execute()
        return (alive[0] if alive else 0), sum(sizes) / 2**20, used / 2**20

    def latency(self) -> dict[str, float]:
        """Percentiles of the recommendations received since the previous sample."""
        stats = self.loop.stats
        new = stats.recommendations - self._recs_seen
        self._recs_seen = stats.recommendations
        recent = list(stats.rec_latencies)[-new:] if new > 0 else []
        if not recent:
            return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "n": 0}
        lat = np.array(recent)
        return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                "p99": float(np.percentile(lat, 99)), "n": len(recent)}

    def sample(self, t_s: float) -> dict:
        keys, prefix_mb, used_mb = self.redis_usage()
        learner_lag, learner_kb = self.learner_lag_and_state()
        lag = {name: self.group_lag(group) for name, group in self.groups.items()}
        lag["learner"] = learner_lag
        now = time.monotonic()
        events = sum(self.loop.sim.stats.get(k, 0) for k in ("events", "click", "add_to_cart", "purchase"))
        then, events_before, recs_before = self._last
        dt = max(now - then, 1e-9)
        self._last = (now, events, self.loop.stats.recommendations)
        return {
            "t_s": round(t_s, 2),
            "rss_mb": {name: _rss_mb(svc.proc.pid) for name, svc in self.loop.services.items()},
            "redis_keys": keys,
            "redis_prefix_mb": prefix_mb,
            "redis_used_memory_mb": used_mb,
            "redis_db_keys": self.db_keys,
            "redis_family_keys": self.family_keys,
            "redis_family_mb": self.family_mb,
            "scorer_swaps": metric_sum(metrics(self.loop.services["scorer"].port), "streamrec_scorer_swaps_total"),
            "lag": lag,
            "learner_state_kb": learner_kb,
            "latency_ms": self.latency(),
            "events_per_s": (events - events_before) / dt,
            "recs_per_s": (self.loop.stats.recommendations - recs_before) / dt,
            "load_1m": os.getloadavg()[0],
        }


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 30.0
    rate: float = 40.0
    users: int = 300
    items: int = 300
    every_s: float | None = None
    """Seconds between samples (default: seconds/30, between 2 and 10)."""
    ttl_s: int | None = None
    """Event-marker and session TTL the run's services get (default: seconds/6, between 10 and 300)."""
    warmup_s: float | None = None
    """Samples before this are not judged (default: the larger of 2 TTLs and 30% of the run, at most half)."""
    new_item_every_s: float = 0.0
    scaled_caps: bool = True
    """Scale the joiner's and the scorer's in-memory caps to one TTL of recommendations (False: defaults)."""
    own_db: bool = True
    """Put the run's keys in an empty database of the same Redis server (False: the settings' own)."""
    seed: int = 0
    keep: bool = False
    """Keep the run's topics and Redis keys afterwards."""
    pretrain_steps: int | None = None
    """Training steps of the initial sequence model (default: the bench's). Boundedness does not depend on
    the model's quality; the test's half-minute run takes few."""

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def resolved(self) -> "SoakConfig":
        """Defaults filled in; raises ValueError naming the flag on a bad value."""
        for name in ("minutes", "rate", "users", "items"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be > 0 (got {getattr(self, name)})")
        seconds = self.seconds
        every = self.every_s if self.every_s is not None else min(max(seconds / 30, 2.0), 10.0)
        ttl = self.ttl_s if self.ttl_s is not None else int(min(max(seconds / 6, 10), 300))
        warmup = self.warmup_s if self.warmup_s is not None else min(max(2 * ttl, 0.3 * seconds), 0.5 * seconds)
        if every <= 0:
            raise ValueError(f"--every must be > 0 seconds (got {every})")
        if ttl < 1:
            raise ValueError(f"--ttl-s must be >= 1 second (got {ttl})")
        if not 0 <= warmup < seconds:
            raise ValueError(f"--warmup-s must be in [0, the run's {seconds:.0f} s) (got {warmup})")
        return SoakConfig(**{**asdict(self), "every_s": every, "ttl_s": ttl, "warmup_s": warmup})


def _view(sample: dict | None, progress: Progress, verdicts: dict | None = None) -> Group:
    table = Table(title="soak: latest sample", expand=True)
    for col in ("measure", "value"):
        table.add_column(col)
    if sample:
        for name, mb in sample["rss_mb"].items():
            table.add_row(f"RSS {name}", f"{mb:,.0f} MB")
        table.add_row("Redis keys (run's prefix)", f"{sample['redis_keys']:,}")
        table.add_row("Redis memory (run's keys / whole instance)",
                      f"{sample['redis_prefix_mb']:,.1f} MB / {sample['redis_used_memory_mb']:,.0f} MB")
        table.add_row("consumer lag (messages)", "   ".join(f"{k} {v:,.0f}" for k, v in sample["lag"].items()))
        table.add_row("trainer state (checkpoint)", f"{sample['learner_state_kb']:,.0f} kB")
        lat = sample["latency_ms"]
        table.add_row("event -> recommendation (ms)",
                      f"p50 {lat['p50']:.0f}   p95 {lat['p95']:.0f}   p99 {lat['p99']:.0f}   (n {lat['n']})")
        table.add_row("events/s · recommendations/s · load",
                      f"{sample['events_per_s']:.1f} · {sample['recs_per_s']:.1f} · {sample['load_1m']:.1f}")
    parts = [progress, table]
    if verdicts:
        parts.append(verdict_table(verdicts))
    return Group(*parts)


def verdict_table(verdicts: dict[str, dict]) -> Table:
    table = Table(title="boundedness after warm-up (median of the last third vs the middle third)")
    for col in ("measure", "verdict", "middle", "last", "limit", "slope / h"):
        table.add_column(col)
    colour = {BOUNDED: "green", GROWING: "red", TOO_SHORT: "yellow"}
    for measure, v in verdicts.items():
        nums = [f"{v[k]:,.1f}" if k in v else "-" for k in ("middle_median", "last_median", "limit", "slope_per_h")]
        table.add_row(measure, f"[{colour[v['verdict']]}]{v['verdict']}[/]", *nums)
    return table


def plot(samples: list[dict], warmup_s: float, path: Path) -> None:
    """One panel per measure over time, the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    panels = [
        ("RSS per service (MB)", {n: [s["rss_mb"].get(n) for s in samples] for n in samples[0]["rss_mb"]}),
        ("Redis keys under the run's prefix", {"all": [s["redis_keys"] for s in samples],
                                               **{f: [s.get("redis_family_keys", {}).get(f) for s in samples]
                                                  for f in FAMILIES}}),
        ("Redis memory of the run's keys (MB, MEMORY USAGE)", {"all": [s["redis_prefix_mb"] for s in samples],
                                                              **{f: [s.get("redis_family_mb", {}).get(f)
                                                                     for s in samples] for f in FAMILIES}}),
        ("consumer lag (messages)", {n: [s["lag"].get(n) for s in samples] for n in samples[0]["lag"]}),
        ("online trainer state: checkpoint (kB)", {"checkpoint": [s["learner_state_kb"] for s in samples]}),
        ("event -> recommendation (ms)", {p: [s["latency_ms"][p] for s in samples] for p in ("p50", "p99")}),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.3 * len(panels)), sharex=True)
    for ax, (title, lines) in zip(axes, panels):
        for label, ys in lines.items():
            ax.plot(t, [np.nan if y is None else y for y in ys], label=label)
        ax.axvspan(0, warmup_s / 60, color="grey", alpha=0.15, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        if len(lines) > 1:
            ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("minutes (grey: warm-up, not judged)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_soak(base: Settings, cfg: SoakConfig, out_root: Path | None = None, live: bool = True) -> dict:
    """Run the soak; returns the report (also written as soak.json next to soak.png)."""
    from streamrec.harness.simulator import SimConfig

    cfg = cfg.resolved()
    sys.setswitchinterval(0.0005)  # the simulator, the reader and the sampler share the GIL
    out = (out_root or base.home_path / "bench") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    sim_cfg = SimConfig(users=cfg.users, items=cfg.items, seed=cfg.seed, rate=cfg.rate, seconds=cfg.seconds,
                        new_item_every_s=cfg.new_item_every_s, bucket_s=max(cfg.seconds / 12, 5))
    changes = {"dedup_ttl_s": cfg.ttl_s, "session_ttl_s": cfg.ttl_s,
               "worker_port": _free_port(), "scorer_port": _free_port(), "learner_port": _free_port()}
    own_url = spare_db_url(base.redis_url) if cfg.own_db and not base.redis_cluster else None
    if own_url:
        changes["redis_url"] = own_url
    # Two in-memory caps take longer than a soak to fill at this load: the joiner's closed slates
    # (200,000) and the scorer's click attribution (100,000 recommendations, ~2 kB each). Unless told
    # to keep them, the run scales them like the TTLs, to one TTL of recommendations at the full rate.
    cap = max(int(cfg.rate * cfg.ttl_s), 100)
    max_closed = cap if cfg.scaled_caps else 200_000
    if cfg.scaled_caps:
        changes["scorer_click_memory"] = cap
    loop = ClosedLoop(base, sim_cfg, kind="soak", console=console,
                      learner_flags=("--max-closed-slates", str(max_closed)), **changes)
    samples: list[dict] = []
    report: dict = {
        "command": "streamrec bench soak " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "soak"] else None,
        "config": asdict(cfg),
        "ttl_note": (f"event-id markers and sessions expire after {cfg.ttl_s} s in this run (defaults: "
                     f"{Settings().dedup_ttl_s} s and {Settings().session_ttl_s} s), so their key count can "
                     "plateau within the run; user and item keys are bounded by the fixed population and "
                     f"catalog (new item every {cfg.new_item_every_s or 'never'} s), not by their 90-day TTLs; "
                     f"the online trainer's joiner remembers {max_closed} closed slates (default 200,000) and "
                     f"the scorer {changes.get('scorer_click_memory', Settings().scorer_click_memory)} "
                     f"recommendations for click attribution (default {Settings().scorer_click_memory})"),
        "settings_changed": {**{k: v for k, v in changes.items() if k.endswith("ttl_s") or k.endswith("memory")},
                             "learner --max-closed-slates": max_closed},
        "redis_db": int(loop.settings.redis_url.rsplit("/", 1)[-1] or 0) if own_url else None,
        "redis_note": "redis_keys and redis_prefix_mb count the run's prefix only (SCAN MATCH + MEMORY USAGE"
                      + (", in an otherwise empty database of the shared server; redis_db_keys is that database's "
                         "DBSIZE" if own_url else " in the shared database; redis_db_keys is its DBSIZE")
                      + "); redis_used_memory_mb is the whole shared server, for context, not judged",
        "run_dir": str(loop.logdir), "topic_prefix": loop.settings.topic_prefix,
        "redis_prefix": loop.settings.redis_prefix, "cpus": os.cpu_count(),
    }
    loop.start_stack()
    sampler = None
    progress = Progress(TextColumn("soak"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
                        TimeRemainingColumn(), console=console)
    task = progress.add_task("soak", total=cfg.seconds)
    try:
        loop.start_services(cfg.seed, cfg.pretrain_steps)
        sampler = Sampler(loop)
        loop.start_traffic()
        started = time.monotonic()
        next_at = started
        with Live(_view(None, progress), console=console, refresh_per_second=1, transient=not live) as view:
            while loop.running:
                next_at += cfg.every_s
                samples.append(sampler.sample(time.monotonic() - started))
                progress.update(task, completed=min(time.monotonic() - started, cfg.seconds))
                view.update(_view(samples[-1], progress))
                crashed = [n for n, svc in loop.services.items() if svc.proc.poll() is not None]
                if crashed:
                    raise RuntimeError(f"{', '.join(crashed)} exited during the soak; see {loop.logdir}")
                time.sleep(max(next_at - time.monotonic(), 0.05))
    finally:
        report["exit_codes"] = loop.stop()
        if sampler is not None:
            sampler.close()
        if not cfg.keep:
            _clean(loop)
    report["samples"] = samples
    report["sim_counts"] = dict((loop.report or {}).get("counts", {}))
    report["recommendations_received"] = loop.stats.recommendations
    report["verdicts"] = judge(samples, cfg.warmup_s)
    report["summary"] = summarise(samples)
    (out / "soak.json").write_text(json.dumps(_json_safe(report), indent=2, default=float))
    if samples:
        plot(samples, cfg.warmup_s, out / "soak.png")
        (out / "soak.md").write_text(markdown(report))
    report["out_dir"] = str(out)
    return report


def markdown(report: dict, buckets: int = 6) -> str:
    """The report as Markdown tables: start/end/max per measure with its verdict, latency over time."""
    samples, verdicts, summary = report["samples"], report["verdicts"], report["summary"]
    units = {"rss_mb": "MB", "redis_keys": "keys", "redis_prefix_mb": "MB", "redis_used_memory_mb": "MB",
             "redis_db_keys": "keys", "lag": "messages", "learner_state_kb": "kB", "redis_family_keys": "keys",
             "redis_family_mb": "MB", "scorer_swaps": "swaps"}
    lines = ["| measure | unit | start | end | max | verdict (after warm-up) | middle → last third (median) |",
             "|---|---|---:|---:|---:|---|---:|"]
    for measure, row in summary.items():
        root = measure.split(".")[0]
        if root not in units:
            continue
        v = verdicts.get(measure, {})
        thirds = f"{v['middle_median']:,.1f} → {v['last_median']:,.1f}" if "middle_median" in v else "-"
        lines.append(f"| {measure} | {units[root]} | {row['start']:,.1f} | {row['end']:,.1f} | {row['max']:,.1f} | "
                     f"{v.get('verdict', 'not judged (context)')} | {thirds} |")
    lines += ["", "Latency, event published -> recommendation received: per-interval percentiles averaged over "
              "each span, weighted by the recommendations timed.", "",
              "| minutes | recommendations timed | p50 ms | p95 ms | p99 ms | events/s | load (1 min) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    if samples:
        width = samples[-1]["t_s"] / buckets or 1.0
        for b in range(buckets):
            part = [s for s in samples if b * width <= s["t_s"] < (b + 1) * width or (b == buckets - 1
                                                                                      and s is samples[-1])]
            n = sum(s["latency_ms"]["n"] for s in part)
            # Percentiles of a bucket: the samples' percentiles weighted by how many they timed.
            def weighted(p: str) -> float:
                pts = [(s["latency_ms"][p], s["latency_ms"]["n"]) for s in part if s["latency_ms"]["n"]]
                return sum(x * w for x, w in pts) / max(sum(w for _, w in pts), 1) if pts else float("nan")

            rate = np.mean([s["events_per_s"] for s in part]) if part else float("nan")
            load = np.mean([s["load_1m"] for s in part]) if part else float("nan")
            lines.append(f"| {b * width / 60:.1f}–{(b + 1) * width / 60:.1f} | {n:,} | {weighted('p50'):,.0f} | "
                         f"{weighted('p95'):,.0f} | {weighted('p99'):,.0f} | {rate:.1f} | {load:.1f} |")
    return "\n".join(lines) + "\n"


def _json_safe(value):
    """NaN (nothing measured yet: no checkpoint, no recommendation in the interval) as null, as JSON wants."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(loop: ClosedLoop) -> None:
    """Remove the run's topics and Redis keys (the soak leaves the shared stack as it found it)."""
    from streamrec.stream.topics import delete_topics

    import redis

    delete_topics(loop.settings)
    r = redis.Redis.from_url(loop.settings.redis_url)
    for key in r.scan_iter(match=f"{glob_escape(loop.settings.redis_prefix)}*", count=10_000):
        r.delete(key)


def cmd_bench_soak(args) -> int:
    from streamrec.deploy.localstack import StackError

    cfg = SoakConfig(minutes=args.minutes, rate=args.rate, users=args.users, items=args.items, every_s=args.every,
                     ttl_s=args.ttl_s, warmup_s=args.warmup_s, new_item_every_s=args.new_item_every_s,
                     own_db=not args.shared_db, scaled_caps=not args.default_caps, seed=args.seed, keep=args.keep)
    try:
        report = run_soak(args.settings, cfg)
    except (ValueError, StackError, RuntimeError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(verdict_table(report["verdicts"]))
    console.print(f"samples: {len(report['samples'])}; JSON {report['out_dir']}/soak.json, "
                  f"plot {report['out_dir']}/soak.png")
    growing = [m for m, v in report["verdicts"].items() if v["verdict"] == GROWING]
    return 3 if growing and args.fail_on_growth else 0


def register_bench(bench) -> None:
    p = bench.add_parser("soak", help="the whole loop for N minutes: RSS, Redis keys and memory, lag, latency; "
                                      "judges boundedness; JSON and a PNG",
                         description="Runs the simulator, worker, scorer and online trainer at a steady rate on "
                                     "their own topics and Redis prefix, samples every few seconds, then judges "
                                     "whether memory, key count and lag stay bounded after warm-up.")
    p.add_argument("--minutes", type=float, default=30.0, help="how long the simulation runs (default 30)")
    p.add_argument("--rate", type=float, default=40.0, help="events per second the users publish at most (default 40)")
    p.add_argument("--users", type=int, default=300, help="simulated users (default 300)")
    p.add_argument("--items", type=int, default=300, help="catalog size (default 300)")
    p.add_argument("--every", type=float, default=None, help="seconds between samples (default run/30, 2..10)")
    p.add_argument("--ttl-s", type=int, default=None,
                   help="TTL of event-id markers and sessions for the run's services (default run/6, 10..300 s)")
    p.add_argument("--warmup-s", type=float, default=None,
                   help="seconds not judged at the start (default max(2 TTL, 30%% of the run), at most half)")
    p.add_argument("--new-item-every-s", type=float, default=0.0,
                   help="a new catalog item this often (default 0: fixed catalog, so item keys can plateau)")
    p.add_argument("--default-caps", action="store_true",
                   help="keep the default in-memory caps (joiner: 200,000 closed slates; scorer: 100,000 "
                        "recommendations); by default the run scales them to rate x TTL so they fill within it")
    p.add_argument("--shared-db", action="store_true",
                   help="keep the run's keys in the settings' Redis database (default: an empty one of the "
                        "same server, so counting them does not scan everybody's keys)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated world")
    p.add_argument("--keep", action="store_true", help="keep the run's topics and Redis keys afterwards")
    p.add_argument("--fail-on-growth", action="store_true", help="exit 3 when a measure is judged growing")
    p.set_defaults(func=cmd_bench_soak)
