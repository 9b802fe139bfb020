"""Live model versions and hot-swap, driven by the `model-versions` topic.

A watcher thread follows `model-versions` (compacted, one partition) from
the beginning. For each announcement of a model the scorer uses it opens the
version (`Registry.open_version`: ``meta.json`` read once, its digest checked
against the announced one), then builds the model from the files it opens,
each read once and checked against meta.json's size and sha256 before its
bytes are used: the ONNX sessions are built from those bytes and check the
graphs' declared inputs and outputs on themselves; files the scorer does not
open, such as the torch weights, are not read. Reading and hashing run on a
thread of lower CPU priority (see `_lower_priority`). The version is warmed up
on the last real batch the scorer served (or a synthetic one before any).
Only then is the version *staged*; the scoring loop calls
`ModelStore.swap_pending` between batches, so a batch never sees two versions
of a model and no request is dropped. The replaced version stays loaded as
``previous``: a rollback announcement of it swaps back without loading
anything. A version that fails any step is refused, logged and counted; the
live one keeps serving.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from streamrec.registry import Announcement, Registry, RegistryError, check_name, check_version
from streamrec.serving import metrics
from streamrec.serving.config import Arm, ScorerConfig
from streamrec.serving.content import ContentModel
from streamrec.serving.follower import CompactedTopicReader
from streamrec.serving.graph import GraphModel
from streamrec.serving.ranking import ModelError, Ranker, SeqModel
from streamrec.settings import Settings
from streamrec.stream import topics

log = logging.getLogger(__name__)
KINDS = {"sasrec": SeqModel, "dcn": Ranker, GraphModel.kind: GraphModel, ContentModel.kind: ContentModel}


def _lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` for the rest of its life (Linux: its own nice value;
    elsewhere, or where refused, nothing changes).

    Only the thread that reads and hashes version files runs lowered (`Settings.model_load_nice`), because
    that work mostly runs without the GIL (file reads, hashlib). A lowered thread that needs the GIL stalls
    the scoring thread: when it asks for the GIL, the scoring thread drops it at the next switch interval and
    waits until the lowered thread, descheduled behind busier threads, has taken it. Lowering the whole
    loading thread, which builds models and warms them up with the GIL held in 5 ms slices, did that
    (`streamrec bench swap-stall` on 2 busy cores: p99 while loading 1.9-2.4x steady, against 1.5-1.7x at
    normal priority). Sessions are not built in a lowered thread either: ONNX Runtime starts a session's
    intra-op threads inside `InferenceSession(...)`, a Linux thread inherits its creator's nice value, and the
    session would score at low priority for as long as it is live. Raising a nice value back needs
    CAP_SYS_NICE, which a non-root scorer lacks, so no thread here ever raises one.

    Even the reading thread takes the GIL a few times per file, and on 2 cores busy with another job it
    showed: `streamrec bench swap-stall --load-nice 10 0` gave p99 while loading 1.66-1.97x steady at +10
    against 1.48-1.79x at 0 (1.71-1.89x for the code before), and loads 3x longer. Where tails matter more
    than the CPU a load takes from neighbours, STREAMREC_MODEL_LOAD_NICE=0.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS of a thread id is not that thread
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:  # lowering one's own priority is allowed to anyone; a sandbox may still refuse it
        log.debug("could not lower the priority of %s: %s", threading.current_thread().name, exc)


def registry_of(uri: str) -> tuple[Registry, str]:
    """The registry holding a version folder URI (``ROOT/NAME/VERSION``), and the folder."""
    root = uri.rstrip("/").rsplit("/", 2)[0]
    return Registry(root), uri


class ModelStore:
    """The models each request may use: live per name, the previous per name, pinned by A/B arms."""

    def __init__(self, settings: Settings, config: ScorerConfig, io_binding: bool | None = None):
        self.settings = settings
        self.config = config
        self.io_binding = io_binding
        self.live: dict[str, object] = {}
        self.previous: dict[str, object] = {}
        self.pinned: dict[tuple[str, str], object] = {}
        self._pending: dict[str, object] = {}
        self._lock = threading.Lock()
        self.refused: list[tuple[str, str, str]] = []
        self.seen_versions: dict[str, str] = {}
        self.samples: dict[str, tuple] = {}
        """Last real inputs per kind, set by the engine; versions warm up on them."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()
        # One thread, started on the first load, reads and hashes version files at lower priority.
        self._files = ThreadPoolExecutor(1, thread_name_prefix="model-files", initializer=_lower_priority,
                                         initargs=(settings.model_load_nice,))

    # -- loading ------------------------------------------------------------- #
    def load(self, ann: Announcement):
        """Open, check, load and warm up one announced version; raise ModelError/RegistryError."""
        registry, folder = registry_of(ann.uri)
        # security: the folder loaded must be the one verified, ROOT/NAME/VERSION of the announced
        # (validated) name and version, so a crafted uri cannot swap in another folder.
        if folder.rstrip("/").split("/")[-2:] != [check_name(ann.name), check_version(ann.version)]:
            raise ModelError(f"{ann.name}/{ann.version}: announced uri {ann.uri!r} is not the folder "
                             f"REGISTRY/{ann.name}/{ann.version}; republish with `streamrec models promote`")
        version = registry.open_version(ann.name, ann.version, max_bytes=self.settings.model_max_bytes,
                                        reader=self._files)
        meta, digest = version.meta, version.digest
        if digest != ann.sha256:
            raise ModelError(f"{ann.name}/{ann.version}: meta.json digest {digest[:12]}... differs from the "
                             f"announced {ann.sha256[:12]}...; the version changed after it was announced")
        cls = KINDS.get(meta.kind)
        if cls is None:
            raise ModelError(f"{ann.name}/{ann.version} is of kind {meta.kind!r}; the scorer serves "
                             f"{', '.join(KINDS)}")
        expected = {self.config.seq_model: "sasrec", self.config.ranker_model: "dcn",
                    self.config.graph_model: GraphModel.kind,
                    self.config.content_model: ContentModel.kind}.get(ann.name)
        if expected and expected != meta.kind:
            raise ModelError(f"{ann.name}/{ann.version} is a {meta.kind!r} model, but {ann.name!r} is the "
                             f"scorer's {expected} model")
        # Each file the model opens is read here, once, and checked before use (local or object storage alike).
        model = cls(version, meta, self.settings.device, self.io_binding)
        model.warm_up()
        self._warm_on_samples(model)
        return model

    def _warm_on_samples(self, model) -> None:
        sample = self.samples.get(model.kind)
        if not sample:
            return
        if model.kind == GraphModel.kind:
            out = model.user_vectors(sample[0])
        elif model.kind == "dcn":
            users, items, cats, dense = sample
            out = model.score(model.sparse(users, items, cats), dense)
        else:
            seqs, cats = sample
            out = model.user_vectors(seqs, cats)
        if not np.isfinite(out).all():
            raise ModelError(f"{model.name}: non-finite outputs on the last real batch")

    def offer(self, ann: Announcement) -> bool:
        """Handle one announcement: stage the version for the next swap, or refuse it."""
        if ann.name not in (self.config.seq_model, self.config.ranker_model, self.config.graph_model,
                            self.config.content_model):
            return False
        self.seen_versions[ann.name] = ann.version
        live = self.live.get(ann.name)
        if live is not None and live.meta.version == ann.version:
            return True
        prev = self.previous.get(ann.name)
        try:
            if prev is not None and prev.meta.version == ann.version:
                model = prev  # rollback: already loaded and warm
            else:
                started = time.perf_counter()
                model = self.load(ann)
                log.info("loaded %s/%s in %.2f s (%s)", ann.name, ann.version, time.perf_counter() - started,
                         model.provider)
        except (ModelError, RegistryError, OSError, ValueError) as exc:
            self._refuse(ann, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. ONNX Runtime rejecting a corrupt graph
            self._refuse(ann, exc)
            return False
        with self._lock:
            self._pending[ann.name] = model
        return True

    def _refuse(self, ann: Announcement, exc: Exception) -> None:
        reason = type(exc).__name__
        log.error("refused %s/%s: %s", ann.name, ann.version, exc)
        metrics.refused.labels(ann.name, reason).inc()
        self.refused.append((ann.name, ann.version, str(exc)))
        del self.refused[:-50]

    def swap_pending(self) -> list[str]:
        """Swap staged versions in (called by the scoring loop between batches); returns them."""
        if not self._pending:
            return []
        with self._lock:
            pending, self._pending = self._pending, {}
        done = []
        for name, model in pending.items():
            old = self.live.get(name)
            self.live[name] = model
            if old is not None and old is not model:
                self.previous[name] = old
            metrics.swaps.labels(name).inc()
            metrics.provider.labels(name, model.provider).set(1)
            done.append(model.name)
            log.info("serving %s (previous: %s)", model.name, old.name if old else None)
        return done

    def pin(self, arms: tuple[Arm, ...]) -> None:
        """Load the versions A/B arms pin (from the settings' registry); refused pins serve live."""
        for arm in arms:
            for name, version in arm.pins:
                if (name, version) in self.pinned:
                    continue
                reg = Registry(self.settings.registry_uri)
                try:
                    ann = Announcement(name=name, version=version, uri=reg.location(name, version),
                                       sha256=reg.digest(name, version))
                    self.pinned[(name, version)] = self.load(ann)
                except Exception as exc:  # noqa: BLE001 - refuse the pin, keep serving
                    self._refuse(Announcement(name=name, version=version, uri="", sha256=""), exc)

    def models_for(self, arm: Arm) -> tuple[SeqModel | None, Ranker | None]:
        """The sequence model and ranker an arm serves with (pinned, else live); none for a trending arm."""
        if arm.trending:
            return None, None
        out = []
        for name in (self.config.seq_model, self.config.ranker_model):
            version = arm.pinned(name)
            model = self.pinned.get((name, version)) if version else None
            out.append(model if model is not None else self.live.get(name))
        return out[0], out[1]

    def graph_for(self, arm: Arm) -> GraphModel | None:
        """The graph model an arm serves with (pinned, else live), None when none is published."""
        if arm.trending:
            return None
        version = arm.pinned(self.config.graph_model)
        model = self.pinned.get((self.config.graph_model, version)) if version else None
        return model if model is not None else self.live.get(self.config.graph_model)

    def content(self) -> ContentModel | None:
        """The live content model (one for all arms: the catalog's content vectors are shared), or None."""
        return self.live.get(self.config.content_model)

    # -- following model-versions ---------------------------------------------- #
    def start(self, wait_s: float = 30.0) -> "ModelStore":
        """Start following `model-versions`; returns once the versions already announced are handled."""
        self._thread = threading.Thread(target=self._follow, name="model-versions", daemon=True)
        self._thread.start()
        self.caught_up.wait(wait_s)
        self.swap_pending()
        return self

    def _follow(self) -> None:
        reader = None
        try:
            reader = CompactedTopicReader(self.settings, topics.MODEL_VERSIONS, "scorer-models")
            # Catch up first, keeping only each model's newest announcement.
            latest: dict[str, Announcement] = {}
            while not reader.read_all_at_start and not self._stop.is_set():
                for ann in filter(None, map(self._decode, reader.consume(100, 0.5))):
                    latest[ann.name] = ann
            for ann in latest.values():
                self.offer(ann)
            self.caught_up.set()
            while not self._stop.is_set():
                for ann in filter(None, map(self._decode, reader.consume(100, 0.5))):
                    self.offer(ann)
        except Exception:  # noqa: BLE001 - keep serving the models in hand
            log.exception("following %s stopped", self.settings.topic(topics.MODEL_VERSIONS))
            self.caught_up.set()
        finally:
            if reader is not None:
                reader.close()

    @staticmethod
    def _decode(msg) -> Announcement | None:
        if msg.value() is None:
            return None
        try:
            return Announcement.decode(msg.value())
        except Exception as exc:  # noqa: BLE001 - a bad record must not stop hot-swap
            log.error("unreadable model-versions record at offset %d: %s", msg.offset(), exc)
            metrics.refused.labels((msg.key() or b"?").decode(errors="replace"), "unreadable").inc()
            return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._files.shutdown(wait=False)
