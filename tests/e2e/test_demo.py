"""`streamrec demo`, the quickstart's first command, run as a user runs it, short: every service stops with
exit 0, the last frame counts every malformed event the careless app sent as dead-lettered, and the report
and the PNG are written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamrec.harness.bench.features import _free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_a_short_demo_runs_the_loop_shows_every_dead_letter_and_stops_cleanly(settings):
    from streamrec.stream.topics import delete_topics

    s = settings.replace(worker_port=_free_port(), scorer_port=_free_port(), learner_port=_free_port())
    env = {**os.environ, **s.as_env(), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "streamrec.cli", "demo", "--seconds", "20", "--users", "30",
                           "--rate", "20", "--pretrain-steps", "100"],
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    prefix = re.search(r"topics prefixed (\S+);", out)
    logs = re.search(r"logs in (\S+)", out)
    try:
        assert proc.returncode == 0, out[-4000:]
        for service in ("scorer", "learner", "worker"):
            assert f"{service} stopped (exit 0)" in out, out[-4000:]
        # The last frame is drawn after the worker drained: it counts all the malformed events sent.
        final = out[out.index("finished: 20 s of traffic"):]
        dead, sent = map(int, re.search(r"dead letters[^\n]*?(\d+) of (\d+) sent", final).groups())
        assert sent >= 5 and dead == sent, final
        applied = int(re.search(r"events applied to Redis features \(worker\)\D*([\d,]+)", final)
                      .group(1).replace(",", ""))
        assert applied > 100, final
        run = Path(logs.group(1))
        report = json.loads((run / "report.json").read_text())
        assert {"popularity", "frozen", "online"} <= set(report["variants"])
        assert all(v["buckets"] for v in report["variants"].values())
        assert (run / "reward.png").stat().st_size > 10_000
    finally:
        if prefix:
            delete_topics(s.replace(topic_prefix=prefix.group(1)))
        if logs:
            shutil.rmtree(logs.group(1), ignore_errors=True)
