"""Every benchmark writes its figures with the run that produced them (harness/bench/report.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from streamrec.harness.bench.report import output_folder, run_started, write_report
from streamrec.settings import Settings


def test_a_report_carries_its_run_load_commit_and_times(tmp_path):
    started = run_started()
    path = write_report(tmp_path, "x.json", {"events_per_s": 123.4}, started)
    report = json.loads(path.read_text())
    assert report["events_per_s"] == 123.4
    run = report["run"]
    assert len(run["load_start"]) == 3 and len(run["load_end"]) == 3
    assert run["cpus"] >= 1 and run["started"] <= run["finished"]
    in_checkout = (Path(__file__).resolve().parents[2] / ".git").exists()
    assert (run["commit"] is not None) == in_checkout, run["commit"]
    if in_checkout:
        int(run["commit"].split("+")[0], 16)  # a short hash


def test_the_output_folder_is_out_else_home_bench(tmp_path):
    given = output_folder(argparse.Namespace(out=str(tmp_path / "a" / "b"), settings=Settings()))
    assert given == tmp_path / "a" / "b" and given.is_dir()
    default = output_folder(argparse.Namespace(out=None, settings=Settings(home=str(tmp_path / "home"))))
    assert default == tmp_path / "home" / "bench" and default.is_dir()
