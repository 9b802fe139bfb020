"""Content vectors at serve time: a `content` model version, and an index of every catalog item.

A content version (kind ``content``, built by `streamrec.trainer.content`) ships

- ``model.onnx``: the content tower: MiniLM sentence embedding of the item's
  text (token ids and attention mask, mean-pooled, normalised) joined with
  hashed category and tag embeddings -> one unit-length content vector;
- ``tokenizer.json``: MiniLM's WordPiece tokenizer (run by the small
  ``tokenizers`` package: no torch, no download);
- ``item_vectors.npy`` / ``item_ids.npy`` / ``item_keys.npy``: the vectors of
  the catalog it was built on, and a fingerprint of each item's content, so a
  scorer starts without embedding a large catalog again.

`ContentIndex` holds one vector per catalog item in memory, bounded (oldest
entries give way first). `CatalogFollower` reads the compacted `catalog`
topic from the beginning and keeps the index current: an item published a
moment ago is embedded by the scorer itself (a few ms per item on a CPU) and
can be proposed with reason ``content`` by the next batch, before anyone
clicked it; a tombstone removes it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from streamrec.registry import ModelMeta, VersionFiles
from streamrec.serving.candidates import top_k
from streamrec.serving.ranking import Graph, ModelError, _hasher, load_array, version_files

log = logging.getLogger(__name__)
KIND = "content"
MAX_TOKENS = 128
"""Longest text (in WordPiece tokens) the tower reads; titles, tags and a short description fit."""
MAX_TAGS = 8


def item_text(meta: dict) -> str:
    """The text of a catalog item the tower embeds: title, tags, description (one definition for both sides).

    >>> item_text({"title": "Trail boots", "tags": ["hiking", "outdoor"], "description": "Light."})
    'Trail boots. hiking, outdoor. Light.'
    """
    tags = meta.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split("|") if t]
    parts = [str(meta.get("title") or "").strip(), ", ".join(tags), str(meta.get("description") or "").strip()]
    return ". ".join(p for p in parts if p)


def tags_of(meta: dict) -> list[str]:
    tags = meta.get("tags") or []
    return [t for t in tags.split("|") if t] if isinstance(tags, str) else [str(t) for t in tags]


def fingerprint(meta: dict) -> str:
    """What the content vector depends on; an item whose fingerprint is unchanged is not embedded again."""
    key = "\x1f".join([item_text(meta), str(meta.get("category") or ""), "|".join(tags_of(meta))])
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def tower_inputs(tokenizer, cat_hasher, tag_hasher, max_tags: int, metas: Sequence[dict]) -> dict[str, np.ndarray]:
    """The tower's inputs for catalog records (dicts with title, description, tags, category), as numpy:
    token ids and mask (padded to the longest), the hashed category (0 = none), up to ``max_tags``
    hashed tags (0 = padding). The trainer builds its batches with this function too."""
    enc = tokenizer.encode_batch([item_text(m) for m in metas])
    width = max((len(e.ids) for e in enc), default=1)
    ids = np.zeros((len(metas), width), dtype=np.int64)
    mask = np.zeros((len(metas), width), dtype=np.int64)
    for r, e in enumerate(enc):
        ids[r, : len(e.ids)] = e.ids
        mask[r, : len(e.ids)] = e.attention_mask
    cats = np.array([cat_hasher.one(c)[0] if c else 0 for c in (str(m.get("category") or "") for m in metas)],
                    dtype=np.int64).reshape(len(metas))
    tags = np.zeros((len(metas), max_tags), dtype=np.int64)
    for r, m in enumerate(metas):
        t = tags_of(m)[:max_tags]
        if t:
            tags[r, : len(t)] = tag_hasher.first(t)
    return {"input_ids": ids, "attention_mask": mask, "category": cats, "tags": tags}


def load_tokenizer(path: str | Path | bytes, max_tokens: int = MAX_TOKENS):
    """MiniLM's tokenizer (``tokenizer.json``, a path or its bytes) truncating at ``max_tokens``; padding is
    done by `tower_inputs`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(path.decode()) if isinstance(path, bytes) else Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    return tok


class ContentModel:
    """A loaded content version: content vectors of catalog metadata, batch-first."""

    kind = KIND

    def __init__(self, folder: str | Path | VersionFiles, meta: ModelMeta, device: str = "auto",
                 io_binding: bool | None = None):
        files = version_files(folder)
        self.meta = meta
        self.name = f"{meta.name}@{meta.version}"
        self.graph = Graph.of(files, "model.onnx", meta, device, io_binding)
        self.tokenizer = load_tokenizer(files.read("tokenizer.json"), int(meta.extra.get("max_tokens", MAX_TOKENS)))
        self.max_tags = int(meta.extra.get("max_tags", MAX_TAGS))
        self.cat_hasher = _hasher(meta, "cat")
        self.tag_hasher = _hasher(meta, "tag")
        self.vectors = load_array(files, "item_vectors.npy").astype(np.float32)
        self.item_ids = [str(x) for x in load_array(files, "item_ids.npy")]
        self.item_keys = [str(x) for x in load_array(files, "item_keys.npy")]
        if not (self.vectors.shape[0] == len(self.item_ids) == len(self.item_keys)):
            raise ModelError(f"{self.name}: {self.vectors.shape[0]} vectors, {len(self.item_ids)} ids, "
                             f"{len(self.item_keys)} fingerprints")
        self.dim = int(meta.extra.get("dim", self.vectors.shape[1] if self.vectors.size else 0))
        self.provider = self.graph.provider

    def inputs(self, metas: Sequence[dict]) -> dict[str, np.ndarray]:
        return tower_inputs(self.tokenizer, self.cat_hasher, self.tag_hasher, self.max_tags, metas)

    def encode(self, metas: Sequence[dict], batch: int = 64) -> np.ndarray:
        """``[len(metas), dim]`` unit content vectors."""
        out = [self.graph.run(self.inputs(metas[s:s + batch])) for s in range(0, len(metas), batch)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def warm_up(self) -> None:
        v = self.encode([{"title": "warm up", "tags": ["a"], "category": "c"}, {}])
        if v.shape != (2, self.dim) or not np.isfinite(v).all():
            raise ModelError(f"{self.name}: warm-up gave {v.shape} content vectors, finite={np.isfinite(v).all()}")


class ContentIndex:
    """Unit content vectors of catalog items in one preallocated matrix, at most ``capacity`` items,
    and each queried item's nearest neighbours, cached.

    A session's content candidates are the neighbours of its recent items, so
    a batch costs one matrix product for the items not cached yet (at most
    ``max_new`` per call: a cold cache fills over a few batches instead of
    stalling one) instead of one per request over the whole catalog (at
    100,000 items and 448 dimensions ~1 s per batch on one core). An item
    added later is merged into the cached lists it belongs to at once (one
    product of the cached items with the new vectors): that is how an item
    published a second ago is proposed. Thread-safe: the catalog follower
    writes, scoring batches read. When full, the row written longest ago is
    reused (lists that named the old item then name the new one until they
    are recomputed: rare, and bounded by the capacity).
    """

    def __init__(self, capacity: int = 200_000, dim: int = 0, neighbours: int = 50, cache_cap: int = 100_000,
                 max_new: int = 64):
        self.capacity = capacity
        self.dim = dim
        self.k = neighbours
        self.cache_cap = cache_cap
        self.max_new = max_new
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.matrix = np.zeros((0, self.dim), dtype=np.float32)
            self.alive = np.zeros(0, dtype=bool)
            self.ids: list[str | None] = []
            self.keys: list[str] = []
            self.row: dict[str, int] = {}
            self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            """item -> its neighbours (rows, similarities; best first; itself excluded)."""
            self._next = 0

    def __len__(self) -> int:
        return len(self.row)

    def key_of(self, item: str) -> str | None:
        r = self.row.get(item)
        return self.keys[r] if r is not None else None

    def upsert(self, items: Sequence[str], vectors: np.ndarray, keys: Sequence[str], bulk: bool = False) -> None:
        """Add or replace items' vectors. ``bulk`` (a whole catalog at once): drop the neighbour cache
        instead of updating it."""
        if not len(items):
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape[1] != self.dim:  # a model with another width: start over
            self.dim = vectors.shape[1]
            self.clear()
        with self._lock:
            rows = []
            for item, vec, key in zip(items, vectors, keys):
                r = self.row.get(item)
                if r is None:
                    r = self._free_row()
                    self.row[item] = r
                self.matrix[r] = vec
                self.alive[r] = True
                self.ids[r], self.keys[r] = item, key
                rows.append(r)
            if bulk or len(items) > 1000:
                self.cache.clear()
            elif self.cache:
                self._merge_into_cache(np.array(rows, dtype=np.int64))

    def _merge_into_cache(self, rows: np.ndarray) -> None:
        sources = [s for s in self.cache if s in self.row]
        if not sources:
            return
        src_rows = np.array([self.row[s] for s in sources], dtype=np.int64)
        sims = self.matrix[src_rows] @ self.matrix[rows].T  # [cached, new]
        sims[src_rows[:, None] == rows[None, :]] = -np.inf  # never its own neighbour
        for a, src in enumerate(sources):
            old_rows, old_sims = self.cache[src]
            keep = ~np.isin(old_rows, rows)  # a changed item is placed again
            r = np.concatenate([old_rows[keep], rows])
            sc = np.concatenate([old_sims[keep], sims[a]])
            order = np.argsort(-sc, kind="stable")[: self.k]
            order = order[np.isfinite(sc[order])]
            self.cache[src] = (r[order], sc[order].astype(np.float32))

    def _free_row(self) -> int:
        if len(self.ids) < self.capacity:
            if len(self.ids) == self.matrix.shape[0]:  # grow by doubling, up to the capacity
                grow = max(1024, min(self.capacity, 2 * self.matrix.shape[0]) - self.matrix.shape[0])
                self.matrix = np.concatenate([self.matrix, np.zeros((grow, self.dim), np.float32)])
                self.alive = np.concatenate([self.alive, np.zeros(grow, dtype=bool)])
            self.ids.append(None)
            self.keys.append("")
            return len(self.ids) - 1
        r = self._next  # full: reuse the oldest row
        self._next = (self._next + 1) % self.capacity
        old = self.ids[r]
        if old is not None:
            self.row.pop(old, None)
            self.cache.pop(old, None)
        return r

    def remove(self, item: str) -> None:
        with self._lock:
            r = self.row.pop(item, None)
            self.cache.pop(item, None)
            if r is not None:
                self.matrix[r] = 0.0
                self.alive[r] = False
                self.ids[r] = None

    def vectors_of(self, items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``[len(items), dim]`` vectors (zeros where unknown) and a mask of the known ones."""
        with self._lock:
            rows = np.fromiter((self.row.get(i, -1) for i in items), dtype=np.int64, count=len(items))
            known = rows >= 0
            out = np.zeros((len(items), self.dim), dtype=np.float32)
            out[known] = self.matrix[rows[known]]
        return out, known

    def neighbour_rows(self, items: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Rows and similarities of each item's nearest items (computed for at most ``max_new`` items
        not cached yet; the others are left out this time)."""
        with self._lock:
            missing = [i for i in dict.fromkeys(items) if i in self.row and i not in self.cache][: self.max_new]
            if missing:
                n = len(self.ids)
                q = np.array([self.row[i] for i in missing], dtype=np.int64)
                scores = self.matrix[q] @ self.matrix[:n].T
                scores[:, ~self.alive[:n]] = -np.inf
                scores[np.arange(len(q)), q] = -np.inf
                idx = top_k(scores, min(self.k, n))
                if len(self.cache) + len(missing) > self.cache_cap:  # bounded memory
                    self.cache.clear()
                for j, item in enumerate(missing):
                    sc = scores[j, idx[j]]
                    ok = np.isfinite(sc)
                    self.cache[item] = (idx[j][ok], sc[ok].astype(np.float32))
            out = {}
            for i in items:
                hit = self.cache.get(i)
                if hit is not None:
                    alive = self.alive[hit[0]]  # removed since: skipped
                    out[i] = hit if alive.all() else (hit[0][alive], hit[1][alive])
        return out

    def neighbours(self, items: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray]]:
        """Like `neighbour_rows`, with item ids."""
        lists = self.neighbour_rows(items)
        ids = self.ids
        return {i: ([ids[r] for r in rows.tolist()], sims) for i, (rows, sims) in lists.items()}


def content_similar(index: ContentIndex, recents: Sequence[Sequence[str]], limit: int | Sequence[int],
                    decay: float = 0.8) -> list[tuple[list[str], list[float]]]:
    """Per session (its recent items, newest first): the items most similar to them, similarity summed
    with weight ``decay**age`` over the recent items, best first, at most ``limit`` (one per session or
    one for all). One pass of numpy over the whole batch.
    """
    limits = [limit] * len(recents) if isinstance(limit, int) else list(limit)
    lists = index.neighbour_rows([i for rec in recents for i in rec])
    req, rows, weights = [], [], []
    for q, recent in enumerate(recents):
        for age, item in enumerate(recent):
            hit = lists.get(item)
            if hit is not None and len(hit[0]):
                req.append(np.full(len(hit[0]), q, dtype=np.int64))
                rows.append(hit[0])
                weights.append((decay ** age) * hit[1])
    out: list[tuple[list[str], list[float]]] = [([], []) for _ in recents]
    if not rows:
        return out
    key = np.concatenate(req) * max(len(index.ids), 1) + np.concatenate(rows)
    uniq, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=np.concatenate(weights))
    owner, row = np.divmod(uniq, max(len(index.ids), 1))
    order = np.lexsort((-total, owner))  # by session, then best first
    bounds = np.searchsorted(owner[order], np.arange(len(recents) + 1))
    ids = index.ids
    for q in range(len(recents)):
        sel = order[bounds[q]:bounds[q + 1]][: limits[q]]
        pairs = [(ids[r], t) for r, t in zip(row[sel].tolist(), total[sel].tolist()) if ids[r] is not None]
        out[q] = ([i for i, _ in pairs], [t for _, t in pairs])
    return out


def session_profiles(index: ContentIndex, sessions: Sequence[Sequence[str]], decay: float = 0.8) -> np.ndarray:
    """Unit content profile of each session (its items newest first, weighted ``decay**age``); zeros if none known.

    The same definition feeds the ``content_sim`` ranker feature in training
    (`streamrec.trainer.content.profile_vectors`).
    """
    out = np.zeros((len(sessions), index.dim), dtype=np.float32)
    for r, items in enumerate(sessions):
        if not items:
            continue
        vecs, known = index.vectors_of(list(items))
        if not known.any():
            continue
        w = (decay ** np.arange(len(items)))[known]
        p = w @ vecs[known]
        norm = np.linalg.norm(p)
        if norm > 0:
            out[r] = p / norm
    return out


class CatalogFollower:
    """Keeps a `ContentIndex` current from the compacted `catalog` topic (read from the beginning).

    Records are gathered per item (the newest wins) and embedded in batches by
    the live content model; items whose fingerprint matches the vector already
    held are skipped, so a catalog the model was built on costs no embedding.
    A new content version replaces the index: its own vectors first, then the
    catalog is read again from the beginning.
    """

    def __init__(self, settings, index: ContentIndex, model_of, batch: int = 256):
        """``model_of()``: the live `ContentModel` or None (records are then dropped: the catalog is read
        again from the beginning once a model is live)."""
        self.settings = settings
        self.index = index
        self.model_of = model_of
        self.batch = batch
        self.pending: dict[str, dict | None] = {}
        """Newest record per item not applied yet (None = removed); at most one batch while a model is live."""
        self.embedded = 0
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.seeded: str | None = None

    def start(self) -> "CatalogFollower":
        self._thread = threading.Thread(target=self._follow, name="catalog-content", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def apply_pending(self) -> int:
        """Embed and index the records read so far (those whose content changed); returns how many."""
        model = self.model_of()
        if model is None:  # nothing to embed with; the catalog is read again when a model arrives
            self.pending.clear()
            return 0
        if self.seeded != model.name:
            raise _NewVersion(model)
        if not self.pending:
            return 0
        records, self.pending = self.pending, {}
        upserts: list[tuple[str, dict, str]] = []
        for item, meta in records.items():
            if meta is None:
                self.index.remove(item)
                continue
            key = fingerprint(meta)
            if self.index.key_of(item) != key:
                upserts.append((item, meta, key))
        try:
            for s in range(0, len(upserts), self.batch):
                part = upserts[s:s + self.batch]
                vecs = model.encode([m for _, m, _ in part])
                self.index.upsert([i for i, _, _ in part], vecs, [k for *_, k in part])
                self.embedded += len(part)
        except Exception:
            for item, meta, _ in upserts:  # retried with the next batch
                self.pending.setdefault(item, meta)
            raise
        return len(upserts)

    def _follow(self) -> None:
        from streamrec.serving.follower import CompactedTopicReader
        from streamrec.stream import schemas, topics

        reader = None
        try:
            reader = CompactedTopicReader(self.settings, topics.CATALOG, "scorer-content")  # the whole catalog
            while not self._stop.is_set():
                msgs = reader.consume(self.batch, timeout=0.05)
                for msg in msgs:
                    item = (msg.key() or b"").decode("utf-8", "replace")
                    if msg.value() is None:
                        if item:
                            self.pending[item] = None
                        continue
                    try:
                        rec = schemas.decode_catalog(msg.value())
                    except Exception:  # noqa: BLE001 - the worker dead-letters bad records; skip here
                        continue
                    self.pending[rec.item_id] = {"title": rec.title, "description": rec.description,
                                                 "tags": list(rec.tags), "category": rec.category}
                if not msgs or len(self.pending) >= self.batch:
                    self._apply(reader)
                if reader.read_all_at_start and not self.pending:
                    self.caught_up.set()
        except Exception:  # noqa: BLE001 - keep serving with the vectors in hand
            log.exception("following %s for content vectors stopped", self.settings.topic(topics.CATALOG))
        finally:
            self.caught_up.set()
            if reader is not None:
                reader.close()

    def _apply(self, reader) -> None:
        """`apply_pending`; a new content version replaces the index and the catalog is read again."""
        try:
            self.apply_pending()
        except _NewVersion as new:
            log.info("content vectors: %s, %d catalog items from the version; re-reading %s",
                     new.model.name, len(new.model.item_ids), reader.topic)
            self.index.clear()  # no vector of the old version may stay
            self.index.upsert(new.model.item_ids, new.model.vectors, new.model.item_keys, bulk=True)
            self.seeded, self.pending = new.model.name, {}
            reader.rewind()
        except Exception:  # noqa: BLE001 - keep following; the records are retried
            log.exception("embedding catalog items failed")


class _NewVersion(Exception):
    """A content version other than the one the index was built with is live."""

    def __init__(self, model: ContentModel):
        super().__init__(model.name)
        self.model = model
