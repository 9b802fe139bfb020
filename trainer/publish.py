"""Publishing a trained model: write the registry version, then announce it on `model-versions`.

The order matters: the announcement is sent only after the version folder is
complete and verified, so a scorer that reacts to it always finds the files.
"""

from __future__ import annotations

from confluent_kafka import KafkaException, Producer

from streamrec.registry import Announcement, ModelMeta, Registry
from streamrec.settings import Settings
from streamrec.stream.topics import MODEL_VERSIONS, kafka_security
from streamrec.trainer.export import Exported


def announce(settings: Settings, ann: Announcement, timeout: float = 15.0) -> None:
    """Produce ``ann`` to `model-versions` keyed by model name and wait for the broker's ack."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **kafka_security(settings),
                         # One record, rarely: favour durability over latency.
                         "acks": "all", "enable.idempotence": True,
                         # Give up when we do, and report it once ourselves instead of
                         # librdkafka logging every reconnect attempt.
                         "message.timeout.ms": int(timeout * 1000), "log_level": 2})
    errors: list = []
    producer.produce(settings.topic(MODEL_VERSIONS), key=ann.name.encode(), value=ann.encode(),
                     on_delivery=lambda err, _msg: err and errors.append(err))
    left = producer.flush(timeout + 1.0)
    if left or errors:
        reason = errors[0] if errors else f"not acknowledged within {timeout:.0f} s"
        raise KafkaException(f"announcing {ann.name}/{ann.version} on {settings.topic(MODEL_VERSIONS)} "
                             f"({settings.kafka_bootstrap}) failed: {reason}; the version is written, "
                             f"re-announce it with `streamrec models promote {ann.name} {ann.version}`")


def publish(settings: Settings, name: str, exported: Exported, *, kind: str, metrics: dict[str, float],
            data_window: dict, hashing: dict, kafka_offsets: dict | None = None, parent: str | None = None,
            version: str | None = None, send: bool = True, promote: bool = True) -> tuple[ModelMeta, Announcement]:
    """Write ``name`` as a new version in the registry, verify it, make it current, announce it.

    ``parent`` defaults to the version that was current before.
    """
    registry = Registry(settings.registry_uri)
    parent = parent if parent is not None else registry.current(name) if name in registry.models() else None
    meta = registry.publish(name, exported.files, kind=kind, version=version, parent=parent,
                            data_window=data_window, kafka_offsets=kafka_offsets, metrics=metrics,
                            signatures=exported.signatures, opset=exported.opset, hashing=hashing,
                            extra=exported.extra)
    registry.verify(name, meta.version)
    if promote:
        registry.promote(name, meta.version)
    ann = announcement(registry, name, meta.version)
    if send:
        announce(settings, ann)
    return meta, ann


def announcement(registry: Registry, name: str, version: str) -> Announcement:
    """The `model-versions` record for a version already in the registry."""
    meta = registry.meta(name, version)
    return Announcement(name=name, version=version, uri=registry.location(name, version),
                        sha256=registry.digest(name, version), metrics=meta.metrics)


def publish_trained(settings: Settings, trained, seq_name: str = "sasrec", ranker_name: str = "ranker",
                    send: bool = True) -> list[tuple[ModelMeta, Announcement, Exported]]:
    """Export both models of a `streamrec.trainer.train.Trained` (parity-checked) and publish them."""
    import tempfile

    from streamrec.trainer.export import export_dcn, export_sasrec

    out = []
    with tempfile.TemporaryDirectory(prefix="streamrec-export-") as tmp:
        seq = export_sasrec(trained.sasrec, f"{tmp}/seq", trained.catalog, trained.categories,
                            trained.split.test_history)
        dcn = export_dcn(trained.dcn, f"{tmp}/dcn")
        # The torch weights travel with the version, so `streamrec learn` can fine-tune what is served.
        from streamrec.trainer.weights import WEIGHTS, save_weights
        seq.files[WEIGHTS] = save_weights(trained.sasrec, f"{tmp}/seq")
        dcn.files[WEIGHTS] = save_weights(trained.dcn, f"{tmp}/dcn")
        for name, exported, model, metrics in (
                (seq_name, seq, trained.sasrec, trained.seq_metrics["sasrec"]),
                (ranker_name, dcn, trained.dcn, trained.ranker_metrics["dcn-v2"])):
            hashing = {h.namespace: h.describe() for h in vars(model).values() if hasattr(h, "describe")}
            meta, ann = publish(settings, name, exported, kind=model.kind, metrics=metrics,
                                data_window=trained.window, kafka_offsets=trained.kafka_offsets,
                                hashing=hashing, send=send)
            out.append((meta, ann, exported))
    return out


def publish_graph(settings: Settings, model, catalog: list[str], *, metrics: dict[str, float], data_window: dict,
                  real_histories: list[list[str]] | None = None, kafka_offsets: dict | None = None,
                  name: str = "graph", send: bool = True) -> tuple[ModelMeta, Announcement, Exported]:
    """Export the graph model's arrays (parity-checked against torch, `streamrec.trainer.graph`) and publish them."""
    import tempfile

    from streamrec.trainer.graph import export_graph
    from streamrec.trainer.weights import WEIGHTS, save_weights

    with tempfile.TemporaryDirectory(prefix="streamrec-export-") as tmp:
        exported = export_graph(model, f"{tmp}/graph", catalog, real_histories)
        exported.files[WEIGHTS] = save_weights(model, f"{tmp}/graph")
        meta, ann = publish(settings, name, exported, kind=model.kind, metrics=metrics, data_window=data_window,
                            kafka_offsets=kafka_offsets, hashing={}, send=send)
    return meta, ann, exported
