"""`streamrec up/down/status` on a stack instance of the test's own (own ports, own folder)."""

from __future__ import annotations

import os
import socket

import pytest

from streamrec.deploy.localstack import LocalStack, StackError, install_kafka
from streamrec.settings import Settings
from streamrec.stream.topics import create_topics, describe_topics

pytestmark = [pytest.mark.integration, pytest.mark.stack]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    shared_home = Settings.from_env().home_path
    libs = install_kafka(shared_home, log=lambda m: None)  # fetched once, shared by every instance
    home = tmp_path_factory.mktemp("stack")
    (home / "kafka").mkdir()
    os.symlink(libs, home / "kafka" / "libs")
    kafka, controller, redis = free_port(), free_port(), free_port()
    s = Settings.from_env().replace(home=str(home), kafka_port=kafka, kafka_controller_port=controller,
                                    redis_port=redis, prometheus_port=free_port(), kafka_bootstrap=f"127.0.0.1:{kafka}",
                                    redis_url=f"redis://127.0.0.1:{redis}/0", kafka_heap="384m")
    stack = LocalStack(s)
    yield stack
    stack.down()


def test_up_twice_reuses_the_running_servers(own_stack):
    assert own_stack.up(log=lambda m: None) == {"redis": "started", "kafka": "started"}
    pids = {s.name: s.pid for s in own_stack.status()}
    assert own_stack.up(log=lambda m: None) == {"redis": "reused", "kafka": "reused"}
    assert {s.name: s.pid for s in own_stack.status()} == pids
    states = {s.name: s.state for s in own_stack.status()}
    assert states == {"kafka": "running", "redis": "running", "prometheus": "stopped"}


def test_topic_creation_is_idempotent(own_stack):
    own_stack.up(log=lambda m: None)
    s = own_stack.settings.replace(topic_prefix="idem.")
    first = create_topics(s)
    assert set(first.values()) == {"created"} and len(first) == 6
    assert set(create_topics(s).values()) == {"exists"}
    infos = {i.name: i for i in describe_topics(s)}
    assert infos["idem.catalog"].configs["cleanup.policy"] == "compact"
    assert infos["idem.model-versions"].configs["cleanup.policy"] == "compact"
    assert infos["idem.events"].partitions == s.topic_partitions


def test_down_then_up_keeps_the_data(own_stack):
    own_stack.up(log=lambda m: None)
    s = own_stack.settings.replace(topic_prefix="keep.")
    create_topics(s)
    cluster_id = (own_stack.settings.home_path / "kafka" / "cluster.id").read_text()
    stopped = own_stack.down()
    assert stopped["kafka"] and stopped["redis"] and not stopped["prometheus"]
    assert {st.name: st.state for st in own_stack.status()}["kafka"] == "stopped"
    assert own_stack.up(log=lambda m: None) == {"redis": "started", "kafka": "started"}
    assert (own_stack.settings.home_path / "kafka" / "cluster.id").read_text() == cluster_id
    assert "keep.events" in {i.name for i in describe_topics(s)}


def test_stale_pid_file_is_replaced(own_stack):
    own_stack.up(log=lambda m: None)
    redis = own_stack.services["redis"]
    redis.stop()
    redis.pid_file.write_text("999999")  # a pid that is not running
    assert redis.state().state == "stale"
    assert own_stack.up(log=lambda m: None)["redis"] == "started"
    assert redis.state().state == "running"


def test_port_taken_by_another_program_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s = Settings.from_env().replace(home=str(tmp_path), redis_port=port)
        stack = LocalStack(s)
        assert stack.services["redis"].state().state == "foreign"
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 is already taken.*STREAMREC_REDIS_PORT"):
            stack.services["redis"].start(timeout=10, log=lambda m: None)
