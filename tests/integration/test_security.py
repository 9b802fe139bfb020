"""streamrec against a Kafka that demands SCRAM-SHA-512 over TLS and a Redis that demands an ACL user over TLS.

One secure stack for the module (`streamrec.deploy.securestack`: a throwaway CA,
Kafka 4.1.1 with a SASL_SSL listener, redis-server TLS-only with the default
user off), on free ports in a folder of its own. The services get their
secrets the ways deployments do: the Kafka password as a variable, the Redis
password and the pull token from files, the Kafka CA as a file and the Redis CA
as PEM text in a variable. Then, over it: the faust worker and the scorer
answer events published with the SDK; the pull API wants its bearer token; the
online trainer joins a click to its recommendation; training replays the events
topic; the confluent engine applies events; wrong credentials and a wrong CA
stop each service at once with the setting to fix; no secret reaches a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streamrec.deploy.localstack import install_kafka
from streamrec.deploy.securestack import SecureStack, make_tls, secret_file
from streamrec.harness.faults import free_port  # below the ephemeral range
from streamrec.security import SecurityError, check_kafka, check_redis, redis_client
from streamrec.settings import Settings
from streamrec.stream import topics
from streamrec.stream.keys import Keys
from streamrec.stream.sdk import EventPublisher, PublishError, RecommendationConsumer

from .helpers import read_topic, wait_outputs

pytestmark = [pytest.mark.integration, pytest.mark.stack]
TOKEN = "pull-token-" + "x7" * 16



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    libs = install_kafka(Settings.from_env().home_path, log=lambda m: None)  # shared jars, fetched once
    home = tmp_path_factory.mktemp("secure-stack")
    (home / "kafka").mkdir()
    os.symlink(libs, home / "kafka" / "libs")
    base = Settings.from_env().replace(home=str(home), kafka_port=free_port(), kafka_controller_port=free_port(),
                                       redis_port=free_port(), prometheus_port=free_port(), kafka_heap="384m")
    stack = SecureStack(base)
    stack.up(log=lambda m: None)
    yield stack
    stack.down()


@pytest.fixture(scope="module")
def secure(stack, tmp_path_factory) -> Settings:
    """Client settings for the stack: passwords and token from files or variables, CAs as a file or PEM text."""
    secrets_dir = tmp_path_factory.mktemp("secrets")
    u = stack.users
    s = stack.client_settings.replace(
        topic_prefix="sec.", redis_prefix="sec:",
        redis_password="", redis_password_file=str(secret_file(secrets_dir, "redis-password", u.redis_password)),
        redis_ssl_ca=stack.tls.ca.read_text(),  # PEM text, as an environment variable would carry it
        scorer_pull_token_file=str(secret_file(secrets_dir, "pull-token", TOKEN)),
        registry_uri=str(tmp_path_factory.mktemp("registry")))
    topics.create_topics(s)
    return s


def start(args: list[str], s: Settings, log: Path, **env) -> subprocess.Popen:
    environ = {**os.environ, **s.as_env(), "STREAMREC_LOG_LEVEL": "INFO", **env}
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "streamrec.cli", *args], env=environ, stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        if ready(port):
            return
        time.sleep(0.2)
    raise AssertionError(f"not ready on port {port} after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture(scope="module")
def confluent_settings(secure) -> Settings:
    s = secure.replace(topic_prefix="sec2.", redis_prefix="sec2:")
    topics.create_topics(s)
    return s


@pytest.fixture(scope="module")
def services(secure, confluent_settings, tmp_path_factory):
    """The faust worker and the scorer on `secure`, the confluent engine on `confluent_settings`,
    all started together (their start-ups overlap), against the secure stack."""
    logs = tmp_path_factory.mktemp("logs")
    ports = {"worker": free_port(), "scorer": free_port(), "confluent": free_port()}
    procs = {
        "worker": start(["worker"], secure, logs / "worker.log", STREAMREC_WORKER_PORT=str(ports["worker"])),
        "scorer": start(["serve"], secure, logs / "scorer.log", STREAMREC_SCORER_PORT=str(ports["scorer"])),
        "confluent": start(["worker", "--engine", "confluent"], confluent_settings, logs / "confluent.log",
                           STREAMREC_WORKER_PORT=str(ports["confluent"])),
    }
    try:
        for name, proc in procs.items():
            wait_ready(proc, ports[name], logs / f"{name}.log")
        yield {"ports": ports, "logs": logs}
    finally:
        for proc in procs.values():  # all at once: their shutdowns overlap
            proc.terminate()
        codes = {name: stop(proc) for name, proc in procs.items()}
    assert codes == {"worker": 0, "scorer": 0, "confluent": 0}, "SIGTERM must end each cleanly"


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# --------------------------------------------------------------------------- #
def test_sdk_worker_and_scorer_answer_every_event_over_sasl_tls(secure, services):
    with RecommendationConsumer(secure) as recs, EventPublisher(secure) as events:
        ids = [events.view(f"user-{i % 4}", f"sku-{i % 7}") for i in range(12)]
        events.flush()
        answers = {event_id: recs.wait_for(event_id, timeout=60) for event_id in ids}
    assert all(rec.trigger_event_id == event_id and rec.items for event_id, rec in answers.items())
    requests = [json.loads(m.value())["event_id"] for m in read_topic(secure, topics.SCORE_REQUESTS)]
    assert sorted(requests) == sorted(ids), "each event answered by exactly one score request"
    # The features were written through the ACL user over TLS.
    r = redis_client(secure)
    keys = Keys(secure.redis_prefix)
    assert all(r.exists(keys.user(f"user-{u}")) for u in range(4))
    r.close()


def test_pull_api_requires_the_bearer_token_and_probes_stay_open(services):
    port = services["ports"]["scorer"]
    status, headers, body = http_get(port, "/v1/recommendations/user-1")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "STREAMREC_SCORER_PULL_TOKEN" in json.loads(body)["error"]
    assert http_get(port, "/v1/recommendations/user-1", token="wrong")[0] == 401
    status, _, body = http_get(port, "/v1/recommendations/user-1", token=TOKEN)
    assert status == 200 and json.loads(body)["user_id"] == "user-1"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http_get(port, path)[0] == 200, path


def test_online_trainer_joins_a_click_to_its_recommendation_over_sasl_tls(secure, services, tmp_path):
    from streamrec.online.learner import LearnerConfig, OnlineLearner

    with RecommendationConsumer(secure) as recs, EventPublisher(secure) as events:
        rec = recs.wait_for(events.view("clicker", "sku-1"), timeout=60)
        events.click("clicker", rec.items[0].item_id, rec_id=rec.rec_id, position=0)
        events.flush()
    cfg = LearnerConfig(window_ms=1000, dry_run=True, gate_every_s=3600, gate_every_samples=10**9,
                        checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every_s=3600)
    learner = OnlineLearner(secure, cfg, port=0)
    learner.start()
    try:
        deadline = time.monotonic() + 60
        while learner.joiner.counts["reward:click"] < 1 and time.monotonic() < deadline:
            learner.poll_once(0.2)
    finally:
        learner.stop()
        learner.close()
    assert learner.joiner.counts["reward:click"] == 1
    assert learner.joiner.counts["slates"] >= 1


def test_training_replays_the_events_topic_over_sasl_tls(secure, services):
    from streamrec.trainer.replay import replay_events

    inter = replay_events(secure)
    assert len(inter) >= 12 and inter.kafka_offsets["topic"] == secure.topic(topics.EVENTS)


def test_confluent_engine_applies_events_over_sasl_tls(confluent_settings, services):
    s = confluent_settings
    with EventPublisher(s) as events:
        for i in range(30):
            events.click(f"u{i % 5}", f"i{i % 3}")
    assert wait_outputs(s, 30, timeout=60) == 30
    r = redis_client(s)
    assert all(r.exists(Keys(s.redis_prefix).user(f"u{u}")) for u in range(5))
    r.close()


def run_cli(args: list[str], s: Settings, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, **s.as_env(), **env}
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], env=environ, capture_output=True,
                          text=True, timeout=120)


def test_wrong_kafka_password_stops_the_worker_at_once_naming_the_setting(secure):
    proc = run_cli(["worker"], secure, STREAMREC_KAFKA_SASL_PASSWORD="not-the-password",
                   STREAMREC_WORKER_PORT=str(free_port()))
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "refused the SCRAM-SHA-512 login of user 'streamrec'" in err
    assert "STREAMREC_KAFKA_SASL_PASSWORD" in err and "not-the-password" not in proc.stderr + proc.stdout


def test_wrong_redis_password_stops_the_scorer_at_once_naming_the_setting(secure, tmp_path):
    bad = secret_file(tmp_path, "redis-password", "not-the-redis-password")
    proc = run_cli(["serve"], secure, STREAMREC_REDIS_PASSWORD_FILE=str(bad), STREAMREC_SCORER_PORT=str(free_port()))
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert "refused user 'streamrec'" in err and "STREAMREC_REDIS_PASSWORD" in err
    assert "not-the-redis-password" not in proc.stderr + proc.stdout


def test_wrong_ca_and_wrong_credentials_are_clear_errors_for_every_client(secure, tmp_path):
    other_ca = make_tls(tmp_path / "other-ca").ca
    with pytest.raises(SecurityError, match="TLS with Kafka .* STREAMREC_KAFKA_SSL_CA"):
        check_kafka(secure.replace(kafka_ssl_ca=str(other_ca)))
    with pytest.raises(SecurityError, match="TLS with Redis .* STREAMREC_REDIS_SSL_CA"):
        check_redis(secure.replace(redis_ssl_ca=str(other_ca)))
    with pytest.raises(SecurityError, match="STREAMREC_REDIS_USERNAME"):
        check_redis(secure.replace(redis_username="nobody"))
    # The SDK: the app's flush raises the clear error instead of timing out on a queue.
    publisher = EventPublisher(secure.replace(kafka_sasl_password="not-the-password"))
    publisher.view("u1", "i1")
    with pytest.raises(SecurityError, match="STREAMREC_KAFKA_SASL_PASSWORD") as info:
        publisher.flush(timeout=30)
    assert "not-the-password" not in str(info.value)
    with pytest.raises((SecurityError, PublishError)):  # the unsent event is reported again; the producer goes
        publisher.close(timeout=5)
    assert publisher._producer is None


def test_secrets_stay_out_of_logs_reprs_and_printed_settings(secure, services):
    secrets = [secure.kafka_sasl_password, Path(secure.redis_password_file).read_text().strip(), TOKEN]
    printed = run_cli(["config", "--json"], secure, STREAMREC_REDIS_PASSWORD_FILE="",
                      STREAMREC_REDIS_PASSWORD=secrets[1], STREAMREC_SCORER_PULL_TOKEN_FILE="",
                      STREAMREC_SCORER_PULL_TOKEN=TOKEN).stdout
    masked = json.loads(printed)
    assert {masked[f"STREAMREC_{k}"] for k in ("KAFKA_SASL_PASSWORD", "REDIS_PASSWORD", "SCORER_PULL_TOKEN")} == {"***"}
    shown = [repr(secure), str(secure), printed]
    for name in ("worker.log", "scorer.log", "confluent.log"):
        shown.append((services["logs"] / name).read_text())
    for text in shown:
        for value in secrets:
            assert value not in text
