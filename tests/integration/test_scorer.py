"""The scorer against real Kafka and Redis, with a real worker subprocess in front of it:
events through the SDK -> worker -> scorer -> one recommendation per event."""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
import urllib.request
from collections import Counter

import pytest

from streamrec.serving.config import ScorerConfig
from streamrec.serving.scorer import Scorer
from streamrec.stream import topics
from streamrec.harness.bench.features import start_worker, stop_worker
from streamrec.stream.sdk import EventPublisher, RecommendationConsumer

from .helpers import read_topic

pytestmark = pytest.mark.integration
ITEMS = [f"i{i}" for i in range(40)]
CATEGORIES = {item: f"c{i % 4}" for i, item in enumerate(ITEMS)}


def build_models(settings, tmp_path, version: str, which=("sasrec", "ranker"), seed: int = 0,
                 send: bool = True) -> list:
    """Tiny untrained models of the trainer's classes, exported (parity-checked) and published."""
    import torch

    from streamrec.trainer.dcn import DCNRanker
    from streamrec.trainer.export import export_dcn, export_sasrec
    from streamrec.trainer.publish import publish
    from streamrec.trainer.sasrec import SASRec

    torch.manual_seed(seed)
    anns = []
    for name in which:
        if name == "sasrec":
            model = SASRec(item_buckets=200, cat_buckets=20, dim=8, layers=1, heads=1, max_len=10)
            model.set_catalog(ITEMS, [CATEGORIES[i] for i in ITEMS])
            exported = export_sasrec(model, tmp_path / f"seq-{version}", ITEMS, CATEGORIES)
        else:
            model = DCNRanker(user_buckets=100, item_buckets=200, cat_buckets=20, dim=4, hidden=(8,))
            exported = export_dcn(model, tmp_path / f"dcn-{version}")
        hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
        anns.append(publish(settings, name, exported, kind=model.kind, metrics={"auc": 0.5}, data_window={},
                            hashing=hashing, version=version, send=send)[1])
    return anns


class Running:
    """A scorer running in a thread of the test process."""

    def __init__(self, settings, **config):
        # A Redis read slower than the production 0.25 s degrades an answer by design; on a machine loaded by the
        # rest of the suite that happened (the pull API answered from the trending snapshot). These tests check
        # the answers, not Redis' latency: 2 s.
        self.scorer = Scorer(settings, ScorerConfig(**{"seed": 0, "redis_timeout_s": 2.0, **config}), port=0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.code = None
        self.thread.start()
        # Ready: consuming, and the models announced before the start are loaded (or refused). Slow on a loaded
        # machine; a scorer that never gets ready fails here, not as a slate without models later.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.get("/readyz")[0] != 200:
            if not self.thread.is_alive():
                raise AssertionError(f"the scorer stopped before it was ready (exit code {self.code})")
            time.sleep(0.2)
        if self.get("/readyz")[0] != 200:
            self.stop()
            raise AssertionError(f"the scorer was not ready after 180 s: {self.get('/readyz')}")

    def _run(self):
        self.code = self.scorer.run(install_signals=False)

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.scorer.http.port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def stop(self) -> int:
        self.scorer.stop()
        self.thread.join(30)
        return self.code


def metric(body: bytes, name: str, **labels) -> float:
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


@pytest.fixture
def stack(fresh_settings, tmp_path):
    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"))
    worker = start_worker(s)
    yield s
    assert stop_worker(worker) == 0


def traffic(pub: EventPublisher, n: int, users: int = 12, purchase_every: int = 5, prefix: str = "u"):
    """Sessions of views with a purchase now and then; returns [(event_id, user, item, type)]."""
    sent = []
    for k in range(n):
        user = f"{prefix}{k % users}"
        item = ITEMS[(k * 7 + k // users) % len(ITEMS)]
        kind = "purchase" if k % purchase_every == purchase_every - 1 else "view"
        eid = pub.publish(kind, user_id=user, item_id=item, session_id=f"s-{user}")
        sent.append((eid, user, item, kind))
    return sent


def test_every_event_gets_a_recommendation_without_models(stack):
    s = stack
    with EventPublisher(s) as pub:  # trending and co-visitation exist before the scorer starts
        traffic(pub, 60, prefix="warm")
    running = Running(s)
    try:
        status, body = running.get("/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["degraded"]["no_model"] is True and ready["arms"] == {"default": []}
        with RecommendationConsumer(s) as recs, EventPublisher(s) as pub:
            sent = traffic(pub, 40)
            pub.flush()
            for eid, user, item, kind in sent:
                rec = recs.wait_for(eid, timeout=30)
                assert rec.user_id == user and rec.models == [] and not rec.degraded
                ids = [i.item_id for i in rec.items]
                assert item not in ids, f"{kind} of {item} recommended back: {ids}"
                assert len(ids) == len(set(ids)) and len(ids) == 10
                assert {i.reason.split(':')[0] for i in rec.items} <= {"trending", "covisit"}
                assert all(i.propensity == 1.0 for i in rec.items)
                assert rec.features is None, "nothing was ranked, so there are no ranker inputs to log"
        # Pull API: a known user, and an unknown user (cold start: trending).
        code, body = running.get("/v1/recommendations/u1")
        assert code == 200 and json.loads(body)["user_id"] == "u1"
        code, body = running.get("/v1/recommendations/nobody-knows-me")
        cold = json.loads(body)
        assert code == 200 and [i["reason"] for i in cold["items"]] == ["trending"] * 10
        assert running.get("/v1/recommendations/")[0] == 400
        assert running.get("/healthz")[0] == 200
        body = running.get("/metrics")[1]
        assert metric(body, "streamrec_scorer_degraded_total", mode="no_model") >= 40
        assert metric(body, "streamrec_scorer_degraded_total", mode="cold_start") >= 1
    finally:
        assert running.stop() == 0


def test_ranked_recommendations_carry_the_features_the_ranker_read(stack, tmp_path):
    """Feature logging: each ranked slate carries its items' dense inputs and the sequence as scored (a
    returning user's earlier items, then the session's), so the online trainer never has to read them back
    after the user reacted."""
    from streamrec.trainer.dcn import DENSE_FEATURES

    s = stack
    build_models(s, tmp_path, "v1")
    with EventPublisher(s) as pub:
        traffic(pub, 40, prefix="warm")
    for log_features in (True, False):
        running = Running(s, log_features=log_features)
        try:
            with RecommendationConsumer(s) as recs, EventPublisher(s) as pub:
                a, b = f"pit{log_features}-a", f"pit{log_features}-b"
                earlier: dict[str, list[str]] = {a: [], b: []}
                # b comes back in a second session: the sequence model reads its first session's items first.
                for user, session, items in ((a, "s1", ITEMS[3:9]), (b, "s1", ITEMS[20:24]), (b, "s2", ITEMS[30:33])):
                    viewed = []
                    for item in items:
                        # One event at a time: the slate answering it was scored on exactly the views so far.
                        eid = pub.publish("view", user_id=user, item_id=item, session_id=f"{session}-{user}")
                        pub.flush()
                        viewed.append(item)
                        rec = recs.wait_for(eid, timeout=30)
                        assert rec.models == ["sasrec@v1", "ranker@v1"]
                        if not log_features:
                            assert rec.features is None
                            continue
                        f = rec.features
                        assert f.names == list(DENSE_FEATURES)
                        assert f.session == viewed, "the session as the sequence model read it"
                        assert f.history == earlier[user], "after the user's items of earlier sessions"
                        assert len(f.dense) == len(rec.items) and all(len(row) == len(f.names) for row in f.dense)
                        session_length = [row[f.names.index("session_length")] for row in f.dense]
                        assert session_length == [pytest.approx(math.log1p(len(viewed)), abs=1e-4)] * len(rec.items)
                    earlier[user] += viewed
            # The pull API's answers never reach the trainer: they carry no ranker inputs.
            code, body = running.get(f"/v1/recommendations/pit{log_features}-a")
            pulled = json.loads(body)
            assert code == 200 and pulled["models"] == ["sasrec@v1", "ranker@v1"] and pulled["features"] is None
        finally:
            assert running.stop() == 0


def test_ranks_with_models_and_hot_swaps_under_traffic_without_losing_a_request(stack, tmp_path):
    s = stack
    build_models(s, tmp_path, "v1")
    with EventPublisher(s) as pub:
        traffic(pub, 40, prefix="warm")
    running = Running(s, exploration="softmax", temperature=0.5)
    sent: list = []
    try:
        status = json.loads(running.get("/readyz")[1])
        assert status["arms"]["default"] == ["sasrec@v1", "ranker@v1"], status
        # The counter is the process's: earlier tests in this process may have failed batches on purpose.
        failed_before = metric(running.get("/metrics")[1], "streamrec_scorer_failed_requests_total")
        done = threading.Event()

        def steady():
            with EventPublisher(s) as pub:
                while not done.is_set():
                    sent.extend(traffic(pub, 5, prefix=f"t{len(sent)}-"))
                    pub.flush()
                    time.sleep(0.1)

        t = threading.Thread(target=steady)
        t.start()
        try:
            for v in ("v2", "v3"):
                build_models(s, tmp_path, v, which=("ranker",), seed=int(v[1:]))
                time.sleep(1.0)
            # A corrupt version: the file no longer matches meta.json's sha256; refused, v3 keeps serving.
            build_models(s, tmp_path / "bad", "v4", which=("ranker",), seed=4, send=False)
            model = tmp_path / "registry" / "ranker" / "v4" / "model.onnx"
            model.write_bytes(model.read_bytes()[:-16] + b"\0" * 16)
            from streamrec.registry import Registry
            from streamrec.trainer.publish import announce, announcement
            announce(s, announcement(Registry(s.registry_uri), "ranker", "v4"))
            time.sleep(2.0)
        finally:
            done.set()
            t.join()
        deadline = time.monotonic() + 60
        wanted = {eid for eid, *_ in sent}
        while time.monotonic() < deadline:
            got = Counter(json.loads(m.value())["trigger_event_id"] for m in read_topic(s, topics.RECOMMENDATIONS))
            if wanted <= set(got):
                break
            time.sleep(0.5)
        missing = wanted - set(got)
        assert not missing, f"{len(missing)} of {len(wanted)} events never answered"
        twice = [e for e in wanted if got[e] > 1]
        assert not twice, f"answered twice: {twice[:3]}"
        recs = [json.loads(m.value()) for m in read_topic(s, topics.RECOMMENDATIONS)]
        versions = Counter(tuple(r["models"]) for r in recs if r["trigger_event_id"] in wanted)
        assert ("sasrec@v1", "ranker@v3") in versions and not any("ranker@v4" in v for v in versions), versions
        for r in recs:
            props = [i["propensity"] for i in r["items"]]
            assert all(0 < p <= 1 for p in props)
        status = json.loads(running.get("/readyz")[1])
        assert status["arms"]["default"] == ["sasrec@v1", "ranker@v3"]
        assert status["previous"] == {"ranker": "ranker@v2"}
        assert any(r.startswith("ranker/v4") and "corrupt" in r for r in status["refused"]), status["refused"]
        body = running.get("/metrics")[1]
        assert metric(body, "streamrec_scorer_refused_versions_total", model="ranker") >= 1
        assert metric(body, "streamrec_scorer_failed_requests_total") == failed_before
        # Rollback: announcing the previous version swaps it back without loading.
        from streamrec.registry import Registry
        from streamrec.trainer.publish import announce, announcement
        announce(s, announcement(Registry(s.registry_uri), "ranker", "v2"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if json.loads(running.get("/readyz")[1])["arms"]["default"][1] == "ranker@v2":
                break
            time.sleep(0.2)
        assert json.loads(running.get("/readyz")[1])["arms"]["default"][1] == "ranker@v2"
    finally:
        assert running.stop() == 0


def test_a_stalled_consumer_is_replaced_and_every_request_answered_once(fresh_settings, tmp_path):
    """Kafka's fetch quota stops the scorer's consumer receiving score requests while they keep coming (what
    librdkafka's consumer, left outside its group after a broker flap, looks like from outside): the scorer
    replaces its consumer, and once fetches flow again every request has exactly one recommendation."""
    from confluent_kafka import Producer

    from streamrec.stream import schemas
    from streamrec.stream.schemas import ScoreRequest

    from .helpers import set_consumer_quota

    s = fresh_settings.replace(registry_uri=str(tmp_path / "registry"), scorer_stall_s=4.0)
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, **topics.kafka_security(s)})

    def send(ids):
        for k in ids:
            req = ScoreRequest(event_id=f"r{k}", user_id=f"u{k % 50}", session_id=f"s{k % 50}", item_id=ITEMS[k % 40],
                               type="view", ts=int(time.time() * 1000), feature_version=1)
            producer.produce(s.topic(topics.SCORE_REQUESTS), key=req.user_id.encode(), value=schemas.encode(req))
        producer.flush(30)

    def answered() -> Counter:
        return Counter(json.loads(m.value())["trigger_event_id"] for m in read_topic(s, topics.RECOMMENDATIONS))

    def wait_answered(n: int, timeout: float) -> Counter:
        deadline, got = time.monotonic() + timeout, answered()
        while sum(got.values()) < n and time.monotonic() < deadline:
            time.sleep(0.5)
            got = answered()
        return got

    send(range(200))
    running = Running(s)
    client_id = topics.group_id(s, topics.SCORER_GROUP)  # the scorer's Kafka client id (its group id)
    throttled = False
    try:
        assert sum(wait_answered(200, 60).values()) == 200
        # The counter is the process's: count this scorer's renewals only.
        before = metric(running.get("/metrics")[1], "streamrec_scorer_consumer_renewals_total")
        set_consumer_quota(s, client_id, 1)
        throttled = True
        # The rest arrives slowly, so requests are always waiting while fetches are held back.
        feeder = threading.Thread(target=lambda: [send(range(i, i + 20)) or time.sleep(0.5)
                                                  for i in range(200, 600, 20)])
        feeder.start()
        deadline, renewals = time.monotonic() + 120, 0.0
        while time.monotonic() < deadline and renewals < 1:
            renewals = metric(running.get("/metrics")[1], "streamrec_scorer_consumer_renewals_total") - before
            time.sleep(0.5)
        assert renewals >= 1, "the scorer did not replace its stalled consumer"
        feeder.join()
        set_consumer_quota(s, client_id, None)
        throttled = False
        wait_answered(600, 120)
        time.sleep(2.0)
        got = answered()  # nothing more may come
        assert set(got) == {f"r{k}" for k in range(600)}, f"{600 - len(got)} request(s) never answered"
        twice = [e for e, n in got.items() if n > 1]
        assert not twice, f"answered twice: {twice[:3]}"
        assert json.loads(running.get("/readyz")[1])["checks"]["consuming"] is True
    finally:
        try:
            assert running.stop() == 0
        finally:
            if throttled:
                set_consumer_quota(s, client_id, None)
