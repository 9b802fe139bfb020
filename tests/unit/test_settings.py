"""Settings come from STREAMREC_* variables, with clear errors."""

import doctest

import pytest

import streamrec.settings
from streamrec.settings import Settings, SettingsError


def test_defaults_point_at_localhost():
    s = Settings.from_env({})
    assert s.kafka_bootstrap.startswith("127.0.0.1:")
    assert s.redis_url.startswith("redis://127.0.0.1:")
    assert s.topic("events") == "events"


def test_environment_overrides_and_converts_types():
    s = Settings.from_env({"STREAMREC_TOPIC_PREFIX": "shop1.", "STREAMREC_SCORER_PORT": "9300",
                           "STREAMREC_DEVICE": "cpu", "PATH": "/bin"})
    assert s.topic("events") == "shop1.events"
    assert s.scorer_port == 9300
    assert s.device == "cpu"


def test_bad_value_names_the_variable():
    with pytest.raises(SettingsError, match="STREAMREC_REDIS_PORT"):
        Settings.from_env({"STREAMREC_REDIS_PORT": "six"})
    with pytest.raises(SettingsError, match="STREAMREC_DEVICE"):
        Settings.from_env({"STREAMREC_DEVICE": "tpu"})
    with pytest.raises(SettingsError, match=r"STREAMREC_WORKER_STALL_S: Expected `float` >= 0"):
        Settings.from_env({"STREAMREC_WORKER_STALL_S": "-5"})


def test_unknown_variable_is_a_typo_error():
    with pytest.raises(SettingsError, match="STREAMREC_KAFKA_BOOTSTRAPS is not a streamrec setting"):
        Settings.from_env({"STREAMREC_KAFKA_BOOTSTRAPS": "x:1"})


def test_as_env_round_trips():
    s = Settings.from_env({"STREAMREC_TOPIC_PREFIX": "a.", "STREAMREC_WORKER_PORT": "1234"})
    assert Settings.from_env(s.as_env()) == s


def test_docstring_examples_run():
    assert doctest.testmod(streamrec.settings).failed == 0


def test_local_stack_ports_move_the_clients_unless_they_are_set():
    s = Settings.from_env({"STREAMREC_KAFKA_PORT": "19092", "STREAMREC_REDIS_PORT": "16379"})
    assert s.kafka_bootstrap == "127.0.0.1:19092" and s.redis_url == "redis://127.0.0.1:16379/0"
    s = Settings.from_env({"STREAMREC_KAFKA_PORT": "19092", "STREAMREC_KAFKA_BOOTSTRAP": "k:9092"})
    assert s.kafka_bootstrap == "k:9092"
