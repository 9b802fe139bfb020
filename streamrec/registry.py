"""The model registry: layout, meta.json, atomic publish, verification, current pointer.

This module is the registry contract of docs/architecture.md, shared by the trainer
(writer) and the scorer (reader); it imports neither torch nor onnxruntime.

Layout under the root (a local folder, or an fsspec URL such as ``s3://b/p``)::

    NAME/VERSION/model.onnx, *.npy, ..., meta.json
    NAME/current.json          {"version": ..., "history": [older currents]}
    NAME/.staging-*/           (local only: a version being written)

A version is visible only once complete: locally it is written in a staging
folder and renamed into place (atomic on one filesystem); on object storage,
where there is no rename, ``meta.json`` is uploaded last and a version
without it is reported as incomplete. ``meta.json`` holds the sha256 and size
of every other file, so a reader detects any corrupt or truncated file.

Two ways to check a version: `Registry.verify` reads every file (the CLI, the
trainer before it announces); `Registry.open_version` is the scorer's: it reads
``meta.json`` once, then each file the model opens once, when the model asks
for it, and hands out the very bytes it hashed (`LoadedVersion.read`), so what
was checked is what is served, and files the scorer does not use are not read.

>>> import tempfile, pathlib
>>> root = tempfile.mkdtemp()
>>> reg = Registry(root)
>>> src = pathlib.Path(root, "w.bin"); _ = src.write_bytes(b"weights")
>>> meta = reg.publish("ranker", {"model.onnx": src}, kind="dcn", version="v1")
>>> reg.versions("ranker"), reg.verify("ranker", "v1").files["model.onnx"].bytes
(['v1'], 7)
>>> Registry(root).publish("../evil", {"model.onnx": src}, kind="dcn")
Traceback (most recent call last):
...
streamrec.registry.RegistryError: model name '../evil' is not allowed: use 1-64 characters from a-z, 0-9, '_', '-', '.', starting with a letter or digit
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from concurrent.futures import Executor
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import msgspec

META = "meta.json"
CURRENT = "current.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says what and how to fix it."""


class TensorSpec(msgspec.Struct, frozen=True):
    """One input or output of an exported graph; ``-1`` in ``shape`` marks a dynamic axis."""

    name: str
    dtype: str
    shape: list[int]


class Signature(msgspec.Struct, frozen=True):
    """Inputs and outputs of one exported graph."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class FileEntry(msgspec.Struct, frozen=True):
    """Checksum and size of one file of a version."""

    sha256: str
    bytes: int


class ModelMeta(msgspec.Struct, kw_only=True):
    """The content of ``meta.json``."""

    name: str
    version: str
    kind: str
    """Model family, e.g. ``sasrec`` or ``dcn``: tells the scorer how to use it."""
    created: str
    parent: str | None = None
    data_window: dict = {}
    kafka_offsets: dict | None = None
    metrics: dict[str, float] = {}
    files: dict[str, FileEntry] = {}
    signatures: dict[str, Signature] = {}
    """Per ONNX file name, its inputs and outputs."""
    opset: int | None = None
    hashing: dict = {}
    """How ids were hashed (see `streamrec.hashing.IdHasher.describe`)."""
    extra: dict = {}
    """Model-specific facts the scorer needs (feature names, max sequence length...)."""
    format_version: int = FORMAT_VERSION


_meta_decoder = msgspec.json.Decoder(ModelMeta)


class Announcement(msgspec.Struct, frozen=True):
    """The value published on `model-versions` (key: the model name) once a version is written."""

    name: str
    version: str
    uri: str
    """Folder of the version (local path or URL)."""
    sha256: str
    """sha256 of the version's meta.json (see `meta_digest`)."""
    metrics: dict[str, float] = {}

    def encode(self) -> bytes:
        """JSON bytes for the Kafka record value."""
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> "Announcement":
        """Parse a `model-versions` record value."""
        return msgspec.json.decode(data, type=cls)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise (no path can escape the root)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(f"model name {name!r} is not allowed: use 1-64 characters from a-z, 0-9, "
                            "'_', '-', '.', starting with a letter or digit")
    return name


def check_version(version: str) -> str:
    """Return ``version`` if it is a valid version label, else raise."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version) or ".." in version:
        raise RegistryError(f"version {version!r} is not allowed: use 1-64 characters from A-Z, a-z, "
                            "0-9, '_', '-', '.', starting with a letter or digit")
    return version


def new_version() -> str:
    """A fresh version label that sorts by creation time: ``20260101T120000Z-1a2b``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:4]


def _chunks(f) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _sha256(chunks: Iterable[bytes]) -> tuple[str, int]:
    """Hex sha256 and length of a file's bytes, given in one or more chunks (hashlib releases the GIL)."""
    h, n = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def _check_file(where: str, fname: str, entry: FileEntry, sha: str | None, size: int) -> None:
    """Refuse a file whose size or sha256 is not the one meta.json lists (``sha`` None: not read, the size
    already differs). The one check of both readers, `Registry.verify` and `LoadedVersion.read`."""
    if size != entry.bytes or sha != entry.sha256:
        found = f"sha256 {sha[:12]}..., " if sha is not None else ""
        raise RegistryError(f"{where}: {fname} is corrupt ({found}{size} bytes; meta.json says "
                            f"{entry.sha256[:12]}..., {entry.bytes} bytes); republish it")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file."""
    with open(path, "rb") as f:
        return _sha256(_chunks(f))[0]


def meta_digest(meta_bytes: bytes) -> str:
    """The version's identity: sha256 of its meta.json (which lists the sha256 of every file)."""
    return hashlib.sha256(meta_bytes).hexdigest()


class Registry:
    """A registry rooted at a local path or an fsspec URL (``scheme://...``, needs fsspec)."""

    def __init__(self, uri: str | Path):
        self.uri = str(uri)
        if "://" in self.uri and not self.uri.startswith("file://"):
            try:
                import fsspec
            except ImportError:
                raise RegistryError(f"registry {self.uri!r} is a URL but fsspec is not installed: "
                                    "pip install fsspec (and the scheme's driver, e.g. s3fs)") from None
            self.fs, self.root = fsspec.core.url_to_fs(self.uri)
            self.local = False
        else:
            self.fs, self.root = None, str(Path(self.uri.removeprefix("file://")).resolve())
            self.local = True

    # -- paths ------------------------------------------------------------ #
    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def location(self, name: str, version: str) -> str:
        """The folder (path or URL) of one version."""
        path = self._join(check_name(name), check_version(version))
        return path if self.local else f"{self.fs.unstrip_protocol(path)}"

    # -- low-level file access --------------------------------------------- #
    def _read(self, path: str) -> bytes:
        if self.local:
            return Path(path).read_bytes()
        with self.fs.open(path, "rb") as f:
            return f.read()

    def _exists(self, path: str) -> bool:
        return Path(path).exists() if self.local else self.fs.exists(path)

    def _listdir(self, path: str) -> list[str]:
        if self.local:
            p = Path(path)
            return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
        if not self.fs.exists(path):
            return []
        return sorted(Path(e.rstrip("/")).name for e in self.fs.ls(path, detail=False))

    def _size(self, path: str) -> int:
        return Path(path).stat().st_size if self.local else int(self.fs.size(path))

    def _open(self, path: str):
        return open(path, "rb") if self.local else self.fs.open(path, "rb")

    def _sha_and_size(self, path: str) -> tuple[str, int]:
        with self._open(path) as f:
            return _sha256(_chunks(f))

    def _read_file(self, path: str, where: str, fname: str, entry: FileEntry) -> bytes:
        """The bytes of one file of a version, read once and checked against its meta.json ``entry``.

        The size is checked on the open file before anything is read (a file larger than meta.json says
        is refused without reading it, so STREAMREC_MODEL_MAX_BYTES holds), then exactly the listed number
        of bytes is read and hashed. The caller uses those bytes, never the file again.
        """
        with self._open(path) as f:
            size = os.fstat(f.fileno()).st_size if self.local else int(getattr(f, "size", None) or self._size(path))
            if size != entry.bytes:
                _check_file(where, fname, entry, None, size)
            data = f.read(entry.bytes)
        _check_file(where, fname, entry, *_sha256([data]))
        return data

    def _write_atomic(self, path: str, data: bytes) -> None:
        if self.local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old or the new file, never half
        else:
            self.fs.pipe(path, data)

    # -- publishing --------------------------------------------------------- #
    def publish(self, name: str, files: Mapping[str, str | Path], *, kind: str, version: str | None = None,
                parent: str | None = None, data_window: dict | None = None, kafka_offsets: dict | None = None,
                metrics: Mapping[str, float] | None = None, signatures: Mapping[str, Signature] | None = None,
                opset: int | None = None, hashing: dict | None = None, extra: dict | None = None) -> ModelMeta:
        """Write ``NAME/VERSION/`` with ``files`` ({name in the version: local source path}) and meta.json.

        The version becomes visible all at once (see the module docstring);
        publishing an existing version is refused.
        """
        check_name(name)
        version = check_version(version or new_version())
        for fname in files:
            if fname == META or "/" in fname or fname.startswith(".") or not _VERSION.fullmatch(fname):
                raise RegistryError(f"file name {fname!r} is not allowed in a version folder")
        target = self._join(name, version)
        if self._exists(target):
            raise RegistryError(f"{name}/{version} already exists in {self.uri}; versions are immutable, "
                                "publish a new version instead")
        entries = {f: FileEntry(sha256_file(src), Path(src).stat().st_size) for f, src in files.items()}
        meta = ModelMeta(name=name, version=version, kind=kind,
                         created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                         parent=parent, data_window=dict(data_window or {}), kafka_offsets=kafka_offsets,
                         metrics={k: float(v) for k, v in (metrics or {}).items()}, files=entries,
                         signatures=dict(signatures or {}), opset=opset, hashing=dict(hashing or {}),
                         extra=dict(extra or {}))
        meta_bytes = msgspec.json.format(msgspec.json.encode(meta), indent=2)
        if self.local:
            staging = Path(self._join(name, f".staging-{uuid.uuid4().hex}"))
            try:
                staging.mkdir(parents=True)  # inside the try: an unwritable registry is a RegistryError too
                for f, src in files.items():
                    shutil.copyfile(src, staging / f)
                (staging / META).write_bytes(meta_bytes)
                for p in staging.iterdir():  # durable before it becomes visible
                    with open(p, "rb") as fh:
                        os.fsync(fh.fileno())
                os.rename(staging, target)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise RegistryError(f"could not publish {name}/{version} to {self.uri}: {exc}") from exc
        else:
            for f, src in files.items():
                self.fs.put_file(str(src), f"{target}/{f}")
            self.fs.pipe(f"{target}/{META}", meta_bytes)  # last: its presence marks the version complete
        return meta

    # -- reading ------------------------------------------------------------ #
    def models(self) -> list[str]:
        """Model names in the registry."""
        return [n for n in self._listdir(self.root) if _NAME.fullmatch(n)]

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` in creation-time order (complete or not; staging folders excluded)."""
        found = [v for v in self._listdir(self._join(check_name(name)))
                 if _VERSION.fullmatch(v) and v != CURRENT and self._exists(self._join(name, v, META))]
        return sorted(found)

    def meta(self, name: str, version: str) -> ModelMeta:
        """Read meta.json without verifying the files (for listing)."""
        return self._meta(name, version)[0]

    def _meta(self, name: str, version: str) -> tuple[ModelMeta, str]:
        """meta.json, read once: the meta and its digest (of the same bytes)."""
        path = self._join(check_name(name), check_version(version), META)
        if not self._exists(path):
            raise RegistryError(f"{name}/{version} is incomplete or missing: "
                                f"no {META} in {self.location(name, version)}")
        raw = self._read(path)
        try:
            return _meta_decoder.decode(raw), meta_digest(raw)
        except msgspec.DecodeError as exc:
            raise RegistryError(f"{name}/{version}: {META} is corrupt ({exc}); republish the version") from None

    def _check_meta(self, meta: ModelMeta, name: str, version: str, max_bytes: int | None) -> None:
        """What both readers check before reading any file: the folder, the files present, the size limit."""
        where = f"{name}/{version}"
        if meta.name != name or meta.version != version:
            raise RegistryError(f"{where}: meta.json says {meta.name}/{meta.version}; "
                                "the folder was moved or copied")
        present = set(self._listdir(self._join(name, version))) - {META}
        missing = set(meta.files) - present
        if missing:
            raise RegistryError(f"{where} is incomplete: missing {', '.join(sorted(missing))}; republish it")
        if max_bytes is not None:
            declared = sum(e.bytes for e in meta.files.values())
            on_disk = sum(self._size(self._join(name, version, f)) for f in meta.files)
            if max(declared, on_disk) > max_bytes:
                raise RegistryError(f"{where} is {max(declared, on_disk):,} bytes, larger than the limit of "
                                    f"{max_bytes:,} (STREAMREC_MODEL_MAX_BYTES); raise the limit or shrink the model")

    @staticmethod
    def _check_signed_files(meta: ModelMeta, where: str) -> None:
        for fname in meta.signatures:
            if fname not in meta.files:  # security: only files pinned by a sha256 are ever opened
                raise RegistryError(f"{where}: meta.json declares a signature for {fname!r}, which is not one "
                                    "of its files; republish the version")

    def open_version(self, name: str, version: str, max_bytes: int | None = None,
                     reader: Executor | None = None) -> "LoadedVersion":
        """One version as the scorer loads it: meta.json read once and checked as `verify` checks it
        (``max_bytes`` included), no other file read yet. Each file is read when the model opens it,
        once, and checked before its bytes are handed out (`LoadedVersion.read`), in ``reader`` when
        given (the scorer's: a thread of lower priority); the graphs' declared inputs and outputs are
        checked by whoever opens them (the scorer: on its ONNX Runtime session)."""
        meta, digest = self._meta(name, version)
        self._check_meta(meta, name, version, max_bytes)
        self._check_signed_files(meta, f"{name}/{version}")
        return LoadedVersion(self, meta, digest, reader)

    def verify(self, name: str, version: str, expected: Mapping[str, Signature] | None = None,
               max_bytes: int | None = None) -> ModelMeta:
        """Check every file's size and sha256 and the ONNX signatures; return the meta or raise.

        ``expected`` ({onnx file: Signature}) lets a reader refuse a version
        whose graphs do not have the inputs and outputs it was built for.
        ``max_bytes`` refuses a version whose files (declared or on disk) add up to more,
        before any of them is read.
        """
        meta = self.meta(name, version)
        where = f"{name}/{version}"
        self._check_meta(meta, name, version, max_bytes)
        for fname, entry in meta.files.items():
            sha, size = self._sha_and_size(self._join(name, version, fname))
            _check_file(where, fname, entry, sha, size)
        for fname, sig in (expected or {}).items():
            if meta.signatures.get(fname) != sig:
                raise RegistryError(f"{where}: {fname} has signature {meta.signatures.get(fname)}, "
                                    f"but this reader expects {sig}; use a compatible version")
        self._check_signed_files(meta, where)
        for fname, sig in meta.signatures.items():
            self._check_graph(where, fname, sig)
        return meta

    def _check_graph(self, where: str, fname: str, sig: Signature) -> None:
        # The graph itself must match what meta.json promises; skipped when the
        # onnx package is absent (the sha256 above already pins the bytes).
        try:
            import onnx
        except ImportError:
            return
        model = onnx.load_from_string(self._read(self._join(*where.split("/"), fname)))
        init = {i.name for i in model.graph.initializer}
        names_in = [i.name for i in model.graph.input if i.name not in init]
        names_out = [o.name for o in model.graph.output]
        if names_in != [t.name for t in sig.inputs] or names_out != [t.name for t in sig.outputs]:
            raise RegistryError(f"{where}: {fname} has inputs {names_in} and outputs {names_out}, but meta.json "
                                f"declares {[t.name for t in sig.inputs]} -> {[t.name for t in sig.outputs]}")

    def digest(self, name: str, version: str) -> str:
        """sha256 of the version's meta.json (what `model-versions` announces)."""
        return meta_digest(self._read(self._join(check_name(name), check_version(version), META)))

    # -- current pointer ------------------------------------------------------ #
    def _pointer(self, name: str) -> dict:
        path = self._join(check_name(name), CURRENT)
        if not self._exists(path):
            return {"version": None, "history": []}
        return msgspec.json.decode(self._read(path))

    def current(self, name: str) -> str | None:
        """The promoted version of ``name``, or None if none was promoted."""
        version = self._pointer(name)["version"]
        # security: current.json is a file like any other; what it names must be a valid version.
        return check_version(version) if version is not None else None

    def promote(self, name: str, version: str) -> str | None:
        """Verify ``version`` and make it current; returns the version it replaced."""
        self.verify(name, version)
        ptr = self._pointer(name)
        old = ptr["version"]
        if old == version:
            return old
        history = ([old] if old else []) + list(ptr["history"])
        self._write_atomic(self._join(name, CURRENT), msgspec.json.encode(
            {"version": version, "history": history[:50], "updated_ms": int(time.time() * 1000)}))
        return old

    def rollback(self, name: str) -> str:
        """Make the previously current version current again; returns it."""
        ptr = self._pointer(name)
        if not ptr["history"]:
            raise RegistryError(f"{name} has no previous version to roll back to "
                                f"(current: {ptr['version']}); promote a version instead")
        previous, *rest = ptr["history"]
        self.verify(name, previous)
        self._write_atomic(self._join(name, CURRENT), msgspec.json.encode(
            {"version": previous, "history": rest, "updated_ms": int(time.time() * 1000)}))
        return previous

    def resolve(self, name: str, version: str | None = None) -> str:
        """``version`` if given, else the current one, else the newest."""
        if version:
            return check_version(version)
        current = self.current(name)
        if current:
            return current
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no versions of {name!r} in {self.uri}; train and publish one first")
        return versions[-1]

    def announcements(self, names=("sasrec", "ranker")) -> list[Announcement]:
        """The current version of each named model that has one, as `model-versions` records (what a scorer
        started beside this registry would have been told)."""
        out = []
        for name in names:
            try:
                version = self.resolve(name) if name in self.models() else None
            except RegistryError:
                version = None
            if version:
                out.append(Announcement(name=name, version=version, uri=self.location(name, version),
                                        sha256=self.digest(name, version), metrics=self.meta(name, version).metrics))
        return out


class VersionFiles:
    """The files of one model version, by name, as a model class opens them (`has`, `read`)."""

    def has(self, fname: str) -> bool:
        raise NotImplementedError

    def read(self, fname: str) -> bytes:
        raise NotImplementedError

    def label(self, fname: str) -> str:
        """Where ``fname`` is, for messages."""
        raise NotImplementedError


class Folder(VersionFiles):
    """The files of a local folder as they are, unchecked: for a caller that verified the folder itself or
    needs no check (tools, tests). The scorer loads through `Registry.open_version` instead."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def has(self, fname: str) -> bool:
        return (self.path / fname).exists()

    def read(self, fname: str) -> bytes:
        return (self.path / fname).read_bytes()

    def label(self, fname: str) -> str:
        return str(self.path / fname)


class LoadedVersion(VersionFiles):
    """A registry version being loaded (`Registry.open_version`): its meta, the digest of that meta.json,
    and its files, each read once when asked for and checked against meta.json before its bytes are
    handed out. Only files meta.json lists (pinned by a sha256) exist for it."""

    def __init__(self, registry: Registry, meta: ModelMeta, digest: str, reader: Executor | None = None):
        self.registry, self.meta, self.digest, self.reader = registry, meta, digest, reader
        self.where = f"{meta.name}/{meta.version}"

    def has(self, fname: str) -> bool:
        return fname in self.meta.files

    def read(self, fname: str) -> bytes:
        entry = self.meta.files.get(fname)
        if entry is None:
            raise RegistryError(f"{self.where} has no {fname} in meta.json's files, and the scorer opens only "
                                "files pinned by a sha256; republish the version with it")
        args = (self.registry._join(self.meta.name, self.meta.version, fname), self.where, fname, entry)
        if self.reader is None:
            return self.registry._read_file(*args)
        return self.reader.submit(self.registry._read_file, *args).result()

    def label(self, fname: str) -> str:
        return f"{self.registry.location(self.meta.name, self.meta.version)}/{fname}"
