"""Session fixtures: a real Kafka and a real Redis for every integration test.

Where they come from, in order:
1. ``STREAMREC_KAFKA_BOOTSTRAP`` and ``STREAMREC_REDIS_URL`` when both are set;
2. testcontainers, when a Docker engine answers;
3. the project's local stack (`streamrec up`), started if it is not running.

Each test session gets its own topic prefix and Redis key prefix, so runs
never see each other's data, and removes its topics and keys at the end.
"""

from __future__ import annotations

import os
import uuid

import pytest

from streamrec.settings import Settings


# `make test` runs two pytest-xdist workers: one runs the tests that share the session's stack below, so that
# only one process ever starts and stops that one; the other runs the modules that bring stacks of their own
# (marked `stack`: the fault suite, `streamrec up/down`, SASL/TLS) and the unit tests, which need none. The
# fault suite mostly waits on outages and recoveries, so the two fit on two cores (about 15 minutes of tests
# each on the 2-core machine, 16 minutes in all, against 25 for the whole suite in one process).
OWN_STACKS = ("tests/faults/", "tests/integration/test_local_stack.py", "tests/integration/test_security.py")
NO_STACK = ("tests/unit/",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("stack") and not item.nodeid.startswith(OWN_STACKS):
            raise pytest.UsageError(f"{item.nodeid} starts a stack of its own: add its module to OWN_STACKS "
                                    "in tests/conftest.py, so that it never runs beside the shared stack's tests")


def pytest_xdist_make_scheduler(config, log):
    # (not xdist's `--dist loadgroup`: with pytest 9.2 its group suffix never reaches the node ids)
    from xdist.scheduler import LoadScopeScheduling

    class TwoStacks(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "own-or-no-stack" if nodeid.startswith(OWN_STACKS + NO_STACK) else "shared-stack"

    return TwoStacks(config, log)


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
    from streamrec.deploy.localstack import LocalStack

    stack = LocalStack(base)
    was_running = stack.running("kafka") and stack.running("redis")
    stack.up(log=lambda m: None)
    yield base
    if not was_running:  # leave the machine as we found it
        stack.down()


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
