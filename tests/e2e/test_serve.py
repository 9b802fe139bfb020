"""The whole loop with the real commands: SDK -> `streamrec worker` -> `streamrec serve` -> SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from streamrec.harness.bench.features import _free_port, start_worker, stop_worker
from streamrec.stream.sdk import EventPublisher, RecommendationConsumer

pytestmark = pytest.mark.e2e


def start_scorer(s, port: int) -> subprocess.Popen:
    env = {**os.environ, **s.as_env(), "STREAMREC_SCORER_PORT": str(port), "STREAMREC_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "streamrec.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("scorer not ready in 60 s")


def test_events_in_recommendations_out_and_sigterm_exits_cleanly(fresh_settings, tmp_path):
    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    worker = start_worker(s)
    port = _free_port()
    scorer = start_scorer(s, port)
    try:
        with RecommendationConsumer(s) as recs, EventPublisher(s) as pub:
            sent = []
            for k in range(30):
                kind = "purchase" if k % 3 == 2 else "view"
                user, item = f"u{k % 4}", f"item-{k % 9}"
                sent.append((pub.publish(kind, user_id=user, item_id=item), user, item))
            pub.flush()
            for eid, user, item in sent:
                rec = recs.wait_for(eid, timeout=30)
                assert rec.user_id == user and item not in [i.item_id for i in rec.items]
        ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read())
        assert ready["ready"] and ready["degraded"]["no_model"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "streamrec_scorer_end_to_end_seconds_count" in text
    finally:
        scorer.send_signal(signal.SIGTERM)
        code = scorer.wait(30)
        assert stop_worker(worker) == 0
    assert code == 0, "SIGTERM must end the scorer cleanly"
