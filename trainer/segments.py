"""Customer segments: k-means over the sequence model's user vectors, described for people.

`streamrec segments` reads each user's history (a data file through the
trainer's importers, or Redis's per-user recent items), encodes it with the
sequence model (the ONNX encoder of a registry version as the scorer runs it,
or a torch `SASRec`), clusters the unit-length vectors with k-means (scikit-learn,
k-means++ seeding, best of several starts), and then:

- describes each segment: size, activity, click rate, conversion, top
  categories (with their lift over everyone) and top items;
- scores the clustering with the silhouette (scikit-learn) and compares it with the
  obvious baseline, segments by quantiles of the users' interaction counts,
  measured in the same vector space;
- writes ``segments.json`` and ``segments.png`` (a PCA projection of the
  vectors, coloured by segment, beside the baseline's colouring);
- stores each user's segment in Redis (``P{u:USER}:segment``, see
  `streamrec.stream.keys`), where the scorer reads it with the user's other
  features and puts it on recommendations and on its per-arm metrics.

Segment ids are ordered by size (0 is the largest) and bounded by
`streamrec.stream.schemas.MAX_SEGMENTS`, so metric labels stay few.
``--every 1h`` repeats the run until SIGTERM, with health and metrics like
the other services.

>>> x = np.array([[0, 0], [0, 0.1], [5, 5], [5, 5.1]], dtype=np.float32)
>>> labels = kmeans(x, 2, seed=0).labels
>>> bool(labels[0] == labels[1] != labels[2] == labels[3])
True
>>> round(silhouette(x, labels), 3)
0.986
>>> adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0])
1.0
"""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from streamrec.stream.schemas import MAX_SEGMENTS

# The command reads data through the trainer's importers and clusters with scikit-learn (imported where
# used: every `streamrec` command imports this module): without the trainer extra (the serving image)
# `streamrec.cli` skips it quietly, as it does the other trainer commands.
for _needed in ("torch", "sklearn"):
    if importlib.util.find_spec(_needed) is None:
        raise ImportError("streamrec segments needs the trainer extra: pip install 'streamrec[trainer]'",
                          name=_needed)

log = logging.getLogger(__name__)

BEHAVIOUR_TYPES = ("view", "click", "add_to_cart", "purchase")
"""Interaction types counted per user for the behaviour columns."""


class SegmentError(ValueError):
    """Input the segmentation cannot use; the message names the option and the fix."""


# --------------------------------------------------------------------------- #
# histories
# --------------------------------------------------------------------------- #
@dataclass
class Histories:
    """Each user's items (oldest first) and interaction counts by type, plus item categories."""

    users: list[str]
    sequences: list[list[str]]
    counts: dict[str, np.ndarray]
    """Per type in `BEHAVIOUR_TYPES`: one count per user."""
    categories: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def activity(self) -> np.ndarray:
        """Interactions per user (all counted types)."""
        return sum(self.counts.values()) if self.counts else np.zeros(len(self.users))

    @classmethod
    def from_interactions(cls, inter, min_items: int = 1) -> "Histories":
        """From the trainer's `Interactions` (any importer): positive items in time order, counts by type."""
        seqs = {u: s for u, s in inter.sequences().items() if len(s) >= min_items}
        users = sorted(seqs)
        row = {u: j for j, u in enumerate(users)}
        counts = {t: np.zeros(len(users)) for t in BEHAVIOUR_TYPES}
        for (user, kind), n in Counter(zip(inter.user.tolist(), inter.kind.tolist())).items():
            if kind in counts and user in row:
                counts[kind][row[user]] = n
        return cls(users, [seqs[u] for u in users], counts, dict(inter.categories), inter.source)

    @classmethod
    def from_redis(cls, client, keys, min_items: int = 1, limit: int | None = None,
                   chunk: int = 500) -> "Histories":
        """Every user with long-term recent items under the prefix (``P{u:USER}:recent``), their
        counts from ``P{u:USER}:user`` and the items' categories from the catalog metadata."""
        from streamrec.stream.keys import glob_escape

        head = keys.user_base("")[:-1]  # "P{u:"
        pattern = glob_escape(head) + "*}:recent"
        names = []
        for raw in client.scan_iter(match=pattern, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            names.append(key[len(head):-len("}:recent")])
            if limit and len(names) >= limit:
                break
        names.sort()
        users, seqs, rows = [], [], []
        fields = [f"n:{t}" for t in BEHAVIOUR_TYPES]
        for start in range(0, len(names), chunk):
            part = names[start:start + chunk]
            pipe = client.pipeline(transaction=False)
            for u in part:
                pipe.zrange(keys.recent(u), 0, -1)  # by last event time: oldest first
                pipe.hmget(keys.user(u), *fields)
            raw = pipe.execute()
            for j, u in enumerate(part):
                seq = [m.decode() if isinstance(m, bytes) else str(m) for m in raw[2 * j]]
                if len(seq) < min_items:
                    continue
                users.append(u)
                seqs.append(seq)
                rows.append([float(v or 0) for v in raw[2 * j + 1]])
        counts = np.array(rows, dtype=np.float64).reshape(len(users), len(BEHAVIOUR_TYPES))
        items = sorted({i for s in seqs for i in s})
        categories: dict[str, str] = {}
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            pipe = client.pipeline(transaction=False)
            for item in part:
                pipe.hget(keys.item_meta(item), "category")
            for item, cat in zip(part, pipe.execute()):
                if cat:
                    categories[item] = cat.decode() if isinstance(cat, bytes) else str(cat)
        return cls(users, seqs, {t: counts[:, j] for j, t in enumerate(BEHAVIOUR_TYPES)}, categories,
                   source=f"redis {keys.prefix!r}")


# --------------------------------------------------------------------------- #
# user vectors
# --------------------------------------------------------------------------- #
class Encoder(Protocol):
    """What turns item sequences into user vectors: `streamrec.serving.ranking.SeqModel` (ONNX) or
    `TorchEncoder`."""

    name: str

    def user_vectors(self, sequences: Sequence[Sequence[str]], categories: dict[str, str]) -> np.ndarray: ...


class TorchEncoder:
    """A torch `SASRec` behind the `Encoder` interface (training runs and tests; no export needed)."""

    def __init__(self, model, name: str = "sasrec@torch"):
        self.model = model.eval()
        self.name = name
        self.max_len = model.max_len

    def user_vectors(self, sequences, categories) -> np.ndarray:
        import torch

        items, cats = self.model.encode_sequences([list(s) for s in sequences], categories)
        with torch.no_grad():
            return self.model(torch.from_numpy(items), torch.from_numpy(cats)).numpy()


def long_term_vectors(encoder: Encoder, sequences: Sequence[Sequence[str]], categories: dict[str, str],
                      views: int = 4, batch: int = 512) -> np.ndarray:
    """Each user's long-term vector, unit length: the mean of the encoder's user vectors after
    ``views`` prefixes of the history spread over it (the newest included).

    The encoder's vector is "what next": it leans on the last few items. Averaging the states at
    several points of the history keeps the taste that persists and drops the passing interest.
    """
    prefixes, owner = [], []
    for u, seq in enumerate(sequences):
        n = len(seq)
        ends = sorted({max(1, round(n * (v + 1) / views)) for v in range(views)}) if n else [0]
        for end in ends:
            prefixes.append(list(seq[:end]))
            owner.append(u)
    owner_arr = np.asarray(owner, dtype=np.int64)
    chunks = [np.asarray(encoder.user_vectors(prefixes[s:s + batch], categories), dtype=np.float64)
              for s in range(0, len(prefixes), batch)]
    vecs = np.concatenate(chunks) if chunks else np.zeros((0, 1))
    out = np.zeros((len(sequences), vecs.shape[1]))
    np.add.at(out, owner_arr, vecs)
    return _unit(out)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


# --------------------------------------------------------------------------- #
# clustering and its quality
# --------------------------------------------------------------------------- #
@dataclass
class KMeansResult:
    labels: np.ndarray
    centroids: np.ndarray
    inertia: float
    """Sum of squared distances of the points to their centroid."""
    iterations: int


def kmeans(x: np.ndarray, k: int, seed: int = 0, restarts: int = 4, max_iter: int = 100) -> KMeansResult:
    """scikit-learn's k-means (Lloyd, k-means++ seeding); the best of ``restarts`` runs by inertia."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float64)
    if k < 1 or k > len(x):
        raise SegmentError(f"--k: {k} segments need at least {k} users with a history; got {len(x)}. "
                           "Lower --k or give more data")
    km = KMeans(n_clusters=k, init="k-means++", n_init=max(1, restarts), max_iter=max_iter,
                random_state=seed).fit(x)
    return KMeansResult(km.labels_.astype(np.int64), km.cluster_centers_, float(km.inertia_), int(km.n_iter_))


def silhouette(x: np.ndarray, labels: Sequence[int], max_points: int = 3000, seed: int = 0) -> float:
    """Mean silhouette (Euclidean, scikit-learn), exact on up to ``max_points`` users sampled without
    replacement.

    A point alone in its cluster scores 0; with fewer than two clusters the score is NaN.
    """
    from sklearn.metrics import silhouette_score

    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    if len(x) > max_points:
        pick = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x, labels = x[pick], labels[pick]
    clusters = len(np.unique(labels))
    if clusters < 2:
        return float("nan")
    if clusters == len(x):  # every point alone (scikit-learn refuses this case)
        return 0.0
    return float(silhouette_score(x, labels, metric="euclidean"))


def activity_segments(activity: np.ndarray, k: int) -> np.ndarray:
    """The baseline: segment ``j`` holds the users between the j-th and (j+1)-th ``k``-quantile of
    their interaction count (ties may leave fewer than ``k`` segments)."""
    activity = np.asarray(activity, dtype=np.float64)
    edges = np.quantile(activity, np.linspace(0, 1, k + 1)[1:-1])
    return np.searchsorted(edges, activity, side="right")


def adjusted_rand_index(a: Sequence, b: Sequence) -> float:
    """Agreement of two partitions corrected for chance (scikit-learn): 1 identical, about 0 independent."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(a), np.asarray(b)))


def purity(labels: Sequence, truth: Sequence) -> float:
    """Share of users whose segment's majority true group is their own."""
    table = Counter(zip(np.asarray(labels).tolist(), np.asarray(truth).tolist()))
    best: dict = {}
    for (seg, _), n in table.items():
        best[seg] = max(best.get(seg, 0), n)
    return sum(best.values()) / max(len(labels), 1)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The two leading principal components of ``x`` (scikit-learn's PCA; zeros where there are fewer)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    n = min(2, *x.shape)
    proj = PCA(n_components=n, random_state=0).fit_transform(x)
    return np.pad(proj, ((0, 0), (0, 2 - n)))


# --------------------------------------------------------------------------- #
# description
# --------------------------------------------------------------------------- #
def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den > 0 else None


def describe(hist: Histories, labels: np.ndarray, top_n: int = 5) -> list[dict]:
    """One entry per segment: size, behaviour, top categories with lift, top items."""
    labels = np.asarray(labels)
    all_cats = Counter(hist.categories.get(i, "") for s in hist.sequences for i in s)
    total = sum(all_cats.values()) or 1
    activity = hist.activity
    out = []
    for seg in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == seg)
        cats: Counter = Counter()
        items: Counter = Counter()
        for j in members.tolist():
            items.update(hist.sequences[j])
            cats.update(hist.categories.get(i, "") for i in hist.sequences[j])
        n_cat = sum(cats.values()) or 1
        named = [(c, n) for c, n in cats.most_common() if c][:top_n]
        counts = {t: float(hist.counts[t][members].sum()) for t in BEHAVIOUR_TYPES}
        n_items = sum(items.values()) or 1
        top_cats = [{"category": c, "share": round(n / n_cat, 4), "lift": round((n / n_cat) / (all_cats[c] / total), 2)}
                    for c, n in named]
        # Named after what sets it apart: the categories most over-represented (lift) among those
        # that make at least 5% of its interactions (the most consumed are often just the popular ones).
        telling = sorted((c for c in top_cats if c["share"] >= 0.05), key=lambda c: -c["lift"])
        out.append({
            "segment": seg,
            "name": " + ".join(c["category"] for c in telling[:2]) or f"segment {seg}",
            "users": int(len(members)),
            "share": round(len(members) / max(len(labels), 1), 4),
            "activity": {"mean": round(float(activity[members].mean()), 2) if len(members) else 0.0,
                         "median": float(np.median(activity[members])) if len(members) else 0.0},
            "counts": counts,
            "click_rate": _ratio(counts["click"], counts["view"]),
            "conversion": _ratio(counts["purchase"], counts["view"]),
            "top_categories": top_cats,
            "top_items": [{"item_id": i, "share": round(n / n_items, 4)} for i, n in items.most_common(top_n)],
        })
    return out


def order_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Relabel so that segment 0 is the largest (ties: the lower old id first); stable names for people."""
    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda j: (-sizes[j], j))
    new = np.empty(k, dtype=np.int64)
    new[order] = np.arange(k)
    return new[labels]


# --------------------------------------------------------------------------- #
# one run
# --------------------------------------------------------------------------- #
@dataclass
class SegmentConfig:
    """Shape of a segmentation run."""

    k: int = 8
    seed: int = 0
    restarts: int = 4
    views: int = 4
    """Prefixes of each history averaged into its long-term vector."""
    min_items: int = 1
    """Users with fewer positive items are left out (their segment stays unset: "none")."""
    top_n: int = 5

    def check(self) -> None:
        if not 2 <= self.k <= MAX_SEGMENTS:
            raise SegmentError(f"--k (STREAMREC_SEGMENTS_K): {self.k} segments; use 2 to {MAX_SEGMENTS} "
                              "(segment ids are metric labels: they stay few)")
        if self.views < 1:
            raise SegmentError(f"--views: {self.views}; use 1 or more prefixes per history")


@dataclass
class Segmentation:
    """The result of one run: each user's segment, the vectors, the report."""

    users: list[str]
    labels: np.ndarray
    vectors: np.ndarray
    baseline: np.ndarray
    report: dict


def segment(hist: Histories, encoder: Encoder, cfg: SegmentConfig, truth: dict[str, int] | None = None,
            progress=None) -> Segmentation:
    """Encode, cluster, describe and score; ``truth`` (user -> planted group) adds ARI and purity."""
    cfg.check()
    if len(hist.users) < cfg.k:
        raise SegmentError(f"--k: {cfg.k} segments need at least {cfg.k} users with a history; "
                           f"{hist.source or 'the input'} has {len(hist.users)}. Lower --k or give more data")
    t0 = time.perf_counter()
    vectors = long_term_vectors(encoder, hist.sequences, hist.categories, cfg.views)
    if progress:
        progress("clustering")
    t1 = time.perf_counter()
    km = kmeans(vectors, cfg.k, seed=cfg.seed, restarts=cfg.restarts)
    labels = order_by_size(km.labels, cfg.k)
    base = activity_segments(hist.activity, cfg.k)
    t2 = time.perf_counter()
    quality = {
        "kmeans": {"method": "k-means on sequence-model vectors", "segments": int(len(np.unique(labels))),
                   "silhouette": round(silhouette(vectors, labels, seed=cfg.seed), 4)},
        "activity": {"method": "quantiles of interaction count", "segments": int(len(np.unique(base))),
                     "silhouette": round(silhouette(vectors, base, seed=cfg.seed), 4)},
    }
    if truth is not None:
        known = [j for j, u in enumerate(hist.users) if u in truth]
        planted = [truth[hist.users[j]] for j in known]
        for name, lab in (("kmeans", labels), ("activity", base)):
            quality[name]["ari_planted"] = round(adjusted_rand_index(lab[known], planted), 4)
            quality[name]["purity_planted"] = round(purity(lab[known], planted), 4)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": hist.source, "model": getattr(encoder, "name", "?"), "k": cfg.k, "users": len(hist.users),
        "dim": int(vectors.shape[1]), "seed": cfg.seed, "inertia": round(km.inertia, 4),
        "seconds": {"encode": round(t1 - t0, 3), "cluster": round(t2 - t1, 3),
                    "score": round(time.perf_counter() - t2, 3)},
        "quality": quality,
        "segments": describe(hist, labels, cfg.top_n),
        "baseline_sizes": np.bincount(base, minlength=cfg.k).tolist(),
    }
    return Segmentation(hist.users, labels, vectors, base, report)


# --------------------------------------------------------------------------- #
# outputs: Redis, JSON, picture, table
# --------------------------------------------------------------------------- #
def write_redis(client, keys, users: Sequence[str], labels: Sequence[int], ttl_s: int, chunk: int = 1000) -> int:
    """Each user's segment at ``P{u:USER}:segment`` with a TTL (pipelined); returns users written."""
    labels = np.asarray(labels).tolist()
    for start in range(0, len(users), chunk):
        pipe = client.pipeline(transaction=False)
        for u, seg in zip(users[start:start + chunk], labels[start:start + chunk]):
            pipe.set(keys.segment(u), int(seg), ex=int(ttl_s))
        pipe.execute()
    return len(users)


def plot(seg: Segmentation, path: Path) -> None:
    """PCA of the user vectors: coloured by segment, and by the activity baseline beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = pca_2d(seg.vectors)
    q = seg.report["quality"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharex=True, sharey=True)
    names = {s["segment"]: s["name"] for s in seg.report["segments"]}
    for ax, labels, title in ((axes[0], seg.labels, f"k-means segments (silhouette {q['kmeans']['silhouette']})"),
                              (axes[1], seg.baseline,
                               f"activity-count segments (silhouette {q['activity']['silhouette']})")):
        cmap = plt.get_cmap("tab20" if labels.max() >= 10 else "tab10")
        for j in np.unique(labels).tolist():
            m = labels == j
            label = f"{j}: {names.get(j, '')}" if labels is seg.labels else f"activity q{j}"
            ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, color=cmap(j % cmap.N), label=label)
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.legend(fontsize=7, markerscale=2, loc="best")
    axes[0].set_ylabel("PC 2")
    fig.suptitle(f"{seg.report['users']:,} users, {seg.report['model']}, k={seg.report['k']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_table(report: dict):
    """The rich table comparing the clustering with the activity baseline."""
    from rich.table import Table

    q = report["quality"]
    planted = "ari_planted" in q["kmeans"]
    t = Table(title=f"segment quality: {report['users']:,} users, k={report['k']}, {report['model']}")
    for col in ("segmentation", "segments", "silhouette") + (("ARI vs planted", "purity") if planted else ()):
        t.add_column(col, justify="left" if col == "segmentation" else "right")
    for key in ("kmeans", "activity"):
        row = q[key]
        t.add_row(row["method"], str(row["segments"]), f"{row['silhouette']:.3f}",
                  *((f"{row['ari_planted']:.3f}", f"{row['purity_planted']:.3f}") if planted else ()))
    return t


def segments_table(report: dict):
    """One row per segment: what marketing reads."""
    from rich.table import Table

    t = Table(title="segments")
    for col in ("id", "name", "users", "share", "activity", "click rate", "conversion", "top categories (lift)",
                "top items"):
        t.add_column(col, justify="right" if col in ("id", "users", "share", "activity", "click rate",
                                                     "conversion") else "left")
    for s in report["segments"]:
        t.add_row(str(s["segment"]), s["name"], f"{s['users']:,}", f"{s['share']:.1%}",
                  f"{s['activity']['mean']:.1f}", _pct(s["click_rate"]), _pct(s["conversion"]),
                  ", ".join(f"{c['category']} ({c['lift']:.1f}x)" for c in s["top_categories"][:3]),
                  ", ".join(i["item_id"] for i in s["top_items"][:3]))
    return t


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


# --------------------------------------------------------------------------- #
# metrics of the scheduled job (`--every`)
# --------------------------------------------------------------------------- #
def _metrics():
    """Created on first use: only the `segments` process exports them."""
    global _M
    if _M is None:
        from prometheus_client import Counter as PCounter, Gauge

        _M = {
            "runs": PCounter("streamrec_segments_runs_total", "Segmentation runs by outcome", ["outcome"]),
            "last_success": Gauge("streamrec_segments_last_success_timestamp_seconds",
                                  "Wall clock of the last successful run"),
            "users": Gauge("streamrec_segments_users", "Users per segment in the last run", ["segment"]),
            "silhouette": Gauge("streamrec_segments_silhouette", "Silhouette of the last run's segmentation "
                                "(kmeans) and of the activity-count baseline (activity)", ["method"]),
            "seconds": Gauge("streamrec_segments_run_seconds", "Duration of the last run"),
        }
        for outcome in ("ok", "error"):
            _M["runs"].labels(outcome)
    return _M


_M: dict | None = None


def _record(report: dict, seconds: float) -> None:
    m = _metrics()
    m["runs"].labels("ok").inc()
    m["last_success"].set(time.time())
    m["seconds"].set(seconds)
    m["users"].clear()
    for s in report["segments"]:
        m["users"].labels(str(s["segment"])).set(s["users"])
    for method, q in report["quality"].items():
        m["silhouette"].labels(method).set(q["silhouette"])


# --------------------------------------------------------------------------- #
# the command
# --------------------------------------------------------------------------- #
def parse_duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``15m``, ``1h``, ``1d``.

    >>> parse_duration("1h"), parse_duration("15m"), parse_duration("90")
    (3600.0, 900.0, 90.0)
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = str(text).strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise SegmentError(f"--every: {text!r} is not a duration; use e.g. 90s, 15m, 1h or 1d")
    return value


def load_encoder(settings, model: str):
    """The sequence model ``NAME[@VERSION]`` (default version: current) from the registry, as served."""
    import tempfile

    from streamrec.registry import Registry
    from streamrec.serving.ranking import SeqModel

    name, _, version = model.partition("@")
    reg = Registry(settings.registry_uri)
    version = reg.resolve(name, version or None)
    meta = reg.verify(name, version)
    if meta.kind != "sasrec":
        raise SegmentError(f"--model: {name}@{version} is a {meta.kind!r} model; segments need the sequence "
                           "model (kind 'sasrec')")
    folder = reg.location(name, version)
    if not reg.local:  # ONNX Runtime opens local files: copy the version first
        local = Path(tempfile.mkdtemp(prefix="streamrec-segments-"), name, version)
        reg.fs.get(folder.rstrip("/") + "/", str(local), recursive=True)
        folder = str(local)
    return SeqModel(folder, meta, settings.device)


def load_histories(args, min_items: int) -> Histories:
    """``--data redis``: the users' recent items in Redis; anything else: the trainer's importers."""
    if args.data == "redis":
        from streamrec.stream.feature_store import redis_client
        from streamrec.stream.keys import Keys

        client = redis_client(args.settings)
        try:
            return Histories.from_redis(client, Keys(args.settings.redis_prefix), min_items=min_items,
                                        limit=args.max_users)
        finally:
            client.close()
    from streamrec.trainer.cli import load_data

    return Histories.from_interactions(load_data(args), min_items=min_items)


def read_truth(path: str) -> dict[str, int]:
    """Known groups of users (CSV ``user_id,segment``, e.g. the planted ones of `streamrec data synth
    --segments`), to score the segmentation against."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as f:
            return {row["user_id"]: int(row["segment"]) for row in csv.DictReader(f)}
    except (KeyError, ValueError, TypeError) as exc:
        raise SegmentError(f"--truth: {path} needs the columns user_id,segment (integer segment): {exc}") from None


def run_once(args, console) -> dict:
    """One segmentation: read, encode, cluster, describe, write JSON/PNG and Redis; returns the report."""
    s = args.settings
    cfg = SegmentConfig(k=args.k, seed=args.seed, views=args.views, min_items=args.min_items)
    cfg.check()
    started = time.perf_counter()
    with console.status("reading histories...") as status:
        hist = load_histories(args, cfg.min_items)
        status.update(f"loading the sequence model {args.model}...")
        encoder = load_encoder(s, args.model)
        status.update(f"encoding and clustering {len(hist.users):,} users with {encoder.name}...")
        truth = read_truth(args.truth) if args.truth else None
        seg = segment(hist, encoder, cfg, truth=truth,
                      progress=lambda what: status.update(f"{what} {len(hist.users):,} users..."))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not args.no_redis:
            status.update(f"writing {len(seg.users):,} segments to Redis...")
            from streamrec.stream.feature_store import redis_client
            from streamrec.stream.keys import Keys

            client = redis_client(s)
            try:
                written = write_redis(client, Keys(s.redis_prefix), seg.users, seg.labels, s.segments_ttl_s)
            finally:
                client.close()
            seg.report["redis"] = {"users": written, "key": Keys(s.redis_prefix).segment("USER"),
                                   "ttl_s": s.segments_ttl_s}
        status.update("drawing...")
        plot(seg, out / "segments.png")
    (out / "segments.json").write_text(json.dumps(seg.report, indent=2) + "\n")
    _record(seg.report, time.perf_counter() - started)
    return seg.report


def cmd_segments(args) -> int:
    """Segment once, or every ``--every`` until SIGTERM/SIGINT."""
    from streamrec.console import make_console

    console, out = make_console(stderr=True), make_console()
    args.k = args.k or args.settings.segments_k
    args.model = args.model or args.settings.scorer_seq_model
    try:
        every = parse_duration(args.every) if args.every else None
        SegmentConfig(k=args.k, views=args.views).check()
    except SegmentError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    if every is None:
        try:
            report = run_once(args, console)
        except Exception as exc:  # noqa: BLE001 - bad input, missing model, Redis down: one clear line
            if not _expected_failure(exc):
                raise
            console.print(f"[red]error:[/] {exc}")
            return 1
        _print(report, args, console, out)
        return 0
    return SegmentService(args, every).run()


def _expected_failure(exc: Exception) -> bool:
    import redis

    from streamrec.registry import RegistryError
    from streamrec.serving.ranking import ModelError
    from streamrec.trainer.data import DataError

    return isinstance(exc, (SegmentError, DataError, RegistryError, ModelError, redis.RedisError, OSError))


def _print(report: dict, args, console, out) -> None:
    out.print(quality_table(report))
    out.print(segments_table(report))
    where = Path(args.out)
    redis_note = f"; {report['redis']['users']:,} segments in Redis" if "redis" in report else ""
    console.print(f"{where / 'segments.json'}, {where / 'segments.png'}{redis_note}")


class SegmentService:
    """``streamrec segments --every``: a run now, then one per period; health and metrics over HTTP.

    A failed run (no model yet, Redis away) is logged and counted, and the next period tries
    again; SIGTERM/SIGINT ends the wait at once (a run in progress finishes first).
    """

    def __init__(self, args, every_s: float, port: int | None = None):
        self.args = args
        self.every_s = every_s
        s = args.settings
        self.port = s.segments_port if port is None else port
        self.stopping = threading.Event()
        self.last_ok: float | None = None
        self.runs = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self, install_signals: bool = True) -> int:
        from streamrec.console import make_console
        from streamrec.health import HealthServer

        console, out = make_console(stderr=True), make_console()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        _metrics()
        http = HealthServer(self.args.settings.http_host, self.port,
                            checks={"segmented": lambda: self.last_ok is not None},
                            port_setting="STREAMREC_SEGMENTS_PORT").start()
        self.port = http.port
        log.info("segments: every %.0f s; health and metrics on port %d", self.every_s, http.port)
        try:
            while not self.stopping.is_set():
                try:
                    report = run_once(self.args, console)
                    self.last_ok = time.time()
                    _print(report, self.args, console, out)
                except Exception as exc:  # noqa: BLE001 - the schedule survives a failed run
                    _metrics()["runs"].labels("error").inc()
                    if _expected_failure(exc):
                        console.print(f"[red]segments run failed:[/] {exc}; next try in {self.every_s:.0f} s")
                    else:
                        log.exception("segments run failed; next try in %.0f s", self.every_s)
                self.runs += 1
                self.stopping.wait(self.every_s)
        finally:
            http.stop()
        return 0


def register(sub) -> None:
    """Add `streamrec segments` (needs the trainer extra: the data importers, matplotlib)."""
    from streamrec.trainer.cli import _add_data_args

    p = sub.add_parser(
        "segments", help="cluster users into segments with the sequence model; JSON, PNG, Redis",
        description="Encode each user's history with the sequence model (the registry's ONNX encoder, as "
                    "served), cluster the long-term vectors with k-means, describe each segment (size, "
                    "activity, click rate, conversion, top categories and items), compare the silhouette "
                    "with segments by activity counts, write segments.json and segments.png, and store "
                    "each user's segment in Redis for the scorer. --data redis reads the users' recent "
                    "items from Redis instead of a file.")
    _add_data_args(p)
    for action in p._actions:  # the shared --data flag, plus the source only this command reads
        if action.dest == "data":
            action.metavar = "PATH|kafka|redis"
            action.help += "; or 'redis': the users' recent items in Redis"
    p.add_argument("--model", metavar="NAME[@VERSION]",
                   help="sequence model in the registry (default: STREAMREC_SCORER_SEQ_MODEL, current version)")
    p.add_argument("--k", type=int, default=None, help="number of segments (default: STREAMREC_SEGMENTS_K)")
    p.add_argument("--views", type=int, default=4,
                   help="prefixes of each history averaged into its long-term vector (default 4)")
    p.add_argument("--min-items", type=int, default=1, help="leave out users with fewer items (default 1)")
    p.add_argument("--max-users", type=int, default=None, help="--data redis: read at most this many users")
    p.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    p.add_argument("--out", default="segments", help="folder for segments.json and segments.png")
    p.add_argument("--truth", metavar="CSV", help="known groups (user_id,segment), e.g. the planted segments.csv "
                                                  "of `streamrec data synth --segments`: adds ARI and purity")
    p.add_argument("--no-redis", action="store_true", help="do not store the segments in Redis")
    p.add_argument("--every", metavar="DURATION",
                   help="repeat every DURATION (90s, 15m, 1h...) until SIGTERM, with /healthz, /readyz and "
                        "/metrics on STREAMREC_SEGMENTS_PORT")
    p.set_defaults(func=cmd_segments)
