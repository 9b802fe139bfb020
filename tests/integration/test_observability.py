"""Every dashboard panel and every alert, evaluated by a real Prometheus scraping the real worker,
scorer and learner while events flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from streamrec.deploy.localstack import PrometheusService
from streamrec.deploy.observability import ALERTS, panel_queries
from streamrec.harness.bench.features import start_worker, stop_worker
from streamrec.harness.faults import free_port  # below the ephemeral range
from streamrec.stream.sdk import EventPublisher

from .test_scorer import build_models

pytestmark = pytest.mark.integration



def query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def ready(port: int, path: str = "/readyz") -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status == 200
    except OSError:
        return False


def alive(port: int) -> bool:
    # The learner is ready only with fine-tunable models; these test models have no torch weights.
    return ready(port, "/healthz")


@pytest.fixture
def observed(fresh_settings, tmp_path):
    """Worker and scorer with models, scraped by a Prometheus of the test's own, events flowing."""
    s = fresh_settings.replace(home=str(tmp_path), registry_uri=str(tmp_path / "registry"),
                               worker_port=free_port(), scorer_port=free_port(), learner_port=free_port(),
                               prometheus_port=free_port())
    prometheus = PrometheusService(s)
    prometheus.start(timeout=60, log=lambda m: None)
    build_models(s, tmp_path, "v1")
    worker = start_worker(s, port=s.worker_port)
    env = {**os.environ, **s.as_env(), "STREAMREC_LOG_LEVEL": "WARNING",
           "STREAMREC_LEARNER_CHECKPOINT_DIR": str(tmp_path / "learner")}
    scorer, learner = (subprocess.Popen([sys.executable, "-m", "streamrec.cli", command], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for command in ("serve", "learn"))
    try:
        deadline = time.monotonic() + 90
        while not (ready(s.scorer_port) and alive(s.learner_port)):
            assert scorer.poll() is None and learner.poll() is None, "scorer or learner exited"
            assert time.monotonic() < deadline, "scorer or learner did not start"
            time.sleep(0.2)
        with EventPublisher(s) as pub:
            end = time.monotonic() + 16  # more than three 5-second scrapes with traffic
            k = 0
            while time.monotonic() < end:
                pub.view(f"u{k % 20}", f"i{k % 40}")
                if k % 50 == 0:
                    pub.send_raw(b"{not json", key="u1")
                k += 1
                time.sleep(0.01)
        time.sleep(6)
        yield s
    finally:
        for proc in (scorer, learner):
            proc.terminate()
            proc.wait(60)
        stop_worker(worker)
        prometheus.stop()


def test_every_panel_and_alert_refers_to_series_that_exist(observed):
    port = observed.prometheus_port
    empty = [(title, expr) for title, expr in panel_queries() if not query(port, expr)]
    assert not empty, f"panels without data: {empty}"
    for alert in ALERTS:
        query(port, alert.expr)  # evaluates (healthy services: nothing fires, but the query must run)
        for metric in alert.metrics:
            assert query(port, f'count({{__name__="{metric}"}})'), f"{alert.name}: no series {metric}"
    rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10).read())
    loaded = {r["name"]: r for g in rules["data"]["groups"] for r in g["rules"]}
    assert set(loaded) == {a.name for a in ALERTS}
    assert all(r["health"] == "ok" for r in loaded.values()), [r for r in loaded.values() if r["health"] != "ok"]
    up = {r["metric"]["job"]: r["value"][1] for r in query(port, "up")}
    assert up == {"streamrec-worker": "1", "streamrec-scorer": "1", "streamrec-learner": "1"}
