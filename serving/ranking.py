"""ONNX Runtime sessions for the two model kinds, on the GPU when there is one.

Provider choice (`Settings.device`) is `streamrec.serving.providers`. On a GPU
provider, inputs and outputs go through IO binding, so ONNX Runtime copies
each input to the device once and allocates outputs there; a GPU error at
run time rebuilds the session on the CPU and serving goes on (counted in
``streamrec_scorer_gpu_fallbacks_total``).

Nothing here imports torch: hashing is `streamrec.hashing.IdHasher`, the same
the trainer used, rebuilt from the version's ``meta.json``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from streamrec.hashing import IdHasher
from streamrec.registry import Folder, ModelMeta, Signature, VersionFiles
from streamrec.serving import metrics
from streamrec.serving.index import ExactIndex, index_for
from streamrec.serving.providers import CPU, providers_for, session_providers

log = logging.getLogger(__name__)
class ModelError(RuntimeError):
    """A model version the scorer cannot use; the message says why."""


def load_array(files: VersionFiles, fname: str) -> np.ndarray:
    """A ``.npy`` file of a version, from the bytes `VersionFiles.read` checked."""
    return np.load(io.BytesIO(files.read(fname)), allow_pickle=False)


def version_files(folder: str | Path | VersionFiles) -> VersionFiles:
    """``folder`` as `VersionFiles`: a version being loaded from a registry stays as it is (checked reads);
    a folder path is read as it is."""
    return folder if isinstance(folder, VersionFiles) else Folder(folder)


class Graph:
    """One ONNX graph: a session on the chosen providers, run with IO binding on a GPU.

    Built from the graph's bytes (or a path, read once): the scorer passes the bytes its registry checked
    (`Graph.of`), so the session runs exactly what was hashed. ``signature`` (meta.json's) is checked
    against the session's own inputs and outputs. Building a session holds the GIL only while ONNX
    Runtime parses the graph (3-5 ms for 13 MB, from bytes as from a path, measured with a 1 ms ticker
    thread); optimising it, most of the time, runs without the GIL.
    """

    def __init__(self, model: str | Path | bytes, device: str = "auto", io_binding: bool | None = None,
                 threads: int = 0, *, label: str | None = None, signature: Signature | None = None):
        if not isinstance(model, bytes):
            label, model = label or str(model), Path(model).read_bytes()
        self.path = label or "model.onnx"
        # Labelled once: encoder, item_encoder, model...: the graph's file name, a label of bounded cardinality.
        self._onnx_seconds = metrics.onnx_seconds.labels(Path(self.path).stem)
        self.device = device
        self.threads = threads
        self._lock = threading.Lock()
        self._model: bytes | None = model
        self._open(providers_for(device))
        self._check(signature)
        # IO binding is the GPU path; forcing it on the CPU exercises the same code in tests.
        self.io_binding = self.on_gpu if io_binding is None else io_binding
        if not self.io_binding:
            self._model = None  # kept only where a GPU error may reopen the graph on the CPU (`_run`)

    @classmethod
    def of(cls, files: VersionFiles, fname: str, meta: ModelMeta, device: str = "auto",
           io_binding: bool | None = None) -> "Graph":
        """Graph ``fname`` of a version: its bytes read once, its inputs and outputs checked against meta.json."""
        return cls(files.read(fname), device, io_binding, label=files.label(fname),
                   signature=meta.signatures.get(fname))

    def _check(self, signature: Signature | None) -> None:
        # The graph must have the inputs and outputs meta.json promises (what the scorer feeds and reads),
        # checked on the session itself: no second parse of the graph.
        if signature is None:
            return
        declared_in, declared_out = [t.name for t in signature.inputs], [t.name for t in signature.outputs]
        if self.input_names != declared_in or self.output_names != declared_out:
            # What is wrong and the fix first, the location last: a refusal is shown cut to 200 characters
            # (`/readyz`), and a registry path alone can be longer.
            raise ModelError(f"{Path(self.path).name}: meta.json declares {declared_in} -> {declared_out}, but the "
                             f"graph has inputs {self.input_names} and outputs {self.output_names}; republish the "
                             f"version ({self.path})")

    def _open(self, providers: list[str]) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        # Idle ONNX Runtime threads spin by default, burning the cores that Redis, Kafka and the
        # scorer's own Python thread need between runs; on a small machine that costs more than it saves.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self._model, sess_options=opts, providers=session_providers(providers))
        except Exception as exc:  # noqa: BLE001 - a GPU provider that fails to start: use the CPU
            if providers == [CPU]:
                raise ModelError(f"{self.path}: ONNX Runtime cannot load it: {exc}") from None
            log.warning("could not start %s for %s (%s); using the CPU", providers[0], self.path, exc)
            metrics.gpu_fallbacks.inc()
            self.session = ort.InferenceSession(self._model, sess_options=opts, providers=[CPU])
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider != CPU
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for ``feeds``; its time counts in ``streamrec_scorer_onnx_seconds_total``."""
        started = time.perf_counter()
        try:
            return self._run(feeds)
        finally:
            self._onnx_seconds.inc(time.perf_counter() - started)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output for ``feeds``; falls back to the CPU for good on a GPU error."""
        if self.io_binding:
            try:
                return self._run_bound(feeds)
            except Exception as exc:  # noqa: BLE001 - GPU errors must not fail requests
                if not self.on_gpu:
                    raise
                log.error("GPU run of %s failed (%s); falling back to the CPU", self.path, exc)
                metrics.gpu_fallbacks.inc()
                with self._lock:
                    self._open([CPU])
                    self.io_binding = False
        return self.session.run(self.output_names[:1], feeds)[0]

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        where = "cuda" if self.on_gpu else "cpu"
        binding = self.session.io_binding()
        for name, arr in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), where, 0)
            binding.bind_ortvalue_input(name, value)
        binding.bind_output(self.output_names[0], where, 0)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def _hasher(meta: ModelMeta, namespace: str, fallback_buckets: int | None = None) -> IdHasher:
    h = meta.hashing.get(namespace)
    if not h and fallback_buckets:
        return IdHasher(fallback_buckets, namespace)
    if not h or "buckets" not in h:
        raise ModelError(f"{meta.name}/{meta.version}: meta.json has no hashing for {namespace!r}; "
                         "republish it with the trainer's hashing description")
    if h.get("namespace", namespace) != namespace:
        raise ModelError(f"{meta.name}/{meta.version}: hashing {namespace!r} names namespace {h['namespace']!r}")
    return IdHasher(int(h["buckets"]), namespace)


class _HashCache:
    """Hashed rows of ids seen before, in one numpy table (the hot path sees the same items again and again)."""

    def __init__(self, hasher: IdHasher, width: int = 2, cap: int = 2_000_000):
        self.hasher, self.width, self.cap = hasher, width, cap
        self.row: dict[str, int] = {}
        self.table = np.zeros((1024, width), dtype=np.int64)

    def __call__(self, ids: Sequence[str]) -> np.ndarray:
        """``[len(ids), width]`` int64 bucket indices."""
        get = self.row.get
        rows = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        if (rows < 0).any():
            if len(self.row) > self.cap:  # bounded memory: start over
                self.row.clear()
                return self(ids)
            for j in np.flatnonzero(rows < 0).tolist():
                key = ids[j]
                r = self.row.get(key)
                if r is None:
                    r = self.row[key] = len(self.row)
                    if r >= self.table.shape[0]:
                        self.table = np.concatenate([self.table, np.zeros_like(self.table)])
                    self.table[r] = self.hasher.one(key)[: self.width]
                rows[j] = r
        return self.table[rows]


class SeqModel:
    """A loaded sequence-model version: user vectors, exact top-K retrieval, item vectors."""

    kind = "sasrec"

    def __init__(self, folder: str | Path | VersionFiles, meta: ModelMeta, device: str = "auto",
                 io_binding: bool | None = None):
        files = version_files(folder)
        self.meta = meta
        self.name = f"{meta.name}@{meta.version}"
        self.encoder = Graph.of(files, "encoder.onnx", meta, device, io_binding)
        self.item_encoder = Graph.of(files, "item_encoder.onnx", meta, device, io_binding) \
            if files.has("item_encoder.onnx") else None
        self.vectors = np.ascontiguousarray(load_array(files, "item_vectors.npy"), dtype=np.float32)
        self.item_ids = [str(x) for x in load_array(files, "item_ids.npy")]
        self.row_of = {item: i for i, item in enumerate(self.item_ids)}
        if self.vectors.shape[0] != len(self.item_ids):
            raise ModelError(f"{self.name}: {self.vectors.shape[0]} item vectors for {len(self.item_ids)} ids")
        self.max_len = int(meta.extra.get("max_len", 50))
        self.dim = self.vectors.shape[1]
        # Exact top-K on the GPU when the encoder runs there (item matrix kept on the device), else numpy.
        self.index = index_for(self.vectors, self.encoder.on_gpu, self.encoder.session.get_providers())
        self.items = _HashCache(_hasher(meta, "item"))
        self.cats = _HashCache(_hasher(meta, "cat"), width=1)
        self.provider = self.encoder.provider

    def user_vectors(self, sequences: Sequence[Sequence[str]], categories: dict[str, str]) -> np.ndarray:
        """``[batch, dim]`` user vectors of item sequences (oldest first), left-padded."""
        b = len(sequences)
        length = max(1, min(self.max_len, max((len(s) for s in sequences), default=1)))
        items = np.zeros((b, length, 2), dtype=np.int64)
        cats = np.zeros((b, length), dtype=np.int64)
        for r, seq in enumerate(sequences):
            seq = list(seq)[-length:]
            if seq:
                items[r, length - len(seq):] = self.items(seq)
                cats[r, length - len(seq):] = self.cats([categories.get(i, "") for i in seq])[:, 0]
        return self.encoder.run({"seq_items": items, "seq_cats": cats})

    def retrieve(self, user_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-K items by inner product: (indices into `item_ids` [b, k], scores [b, k])."""
        try:
            return self.index.search(user_vecs, k)
        except Exception as exc:  # noqa: BLE001 - a GPU error must not fail requests: numpy from now on
            if isinstance(self.index, ExactIndex):
                raise
            log.error("GPU retrieval for %s failed (%s); falling back to numpy", self.name, exc)
            metrics.gpu_fallbacks.inc()
            self.index = ExactIndex(self.vectors)
            return self.index.search(user_vecs, k)

    def item_vectors(self, items: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        """Vectors of ``items``: from the exported matrix, or the item encoder for items it lacks."""
        rows = np.array([self.row_of.get(i, -1) for i in items], dtype=np.int64)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        known = rows >= 0
        out[known] = self.vectors[rows[known]]
        if (~known).any() and self.item_encoder is not None:
            new = [i for i, k in zip(items, known) if not k]
            new_cats = [c for c, k in zip(categories, known) if not k]
            out[~known] = self.item_encoder.run({"item_ids": self.items(new),
                                                 "item_cats": self.cats(new_cats)[:, 0]})
        return out

    def warm_up(self) -> None:
        """Run each graph once on a realistic batch and check the outputs are finite."""
        vecs = self.user_vectors([self.item_ids[:5], [], ["never-seen-item"]] * 8, {})
        probe = self.item_vectors(self.item_ids[:2] + ["never-seen-item"], ["", "", ""])
        if vecs.shape != (24, self.dim) or not np.isfinite(vecs).all() or not np.isfinite(probe).all():
            raise ModelError(f"{self.name}: warm-up gave non-finite or misshaped user vectors {vecs.shape}")


class Ranker:
    """A loaded DCN-V2 ranker version: click probability of (user, item) pairs."""

    kind = "dcn"

    def __init__(self, folder: str | Path | VersionFiles, meta: ModelMeta, device: str = "auto",
                 io_binding: bool | None = None):
        from streamrec.serving.features import DENSE_FEATURES

        self.meta = meta
        self.name = f"{meta.name}@{meta.version}"
        self.graph = Graph.of(version_files(folder), "model.onnx", meta, device, io_binding)
        self.dense_features = list(meta.extra.get("dense_features", DENSE_FEATURES))
        unknown = [f for f in self.dense_features if f not in DENSE_FEATURES]
        if unknown:
            raise ModelError(f"{self.name} needs dense features {unknown} that this scorer does not compute; "
                             f"it computes {list(DENSE_FEATURES)}")
        self.users = _HashCache(_hasher(meta, "user"), cap=200_000)
        self.items = _HashCache(_hasher(meta, "item"))
        self.cats = _HashCache(_hasher(meta, "cat"), width=1)
        self.provider = self.graph.provider

    def sparse(self, users: Sequence[str], items: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        """``[n, 5]``: user buckets, item buckets, category bucket (as the trainer's `sparse_ids`)."""
        return np.concatenate([self.users(users), self.items(items), self.cats(categories)], axis=1)

    def score(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Click probability ``[n]``."""
        if sparse.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.graph.run({"sparse": sparse, "dense": dense}).reshape(-1)

    def warm_up(self) -> None:
        n = len(self.dense_features)
        sparse = self.sparse(["u"] * 64, [f"i{i}" for i in range(64)], [""] * 64)
        prob = self.score(sparse, np.abs(np.random.default_rng(0).normal(size=(64, n))).astype(np.float32))
        if prob.shape != (64,) or not np.isfinite(prob).all():
            raise ModelError(f"{self.name}: warm-up gave {prob.shape} outputs, finite={np.isfinite(prob).all()}")
