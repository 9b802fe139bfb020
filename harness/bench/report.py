"""Where every benchmark's figures go: a JSON file in one output folder, with the run that produced them.

Figures from a shared machine compare only within one run (BENCHMARKS.md, "How to reproduce"): each report
carries, under ``run``, the load average when the benchmark started and when it finished, the CPUs, Python,
the commit and the times, so a table row can say under what it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path


def output_folder(args) -> Path:
    """``--out``, else ``<home>/bench``; created if missing."""
    out = Path(args.out) if getattr(args, "out", None) else args.settings.home_path / "bench"
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_started() -> dict:
    """What to note when a benchmark starts."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_start": list(os.getloadavg()),
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "commit": _commit()}


def write_report(out: Path, filename: str, report: dict, run: dict) -> Path:
    """Write ``report`` with its ``run`` (from `run_started`, finished now) as ``out/filename``."""
    path = out / filename
    finished = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_end": list(os.getloadavg())}
    path.write_text(json.dumps({**report, "run": {**run, **finished}}, indent=2, default=float) + "\n")
    return path


def _commit() -> str | None:
    """The checkout's commit (with ``+changes`` when the tree differs from it), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
