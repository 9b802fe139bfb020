"""`streamrec bench scale`: the Redis state of N users, built through the worker's feature-store batch path.

What it builds: N users (default 1,000,000), each with about 20 events (a Poisson draw, at least one per
session) over 3 sessions, on a catalog of 100,000 items (Zipf popularity). Event types follow the
proportions of the synthetic stream (`streamrec.stream.synthetic`: 80% views, 13% clicks, 5% adds to cart,
2% purchases); a click, an add to cart or a purchase is of an item seen earlier in the same session 70% of
the time. Events within a session are seconds to minutes apart (at most 20 minutes) and sessions hours
apart (1 to 10 hours), so the store's own session derivation (the 30-minute gap of the default settings)
splits them; the events carry no ``session_id``. Every event lies within the last 30 hours, so under the
default TTLs (markers 6 hours, sessions 2 days, users and items 90 days, all counted from the write) every
key the events write is still there when the state is measured: the worst case for the markers, whose
events in a live stream would mostly be older than their 6 hours.

How it builds it: no Kafka. Events are made as the records a worker consumes (`SourceEvent`: the
``events`` topic, a partition chosen from the user id, offsets in order per partition, the event time as
the broker timestamp, a JSON value with a 32-hex event id as the SDK sends), decoded as the worker decodes
them (`schemas.decode_event` into a `DecodedEvent`), and applied in the worker's batches
(``STREAMREC_WORKER_BATCH_MAX``, 2,000 events, in event-time order) by the worker's own
`RedisFeatureStore.apply`: the same Lua scripts, caps and TTLs (`FeatureConfig.from_settings`). The
catalog's metadata (a category per item, which the users' category affinities need) is written first by
the catalog path (`RedisFeatureStore.put_item_meta`) and measured apart. Users are generated in cohorts
(``--cohort``) to keep the generator's memory flat; within a cohort all events go in event-time order.

What it measures: ``INFO memory`` ``used_memory`` before and after the events (bytes per user is the
difference over the users), then every key under the prefix (``SCAN``), sorted into key families
(`stream.keys`: user hash, recent items, affinities, purchases, session index, session hash, session
sequence, event-id markers, item statistics, co-visitation, replay guards, trending, catalog), with
``MEMORY USAGE ... SAMPLES 0``, the encoding, the element count and the TTL of a random sample of each
family (``--sample`` keys). Extrapolating to 1,000,000 users from a smaller run is linear in the users,
which overstates the item families (bounded by the catalog and the co-visitation cap); the report gives
both the linear figure and one with the item families as measured.

``used_memory`` is the whole server's: run it on a Redis nothing else writes to. The keys are deleted at
the end unless ``--keep``. Redis Cluster is not supported (one server's INFO is measured).
"""

from __future__ import annotations

import random
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

import msgspec
import numpy as np

from streamrec.console import make_console
from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.settings import Settings
from streamrec.stream import schemas, topics
from streamrec.stream.feature_store import RedisFeatureStore
from streamrec.stream.features import DecodedEvent, SourceEvent
from streamrec.stream.keys import FeatureConfig, glob_escape
from streamrec.stream.synthetic import TYPE_P, TYPES

console = make_console(stderr=True)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
FOLLOW_UP_SEEN = 0.7
"""Share of clicks, adds to cart and purchases that are of an item seen earlier in the session."""
METARANK_GIB_PER_MILLION = 0.8
"""Metarank's documented Redis memory: about 0.8 GiB per million users (812 MB at 1,024 thousand users, its
synthetic RankLens workload: 100,000 items, 2 rankings and 4 clicks per user in one session;
github.com/metarank/metarank, doc/performance.md)."""
SOAK_BYTES_PER_USER = 3000
"""The 30-minute soak's user keys: about 3 kB per user with the 200-item cap (issue 32)."""
ONE_MILLION = 1_000_000

# Key families: (group, family) by the key's suffix after its hash tag; the layout is stream/keys.py's.
USER_SUFFIXES = {"user": "user.hash", "recent": "user.recent", "aff": "user.aff", "bought": "user.bought",
                 "sessions": "user.sessions", "forgotten": "user.forgotten", "segment": "user.segment"}
ITEM_SUFFIXES = {"stats": "item.stats", "covis": "item.covis", "hw": "item.hw", "meta": "catalog.meta"}
TRENDING_SUFFIXES = {"decay": "trending.decay", "hw": "trending.hw"}
SIZE_COMMAND = {"hash": "HLEN", "zset": "ZCARD", "string": "STRLEN", "set": "SCARD", "list": "LLEN"}
EXPECTED_FAMILIES = ("user.hash", "user.recent", "user.aff", "user.bought", "user.sessions", "session.hash",
                     "session.seq", "marker", "item.stats", "item.covis", "item.hw", "trending.decay",
                     "trending.hour", "trending.hw", "catalog.meta")
"""The families this workload writes (a forget request or a segment run would add others)."""
USER_GROUPS = ("user", "session", "marker")
"""Families whose size is proportional to the users; the others are bounded by the catalog."""


@dataclass(frozen=True)
class ScaleConfig:
    users: int = ONE_MILLION
    items: int = 100_000
    events_per_user: float = 20.0
    sessions_per_user: int = 3
    categories: int = 500
    zipf: float = 1.0
    cohort: int = 50_000
    batch: int = 0
    """Events per `apply` call; 0: the worker's batch size (``STREAMREC_WORKER_BATCH_MAX``)."""
    sample: int = 1000
    seed: int = 0
    catalog: bool = True
    keep: bool = False


# --------------------------------------------------------------------------- #
# The workload
# --------------------------------------------------------------------------- #
def user_id(n: int) -> str:
    return f"u{n:07d}"


def item_id(n: int) -> str:
    return f"i{n}"


class Workload:
    """Seeded users' events, by cohort, in event-time order."""

    def __init__(self, cfg: ScaleConfig, now_ms: int):
        self.cfg = cfg
        self.now_ms = now_ms
        self.rng = np.random.default_rng(cfg.seed)
        ranks = np.arange(1, cfg.items + 1, dtype=np.float64)
        weights = ranks ** -cfg.zipf
        self.cdf = np.cumsum(weights / weights.sum())
        self.perm = self.rng.permutation(cfg.items)  # popular items are not just i0, i1...
        self.category = self.rng.integers(cfg.categories, size=cfg.items)

    def catalog(self):
        """(item id, catalog fields) of every item, as `streamrec.stream.schemas.CatalogItem` stores them."""
        for n in range(self.cfg.items):
            cat = int(self.category[n])
            item = schemas.CatalogItem(item_id=item_id(n), category=f"c{cat}", tags=[f"t{cat % 50}", f"t{n % 97}"],
                                       title=f"Item {n}", price=float(1 + n % 200))
            yield item.item_id, item.redis_fields()

    def _items(self, n: int) -> np.ndarray:
        ranks = np.searchsorted(self.cdf, self.rng.random(n), side="right")
        return self.perm[np.minimum(ranks, self.cfg.items - 1)]

    def cohort(self, first: int, count: int) -> dict[str, np.ndarray]:
        """The events of users ``first .. first+count-1``, sorted by event time: arrays user, ts, type, item."""
        cfg, rng = self.cfg, self.rng
        k = cfg.sessions_per_user
        n_events = np.maximum(rng.poisson(cfg.events_per_user, size=count), k)
        total = int(n_events.sum())
        users = np.repeat(np.arange(first, first + count, dtype=np.int64), n_events)
        types = rng.choice(len(TYPES), size=total, p=TYPE_P).astype(np.int8)
        items = self._items(total)
        follow = rng.random(total)
        pick = rng.random(total)
        # Inside a session: seconds to minutes apart (exponential, mean 60 s, 1 s to 20 min). Between
        # sessions: 1 to 10 hours. Both sides of the 30-minute gap with room to spare.
        inside = np.clip(rng.exponential(60_000, size=total), 1_000, 20 * MINUTE_MS).astype(np.int64)
        between = rng.integers(1 * HOUR_MS, 10 * HOUR_MS, size=count * k)
        starts = self.now_ms - 30 * HOUR_MS + rng.integers(0, 4 * HOUR_MS, size=count)
        ts = np.empty(total, dtype=np.int64)
        pos = 0
        for u in range(count):
            n = int(n_events[u])
            sizes = rng.multinomial(n - k, [1 / k] * k) + 1
            t = int(starts[u])
            j = pos
            for s, size in enumerate(sizes):
                if s:
                    t += int(between[u * k + s])
                seen: list[int] = []
                for e in range(size):
                    if e:
                        t += int(inside[j])
                    ts[j] = t
                    # A click, an add to cart or a purchase is mostly of an item already seen in the session.
                    if types[j] != 0 and seen and follow[j] < FOLLOW_UP_SEEN:
                        items[j] = seen[int(pick[j] * len(seen))]
                    seen.append(int(items[j]))
                    j += 1
            late = int(ts[j - 1]) - (self.now_ms - MINUTE_MS)
            if late > 0:  # never in the future: the worker refuses events stamped ahead of the broker
                ts[pos:j] -= late
            pos = j
        order = np.argsort(ts, kind="stable")
        return {"user": users[order], "ts": ts[order], "type": types[order], "item": items[order]}


class Records:
    """Turns generated events into the records a worker consumes: topic, partition by user, offsets."""

    def __init__(self, settings: Settings, rng: np.random.Generator):
        self.topic = settings.topic(topics.EVENTS)
        self.partitions = max(1, settings.topic_partitions)
        self.next_offset = [0] * self.partitions
        self.rng = rng
        self.encoder = msgspec.json.Encoder()

    def decoded(self, ev: dict[str, np.ndarray], lo: int, hi: int) -> list[DecodedEvent]:
        """Events ``lo:hi`` of a cohort as the worker decodes them (`EventProcessor.process`)."""
        ids = self.rng.bytes(16 * (hi - lo)).hex()
        out = []
        for j in range(lo, hi):
            user = user_id(int(ev["user"][j]))
            ts = int(ev["ts"][j])
            value = self.encoder.encode({"event_id": ids[32 * (j - lo):32 * (j - lo + 1)],
                                         "type": str(TYPES[ev["type"][j]]), "user_id": user,
                                         "item_id": item_id(int(ev["item"][j])), "ts": ts})
            key = user.encode()
            partition = zlib.crc32(key) % self.partitions
            offset = self.next_offset[partition]
            self.next_offset[partition] = offset + 1
            src = SourceEvent(self.topic, partition, offset, key, value, ts)
            out.append(DecodedEvent(src, schemas.decode_event(value)))
        return out


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #
def family_of(key: str, prefix: str) -> str:
    """The key family of a key under ``prefix`` (the table in `streamrec.stream.keys`)."""
    rest = key[len(prefix):]
    if rest.startswith("{u:"):
        close = rest.find("}:")
        suffix = rest[close + 2:] if close >= 0 else ""
        if suffix.startswith("ev:"):
            return "marker"
        if suffix.startswith("s:"):
            return "session.seq" if suffix.endswith(":seq") else "session.hash"
        return USER_SUFFIXES.get(suffix, "user.other")
    if rest.startswith("{i:"):
        close = rest.find("}:")
        return ITEM_SUFFIXES.get(rest[close + 2:] if close >= 0 else "", "item.other")
    if rest.startswith("{trending}:"):
        suffix = rest[len("{trending}:"):]
        return "trending.hour" if suffix.startswith("h:") else TRENDING_SUFFIXES.get(suffix, "trending.other")
    if rest.startswith("{catalog}:"):
        return "catalog.removed"
    return "other"


def group_of(family: str) -> str:
    return family.split(".")[0]


def memory_info(client) -> dict:
    """INFO memory from a fresh connection: the pool's connections are closed first, so the query and reply
    buffers of the bench's own pipelines (hundreds of kB after a batch) are not counted as state."""
    client.connection_pool.disconnect()
    info = client.info("memory")
    return {k: info.get(k) for k in ("used_memory", "used_memory_dataset", "used_memory_overhead",
                                     "mem_clients_normal", "used_memory_scripts", "used_memory_rss",
                                     "mem_fragmentation_ratio", "maxmemory", "maxmemory_policy")}


def census(client, prefix: str, sample: int, seed: int, on_keys=None) -> dict[str, dict]:
    """Every key under ``prefix`` counted by family; ``sample`` random keys of each measured
    (MEMORY USAGE with every element sampled, encoding, elements, TTL)."""
    rng = random.Random(seed)
    counts: Counter = Counter()
    reservoirs: dict[str, list[bytes]] = defaultdict(list)
    scanned = 0
    for key in client.scan_iter(match=glob_escape(prefix) + "*", count=5000):
        family = family_of(key.decode("utf-8", "replace"), prefix)
        counts[family] += 1
        seen, res = counts[family], reservoirs[family]
        if len(res) < sample:
            res.append(key)
        else:
            slot = rng.randrange(seen)
            if slot < sample:
                res[slot] = key
        scanned += 1
        if on_keys and scanned % 50_000 == 0:
            on_keys(scanned)
    families = {}
    for family, keys in sorted(reservoirs.items()):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
            pipe.type(key)
            pipe.object("encoding", key)
            pipe.pttl(key)
        raw = pipe.execute(raise_on_error=False)
        rows = [raw[i:i + 4] for i in range(0, len(raw), 4)]
        kinds = [(r[1].decode() if isinstance(r[1], bytes) else str(r[1])) for r in rows]
        pipe = client.pipeline(transaction=False)
        for key, kind in zip(keys, kinds):
            pipe.execute_command(SIZE_COMMAND.get(kind, "STRLEN"), key)
        sizes = pipe.execute(raise_on_error=False)
        live = [(r, kind, size) for r, kind, size in zip(rows, kinds, sizes) if isinstance(r[0], int)]
        usage = [r[0] for r, _, _ in live]
        ttls = [r[3] for r, _, _ in live if isinstance(r[3], int) and r[3] > 0]
        encodings = Counter((r[2].decode() if isinstance(r[2], bytes) else str(r[2])) for r, _, _ in live)
        elements = [s for _, _, s in live if isinstance(s, int)]
        mean = sum(usage) / len(usage) if usage else 0.0
        families[family] = {
            "group": group_of(family), "type": Counter(k for _, k, _ in live).most_common(1)[0][0] if live else "",
            "keys": counts[family], "sampled": len(usage), "mean_bytes": round(mean, 1),
            "max_bytes": max(usage) if usage else 0, "est_bytes": round(mean * counts[family]),
            "encodings": dict(encodings), "mean_elements": round(sum(elements) / len(elements), 2) if elements else 0,
            "mean_ttl_h": round(sum(ttls) / len(ttls) / 3_600_000, 2) if ttls else None,
        }
    return families


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
def build(settings: Settings, cfg: ScaleConfig, progress=None) -> dict:
    """Build the state, measure it, and return the report (the keys are deleted unless ``cfg.keep``)."""
    if settings.redis_cluster:
        raise SystemExit("bench scale measures one Redis server's used_memory; Redis Cluster is not supported")
    config = FeatureConfig.from_settings(settings)
    store = RedisFeatureStore(settings, config)
    client = store.client
    prefix = settings.redis_prefix
    batch = cfg.batch or settings.worker_batch_max
    if next(iter(client.scan_iter(match=glob_escape(prefix) + "*", count=10_000)), None) is not None:
        raise SystemExit(f"Redis already holds keys under the prefix {prefix!r}; the bench measures the state it "
                         f"builds: point it at an empty Redis or another STREAMREC_REDIS_PREFIX")
    other_keys = client.dbsize()
    store._with_retry(store._load_scripts)  # the scripts' cache is not user state: loaded before the baseline
    task = (lambda description, total: progress.add_task(description, total=total)) if progress else None
    started_at = time.time()
    now_ms = int(started_at * 1000)
    work = Workload(cfg, now_ms)
    mem_start = memory_info(client)
    stats0 = client.info("stats")

    # 1. the catalog, by the catalog path
    catalog_s = 0.0
    if cfg.catalog:
        t0 = time.perf_counter()
        tid = task("catalog", cfg.items) if task else None
        for n, (item, fields) in enumerate(work.catalog()):
            store.put_item_meta(item, fields)
            if tid is not None and n % 1000 == 999:
                progress.update(tid, completed=n + 1)
        if tid is not None:
            progress.update(tid, completed=cfg.items)
        catalog_s = time.perf_counter() - t0
    mem_catalog = memory_info(client)

    # 2. the users' events, by the worker's batch path
    records = Records(settings, np.random.default_rng(cfg.seed + 1))
    statuses: Counter = Counter()
    events = batches = 0
    apply_s = 0.0
    t0 = time.perf_counter()
    expected = int(cfg.users * cfg.events_per_user)
    tid = task("events", expected) if task else None
    for first in range(0, cfg.users, cfg.cohort):
        ev = work.cohort(first, min(cfg.cohort, cfg.users - first))
        n = len(ev["ts"])
        for lo in range(0, n, batch):
            decoded = records.decoded(ev, lo, min(lo + batch, n))
            a0 = time.perf_counter()
            outcomes = store.apply(decoded)
            apply_s += time.perf_counter() - a0
            statuses.update(o.status for o in outcomes)
            events += len(decoded)
            batches += 1
            if tid is not None:
                progress.update(tid, completed=events, total=max(expected, events))
    build_s = time.perf_counter() - t0
    if tid is not None:
        progress.update(tid, completed=events, total=events)
    mem_end = memory_info(client)
    stats1 = client.info("stats")

    # 3. what is there: every key by family, a sample of each measured
    t0 = time.perf_counter()
    tid = task("census (SCAN, MEMORY USAGE)", None) if task else None
    families = census(client, prefix, cfg.sample, cfg.seed,
                      on_keys=(lambda k: progress.update(tid, completed=k)) if tid is not None else None)
    census_s = time.perf_counter() - t0
    if tid is not None:
        progress.update(tid, completed=sum(v["keys"] for v in families.values()), total=None)
    report = summarise(cfg, settings, config, families, mem_start, mem_catalog, mem_end, statuses=dict(statuses),
                       events=events, batches=batches, batch=batch, catalog_s=catalog_s, build_s=build_s,
                       apply_s=apply_s, census_s=census_s, other_keys=other_keys,
                       evicted=stats1.get("evicted_keys", 0) - stats0.get("evicted_keys", 0),
                       expired=stats1.get("expired_keys", 0) - stats0.get("expired_keys", 0))
    if not cfg.keep:
        tid = task("deleting the bench's keys", None) if task else None
        deleted = 0
        keys = []
        for key in client.scan_iter(match=glob_escape(prefix) + "*", count=5000):
            keys.append(key)
            if len(keys) >= 5000:
                deleted += client.unlink(*keys)
                keys = []
                if tid is not None:
                    progress.update(tid, completed=deleted)
        if keys:
            deleted += client.unlink(*keys)
        report["deleted_keys"] = deleted
    store.close()
    return report


def summarise(cfg: ScaleConfig, settings: Settings, config: FeatureConfig, families: dict, mem_start: dict,
              mem_catalog: dict, mem_end: dict, **run) -> dict:
    users = cfg.users
    state = mem_end["used_memory"] - mem_catalog["used_memory"]
    catalog = mem_catalog["used_memory"] - mem_start["used_memory"]
    per_user = state / users
    event_families = {f: v for f, v in families.items() if v["group"] != "catalog"}
    event_keys = sum(v["keys"] for v in event_families.values())
    estimated = sum(v["est_bytes"] for v in event_families.values())
    for v in families.values():
        v["keys_per_user"] = round(v["keys"] / users, 4)
        v["bytes_per_user"] = round(v["est_bytes"] / users, 1)
        v["share_of_state"] = round(v["est_bytes"] / state, 4) if state > 0 and v["group"] != "catalog" else None
    groups: dict[str, dict] = {}
    for v in event_families.values():
        g = groups.setdefault(v["group"], {"keys": 0, "est_bytes": 0})
        g["keys"] += v["keys"]
        g["est_bytes"] += v["est_bytes"]
    for g in groups.values():
        g["bytes_per_user"] = round(g["est_bytes"] / users, 1)
        g["share_of_state"] = round(g["est_bytes"] / state, 4) if state > 0 else None
    sessions = families.get("session.hash", {}).get("keys", 0)
    markers = families.get("marker", {})
    items_touched = families.get("item.stats", {}).get("keys", 0)
    item_bytes = sum(v["est_bytes"] for f, v in families.items() if v["group"] == "item")
    trending_bytes = groups.get("trending", {}).get("est_bytes", 0)
    user_scaled = sum(groups.get(g, {}).get("est_bytes", 0) for g in USER_GROUPS)
    # Linear: everything per user. The other: the user-proportional families per user, the item and trending
    # families as measured (they are bounded by the catalog: stats and guards per item, co-visitation capped).
    overhead = state - estimated  # main and expiry dictionaries, allocator rounding: spread like the keys
    user_scaled_with_overhead = user_scaled * (state / estimated) if estimated else 0
    linear = per_user * ONE_MILLION
    users_only = user_scaled_with_overhead / users * ONE_MILLION + (state - user_scaled_with_overhead)
    markers_scaled = markers.get("est_bytes", 0) * (state / estimated) if estimated else 0
    dominant = max(event_families.items(), key=lambda kv: kv[1]["est_bytes"], default=(None, None))
    rate = run["events"] / run["build_s"] if run["build_s"] else 0.0
    return {
        "what": "Redis state of N users built through RedisFeatureStore.apply (the worker's batch path, no Kafka)",
        "workload": {**asdict(cfg), "batch": run["batch"], "type_p": dict(zip(map(str, TYPES), map(float, TYPE_P))),
                     "follow_up_seen": FOLLOW_UP_SEEN, "session_gap_s": settings.session_gap_s,
                     "partitions": max(1, settings.topic_partitions), "redis_prefix": settings.redis_prefix,
                     "id_forms": {"user": user_id(0), "item": item_id(12345), "event": "32 hex digits"}},
        "feature_config": asdict(config),
        "users": users, "events": run["events"], "events_per_user": round(run["events"] / users, 2),
        "batches": run["batches"], "statuses": run["statuses"], "sessions": sessions,
        "sessions_per_user": round(sessions / users, 3), "items_touched": items_touched,
        "memory": {"start": mem_start, "after_catalog": mem_catalog, "end": mem_end},
        "used_memory_state_bytes": state, "used_memory_catalog_bytes": catalog,
        "bytes_per_user": round(per_user, 1), "keys": event_keys, "keys_per_user": round(event_keys / users, 3),
        "catalog_keys": families.get("catalog.meta", {}).get("keys", 0),
        "bytes_per_session": round(groups.get("session", {}).get("est_bytes", 0) / sessions, 1) if sessions else None,
        "bytes_per_marker": round(markers.get("est_bytes", 0) / run["events"], 1) if run["events"] else None,
        "bytes_per_item": round(item_bytes / items_touched, 1) if items_touched else None,
        "bytes_per_catalog_item": round(catalog / cfg.items, 1) if cfg.catalog and cfg.items else None,
        "trending_bytes": trending_bytes,
        "memory_usage_sum_bytes": estimated,
        "memory_usage_share_of_used_memory": round(estimated / state, 4) if state > 0 else None,
        "overhead_bytes": overhead,
        "families": families, "groups": groups,
        "dominant_family": {"family": dominant[0], **({k: dominant[1][k] for k in (
            "keys_per_user", "mean_bytes", "bytes_per_user", "share_of_state", "encodings", "mean_elements")}
            if dominant[1] else {})},
        "extrapolation_1m_users": {
            "method": "linear in users from this run" if users != ONE_MILLION else "measured at 1,000,000 users",
            "linear_bytes": round(linear), "linear_gib": round(linear / 2**30, 3),
            "user_families_linear_item_families_as_measured_bytes": round(users_only),
            "user_families_linear_item_families_as_measured_gib": round(users_only / 2**30, 3),
            "without_markers_linear_gib": round((state - markers_scaled) / users * ONE_MILLION / 2**30, 3),
        },
        "compare": {
            "metarank_gib_per_million_users": METARANK_GIB_PER_MILLION,
            "ratio_to_metarank": round(linear / 2**30 / METARANK_GIB_PER_MILLION, 2),
            "soak_user_keys_bytes_per_user": SOAK_BYTES_PER_USER,
            "user_group_bytes_per_user": groups.get("user", {}).get("bytes_per_user"),
            "target_gib_per_million_users": 1.0,
            "meets_target": linear / 2**30 <= 1.0,
        },
        "rate": {
            "events_per_s": round(rate, 1),
            "apply_events_per_s": round(run["events"] / run["apply_s"], 1) if run["apply_s"] else None,
            "build_s": round(run["build_s"], 1), "apply_s": round(run["apply_s"], 1),
            "catalog_s": round(run["catalog_s"], 1), "census_s": round(run["census_s"], 1),
            "hours_for_1m_users_at_this_rate": round(ONE_MILLION * cfg.events_per_user / rate / 3600, 2)
            if rate else None,
        },
        "other_keys_on_server_at_start": run["other_keys"],
        "evicted_keys": run["evicted"], "expired_keys": run["expired"],
    }


def render(report: dict):
    from rich.table import Table

    users = report["users"]
    table = Table(title=f"Redis state of {users:,} users ({report['events']:,} events, "
                        f"{report['sessions']:,} sessions, {report['items_touched']:,} items)")
    for col in ("family", "keys", "keys/user", "bytes/key", "bytes/user", "share", "encoding", "elements", "TTL h"):
        table.add_column(col, justify="left" if col in ("family", "encoding") else "right")
    for name, v in sorted(report["families"].items(), key=lambda kv: -kv[1]["est_bytes"]):
        share = f"{v['share_of_state']:.1%}" if v["share_of_state"] is not None else "apart"
        table.add_row(name, f"{v['keys']:,}", f"{v['keys_per_user']:.2f}", f"{v['mean_bytes']:.0f}",
                      f"{v['bytes_per_user']:.0f}", share, ", ".join(v["encodings"]), f"{v['mean_elements']:g}",
                      f"{v['mean_ttl_h']:g}" if v["mean_ttl_h"] is not None else "-")
    over = report["overhead_bytes"]
    table.add_row("(outside MEMORY USAGE: hash table buckets, expiry entries)", "", "", "",
                  f"{over / users:.0f}", f"{over / report['used_memory_state_bytes']:.1%}", "", "", "")
    ex, cmp, rate = report["extrapolation_1m_users"], report["compare"], report["rate"]
    lines = [
        f"used_memory for the events: {report['used_memory_state_bytes'] / 2**20:,.1f} MiB = "
        f"{report['bytes_per_user']:,.0f} bytes/user, {report['keys_per_user']:.1f} keys/user "
        f"(MEMORY USAGE accounts for {report['memory_usage_share_of_used_memory']:.0%}); catalog apart: "
        f"{report['used_memory_catalog_bytes'] / 2**20:,.1f} MiB",
        f"per session {report['bytes_per_session']} B, per marker {report['bytes_per_marker']} B, "
        f"per item touched {report['bytes_per_item']} B",
        f"1,000,000 users ({ex['method']}): {ex['linear_gib']:.2f} GiB; with the item families as measured "
        f"{ex['user_families_linear_item_families_as_measured_gib']:.2f} GiB; without markers "
        f"{ex['without_markers_linear_gib']:.2f} GiB. Metarank: {cmp['metarank_gib_per_million_users']} GiB "
        f"(x{cmp['ratio_to_metarank']}); target 1 GiB: {'met' if cmp['meets_target'] else 'missed'}",
        f"build: {rate['events_per_s']:,.0f} events/s ({rate['apply_events_per_s']:,.0f} inside apply); "
        f"1,000,000 users at this rate: {rate['hours_for_1m_users_at_this_rate']} h",
    ]
    return table, lines


def run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    cfg = ScaleConfig(users=args.users, items=args.items, events_per_user=args.events_per_user,
                      sessions_per_user=args.sessions, categories=args.categories, zipf=args.zipf,
                      cohort=args.cohort, batch=args.batch, sample=args.sample, seed=args.seed,
                      catalog=not args.no_catalog, keep=args.keep)
    if cfg.users < 1 or cfg.items < 1 or cfg.sessions_per_user < 1:
        console.print("[red]error:[/] --users, --items and --sessions must be at least 1")
        return 2
    started = run_started()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        report = build(args.settings, cfg, progress)
    table, lines = render(report)
    out_console = make_console()
    out_console.print(table)
    for line in lines:
        out_console.print(line)
    out = output_folder(args)
    path = write_report(out, "bench-scale.json", report, started)
    console.print(f"wrote {path}")
    return 0
