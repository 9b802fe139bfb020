"""The registry: atomic versions, verification that refuses bad versions, current pointer, no path escape."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from streamrec.registry import Announcement, Registry, RegistryError, Signature, TensorSpec, check_name

SIG = Signature(inputs=[TensorSpec("sparse", "int64", [-1, 5]), TensorSpec("dense", "float32", [-1, 6])],
                outputs=[TensorSpec("prob", "float32", [-1])])


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"A" * 1000)
    (src / "b.npy").write_bytes(b"B" * 10)
    return {"model.onnx": src / "a.bin", "vectors.npy": src / "b.npy"}


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


def test_publish_writes_every_file_with_its_sha256(reg, files):
    meta = reg.publish("ranker", files, kind="dcn", version="v1", metrics={"AUC": 0.8},
                       data_window={"start_ms": 1, "end_ms": 2}, extra={"dense_features": ["x"]})
    folder = Path(reg.location("ranker", "v1"))
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.onnx", "vectors.npy"]
    on_disk = json.loads((folder / "meta.json").read_text())
    assert on_disk["files"]["model.onnx"]["bytes"] == 1000 and on_disk["metrics"] == {"AUC": 0.8}
    assert reg.verify("ranker", "v1") == meta
    assert reg.versions("ranker") == ["v1"] and reg.models() == ["ranker"]
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish("ranker", files, kind="dcn", version="v1")


def test_generated_versions_sort_by_creation(reg, files):
    versions = [reg.publish("m", files, kind="dcn").version for _ in range(3)]
    assert reg.versions("m") == sorted(versions) and len(set(versions)) == 3


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.onnx").write_bytes(b"A" * 999 + b"X"), "model.onnx is corrupt"),
    (lambda d: (d / "model.onnx").write_bytes(b"A" * 10), "model.onnx is corrupt"),
    (lambda d: (d / "vectors.npy").unlink(), "incomplete: missing vectors.npy"),
    (lambda d: (d / "meta.json").unlink(), "incomplete or missing: no meta.json"),
    (lambda d: (d / "meta.json").write_text("{not json"), "meta.json is corrupt"),
])
def test_damaged_versions_are_refused_with_a_clear_message(reg, files, damage, message):
    reg.publish("ranker", files, kind="dcn", version="v1")
    damage(Path(reg.location("ranker", "v1")))
    with pytest.raises(RegistryError, match=message):
        reg.verify("ranker", "v1")


def test_wrong_signature_is_refused(reg, files):
    reg.publish("ranker", files, kind="dcn", version="v1", signatures={"x.onnx": SIG})
    other = Signature(inputs=SIG.inputs[:1], outputs=SIG.outputs)
    with pytest.raises(RegistryError, match="this reader expects"):
        reg.verify("ranker", "v1", expected={"model.onnx": other})


def test_a_graph_that_does_not_match_its_declared_signature_is_refused(reg, tmp_path, trained):
    from streamrec.trainer.export import export_dcn

    exported = export_dcn(trained.dcn, tmp_path / "dcn")
    wrong = Signature(inputs=[TensorSpec("ids", "int64", [-1, 5]), SIG.inputs[1]], outputs=SIG.outputs)
    reg.publish("ranker", exported.files, kind="dcn", version="ok", signatures=exported.signatures)
    reg.publish("ranker", exported.files, kind="dcn", version="bad", signatures={"model.onnx": wrong})
    assert reg.verify("ranker", "ok").signatures["model.onnx"] == trained.dcn.signature()
    with pytest.raises(RegistryError, match="has inputs \\['sparse', 'dense'\\]"):
        reg.verify("ranker", "bad")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "UPPER", "", "a" * 65, "x\n"])
def test_names_that_could_escape_the_root_are_refused(reg, files, name):
    with pytest.raises(RegistryError, match="not allowed"):
        reg.publish(name, files, kind="dcn")
    if name != "UPPER":  # versions may use capitals (timestamps end in Z)
        with pytest.raises(RegistryError, match="not allowed"):
            reg.publish("ok", files, kind="dcn", version=name or "/")


def test_file_names_inside_a_version_are_checked(reg, files):
    with pytest.raises(RegistryError, match="not allowed in a version folder"):
        reg.publish("m", {"../../etc/x": files["model.onnx"]}, kind="dcn")
    with pytest.raises(RegistryError, match="not allowed in a version folder"):
        reg.publish("m", {"meta.json": files["model.onnx"]}, kind="dcn")


def test_promote_and_rollback_move_the_current_pointer(reg, files):
    for v in ("v1", "v2", "v3"):
        reg.publish("seq", files, kind="sasrec", version=v)
    assert reg.current("seq") is None and reg.resolve("seq") == "v3"
    assert reg.promote("seq", "v1") is None
    assert reg.promote("seq", "v2") == "v1"
    assert reg.promote("seq", "v3") == "v2"
    assert reg.rollback("seq") == "v2" and reg.current("seq") == "v2"
    assert reg.rollback("seq") == "v1"
    with pytest.raises(RegistryError, match="no previous version"):
        reg.rollback("seq")
    assert reg.resolve("seq") == "v1"


def test_promote_refuses_a_corrupt_version_and_keeps_the_old_one(reg, files):
    reg.publish("seq", files, kind="sasrec", version="v1")
    reg.publish("seq", files, kind="sasrec", version="v2")
    reg.promote("seq", "v1")
    (Path(reg.location("seq", "v2")) / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(RegistryError, match="corrupt"):
        reg.promote("seq", "v2")
    assert reg.current("seq") == "v1"
    with pytest.raises(RegistryError, match="no versions of 'nothing'"):
        reg.resolve("nothing")


def test_a_concurrent_reader_never_sees_a_partial_version(reg, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (8 << 20))  # large enough that copying takes a while
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            for v in reg.versions("m"):
                try:
                    reg.verify("m", v)
                    seen.add(v)
                except RegistryError as exc:  # any partial state a reader can observe
                    errors.append(f"{v}: {exc}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        published = [reg.publish("m", {"model.onnx": big, f"part{i}.npy": big}, kind="dcn", version=f"v{i}").version
                     for i in range(6)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen <= set(published) and seen  # the readers did observe versions while they appeared
    assert not [p for p in Path(reg.root, "m").iterdir() if p.name.startswith(".staging")]


def test_fsspec_backend_writes_meta_last_and_verifies(files):
    pytest.importorskip("fsspec")
    import fsspec

    reg = Registry("memory://streamrec-test-registry")
    reg.publish("seq", files, kind="sasrec", version="v1")
    assert reg.versions("seq") == ["v1"] and reg.verify("seq", "v1").kind == "sasrec"
    assert reg.open_version("seq", "v1").read("model.onnx") == b"A" * 1000  # the scorer's reads, no local copy
    fs = fsspec.filesystem("memory")
    fs.pipe("/streamrec-test-registry/seq/v2/model.onnx", b"half-written")  # a writer that died before meta.json
    assert reg.versions("seq") == ["v1"]
    with pytest.raises(RegistryError, match="incomplete"):
        reg.verify("seq", "v2")
    reg.promote("seq", "v1")
    assert reg.current("seq") == "v1"
    fs.rm("/streamrec-test-registry", recursive=True)


def test_registry_and_hashing_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, streamrec.registry, streamrec.hashing; "
            "sys.exit(1 if 'torch' in sys.modules or 'onnxruntime' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_announcement_round_trip_and_name_check():
    ann = Announcement(name="seq", version="v1", uri="/r/seq/v1", sha256="ab" * 32, metrics={"NDCG@10": 0.5})
    assert Announcement.decode(ann.encode()) == ann
    assert json.loads(ann.encode())["sha256"] == "ab" * 32
    assert check_name("sasrec") == "sasrec"


def test_a_version_over_the_size_limit_is_refused_before_it_is_read(reg, files):
    reg.publish("ranker", files, kind="dcn", version="v1")
    assert reg.verify("ranker", "v1", max_bytes=1010).version == "v1"
    with pytest.raises(RegistryError, match="1,010 bytes, larger than the limit of 1,000.*STREAMREC_MODEL_MAX_BYTES"):
        reg.verify("ranker", "v1", max_bytes=1000)


def test_open_version_reads_meta_json_only_and_each_file_when_asked_checked_before_use(reg, files):
    meta = reg.publish("ranker", files, kind="dcn", version="v1", signatures={"model.onnx": SIG})
    folder = Path(reg.location("ranker", "v1"))
    (folder / "vectors.npy").write_bytes(b"C" * 10)  # same size, other bytes
    version = reg.open_version("ranker", "v1", max_bytes=1010)  # no file read yet: the damage is not seen
    assert version.meta == meta and version.digest == reg.digest("ranker", "v1")
    assert version.has("model.onnx") and not version.has("weights.pt")
    assert version.read("model.onnx") == b"A" * 1000
    with pytest.raises(RegistryError, match=r"ranker/v1: vectors.npy is corrupt \(sha256 .*, 10 bytes; meta.json says"):
        version.read("vectors.npy")
    (folder / "model.onnx").write_bytes(b"A" * 2000)  # larger than listed: refused from its size, not read
    with pytest.raises(RegistryError, match=r"model.onnx is corrupt \(2000 bytes; meta.json says .*, 1000 bytes"):
        version.read("model.onnx")
    (folder / "extra.bin").write_bytes(b"x")  # in the folder, not pinned by meta.json: never handed out
    with pytest.raises(RegistryError, match="has no extra.bin in meta.json's files"):
        version.read("extra.bin")
    with pytest.raises(RegistryError, match="STREAMREC_MODEL_MAX_BYTES"):
        reg.open_version("ranker", "v1", max_bytes=1000)
    (folder / "vectors.npy").unlink()
    with pytest.raises(RegistryError, match="incomplete: missing vectors.npy"):
        reg.open_version("ranker", "v1")


def test_open_version_reads_through_the_given_executor(reg, files):
    from concurrent.futures import ThreadPoolExecutor

    reg.publish("ranker", files, kind="dcn", version="v1")
    threads = []
    read_file = reg._read_file
    reg._read_file = lambda *args: threads.append(threading.current_thread().name) or read_file(*args)
    with ThreadPoolExecutor(1, thread_name_prefix="files") as pool:
        assert reg.open_version("ranker", "v1", reader=pool).read("vectors.npy") == b"B" * 10
    assert [t.startswith("files") for t in threads] == [True]


def test_a_publish_that_cannot_write_is_a_registry_error_and_leaves_nothing(reg, files, monkeypatch):
    import shutil

    reg.publish("ranker", files, kind="dcn", version="v1")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(RegistryError, match="could not publish ranker/v2.*No space left"):
        reg.publish("ranker", files, kind="dcn", version="v2")
    assert sorted(p.name for p in (Path(reg.root) / "ranker").iterdir()) == ["v1"]
