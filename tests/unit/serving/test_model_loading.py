"""How the scorer loads a version (`ModelStore.load`): each file it opens read once, the bytes it hashed are
the bytes it serves, files it does not open left unread, refusals as clear as `Registry.verify`'s, files
read and hashed at lower priority while the sessions keep the normal one.

Files are counted by the kernel (inotify), so every open counts, ONNX Runtime's and numpy's included."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from streamrec.registry import Announcement, Registry, Signature, TensorSpec  # noqa: E402
from streamrec.serving.config import ScorerConfig  # noqa: E402
from streamrec.serving.models import ModelStore  # noqa: E402
from streamrec.serving.ranking import Ranker  # noqa: E402
from streamrec.settings import Settings  # noqa: E402

ITEMS = [f"i{i}" for i in range(40)]
CATEGORIES = {item: f"c{i % 4}" for i, item in enumerate(ITEMS)}
LINUX = sys.platform.startswith("linux")


def publish(reg: Registry, tmp: Path, name: str, version: str, seed: int = 0, signatures=None,
            kind: str | None = None) -> Announcement:
    """A tiny untrained model of the trainer's classes (``kind``: by default the one ``name`` is for),
    exported and published with its torch weights (a file meta.json lists that the scorer never opens, as
    `publish_trained` ships)."""
    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.export import export_dcn, export_sasrec
    from streamrec.trainer.sasrec import SASRec
    from streamrec.trainer.weights import WEIGHTS, save_weights

    torch.manual_seed(seed)
    out = tmp / f"export-{name}-{version}"
    if (kind or {"sasrec": "sasrec"}.get(name, "dcn")) == "sasrec":
        model = SASRec(item_buckets=200, cat_buckets=20, dim=8, layers=1, heads=1, max_len=10)
        model.set_catalog(ITEMS, [CATEGORIES[i] for i in ITEMS])
        exported = export_sasrec(model, out, ITEMS, CATEGORIES)
    else:
        model = DCNRanker(user_buckets=100, item_buckets=200, cat_buckets=20, dim=4, hidden=(8,))
        exported = export_dcn(model, out)
    exported.files[WEIGHTS] = save_weights(model, out)
    hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
    reg.publish(name, exported.files, kind=model.kind, version=version, signatures=signatures or exported.signatures,
                opset=exported.opset, hashing=hashing, extra=exported.extra)
    return Announcement(name=name, version=version, uri=reg.location(name, version), sha256=reg.digest(name, version))


@pytest.fixture
def store(tmp_path):
    s = Settings(registry_uri=str(tmp_path / "reg"))
    store = ModelStore(s, ScorerConfig.from_settings(s))
    yield store
    store.stop()


class Opens:
    """Every open of a file in the watched folders, counted by the kernel (inotify)."""

    IN_OPEN, IN_CLOSE_NOWRITE = 0x20, 0x10  # a close between two opens keeps the kernel from merging them

    def __init__(self, *folders: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        self.folders = {}
        for folder in folders:
            wd = self.libc.inotify_add_watch(self.fd, str(folder).encode(), self.IN_OPEN | self.IN_CLOSE_NOWRITE)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self.folders[wd] = f"{Path(folder).parent.name}/{Path(folder).name}"

    def counts(self) -> Counter:
        """{"FOLDER/FILE": opens} since the watch started."""
        data = b""
        while True:
            try:
                data += os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
        out: Counter = Counter()
        at = 0
        while at < len(data):
            wd, mask, _cookie, length = struct.unpack_from("iIII", data, at)
            name = data[at + 16: at + 16 + length].rstrip(b"\0").decode()
            at += 16 + length
            if name and mask & self.IN_OPEN:
                out[f"{self.folders[wd]}/{name}"] += 1
        return out

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.skipif(not LINUX, reason="inotify is Linux's")
def test_each_file_the_scorer_opens_is_read_once_and_no_other_file_is_read(store, tmp_path):
    reg = Registry(tmp_path / "reg")
    anns = [publish(reg, tmp_path, "sasrec", "v1"), publish(reg, tmp_path, "ranker", "v1")]
    opens = Opens(*(Path(reg.location(a.name, a.version)) for a in anns))
    try:
        for ann in anns:
            assert store.offer(ann), store.refused
        got = opens.counts()
    finally:
        opens.close()
    assert store.swap_pending() == ["sasrec@v1", "ranker@v1"]
    assert got == {"sasrec/v1/meta.json": 1, "sasrec/v1/encoder.onnx": 1, "sasrec/v1/item_encoder.onnx": 1,
                   "sasrec/v1/item_vectors.npy": 1, "sasrec/v1/item_ids.npy": 1,
                   "ranker/v1/meta.json": 1, "ranker/v1/model.onnx": 1}, got
    # weights.pt is listed in meta.json (with its sha256) but the scorer never opens it: not read.
    assert all(Path(reg.location(a.name, a.version), "weights.pt").exists() for a in anns)


def test_the_bytes_served_are_the_bytes_hashed(store, tmp_path, monkeypatch):
    # A file replaced on disk right after the scorer read and hashed it (a time-of-check/time-of-use race):
    # the version serves what was hashed, not what the file holds now.
    reg = Registry(tmp_path / "reg")
    ann = publish(reg, tmp_path, "ranker", "v1", seed=1)
    publish(reg, tmp_path, "ranker", "other", seed=2)
    path = Path(reg.location("ranker", "v1")) / "model.onnx"
    original, other = path.read_bytes(), (Path(reg.location("ranker", "other")) / "model.onnx").read_bytes()
    assert original != other
    read_file = Registry._read_file
    swapped = []

    def read_then_tamper(self, where_path, *args):
        data = read_file(self, where_path, *args)
        if where_path == str(path):
            path.write_bytes(other)  # a valid graph, other weights
            swapped.append(where_path)
        return data

    monkeypatch.setattr(Registry, "_read_file", read_then_tamper)
    assert store.offer(ann), store.refused
    assert swapped
    store.swap_pending()
    served = store.live["ranker"]
    meta = reg.meta("ranker", "v1")
    reference = Ranker(tmp_path / "export-ranker-v1", meta, device="cpu")  # the published bytes
    tampered = Ranker(tmp_path / "export-ranker-other", reg.meta("ranker", "other"), device="cpu")
    users, items, cats = ["u1", "u2", "u3"], ["i1", "i2", "i3"], ["c1", "c2", ""]
    dense = np.abs(np.random.default_rng(0).normal(size=(3, len(served.dense_features)))).astype(np.float32)
    got = served.score(served.sparse(users, items, cats), dense)
    np.testing.assert_array_equal(got, reference.score(reference.sparse(users, items, cats), dense))
    assert not np.array_equal(got, tampered.score(tampered.sparse(users, items, cats), dense))
    # The file now on disk is not what meta.json pins: a new load of it is refused, the served one stays.
    monkeypatch.setattr(Registry, "_read_file", read_file)
    again = ModelStore(store.settings, store.config)
    try:
        assert not again.offer(ann)
        assert "model.onnx is corrupt" in again.refused[-1][2]
    finally:
        again.stop()


def test_a_graph_whose_inputs_are_not_the_declared_ones_is_refused_and_the_live_version_serves_on(store, tmp_path):
    reg = Registry(tmp_path / "reg")
    assert store.offer(publish(reg, tmp_path, "ranker", "v1"))
    store.swap_pending()
    wrong = Signature(inputs=[TensorSpec("ids", "int64", [-1, 5]), TensorSpec("dense", "float32", [-1, 6])],
                      outputs=[TensorSpec("prob", "float32", [-1])])
    assert not store.offer(publish(reg, tmp_path, "ranker", "v2", signatures={"model.onnx": wrong}))
    name, version, reason = store.refused[-1]
    assert (name, version) == ("ranker", "v2")
    assert "graph has inputs ['sparse', 'dense']" in reason and "meta.json declares ['ids', 'dense']" in reason
    assert "republish" in reason
    # /readyz shows a refusal cut to 200 characters: what is wrong comes before the (long) location.
    assert reason.startswith("model.onnx: meta.json declares") and reason.index(str(tmp_path)) > reason.index("republish")
    assert store.swap_pending() == [] and store.live["ranker"].name == "ranker@v1"


def test_a_corrupt_file_or_a_model_of_the_wrong_kind_is_refused_with_the_reason(store, tmp_path):
    reg = Registry(tmp_path / "reg")
    assert store.offer(publish(reg, tmp_path, "ranker", "v1"))
    store.swap_pending()
    bad = publish(reg, tmp_path, "ranker", "v2")
    model = Path(reg.location("ranker", "v2")) / "model.onnx"
    model.write_bytes(model.read_bytes()[:-16] + b"\0" * 16)
    assert not store.offer(bad)
    assert "ranker/v2: model.onnx is corrupt (sha256" in store.refused[-1][2]
    longer = publish(reg, tmp_path, "ranker", "v3")
    with open(Path(reg.location("ranker", "v3")) / "model.onnx", "ab") as f:
        f.write(b"\0" * 1000)  # larger than meta.json says: refused from its size, before it is read
    assert not store.offer(longer)
    assert "model.onnx is corrupt (" in store.refused[-1][2] and "meta.json says" in store.refused[-1][2]
    assert not store.offer(publish(reg, tmp_path, "ranker", "s1", kind="sasrec"))
    assert "ranker/s1 is a 'sasrec' model, but 'ranker' is the scorer's dcn model" in store.refused[-1][2]
    assert store.swap_pending() == [] and store.live["ranker"].name == "ranker@v1"


def _nice_of_threads() -> dict[int, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except FileNotFoundError:  # ended meanwhile
            continue
        out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice
    return out


@pytest.mark.skipif(not LINUX, reason="per-thread nice values are Linux's")
def test_files_are_read_and_hashed_at_lower_priority_and_sessions_keep_the_normal_one(store, tmp_path):
    reg = Registry(tmp_path / "reg")
    anns = [publish(reg, tmp_path, "sasrec", "v1"), publish(reg, tmp_path, "ranker", "v1")]
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = set(_nice_of_threads())
    for ann in anns:
        assert store.offer(ann), store.refused
    new = {tid: nice for tid, nice in _nice_of_threads().items() if tid not in before}
    readers = [t.native_id for t in threading.enumerate() if t.name.startswith("model-files")]
    assert len(readers) == 1 and new.pop(readers[0]) == min(19, base + 10)
    # The rest: ONNX Runtime's intra-op threads of the three sessions, at the priority of the thread loading.
    assert new and set(new.values()) == {base}, new
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # the loading thread untouched
    store.swap_pending()
    seq = store.live["sasrec"]
    assert np.isfinite(seq.user_vectors([ITEMS[:3]], CATEGORIES)).all()
    # STREAMREC_MODEL_LOAD_NICE=0: the reading thread keeps the scorer's priority.
    same = ModelStore(store.settings.replace(model_load_nice=0), store.config)
    try:
        assert same.offer(publish(reg, tmp_path, "ranker", "v2"))
        (reader,) = [t.native_id for t in threading.enumerate() if t.name.startswith("model-files")
                     and t.native_id != readers[0]]
        assert _nice_of_threads()[reader] == base
    finally:
        same.stop()
