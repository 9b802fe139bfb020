"""Publishing through a real Kafka: the version is written, then announced on model-versions."""

from __future__ import annotations

import pytest

from streamrec.cli import main
from streamrec.registry import Announcement, Registry
from streamrec.stream.topics import MODEL_VERSIONS

from .helpers import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def reg_settings(fresh_settings, tmp_path):
    return fresh_settings.replace(registry_uri=str(tmp_path / "registry"))


def test_train_publishes_both_models_and_announces_them(reg_settings, tmp_path):
    from streamrec.trainer.data import Interactions
    from streamrec.trainer.publish import publish_trained
    from streamrec.trainer.synth import SynthConfig, synthesize
    from streamrec.trainer.train import TrainConfig, train_all

    data = synthesize(SynthConfig(users=40, items=30, sessions_per_user=3, seed=2))
    inter = Interactions.from_rows(data.events, {r["item_id"]: r["category"] for r in data.items})
    trained = train_all(inter, TrainConfig.tiny(epochs=1))
    results = publish_trained(reg_settings, trained)

    msgs = read_topic(reg_settings, MODEL_VERSIONS)
    assert sorted(m.key().decode() for m in msgs) == ["ranker", "sasrec"]
    registry = Registry(reg_settings.registry_uri)
    for msg in msgs:
        ann = Announcement.decode(msg.value())
        meta = registry.verify(ann.name, ann.version)  # the announced version is complete on arrival
        assert ann.sha256 == registry.digest(ann.name, ann.version)
        assert ann.uri == registry.location(ann.name, ann.version) and ann.metrics == meta.metrics
        assert registry.current(ann.name) == ann.version
    assert {r[0].name for r in results} == {"sasrec", "ranker"}
    assert registry.meta("sasrec", results[0][0].version).data_window["rows"] == len(inter)


def test_promote_and_rollback_announce_the_version_they_make_current(reg_settings, tmp_path, monkeypatch):
    src = tmp_path / "w.bin"
    src.write_bytes(b"w")
    registry = Registry(reg_settings.registry_uri)
    for v in ("v1", "v2"):
        registry.publish("ranker", {"model.onnx": src}, kind="dcn", version=v)
    for key, value in reg_settings.as_env().items():
        monkeypatch.setenv(key, value)
    assert main(["models", "promote", "ranker", "v1"]) == 0
    assert main(["models", "promote", "ranker", "v2"]) == 0
    assert main(["models", "rollback", "ranker"]) == 0
    msgs = read_topic(reg_settings, MODEL_VERSIONS)
    assert [Announcement.decode(m.value()).version for m in msgs] == ["v1", "v2", "v1"]
    assert registry.current("ranker") == "v1"
