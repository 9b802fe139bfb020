"""An older commit of streamrec, run beside the current code: `--baseline REF` of `streamrec bench serve`.

On a shared machine whose speed varies up to 3x from day to day, a speed-up is only a ratio measured in one
sitting: both versions on the same machine, the same minutes, the same models and inputs. `materialise`
lays out the importable package of commit REF from `git archive` (following its own pyproject's folder
mapping, so no build and no install); `run_core` runs that commit's scorer core in a child process whose
import path starts there.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path(".local/baseline")

# The child prints one line "RESULT <json>" after whatever the benchmark logs.
_CORE = ("import json, sys\n"
         "import streamrec\n"
         "from streamrec.harness.bench.core import core\n"
         "from streamrec.settings import Settings\n"
         "registry, candidates, batch, seconds = json.loads(sys.argv[1])\n"
         "out = core(Settings.from_env(), registry, candidates, batch, seconds)\n"
         "out['code'] = streamrec.__file__\n"
         "print('RESULT', json.dumps(out))\n")


class BaselineError(RuntimeError):
    """A baseline that cannot be laid out or run; the message says why."""


def materialise(ref: str, root: Path = DEFAULT_ROOT) -> Path:
    """The folder to put first on the import path to import commit ``ref`` as ``streamrec``."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}").strip()
    site = root.resolve() / commit[:12]
    if (site / "streamrec" / "__init__.py").exists():
        return site
    archive = tarfile.open(fileobj=io.BytesIO(_git_bytes("archive", "--format=tar", commit)))
    source = site.with_name(site.name + ".src")
    shutil.rmtree(source, ignore_errors=True)
    # The "data" filter refuses links and paths that leave the folder; Pythons before 3.11.4 (Debian 12's
    # 3.11.2) lack filters, and a `git archive` of this repository holds neither.
    archive.extractall(source, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for package, folder in _package_folders(source):
        shutil.copytree(source / folder, site / package.replace(".", "/"), dirs_exist_ok=True)
    shutil.rmtree(source)
    return site


def _package_folders(source: Path) -> list[tuple[str, str]]:
    """(package, folder) pairs of the commit's layout, parents before children."""
    config = tomllib.loads((source / "pyproject.toml").read_text())
    mapping = config.get("tool", {}).get("setuptools", {}).get("package-dir") or {"streamrec": "streamrec"}
    return sorted(mapping.items())


def run_core(site: Path, registry: str, candidates: int, batch: int, seconds: float) -> dict:
    """`harness.bench.core.core` of the commit laid out at ``site``, in a child process."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    args = json.dumps([str(Path(registry).resolve()), candidates, batch, seconds])
    # The working directory is the baseline itself: a child started in the checkout would find the
    # current `streamrec/` folder first.
    done = subprocess.run([sys.executable, "-c", _CORE, args], cwd=site, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise BaselineError(f"the baseline's scorer core failed (exit {done.returncode}): "
                            f"{(done.stderr or done.stdout).strip()[-2000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if not result["code"].startswith(str(site)):
        raise BaselineError(f"the baseline run imported {result['code']}, not the commit at {site}")
    return result


def _git(*args: str) -> str:
    return _git_bytes(*args).decode()


def _git_bytes(*args: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(REPOSITORY), *args], check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise BaselineError("--baseline needs git and a clone of the repository") from None
    except subprocess.CalledProcessError as exc:
        raise BaselineError(f"git {' '.join(args[:2])}: {exc.stderr.decode().strip()}") from None
