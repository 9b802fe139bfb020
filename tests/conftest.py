"""Session fixtures: a real Kafka and a real Redis for every integration test.

Where they come from, in order:
1. ``STREAMREC_KAFKA_BOOTSTRAP`` and ``STREAMREC_REDIS_URL`` when both are set;
2. testcontainers, when a Docker engine answers;
3. the project's local stack (`streamrec up`), started if it is not running.

Each test session gets its own topic prefix and Redis key prefix, so runs
never see each other's data, and removes its topics and keys at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import resource
import time
import uuid

import pytest
from hypothesis import settings as hypothesis_settings

from streamrec.settings import Settings

# No time limit per generated example: Hypothesis's default (200 ms) is a timed assertion, and on two loaded cores
# one example of the schema tests took 304 ms once (a fresh clone of 2026-12-07). Speed belongs in benchmarks.
hypothesis_settings.register_profile("streamrec", deadline=None)
hypothesis_settings.load_profile("streamrec")

# One OpenMP thread per process (inherited by the services the tests start): the suite runs four processes on
# two cores, and torch's OpenMP threads spin while they wait, so with more threads than cores a small model
# trains several times slower (the trainer tests' models: 309 s against 42 s, measured under the same load).
os.environ.setdefault("OMP_NUM_THREADS", "1")


# `make test` runs four pytest-xdist workers on two cores: much of the suite waits (on outages, restarts,
# answers), so two workers left the cores half idle. Every worker shares one local stack (`_shared_local_stack`);
# the modules marked `stack` bring stacks of their own on free ports and folders, so they run beside it.
# Work goes out by module, the costliest first (a long module started last would set the wall time alone); the
# fault cases in the FAULT_GROUPS groups, each with a fault stack of its own; the trainer's unit tests together,
# since they share one session's trained models.
COSTLIEST_FIRST = ("tests/faults/", "tests/unit/trainer/", "tests/integration/test_soak.py", "tests/unit/test_offline_loop.py",
                   "tests/fuzz/test_worker_fuzz.py", "tests/integration/test_worker.py", "tests/e2e/test_demo.py",
                   "tests/integration/test_observability.py", "tests/integration/test_learner_closed_loop.py",
                   "tests/integration/test_scorer.py")
# Three groups of about four minutes each (case times of 2026-12-07), each on a fault stack of its own. A hash of
# the case names had left one group empty and put eight cases, 470 s, on one worker.
FAULT_GROUPS = {"broker-stop": 0, "broker-outage-loaded": 0, "redis-stop": 0, "registry": 0,
                "broker-flap": 1, "broker-freeze": 1, "learner-kill": 1, "worker-kill": 1,
                "broker-kill": 2, "scorer-kill": 2, "rebalance": 2, "model-files": 2}
# Modules of long, independent tests (no module-scoped fixture), spread test by test.
EACH_TEST_APART = ("tests/unit/test_offline_loop.py", "tests/integration/test_worker.py",
                   "tests/fuzz/test_worker_fuzz.py", "tests/integration/test_scorer.py")
# The closed loop (about 110 s) must not start beside the suite's busiest part: its online trainer must publish
# within 90 s of simulated traffic, which it did not in two of three runs while three fault stacks started and
# the trainer tests trained beside it. Nor last: alone at the end it set the wall time (a timeline of
# 2026-12-07: three workers idle for its last 110 s). After the worker tests, the other workers still hold
# about its length of lighter work.


def _cost_rank(nodeid: str) -> int:
    return next((k for k, prefix in enumerate(COSTLIEST_FIRST) if nodeid.startswith(prefix)), len(COSTLIEST_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _cost_rank(item.nodeid))  # stable: the order within a module stays


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the costliest-first order above

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/faults/test_replicated_faults.py"):  # one replicated stack for the module
                return "faults-replicated"
            if nodeid.startswith("tests/faults/"):  # a case not listed gets a stack of its own
                case = nodeid.rpartition("[")[2].rstrip("]")
                return f"faults-{FAULT_GROUPS.get(case, case)}"
            if nodeid.startswith("tests/unit/trainer/"):
                return "tests/unit/trainer/"
            if nodeid.startswith(EACH_TEST_APART):
                return nodeid
            return nodeid.split("::")[0]

    return ByModule(config, log)


# A timeline of the run for profiling its wall time: TEST_TIMELINE=FILE gets one JSON line per test
# (worker, node id, start and end in epoch seconds, setup included, and the CPU seconds of the test's own
# process and of the child processes it reaped meanwhile), appended by every xdist worker. The suite is
# CPU-bound on two cores, so CPU seconds, not wall, say what a cut would save.
_TIMELINE = os.environ.get("TEST_TIMELINE")
_started: dict[str, tuple[float, float, float]] = {}


def _cpu_seconds() -> tuple[float, float]:
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, reaped.ru_utime + reaped.ru_stime


def pytest_runtest_logstart(nodeid, location):
    if _TIMELINE:
        _started[nodeid] = (time.time(), *_cpu_seconds())


def pytest_runtest_logfinish(nodeid, location):
    if _TIMELINE and nodeid in _started:
        start, own, reaped = _started.pop(nodeid)
        own_now, reaped_now = _cpu_seconds()
        line = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "test": nodeid, "start": start,
                "end": time.time(), "cpu_s": round(own_now - own, 2), "children_cpu_s": round(reaped_now - reaped, 2)}
        with open(_TIMELINE, "a") as out:
            out.write(json.dumps(line) + "\n")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine"
        return False


@pytest.fixture(scope="session")
def services() -> Settings:
    """Settings pointing at a real Kafka and Redis (no topic prefix yet)."""
    base = Settings.from_env()
    env = os.environ
    if env.get("STREAMREC_KAFKA_BOOTSTRAP") and env.get("STREAMREC_REDIS_URL"):
        yield base
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka, RedisContainer("redis:7") as redis:
            host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
            yield base.replace(kafka_bootstrap=kafka.get_bootstrap_server(),
                               redis_url=f"redis://{host}:{port}/0")
        return
    with _shared_local_stack(base):
        yield base


@contextlib.contextmanager
def _shared_local_stack(base: Settings):
    """The local stack, shared by the pytest processes of a run: the first that needs it starts it, unless it was
    running before the run; the last to finish stops it, if the run started it (the machine is left as found)."""
    import psutil

    from streamrec.deploy.localstack import LocalStack

    stack = LocalStack(base)
    base.home_path.mkdir(parents=True, exist_ok=True)
    users = base.home_path / "test-stack-users.json"

    def update(change):
        with open(base.home_path / "test-stack-users.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(users.read_text()) if users.exists() else {"pids": [], "started_by_tests": False}
            state["pids"] = [pid for pid in state["pids"] if psutil.pid_exists(pid) and pid != os.getpid()]
            change(state)
            users.write_text(json.dumps(state))

    def join(state):
        if not state["pids"]:
            state["started_by_tests"] = not (stack.running("kafka") and stack.running("redis"))
        stack.up(log=lambda m: None)
        state["pids"].append(os.getpid())

    def leave(state):
        if not state["pids"] and state["started_by_tests"]:
            stack.down()
            state["started_by_tests"] = False

    update(join)
    try:
        yield
    finally:
        # Kafka clients that tests dropped but a reference cycle keeps (a traceback, a closure) are freed now,
        # while their broker still answers: freed after it stops, they would log "Connection refused" until exit.
        gc.collect()
        update(leave)


@pytest.fixture(scope="session")
def settings(services: Settings) -> Settings:
    """Real services plus this session's own topic prefix and Redis prefix, topics created."""
    from streamrec.stream.topics import create_topics, delete_topics

    run = uuid.uuid4().hex[:8]
    s = services.replace(topic_prefix=f"t{run}.", redis_prefix=f"t{run}:")
    create_topics(s)
    yield s
    delete_topics(s)
    r = redis_client(s)
    keys = list(r.scan_iter(match=f"{s.redis_prefix}*", count=5000))
    for i in range(0, len(keys), 5000):  # hundreds of thousands of keys: one round trip per chunk, not per key
        r.unlink(*keys[i:i + 5000])


def redis_client(settings: Settings):
    import redis

    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def redis(settings: Settings):
    client = redis_client(settings)
    yield client
    client.close()


@pytest.fixture
def fresh_settings(settings: Settings) -> Settings:
    """Like `settings` but with a prefix of its own, for tests that need empty topics."""
    from streamrec.stream.topics import create_topics, delete_topics

    run = uuid.uuid4().hex[:8]
    s = settings.replace(topic_prefix=f"{settings.topic_prefix}{run}.",
                         redis_prefix=f"{settings.redis_prefix}{run}:")
    create_topics(s)
    yield s
    delete_topics(s)
